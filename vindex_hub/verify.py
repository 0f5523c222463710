"""Check a vindex folder's files against each other: binary, sidecar, mirror, card, LarQL index.

``verify_vindex(folder)`` runs every check it can and collects what fails, each problem naming
the file and layer (``layer 3: data/gate_vectors/layer_03.parquet row 17 (expert 2, feature 1)
differs from gate_vectors.bin``), so one run shows everything that is wrong. It streams: the
binary is read once, in order, for the per-layer and whole-file sha256s, and the mirror is
compared with the binary one parquet row group at a time (16 MiB at real size), so memory stays
flat whatever the vindex's size.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checksums import iter_chunks, sha256_file
from .errors import IntegrityError, VindexError, VindexFormatError
from .format import (
    card_data,
    filenames,
    geometry,
    larql,
    layout,
    mirror,
    phases,
    sidecar,
    statistics,
)
from .fsutil import read_json_object
from .load.files import LocalFiles
from .load.readers import layer_sources
from .numerics import stats

_RTOL = 1e-9  # statistics recomputed from stored float32/float64 values agree far closer than this


@dataclass
class VerifyReport:
    folder: Path
    checks: list[str] = field(default_factory=list)  # what passed
    problems: list[str] = field(default_factory=list)  # what failed, each naming file and layer
    warnings: list[str] = field(
        default_factory=list
    )  # valid, but worth upgrading (an old mirror layout)
    integrity_failed: bool = False  # some bytes disagree with their checksum or their copy
    # What the checks computed, for a caller that needs it next (push): the parsed sidecar (None
    # when it does not parse) and the sha256 of each whole file hashed, by path in the vindex.
    index: sidecar.VindexIndex | None = field(default=None, repr=False)
    sha256: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        """Raise ``IntegrityError`` (bytes differ) or ``VindexFormatError`` listing every problem."""
        if self.problems:
            kind = IntegrityError if self.integrity_failed else VindexFormatError
            raise kind(
                f"{self.folder}: {len(self.problems)} problem(s): " + "; ".join(self.problems)
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "checks": self.checks,
            "problems": self.problems,
        }

    def render(self) -> str:
        lines = (
            [f"ok    {c}" for c in self.checks]
            + [f"WARN  {w}" for w in self.warnings]
            + [f"FAIL  {p}" for p in self.problems]
        )
        verdict = "vindex OK" if self.ok else f"{len(self.problems)} problem(s)"
        return "\n".join([*lines, f"{self.folder}: {verdict}"])


class _Checker:
    def __init__(self, folder: Path):
        self.folder = folder
        self.report = VerifyReport(folder)
        self._card: dict[str, Any] | VindexFormatError | None = None

    def card_data(self) -> dict[str, Any]:
        """The card's front matter, parsed once a run (each check that needs it asks here); a
        front matter that does not parse raises its ``VindexFormatError`` to every asker."""
        if self._card is None:
            try:
                self._card = card_data.read_card_data(self.folder / filenames.CARD_FILE)
            except VindexFormatError as exc:
                self._card = exc
        if isinstance(self._card, VindexFormatError):
            raise self._card
        return self._card

    def passed(self, what: str) -> None:
        self.report.checks.append(what)

    def warning(self, what: str) -> None:
        self.report.warnings.append(what)

    def problem(self, what: str, *, integrity: bool = False) -> None:
        self.report.problems.append(what)
        self.report.integrity_failed |= integrity

    def run(self, name: str, check: Callable[[], Any]) -> Any:
        """Run one check; an unexpected read/parse error becomes a problem, not a crash."""
        try:
            return check()
        # AttributeError: a list or string where a file has a mapping (``.get`` on it)
        except (VindexError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.problem(f"{name}: {type(exc).__name__}: {exc}")
            return None


def verify_vindex(folder: str | Path, *, links_within: str | Path | None = None) -> VerifyReport:
    """Check every file of a local vindex folder against the others; see the module docstring.

    A symbolic link in the folder whose target lies outside ``links_within`` (default: the folder;
    for a Hub cache snapshot, the Hub cache, where its blobs are) is a problem: its
    target is never read, nor published by ``push``."""
    c = _Checker(Path(folder))
    if not _check_links(c, Path(links_within) if links_within is not None else c.folder):
        return c.report
    if (c.folder / geometry.COMPARE_JSON).is_file() and not (
        c.folder / filenames.SIDECAR_JSON
    ).exists():
        c.run(geometry.COMPARE_JSON, lambda: _check_comparison(c))
        return c.report
    index = c.run(filenames.SIDECAR_JSON, lambda: _check_index(c))
    if index is None:
        return c.report
    c.report.index = index
    if c.run(filenames.GATE_VECTORS_BIN, lambda: _check_layout(c, index)):
        c.run(filenames.GATE_VECTORS_BIN, lambda: _check_binary_hashes(c, index))
        sources = _layer_files(c, index)
        for layer in index.layer_ids:
            rel = sources.get(layer) or mirror.gate_vectors_parquet(
                layer, index.model_config.num_hidden_layers
            )
            c.run(
                f"layer {layer}",
                functools.partial(_check_gate_vectors_mirror, c, index, layer, rel),
            )
    c.run(mirror.EXPERT_STATS_PARQUET, lambda: _check_expert_stats(c, index))
    c.run(mirror.ROUTER_SVD_PARQUET, lambda: _check_router_svd(c, index))
    c.run(filenames.CARD_FILE, lambda: _check_card(c, index))
    c.run(mirror.FEATURE_TOKENS_PARQUET, lambda: _check_feature_tokens(c, index))
    c.run(filenames.LARQL_INDEX_JSON, lambda: _check_larql(c, index))
    c.run(filenames.PHASE1_JSON, lambda: _check_phase1(c, index))
    c.run(filenames.PHASE2_JSON, lambda: _check_phase2(c, index))
    if not index.router_matrix:
        c.run(sidecar.ROUTER_MATRIX_KEY, lambda: _check_no_router(c, index))
    c.run(geometry.EXPERT_OVERLAP_PARQUET, lambda: _check_expert_overlap(c, index))
    return c.report


def verify_source(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    *,
    repo_type: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> VerifyReport:
    """``verify_vindex`` of a folder, or of a Hub repo's snapshot at ``revision`` (``announce``
    is told the download's size first). A repo whose
    revision the Hub did not confirm (it refused: 401 / 403 / 5xx / unreachable, and the cache
    answered) fails with "could not confirm revision": its cached commit is checked, but nothing
    says it is the one asked for. Under ``HF_HUB_OFFLINE`` that is a warning (no request was
    wanted)."""
    from .hub.refs import DEFAULT_REPO_TYPE
    from .load.info import local_copy

    copy = local_copy(
        path_or_repo_id,
        revision,
        repo_type=repo_type or DEFAULT_REPO_TYPE,
        cache_dir=cache_dir,
        token=token,
        announce=announce,
    )
    report = verify_vindex(copy.folder, links_within=copy.links_within)
    resolved = copy.resolution
    if resolved is not None and resolved.unconfirmed is not None:
        what = f"could not confirm revision {revision or 'main'!r} of {path_or_repo_id}"
        if resolved.hub_refused:
            report.problems.append(f"{what}: {resolved.unconfirmed}")
        else:
            report.warnings.append(f"{what}: {resolved.unconfirmed}")
    return report


# ---- links ---------------------------------------------------------------------------------------
def link_leaves(path: Path, root: Path) -> bool:
    """Whether ``path`` (in ``root``) is, or lies below, a symbolic link resolving outside ``root``."""
    return not path.resolve().is_relative_to(root.resolve())


def _check_links(c: _Checker, within: Path) -> bool:
    """No file or folder of the vindex links out of ``within``; False (nothing else is read) if one does."""
    leaving = []
    for dirpath, dirnames, names in os.walk(c.folder):
        for name in [*dirnames, *names]:
            path = Path(dirpath) / name
            rel = path.relative_to(c.folder).as_posix()
            if not filenames.is_bookkeeping_path(rel) and link_leaves(path, within):
                leaving.append(rel)
    if leaving:
        c.problem(
            f"{', '.join(sorted(leaving))}: symbolic link(s) to outside the folder; refusing to "
            "read or publish them (copy the files in instead)"
        )
        return False
    return True


# ---- sidecar and binary ------------------------------------------------------------------------
def _check_index(c: _Checker) -> sidecar.VindexIndex | None:
    path = c.folder / filenames.SIDECAR_JSON
    if not path.exists():
        c.problem(_not_a_vindex(c.folder))
        return None
    index = sidecar.VindexIndex.load(path)
    c.passed(
        f"{filenames.SIDECAR_JSON}: parses (format {index.format_version}, {len(index.layers)} layers)"
    )
    return index


def _not_a_vindex(folder: Path) -> str:
    """Why a folder without a sidecar is not a vindex, and what to run instead."""
    what = f"{folder} has no {filenames.SIDECAR_JSON}"
    if (folder / "config.json").is_file() or any(folder.glob("*.safetensors")):
        return (
            f"{folder} is a model checkpoint, not a vindex (no {filenames.SIDECAR_JSON}); "
            f"build one with: vindex-hub build {folder} -o OUT"
        )
    if (folder / filenames.BUILD_STATE_DIR).is_dir():
        return (
            f"{what}: an unfinished build ({filenames.BUILD_STATE_DIR}/); "
            "run the same vindex-hub build command again to finish it"
        )
    return f"{what}: not a vindex folder"


def _check_layout(c: _Checker, index: sidecar.VindexIndex) -> bool:
    size = (c.folder / filenames.GATE_VECTORS_BIN).stat().st_size
    index.check_layout(where=filenames.SIDECAR_JSON, file_size=size)
    c.passed(f"{filenames.GATE_VECTORS_BIN}: {size} bytes, offsets contiguous and in range")
    return True


def _check_binary_hashes(c: _Checker, index: sidecar.VindexIndex) -> None:
    """One sequential pass: each layer's sha256 against the index; the whole file's sha256 goes to
    ``report.sha256`` (not when the file shrank or grew while being read)."""
    whole = hashlib.sha256()
    bad = 0
    with open(c.folder / filenames.GATE_VECTORS_BIN, "rb") as f:
        for layer in index.layer_ids:  # contiguous, ascending: the file in order
            entry = index.layers[layer]
            h = hashlib.sha256()
            try:
                for chunk in iter_chunks(
                    f, entry.nbytes, where=f"layer {layer}: {filenames.GATE_VECTORS_BIN}"
                ):
                    h.update(chunk)
                    whole.update(chunk)
            except EOFError as exc:  # it shrank since the layout check
                c.problem(f"{exc} (the file shrank while being read)", integrity=True)
                return
            if h.hexdigest() != entry.sha256:
                bad += 1
                c.problem(
                    f"layer {layer}: {filenames.GATE_VECTORS_BIN} bytes {entry.file_offset}.."
                    f"{entry.file_offset + entry.nbytes} hash to {h.hexdigest()[:16]}..., "
                    f"{filenames.SIDECAR_JSON} records {entry.sha256[:16]}...",
                    integrity=True,
                )
        if not f.read(1):  # read to its end: the hash is the file's
            c.report.sha256[filenames.GATE_VECTORS_BIN] = whole.hexdigest()
    if not bad:
        c.passed(
            f"{filenames.GATE_VECTORS_BIN}: sha256 of all {len(index.layers)} layers match the index"
        )


# ---- the mirror ----------------------------------------------------------------------------------
def _vector_rows(table: Any, width: int, where: str) -> np.ndarray:
    import pyarrow as pa

    column = table.column(mirror.COL_VECTOR).combine_chunks()
    if column.type != pa.list_(pa.float32(), width):
        raise VindexFormatError(
            f"{where}: column {mirror.COL_VECTOR} is {column.type}, "
            f"expected fixed_size_list<float>[{width}]"
        )
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def _layer_files(c: _Checker, index: sidecar.VindexIndex) -> dict[int, str]:
    """Each layer's parquet file as the reader finds it (``load.readers.layer_sources``), but
    following only an old-layout card: the mirror's own names otherwise (the card check reports a
    current-layout config that points elsewhere)."""
    path = c.folder / filenames.CARD_FILE
    try:
        configs = mirror.configs_by_name(c.card_data()) if path.is_file() else {}
    except VindexFormatError:
        configs = {}  # the card check reports it
    if mirror.mirror_scheme(configs) != mirror.SCHEME_SPLIT_PER_LAYER:
        configs = {}
    sources = layer_sources(LocalFiles(c.folder), index, configs)
    return {layer: source.path for layer, source in sources.items()}


def _check_gate_vectors_mirror(
    c: _Checker, index: sidecar.VindexIndex, layer: int, rel: str
) -> None:
    path = c.folder / rel
    if not path.exists():
        c.problem(f"layer {layer}: {rel} is missing (the Arrow mirror of this layer)")
        return
    import pyarrow.parquet as pq  # only where there is a mirror to read

    entry = index.layers[layer]
    k, h = index.num_feats, index.hidden_size
    rows = np.memmap(
        c.folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        mode="r",
        offset=entry.file_offset,
        shape=(index.num_experts * k, h),
    )
    pf = pq.ParquetFile(path)
    start = 0
    for group in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(group)
        n = table.num_rows
        if start + n > rows.shape[0]:
            c.problem(f"layer {layer}: {rel} has more than the {rows.shape[0]} rows of the layer")
            return
        got = _vector_rows(table, h, f"layer {layer}: {rel}")
        want = np.asarray(rows[start : start + n])
        differ = np.flatnonzero(np.any(got.view(np.uint32) != want.view(np.uint32), axis=1))
        if differ.size:
            r = start + int(differ[0])
            c.problem(
                f"layer {layer}: {rel} row {r} (expert {r // k}, feature {r % k}) differs from "
                f"{filenames.GATE_VECTORS_BIN} ({differ.size} differing row(s) in row group {group})",
                integrity=True,
            )
            return
        expect = {
            mirror.COL_LAYER: np.full(n, layer),
            mirror.COL_EXPERT: np.arange(start, start + n) // k,
            mirror.COL_FEATURE: np.arange(start, start + n) % k,
        }
        for name, values in expect.items():
            if not np.array_equal(table.column(name).to_numpy(), values):
                c.problem(
                    f"layer {layer}: {rel} column {name} does not number rows {start}..{start + n} "
                    "as (layer, expert, feature) in order"
                )
                return
        start += n
    if start != rows.shape[0]:
        c.problem(f"layer {layer}: {rel} has {start} rows, the layer has {rows.shape[0]}")
        return
    c.passed(
        f"layer {layer}: {rel} is bit-identical to {filenames.GATE_VECTORS_BIN} ({start} rows)"
    )


def _check_expert_stats(c: _Checker, index: sidecar.VindexIndex) -> None:
    path = c.folder / mirror.EXPERT_STATS_PARQUET
    if not path.exists():
        return  # optional (a converted vindex has no spectra); the card check flags a dangling config
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    k, e = index.num_feats, index.num_experts
    layers = table.column(mirror.COL_LAYER).to_numpy()
    want_layers = np.repeat(index.layer_ids, e)
    if not np.array_equal(layers, want_layers):
        c.problem(
            f"{mirror.EXPERT_STATS_PARQUET}: {table.num_rows} rows of layers "
            f"{sorted(set(layers.tolist()))}, expected {e} experts of each layer {index.layer_ids}"
        )
        return
    var = table.column(statistics.var_key(k)).to_numpy()
    bad = []
    for layer in index.layer_ids:
        summary = stats.summarize(var[layers == layer])
        entry = index.layers[layer]
        recorded = (entry.median_var, entry.q25_var, entry.q75_var)
        if not np.allclose(
            [summary.median, summary.q25, summary.q75], recorded, rtol=_RTOL, atol=0
        ):
            bad.append(layer)
            c.problem(
                f"layer {layer}: {mirror.EXPERT_STATS_PARQUET} {statistics.var_key(k)} gives median/q25/q75 "
                f"{summary.median:.6g}/{summary.q25:.6g}/{summary.q75:.6g}, "
                f"{filenames.SIDECAR_JSON} records {'/'.join(f'{v:.6g}' for v in recorded)}"
            )
    if not bad:
        c.passed(
            f"{mirror.EXPERT_STATS_PARQUET}: {table.num_rows} rows; var quartiles match the index"
        )


def _check_router_svd(c: _Checker, index: sidecar.VindexIndex) -> None:
    path = c.folder / mirror.ROUTER_SVD_PARQUET
    if not path.exists():
        return
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    layers = table.column(mirror.COL_LAYER).to_numpy().tolist()
    if layers != index.layer_ids:
        c.problem(f"{mirror.ROUTER_SVD_PARQUET}: layers {layers}, the index has {index.layer_ids}")
        return
    phase2 = c.folder / filenames.PHASE2_JSON
    if phase2.exists():
        figures = read_json_object(phase2, what="phase-2 document")[phases.LAYERS]
        for row, layer in enumerate(layers):
            for name in table.column_names:
                value = (figures.get(str(layer)) or {}).get(name)
                if name == mirror.COL_LAYER or isinstance(value, list):
                    continue
                got = table.column(name)[row].as_py()
                if not _same_number(got, value):
                    c.problem(
                        f"layer {layer}: {mirror.ROUTER_SVD_PARQUET} {name} = {got}, "
                        f"{filenames.PHASE2_JSON} has {value}"
                    )
                    return
    c.passed(
        f"{mirror.ROUTER_SVD_PARQUET}: one row per layer"
        + (f", figures match {filenames.PHASE2_JSON}" if phase2.exists() else "")
    )


def _same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=_RTOL, abs_tol=0.0)


# ---- card ----------------------------------------------------------------------------------------
def _check_card(c: _Checker, index: sidecar.VindexIndex) -> None:
    path = c.folder / filenames.CARD_FILE
    if not path.exists():
        c.problem(f"{filenames.CARD_FILE}: missing (the dataset card)")
        return
    data = c.card_data()
    configs = mirror.configs_by_name(data)
    n_problems = len(c.report.problems)
    scheme_seen = mirror.mirror_scheme(configs)
    _check_config_names(c, configs, scheme_seen)
    foreign: set[str] = set()  # configs naming files not theirs: their dataset_info is not compared
    if scheme_seen == mirror.SCHEME_SPLIT_PER_LAYER:
        _check_split_per_layer_configs(c, index, configs)
    else:
        foreign = _check_config_per_layer(c, index, configs)
    files: dict[str, list[tuple[str, Path]]] = {}  # config -> (split, file)
    for name, cfg in configs.items():
        for split, rel in mirror.config_paths(cfg):
            try:
                target = c.folder / filenames.inside_vindex(
                    rel, f"{filenames.CARD_FILE}: config {name!r}"
                )
            except VindexFormatError as exc:
                c.problem(str(exc))
                continue
            if not target.is_file():
                c.problem(
                    f"{filenames.CARD_FILE}: config {name!r} split {split!r} points at {rel!r}, "
                    "which does not exist"
                )
            else:
                files.setdefault(name, []).append((split, target))
    infos = data.get(card_data.DATASET_INFO) or []
    for info in [infos] if isinstance(infos, dict) else infos:
        config = info.get(mirror.CONFIG_NAME_KEY)
        if config not in foreign:
            _check_dataset_info(c, info, files.get(config, []) if isinstance(config, str) else [])
    if len(c.report.problems) == n_problems:
        c.passed(
            f"{filenames.CARD_FILE}: mirror layout: {scheme_seen}; front matter parses; {len(configs)} configs "
            "point at the mirror's files with the declared features and row counts"
        )


def _check_config_names(c: _Checker, configs: dict[str, Any], scheme_seen: str) -> None:
    """Word-character names, and no more splits in a config than the Hub's viewer takes."""
    for name, cfg in configs.items():
        splits = sorted({split for split, _ in mirror.config_paths(cfg)})
        bad = [n for n in [name, *splits] if not mirror.NAME_RE.match(n)]
        if bad:
            c.problem(
                f"{filenames.CARD_FILE}: config {name!r}: names {bad} are not word characters "
                "(the Hub's viewer refuses them)"
            )
        if len(splits) > mirror.MAX_SPLITS_PER_CONFIG:
            what = (
                f"{filenames.CARD_FILE}: config {name!r} has {len(splits)} splits; the Hub's dataset viewer "
                f"refuses more than {mirror.MAX_SPLITS_PER_CONFIG}"
            )
            if scheme_seen == mirror.SCHEME_SPLIT_PER_LAYER and name == mirror.CONFIG_GATE_VECTORS:
                c.warning(
                    f"{what} (old layout: `vindex-hub convert` upgrades it to a config per layer)"
                )
            else:
                c.problem(what)


def _check_split_per_layer_configs(
    c: _Checker, index: sidecar.VindexIndex, configs: dict[str, Any]
) -> None:
    splits = {split for split, _ in mirror.config_paths(configs[mirror.CONFIG_GATE_VECTORS])}
    missing = [layer for layer in index.layer_ids if mirror.old_layout_split(layer) not in splits]
    if missing:
        c.problem(
            f"{filenames.CARD_FILE}: config {mirror.CONFIG_GATE_VECTORS!r} lacks the splits of layers {missing}"
        )
    c.warning(
        f"{filenames.CARD_FILE}: {mirror.SCHEME_SPLIT_PER_LAYER}: load_dataset of one split prepares every "
        "layer; `vindex-hub convert` upgrades it to a config per layer"
    )


def _check_config_per_layer(
    c: _Checker, index: sidecar.VindexIndex, configs: dict[str, Any]
) -> set[str]:
    """Each config of ours names exactly the mirror's file(s) for it: none missing, none foreign.
    Returns the configs that name foreign files."""
    n = index.model_config.num_hidden_layers
    layer_files = {
        mirror.layer_config(layer, n): [mirror.gate_vectors_parquet(layer, n)]
        for layer in index.layer_ids
    }
    expected = {
        **layer_files,
        mirror.CONFIG_GATE_VECTORS: [p for paths in layer_files.values() for p in paths],
        **{
            name: [rel]
            for name, rel in mirror.STATS_PARQUET_OF.items()
            if (c.folder / rel).is_file()
        },
    }
    for name, want in expected.items():
        if name not in configs:
            c.problem(f"{filenames.CARD_FILE}: no config {name!r} (for {', '.join(want)})")
    with_foreign = set()
    for name, cfg in configs.items():
        got = [rel for _, rel in mirror.config_paths(cfg)]
        if mirror.layer_of_name(name) is not None and name not in expected:
            c.problem(
                f"{filenames.CARD_FILE}: config {name!r} names layer {mirror.layer_of_name(name)}, "
                f"which {filenames.SIDECAR_JSON} does not hold (it holds {index.layer_ids})"
            )
        elif name in expected:
            # a path that does not exist is reported with the card's files below
            absent = [rel for rel in got if not (c.folder / rel).is_file()]
            foreign = [rel for rel in got if rel not in expected[name] and rel not in absent]
            lacking = [rel for rel in expected[name] if rel not in got]
            if foreign:
                with_foreign.add(name)
                c.problem(
                    f"{filenames.CARD_FILE}: config {name!r} points at {foreign}, which "
                    f"{'is' if len(foreign) == 1 else 'are'} not its file(s) of the mirror"
                )
            if lacking and not absent and not foreign:
                c.problem(f"{filenames.CARD_FILE}: config {name!r} lacks {lacking}")
    default = [name for name, cfg in configs.items() if cfg.get("default")]
    if default == [mirror.CONFIG_GATE_VECTORS]:
        c.problem(
            f"{filenames.CARD_FILE}: the default config is {mirror.CONFIG_GATE_VECTORS!r}: a bare "
            "load_dataset(repo) would prepare every layer"
        )
    return with_foreign


def _check_dataset_info(
    c: _Checker, info: dict[str, Any], split_files: list[tuple[str, Path]]
) -> None:
    name = info.get(mirror.CONFIG_NAME_KEY)
    if not split_files:
        return
    # The declared features are read as `load_dataset` reads them: by datasets itself.
    import pyarrow.parquet as pq
    from datasets import Features

    from .compat import features_from_yaml_list

    if card_data.FEATURES in info:
        declared = features_from_yaml_list(info[card_data.FEATURES])
        actual = Features.from_arrow_schema(pq.read_schema(split_files[0][1]))
        if declared != actual:
            c.problem(
                f"{filenames.CARD_FILE}: dataset_info features of {name!r} ({declared}) differ from "
                f"{split_files[0][1].relative_to(c.folder)} ({actual})"
            )
    rows: dict[str, int] = {}
    for split, p in split_files:
        rows[split] = rows.get(split, 0) + pq.read_metadata(p).num_rows
    for s in info.get(card_data.SPLITS) or []:
        split, declared = s.get(card_data.SPLIT_NAME), s.get(card_data.NUM_EXAMPLES)
        if split in rows and declared != rows[split]:
            where = ", ".join(str(p.relative_to(c.folder)) for sp, p in split_files if sp == split)
            c.problem(
                f"{filenames.CARD_FILE}: dataset_info says {name}/{split} has {declared} rows, "
                f"{where} {'has' if ', ' not in where else 'have'} {rows[split]}"
            )


# ---- feature tokens ------------------------------------------------------------------------------
def _check_feature_tokens(c: _Checker, index: sidecar.VindexIndex) -> None:
    """One row per (layer, expert, feature) in order; K ids, tokens and scores a row; ids within
    the embedding's vocabulary; |scores| at most 1 and non-increasing."""
    path = c.folder / mirror.FEATURE_TOKENS_PARQUET
    if not path.exists():
        return  # optional
    import pyarrow.parquet as pq

    name = mirror.FEATURE_TOKENS_PARQUET
    table = pq.read_table(path)
    n_problems = len(c.report.problems)
    k = mirror.feature_tokens_k(table.schema)
    if table.schema != mirror.feature_tokens_schema(k):
        c.problem(f"{name}: schema {table.schema}, expected {mirror.feature_tokens_schema(k)}")
        return
    e, f = index.num_experts, index.num_feats
    want_rows = len(index.layers) * e * f
    if table.num_rows != want_rows:
        c.problem(
            f"{name}: {table.num_rows} rows, expected {want_rows} ({len(index.layers)} layers x {e} experts "
            f"x {f} features)"
        )
        return
    columns = {col: table.column(col).combine_chunks() for col in table.column_names}
    layer_ids = np.repeat(np.asarray(index.layer_ids), e * f)
    expected = {
        mirror.COL_LAYER: layer_ids,
        mirror.COL_EXPERT: np.tile(np.repeat(np.arange(e), f), len(index.layers)),
        mirror.COL_FEATURE: np.tile(np.arange(f), len(index.layers) * e),
    }
    for col, want in expected.items():
        bad = np.flatnonzero(columns[col].to_numpy() != want)
        if bad.size:
            c.problem(
                f"{name}: row {bad[0]} has {col} {columns[col][int(bad[0])]}, expected {want[bad[0]]}"
            )
    ids = columns[mirror.COL_TOKEN_IDS].values.to_numpy().reshape(-1, k)
    scores = columns[mirror.COL_SCORES].values.to_numpy().reshape(-1, k).astype(np.float64)
    larql_doc = c.folder / filenames.LARQL_INDEX_JSON
    vocab = (
        read_json_object(larql_doc, what="LarQL index").get("vocab_size")
        if larql_doc.exists()
        else None
    )
    if ids.min() < 0 or (vocab and ids.max() >= vocab):
        c.problem(
            f"{name}: token ids span {ids.min()}..{ids.max()}, outside the vocabulary of {vocab}"
        )
    if not (np.abs(scores) <= 1 + 1e-6).all() or (np.diff(np.abs(scores), axis=1) > 1e-7).any():
        c.problem(f"{name}: scores are not cosines ordered by |cosine| descending")
    if columns[mirror.COL_TOKENS].values.null_count:
        c.problem(f"{name}: some tokens are null")
    if len(c.report.problems) == n_problems:
        c.passed(f"{name}: {table.num_rows} rows of {k} tokens, one per layer, expert and feature")


# ---- LarQL ---------------------------------------------------------------------------------------
def _check_larql(c: _Checker, index: sidecar.VindexIndex) -> None:
    path = c.folder / filenames.LARQL_INDEX_JSON
    if not path.exists():
        return  # optional
    doc = read_json_object(path, what="LarQL index")
    n_problems = len(c.report.problems)
    by_layer = {int(e[larql.LAYER]): e for e in doc.get(larql.LAYERS) or []}
    if sorted(by_layer) != index.layer_ids:
        c.problem(
            f"{filenames.LARQL_INDEX_JSON}: layers {sorted(by_layer)}, {filenames.SIDECAR_JSON} has {index.layer_ids}"
        )
    for layer, e in sorted(by_layer.items()):
        if layer not in index.layers:
            continue  # reported above
        want = larql.layer_entry(index, layer)
        differ = [key for key, value in want.items() if e.get(key) != value]
        if differ:
            c.problem(
                f"layer {layer}: {filenames.LARQL_INDEX_JSON} says { ({k: e.get(k) for k in differ}) }, "
                f"{filenames.SIDECAR_JSON} implies { ({k: want[k] for k in differ}) }"
            )
    for name, digest in (doc.get(larql.CHECKSUMS) or {}).items():
        target = c.folder / name
        if not target.is_file():
            c.problem(
                f"{filenames.LARQL_INDEX_JSON}: checksum listed for {name}, which does not exist"
            )
            continue
        rel = Path(name).as_posix()
        actual = c.report.sha256.get(rel) or sha256_file(target)
        c.report.sha256[rel] = actual
        if actual != digest:
            c.problem(
                f"{filenames.LARQL_INDEX_JSON}: {name} hashes to {actual[:16]}..., recorded "
                f"{str(digest)[:16]}...",
                integrity=True,
            )
    _check_larql_sizes(c, index, doc)
    if len(c.report.problems) == n_problems:
        c.passed(f"{filenames.LARQL_INDEX_JSON}: layers, offsets, checksums and file sizes agree")


def _check_larql_sizes(c: _Checker, index: sidecar.VindexIndex, doc: dict[str, Any]) -> None:
    """The sizes LarQL decodes the browse and router files by."""
    embeddings = c.folder / filenames.LARQL_EMBEDDINGS_BIN
    if embeddings.exists():
        values = int(doc.get("vocab_size") or 0) * index.hidden_size
        sizes = {values * np.dtype(d).itemsize for d in larql.EMBEDDING_DTYPES.values()}
        if embeddings.stat().st_size not in sizes:
            c.problem(
                f"{filenames.LARQL_EMBEDDINGS_BIN}: {embeddings.stat().st_size} bytes, not vocab_size x "
                f"hidden_size ({values}) f16 or f32 values"
            )
    router = c.folder / filenames.LARQL_ROUTER_BIN
    if router.exists():
        want = (
            int(doc.get("num_layers") or 0)
            * layout.ITEMSIZE
            * larql.router_block_values(index.num_experts, index.hidden_size)
        )
        if router.stat().st_size != want:
            c.problem(
                f"{filenames.LARQL_ROUTER_BIN}: {router.stat().st_size} bytes, LarQL reads {want} "
                "(a block for every layer below num_layers)"
            )


# ---- phase JSON ----------------------------------------------------------------------------------
def _phase_layers(c: _Checker, name: str, index: sidecar.VindexIndex) -> dict[str, Any] | None:
    path = c.folder / name
    if not path.exists():
        return None  # a converted vindex may have none
    layers = read_json_object(path, what="phase document")[phases.LAYERS]
    if sorted(int(k) for k in layers) != index.layer_ids:
        c.problem(
            f"{name}: layers {sorted(int(k) for k in layers)}, {filenames.SIDECAR_JSON} has {index.layer_ids}"
        )
        return None
    return layers


def _check_phase1(c: _Checker, index: sidecar.VindexIndex) -> None:
    layers = _phase_layers(c, filenames.PHASE1_JSON, index)
    if layers is None:
        return
    k = index.num_feats
    n_problems = len(c.report.problems)
    for layer in index.layer_ids:
        routed = layers[str(layer)].get(phases.ROUTED) or {}
        entry = index.layers[layer]
        for key, recorded in (
            (statistics.median_var_key(k), entry.median_var),
            (statistics.q25_var_key(k), entry.q25_var),
            (statistics.q75_var_key(k), entry.q75_var),
        ):
            if not _same_number(routed.get(key), recorded):
                c.problem(
                    f"layer {layer}: {filenames.PHASE1_JSON} {key} = {routed.get(key)}, "
                    f"{filenames.SIDECAR_JSON} has {recorded}"
                )
    if len(c.report.problems) == n_problems:
        c.passed(f"{filenames.PHASE1_JSON}: same layers and var quartiles as the index")


def _check_phase2(c: _Checker, index: sidecar.VindexIndex) -> None:
    if _phase_layers(c, filenames.PHASE2_JSON, index) is not None:
        c.passed(f"{filenames.PHASE2_JSON}: same layers as the index")


def _check_no_router(c: _Checker, index: sidecar.VindexIndex) -> None:
    """A vindex whose sidecar says the router is not a matrix holds no router figure anywhere."""
    where = f"{filenames.SIDECAR_JSON} has {sidecar.ROUTER_MATRIX_KEY} false"
    n_problems = len(c.report.problems)
    for name, key in ((filenames.PHASE1_JSON, phases.ROUTER), (filenames.PHASE2_JSON, None)):
        path = c.folder / name
        if not path.exists():
            continue
        layers = read_json_object(path, what="phase document")[phases.LAYERS]
        figured = [
            layer
            for layer, entry in layers.items()
            if (entry if key is None else (entry or {}).get(key)) is not None
        ]
        if figured:
            c.problem(f"{name}: router figures for layers {figured}, but {where}")
    table = c.folder / mirror.ROUTER_SVD_PARQUET
    if table.exists():
        import pyarrow.parquet as pq

        columns = pq.read_schema(table).names
        if columns != [mirror.COL_LAYER]:
            c.problem(f"{mirror.ROUTER_SVD_PARQUET}: columns {columns}, but {where}")
    if (c.folder / filenames.LARQL_ROUTER_BIN).exists():
        c.problem(f"{filenames.LARQL_ROUTER_BIN} exists, but {where}")
    if len(c.report.problems) == n_problems:
        c.passed(f"no router figures anywhere, as {where}")


# ---- expert geometry -----------------------------------------------------------------------------
_OVERLAP_ATOL = 2e-6  # stored float32 overlaps against a recomputation (both ~1e-7 from exact)


def _check_expert_overlap(c: _Checker, index: sidecar.VindexIndex) -> None:
    """``expert_overlap``: one row per (layer, expert) in order; its first layer recomputed from
    the binary (plain, and weighted with ``expert_stats``' singular values); every layer's
    phase-1 summary recomputed from the table; alignment shares within [0, 1]."""
    path = c.folder / geometry.EXPERT_OVERLAP_PARQUET
    if not path.exists():
        return
    import pyarrow.parquet as pq  # only where there is a table to read

    from .numerics import geometry as geo

    table = pq.read_table(path)
    e = index.num_experts
    layers = table.column(geometry.COL_LAYER).to_numpy()
    experts = table.column(geometry.COL_EXPERT).to_numpy()
    if not (
        np.array_equal(layers, np.repeat(index.layer_ids, e))
        and np.array_equal(experts, np.tile(np.arange(e), len(index.layer_ids)))
    ):
        c.problem(
            f"{geometry.EXPERT_OVERLAP_PARQUET}: rows are not the {e} experts of each layer "
            f"{index.layer_ids} in order"
        )
        return
    n_problems = len(c.report.problems)

    def matrices(column: str) -> np.ndarray:
        col = table.column(column).combine_chunks()
        return col.values.to_numpy(zero_copy_only=False).reshape(len(index.layer_ids), e, e)

    plain = matrices(geometry.COL_OVERLAP)
    weighted = (
        matrices(geometry.COL_WEIGHTED_OVERLAP)
        if geometry.COL_WEIGHTED_OVERLAP in table.column_names
        else None
    )
    first = index.layer_ids[0]
    block = np.fromfile(
        c.folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        count=index.layer_nbytes // 4,
        offset=index.layers[first].file_offset,
    ).reshape(index.layer_shape)
    svals = None
    if weighted is not None:
        stats_table = pq.read_table(
            c.folder / mirror.EXPERT_STATS_PARQUET,
            columns=[mirror.COL_LAYER, statistics.SINGULAR_VALUES],
            filters=[(mirror.COL_LAYER, "=", first)],
        )
        col = stats_table.column(statistics.SINGULAR_VALUES).combine_chunks()
        svals = col.values.to_numpy(zero_copy_only=False).reshape(len(col), index.num_feats)
    fresh = geo.overlaps(block, svals)
    for name, stored, again in (
        (geometry.COL_OVERLAP, plain[0], fresh.plain),
        (geometry.COL_WEIGHTED_OVERLAP, None if weighted is None else weighted[0], fresh.weighted),
    ):
        if stored is None or again is None:
            continue
        worst = float(np.max(np.abs(stored - again)))
        if worst > _OVERLAP_ATOL:
            c.problem(
                f"layer {first}: {geometry.EXPERT_OVERLAP_PARQUET} {name} differs from the "
                f"overlaps of {filenames.GATE_VECTORS_BIN} by up to {worst:.3g}"
            )
    phase1 = c.folder / filenames.PHASE1_JSON
    documented = (
        read_json_object(phase1, what="phase-1 statistics").get(phases.LAYERS, {})
        if phase1.exists()
        else {}
    )
    for slot, layer in enumerate(index.layer_ids):
        section = (documented.get(str(layer)) or {}).get(geometry.GEOMETRY)
        if section is None:
            c.problem(
                f"layer {layer}: {filenames.PHASE1_JSON} has no {geometry.GEOMETRY!r} summary"
            )
            continue
        for key, stack in ((geometry.OVERLAP, plain), (geometry.WEIGHTED_OVERLAP, weighted)):
            if stack is None:
                continue
            got = geo.summarize_overlaps(stack[slot])
            want = section.get(key) or {}
            if not (
                math.isclose(got.mean, want.get(geometry.MEAN, math.nan), abs_tol=_OVERLAP_ATOL)
                and math.isclose(got.max, want.get(geometry.MAX, math.nan), abs_tol=_OVERLAP_ATOL)
            ):
                c.problem(
                    f"layer {layer}: {filenames.PHASE1_JSON} {key} mean/max "
                    f"{want.get(geometry.MEAN)}/{want.get(geometry.MAX)}, the table gives "
                    f"{got.mean:.6g}/{got.max:.6g}"
                )
    stats_path = c.folder / mirror.EXPERT_STATS_PARQUET
    if stats_path.exists():
        names = pq.read_schema(stats_path).names
        for name in geometry.ALIGNMENT_COLUMNS[:2]:
            if name in names:
                values = pq.read_table(stats_path, columns=[name]).column(name).to_numpy()
                if not np.all((values >= -1e-9) & (values <= 1 + 1e-9)):
                    c.problem(f"{mirror.EXPERT_STATS_PARQUET}: {name} outside [0, 1]")
    if len(c.report.problems) == n_problems:
        c.passed(
            f"{geometry.EXPERT_OVERLAP_PARQUET}: layer {first} matches the binary's overlaps; "
            f"phase-1 summaries match the table"
        )


# ---- a comparison dataset ------------------------------------------------------------------------
def _check_comparison(c: _Checker) -> None:
    """A ``compare`` output: its document, its three configs (rows, the summaries recomputed from
    the matching table, matched overlaps found in the cross table) and the card's configs."""
    import pyarrow.parquet as pq

    doc = read_json_object(c.folder / geometry.COMPARE_JSON, what="comparison document")
    if doc.get("format_version") != geometry.COMPARE_FORMAT_VERSION:
        c.problem(
            f"{geometry.COMPARE_JSON}: format_version {doc.get('format_version')!r}, "
            f"expected {geometry.COMPARE_FORMAT_VERSION}"
        )
        return
    for rel in geometry.COMPARE_PARQUETS.values():
        if not (c.folder / rel).is_file():
            c.problem(f"{rel}: missing")
    if c.report.problems:
        return
    n_problems = len(c.report.problems)
    layers = sorted(int(k) for k in doc[geometry.COMPARE_LAYERS])
    matching = pq.read_table(c.folder / geometry.MATCHING_PARQUET)
    cross = pq.read_table(c.folder / geometry.CROSS_OVERLAP_PARQUET)
    summary = pq.read_table(c.folder / geometry.LAYER_SUMMARY_PARQUET)
    if summary.column(geometry.COL_LAYER).to_pylist() != layers:
        c.problem(f"{geometry.LAYER_SUMMARY_PARQUET}: layers differ from {geometry.COMPARE_JSON}'s")
        return
    m_layer = matching.column(geometry.COL_LAYER).to_numpy()
    width = cross.schema.field(geometry.COL_OVERLAP).type.list_size
    col = cross.column(geometry.COL_OVERLAP).combine_chunks()
    cross_rows = col.values.to_numpy(zero_copy_only=False).reshape(len(col), width)
    if cross.num_rows != matching.num_rows:
        c.problem(
            f"{geometry.CROSS_OVERLAP_PARQUET}: {cross.num_rows} rows, matching has {matching.num_rows}"
        )
        return
    match = matching.column(geometry.COL_MATCH).to_numpy()
    matched = matching.column(geometry.COL_MATCHED).to_numpy(zero_copy_only=False)
    same = matching.column(geometry.COL_SAME_INDEX).to_numpy(zero_copy_only=False)
    for row, layer in enumerate(layers):
        rows = m_layer == layer
        recorded = doc[geometry.COMPARE_LAYERS][str(layer)]
        ok = match[rows] >= 0
        again = {
            "mean_matched": float(np.mean(matched[rows][ok])),
            "mean_same_index": float(np.nanmean(same[rows])),
        }
        for key, value in again.items():
            if not math.isclose(value, recorded.get(key, math.nan), rel_tol=1e-9):
                c.problem(
                    f"layer {layer}: {geometry.COMPARE_JSON} {key} = {recorded.get(key)}, "
                    f"{geometry.MATCHING_PARQUET} gives {value}"
                )
            if not math.isclose(value, summary.column(key)[row].as_py(), rel_tol=1e-9):
                c.problem(f"layer {layer}: {geometry.LAYER_SUMMARY_PARQUET} {key} disagrees")
        picked = cross_rows[rows][ok, match[rows][ok]]
        if np.max(np.abs(picked - matched[rows][ok]), initial=0) > _OVERLAP_ATOL:
            c.problem(
                f"layer {layer}: {geometry.MATCHING_PARQUET} matched overlaps differ from "
                f"{geometry.CROSS_OVERLAP_PARQUET}"
            )
    card = c.folder / filenames.CARD_FILE
    if not card.is_file():
        c.problem(f"{filenames.CARD_FILE}: missing")
    else:
        from .format.card_data import read_card_data

        configs = mirror.configs_by_name(read_card_data(card))
        for name, rel in geometry.COMPARE_PARQUETS.items():
            paths = [p for _, p in mirror.config_paths(configs.get(name) or {})]
            if paths != [rel]:
                c.problem(
                    f"{filenames.CARD_FILE}: config {name!r} names {paths}, expected [{rel!r}]"
                )
    if len(c.report.problems) == n_problems:
        c.passed(
            f"{geometry.COMPARE_JSON}: {len(layers)} layer(s); configs agree with each other and the card"
        )
