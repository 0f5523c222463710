"""The Arrow mirror's configs, splits, columns, file paths and Arrow schemas.

One parquet file per layer, ``data/gate_vectors/layer_NN.parquet``, one row per (expert,
feature) with the vector as a fixed-size float32 list, bit for bit the binary's. The card's
configs (the Hub's viewer refuses a config of more than 30 splits, and ``load_dataset(repo,
config, split=X)`` prepares every split of the config; ``docs/format.md``):

``expert_stats`` (the default: small)  one row per (layer, expert), split ``train``
``router_svd``                         one row per layer, split ``train``
``layer_NN``                           that layer's file, split ``train``
``gate_vectors``                       every layer's file (the same files), split ``train``
``feature_tokens`` (``--feature-tokens K``) one row per (layer, expert, feature): the K tokens
                                       whose input-embedding rows have the largest |cosine|

Without the stats configs (a converted seed vindex) the first layer's config is the default.
``NN`` is the model's layer id, two digits, more when the model has 100 layers or more.
The *old* layout, still read: one config ``gate_vectors`` (the default) with a split per layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import VindexFormatError
from . import layout, statistics
from .filenames import DATA_DIR

if TYPE_CHECKING:  # the schemas import pyarrow when called: the read side and the CLI need none
    import pyarrow as pa

CONFIG_GATE_VECTORS = "gate_vectors"  # all layers, one split
CONFIG_EXPERT_STATS = "expert_stats"  # the default config
CONFIG_ROUTER_SVD = "router_svd"
CONFIG_FEATURE_TOKENS = "feature_tokens"
SPLIT = "train"  # the one split of every config
STATS_SPLIT = SPLIT
# The Hub's dataset viewer refuses a config with more splits (DatasetWithTooManySplitsError).
MAX_SPLITS_PER_CONFIG = 30
# The viewer refuses to page through row groups whose decoded data exceeds this many bytes.
VIEWER_MAX_ROW_GROUP_BYTES = 300_000_000
NAME_RE = re.compile(r"^\w+$")  # config and split names: word characters only
# Keys of the card's ``configs`` list and its entries (the Hub's dataset card metadata spec):
# read back here, written by ``card_data``.
CONFIGS_KEY = "configs"
CONFIG_NAME_KEY = "config_name"
DEFAULT_KEY = "default"
DATA_FILES_KEY = "data_files"
SPLIT_KEY = "split"
PATH_KEY = "path"

COL_LAYER = "layer"
COL_EXPERT = "expert"
COL_FEATURE = "feature"
COL_VECTOR = "vector"
COL_TOKEN_IDS = "token_ids"  # feature_tokens: ids by |cosine| descending, ties by id
COL_TOKENS = "tokens"  # the ids decoded with the model's tokenizer.json
COL_SCORES = "scores"  # the signed cosines
INDEX_COLUMNS = (COL_LAYER, COL_EXPERT, COL_FEATURE)

# Row groups hold whole experts, at most this many bytes of vectors and this many rows (so the
# viewer, which reads whole row groups to show 100 rows, stays quick; writers.mirror says why).
ROW_GROUP_BYTES = 16 << 20
ROW_GROUP_ROWS = 4096

# The two card schemes ``mirror_scheme`` tells apart (the mirror's "scheme": how the card's
# configs map to its files; "layout" is the binary's, ``format.layout``).
SCHEME_CONFIG_PER_LAYER = "a config per layer"
SCHEME_SPLIT_PER_LAYER = "old layout: one gate_vectors config with a split per layer"


def name_width(num_hidden_layers: int) -> int:
    """Digits of the layer number in names: 2, or 3 for a model of 100-999 layers, ..."""
    return max(2, len(str(num_hidden_layers)))


def layer_config(layer: int, num_hidden_layers: int) -> str:
    """The config (and file stem) of one layer: ``layer_00`` ... ``layer_42``; ``layer_007`` at 128 layers."""
    return f"layer_{layer:0{name_width(num_hidden_layers)}d}"


_LAYER_NAME_RE = re.compile(r"^layer_(\d+)$")


def layer_of_name(name: str) -> int | None:
    """The layer a ``layer_NN`` config (or old-layout split) names; None for another name."""
    m = _LAYER_NAME_RE.match(name)
    return int(m.group(1)) if m else None


def old_layout_split(layer: int) -> str:
    """The old layout's ``gate_vectors`` split of a layer (two digits at least, whatever the model)."""
    return f"layer_{layer:02d}"


def gate_vectors_parquet(layer: int, num_hidden_layers: int) -> str:
    """Path (relative to the vindex root) of one layer's parquet file."""
    return f"{DATA_DIR}/{CONFIG_GATE_VECTORS}/{layer_config(layer, num_hidden_layers)}.parquet"


GATE_VECTORS_DIR = f"{DATA_DIR}/{CONFIG_GATE_VECTORS}/"
EXPERT_STATS_PARQUET = f"{DATA_DIR}/{CONFIG_EXPERT_STATS}/{STATS_SPLIT}.parquet"
ROUTER_SVD_PARQUET = f"{DATA_DIR}/{CONFIG_ROUTER_SVD}/{STATS_SPLIT}.parquet"
FEATURE_TOKENS_PARQUET = f"{DATA_DIR}/{CONFIG_FEATURE_TOKENS}/{STATS_SPLIT}.parquet"

STATS_PARQUET_OF = {
    CONFIG_EXPERT_STATS: EXPERT_STATS_PARQUET,
    CONFIG_ROUTER_SVD: ROUTER_SVD_PARQUET,
}
STATS_PARQUETS = tuple(STATS_PARQUET_OF.values())
STATS_CONFIG_OF = {path: name for name, path in STATS_PARQUET_OF.items()}
STATS_CONFIGS = tuple(STATS_PARQUET_OF)


@dataclass(frozen=True)
class MirrorFile:
    """One parquet file of the mirror as written: what the card's ``configs``/``dataset_info`` say.

    ``config`` is the file's own config (``layer_NN``, ``expert_stats``, ``router_svd``); a layer
    file is also part of ``gate_vectors`` (``card_configs``).
    """

    config: str
    split: str
    path: str  # relative to the vindex root
    num_rows: int
    num_bytes: int  # the decoded (Arrow) size, as ``datasets`` counts it
    size: int  # bytes on disk
    arrow_schema: pa.Schema

    @property
    def layer(self) -> int | None:
        return layer_of_name(self.config)


@dataclass(frozen=True)
class CardConfig:
    """One entry of the card's ``configs``: its name, whether it is the default, and its files."""

    name: str
    files: tuple[MirrorFile, ...]
    default: bool = False


def card_configs(files: Sequence[MirrorFile]) -> list[CardConfig]:
    """The configs of a mirror holding ``files``: the stats configs, any other config, one per
    layer (in layer order), then ``gate_vectors`` over the layers' files; the default first."""
    stats = [f for f in files if f.config in STATS_CONFIGS]
    stats.sort(key=lambda f: STATS_CONFIGS.index(f.config))
    layers = sorted((f for f in files if f.layer is not None), key=lambda f: f.layer or 0)
    others: dict[
        str, list[MirrorFile]
    ] = {}  # any other config (one or more files), in written order
    for f in files:
        if f.config not in STATS_CONFIGS and f.layer is None:
            others.setdefault(f.config, []).append(f)
    configs = [CardConfig(f.config, (f,)) for f in stats]
    configs += [CardConfig(name, tuple(group)) for name, group in others.items()]
    configs += [CardConfig(f.config, (f,)) for f in layers]
    if layers:
        configs.append(CardConfig(CONFIG_GATE_VECTORS, tuple(layers)))
    # expert_stats when written, else the first layer: small, never the whole mirror
    default = CONFIG_EXPERT_STATS if stats else layers[0].config if layers else None
    configs = [CardConfig(c.name, c.files, default=c.name == default) for c in configs]
    return sorted(configs, key=lambda c: not c.default)  # the default first, as the viewer lists it


# ---- reading a card's configs back ----------------------------------------------------------
def config_paths(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(split, path)`` of a card ``configs`` entry (``path`` may be a string or a list)."""
    out = []
    for entry in config.get(DATA_FILES_KEY) or []:
        if isinstance(entry, str):
            out.append((SPLIT, entry))
            continue
        paths = entry.get(PATH_KEY)
        for path in paths if isinstance(paths, list) else [paths]:
            out.append(
                (str(entry.get(SPLIT_KEY, SPLIT)), path if isinstance(path, str) else repr(path))
            )
    return out


def mirror_scheme(configs: Mapping[str, Mapping[str, Any]]) -> str:
    """Which scheme a card's configs (by name) follow: ``SCHEME_CONFIG_PER_LAYER`` or
    ``SCHEME_SPLIT_PER_LAYER`` (``gate_vectors`` with ``layer_NN`` splits and no layer configs)."""
    if any(layer_of_name(name) is not None for name in configs):
        return SCHEME_CONFIG_PER_LAYER
    gate = configs.get(CONFIG_GATE_VECTORS)
    if gate is not None and any(
        layer_of_name(split) is not None for split, _ in config_paths(gate)
    ):
        return SCHEME_SPLIT_PER_LAYER
    return SCHEME_CONFIG_PER_LAYER


@dataclass(frozen=True)
class LayerSource:
    """Where a card says one layer's parquet is, and how ``load_dataset`` names it."""

    path: str
    config: str
    split: str


def layer_sources(
    configs: Mapping[str, Mapping[str, Any]], layer_ids: Sequence[int], num_hidden_layers: int
) -> dict[int, LayerSource]:
    """Each of ``layer_ids``' file as a card in either layout lists it (configs by name); a layer
    the card does not list gets the current layout's names."""
    listed: dict[int, LayerSource] = {}
    if mirror_scheme(configs) == SCHEME_SPLIT_PER_LAYER:
        for split, path in config_paths(configs[CONFIG_GATE_VECTORS]):
            layer = layer_of_name(split)
            if layer is not None:
                listed[layer] = LayerSource(path, CONFIG_GATE_VECTORS, split)
    else:
        for name, config in configs.items():
            layer, paths = layer_of_name(name), config_paths(config)
            if layer is not None and len(paths) == 1:
                listed[layer] = LayerSource(paths[0][1], name, paths[0][0])
    return {
        layer: listed.get(layer)
        or LayerSource(
            gate_vectors_parquet(layer, num_hidden_layers),
            layer_config(layer, num_hidden_layers),
            SPLIT,
        )
        for layer in layer_ids
    }


def split_per_layer_configs(
    layer_paths: Mapping[int, str], stats_paths: Mapping[str, str]
) -> list[dict[str, Any]]:
    """A card's ``configs`` in the old layout (to reproduce one: tests, benchmarks): ``gate_vectors``,
    the default, with a split ``layer_NN`` per layer, then the stats configs."""
    return [
        {
            CONFIG_NAME_KEY: CONFIG_GATE_VECTORS,
            DEFAULT_KEY: True,
            DATA_FILES_KEY: [
                {SPLIT_KEY: old_layout_split(layer), PATH_KEY: path}
                for layer, path in sorted(layer_paths.items())
            ],
        },
        *(
            {CONFIG_NAME_KEY: name, DATA_FILES_KEY: [{SPLIT_KEY: SPLIT, PATH_KEY: path}]}
            for name, path in stats_paths.items()
        ),
    ]


def configs_by_name(card_data: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The card front matter's ``configs`` list as a mapping by ``config_name``."""
    configs = card_data.get(CONFIGS_KEY) or []
    if not isinstance(configs, list):
        raise VindexFormatError(f"configs is a {type(configs).__name__}, expected a list")
    for c in configs:
        if not isinstance(c, Mapping):
            raise VindexFormatError(
                f"configs entry {c!r} is a {type(c).__name__}, expected a mapping with config_name"
            )
    return {str(c.get(CONFIG_NAME_KEY)): c for c in configs}


# ---- Arrow schemas ------------------------------------------------------------------------
def gate_vectors_schema(hidden_size: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            (COL_LAYER, pa.int16()),
            (COL_EXPERT, pa.int16()),
            (COL_FEATURE, pa.int16()),
            (COL_VECTOR, pa.list_(pa.float32(), hidden_size)),
        ]
    )


def expert_stats_schema(num_feats: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            (COL_LAYER, pa.int16()),
            (COL_EXPERT, pa.int16()),
            (statistics.var_key(num_feats), pa.float64()),
            (statistics.FROBENIUS_NORM, pa.float64()),
            (statistics.SINGULAR_VALUES, pa.list_(pa.float32(), num_feats)),
        ]
    )


def feature_tokens_k(schema: pa.Schema) -> int:
    """The K of a ``feature_tokens_schema(k)`` (its lists' fixed length)."""
    return int(schema.field(COL_TOKEN_IDS).type.list_size)


def feature_tokens_schema(k: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            (COL_LAYER, pa.int16()),
            (COL_EXPERT, pa.int16()),
            (COL_FEATURE, pa.int16()),
            (COL_TOKEN_IDS, pa.list_(pa.int32(), k)),
            (COL_TOKENS, pa.list_(pa.string(), k)),
            (COL_SCORES, pa.list_(pa.float32(), k)),
        ]
    )


def experts_per_row_group(num_feats: int, hidden_size: int) -> int:
    by_bytes = ROW_GROUP_BYTES // layout.expert_nbytes(num_feats, hidden_size)
    return max(1, min(by_bytes, ROW_GROUP_ROWS // num_feats))


# The earlier names (the mirror's scheme was called its "layout"), kept for callers.
LAYOUT_CONFIG_PER_LAYER = SCHEME_CONFIG_PER_LAYER
LAYOUT_SPLIT_PER_LAYER = SCHEME_SPLIT_PER_LAYER
mirror_layout = mirror_scheme
