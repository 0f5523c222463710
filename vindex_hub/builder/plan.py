"""Planning a build: which source, which layers, which vindex, and whether the output folder is ours.

A plan is fixed before any tensor is read: the architecture adapter, the MoE layers to build, the
sidecar to fill in, and the build's *fingerprint* (what must match for a build to resume in a
folder, and for a finished vindex there to count as this one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..arch import MoEArchitecture, get_architecture
from ..errors import OutputConflictError, UsageError
from ..format import filenames, mirror, selection, sidecar
from ..fsutil import atomic_write_json, read_json_object
from ..numerics import routes
from ..source.base import CheckpointSource
from ..writers.browse import BrowseOptions
from .decompose import DecomposeSettings
from .workers import worker_count

BUILDER_NAME = "vindex-hub"


def open_source(
    source: str | os.PathLike[str] | CheckpointSource,
    *,
    revision: str | None = None,
    token: str | None = None,
) -> CheckpointSource:
    """A local checkpoint folder, a Hub model repo id, or an already open source."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if path.is_dir():
        from ..source.local import LocalCheckpoint

        if revision is not None:
            raise UsageError(
                f"revision={revision!r} applies to Hub repos, but {source} is a local folder"
            )
        return LocalCheckpoint(path)
    text = str(source)
    if path.exists() or text.startswith((".", "/")) or text.count("/") != 1:
        raise UsageError(f"{source}: not a checkpoint folder, nor a Hub repo id (namespace/name)")
    from ..source.hub import HubCheckpoint

    return HubCheckpoint(text, revision=revision, token=token)


# A Hub model id as configs and cache folders spell it: ``namespace/name``, the Hub's characters.
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# huggingface_hub's cache folder for a model repo: .../models--<ns>--<name>/snapshots/<commit>
_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\][0-9a-f]{40}$")


def local_model_id(src: CheckpointSource) -> str | None:
    """The Hub model a local checkpoint is a copy of, when it says so: ``_name_or_path`` in its
    config.json (written by older transformers), else the Hub cache folder it sits in."""
    named = src.config.get("_name_or_path")
    if isinstance(named, str) and _MODEL_ID.fullmatch(named) and ".." not in named:
        return named
    cached = _CACHE_SNAPSHOT.search(str(Path(src.path).resolve())) if src.path else None
    return f"{cached.group(1)}/{cached.group(2)}" if cached else None


def source_license(src: CheckpointSource) -> str | None:
    """The ``license`` of the source model's card (its README.md front matter), when it has one."""
    from ..errors import CheckpointError, VindexError
    from ..format.card_data import read_card_data

    try:
        value = read_card_data(src.file(filenames.CARD_FILE)).get("license")
    except CheckpointError:  # no card
        return None
    except VindexError:  # a card whose front matter does not parse: no license to inherit
        return None
    return value if isinstance(value, str) and value.strip() else None


@dataclass
class BuildPlan:
    out: Path
    arch: MoEArchitecture
    layer_ids: list[int]  # ascending; slot i of the binary holds layer_ids[i]
    num_feats: int
    device: str  # resolved: "cpu" or "cuda"
    precision: str  # numerics.routes.PRECISIONS
    workers: int  # processes decomposing the experts (does not change a bit)
    larql_router: bool
    index: sidecar.VindexIndex  # the sidecar to fill in, layers still empty
    fingerprint: dict[str, Any]
    browse: BrowseOptions = BrowseOptions()  # feature tokens / LarQL browse tier
    geometry: bool = False  # expert geometry (writers.geometry): keeps the routers for alignment

    @property
    def keep_router(self) -> bool:
        """Whether each layer's router weight is kept in its result (LarQL's file, the geometry)."""
        return self.larql_router or self.geometry

    @property
    def state_dir(self) -> Path:
        return self.out / filenames.BUILD_STATE_DIR

    def slot(self, layer: int) -> int:
        return self.layer_ids.index(layer)

    def decompose_settings(self, batch_size: int) -> DecomposeSettings:
        """How every engine decomposes this plan's experts (``batch_size`` changes no bit)."""
        return DecomposeSettings(
            num_feats=self.num_feats,
            device=self.device,
            precision=self.precision,
            batch_size=batch_size,
            # the constant the sidecar records, not read back from it
            blas_threads=routes.BLAS_THREADS,
        )


def make_plan(
    src: CheckpointSource,
    out: str | os.PathLike[str],
    *,
    num_feats: int,
    layers: str | Sequence[int] | None,
    device: str,
    larql_router: bool,
    browse: BrowseOptions | None = None,
    precision: str = routes.DEFAULT_PRECISION,
    workers: int | None = None,
) -> BuildPlan:
    arch = get_architecture(
        src.config, tensor_names=src.tensor_names(), where=f"{src.describe()}/config.json"
    )
    layer_ids = _select_layers(arch, layers)
    _check_num_feats(arch, num_feats)
    if larql_router and not arch.has_router_matrix:
        raise UsageError(
            f"larql_router: {arch.model_type}'s router is an MLP, not an [E, H] matrix, so "
            f"there are no router weights for LarQL's {filenames.LARQL_ROUTER_BIN}"
        )
    device = routes.resolve_device(device)
    route = routes.route_for(device, precision)
    workers = worker_count(device, workers)
    browse = dataclasses.replace(browse or BrowseOptions(), device=device)
    index = sidecar.VindexIndex(
        num_feats=num_feats,
        model_config=sidecar.ModelConfig(
            model_type=arch.model_type,
            num_hidden_layers=arch.num_hidden_layers,
            moe=arch.moe_config(),
        ),
        source=dataclasses.replace(
            sidecar.SourceInfo(repo_id=src.repo_id, revision=src.revision)
            if src.repo_id
            else sidecar.SourceInfo.local(src.path or src.describe(), src.content_fingerprint()),
            model_id=None if src.repo_id else local_model_id(src),
            license=source_license(src),
        ),
        builder=sidecar.BuilderInfo(
            name=BUILDER_NAME,
            version=__version__,
            method=routes.method_for(route),
            svd_route=route,
            blas_threads=routes.BLAS_THREADS,
            workers=workers,
        ),
        router_matrix=arch.has_router_matrix,
    )
    config_sha = config_sha256(src.config)
    # The device, the SVD route and the BLAS threads are part of it: results of different routes
    # agree to ~1e-6, and LAPACK's bits change with the thread count, so one vindex must not mix
    # layers computed differently. The worker count is not: it changes no bit.
    fingerprint = {
        **_identity(index, layer_ids, larql_router, _browse_identity(browse)),
        "config_sha256": config_sha,
        "device": device,
    }
    return BuildPlan(
        Path(out),
        arch,
        layer_ids,
        num_feats,
        device,
        precision,
        workers,
        larql_router,
        index,
        fingerprint,
        browse,
    )


def config_sha256(config: dict[str, Any]) -> str:
    """The fingerprint's hash of a checkpoint's config.json (every worker checks it sees the same)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _browse_identity(browse: BrowseOptions) -> dict[str, Any]:
    return {"feature_tokens": browse.feature_tokens, "larql_browse": browse.writes_larql_files}


def _browse_identity_of_folder(out: Path) -> dict[str, Any]:
    """What a finished folder's files tell of its browse options."""
    import pyarrow.parquet as pq

    tokens = out / mirror.FEATURE_TOKENS_PARQUET
    k = mirror.feature_tokens_k(pq.read_schema(tokens)) if tokens.is_file() else 0
    return {"feature_tokens": k, "larql_browse": (out / filenames.LARQL_EMBEDDINGS_BIN).is_file()}


def _identity(
    index: sidecar.VindexIndex, layer_ids: list[int], larql_router: bool, browse: dict[str, Any]
) -> dict[str, Any]:
    """The part of the fingerprint a finished vindex's own files also tell."""
    return {
        **browse,
        "model_type": index.model_config.model_type,
        "source": index.source.identity,
        "revision": index.source.revision,
        "num_feats": index.num_feats,
        "layers": layer_ids,
        "builder_version": index.builder.version,
        "method": index.builder.method,
        "svd_route": index.builder.svd_route,
        "blas_threads": index.builder.blas_threads,
        "larql_router": larql_router,
    }


def _select_layers(arch: MoEArchitecture, layers: str | Sequence[int] | None) -> list[int]:
    moe = arch.moe_layers()
    if layers is None:
        return moe
    chosen = selection.parse_layers(layers, arch.num_hidden_layers)
    dense = sorted(set(chosen) - set(moe))
    if dense:
        raise UsageError(
            f"layers {dense} are not MoE layers (MoE layers: {selection.layer_span(moe)})"
        )
    return chosen


def _check_num_feats(arch: MoEArchitecture, num_feats: int) -> None:
    bound = min(arch.gate_shape)
    if not 1 <= num_feats <= bound:
        raise UsageError(
            f"num_feats={num_feats} must be between 1 and the rank bound {bound} of gate_proj "
            f"{list(arch.gate_shape)}"
        )


def claim_output(plan: BuildPlan) -> sidecar.VindexIndex | None:
    """Refuse a folder holding another vindex or another build's state; record ours.

    Returns the existing sidecar when ``plan.out`` already holds this very vindex, finished.
    """
    out, state_dir, fingerprint = plan.out, plan.state_dir, plan.fingerprint
    existing_index = out / filenames.SIDECAR_JSON
    if existing_index.exists():
        index = sidecar.VindexIndex.load(existing_index)
        theirs = _identity(
            index,
            index.layer_ids,
            (out / filenames.LARQL_ROUTER_BIN).exists(),
            _browse_identity_of_folder(out),
        )
        changed = {k: (v, fingerprint[k]) for k, v in theirs.items() if fingerprint[k] != v}
        if changed:
            raise OutputConflictError(
                f"{out} already holds a different vindex ({_describe_changes(changed)}); "
                "choose another output folder, or remove it to rebuild"
            )
        binary = out / filenames.GATE_VECTORS_BIN
        size = binary.stat().st_size if binary.exists() else None
        if size != index.total_bytes:
            raise OutputConflictError(
                f"{out} holds {filenames.SIDECAR_JSON} but its {filenames.GATE_VECTORS_BIN} is "
                f"{'missing' if size is None else f'{size} bytes, not {index.total_bytes}'}; "
                "run `vindex-hub verify` on it, or remove it to rebuild"
            )
        return index
    state_file = state_dir / filenames.BUILD_STATE_FILE
    if state_file.exists():
        recorded = read_json_object(state_file, what="build state", error=OutputConflictError)
        changed = {k: (recorded.get(k), v) for k, v in fingerprint.items() if recorded.get(k) != v}
        if changed:
            raise OutputConflictError(
                f"{out} holds an unfinished build of a different vindex ({_describe_changes(changed)}); "
                f"remove {state_dir} to start over"
            )
        return None
    if (out / filenames.GATE_VECTORS_BIN).exists():
        raise OutputConflictError(
            f"{out} holds a {filenames.GATE_VECTORS_BIN} without its "
            f"{filenames.SIDECAR_JSON}; choose another output folder"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_file, fingerprint)
    return None


def _describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} here, {new!r} asked" for key, (old, new) in changed.items())
