"""The one write sequence: every file of a vindex derived from its binary and its results.

``build``, ``convert`` and ``pull --layers`` all end here, with ``gate_vectors.bin`` in place:

0. with ``geometry``: the expert geometry, computed from the binary in a pass of its own, one
   layer at a time (``writers.geometry``); it adds summaries to phase 1, router-alignment columns to ``expert_stats`` and, in step 2, the
   ``expert_overlap`` config (a source vindex's rows of it are carried like its stats tables);
1. the phase documents (from the layers' results, or carried over from a source vindex);
2. the Arrow mirror: the binary is streamed once, layer by layer, each block becoming its parquet
   file and feeding the whole file's sha256 (which LarQL's index records), then the stats tables;
3. with browse inputs (the model's input embedding and tokenizer): the ``feature_tokens`` config
   and LarQL's ``embeddings.bin`` + ``tokenizer.json`` (``writers.browse``);
4. LarQL's ``index.json`` (and ``router_weights.bin`` when asked), with the browse files' checksums;
5. the card and its plots, handed the list of what was written (it probes nothing);
6. the sidecar, last: a folder holding a sidecar is a finished vindex.

``add_geometry`` gives a finished folder the geometry (steps 0, 1, the stats tables, 5 and 6);
``rewrite_card`` and ``rewrite_mirror`` redo the card, or the mirror and the card.

With ``plot_elsewhere`` (a build on worker processes, which already spawns them), the card's
plot is rendered in a process of its own while this one writes the mirror: importing matplotlib
and drawing take about half a second of a core that would otherwise idle. (On a thread it would
not gain: the interpreter lock would slow this process's own writing as much.) And
``import_ahead`` lets such a build load the libraries the card's front matter needs (datasets,
which brings pandas, and the Hub client's card classes: about half a second) while its workers
decompose and this process waits for them, rather than after the last layer.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..format import filenames, mirror, sidecar
from ..format import geometry as format_geometry
from ..format.card_data import CardOptions
from ..format.mirror import STATS_PARQUETS, MirrorFile
from ..fsutil import atomic_write_json
from ..results import LayerResult
from .browse import (
    BrowseFiles,
    BrowseInputs,
    BrowseOptions,
    feature_token_examples,
    write_feature_tokens,
    write_larql_browse,
)
from .card import example_layer_of, var_plot_png, var_plot_png_of, write_card
from .geometry import (
    GeometryInputs,
    card_figures,
    compute_geometry,
    phase1_with_geometry,
    with_alignment,
    write_expert_overlap,
    write_overlap_table,
)
from .larql import write_larql_index
from .mirror import stats_tables, write_mirror, written_file, written_mirror
from .phases import phase1_json, phase2_json


@dataclass(frozen=True)
class CarriedStats:
    """A source vindex's published statistics, already cut to the layers of a vindex made from it."""

    phase1: dict[str, Any] | None = None
    phase2: dict[str, Any] | None = None
    tables: Mapping[str, Any] = field(default_factory=dict)  # pyarrow Tables by mirror path


@dataclass
class WrittenFiles:
    """What the write sequence wrote, relative to the folder: the card is made from this."""

    files: list[str] = field(default_factory=list)
    mirror: list[MirrorFile] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [*(f.path for f in self.mirror), *self.files]


# What the card's front matter and text import on first use (``format.card_data``,
# ``writers.card``): ``import_ahead`` loads them. (The plot's matplotlib: ``plot_elsewhere``.)
CARD_MODULES = ("datasets", "huggingface_hub.repocard", "jinja2")


def import_ahead() -> threading.Thread:
    """Start importing ``CARD_MODULES`` on a daemon thread (a module that fails to import here
    fails again where it is needed, and is reported there)."""

    def load() -> None:
        for name in CARD_MODULES:
            try:
                importlib.import_module(name)
            except Exception:
                return

    thread = threading.Thread(target=load, name="vindex-import-ahead", daemon=True)
    thread.start()
    return thread


def _var_plot_elsewhere(index: sidecar.VindexIndex) -> Callable[[], bytes]:
    """Start rendering ``var_plot_png(index)`` in a spawned process; the callable returned waits
    for its PNG. Where no process starts, or it fails, the plot is rendered here instead (the
    same bytes: the same function of the same index)."""
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        future = pool.submit(var_plot_png_of, index.to_json())
        pool.shutdown(wait=False)  # the process ends with its one task
    except Exception:  # no child processes here (a daemonic process, a resource limit)
        return lambda: var_plot_png(index)

    def result() -> bytes:
        try:
            png = future.result()
        except Exception:  # the process died: render here (a bug fails here, with its traceback)
            return var_plot_png(index)
        assert isinstance(png, bytes)
        return png

    return result


def write_derived_files(
    folder: str | Path,
    index: sidecar.VindexIndex,
    *,
    results: Sequence[LayerResult] | None = None,
    carried: CarriedStats | None = None,
    model_config: Mapping[str, Any] | None = None,
    card_options: CardOptions | None = None,
    larql_router: bool = False,
    browse: BrowseOptions | None = None,
    browse_inputs: BrowseInputs | None = None,
    geometry: bool = False,
    geometry_inputs: GeometryInputs | None = None,
    plot_elsewhere: bool = False,
) -> WrittenFiles:
    """Write every derived file of the vindex in ``folder`` (see the module docstring).

    ``results`` are a build's per-layer results; without them (convert) ``carried`` may give a
    source vindex's statistics, else only the gate vectors are mirrored. ``model_config`` is the
    checkpoint's ``config.json`` when at hand (LarQL's vocab size and attention geometry).
    ``browse`` asks for the files made from ``browse_inputs`` (the embedding and tokenizer).
    ``geometry`` asks for the expert geometry; its singular values and routers come from
    ``results``, else ``geometry_inputs`` (``GeometryInputs.of_folder``), else it goes without
    (plain overlaps only). ``plot_elsewhere``: render the card's plot in a spawned process
    meanwhile (see the module docstring).
    """
    folder = Path(folder)
    index.check_layout(
        where=str(folder / filenames.SIDECAR_JSON),
        file_size=(folder / filenames.GATE_VECTORS_BIN).stat().st_size,
    )
    written = WrittenFiles()
    var_plot = _var_plot_elsewhere(index) if plot_elsewhere and index.layers else None
    if results is not None:
        phases: tuple[dict[str, Any] | None, dict[str, Any] | None] = (
            phase1_json(results, index),
            phase2_json(results, index),
        )
        tables: Mapping[str, Any] = stats_tables(index, results)
    else:
        carried = carried or CarriedStats()
        phases, tables = (carried.phase1, carried.phase2), carried.tables
    # a source vindex's expert_overlap rows travel with its stats tables (pull --layers)
    tables = dict(tables)
    carried_overlap = tables.pop(format_geometry.EXPERT_OVERLAP_PARQUET, None)
    layer_geometry = None
    if geometry:
        inputs = (
            GeometryInputs.of_results(results)
            if results is not None
            else geometry_inputs or GeometryInputs()
        )
        layer_geometry = compute_geometry(folder, index, inputs)
        phases = (phase1_with_geometry(phases[0], index, layer_geometry), phases[1])
        tables = {
            rel: with_alignment(t, layer_geometry) if rel == mirror.EXPERT_STATS_PARQUET else t
            for rel, t in tables.items()
        }
    for name, document in zip((filenames.PHASE1_JSON, filenames.PHASE2_JSON), phases, strict=True):
        if document is not None:
            atomic_write_json(folder / name, document)
            written.files.append(name)

    binary_sha256 = hashlib.sha256()
    written.mirror = write_mirror(folder, index, tables, binary_hash=binary_sha256)
    if layer_geometry is not None:
        written.mirror.append(write_expert_overlap(folder, layer_geometry, index.num_experts))
    elif carried_overlap is not None:
        written.mirror.append(write_overlap_table(folder, carried_overlap))
    browse_files = _write_browse(folder, index, browse, browse_inputs, written)
    written.files += write_larql_index(
        folder,
        index,
        model_config or {},
        results,
        binary_sha256=binary_sha256.hexdigest(),
        router=larql_router,
        browse=browse_files,
    )
    written.files += write_card(
        folder,
        index,
        card_options or CardOptions(),
        files=written.files,
        mirror_files=written.mirror,
        feature_examples=feature_token_examples(folder, example_layer_of(index)),
        geometry=card_figures(folder, index, written.mirror),
        var_plot=var_plot() if var_plot is not None else None,
    )
    atomic_write_json(folder / filenames.SIDECAR_JSON, index.to_json())
    written.files.append(filenames.SIDECAR_JSON)
    return written


def _write_browse(
    folder: Path,
    index: sidecar.VindexIndex,
    browse: BrowseOptions | None,
    inputs: BrowseInputs | None,
    written: WrittenFiles,
) -> BrowseFiles | None:
    """Step 3: the feature_tokens config and LarQL's browse files, when asked."""
    if browse is None or not browse.wanted:
        return None
    if inputs is None:
        raise UsageError(
            "feature_tokens / larql_browse need the source checkpoint's embedding and tokenizer"
        )
    if inputs.embedding.shape[1] != index.hidden_size:
        raise UsageError(
            f"{inputs.where}: the input embedding is {list(inputs.embedding.shape)}, but the vindex's "
            f"hidden size is {index.hidden_size}: not this vindex's model"
        )
    if browse.feature_tokens:
        write_feature_tokens(folder, index, inputs, browse)
        written.mirror.append(
            written_file(folder, mirror.CONFIG_FEATURE_TOKENS, mirror.FEATURE_TOKENS_PARQUET)
        )
    files = write_larql_browse(folder, inputs, browse)
    written.files += sorted(files.checksums)
    return files


def _optional_files(folder: Path) -> list[str]:
    """The vindex's own files the folder holds (the card asks which of the optional ones are there)."""
    return [name for name in sorted(filenames.VINDEX_FILES) if (folder / name).is_file()]


def rewrite_card(
    folder: str | Path, index: sidecar.VindexIndex, card_options: CardOptions | None = None
) -> list[str]:
    """Render the card of a finished vindex folder again (other card options, a newer template),
    describing the files the folder holds; nothing else is rewritten."""
    folder = Path(folder)
    mirror_files = written_mirror(folder, index)
    return write_card(
        folder,
        index,
        card_options or CardOptions(),
        files=_optional_files(folder),
        mirror_files=mirror_files,
        feature_examples=feature_token_examples(folder, example_layer_of(index)),
        geometry=card_figures(folder, index, mirror_files),
    )


def rewrite_mirror(
    folder: str | Path, index: sidecar.VindexIndex, card_options: CardOptions | None = None
) -> list[str]:
    """Upgrade a finished vindex folder's Arrow mirror to the current layout (``format.mirror``):
    each layer's parquet file written again from the binary (current names, row groups, page
    index), the stats configs rewritten from the folder's own tables, layer files the mirror no
    longer names removed, then the card rendered for what was written. The binary, sidecar,
    phase JSON and LarQL index are left as they are. Returns the paths written."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    index.check_layout(
        where=str(folder / filenames.SIDECAR_JSON),
        file_size=(folder / filenames.GATE_VECTORS_BIN).stat().st_size,
    )
    present = [rel for rel in STATS_PARQUETS if (folder / rel).is_file()]
    # both stats configs or neither, as a build writes them
    tables = (
        {rel: pq.read_table(folder / rel) for rel in present}
        if len(present) == len(STATS_PARQUETS)
        else {}
    )
    written = write_mirror(folder, index, tables)
    kept = [f for f in written_mirror(folder, index) if f.path not in {w.path for w in written}]
    return [
        *(f.path for f in written),
        *write_card(
            folder,
            index,
            card_options or CardOptions(),
            files=_optional_files(folder),
            mirror_files=written + kept,  # + feature_tokens, expert_overlap: left as they are
            feature_examples=feature_token_examples(folder, example_layer_of(index)),
            geometry=card_figures(folder, index, written + kept),
        ),
    ]


def add_geometry(
    folder: str | Path, index: sidecar.VindexIndex, card_options: CardOptions | None = None
) -> list[str]:
    """Add the expert geometry to a finished vindex folder: computed from its binary (with the
    singular values of its ``expert_stats`` and the routers of LarQL's ``router_weights.bin``
    where it has them), then phase 1, ``expert_stats``, ``expert_overlap`` and the card written
    again, the sidecar last; the binary, mirror layers and LarQL files are left as they are.
    Returns the paths written."""
    import pyarrow.parquet as pq

    from ..fsutil import read_json_object
    from .mirror import write_stats_table

    folder = Path(folder)
    index.check_layout(
        where=str(folder / filenames.SIDECAR_JSON),
        file_size=(folder / filenames.GATE_VECTORS_BIN).stat().st_size,
    )
    layer_geometry = compute_geometry(folder, index, GeometryInputs.of_folder(folder, index))
    phase1_path = folder / filenames.PHASE1_JSON
    phase1 = (
        read_json_object(phase1_path, what="phase-1 statistics") if phase1_path.is_file() else None
    )
    atomic_write_json(phase1_path, phase1_with_geometry(phase1, index, layer_geometry))
    written = [filenames.PHASE1_JSON]
    stats_path = folder / mirror.EXPERT_STATS_PARQUET
    if stats_path.is_file():
        table = with_alignment(pq.read_table(stats_path), layer_geometry)
        written.append(write_stats_table(folder, mirror.EXPERT_STATS_PARQUET, table).path)
    written.append(write_expert_overlap(folder, layer_geometry, index.num_experts).path)
    written += rewrite_card(folder, index, card_options)
    atomic_write_json(folder / filenames.SIDECAR_JSON, index.to_json())
    return [*written, filenames.SIDECAR_JSON]
