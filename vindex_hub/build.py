"""The builder: checkpoint -> vindex folder, one layer at a time, resumable.

Flow (DESIGN.md): a reader thread fetches the raw tensors of layer L+1 (local mmap or ranged
reads from the Hub) while the main thread dequantizes and decomposes layer L in batches of
experts. Each finished layer is written into the preallocated binary and fsynced, then its
``LayerResult`` is saved: a layer counts as done only once both are on disk, so a build killed at
any point resumes after its last completed layer and ends bit-identical to an uninterrupted one.

Work files live in ``OUT/.vindex-build/``; the published files appear under their final names
only when complete, and the sidecar ``gate_vectors_index.json`` is written last, so a folder
holding a sidecar is a finished vindex.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from . import __version__
from .format import filenames, layout, selection, sidecar, statistics
from .numerics import svd
from .arch import MoEArchitecture, get_architecture
from .checksums import sha256_file_range
from .errors import CheckpointError, OutputConflictError, UsageError, VindexError
from .fsutil import atomic_write_json, read_json_object
from .results import LayerResult, layer_result_path
from .source.base import CheckpointSource, RawTensor
from .writers import phases as stats_json
from .writers.binary import GateVectorsWriter

BUILDER_NAME = "vindex-hub"
STATE_FILE = "build.json"
PARTIAL_BIN = filenames.GATE_VECTORS_BIN + ".partial"
# Experts decomposed per batch: bounds the float32 working set (8 x 32 MiB at real size).
DEFAULT_BATCH = 8
DEFAULT_NUM_FEATS = 64  # top-K right singular vectors per expert
DEFAULT_PREFETCH_LAYERS = 1


@dataclass
class BuildSummary:
    out: Path
    layers: list[int]
    built_layers: list[int]  # computed in this run (the others were resumed from disk)
    seconds: float
    index: sidecar.VindexIndex
    already_complete: bool = False  # ``out`` held this very vindex, finished: nothing was done


def open_source(source: str | os.PathLike[str] | CheckpointSource, *, revision: str | None = None,
                token: str | None = None) -> CheckpointSource:
    """A local checkpoint folder, a Hub model repo id, or an already open source."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if path.is_dir():
        from .source.local import LocalCheckpoint

        if revision is not None:
            raise UsageError(f"--revision applies to Hub repos, but {source} is a local folder")
        return LocalCheckpoint(path)
    text = str(source)
    if path.exists() or text.startswith((".", "/")) or text.count("/") != 1:
        raise UsageError(f"{source}: not a checkpoint folder, nor a Hub repo id (namespace/name)")
    from .source.hub import HubCheckpoint

    return HubCheckpoint(text, revision=revision, token=token)


def build_vindex(
    source: str | os.PathLike[str] | CheckpointSource,
    out: str | os.PathLike[str],
    *,
    num_feats: int = DEFAULT_NUM_FEATS,
    layers: str | Sequence[int] | None = None,
    revision: str | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    prefetch_layers: int = DEFAULT_PREFETCH_LAYERS,
    card_options: Any = None,
    larql_router: bool = False,
    progress: bool = True,
    token: str | None = None,
) -> BuildSummary:
    """Build a vindex of ``source`` into the folder ``out`` (resuming an unfinished build there).

    ``layers`` selects a subset (``"3-5"``, ``[3, 4, 5]``); ``card_options`` is a
    ``writers.card.CardOptions`` for the dataset card's user-set fields.
    """
    started = time.monotonic()
    for name, value in (("batch_size", batch_size), ("prefetch_layers", prefetch_layers)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    out = Path(out)
    src = open_source(source, revision=revision, token=token)
    try:
        arch = get_architecture(src.config, where=f"{src.describe()}/config.json")
        layer_ids = _select_layers(arch, layers)
        _check_num_feats(arch, num_feats)
        device = svd.resolve_device(device)
        index = _new_index(arch, src, num_feats, layer_ids)
        state_dir = out / filenames.BUILD_STATE_DIR
        fingerprint = _fingerprint(index, src, arch, layer_ids, larql_router, device)
        finished = _claim_output(out, state_dir, fingerprint)
        if finished is not None:  # the same vindex is already complete there: nothing to do
            return BuildSummary(out, layer_ids, [], time.monotonic() - started, finished,
                                already_complete=True)

        todo = [layer for layer in layer_ids if not _layer_done(state_dir, layer)]
        final_bin = out / filenames.GATE_VECTORS_BIN
        if todo or not final_bin.exists():
            writer = GateVectorsWriter(
                state_dir / PARTIAL_BIN, num_layers=len(layer_ids), num_experts=index.num_experts,
                num_feats=num_feats, hidden_size=index.hidden_size,
            )
            try:
                _check_resumed_layers(state_dir, writer.path, index, layer_ids, todo)
                _compute_layers(src, arch, writer, index, layer_ids, todo, state_dir,
                                batch_size=batch_size, device=device, prefetch=prefetch_layers,
                                keep_router=larql_router, progress=progress)
                writer.finish(final_bin)
            finally:
                writer.close()
        results = [LayerResult.load(layer_result_path(state_dir, layer)) for layer in layer_ids]
        _finish(out, index, results, src.config, card_options=card_options, larql_router=larql_router)
        shutil.rmtree(state_dir)
        return BuildSummary(out, layer_ids, todo, time.monotonic() - started, index)
    finally:
        src.close()


# ---- planning --------------------------------------------------------------------------------
def _select_layers(arch: MoEArchitecture, layers: str | Sequence[int] | None) -> list[int]:
    moe = arch.moe_layers()
    if layers is None:
        return moe
    chosen = selection.parse_layers(layers, arch.num_hidden_layers)
    dense = sorted(set(chosen) - set(moe))
    if dense:
        raise UsageError(f"layers {dense} are not MoE layers (MoE layers: {selection.layer_span(moe)})")
    return chosen


def _check_num_feats(arch: MoEArchitecture, num_feats: int) -> None:
    bound = min(arch.gate_shape)
    if not 1 <= num_feats <= bound:
        raise UsageError(
            f"--num-feats {num_feats} must be between 1 and the rank bound {bound} of gate_proj "
            f"{list(arch.gate_shape)}"
        )


def _new_index(arch: MoEArchitecture, src: CheckpointSource, num_feats: int,
               layer_ids: list[int]) -> sidecar.VindexIndex:
    return sidecar.VindexIndex(
        num_feats=num_feats,
        model_config=sidecar.ModelConfig(
            model_type=arch.model_type, num_hidden_layers=arch.num_hidden_layers, moe=arch.moe_config()
        ),
        source=(sidecar.SourceInfo(repo_id=src.repo_id, revision=src.revision) if src.repo_id
                else sidecar.SourceInfo.local(src.path or src.describe(), src.content_fingerprint())),
        builder=sidecar.BuilderInfo(name=BUILDER_NAME, version=__version__, method=svd.METHOD),
    )


def _fingerprint(index: sidecar.VindexIndex, src: CheckpointSource, arch: MoEArchitecture,
                 layer_ids: list[int], larql_router: bool, device: str) -> dict[str, Any]:
    """What must match for a build to resume in a folder (and for a vindex to be 'the same').

    The device is part of it: CPU (LAPACK) and CUDA (torch) results agree to ~1e-6, not bit for
    bit, so one vindex must not mix layers computed on both.
    """
    config_sha = hashlib.sha256(json.dumps(src.config, sort_keys=True).encode()).hexdigest()
    return {
        "model_type": arch.model_type,
        "source": index.source.identity,
        "revision": index.source.revision,
        "config_sha256": config_sha,
        "num_feats": index.num_feats,
        "layers": layer_ids,
        "builder_version": index.builder.version,
        "method": index.builder.method,
        "larql_router": larql_router,
        "device": device,
    }


def _claim_output(out: Path, state_dir: Path, fingerprint: dict[str, Any]) -> sidecar.VindexIndex | None:
    """Refuse a folder holding another vindex or another build's state; record ours.

    Returns the existing index when ``out`` already holds this very vindex, finished.
    """
    existing_index = out / filenames.INDEX_JSON
    if existing_index.exists():
        index = sidecar.VindexIndex.loads(existing_index.read_text(), where=str(existing_index))
        theirs = {
            "source": index.source.identity,
            "revision": index.source.revision,
            "model_type": index.model_config.model_type,
            "num_feats": index.num_feats,
            "layers": index.layer_ids,
            "builder_version": index.builder.version,
            "method": index.builder.method,
            "larql_router": (out / filenames.LARQL_ROUTER_BIN).exists(),
        }
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
                f"{out} holds {filenames.INDEX_JSON} but its {filenames.GATE_VECTORS_BIN} is "
                f"{'missing' if size is None else f'{size} bytes, not {index.total_bytes}'}; "
                "run `vindex-hub verify` on it, or remove it to rebuild"
            )
        return index
    state_file = state_dir / STATE_FILE
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
        raise OutputConflictError(f"{out} holds a {filenames.GATE_VECTORS_BIN} without its "
                                  f"{filenames.INDEX_JSON}; choose another output folder")
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_file, fingerprint)
    return None


def _describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} here, {new!r} asked" for key, (old, new) in changed.items())


def _layer_done(state_dir: Path, layer: int) -> bool:
    return layer_result_path(state_dir, layer).exists()


def _check_resumed_layers(state_dir: Path, bin_path: Path, index: sidecar.VindexIndex,
                          layer_ids: list[int], todo: list[int]) -> None:
    """A resumed layer's block must still hash to what was recorded when it was written."""
    for slot, layer in enumerate(layer_ids):
        if layer in todo:
            continue
        recorded = LayerResult.load(layer_result_path(state_dir, layer)).sha256
        offset = layout.layer_offset(slot, index.num_experts, index.num_feats, index.hidden_size)
        if sha256_file_range(bin_path, offset, index.layer_nbytes) != recorded:
            # The block was damaged after it was recorded: compute that layer again.
            layer_result_path(state_dir, layer).unlink()
            todo.append(layer)
    todo.sort()


# ---- the layer loop ---------------------------------------------------------------------------
def _compute_layers(src: CheckpointSource, arch: MoEArchitecture, writer: GateVectorsWriter,
                    index: sidecar.VindexIndex, layer_ids: list[int], todo: list[int], state_dir: Path,
                    *, batch_size: int, device: str, prefetch: int, keep_router: bool,
                    progress: bool) -> None:
    if not todo:
        return
    from tqdm.auto import tqdm

    num_experts = index.num_experts
    buffer: np.ndarray | None = None  # one reused dequantization buffer (no page faults per batch)
    bar = tqdm(total=len(todo) * num_experts, unit="expert", disable=not progress,
               desc="vindex", dynamic_ncols=True)
    try:
        for layer, raw, read_seconds, read_bytes in _prefetch(src, arch, todo, prefetch):
            bar.set_description(f"layer {layer}")
            bar.set_postfix_str(f"read {read_bytes / max(read_seconds, 1e-9) / 1e6:.0f} MB/s")
            vectors = np.empty((num_experts, index.num_feats, index.hidden_size), dtype=np.float32)
            singular_values = np.empty((num_experts, index.num_feats), dtype=np.float32)
            frobenius = np.empty(num_experts, dtype=np.float64)
            for start in range(0, num_experts, batch_size):
                experts = range(start, min(start + batch_size, num_experts))
                if buffer is None or len(buffer) != len(experts):
                    buffer = np.empty((len(experts), *arch.gate_shape), dtype=np.float32)
                weights = arch.expert_gate_weights(layer, experts, raw, out=buffer)
                names = [arch.expert_gate_tensors(layer, e)[0] for e in experts]
                top = svd.top_k_right_singular(weights, index.num_feats, device=device, names=names)
                vectors[experts.start:experts.stop] = top.vectors
                singular_values[experts.start:experts.stop] = top.singular_values
                frobenius[experts.start:experts.stop] = top.frobenius_norm
                bar.update(len(experts))
            extras = _layer_extras(arch, layer, raw, index.num_feats, device, keep_router)
            del raw
            sha256 = writer.write_layer(layer_ids.index(layer), vectors)
            LayerResult(layer=layer, sha256=sha256, singular_values=singular_values,
                        frobenius_norm=frobenius, **extras).save(layer_result_path(state_dir, layer))
    finally:
        bar.close()


def _layer_extras(arch: MoEArchitecture, layer: int, raw: Mapping[str, RawTensor], num_feats: int,
                  device: str, keep_router: bool) -> dict[str, Any]:
    """The shared expert's and the router's decompositions of one layer (LayerResult fields)."""
    router = arch.router_weight(layer, raw)
    extras: dict[str, Any] = {
        "router_singular_values": svd.singular_values(router, name=arch.router_tensors(layer)[0]),
        "router_frobenius_norm": float(np.linalg.norm(router.astype(np.float64))),
    }
    shared = arch.shared_gate_weight(layer, raw)
    if shared is not None:
        top = svd.top_k_right_singular(shared[None], num_feats, device=device,
                                       names=arch.shared_gate_tensors(layer)[:1])
        extras["shared_singular_values"] = top.singular_values[0]
        extras["shared_frobenius_norm"] = float(top.frobenius_norm[0])
    if keep_router:
        extras["router_weight"] = router
        extras["router_bias"] = arch.router_bias(layer, raw)
    return extras


_DONE = object()


def _prefetch(src: CheckpointSource, arch: MoEArchitecture, layers: list[int],
              depth: int) -> Iterator[tuple[int, Mapping[str, RawTensor], float, int]]:
    """Read layers on a background thread, at most ``depth`` ahead of the consumer.

    However the consumer stops (done, an error, Ctrl-C), the reader is told to stop, the queue is
    drained so it never blocks holding a layer, and it is joined before the source may be closed.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for layer in layers:
                if stop.is_set():
                    return
                t0 = time.monotonic()
                # Sources return bytes already read into memory (no lazy mmap), so disk and
                # network time overlap the previous layer's compute.
                raw = src.read(arch.layer_tensors(layer))
                nbytes = sum(int(t.data.nbytes) for t in raw.values())
                if not put((layer, raw, time.monotonic() - t0, nbytes)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    thread = threading.Thread(target=reader, name="vindex-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


# ---- publishing the folder ---------------------------------------------------------------------
def _finish(out: Path, index: sidecar.VindexIndex, results: list[LayerResult], config: dict[str, Any],
            *, card_options: Any, larql_router: bool) -> None:
    """Write every derived file; the sidecar last, so its presence means 'complete'."""
    from .writers.card import CardOptions, write_card
    from .writers.larql import write_larql_index
    from .writers.mirror import write_mirror

    for slot, r in enumerate(results):
        summary = stats_json.routed_summary(r)
        index.layers[r.layer] = sidecar.LayerEntry(
            file_offset=layout.layer_offset(slot, index.num_experts, index.num_feats, index.hidden_size),
            shape=[index.num_experts, index.num_feats, index.hidden_size],
            nbytes=index.layer_nbytes,
            sha256=r.sha256,
            median_var=summary[statistics.median_var_key(index.num_feats)],
            q25_var=summary[statistics.q25_var_key(index.num_feats)],
            q75_var=summary[statistics.q75_var_key(index.num_feats)],
        )
    index.check_layout(file_size=(out / filenames.GATE_VECTORS_BIN).stat().st_size)
    atomic_write_json(out / filenames.PHASE1_JSON, stats_json.phase1_json(results, index))
    atomic_write_json(out / filenames.PHASE2_JSON, stats_json.phase2_json(results, index))
    write_mirror(out, index, results)
    write_larql_index(out, index, config, results, router=larql_router)
    write_card(out, index, card_options or CardOptions())
    atomic_write_json(out / filenames.INDEX_JSON, index.to_json())


__all__ = ["build_vindex", "open_source", "BuildSummary", "VindexError"]
