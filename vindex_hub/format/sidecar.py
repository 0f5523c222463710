"""The typed sidecar ``gate_vectors_index.json``: ``VindexIndex`` and its parts.

``to_json``/``from_json`` are the only places its keys are spelled; ``check_layout`` holds the
binary's layout rule against the entries. The format is described in prose in ``format/__init__``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UsageError, VindexFormatError
from . import layout
from .filenames import GATE_VECTORS_BIN, SIDECAR_JSON
from .selection import layer_span
from .statistics import median_var_key, q25_var_key, q75_var_key

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
# Top-level keys other modules need to name (a seed-style sidecar lacks FORMAT_VERSION_KEY).
FORMAT_VERSION_KEY = "format_version"
NUM_FEATS_KEY = "num_feats"
LAYERS_KEY = "layers"
# false: the model's router is not one [n_routed_experts, hidden_size] matrix (ZAYA's is an MLP),
# so the vindex holds no router figures (phase documents and ``router_svd`` give none, no LarQL
# router file). Written only then: a sidecar without the key (every older one) has a router matrix.
ROUTER_MATRIX_KEY = "router_matrix"
# Builder fields of a converted seed-style vindex, which recorded none.
UNKNOWN = "unknown"
# Bounds checked before anything is parsed or allocated from a sidecar (remote data): far above any
# real model (a few hundred layers of a few hundred experts; hidden sizes of some thousands; a
# real sidecar is well under 1 MiB), far below what would stall a reader. The file's size is
# checked before it is parsed, the model's layer count before the layer entries are read.
MAX_SIDECAR_BYTES = 8 * 2**20
MAX_LAYERS = 4096  # model_config.num_hidden_layers
MAX_EXPERTS = 65536  # n_routed_experts, n_shared_experts, num_experts_per_tok
MAX_FEATS = 65536  # num_feats
MAX_HIDDEN = 2**24  # hidden_size, moe_intermediate_size


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
    """Where the checkpoint came from, never as a local path: a Hub repo id + commit sha, or a local
    folder's name + the checkpoint's own fingerprint (``CheckpointSource.content_fingerprint``)."""

    repo_id: str | None = None  # Hub model repo the checkpoint came from, when known
    revision: str | None = None  # commit sha (40 hex) when known
    name: str | None = None  # a local checkpoint folder's name (its last path component only)
    fingerprint: str | None = None  # sha256 of a local checkpoint's index JSON (or config + header)
    path: str | None = None  # older sidecars recorded the local folder itself: read, never written
    # What the card links and licenses by (written only when known; not part of ``identity``):
    model_id: str | None = None  # a local checkpoint's Hub model id, as its config.json names it
    license: str | None = None  # the source model's license, from its card's front matter

    @property
    def model_repo_id(self) -> str | None:
        """The Hub model the vindex was built from: the repo id of a Hub build, else the model id a
        local checkpoint names."""
        return self.repo_id or self.model_id

    @classmethod
    def local(cls, folder: str, fingerprint: str | None) -> SourceInfo:
        return cls(name=Path(folder).name, fingerprint=fingerprint)

    @property
    def identity(self) -> str | None:
        """What names the checkpoint in a resume fingerprint: repo id, else name + fingerprint."""
        if self.repo_id:
            return self.repo_id
        if self.fingerprint:
            return f"{self.name}@sha256:{self.fingerprint}"
        return self.path


# Source keys written only when set (sidecars from before they existed stay byte-identical).
_SOURCE_WHEN_KNOWN = frozenset({"path", "model_id", "license"})


@dataclass
class BuilderInfo:
    name: str
    version: str
    method: str
    sign_rule: str = layout.SIGN_RULE
    # How the vectors were computed (None in sidecars written before these were recorded):
    svd_route: str | None = (
        None  # numerics.svd ROUTE_*: which decomposition (cpu-mixed, cpu-f64, cuda-f64)
    )
    blas_threads: int | None = None  # BLAS threads per decomposition: the route's bits depend on it
    workers: int | None = (
        None  # processes the experts were decomposed on (the bits do not depend on it)
    )

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuilderInfo:
        optional = {f.name for f in fields(cls) if f.default is None}
        values: dict[str, Any] = {
            f: data.get(f) if f in optional else data[f] for f in cls.__dataclass_fields__
        }
        return cls(**values)


@dataclass
class LayerEntry:
    file_offset: int
    shape: list[int]  # [num_experts, num_feats, hidden_size]
    nbytes: int
    sha256: str
    median_var: float
    q25_var: float
    q75_var: float


def _layer_id(name: object, num_layers: int, where: str) -> int:
    """A sidecar layer key: the decimal spelling of one of the model's layer ids, nothing else."""
    if (
        not isinstance(name, str)
        or not name.isdigit()
        or str(int(name)) != name
        or int(name) >= num_layers
    ):
        raise VindexFormatError(
            f"{where}: layer key {name!r} is not a layer of the model "
            f"(expected 0-{num_layers - 1}, written in decimal)"
        )
    return int(name)


@dataclass
class VindexIndex:
    """The typed sidecar. ``to_json``/``from_json`` are the only places its keys are spelled."""

    num_feats: int
    model_config: ModelConfig
    source: SourceInfo
    builder: BuilderInfo
    layers: dict[int, LayerEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    router_matrix: bool = True  # ROUTER_MATRIX_KEY

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
    def layer_shape(self) -> list[int]:
        """One layer's block: ``[num_experts, num_feats, hidden_size]``."""
        return [self.num_experts, self.num_feats, self.hidden_size]

    @property
    def array_shape(self) -> tuple[int, ...]:
        """``gate_vectors.bin`` as one array: ``(stored layers, num_experts, num_feats, hidden_size)``."""
        return (len(self.layers), *self.layer_shape)

    @property
    def layer_nbytes(self) -> int:
        return layout.layer_nbytes(*self.layer_shape)

    def layer_offset(self, slot: int) -> int:
        """Byte offset of the ``slot``-th stored layer (``layout.layer_offset``)."""
        return layout.layer_offset(slot, *self.layer_shape)

    @property
    def total_bytes(self) -> int:
        return self.layer_nbytes * len(self.layers)

    @property
    def display_name(self) -> str:
        """The model's name for people: its Hub repo id, else the checkpoint folder's name, else the
        model type. Never a local path (a vindex's card, commit and LarQL index show this)."""
        if self.source.repo_id:
            return self.source.repo_id
        local = self.source.name or (Path(self.source.path).name if self.source.path else None)
        return local or self.model_config.model_type

    def layer(self, layer: int) -> LayerEntry:
        try:
            return self.layers[layer]
        except KeyError:
            # A wrong request, not a broken vindex: say what there is to ask for.
            raise UsageError(
                f"layer {layer} is not in this vindex: it holds {len(self.layers)} layer(s), "
                f"{layer_span(self.layer_ids)}"
            ) from None

    # JSON
    def to_json(self) -> dict[str, Any]:
        k = self.num_feats
        return {
            FORMAT_VERSION_KEY: self.format_version,
            "file": GATE_VECTORS_BIN,
            "dtype": layout.DTYPE,
            "byteorder": layout.BYTEORDER,
            "layout": layout.LAYOUT,
            NUM_FEATS_KEY: k,
            "num_layers": len(self.layers),
            "total_bytes": self.total_bytes,
            "model_config": asdict(self.model_config),
            "source": {
                k: v
                for k, v in asdict(self.source).items()
                if k not in _SOURCE_WHEN_KNOWN or v is not None
            },
            "builder": self.builder.to_json(),
            **({} if self.router_matrix else {ROUTER_MATRIX_KEY: False}),
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
    def from_json(
        cls, data: dict[str, Any], *, where: str = SIDECAR_JSON, check_dimensions: bool = True
    ) -> VindexIndex:
        """Parse and check a sidecar; ``where`` (a path or URL) goes into error messages.

        ``check_dimensions=False`` only for ``format.seed``, whose placeholders are negative."""
        if not isinstance(data, dict):
            raise VindexFormatError(f"{where}: expected a JSON object")
        try:
            version = data.get(FORMAT_VERSION_KEY)
            if version not in SUPPORTED_FORMAT_VERSIONS:
                raise VindexFormatError(
                    f"{where}: format_version {version!r} is not one this vindex-hub reads "
                    f"({sorted(SUPPORTED_FORMAT_VERSIONS)}); upgrade vindex-hub"
                )
            if data.get("dtype") != layout.DTYPE:
                raise VindexFormatError(
                    f"{where}: dtype {data.get('dtype')!r}, expected {layout.DTYPE!r}"
                )
            k = int(data[NUM_FEATS_KEY])
            router_matrix = data.get(ROUTER_MATRIX_KEY, True)
            if not isinstance(router_matrix, bool):
                raise VindexFormatError(
                    f"{where}: {ROUTER_MATRIX_KEY} is {router_matrix!r}, expected true or false"
                )
            mc = data["model_config"]
            if check_dimensions:  # before the layer entries are read: 10**6 of them stop here
                _check_dimensions(k, mc, where)
            index = cls(
                num_feats=k,
                model_config=ModelConfig(
                    model_type=mc["model_type"],
                    num_hidden_layers=int(mc["num_hidden_layers"]),
                    moe=MoEConfig(**{f: int(mc["moe"][f]) for f in MoEConfig.__dataclass_fields__}),
                ),
                source=SourceInfo(
                    **{f: data["source"].get(f) for f in SourceInfo.__dataclass_fields__}
                ),
                builder=BuilderInfo.from_json(data["builder"]),
                layers={
                    _layer_id(name, int(mc["num_hidden_layers"]), where): LayerEntry(
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
                router_matrix=router_matrix,
            )
        except VindexFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise VindexFormatError(
                f"{where}: malformed sidecar ({type(exc).__name__}: {exc})"
            ) from None
        index.check_layout(where=where)
        return index

    @classmethod
    def loads(cls, text: str, *, where: str = SIDECAR_JSON) -> VindexIndex:
        check_sidecar_size(len(text), where)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VindexFormatError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_json(data, where=where)

    @classmethod
    def load(cls, path: Path, *, where: str | None = None) -> VindexIndex:
        """The sidecar file at ``path``, its size checked before it is read."""
        return cls.loads(read_sidecar_text(path, where=where), where=where or str(path))

    def check_layout(self, *, where: str = SIDECAR_JSON, file_size: int | None = None) -> None:
        """Offsets follow the layout rule (no overlap, no gap) and fit ``file_size`` if given."""
        expect_shape = self.layer_shape
        if self.layer_nbytes > layout.MAX_LAYER_NBYTES:
            raise VindexFormatError(
                f"{where}: a layer of {' x '.join(map(str, expect_shape))} {layout.DTYPE} claims "
                f"{self.layer_nbytes:,} bytes ({layout.format_size(self.layer_nbytes)}), above the "
                f"{layout.format_size(layout.MAX_LAYER_NBYTES)} any real model's layer holds; refusing it"
            )
        for slot, layer in enumerate(self.layer_ids):
            e = self.layers[layer]
            if e.shape != expect_shape:
                raise VindexFormatError(
                    f"{where}: layer {layer} shape {e.shape}, expected {expect_shape}"
                )
            if e.nbytes != self.layer_nbytes:
                raise VindexFormatError(
                    f"{where}: layer {layer} nbytes {e.nbytes}, expected {self.layer_nbytes}"
                )
            want = self.layer_offset(slot)
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


def check_sidecar_size(nbytes: int, where: str) -> None:
    """``VindexFormatError`` when a sidecar of ``nbytes`` is above ``MAX_SIDECAR_BYTES``."""
    if nbytes > MAX_SIDECAR_BYTES:
        raise VindexFormatError(
            f"{where}: {nbytes:,} bytes, above the {MAX_SIDECAR_BYTES:,} a sidecar may hold; "
            "refusing to parse it"
        )


def read_sidecar_text(path: Path, *, where: str | None = None) -> str:
    """The text of the sidecar at ``path``, refused unread when the file is too large
    (``FileNotFoundError`` passes through for the caller to word)."""
    check_sidecar_size(path.stat().st_size, where or str(path))
    return path.read_text(encoding="utf-8")


def _check_dimensions(num_feats: object, model_config: Any, where: str) -> None:
    """Every count of the sidecar an integer in its documented range (a negative or absurd one is
    refused by name before any array is shaped from it)."""
    moe = model_config["moe"]
    bounds: list[tuple[str, object, int, int]] = [
        (NUM_FEATS_KEY, num_feats, 1, MAX_FEATS),
        ("model_config.num_hidden_layers", model_config["num_hidden_layers"], 1, MAX_LAYERS),
        ("model_config.moe.n_routed_experts", moe["n_routed_experts"], 1, MAX_EXPERTS),
        ("model_config.moe.n_shared_experts", moe["n_shared_experts"], 0, MAX_EXPERTS),
        ("model_config.moe.num_experts_per_tok", moe["num_experts_per_tok"], 0, MAX_EXPERTS),
        ("model_config.moe.hidden_size", moe["hidden_size"], 1, MAX_HIDDEN),
        ("model_config.moe.moe_intermediate_size", moe["moe_intermediate_size"], 1, MAX_HIDDEN),
    ]
    for name, value, low, high in bounds:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise VindexFormatError(
                f"{where}: {name} is {value!r}, expected an integer in {low}..{high:,}; "
                "refusing this sidecar"
            )
