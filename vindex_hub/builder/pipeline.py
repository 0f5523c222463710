"""The resumable build: plan, decompose each layer on an engine, write it, record it, finish.

Each finished layer is written into the preallocated binary and fsynced, then its
``LayerResult`` is saved: a layer counts as done only once both are on disk, so a build killed at
any point resumes after its last completed layer and ends bit-identical to an uninterrupted one.
Work files live in ``OUT/.vindex-build/``; the published files appear under their final names
only when complete (``writers.derived``), the sidecar last, so a folder holding a sidecar is a
finished vindex.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checksums import sha256_file_range
from ..errors import UsageError
from ..folderlock import FolderLock
from ..format import filenames, sidecar
from ..format import geometry as format_geometry
from ..format.card_data import CardOptions
from ..numerics import routes
from ..results import LayerResult, layer_result_path
from ..source.base import CheckpointSource
from ..writers.binary import GateVectorsWriter
from ..writers.browse import BrowseInputs, BrowseOptions
from ..writers.derived import add_geometry, import_ahead, write_derived_files
from ..writers.phases import routed_summary
from .browse import check_browse_inputs, read_browse_inputs
from .defaults import (
    DEFAULT_BATCH,
    DEFAULT_ENGINE,
    DEFAULT_NUM_FEATS,
    DEFAULT_PREFETCH_LAYERS,
    ENGINES,
)
from .engine import Engine, make_engine
from .plan import BuildPlan, claim_output, make_plan, open_source
from .workers import start_for_build, stop_spares


@dataclass
class BuildSummary:
    out: Path
    layers: list[int]
    built_layers: list[int]  # computed in this run (the others were resumed from disk)
    seconds: float
    index: sidecar.VindexIndex
    already_complete: bool = False  # ``out`` held this very vindex, finished: nothing was done


def build_vindex(
    source: str | os.PathLike[str] | CheckpointSource,
    out: str | os.PathLike[str],
    *,
    num_feats: int = DEFAULT_NUM_FEATS,
    layers: str | Sequence[int] | None = None,
    revision: str | None = None,
    device: str = "auto",
    precision: str = routes.DEFAULT_PRECISION,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    prefetch_layers: int = DEFAULT_PREFETCH_LAYERS,
    card_options: CardOptions | None = None,
    larql_router: bool = False,
    browse: BrowseOptions | None = None,
    progress: bool = True,
    token: str | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
    geometry: bool = False,
) -> BuildSummary:
    """Build a vindex of ``source`` into the folder ``out`` (resuming an unfinished build there).

    ``layers`` selects a subset (``"3-5"``, ``[3, 4, 5]``); ``card_options``
    (``format.card_data.CardOptions``) sets the dataset card's user-set fields; ``browse``
    (``writers.browse.BrowseOptions``) asks for feature tokens and LarQL's browse tier, made from
    the checkpoint's input embedding and tokenizer (checked before any layer is computed).
    ``precision`` picks the CPU SVD route (``numerics.routes.PRECISIONS``); ``workers`` is how
    many processes decompose the experts (None: the cores this process may use): any count gives
    the same bits, and a build resumes with any count.
    ``engine``: ``"local"`` (this machine, the default) or ``"ray"`` (Ray tasks on the cluster at
    ``ray_address``, else ``RAY_ADDRESS``, else a new local one; ``build.ray_engine``): the same
    bits either way.
    ``geometry``: also compute the expert geometry (overlaps, router alignment; ``writers.geometry``)
    from the finished binary and the layers' routers. A folder already complete gets it added
    (``writers.derived.add_geometry``: routers only where it has LarQL's ``router_weights.bin``).
    ``out`` is locked for the whole build (``folderlock``): another build, convert or pull of it is
    refused with ``OutputConflictError`` naming the holder.
    """
    started = time.monotonic()
    for name, value in (("batch_size", batch_size), ("prefetch_layers", prefetch_layers)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    engine = engine or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise UsageError(f"engine={engine!r}: must be one of {', '.join(ENGINES)}")
    if ray_address is not None and engine != "ray":
        raise UsageError(
            f"ray_address={ray_address!r} applies to engine=ray, not engine={engine!r}"
        )
    ray_runner = None
    if engine == "ray":  # before anything is claimed: says how to install Ray when it is missing
        from .ray_engine import RayEngine

        ray_runner = RayEngine(batch_size=batch_size, address=ray_address, token=token)
    src = open_source(source, revision=revision, token=token)
    lock = None
    try:
        # The worker processes start now: their start-up overlaps the planning and the first
        # layer's read (the CLI starts them even before it imports this module).
        start_for_build(workers, device, engine)
        plan = make_plan(
            src,
            out,
            num_feats=num_feats,
            layers=layers,
            device=device,
            larql_router=larql_router,
            browse=browse,
            precision=precision,
            workers=workers,
        )
        plan = dataclasses.replace(plan, geometry=geometry)
        if plan.browse.wanted:  # fail now, not after hours of layers, when the inputs are missing
            check_browse_inputs(src, plan.arch, plan.browse.feature_tokens)
        # Held to the end: another build, convert or pull of this folder is refused meanwhile.
        lock = FolderLock(plan.out, "build")
        finished = claim_output(plan)
        if finished is not None:  # the same vindex is already complete there: nothing to do
            if geometry and not (plan.out / format_geometry.EXPERT_OVERLAP_PARQUET).is_file():
                add_geometry(plan.out, finished, card_options)  # ... but the geometry asked for
            return BuildSummary(
                plan.out,
                plan.layer_ids,
                [],
                time.monotonic() - started,
                finished,
                already_complete=True,
            )
        settings = plan.decompose_settings(batch_size)
        if ray_runner is None:
            runner: Engine = make_engine(
                src.config,
                settings,
                plan.workers,
                prefetch_layers=prefetch_layers,
                tensor_names=sorted(src.tensor_names()),
            )
        else:
            runner = ray_runner
        todo = _run(src, plan, runner, progress=progress)
        results = [
            LayerResult.load(layer_result_path(plan.state_dir, layer)) for layer in plan.layer_ids
        ]
        inputs = read_browse_inputs(src, plan.arch) if plan.browse.wanted else None
        _finish(plan, results, src.config, card_options=card_options, browse_inputs=inputs)
        shutil.rmtree(plan.state_dir)
        return BuildSummary(plan.out, plan.layer_ids, todo, time.monotonic() - started, plan.index)
    finally:
        stop_spares()  # those the build did not adopt (none needed, fewer, an error)
        if lock is not None:
            lock.release()
        src.close()


def _run(src: CheckpointSource, plan: BuildPlan, engine: Engine, *, progress: bool) -> list[int]:
    """Compute the layers not yet done into the binary; return them. The binary is renamed to its
    final name once every layer is in it."""
    todo = [
        layer for layer in plan.layer_ids if not layer_result_path(plan.state_dir, layer).exists()
    ]
    final_bin = plan.out / filenames.GATE_VECTORS_BIN
    if not todo and final_bin.exists():
        return todo
    index = plan.index
    writer = GateVectorsWriter(
        plan.state_dir / filenames.PARTIAL_BIN,
        num_layers=len(plan.layer_ids),
        num_experts=index.num_experts,
        num_feats=plan.num_feats,
        hidden_size=index.hidden_size,
    )
    try:
        todo += _damaged_layers(plan, writer.path, todo)
        todo.sort()
        if todo:
            _compute(src, plan, engine, writer, todo, progress=progress)
        writer.finish(final_bin)
    finally:
        writer.close()
    return todo


def _damaged_layers(plan: BuildPlan, bin_path: Path, todo: list[int]) -> list[int]:
    """Resumed layers whose block no longer hashes to what was recorded when it was written: their
    records are dropped, so they are computed again."""
    damaged = []
    for slot, layer in enumerate(plan.layer_ids):
        if layer in todo:
            continue
        recorded = LayerResult.load(layer_result_path(plan.state_dir, layer)).sha256
        if (
            sha256_file_range(bin_path, plan.index.layer_offset(slot), plan.index.layer_nbytes)
            != recorded
        ):
            layer_result_path(plan.state_dir, layer).unlink()
            damaged.append(layer)
    return damaged


def _compute(
    src: CheckpointSource,
    plan: BuildPlan,
    engine: Engine,
    writer: GateVectorsWriter,
    todo: list[int],
    *,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(todo) * plan.index.num_experts,
        unit="expert",
        disable=not progress,
        desc=f"0/{len(todo)} layers",
        dynamic_ncols=True,
    )

    def layer_read(layer: int, seconds: float, nbytes: int) -> None:
        bar.set_postfix_str(f"layer {layer} read {nbytes / max(seconds, 1e-9) / 1e6:.0f} MB/s")

    # Once the workers have started, this process, only waiting for them, loads the card's
    # libraries: they are not left for the end, after the last layer.
    card_imports_due = plan.workers > 1

    def experts_done(n: int) -> None:
        nonlocal card_imports_due
        bar.update(n)
        if card_imports_due:
            card_imports_due = False
            import_ahead()

    written = 0
    # closing(): an error or Ctrl-C here stops the engine (its workers, its shared memory) now,
    # not whenever the suspended generator happens to be collected.
    layers = engine.run(src, plan, todo, on_experts=experts_done, on_layer_read=layer_read)
    try:
        for decomposed in layers:
            sha256 = writer.write_layer(plan.slot(decomposed.layer), decomposed.vectors)
            decomposed.result(sha256).save(layer_result_path(plan.state_dir, decomposed.layer))
            written += 1
            bar.set_description(f"{written}/{len(todo)} layers")
    finally:
        bar.close()
        close = getattr(layers, "close", None)
        if close is not None:
            close()


def _finish(
    plan: BuildPlan,
    results: list[LayerResult],
    config: dict,
    *,
    card_options: CardOptions | None,
    browse_inputs: BrowseInputs | None = None,
) -> None:
    """Record each layer in the sidecar, then write every derived file (the sidecar last)."""
    index = plan.index
    for slot, r in enumerate(results):
        summary = routed_summary(r)
        index.layers[r.layer] = sidecar.LayerEntry(
            file_offset=index.layer_offset(slot),
            shape=index.layer_shape,
            nbytes=index.layer_nbytes,
            sha256=r.sha256,
            median_var=summary.median,
            q25_var=summary.q25,
            q75_var=summary.q75,
        )
    write_derived_files(
        plan.out,
        index,
        results=results,
        model_config=config,
        card_options=card_options,
        larql_router=plan.larql_router,
        browse=plan.browse,
        browse_inputs=browse_inputs,
        geometry=plan.geometry,
        plot_elsewhere=plan.workers > 1,  # worker processes are spawned already
    )
