"""The Arrow mirror's configs, splits, columns, file paths and Arrow schemas.

``gate_vectors`` (the default config) holds one parquet file per layer, split ``layer_NN``, one
row per (expert, feature) with the vector as a fixed-size float32 list, bit for bit the binary's;
``expert_stats`` one row per (layer, expert); ``router_svd`` one row per layer;
``feature_tokens`` (built with ``--feature-tokens K``) one row per (layer, expert, feature): the K
tokens whose input-embedding rows have the largest |cosine| with the vector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from ..errors import VindexFormatError
from . import layout, statistics
from .filenames import DATA_DIR

CONFIG_GATE_VECTORS = "gate_vectors"  # the default config
CONFIG_EXPERT_STATS = "expert_stats"
CONFIG_ROUTER_SVD = "router_svd"
CONFIG_FEATURE_TOKENS = "feature_tokens"
STATS_SPLIT = "train"  # the one split of expert_stats and router_svd

COL_LAYER = "layer"
COL_EXPERT = "expert"
COL_FEATURE = "feature"
COL_VECTOR = "vector"
COL_TOKEN_IDS = "token_ids"  # feature_tokens: ids by |cosine| descending, ties by id
COL_TOKENS = "tokens"  # the ids decoded with the model's tokenizer.json
COL_SCORES = "scores"  # the signed cosines
INDEX_COLUMNS = (COL_LAYER, COL_EXPERT, COL_FEATURE)

# Row groups hold whole experts, at most this many bytes of vectors (writers.mirror says why).
ROW_GROUP_BYTES = 16 << 20


def split_name(layer: int) -> str:
    """The ``gate_vectors`` split of one layer: ``layer_00``, ``layer_01``, ... ``layer_42``."""
    return f"layer_{layer:02d}"


_SPLIT_RE = re.compile(r"^layer_(\d+)$")


def layer_of_split(split: str) -> int:
    m = _SPLIT_RE.match(split)
    if not m:
        raise VindexFormatError(f"{split!r} is not a gate_vectors split name (expected layer_NN)")
    return int(m.group(1))


def gate_vectors_parquet(layer: int) -> str:
    """Path (relative to the vindex root) of one layer's gate_vectors parquet file."""
    return f"{DATA_DIR}/{CONFIG_GATE_VECTORS}/{split_name(layer)}.parquet"


EXPERT_STATS_PARQUET = f"{DATA_DIR}/{CONFIG_EXPERT_STATS}/{STATS_SPLIT}.parquet"
ROUTER_SVD_PARQUET = f"{DATA_DIR}/{CONFIG_ROUTER_SVD}/{STATS_SPLIT}.parquet"
STATS_PARQUETS = (EXPERT_STATS_PARQUET, ROUTER_SVD_PARQUET)
FEATURE_TOKENS_PARQUET = f"{DATA_DIR}/{CONFIG_FEATURE_TOKENS}/{STATS_SPLIT}.parquet"


DEFAULT_CONFIG = CONFIG_GATE_VECTORS


@dataclass(frozen=True)
class MirrorFile:
    """One parquet file of the mirror as written: what the card's ``configs``/``dataset_info`` say."""

    config: str
    split: str
    path: str  # relative to the vindex root
    num_rows: int
    num_bytes: int  # uncompressed data size
    size: int  # bytes on disk
    arrow_schema: pa.Schema


# ---- Arrow schemas ------------------------------------------------------------------------
def gate_vectors_schema(hidden_size: int) -> pa.Schema:
    return pa.schema([
        (COL_LAYER, pa.int16()),
        (COL_EXPERT, pa.int16()),
        (COL_FEATURE, pa.int16()),
        (COL_VECTOR, pa.list_(pa.float32(), hidden_size)),
    ])


def expert_stats_schema(num_feats: int) -> pa.Schema:
    return pa.schema([
        (COL_LAYER, pa.int16()),
        (COL_EXPERT, pa.int16()),
        (statistics.var_key(num_feats), pa.float64()),
        (statistics.FROBENIUS_NORM, pa.float64()),
        (statistics.SINGULAR_VALUES, pa.list_(pa.float32(), num_feats)),
    ])


def feature_tokens_schema(k: int) -> pa.Schema:
    return pa.schema([
        (COL_LAYER, pa.int16()),
        (COL_EXPERT, pa.int16()),
        (COL_FEATURE, pa.int16()),
        (COL_TOKEN_IDS, pa.list_(pa.int32(), k)),
        (COL_TOKENS, pa.list_(pa.string(), k)),
        (COL_SCORES, pa.list_(pa.float32(), k)),
    ])


def experts_per_row_group(num_feats: int, hidden_size: int) -> int:
    return max(1, ROW_GROUP_BYTES // layout.expert_nbytes(num_feats, hidden_size))
