"""Reading what the browse step needs from a checkpoint: its input embedding and ``tokenizer.json``.

The embedding is read once, only when feature tokens or LarQL's browse tier are asked for (ranged
from the Hub like every other tensor: 1 GB of BF16 for DeepSeek-V4-Flash), and decoded to float32.
A checkpoint without either gets one error naming what is missing.
"""

from __future__ import annotations

from pathlib import Path

from ..arch import MoEArchitecture
from ..errors import CheckpointError, UsageError
from ..format import filenames
from ..numerics.quant import check_finite, decode_tensor
from ..source.base import CheckpointSource
from ..source.tokenizer import TokenDecoder
from ..writers.browse import BrowseInputs


def check_browse_inputs(
    src: CheckpointSource, arch: MoEArchitecture, feature_tokens: int = 0
) -> Path:
    """Refuse a checkpoint without the embedding or ``tokenizer.json``, or with fewer tokens than
    ``feature_tokens`` (reads no tensor); return the tokenizer's local path."""
    what = "feature_tokens / larql_browse need"
    name = arch.embedding_tensor()
    if name not in src.tensor_names():
        raise CheckpointError(
            f"{src.describe()}: {what} the input embedding {name}, which the checkpoint "
            "does not have"
        )
    try:
        tokenizer = src.file(filenames.TOKENIZER_JSON)
    except CheckpointError:
        raise CheckpointError(
            f"{src.describe()}: {what} {filenames.TOKENIZER_JSON}, which the checkpoint does not have"
        ) from None
    vocab = src.tensor_info(name).shape[0]
    if feature_tokens > vocab:
        raise UsageError(
            f"feature_tokens={feature_tokens} exceeds the {vocab} tokens of {name} in {src.describe()}"
        )
    return tokenizer


def read_browse_inputs(src: CheckpointSource, arch: MoEArchitecture) -> BrowseInputs:
    """The embedding, decoded to float32 and checked, and the tokenizer."""
    tokenizer = check_browse_inputs(src, arch)
    name = arch.embedding_tensor()
    info = src.tensor_info(name)
    hidden = arch.gate_shape[1]
    if len(info.shape) != 2 or info.shape[1] != hidden:
        raise CheckpointError(
            f"tensor {name}: shape {list(info.shape)}, expected [vocab, {hidden}]"
        )
    raw = src.read([name])[name]
    embedding = check_finite(
        decode_tensor(raw.data, info.dtype, tuple(info.shape), name=name), name=name
    )
    return BrowseInputs(
        embedding=embedding,
        tokenizer=tokenizer,
        pieces=TokenDecoder(tokenizer),
        where=src.describe(),
    )
