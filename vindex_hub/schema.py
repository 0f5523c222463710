"""The on-disk schema of a vindex: every file name, offset rule, JSON key, config and split name.

Writers, readers, the card, ``verify`` and the loader all import from here; a key is spelled
in this module only.

The format, in prose
====================

A vindex is a folder::

    gate_vectors.bin          float32, little-endian, C order, no header:
                              [num_layers, num_experts, num_feats, hidden_size]
    gate_vectors_index.json   the sidecar (below); the seed card's usage snippet runs on it
    phase1_moe_svd.json       per layer: routed experts (var-K summary), shared expert, router
    phase2_router_svd.json    per layer: router SVD (top-k energy, effective/stable rank, s0/s1)
    README.md                 the dataset card (YAML front matter + text)
    images/var_per_layer.png  the var-K plot shown in the card
    index.json                LarQL's index (format version 2) over the same gate_vectors.bin
    router_weights.bin        optional, LarQL's router layout
    data/...parquet           the Arrow mirror: configs gate_vectors / expert_stats / router_svd

Layers are stored in ascending layer-id order, one contiguous block each, with no gaps: the
``i``-th stored layer starts at ``i * layer_nbytes``. A vindex of a subset of layers (``--layers
3-5``) stores only those, still from offset 0. Inside a layer block the experts follow in
order, each a ``[num_feats, hidden_size]`` row-major block of unit-norm right singular vectors,
rows by descending singular value.

Sign rule: each vector is multiplied by +1 or -1 so that its entry of largest magnitude is
positive (the first such entry on ties). Two builds of the same checkpoint are bit-identical.

The sidecar ``gate_vectors_index.json``::

    format_version       int; readers refuse a version they do not know
    dtype, byteorder, layout, file
    num_feats, num_layers, total_bytes
    model_config         {model_type, num_hidden_layers, moe: {n_routed_experts, n_shared_experts,
                          num_experts_per_tok, hidden_size, moe_intermediate_size}}
    source               {repo_id, revision, path}        (revision: commit sha when known)
    builder              {name, version, method, sign_rule}
    layers               {"L": {file_offset, shape, nbytes, sha256,
                                median_var{K}, q25_var{K}, q75_var{K}}}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from .errors import UsageError, VindexFormatError

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})

# ---- files ---------------------------------------------------------------------------------
GATE_VECTORS_BIN = "gate_vectors.bin"
INDEX_JSON = "gate_vectors_index.json"
PHASE1_JSON = "phase1_moe_svd.json"
PHASE2_JSON = "phase2_router_svd.json"
CARD_FILE = "README.md"
VAR_PLOT_FILE = "images/var_per_layer.png"
LARQL_INDEX_JSON = "index.json"
LARQL_ROUTER_BIN = "router_weights.bin"
DATA_DIR = "data"
# Work files of an unfinished build; never part of a published vindex.
BUILD_STATE_DIR = ".vindex-build"

# ---- binary layout -------------------------------------------------------------------------
DTYPE = "float32"
NUMPY_DTYPE = "<f4"
ITEMSIZE = 4
BYTEORDER = "little"
LAYOUT = "[layers, experts, num_feats, hidden]"
SIGN_RULE = "largest-magnitude entry positive (first on ties)"

# ---- Arrow mirror: configs, splits, columns ------------------------------------------------
CONFIG_GATE_VECTORS = "gate_vectors"  # the default config
CONFIG_EXPERT_STATS = "expert_stats"
CONFIG_ROUTER_SVD = "router_svd"
STATS_SPLIT = "train"  # the one split of expert_stats and router_svd

COL_LAYER = "layer"
COL_EXPERT = "expert"
COL_FEATURE = "feature"
COL_VECTOR = "vector"
COL_FROBENIUS = "frobenius_norm"
COL_SINGULAR_VALUES = "singular_values"

# Router statistics: the k of the top-k energy fractions (DESIGN.md, Statistics).
ROUTER_TOPK = (1, 8, 16, 32, 64)


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


# ---- statistic key names --------------------------------------------------------------------
def var_key(num_feats: int) -> str:
    """``var64``: the energy fraction sum(s[:K]^2)/||W||_F^2 for K = num_feats."""
    return f"var{num_feats}"


def summary_var_key(stat: str, num_feats: int) -> str:
    """``median_var64``, ``q25_var64``, ``mean_var64``...: a statistic of var{K} over experts."""
    return f"{stat}_{var_key(num_feats)}"


def median_var_key(num_feats: int) -> str:
    return summary_var_key("median", num_feats)


def q25_var_key(num_feats: int) -> str:
    return summary_var_key("q25", num_feats)


def q75_var_key(num_feats: int) -> str:
    return summary_var_key("q75", num_feats)


ROUTER_EFFECTIVE_RANK = "effective_rank"
ROUTER_STABLE_RANK = "stable_rank"
ROUTER_S0_S1 = "s0_s1"


def router_topk_key(k: int) -> str:
    return f"top{k}_energy"


# ---- offset rules ---------------------------------------------------------------------------
def layer_nbytes(num_experts: int, num_feats: int, hidden_size: int) -> int:
    return num_experts * num_feats * hidden_size * ITEMSIZE


def expert_nbytes(num_feats: int, hidden_size: int) -> int:
    return num_feats * hidden_size * ITEMSIZE


def layer_offset(slot: int, num_experts: int, num_feats: int, hidden_size: int) -> int:
    """Byte offset of the ``slot``-th stored layer (slot = position in ascending layer order)."""
    return slot * layer_nbytes(num_experts, num_feats, hidden_size)


# ---- the sidecar ----------------------------------------------------------------------------
# Top-level keys other modules need to name (a seed-style sidecar lacks FORMAT_VERSION_KEY).
FORMAT_VERSION_KEY = "format_version"
NUM_FEATS_KEY = "num_feats"
LAYERS_KEY = "layers"


@dataclass
class MoEConfig:
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    hidden_size: int
    moe_intermediate_size: int


@dataclass
class ModelConfig:
    model_type: str
    num_hidden_layers: int
    moe: MoEConfig


@dataclass
class SourceInfo:
    repo_id: str | None = None  # Hub model repo the checkpoint came from, when known
    revision: str | None = None  # commit sha (40 hex) when known
    path: str | None = None  # local folder, when built from one


@dataclass
class BuilderInfo:
    name: str
    version: str
    method: str
    sign_rule: str = SIGN_RULE


@dataclass
class LayerEntry:
    file_offset: int
    shape: list[int]  # [num_experts, num_feats, hidden_size]
    nbytes: int
    sha256: str
    median_var: float
    q25_var: float
    q75_var: float


@dataclass
class VindexIndex:
    """The typed sidecar. ``to_json``/``from_json`` are the only places its keys are spelled."""

    num_feats: int
    model_config: ModelConfig
    source: SourceInfo
    builder: BuilderInfo
    layers: dict[int, LayerEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # derived facts
    @property
    def num_experts(self) -> int:
        return self.model_config.moe.n_routed_experts

    @property
    def hidden_size(self) -> int:
        return self.model_config.moe.hidden_size

    @property
    def layer_ids(self) -> list[int]:
        return sorted(self.layers)

    @property
    def layer_nbytes(self) -> int:
        return layer_nbytes(self.num_experts, self.num_feats, self.hidden_size)

    @property
    def total_bytes(self) -> int:
        return self.layer_nbytes * len(self.layers)

    def layer(self, layer: int) -> LayerEntry:
        try:
            return self.layers[layer]
        except KeyError:
            raise VindexFormatError(
                f"layer {layer} is not in this vindex (it holds layers {layer_span(self.layer_ids)})"
            ) from None

    # JSON
    def to_json(self) -> dict[str, Any]:
        k = self.num_feats
        return {
            FORMAT_VERSION_KEY: self.format_version,
            "file": GATE_VECTORS_BIN,
            "dtype": DTYPE,
            "byteorder": BYTEORDER,
            "layout": LAYOUT,
            NUM_FEATS_KEY: k,
            "num_layers": len(self.layers),
            "total_bytes": self.total_bytes,
            "model_config": asdict(self.model_config),
            "source": asdict(self.source),
            "builder": asdict(self.builder),
            LAYERS_KEY: {
                str(layer): {
                    "file_offset": e.file_offset,
                    "shape": list(e.shape),
                    "nbytes": e.nbytes,
                    "sha256": e.sha256,
                    median_var_key(k): e.median_var,
                    q25_var_key(k): e.q25_var,
                    q75_var_key(k): e.q75_var,
                }
                for layer, e in sorted(self.layers.items())
            },
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = INDEX_JSON) -> "VindexIndex":
        """Parse and check a sidecar; ``where`` (a path or URL) goes into error messages."""
        try:
            version = data.get(FORMAT_VERSION_KEY)
            if version not in SUPPORTED_FORMAT_VERSIONS:
                raise VindexFormatError(
                    f"{where}: format_version {version!r} is not one this vindex-hub reads "
                    f"({sorted(SUPPORTED_FORMAT_VERSIONS)}); upgrade vindex-hub"
                )
            if data.get("dtype") != DTYPE:
                raise VindexFormatError(f"{where}: dtype {data.get('dtype')!r}, expected {DTYPE!r}")
            k = int(data[NUM_FEATS_KEY])
            mc = data["model_config"]
            index = cls(
                num_feats=k,
                model_config=ModelConfig(
                    model_type=mc["model_type"],
                    num_hidden_layers=int(mc["num_hidden_layers"]),
                    moe=MoEConfig(**{f: int(mc["moe"][f]) for f in MoEConfig.__dataclass_fields__}),
                ),
                source=SourceInfo(**{f: data["source"].get(f) for f in SourceInfo.__dataclass_fields__}),
                builder=BuilderInfo(**{f: data["builder"][f] for f in BuilderInfo.__dataclass_fields__}),
                layers={
                    int(name): LayerEntry(
                        file_offset=int(e["file_offset"]),
                        shape=[int(x) for x in e["shape"]],
                        nbytes=int(e["nbytes"]),
                        sha256=str(e["sha256"]),
                        median_var=float(e[median_var_key(k)]),
                        q25_var=float(e[q25_var_key(k)]),
                        q75_var=float(e[q75_var_key(k)]),
                    )
                    for name, e in data[LAYERS_KEY].items()
                },
                format_version=version,
            )
        except VindexFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VindexFormatError(f"{where}: malformed sidecar ({type(exc).__name__}: {exc})") from None
        index.check_layout(where=where)
        return index

    @classmethod
    def loads(cls, text: str, *, where: str = INDEX_JSON) -> "VindexIndex":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VindexFormatError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise VindexFormatError(f"{where}: expected a JSON object")
        return cls.from_json(data, where=where)

    def check_layout(self, *, where: str = INDEX_JSON, file_size: int | None = None) -> None:
        """Offsets follow the layout rule (no overlap, no gap) and fit ``file_size`` if given."""
        expect_shape = [self.num_experts, self.num_feats, self.hidden_size]
        for slot, layer in enumerate(self.layer_ids):
            e = self.layers[layer]
            if e.shape != expect_shape:
                raise VindexFormatError(f"{where}: layer {layer} shape {e.shape}, expected {expect_shape}")
            if e.nbytes != self.layer_nbytes:
                raise VindexFormatError(f"{where}: layer {layer} nbytes {e.nbytes}, expected {self.layer_nbytes}")
            want = slot * self.layer_nbytes
            if e.file_offset != want:
                raise VindexFormatError(
                    f"{where}: layer {layer} file_offset {e.file_offset}, expected {want} "
                    "(layers are contiguous in ascending order; offsets overlap or leave gaps)"
                )
            if file_size is not None and e.file_offset + e.nbytes > file_size:
                raise VindexFormatError(
                    f"{where}: layer {layer} spans bytes {e.file_offset}..{e.file_offset + e.nbytes} "
                    f"but {GATE_VECTORS_BIN} holds {file_size} bytes"
                )
        if file_size is not None and file_size != self.total_bytes:
            raise VindexFormatError(
                f"{GATE_VECTORS_BIN} holds {file_size} bytes but {where} describes {self.total_bytes}"
            )


# ---- layer selections ------------------------------------------------------------------------
def parse_layers(spec: str | Iterable[int] | None, num_layers: int) -> list[int]:
    """``"0-42"``, ``"3,5,7-9"``, an iterable of ints, or None (all) -> sorted unique layer ids."""
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, str):
        ids: set[int] = set()
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise UsageError(f"bad layer selection {spec!r}: use forms like 0-42 or 3,5,7-9")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UsageError(f"bad layer range {part!r} in {spec!r}: end before start")
            ids.update(range(lo, hi + 1))
    else:
        ids = {int(x) for x in spec}
    if not ids:
        raise UsageError(f"layer selection {spec!r} selects no layer")
    bad = sorted(i for i in ids if not 0 <= i < num_layers)
    if bad:
        raise UsageError(f"layers {bad} out of range: the model has layers 0-{num_layers - 1}")
    return sorted(ids)


def layer_span(layers: Sequence[int], *, labels: bool = False) -> str:
    """``0-42`` for a contiguous run, else ``3,5``; with ``labels``: ``L00-L42`` / ``L03, L05``."""
    layers = list(layers)
    if not layers:
        return "none"
    name = (lambda layer: f"L{layer:02d}") if labels else str
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{name(layers[0])}-{name(layers[-1])}"
    return (", " if labels else ",").join(map(name, layers))
