"""Files made from the model's input embedding and tokenizer: the ``feature_tokens`` config and
LarQL's browse tier (``embeddings.bin`` and ``tokenizer.json``).

``feature_tokens`` (``data/feature_tokens/train.parquet``): one row per (layer, expert, feature),
the K tokens whose embedding rows have the largest |cosine| with the gate vector
(``numerics.feature_tokens``), their decoded strings and the signed cosines. The vectors are
streamed from ``gate_vectors.bin`` one layer at a time; one row group per layer.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..checksums import sha256_file
from ..errors import UsageError
from ..format import filenames, larql, layout, mirror, sidecar
from ..fsutil import atomic_path
from ..numerics.feature_tokens import UnitEmbedding, top_abs_cosine

FEATURE_TOKENS_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd"}
EMBEDDING_ROWS_PER_WRITE = 8192  # embeddings.bin is converted and written this many rows at a time
CARD_EXAMPLE_ROWS = 3  # feature_tokens rows quoted in the card


@dataclass(frozen=True)
class BrowseOptions:
    """What to make from the embedding and tokenizer. ``feature_tokens``: K (0: none);
    ``larql_browse``: write ``embeddings.bin`` and copy ``tokenizer.json`` (implied by K > 0)."""

    feature_tokens: int = 0
    larql_browse: bool = False
    embeddings_dtype: str = larql.DEFAULT_EMBEDDING_DTYPE
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.feature_tokens < 0:
            raise UsageError(f"feature_tokens must be at least 1, got {self.feature_tokens}")
        if self.embeddings_dtype not in larql.EMBEDDING_DTYPES:
            raise UsageError(
                f"embeddings_dtype={self.embeddings_dtype!r}: use one of "
                f"{', '.join(larql.EMBEDDING_DTYPES)}"
            )

    @property
    def wanted(self) -> bool:
        return self.feature_tokens > 0 or self.larql_browse

    @property
    def writes_larql_files(self) -> bool:
        return self.wanted  # feature tokens bring LarQL's browse tier along: same two inputs


class TokenPieces(Protocol):
    """Token ids to readable pieces (``source.tokenizer.TokenDecoder`` over the checkpoint's tokenizer)."""

    def piece(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class BrowseInputs:
    """The checkpoint's input embedding (float32 ``(vocab, hidden)``), its ``tokenizer.json`` and
    that tokenizer's decoder, read by the build (``build.browse``) and handed to the writers."""

    embedding: np.ndarray
    tokenizer: Path
    pieces: TokenPieces
    where: str  # the checkpoint, for messages


@dataclass
class BrowseFiles:
    """What the browse step wrote: checksums for LarQL's ``index.json``, the embedding's vocab size."""

    vocab_size: int
    checksums: dict[str, str] = field(default_factory=dict)


# ---- feature_tokens -------------------------------------------------------------------------------
def feature_tokens_table(
    layer: int, num_feats: int, ids: np.ndarray, scores: np.ndarray, decoder: TokenPieces
) -> pa.Table:
    """One layer's rows from ids/scores ``(E * num_feats, K)`` in (expert, feature) order (pure but for
    decoding)."""
    rows, k = ids.shape
    decoded = {t: decoder.piece(t) for t in np.unique(ids).tolist()}  # each token decoded once
    pieces = [decoded[t] for t in ids.reshape(-1).tolist()]
    return pa.Table.from_arrays(
        [
            pa.array(np.full(rows, layer, dtype=np.int16)),
            pa.array(np.repeat(np.arange(rows // num_feats, dtype=np.int16), num_feats)),
            pa.array(np.tile(np.arange(num_feats, dtype=np.int16), rows // num_feats)),
            pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), type=pa.int32()), k),
            pa.FixedSizeListArray.from_arrays(pa.array(pieces, type=pa.string()), k),
            pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1), type=pa.float32()), k),
        ],
        schema=mirror.feature_tokens_schema(k),
    )


def write_feature_tokens(
    folder: Path, index: sidecar.VindexIndex, inputs: BrowseInputs, options: BrowseOptions
) -> None:
    """``data/feature_tokens/train.parquet`` from ``gate_vectors.bin`` and the embedding."""
    k = options.feature_tokens
    if k > inputs.embedding.shape[0]:
        raise UsageError(
            f"feature_tokens={k} exceeds the vocabulary of {inputs.where} "
            f"({inputs.embedding.shape[0]} tokens)"
        )
    decoder = inputs.pieces
    unit = UnitEmbedding.of(inputs.embedding)
    vectors = np.memmap(
        folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        mode="r",
        shape=index.array_shape,
    )
    rel = mirror.FEATURE_TOKENS_PARQUET
    with atomic_path(folder / rel) as tmp:
        with pq.ParquetWriter(
            tmp, mirror.feature_tokens_schema(k), **FEATURE_TOKENS_WRITE_OPTIONS
        ) as writer:
            for slot, layer in enumerate(index.layer_ids):
                flat = np.asarray(vectors[slot]).reshape(-1, index.hidden_size)
                ids, scores = top_abs_cosine(flat, unit, k, device=options.device)
                table = feature_tokens_table(layer, index.num_feats, ids, scores, decoder)
                writer.write_table(table, row_group_size=table.num_rows)
    del vectors


def feature_token_examples(
    folder: Path, layer: int, rows: int = CARD_EXAMPLE_ROWS
) -> list[dict[str, Any]]:
    """The first ``rows`` rows of ``layer``, expert 0 (for the card), as plain dicts."""
    path = folder / mirror.FEATURE_TOKENS_PARQUET
    if not path.is_file():
        return []
    table = pq.read_table(
        path, filters=[(mirror.COL_LAYER, "=", layer), (mirror.COL_EXPERT, "=", 0)]
    )
    return table.slice(0, rows).to_pylist()


# ---- LarQL's browse tier -----------------------------------------------------------------------------
def write_larql_browse(folder: Path, inputs: BrowseInputs, options: BrowseOptions) -> BrowseFiles:
    """``embeddings.bin`` (raw LE ``[vocab, hidden]`` in ``options.embeddings_dtype``) and a copy of
    ``tokenizer.json``, with their sha256s."""
    dtype = np.dtype(larql.EMBEDDING_DTYPES[options.embeddings_dtype])
    embedding = inputs.embedding
    if dtype.itemsize == 2:
        big = max(
            float(embedding.max(initial=0.0)), -float(embedding.min(initial=0.0))
        )  # no |x| copy
        if big > np.finfo(np.float16).max:
            raise UsageError(
                f"{inputs.where}: the input embedding holds |x| = {big:g}, beyond float16; "
                f"write {filenames.LARQL_EMBEDDINGS_BIN} with embeddings_dtype=f32"
            )
    digest = hashlib.sha256()
    with atomic_path(folder / filenames.LARQL_EMBEDDINGS_BIN) as tmp, open(tmp, "wb") as f:
        for start in range(0, embedding.shape[0], EMBEDDING_ROWS_PER_WRITE):
            block = np.ascontiguousarray(
                embedding[start : start + EMBEDDING_ROWS_PER_WRITE], dtype=dtype
            ).tobytes()
            f.write(block)
            digest.update(block)
    with atomic_path(folder / filenames.TOKENIZER_JSON) as tmp:
        shutil.copyfile(inputs.tokenizer, tmp)
    return BrowseFiles(
        vocab_size=int(embedding.shape[0]),
        checksums={
            filenames.LARQL_EMBEDDINGS_BIN: digest.hexdigest(),
            filenames.TOKENIZER_JSON: sha256_file(folder / filenames.TOKENIZER_JSON),
        },
    )
