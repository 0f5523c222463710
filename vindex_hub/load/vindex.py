"""``Vindex``: a vindex opened for reading, from a local folder or a Hub repo.

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
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from huggingface_hub import constants

from ..errors import HubError, RemoteNotFoundError, UsageError, VindexFormatError
from ..format import filenames, mirror, pull_marker, selection, sidecar, statistics
from ..format.card_data import read_card
from ..fsutil import read_json_object
from ..hub.blockcache import BlockCache
from ..hub.http import RemoteFile, download_snapshot, file_metadata
from ..hub.refs import DEFAULT_REPO_TYPE, RepoRef, parse_repo
from .files import HubFiles, LocalFiles, VindexFiles, resolve_vindex_revision
from .readers import ArrowReader, LayerReader, MemmapReader, RangedReader, VerifyMode

if TYPE_CHECKING:
    import torch
    from huggingface_hub import DatasetCardData

Mode = Literal["local", "snapshot", "lazy", "arrow"]
MODES: tuple[Mode, ...] = ("local", "snapshot", "lazy", "arrow")
DEFAULT_REPO_MODE: Mode = "lazy"


# ---- the public object ---------------------------------------------------------------------------
class Vindex:
    """A vindex opened for reading. Use ``Vindex.open``; close it (or use ``with``) when done.

    Arrays from ``layer``/``expert`` are read-only; in local, snapshot and lazy modes they are
    memory-mapped views (copy them to write). ``layer_torch``/``expert_torch`` return copies.
    """

    def __init__(
        self,
        index: sidecar.VindexIndex,
        reader: LayerReader,
        files: VindexFiles,
        *,
        mode: Mode,
        verify: VerifyMode,
        location: str,
        commit: str | None = None,
        file_size: int | None = None,
    ):
        self._index, self._files = index, files
        self._reader: LayerReader | None = reader
        self.mode, self.verify, self.location, self.commit = mode, verify, location, commit
        self._file_size = file_size
        # Why the commit came from the local cache unconfirmed by the Hub (it refused, or
        # HF_HUB_OFFLINE); None when the Hub confirmed it or a commit sha was asked for.
        self.unconfirmed: str | None = None

    @classmethod
    def open(
        cls,
        path_or_repo_id: str | os.PathLike[str] | RepoRef,
        revision: str | None = None,
        repo_type: str = DEFAULT_REPO_TYPE,
        mode: Mode | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        verify: VerifyMode = True,
        token: str | bool | None = None,
    ) -> Vindex:
        """Open a vindex folder, a Hub repo id (``ns/name``, ``hf://datasets/ns/name@rev``) or a commit.

        A ``RepoRef`` (``vindex_hub.hub.refs.parse_repo``) names the repo, kind and revision
        itself: ``revision`` and ``repo_type`` are then not given. ``mode`` defaults to ``local`` for an existing folder and ``lazy`` for a repo; for a
        folder, ``lazy`` and ``snapshot`` also mean memory-mapping. ``cache_dir`` is the Hub
        cache folder (default ``HF_HUB_CACHE``); the block cache sits beside it.
        """
        if mode is not None and mode not in MODES:
            raise UsageError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if verify not in (True, False, "strict"):
            raise UsageError(f"verify={verify!r}: expected True, False or 'strict'")
        cache_dir = str(cache_dir) if cache_dir is not None else None
        if isinstance(path_or_repo_id, RepoRef):
            if revision is not None or repo_type != DEFAULT_REPO_TYPE:
                raise UsageError(
                    f"{path_or_repo_id}: a RepoRef carries its revision and repo_type; "
                    "do not pass them again"
                )
            return cls._open_repo(path_or_repo_id, mode, cache_dir, verify, token)
        if os.path.isdir(path_or_repo_id):
            if revision is not None:
                raise UsageError(
                    f"{path_or_repo_id} is a local folder: revision={revision!r} does not apply"
                )
            return cls._open_local(Path(path_or_repo_id), mode, verify)
        ref = parse_repo(str(path_or_repo_id), revision=revision, repo_type=repo_type)
        return cls._open_repo(ref, mode, cache_dir, verify, token)

    @classmethod
    def _open_repo(
        cls,
        ref: RepoRef,
        mode: Mode | None,
        cache_dir: str | None,
        verify: VerifyMode,
        token: str | bool | None,
    ) -> Vindex:
        mode = mode or DEFAULT_REPO_MODE
        if mode == "local":
            raise UsageError(f"{ref.repo_id} is not a local folder")
        if mode == "arrow" and ref.repo_type != "dataset":
            raise UsageError(
                f"mode='arrow' reads with datasets.load_dataset, which reads dataset repos only; "
                f"{ref} is a {ref.repo_type} repo (use mode='lazy' or 'snapshot')"
            )
        resolved = resolve_vindex_revision(ref, cache_dir=cache_dir, token=token)
        ref = ref.at(resolved.commit)
        files = HubFiles(ref, cache_dir=cache_dir, token=token)
        index_path = files.path(filenames.SIDECAR_JSON)
        index = sidecar.VindexIndex.load(index_path, where=files.describe(filenames.SIDECAR_JSON))
        reader: LayerReader
        size: int | None
        if mode == "snapshot":
            folder = download_snapshot(
                ref, allow=list(filenames.SNAPSHOT_FILES), cache_dir=cache_dir, token=token
            )
            binary = _existing(folder / filenames.GATE_VECTORS_BIN, ref)
            reader, size = MemmapReader(binary, index, verify), binary.stat().st_size
        elif mode == "lazy":
            cache = BlockCache.beside(cache_dir)
            remote = _binary_metadata(ref, cache, token=token)
            index.check_layout(where=files.describe(filenames.SIDECAR_JSON), file_size=remote.size)
            reader = RangedReader(remote, index, cache, token, verify)
            size = remote.size
        else:
            reader, size = ArrowReader(ref.repo_id, ref.revision, index, token, verify, files), None
        vx = cls(
            index,
            reader,
            files,
            mode=mode,
            verify=verify,
            location=f"{ref.repo_id}@{ref.revision}",
            commit=ref.revision,
            file_size=size,
        )
        vx.unconfirmed = resolved.unconfirmed
        return vx

    @classmethod
    def _open_local(cls, root: Path, mode: Mode | None, verify: VerifyMode) -> Vindex:
        files = LocalFiles(root)
        index_path = files.path(filenames.SIDECAR_JSON)
        index = sidecar.VindexIndex.load(index_path)
        reader: LayerReader
        size: int | None
        if mode == "arrow":
            reader, size = ArrowReader(str(root), None, index, None, verify, files), None
        else:
            if not (root / filenames.GATE_VECTORS_BIN).is_file():
                pulled = pull_marker.read_pull_marker(root)
                what = (
                    f"a data-only pull (format={pull_marker.ARROW!r}) of {pulled.get(pull_marker.REPO_ID)}"
                    if pulled.get(pull_marker.FORMAT) == pull_marker.ARROW
                    else "a folder"
                )
                raise VindexFormatError(
                    f"{root / filenames.GATE_VECTORS_BIN}: missing; {root} is {what} without "
                    "the binary: open it with mode='arrow' to read its parquet layers"
                )
            binary = files.path(filenames.GATE_VECTORS_BIN)
            reader, size, mode = MemmapReader(binary, index, verify), binary.stat().st_size, "local"
        return cls(
            index, reader, files, mode=mode, verify=verify, location=str(root), file_size=size
        )

    # ---- shape ----
    @property
    def index(self) -> sidecar.VindexIndex:
        return self._index

    @property
    def files(self) -> VindexFiles:
        """The vindex's files by name (``files.path(name)``: a local path, fetched from the repo at
        the pinned commit if remote; ``VindexFormatError``/``RemoteNotFoundError`` when absent)."""
        return self._files

    @property
    def remote(self) -> RemoteFile | None:
        """In lazy mode, the remote ``gate_vectors.bin`` read by ranges (URL, etag, size);
        None in the other modes."""
        return self._reader.remote if isinstance(self._reader, RangedReader) else None

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
        return self._open_reader().layer(layer)

    def expert(self, layer: int, expert: int) -> np.ndarray:
        """One expert's ``(num_feats, hidden_size)`` vectors (rows by descending singular value)."""
        self._check_expert(layer, expert)
        return self._open_reader().expert(layer, expert)

    def _check_expert(self, layer: int, expert: int) -> None:
        """A clear error for a layer the vindex does not hold or an expert out of range."""
        self._index.layer(layer)
        if not 0 <= expert < self.num_experts:
            raise UsageError(
                f"expert {expert} out of range: layer {layer} has experts 0-{self.num_experts - 1}"
            )

    def overlap(self, layer: int, *, weighted: bool = False) -> np.ndarray:
        """``(num_experts, num_experts)`` float64 overlaps ``||V_a V_b^T||_F^2 / K`` of the layer's
        experts, computed from its vectors (``numerics.geometry``); ``weighted``: the
        energy-weighted variant, from the singular values in ``expert_stats``."""
        from ..numerics import geometry

        block = self.layer(layer)
        if not weighted:
            return geometry.overlaps(block).plain
        try:
            table = self.expert_stats()
        except (VindexFormatError, RemoteNotFoundError):
            raise VindexFormatError(
                f"{self.location} has no {mirror.EXPERT_STATS_PARQUET} (singular values): the "
                "energy-weighted overlap needs them; the plain one does not"
            ) from None
        rows = table[mirror.COL_LAYER] == layer
        result = geometry.overlaps(block, table[statistics.SINGULAR_VALUES][rows]).weighted
        assert result is not None
        return result

    def layer_torch(self, layer: int, device: Any = None, dtype: Any = None) -> torch.Tensor:
        """``layer(L)`` as a new torch tensor on ``device`` (default CPU) in ``dtype`` (default float32)."""
        return _to_torch(self.layer(layer), device, dtype)

    def expert_torch(
        self, layer: int, expert: int, device: Any = None, dtype: Any = None
    ) -> torch.Tensor:
        return _to_torch(self.expert(layer, expert), device, dtype)

    # ---- statistics and card ----
    @cached_property
    def phase1(self) -> dict[str, Any]:
        """``phase1_moe_svd.json``: per layer, the routed var-K summary, shared expert and router."""
        return read_json_object(self._files.path(filenames.PHASE1_JSON), what="phase-1 statistics")

    @cached_property
    def phase2(self) -> dict[str, Any]:
        """``phase2_router_svd.json``: per layer, the router decomposition (None for every layer
        where ``index.router_matrix`` is false: the model's router is not a matrix)."""
        return read_json_object(self._files.path(filenames.PHASE2_JSON), what="phase-2 statistics")

    def expert_stats(self) -> dict[str, np.ndarray]:
        """The ``expert_stats`` table, one row per (layer, expert): columns as numpy arrays
        (``singular_values`` is ``(rows, num_feats)``)."""
        import pyarrow.parquet as pq

        table = pq.read_table(self._files.path(mirror.EXPERT_STATS_PARQUET))
        out: dict[str, np.ndarray] = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if hasattr(col.type, "list_size"):
                out[name] = col.values.to_numpy(zero_copy_only=False).reshape(
                    len(col), col.type.list_size
                )
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        return out

    def feature_tokens(self, layer: int, expert: int) -> list[list[tuple[str, int, float]]]:
        """Per feature of one expert, its ``(token, token_id, cosine)`` labels from the
        ``feature_tokens`` config, by |cosine| descending (fetches only that file)."""
        import pyarrow.parquet as pq

        self._check_expert(layer, expert)
        try:
            path = self._files.path(mirror.FEATURE_TOKENS_PARQUET)
        except (VindexFormatError, RemoteNotFoundError):
            raise VindexFormatError(
                f"{self.location} has no {mirror.FEATURE_TOKENS_PARQUET} "
                "(built without feature tokens)"
            ) from None
        rows = (
            pq.read_table(
                path, filters=[(mirror.COL_LAYER, "=", layer), (mirror.COL_EXPERT, "=", expert)]
            )
            .sort_by(mirror.COL_FEATURE)
            .to_pylist()
        )
        return [
            list(
                zip(
                    r[mirror.COL_TOKENS], r[mirror.COL_TOKEN_IDS], r[mirror.COL_SCORES], strict=True
                )
            )
            for r in rows
        ]

    @cached_property
    def card_data(self) -> DatasetCardData | None:
        """The dataset card's metadata (``huggingface_hub.DatasetCardData``), None without a card;
        ``VindexFormatError`` naming the card when its front matter does not parse."""
        try:
            path = self._files.path(filenames.CARD_FILE)
        except (VindexFormatError, RemoteNotFoundError):
            return None
        return read_card(path, where=self._files.describe(filenames.CARD_FILE))

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
            statistics.INFO_VAR_K: k,
            "layer_nbytes": idx.layer_nbytes,
            "total_bytes": idx.total_bytes,
            "file_size": self._file_size,
            "source": idx.source.__dict__.copy(),
            "builder": idx.builder.__dict__.copy(),
            sidecar.ROUTER_MATRIX_KEY: idx.router_matrix,
            "layers": [
                {
                    "layer": layer,
                    "file_offset": e.file_offset,
                    "nbytes": e.nbytes,
                    "sha256": e.sha256,
                    # Stable names across K (the sidecar spells median_var{K}); ``var_k`` says K.
                    statistics.INFO_MEDIAN_VAR: e.median_var,
                    statistics.INFO_Q25_VAR: e.q25_var,
                    statistics.INFO_Q75_VAR: e.q75_var,
                }
                for layer, e in sorted(idx.layers.items())
            ],
        }

    # ---- lifetime ----
    def _open_reader(self) -> LayerReader:
        if self._reader is None:
            raise UsageError(f"vindex {self.location} is closed")
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Vindex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Vindex({self.location!r}, mode={self.mode!r}, layers={selection.layer_span(self.layers)}, "
            f"experts={self.num_experts}, num_feats={self.num_feats}, hidden_size={self.hidden_size})"
        )


def _to_torch(array: np.ndarray, device: Any, dtype: Any) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.array(array)).to(device=device, dtype=dtype)


def _existing(path: Path, ref: RepoRef) -> Path:
    if not path.is_file():
        raise VindexFormatError(f"{path.name} in {ref}: missing from the snapshot")
    return path


# ---- the binary at a commit ----------------------------------------------------------------------
def _binary_metadata(ref: RepoRef, cache: BlockCache, *, token: str | bool | None) -> RemoteFile:
    """HEAD gate_vectors.bin at the commit, remembered in the block cache for offline opens (and
    for opens while the Hub refuses: a commit's files never change, so the record stays true)."""
    if constants.is_offline_mode():
        remote = cache.recall_remote(ref, filenames.GATE_VECTORS_BIN)
        if remote is None:
            raise HubError(
                f"{filenames.GATE_VECTORS_BIN} in {ref}: never opened online, and HF_HUB_OFFLINE is set"
            )
        return remote
    try:
        remote = file_metadata(ref, filenames.GATE_VECTORS_BIN, token=token)
    except RemoteNotFoundError:
        raise
    except HubError:
        remembered = cache.recall_remote(ref, filenames.GATE_VECTORS_BIN)
        if remembered is None:
            raise
        return remembered
    cache.remember_remote(ref, filenames.GATE_VECTORS_BIN, remote)
    return remote
