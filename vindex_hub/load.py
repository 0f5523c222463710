"""Reading a vindex: ``Vindex.open`` on a local folder or a Hub repo, ``pull``, ``remote_info``.

Modes (``Vindex.open(..., mode=...)``):

``local``     a folder on disk (chosen whenever the argument is an existing folder):
              ``gate_vectors.bin`` is memory-mapped, ``layer(L)`` is a zero-copy view.
``snapshot``  the binary, sidecar, stats JSON and card are downloaded once into the standard Hub
              cache (``snapshot_download``; ``HF_HOME`` / ``HF_HUB_CACHE`` / ``cache_dir``
              honoured), then memory-mapped like a local folder.
``lazy``      (the default for repos) only the sidecar is downloaded at open; ``layer(L)`` and
              ``expert(L, E)`` fetch exactly those bytes with ranged GETs and keep them in the
              persistent block cache (``vindex_hub.hub.blockcache``), keyed by the binary's content hash
              at the resolved commit. Views of cached blocks are memory-mapped too.
``arrow``     each layer is read from the parquet mirror with ``datasets.load_dataset(repo,
              "layer_NN", split="train")`` (that one file; an old-layout card's split file by
              ``data_files``) and reassembled to ``(E, K, H)`` (dataset repos and local folders
              only: ``datasets`` reads no other kind).

Everything remote is pinned to the commit the revision resolved to at open, so a push in the
middle of a session cannot mix two versions. Once fetched, ``lazy`` and ``snapshot`` opens work
with ``HF_HUB_OFFLINE=1``.

Integrity (``verify``):

``True``      (default) a layer's bytes are checked against the sidecar's sha256 before they are
              returned or cached; bytes already on disk (local folder, Hub cache, block cache) are
              checked once per ``Vindex`` object, the first time that layer is read, so a block
              corrupted on disk, or cached by a ``verify=False`` reader, is caught (the block cache
              then drops it and fetches it again). The sha256 is per layer, so an expert read in
              ``lazy`` mode while its layer is not cached cannot be hash-checked without fetching
              64x the bytes: such a read (fetched, or cached and read first by this object) is
              checked for shape, finiteness and unit-norm rows only. An expert read from a cached
              or local layer is hash-checked through its layer.
``"strict"``  as True, but an expert read always fetches and checks its whole layer.
``False``     no checks (sizes and ``Content-Range`` are still checked).
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal, Union

import numpy as np
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.file_download import repo_folder_name

from .format import filenames, layout, mirror, selection, sidecar, statistics
from .hub.blockcache import BlockCache, default_cache_root
from .checksums import sha256_bytes
from .errors import HubError, IntegrityError, OutputConflictError, RemoteNotFoundError, UsageError, VindexFormatError
from .fsutil import atomic_write_json, read_json
from .hub.http import RemoteFile, fetch_range_into, file_metadata
from .hub.refs import RepoRef, commit_sha, parse_repo
from .hub.errors import first_line, hub_errors
from .format.card_data import CardOptions
from .writers.binary import GateVectorsWriter

Mode = Literal["local", "snapshot", "lazy", "arrow"]
Verify = Union[bool, Literal["strict"]]
MODES = ("local", "snapshot", "lazy", "arrow")
# What a snapshot-mode open downloads: the binary and the small files beside it, not the mirror.
SNAPSHOT_FILES = [filenames.INDEX_JSON, filenames.GATE_VECTORS_BIN, filenames.PHASE1_JSON, filenames.PHASE2_JSON, filenames.CARD_FILE]
UNIT_NORM_TOL = 1e-3  # rows are unit-norm float32 singular vectors; corrupted bytes rarely stay within this


# ---- where the small files come from -----------------------------------------------------------
class _LocalFiles:
    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise VindexFormatError(f"{path}: no such file in this vindex")
        return path

    def describe(self, name: str) -> str:
        return str(self.root / name)


class _HubFiles:
    """Files of a repo pinned to a commit, through the Hub cache (no request once cached)."""

    def __init__(self, ref: RepoRef, *, cache_dir: str | None, token: str | bool | None):
        self.ref, self.cache_dir, self.token = ref, cache_dir, token

    def path(self, name: str) -> Path:
        with hub_errors(self.ref, name):
            return Path(hf_hub_download(self.ref.repo_id, name, repo_type=self.ref.repo_type,
                                        revision=self.ref.revision, cache_dir=self.cache_dir, token=self.token))

    def describe(self, name: str) -> str:
        return f"{name} in {self.ref}"


# ---- where the layers come from ------------------------------------------------------------------
class _MemmapReader:
    """gate_vectors.bin on local disk (a vindex folder or a Hub cache snapshot)."""

    def __init__(self, path: Path, index: sidecar.VindexIndex):
        index.check_layout(where=str(path.with_name(filenames.INDEX_JSON)), file_size=path.stat().st_size)
        self.path, self.index = path, index
        self._mm = np.memmap(path, dtype=layout.NUMPY_DTYPE, mode="r",
                             shape=(len(index.layers), index.num_experts, index.num_feats, index.hidden_size))
        self._slot = {layer: slot for slot, layer in enumerate(index.layer_ids)}

    def layer(self, layer: int, verify: Verify, verified: set) -> np.ndarray:
        block = np.asarray(self._mm[self._slot[layer]])
        if verify and layer not in verified:
            _check_sha256(block, self.index, layer, str(self.path))
            verified.add(layer)
        return block

    def expert(self, layer: int, expert: int, verify: Verify, verified: set) -> np.ndarray:
        return self.layer(layer, verify, verified)[expert]

    def close(self) -> None:
        self._mm = None  # views handed out keep their own reference to the mapping


class _RangedReader:
    """Exact ranged reads of a remote gate_vectors.bin, through the persistent block cache."""

    def __init__(self, remote: RemoteFile, index: sidecar.VindexIndex, cache: BlockCache, token: str | bool | None):
        self.remote, self.index, self.cache, self.token = remote, index, cache, token

    def _block(self, start: int, end: int, check: Callable[[Path], None] | None, recheck: bool) -> np.ndarray:
        """Bytes ``[start, end)``: fetched and passed through ``check`` before they are cached, or
        found in the cache, and then (``recheck``) checked again, since another process may have
        cached them unchecked or they may have rotted on disk; a bad block is dropped and refetched."""
        key = self.remote.etag

        def fetch(f) -> None:
            fetch_range_into(f, self.remote.url, start, end, token=self.token, expected_total=self.remote.size)

        path, fetched = self.cache.obtain(key, start, end, fetch, check, source=self.remote.url)
        if check is not None and recheck and not fetched:
            try:
                check(path)
            except IntegrityError as bad:
                self.cache.discard(key, start, end)
                try:
                    path, _ = self.cache.obtain(key, start, end, fetch, check, source=self.remote.url)
                except HubError as exc:
                    raise IntegrityError(f"{bad} (cache block {path}, now dropped; fetching it again failed: "
                                         f"{exc})") from None
        return np.asarray(np.memmap(path, dtype=layout.NUMPY_DTYPE, mode="r"))

    def layer(self, layer: int, verify: Verify, verified: set) -> np.ndarray:
        e = self.index.layer(layer)
        where = f"{filenames.GATE_VECTORS_BIN} ({self.remote.url})"
        check = (lambda path: _check_sha256(_mapped(path), self.index, layer, where)) if verify else None
        flat = self._block(e.file_offset, e.file_offset + e.nbytes, check, recheck=layer not in verified)
        if verify:
            verified.add(layer)
        return flat.reshape(e.shape)

    def expert(self, layer: int, expert: int, verify: Verify, verified: set) -> np.ndarray:
        e = self.index.layer(layer)
        if verify == "strict" or self.cache.get(self.remote.etag, e.file_offset, e.file_offset + e.nbytes):
            return self.layer(layer, verify, verified)[expert]
        k, h = self.index.num_feats, self.index.hidden_size
        start = e.file_offset + expert * layout.expert_nbytes(k, h)
        where = f"{filenames.GATE_VECTORS_BIN} ({self.remote.url}) layer {layer} expert {expert}"
        check = (lambda path: _check_unit_rows(_mapped(path).reshape(k, h), where)) if verify else None
        block = self._block(start, start + layout.expert_nbytes(k, h), check, recheck=(layer, expert) not in verified)
        if verify:
            verified.add((layer, expert))
        return block.reshape(k, h)

    def close(self) -> None:
        pass


class _ArrowReader:
    """Layers from the parquet mirror via ``datasets.load_dataset``: the layer's own config
    (``layer_NN``, which fetches that one file); for a card in the old layout (one split per layer
    of ``gate_vectors``) that split's file named as ``data_files``, since naming the config would
    prepare every split of it."""

    def __init__(self, path_or_repo: str, revision: str | None, index: sidecar.VindexIndex, token: str | bool | None,
                 files):
        self.path_or_repo, self.revision, self.index, self.token = path_or_repo, revision, index, token
        self._files = files

    @cached_property
    def _sources(self) -> dict[int, mirror.LayerSource]:
        return layer_sources(self._files, self.index)

    def layer(self, layer: int, verify: Verify, verified: set) -> np.ndarray:
        import datasets
        from datasets.exceptions import DatasetNotFoundError

        e = self.index.layer(layer)
        source = self._sources[layer]
        where = f"{source.path} of {self.path_or_repo} (config {source.config}, split {source.split})"
        if source.config == mirror.CONFIG_GATE_VECTORS:  # the old layout
            which: dict[str, Any] = {"data_files": {source.split: source.path}}
        else:
            which = {"name": source.config}
        try:
            ds = datasets.load_dataset(self.path_or_repo, split=source.split, revision=self.revision,
                                       token=self.token, **which)
        except (FileNotFoundError, DatasetNotFoundError, ValueError) as exc:
            # DataFilesNotFoundError is a FileNotFoundError; a config the card lacks is a ValueError
            raise VindexFormatError(f"{where}: layer {layer} cannot be read from the mirror "
                                    f"({first_line(exc)})") from None
        except (HfHubHTTPError, OSError) as exc:
            raise HubError(f"{where}: layer {layer}: {type(exc).__name__}: {first_line(exc)}") from None
        block = gate_vectors_from_table(ds.data.table, e.shape, where=where)
        if verify and layer not in verified:
            _check_sha256(block, self.index, layer, where)
            verified.add(layer)
        return block

    def expert(self, layer: int, expert: int, verify: Verify, verified: set) -> np.ndarray:
        return self.layer(layer, verify, verified)[expert]

    def close(self) -> None:
        pass


def layer_sources(files, index: sidecar.VindexIndex) -> dict[int, mirror.LayerSource]:
    """Each layer's parquet file, config and split as the card lists them (either layout)."""
    from .format.card_data import read_card_data

    try:
        configs = mirror.configs_by_name(read_card_data(files.path(filenames.CARD_FILE)))
    except (VindexFormatError, RemoteNotFoundError):
        configs = {}  # no card: the current layout's names
    return mirror.layer_sources(configs, index.layer_ids, index.model_config.num_hidden_layers)


def gate_vectors_from_table(table, shape: list[int], *, where: str) -> np.ndarray:
    """Reassemble one layer's ``(E, K, H)`` block from its mirror rows, placed by (expert, feature)."""
    num_experts, num_feats, hidden = shape
    if table.num_rows != num_experts * num_feats:
        raise VindexFormatError(f"{where}: {table.num_rows} rows, expected {num_experts} x {num_feats}")
    expert = table.column(mirror.COL_EXPERT).to_numpy().astype(np.int64)
    feature = table.column(mirror.COL_FEATURE).to_numpy().astype(np.int64)
    vectors = table.column(mirror.COL_VECTOR).combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False)
    if flat.dtype != np.float32 or flat.size != table.num_rows * hidden:
        raise VindexFormatError(f"{where}: {mirror.COL_VECTOR} is not float32 x {hidden}")
    if expert.min() < 0 or expert.max() >= num_experts or feature.min() < 0 or feature.max() >= num_feats:
        raise VindexFormatError(f"{where}: (expert, feature) outside {num_experts} x {num_feats}")
    slot = expert * num_feats + feature
    if np.unique(slot).size != slot.size:
        raise VindexFormatError(f"{where}: repeated (expert, feature) rows")
    out = np.empty((num_experts * num_feats, hidden), dtype=layout.NUMPY_DTYPE)
    out[slot] = flat.reshape(-1, hidden)
    return out.reshape(shape)


def _mapped(path: Path) -> np.ndarray:
    """A read-only float32 view of a whole file (a cache block), for the checks below."""
    return np.memmap(path, dtype=layout.NUMPY_DTYPE, mode="r")


def _check_sha256(block: np.ndarray, index: sidecar.VindexIndex, layer: int, where: str) -> None:
    got = sha256_bytes(memoryview(np.ascontiguousarray(block)).cast("B"))
    want = index.layer(layer).sha256
    if got != want:
        raise IntegrityError(f"{where}: layer {layer} has sha256 {got}, the sidecar records {want}")


def _check_unit_rows(block: np.ndarray, where: str) -> None:
    norms = np.linalg.norm(block.astype(np.float64), axis=-1)
    if not np.all(np.isfinite(norms)) or np.max(np.abs(norms - 1.0)) > UNIT_NORM_TOL:
        raise IntegrityError(f"{where}: rows are not unit-norm gate vectors (corrupted bytes?)")


# ---- the public object ---------------------------------------------------------------------------
class Vindex:
    """A vindex opened for reading. Use ``Vindex.open``; close it (or use ``with``) when done.

    Arrays from ``layer``/``expert`` are read-only; in local, snapshot and lazy modes they are
    memory-mapped views (copy them to write). ``layer_torch``/``expert_torch`` return copies.
    """

    def __init__(self, index: sidecar.VindexIndex, reader, files, *, mode: Mode, verify: Verify,
                 location: str, commit: str | None = None, file_size: int | None = None):
        self._index, self._reader, self._files = index, reader, files
        self.mode, self.verify, self.location, self.commit = mode, verify, location, commit
        self._file_size = file_size
        self._verified: set = set()  # layers (and lazily read (layer, expert) blocks) checked by this object

    @classmethod
    def open(
        cls,
        path_or_repo_id: str | os.PathLike[str],
        revision: str | None = None,
        repo_type: str = "dataset",
        mode: Mode | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        verify: Verify = True,
        token: str | bool | None = None,
    ) -> "Vindex":
        """Open a vindex folder, a Hub repo id (``ns/name``, ``hf://datasets/ns/name@rev``) or a commit.

        ``mode`` defaults to ``local`` for an existing folder and ``lazy`` for a repo; for a
        folder, ``lazy`` and ``snapshot`` also mean memory-mapping. ``cache_dir`` is the Hub
        cache folder (default ``HF_HUB_CACHE``); the block cache sits beside it.
        """
        if mode is not None and mode not in MODES:
            raise UsageError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if verify not in (True, False, "strict"):
            raise UsageError(f"verify={verify!r}: expected True, False or 'strict'")
        cache_dir = str(cache_dir) if cache_dir is not None else None
        if os.path.isdir(path_or_repo_id):
            if revision is not None:
                raise UsageError(f"{path_or_repo_id} is a local folder: revision={revision!r} does not apply")
            return cls._open_local(Path(path_or_repo_id), mode, verify)
        ref = parse_repo(str(path_or_repo_id), revision=revision, repo_type=repo_type)
        mode = mode or "lazy"
        if mode == "local":
            raise UsageError(f"{path_or_repo_id} is not a local folder")
        if mode == "arrow" and ref.repo_type != "dataset":
            raise UsageError(f"mode='arrow' reads with datasets.load_dataset, which reads dataset repos only; "
                             f"{ref} is a {ref.repo_type} repo (use mode='lazy' or 'snapshot')")
        ref = ref.at(_resolve_commit(ref, cache_dir=cache_dir, token=token))
        files = _HubFiles(ref, cache_dir=cache_dir, token=token)
        index_path = files.path(filenames.INDEX_JSON)
        index = sidecar.VindexIndex.loads(index_path.read_text(encoding="utf-8"), where=files.describe(filenames.INDEX_JSON))
        if mode == "snapshot":
            with hub_errors(ref):
                folder = Path(snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                                allow_patterns=SNAPSHOT_FILES, cache_dir=cache_dir, token=token))
            reader = _MemmapReader(_existing(folder / filenames.GATE_VECTORS_BIN, ref), index)
            size = reader.path.stat().st_size
        elif mode == "lazy":
            remote = _binary_metadata(ref, cache_dir=cache_dir, token=token)
            index.check_layout(where=files.describe(filenames.INDEX_JSON), file_size=remote.size)
            cache = BlockCache(default_cache_root(cache_dir))
            reader, size = _RangedReader(remote, index, cache, token), remote.size
        else:
            reader, size = _ArrowReader(ref.repo_id, ref.revision, index, token, files), None
        return cls(index, reader, files, mode=mode, verify=verify, location=f"{ref.repo_id}@{ref.revision}",
                   commit=ref.revision, file_size=size)

    @classmethod
    def _open_local(cls, root: Path, mode: Mode | None, verify: Verify) -> "Vindex":
        files = _LocalFiles(root)
        index_path = files.path(filenames.INDEX_JSON)
        index = sidecar.VindexIndex.loads(index_path.read_text(encoding="utf-8"), where=str(index_path))
        if mode == "arrow":
            reader, size = _ArrowReader(str(root), None, index, None, files), None
        else:
            if not (root / filenames.GATE_VECTORS_BIN).is_file():
                pulled = _read_pull_marker(root)
                what = (f"a data-only pull (format='arrow') of {pulled.get('repo_id')}"
                        if pulled.get("format") == "arrow" else "a folder")
                raise VindexFormatError(f"{root / filenames.GATE_VECTORS_BIN}: missing; {root} is {what} without "
                                        "the binary: open it with mode='arrow' to read its parquet layers")
            reader = _MemmapReader(files.path(filenames.GATE_VECTORS_BIN), index)
            size, mode = reader.path.stat().st_size, "local"
        return cls(index, reader, files, mode=mode, verify=verify, location=str(root), file_size=size)

    # ---- shape ----
    @property
    def index(self) -> sidecar.VindexIndex:
        return self._index

    @property
    def layers(self) -> list[int]:
        return self._index.layer_ids

    @property
    def num_layers(self) -> int:
        return len(self._index.layers)

    @property
    def num_experts(self) -> int:
        return self._index.num_experts

    @property
    def num_feats(self) -> int:
        return self._index.num_feats

    @property
    def hidden_size(self) -> int:
        return self._index.hidden_size

    # ---- vectors ----
    def layer(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s gate vectors, ``(num_experts, num_feats, hidden_size)`` float32, read-only."""
        self._index.layer(layer)  # a clear error for a layer the vindex does not hold
        return self._open_reader().layer(layer, self.verify, self._verified)

    def expert(self, layer: int, expert: int) -> np.ndarray:
        """One expert's ``(num_feats, hidden_size)`` vectors (rows by descending singular value)."""
        self._index.layer(layer)
        if not 0 <= expert < self.num_experts:
            raise UsageError(f"expert {expert} out of range: layer {layer} has experts 0-{self.num_experts - 1}")
        return self._open_reader().expert(layer, expert, self.verify, self._verified)

    def layer_torch(self, layer: int, device=None, dtype=None):
        """``layer(L)`` as a new torch tensor on ``device`` (default CPU) in ``dtype`` (default float32)."""
        return _to_torch(self.layer(layer), device, dtype)

    def expert_torch(self, layer: int, expert: int, device=None, dtype=None):
        return _to_torch(self.expert(layer, expert), device, dtype)

    # ---- statistics and card ----
    @cached_property
    def phase1(self) -> dict[str, Any]:
        """``phase1_moe_svd.json``: per layer, the routed var-K summary, shared expert and router."""
        return read_json(self._files.path(filenames.PHASE1_JSON))

    @cached_property
    def phase2(self) -> dict[str, Any]:
        """``phase2_router_svd.json``: per layer, the router decomposition."""
        return read_json(self._files.path(filenames.PHASE2_JSON))

    def expert_stats(self) -> dict[str, np.ndarray]:
        """The ``expert_stats`` table, one row per (layer, expert): columns as numpy arrays
        (``singular_values`` is ``(rows, num_feats)``)."""
        import pyarrow.parquet as pq

        table = pq.read_table(self._files.path(mirror.EXPERT_STATS_PARQUET))
        out: dict[str, np.ndarray] = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if hasattr(col.type, "list_size"):
                out[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        return out

    def feature_tokens(self, layer: int, expert: int) -> list[list[tuple[str, int, float]]]:
        """Per feature of one expert, its ``(token, token_id, cosine)`` labels from the
        ``feature_tokens`` config, by |cosine| descending (fetches only that file)."""
        import pyarrow.parquet as pq

        self._index.layer(layer)
        if not 0 <= expert < self.num_experts:
            raise UsageError(f"expert {expert} out of range: layer {layer} has experts 0-{self.num_experts - 1}")
        try:
            path = self._files.path(mirror.FEATURE_TOKENS_PARQUET)
        except (VindexFormatError, RemoteNotFoundError):
            raise VindexFormatError(f"{self.location} has no {mirror.FEATURE_TOKENS_PARQUET} "
                                    "(built without --feature-tokens K)") from None
        rows = pq.read_table(path, filters=[(mirror.COL_LAYER, "=", layer), (mirror.COL_EXPERT, "=", expert)]
                             ).sort_by(mirror.COL_FEATURE).to_pylist()
        return [list(zip(r[mirror.COL_TOKENS], r[mirror.COL_TOKEN_IDS], r[mirror.COL_SCORES])) for r in rows]

    @cached_property
    def card_data(self):
        """The dataset card's metadata (``huggingface_hub.DatasetCardData``), None without a card."""
        from huggingface_hub import DatasetCard

        try:
            path = self._files.path(filenames.CARD_FILE)
        except (VindexFormatError, RemoteNotFoundError):
            return None
        return DatasetCard.load(path).data

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: where, shape, sizes, source, builder and the per-layer table."""
        idx, k = self._index, self.num_feats
        return {
            "location": self.location,
            "commit": self.commit,
            "mode": self.mode,
            "format_version": idx.format_version,
            "model_type": idx.model_config.model_type,
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "num_feats": k,
            "hidden_size": self.hidden_size,
            "layer_nbytes": idx.layer_nbytes,
            "total_bytes": idx.total_bytes,
            "file_size": self._file_size,
            "source": idx.source.__dict__.copy(),
            "builder": idx.builder.__dict__.copy(),
            "layers": [
                {"layer": layer, "file_offset": e.file_offset, "nbytes": e.nbytes, "sha256": e.sha256,
                 statistics.median_var_key(k): e.median_var, statistics.q25_var_key(k): e.q25_var,
                 statistics.q75_var_key(k): e.q75_var}
                for layer, e in sorted(idx.layers.items())
            ],
        }

    # ---- lifetime ----
    def _open_reader(self):
        if self._reader is None:
            raise UsageError(f"vindex {self.location} is closed")
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "Vindex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Vindex({self.location!r}, mode={self.mode!r}, layers={selection.layer_span(self.layers)}, "
                f"experts={self.num_experts}, num_feats={self.num_feats}, hidden_size={self.hidden_size})")


def _to_torch(array: np.ndarray, device, dtype):
    import torch

    return torch.from_numpy(np.array(array)).to(device=device, dtype=dtype)


def _existing(path: Path, ref: RepoRef) -> Path:
    if not path.is_file():
        raise VindexFormatError(f"{path.name} in {ref}: missing from the snapshot")
    return path


# ---- resolving a revision ------------------------------------------------------------------------
def _resolve_commit(ref: RepoRef, *, cache_dir: str | None, token: str | bool | None) -> str:
    """The commit sha ``ref.revision`` points to, by downloading the sidecar at that revision.

    ``hf_hub_download`` records the revision -> commit mapping in the Hub cache, so the same call
    resolves it offline; the file lands at ``snapshots/<commit>/<name>``.
    """
    with hub_errors(ref, filenames.INDEX_JSON):
        path = hf_hub_download(ref.repo_id, filenames.INDEX_JSON, repo_type=ref.repo_type, revision=ref.revision,
                               cache_dir=cache_dir, token=token)
    return commit_sha(Path(path).parent.name, f"{filenames.INDEX_JSON} in {ref}")


def _binary_metadata(ref: RepoRef, *, cache_dir: str | None, token: str | bool | None) -> RemoteFile:
    """HEAD gate_vectors.bin at the commit, remembered in the block cache for offline opens."""
    cache = BlockCache(default_cache_root(cache_dir))
    folder = repo_folder_name(repo_id=ref.repo_id, repo_type=ref.repo_type)
    if constants.is_offline_mode():
        record = cache.recall(folder, ref.revision, filenames.GATE_VECTORS_BIN)
        if record is None:
            raise HubError(f"{filenames.GATE_VECTORS_BIN} in {ref}: never opened online, and HF_HUB_OFFLINE is set")
        return RemoteFile(ref.url(filenames.GATE_VECTORS_BIN), ref.revision, record["etag"], int(record["size"]))
    remote = file_metadata(ref, filenames.GATE_VECTORS_BIN, token=token)
    cache.remember(folder, ref.revision, filenames.GATE_VECTORS_BIN, {"etag": remote.etag, "size": remote.size})
    return remote


# ---- pull / info ---------------------------------------------------------------------------------
# Marks a folder made by ``pull`` (repo, commit, format, layers); hidden, so never pushed.
PULL_MARKER = ".vindex-pull.json"


def pull(
    repo_id: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    layers: str | list[int] | None = None,
    format: Literal["binary", "arrow"] = "binary",
    revision: str | None = None,
    repo_type: str = "dataset",
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """Materialize a Hub vindex in a folder; return the folder.

    ``out_dir`` defaults to ``./<repo name>`` (the part after the slash, in the current folder).
    It must be missing, empty, or an earlier pull of the same repo, which is then replaced: its
    sidecar is removed first, then the other files the vindex owns (other files are kept).

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
    ``layers``), the stats parquet files, the card and the JSON files, with the repo's sidecar
    unchanged (it lists every layer). There is no binary, so ``Vindex.open(folder)`` refuses it;
    ``Vindex.open(folder, mode="arrow")`` reads the layers that were pulled.
    """
    if format not in ("binary", "arrow"):
        raise UsageError(f"format {format!r}: expected 'binary' or 'arrow'")
    ref = parse_repo(repo_id, revision=revision, repo_type=repo_type)
    out = Path(out_dir) if out_dir is not None else Path(ref.repo_id.split("/")[-1])
    earlier_pull = _check_out_dir(out, ref)
    cache_dir = str(cache_dir) if cache_dir is not None else None
    with Vindex.open(ref.repo_id, ref.revision, ref.repo_type, mode="lazy", cache_dir=cache_dir, token=token) as vx:
        selected = selection.parse_layers(layers, vx.index.model_config.num_hidden_layers) if layers is not None else vx.layers
        missing = [layer for layer in selected if layer not in vx.index.layers]
        if missing:
            raise UsageError(f"layers {missing} are not in {vx.location} (it holds layers {selection.layer_span(vx.layers)})")
        if earlier_pull:
            _remove_vindex_files(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / PULL_MARKER, {"repo_id": ref.repo_id, "repo_type": ref.repo_type, "commit": vx.commit,
                                              "format": format, "layers": selected})
        pinned = ref.at(vx.commit)
        if format == "arrow":
            sources = layer_sources(vx._files, vx.index)  # the card says where (either layout)
            patterns = [sources[layer].path for layer in selected]
            patterns += [mirror.EXPERT_STATS_PARQUET, mirror.ROUTER_SVD_PARQUET, filenames.CARD_FILE,
                         filenames.INDEX_JSON, filenames.PHASE1_JSON, filenames.PHASE2_JSON]
            _snapshot_to(pinned, out, allow=patterns, cache_dir=cache_dir, token=token)
            return out
        if layers is None:
            _snapshot_to(pinned, out, ignore=[filenames.INDEX_JSON], cache_dir=cache_dir, token=token)
            _snapshot_to(pinned, out, allow=[filenames.INDEX_JSON], cache_dir=cache_dir, token=token)  # last
        else:
            _write_subset(vx, selected, out)
    _verify_pulled(out)
    return out


def _read_pull_marker(folder: Path) -> dict[str, Any]:
    try:
        data = read_json(folder / PULL_MARKER)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_out_dir(out: Path, ref: RepoRef) -> bool:
    """Whether ``out`` holds an earlier pull of ``ref``'s repo; ``OutputConflictError`` unless it
    does or is missing or empty (so a folder the user built is never overwritten)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputConflictError(f"{out}: exists and is not a folder; choose another -o")
    if not any(out.iterdir()):
        return False
    marker = _read_pull_marker(out)
    if (marker.get("repo_id"), marker.get("repo_type")) == (ref.repo_id, ref.repo_type):
        return True
    raise OutputConflictError(f"{out}: not empty and not an earlier pull of {ref.repo_type} repo {ref.repo_id}; "
                              "choose another -o (or empty it)")


def _remove_vindex_files(out: Path) -> None:
    """Empty an earlier pull: the sidecar first (so the folder never looks complete), then every
    other file the vindex owns; the user's own files and hidden files stay."""
    from .format.filenames import is_vindex_path

    (out / filenames.INDEX_JSON).unlink(missing_ok=True)
    for dirpath, dirnames, names in os.walk(out, topdown=False):
        for name in names:
            path = Path(dirpath) / name
            if is_vindex_path(path.relative_to(out).as_posix()):
                path.unlink()
        if Path(dirpath) != out and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()


def _snapshot_to(ref: RepoRef, out: Path, *, allow: list[str] | None = None, ignore: list[str] | None = None,
                 cache_dir, token) -> Path:
    with hub_errors(ref):
        return Path(snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                      allow_patterns=allow, ignore_patterns=ignore, local_dir=out,
                                      cache_dir=cache_dir, token=token))


def _verify_pulled(out: Path) -> None:
    """``verify_vindex`` on a pulled folder; on failure drop its sidecar (never a valid-looking but
    wrong vindex) and raise."""
    from .verify import verify_vindex

    report = verify_vindex(out)
    if not report.ok:
        (out / filenames.INDEX_JSON).unlink(missing_ok=True)
        raise IntegrityError(f"{out}: the pulled vindex fails verification, its sidecar was removed: "
                             + "; ".join(report.problems))


def _write_subset(vx: Vindex, selected: list[int], out: Path) -> None:
    """A vindex of ``selected`` layers: binary re-offset from 0, then the one write sequence with the
    source's statistics of those layers carried over (the sidecar last)."""
    from .writers.derived import CarriedStats, write_derived_files
    from .writers.mirror import restrict_to_layers as restrict_table
    from .writers.phases import restrict_to_layers as restrict_document

    src = vx.index
    tmp = out / filenames.BUILD_STATE_DIR / filenames.PARTIAL_BIN
    writer = GateVectorsWriter(tmp, num_layers=len(selected), num_experts=src.num_experts,
                               num_feats=src.num_feats, hidden_size=src.hidden_size)
    layers: dict[int, sidecar.LayerEntry] = {}
    try:
        for slot, layer in enumerate(selected):
            sha = writer.write_layer(slot, vx.layer(layer))  # checked against the sidecar by vx
            e = src.layer(layer)
            layers[layer] = sidecar.LayerEntry(
                file_offset=layout.layer_offset(slot, src.num_experts, src.num_feats, src.hidden_size),
                shape=list(e.shape), nbytes=e.nbytes, sha256=sha,
                median_var=e.median_var, q25_var=e.q25_var, q75_var=e.q75_var)
        writer.finish(out / filenames.GATE_VECTORS_BIN)
    finally:
        writer.close()
    shutil.rmtree(out / filenames.BUILD_STATE_DIR, ignore_errors=True)
    documents = []
    for stats in ("phase1", "phase2"):
        try:
            documents.append(restrict_document(getattr(vx, stats), selected))
        except (VindexFormatError, RemoteNotFoundError):
            documents.append(None)  # an optional file the repo does not have
    tables = {rel: restrict_table(table, selected) for rel, table in _stats_tables(vx).items()}
    index = sidecar.VindexIndex(num_feats=src.num_feats, model_config=src.model_config, source=src.source,
                                builder=src.builder, layers=layers, format_version=src.format_version)
    license = getattr(vx.card_data, "license", None)  # keep the source card's license
    write_derived_files(out, index, carried=CarriedStats(*documents, tables=tables),
                        card_options=CardOptions(license=license) if isinstance(license, str) else CardOptions())


def _stats_tables(vx: Vindex) -> dict[str, Any]:
    """The source's published stats configs (both, or none when it lacks either)."""
    import pyarrow.parquet as pq

    tables = {}
    for rel in mirror.STATS_PARQUETS:
        try:
            tables[rel] = pq.read_table(vx._files.path(rel))
        except (VindexFormatError, RemoteNotFoundError):
            return {}
    return tables


def remote_info(
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str = "dataset",
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> dict[str, Any]:
    """``Vindex.info()`` of a Hub vindex plus its phase-1/phase-2 JSON, without reading the binary.

    Downloads the sidecar and the small stats JSON; a HEAD of the binary gives its size.
    """
    with Vindex.open(repo_id, revision, repo_type, mode="lazy", cache_dir=cache_dir, token=token) as vx:
        info = vx.info()
        for name in ("phase1", "phase2"):
            try:
                info[name] = getattr(vx, name)
            except (VindexFormatError, RemoteNotFoundError):
                info[name] = None
        return info


def local_folder(
    path_or_repo_id: str | os.PathLike[str],
    revision: str | None = None,
    *,
    repo_type: str = "dataset",
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A folder holding the whole vindex: ``path_or_repo_id`` itself, or a cached Hub snapshot."""
    if Path(path_or_repo_id).is_dir():
        return Path(path_or_repo_id)
    ref = parse_repo(str(path_or_repo_id), revision=revision, repo_type=repo_type)
    with hub_errors(ref):
        return Path(snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision,
                                      cache_dir=str(cache_dir) if cache_dir else None, token=token))
