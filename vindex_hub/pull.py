"""``pull``: materialize a Hub vindex (or some of its layers) in a local folder.

It stands above the read side (``vindex_hub.load``) and the writers: the layers are read through
``Vindex`` (each checked against its sha256), a subset is written as a vindex of its own, and the
result is checked with ``verify_vindex`` before ``pull`` returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import (
    IntegrityError,
    OutputConflictError,
    RemoteNotFoundError,
    UsageError,
    VindexFormatError,
)
from .folderlock import FolderLock
from .format import filenames, geometry, mirror, pull_marker, selection, sidecar
from .format.card_data import CardOptions
from .format.pull_marker import FORMATS, Format
from .hub.http import download_snapshot
from .hub.refs import DEFAULT_REPO_TYPE, RepoRef, parse_repo
from .load import Vindex
from .load.info import PHASES
from .load.readers import layer_sources
from .writers.binary import GateVectorsWriter
from .writers.derived import CarriedStats, write_derived_files
from .writers.mirror import restrict_to_layers as restrict_table
from .writers.phases import restrict_to_layers as restrict_document

DEFAULT_FORMAT: Format = pull_marker.DEFAULT_FORMAT
# Never taken from a repo: hidden paths (our markers, .gitattributes) and unfinished files.
BOOKKEEPING_PATTERNS = [".*", "*/.*", *(f"*{suffix}" for suffix in filenames.UNFINISHED_SUFFIXES)]
CLIENT_CACHE_DIR = (
    ".cache/huggingface"  # where snapshot_download(local_dir=...) keeps its own records
)


def pull_vindex(
    repo_id: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    layers: str | list[int] | None = None,
    format: Format = DEFAULT_FORMAT,
    revision: str | None = None,
    repo_type: str = DEFAULT_REPO_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """Materialize a Hub vindex in a folder; return the folder.

    ``out_dir`` defaults to ``./<repo name>`` (the part after the slash, in the current folder).
    It must be missing, empty, or an earlier pull of the same repo, which is then replaced: its
    sidecar is removed first, then the other files the vindex owns (other files are kept).
    While it writes, ``out`` is locked (``folderlock``): another pull, build or convert of it is
    refused with ``OutputConflictError`` naming the holder.

    ``binary`` (the default) gives a valid vindex folder, checked with ``verify_vindex`` before
    ``pull`` returns (on failure the sidecar is removed and ``IntegrityError`` raised):

    * without ``layers``: a copy of the whole repo at the resolved commit, Arrow mirror included
      (about twice the binary's size), so it can be pushed again unchanged;
    * with ``layers``: a smaller vindex of just those layers: the binary re-offset from 0 (each
      layer checked against its sha256 as it is read), its own sidecar, the phase JSON of those
      layers, the ``expert_stats`` / ``router_svd`` rows of those layers, and the Arrow mirror,
      LarQL index and card written for it (the LarQL index without the model's ``config.json``
      figures, such as vocab size).

    ``arrow`` is a data-only download: the parquet files of those layers (all without
    ``layers``), the stats parquet files (and ``expert_overlap``), the card and the JSON files,
    with the repo's sidecar unchanged (it lists every layer). There is no binary, so ``Vindex.open(folder)`` refuses it;
    ``Vindex.open(folder, mode="arrow")`` reads the layers that were pulled.
    """
    if format not in FORMATS:
        raise UsageError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    ref = parse_repo(repo_id, revision=revision, repo_type=repo_type)
    out = Path(out_dir) if out_dir is not None else Path(ref.repo_id.split("/")[-1])
    _check_out_dir(out, ref)  # fail fast; checked again once the folder is locked
    cache_dir = str(cache_dir) if cache_dir is not None else None
    with Vindex.open(ref, mode="lazy", cache_dir=cache_dir, token=token) as vx:
        selected = (
            selection.parse_layers(layers, vx.index.model_config.num_hidden_layers)
            if layers is not None
            else vx.layers
        )
        missing = [layer for layer in selected if layer not in vx.index.layers]
        if missing:
            raise UsageError(
                f"layers {missing} are not in {vx.location} (it holds layers {selection.layer_span(vx.layers)})"
            )
        # Held to the end: another pull, build or convert of this folder is refused meanwhile.
        lock = FolderLock(out, "pull")
        try:
            _pull_locked(vx, ref, out, selected, layers, format, cache_dir, token)
        finally:
            lock.release()
    return out


def _pull_locked(
    vx: Vindex,
    ref: RepoRef,
    out: Path,
    selected: list[int],
    layers: str | list[int] | None,
    format: Format,
    cache_dir: str | None,
    token: str | bool | None,
) -> None:
    """The writing part of ``pull``, with ``out`` locked."""
    if _check_out_dir(out, ref):
        _remove_vindex_files(out)
    pull_marker.write_pull_marker(
        out,
        repo_id=ref.repo_id,
        repo_type=ref.repo_type,
        commit=vx.commit,
        format=format,
        layers=selected,
    )
    assert vx.commit is not None  # a repo opens at the commit its revision resolved to
    pinned = ref.at(vx.commit)
    if format == pull_marker.ARROW:
        sources = layer_sources(vx.files, vx.index)  # the card says where (either layout)
        patterns = [sources[layer].path for layer in selected]
        patterns += [
            *mirror.STATS_PARQUETS,
            geometry.EXPERT_OVERLAP_PARQUET,  # with --geometry
            filenames.CARD_FILE,
            filenames.SIDECAR_JSON,
            filenames.PHASE1_JSON,
            filenames.PHASE2_JSON,
        ]
        _snapshot_to(pinned, out, allow=patterns, cache_dir=cache_dir, token=token)
        return
    if layers is None:
        _snapshot_to(pinned, out, ignore=[filenames.SIDECAR_JSON], cache_dir=cache_dir, token=token)
        _snapshot_to(
            pinned, out, allow=[filenames.SIDECAR_JSON], cache_dir=cache_dir, token=token
        )  # last
    else:
        _write_subset(vx, selected, out)
    _verify_pulled(out)


def _check_out_dir(out: Path, ref: RepoRef) -> bool:
    """Whether ``out`` holds an earlier pull of ``ref``'s repo; ``OutputConflictError`` unless it
    does or is missing or empty (so a folder the user built is never overwritten)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputConflictError(f"{out}: exists and is not a folder; choose another -o")
    lock_files = {filenames.OUTPUT_LOCK, filenames.OUTPUT_LOCK_INFO}
    if all(p.name in lock_files for p in out.iterdir()):  # empty, or just our lock
        return False
    marker = pull_marker.read_pull_marker(out)
    if (marker.get(pull_marker.REPO_ID), marker.get(pull_marker.REPO_TYPE)) == (
        ref.repo_id,
        ref.repo_type,
    ):
        return True
    raise OutputConflictError(
        f"{out}: not empty and not an earlier pull of {ref.repo_type} repo {ref.repo_id}; "
        "choose another -o (or empty it)"
    )


def _remove_vindex_files(out: Path) -> None:
    """Empty an earlier pull: the sidecar first (so the folder never looks complete), then every
    other file the vindex owns; the user's own files and hidden files stay."""
    (out / filenames.SIDECAR_JSON).unlink(missing_ok=True)
    for dirpath, _dirnames, names in os.walk(out, topdown=False):
        for name in names:
            path = Path(dirpath) / name
            if filenames.is_vindex_path(path.relative_to(out).as_posix()):
                path.unlink()
        if Path(dirpath) != out and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()


def _snapshot_to(
    ref: RepoRef,
    out: Path,
    *,
    allow: list[str] | None = None,
    ignore: list[str] | None = None,
    cache_dir,
    token,
) -> Path:
    """Download into ``out``, never taking our bookkeeping names (a repo's own ``.vindex-pull.json``),
    ``.gitattributes``, anything else hidden, or a name with a ``..`` part (the patterns match
    those too) from the repo; the client's ``.cache/huggingface``
    record of the download is removed afterwards."""
    try:
        return download_snapshot(
            ref,
            allow=allow,
            ignore=[*(ignore or []), *BOOKKEEPING_PATTERNS],
            local_dir=out,
            cache_dir=cache_dir,
            token=token,
        )
    finally:  # also on failure: its partial downloads would hold the space a full disk lacks
        shutil.rmtree(out / CLIENT_CACHE_DIR, ignore_errors=True)
        with contextlib.suppress(OSError):  # its parent too, unless the user keeps something there
            (out / CLIENT_CACHE_DIR).parent.rmdir()


def _verify_pulled(out: Path) -> None:
    """``verify_vindex`` on a pulled folder; on failure drop its sidecar (never a valid-looking but
    wrong vindex) and raise."""
    from .verify import verify_vindex

    report = verify_vindex(out)
    if not report.ok:
        (out / filenames.SIDECAR_JSON).unlink(missing_ok=True)
        raise IntegrityError(
            f"{out}: the pulled vindex fails verification, its sidecar was removed: "
            + "; ".join(report.problems)
        )


def _write_subset(vx: Vindex, selected: list[int], out: Path) -> None:
    """A vindex of ``selected`` layers: binary re-offset from 0, then the one write sequence with the
    source's statistics of those layers carried over (the sidecar last)."""
    src = vx.index
    license = getattr(
        vx.card_data, "license", None
    )  # the source card's license; read first: a bad card stops here
    tmp = out / filenames.BUILD_STATE_DIR / filenames.PARTIAL_BIN
    writer = GateVectorsWriter(
        tmp,
        num_layers=len(selected),
        num_experts=src.num_experts,
        num_feats=src.num_feats,
        hidden_size=src.hidden_size,
    )
    layers: dict[int, sidecar.LayerEntry] = {}
    try:
        for slot, layer in enumerate(selected):
            sha = writer.write_layer(slot, vx.layer(layer))  # checked against the sidecar by vx
            e = src.layer(layer)
            layers[layer] = sidecar.LayerEntry(
                file_offset=src.layer_offset(slot),
                shape=list(e.shape),
                nbytes=e.nbytes,
                sha256=sha,
                median_var=e.median_var,
                q25_var=e.q25_var,
                q75_var=e.q75_var,
            )
        writer.finish(out / filenames.GATE_VECTORS_BIN)
    finally:  # the work folder goes however the copy ends (a full disk included)
        writer.close()
        shutil.rmtree(out / filenames.BUILD_STATE_DIR, ignore_errors=True)
    documents: list[dict[str, Any] | None] = []
    for stats in PHASES:
        try:
            documents.append(restrict_document(getattr(vx, stats), selected))
        except (VindexFormatError, RemoteNotFoundError):
            documents.append(None)  # an optional file the repo does not have
    tables = {rel: restrict_table(table, selected) for rel, table in _stats_tables(vx).items()}
    overlap = _overlap_table(vx)
    if overlap is not None:
        tables[geometry.EXPERT_OVERLAP_PARQUET] = restrict_table(overlap, selected)
    index = sidecar.VindexIndex(
        num_feats=src.num_feats,
        model_config=src.model_config,
        source=src.source,
        builder=src.builder,
        layers=layers,
        format_version=src.format_version,
        router_matrix=src.router_matrix,
    )
    write_derived_files(
        out,
        index,
        carried=CarriedStats(phase1=documents[0], phase2=documents[1], tables=tables),
        card_options=CardOptions(license=license) if isinstance(license, str) else CardOptions(),
    )


def _stats_tables(vx: Vindex) -> dict[str, Any]:
    """The source's published stats configs (both, or none when it lacks either)."""
    import pyarrow.parquet as pq

    tables = {}
    for rel in mirror.STATS_PARQUETS:
        try:
            tables[rel] = pq.read_table(vx.files.path(rel))
        except (VindexFormatError, RemoteNotFoundError):
            return {}
    return tables


def _overlap_table(vx: Vindex) -> Any:
    """The source's ``expert_overlap`` table (``--geometry``), None when it has none."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(vx.files.path(geometry.EXPERT_OVERLAP_PARQUET))
    except (VindexFormatError, RemoteNotFoundError):
        return None


pull = pull_vindex  # the earlier name, kept for callers
