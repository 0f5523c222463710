"""LarQL's ``index.json`` (format version 2) over the same ``gate_vectors.bin``.

LarQL reads a layer as a row-major ``[num_features, hidden_size]`` block at a byte offset, with
experts concatenated in order: exactly one layer block of our binary, so no second copy of the
vectors is needed (``docs/format.md``, LarQL).

Fields LarQL requires but a gate-vector vindex has no value for are written as documented
"unknown"s rather than guesses: ``down_top_k`` 0 (no ``down_meta.bin``), ``vocab_size`` and the
attention geometry 0 when the source ``config.json`` does not give them.

Provenance is reproducible: ``source.extracted_at`` is ``SOURCE_DATE_EPOCH`` (the
reproducible-builds convention) when set, else the Unix epoch, which here means "not recorded";
a wall-clock time would make two builds of one checkpoint differ. ``source.larql_version``
names the writer (``vindex-hub X.Y.Z``), since LarQL did not extract this vindex.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from . import sidecar

LARQL_FORMAT_VERSION = 2
# LarQL's lowest tier. Its browse tier proper is gate vectors + embeddings.bin + tokenizer.json;
# without the last two (no --larql-browse) there is no lower level to write, so the card says
# which LarQL commands work (``BROWSE_COMMANDS`` / ``GATE_ONLY_COMMANDS``).
EXTRACT_LEVEL = "browse"
GATE_ONLY_COMMANDS = ("larql show", "larql verify", "LQL USE")
BROWSE_COMMANDS = ("DESCRIBE", "WALK", "SELECT NEAREST")  # need embeddings.bin and tokenizer.json
# embeddings.bin: raw little-endian [vocab, hidden]; LarQL tells f32 from f16 by the file size.
EMBEDDING_DTYPES = {"f16": "<f2", "f32": "<f4"}
DEFAULT_EMBEDDING_DTYPE = "f16"
# router_weights.bin holds a block for every layer below num_layers (LarQL reads layer L at
# L * (E*H + E) values); the layers whose block holds real router weights, the rest zeros:
ROUTER_LAYERS = "router_weights_layers"  # our key (LarQL ignores unknown keys)
DEFAULT_ROUTER_TYPE = "top_k_softmax"  # LarQL's default
# Keys ``verify`` reads back: the per-layer list, each entry's layer id, the file checksums.
LAYERS = "layers"
LAYER = "layer"
CHECKSUMS = "checksums"


def extracted_at() -> str:
    """ISO 8601 time for ``source.extracted_at``: SOURCE_DATE_EPOCH, else 1970-01-01T00:00:00Z."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def router_type(config: Mapping[str, Any]) -> str:
    """``top_k_<scoring function>``: ``top_k_sqrtsoftplus`` for DeepSeek-V4."""
    scoring = config.get("scoring_func")
    return f"top_k_{scoring}" if scoring else DEFAULT_ROUTER_TYPE


def layer_entry(index: sidecar.VindexIndex, layer: int) -> dict[str, int]:
    """One element of ``layers``: where LarQL finds the layer's ``[E * K, H]`` block."""
    entry = index.layer(layer)
    return {
        LAYER: layer,
        "num_features": index.num_experts * index.num_feats,
        "offset": entry.file_offset,
        "length": entry.nbytes,
        "num_experts": index.num_experts,
        "num_features_per_expert": index.num_feats,
    }


def router_block_values(num_experts: int, hidden_size: int) -> int:
    """Values of one layer's block in ``router_weights.bin``: the ``[E, H]`` weight, then E biases."""
    return num_experts * hidden_size + num_experts


def larql_index(
    index: sidecar.VindexIndex,
    config: Mapping[str, Any],
    checksums: Mapping[str, str],
    *,
    writer: str,
    vocab_size: int | None = None,
    router_layers: list[int] | None = None,
) -> dict[str, Any]:
    """The ``index.json`` document (pure). ``writer`` names the tool that wrote it (``vindex-hub X.Y.Z``).

    ``vocab_size``: the rows of the ``embeddings.bin`` written (else ``config.json``'s);
    ``router_layers``: the layers whose ``router_weights.bin`` block holds real weights."""
    moe = index.model_config.moe
    num_q_heads = int(config.get("num_attention_heads", 0))
    head_dim = config.get("head_dim") or (moe.hidden_size // num_q_heads if num_q_heads else 0)
    return {
        "version": LARQL_FORMAT_VERSION,
        "model": index.display_name,
        "family": index.model_config.model_type,
        "source": {
            "huggingface_repo": index.source.repo_id,
            "huggingface_revision": index.source.revision,
            "extracted_at": extracted_at(),
            "larql_version": writer,
        },
        CHECKSUMS: dict(sorted(checksums.items())),
        "num_layers": index.model_config.num_hidden_layers,
        "hidden_size": moe.hidden_size,
        "intermediate_size": int(config.get("intermediate_size", moe.moe_intermediate_size)),
        "vocab_size": int(vocab_size if vocab_size is not None else config.get("vocab_size", 0)),
        "embed_scale": 1.0,
        "extract_level": EXTRACT_LEVEL,
        "dtype": "f32",
        "quant": "none",
        LAYERS: [layer_entry(index, layer) for layer in index.layer_ids],
        "down_top_k": 0,
        "has_model_weights": False,
        **({ROUTER_LAYERS: list(router_layers)} if router_layers is not None else {}),
        "model_config": {
            "model_type": index.model_config.model_type,
            "head_dim": int(head_dim),
            "num_q_heads": num_q_heads,
            "num_kv_heads": int(config.get("num_key_value_heads", num_q_heads)),
            "rope_base": float(config.get("rope_theta", 10000.0)),
            "moe": {
                "num_experts": moe.n_routed_experts,
                "top_k": moe.num_experts_per_tok,
                "shared_expert": moe.n_shared_experts > 0,
                "router_type": router_type(config),
                "moe_intermediate_size": moe.moe_intermediate_size,
                "hybrid": False,
            },
        },
    }
