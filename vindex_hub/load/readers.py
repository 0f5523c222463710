"""Where a vindex's layers come from: a memory-mapped binary, ranged Hub reads, or the Arrow mirror.

Every reader follows ``LayerReader`` and owns its integrity state: it is built with the ``verify``
setting (``True``, ``"strict"`` or ``False``, see ``load.vindex``) and remembers which layers
(and, for ranged reads, which (layer, expert) blocks) it has already checked, so bytes already on
disk are hashed once per reader, the first time they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

import numpy as np
import yaml
from huggingface_hub.errors import HfHubHTTPError

from ..errors import HubError, IntegrityError, RemoteNotFoundError, UsageError, VindexFormatError
from ..format import filenames, layout, mirror, sidecar
from ..format.card_data import read_card_data
from ..hub.blockcache import BlockCache
from ..hub.errors import XET_EXCEPTIONS, first_line, xet_failure, xet_message
from ..hub.http import RemoteFile, fetch_range_into
from .files import VindexFiles
from .integrity import check_sha256, check_unit_rows, mapped

if TYPE_CHECKING:
    import pyarrow as pa

# How much a reader checks (``Vindex.open(verify=...)``): True, False or "strict".
VerifyMode = bool | Literal["strict"]
Verify = VerifyMode  # the earlier name, kept for callers


class LayerReader(Protocol):
    def layer(self, layer: int) -> np.ndarray:
        """Layer ``layer``'s ``(E, K, H)`` block, checked as ``verify`` says."""

    def expert(self, layer: int, expert: int) -> np.ndarray:
        """One expert's ``(K, H)`` rows."""

    def close(self) -> None: ...


class MemmapReader:
    """gate_vectors.bin on local disk (a vindex folder or a Hub cache snapshot)."""

    def __init__(self, path: Path, index: sidecar.VindexIndex, verify: VerifyMode):
        index.check_layout(
            where=str(path.with_name(filenames.SIDECAR_JSON)), file_size=path.stat().st_size
        )
        self.path, self.index, self.verify = path, index, verify
        self._verified: set[int] = set()
        self._mm: np.memmap[Any, np.dtype[Any]] | None = np.memmap(
            path, dtype=layout.NUMPY_DTYPE, mode="r", shape=index.array_shape
        )
        self._slot = {layer: slot for slot, layer in enumerate(index.layer_ids)}

    def layer(self, layer: int) -> np.ndarray:
        if self._mm is None:
            raise UsageError(f"{self.path}: the reader is closed")
        block = np.asarray(self._mm[self._slot[layer]])
        if self.verify and layer not in self._verified:
            check_sha256(block, self.index, layer, str(self.path))
            self._verified.add(layer)
        return block

    def expert(self, layer: int, expert: int) -> np.ndarray:
        return np.asarray(self.layer(layer)[expert])

    def close(self) -> None:
        self._mm = None  # views handed out keep their own reference to the mapping


class RangedReader:
    """Exact ranged reads of a remote gate_vectors.bin, through the persistent block cache."""

    def __init__(
        self,
        remote: RemoteFile,
        index: sidecar.VindexIndex,
        cache: BlockCache,
        token: str | bool | None,
        verify: VerifyMode,
    ):
        self.remote, self.index, self.cache, self.token, self.verify = (
            remote,
            index,
            cache,
            token,
            verify,
        )
        self._verified: set[int | tuple[int, int]] = (
            set()
        )  # layers, and (layer, expert) blocks read alone

    def _block(
        self,
        start: int,
        end: int,
        check: Callable[[Path], None] | None,
        recheck: bool,
        where: str,
        strong: bool = False,
    ) -> np.ndarray:
        """Bytes ``[start, end)``: fetched and passed through ``check`` before they are cached, or
        found in the cache, and then (``recheck``) checked again, since another process may have
        cached them unchecked or they may have rotted on disk; a bad block is dropped and refetched."""
        key = self.remote.etag

        def fetch(f: BinaryIO) -> None:
            fetch_range_into(
                f, self.remote.url, start, end, token=self.token, expected_total=self.remote.size
            )

        # ``strong``: ``check`` is the layer's sha256, which the recheck below runs on a cached
        # block (once per reader); the cache need not hash it against its digest as well.
        path, fetched = self.cache.obtain(
            key, start, end, fetch, check, source=where, caller_checks=strong
        )
        if check is not None and recheck and not fetched:
            try:
                check(path)
            except IntegrityError as bad:
                self.cache.discard(key, start, end)
                try:
                    path, _ = self.cache.obtain(key, start, end, fetch, check, source=where)
                except HubError as exc:
                    raise IntegrityError(
                        f"{bad} (cache block {path}, now dropped; fetching it again failed: {exc})"
                    ) from None
        return np.asarray(mapped(path))

    def layer(self, layer: int) -> np.ndarray:
        e = self.index.layer(layer)
        where = f"{filenames.GATE_VECTORS_BIN} ({self.remote.url})"
        check = (
            (lambda path: check_sha256(mapped(path), self.index, layer, where))
            if self.verify
            else None
        )
        flat = self._block(
            e.file_offset,
            e.file_offset + e.nbytes,
            check,
            recheck=layer not in self._verified,
            where=f"{where} layer {layer}",
            strong=check is not None,
        )
        if self.verify:
            self._verified.add(layer)
        return flat.reshape(e.shape)

    def expert(self, layer: int, expert: int) -> np.ndarray:
        e = self.index.layer(layer)
        if self.verify == "strict" or self.cache.get(
            self.remote.etag, e.file_offset, e.file_offset + e.nbytes
        ):
            return np.asarray(self.layer(layer)[expert])
        k, h = self.index.num_feats, self.index.hidden_size
        start = e.file_offset + expert * layout.expert_nbytes(k, h)
        where = f"{filenames.GATE_VECTORS_BIN} ({self.remote.url}) layer {layer} expert {expert}"
        check = (
            (lambda path: check_unit_rows(mapped(path).reshape(k, h), where))
            if self.verify
            else None
        )
        block = self._block(
            start,
            start + layout.expert_nbytes(k, h),
            check,
            recheck=(layer, expert) not in self._verified,
            where=where,
        )
        if self.verify:
            self._verified.add((layer, expert))
        return block.reshape(k, h)

    def close(self) -> None:
        pass


class ArrowReader:
    """Layers from the parquet mirror via ``datasets.load_dataset``: the layer's own config
    (``layer_NN``, which fetches that one file); for a card in the old layout (one split per layer
    of ``gate_vectors``) that split's file named as ``data_files``, since naming the config would
    prepare every split of it.

    The last layer read is kept (one layer of memory), so the experts of a layer read one by one
    cost one ``load_dataset``, not one each."""

    def __init__(
        self,
        path_or_repo: str,
        revision: str | None,
        index: sidecar.VindexIndex,
        token: str | bool | None,
        verify: VerifyMode,
        files: VindexFiles,
    ):
        self.path_or_repo, self.revision, self.index, self.token = (
            path_or_repo,
            revision,
            index,
            token,
        )
        self.verify, self._files = verify, files
        self._verified: set[int] = set()
        self._last: tuple[int, np.ndarray] | None = None  # (layer, its read-only block)

    @cached_property
    def _sources(self) -> dict[int, mirror.LayerSource]:
        return layer_sources(self._files, self.index)

    def layer(self, layer: int) -> np.ndarray:
        if self._last is not None and self._last[0] == layer:
            return self._last[1]
        block = self._read_layer(layer)
        block.flags.writeable = False  # read-only, like the memory-mapped readers' arrays
        self._last = (layer, block)
        return block

    def _read_layer(self, layer: int) -> np.ndarray:
        import datasets
        from datasets.exceptions import DatasetNotFoundError

        e = self.index.layer(layer)
        source = self._sources[layer]
        where = (
            f"{source.path} of {self.path_or_repo} (config {source.config}, split {source.split})"
        )
        if source.config == mirror.CONFIG_GATE_VECTORS:  # the old layout
            which: dict[str, Any] = {"data_files": {source.split: source.path}}
        else:
            which = {"name": source.config}
        try:
            try:
                ds = datasets.load_dataset(
                    self.path_or_repo,
                    split=source.split,
                    revision=self.revision,
                    token=self.token,
                    **which,
                )
            except XET_EXCEPTIONS as exc:  # hf_xet's, unwrapped: not a missing file or bad card
                if xet_failure(exc):
                    raise HubError(xet_message(f"{where}: layer {layer}", exc)) from None
                raise
        except (
            FileNotFoundError,
            DatasetNotFoundError,
        ) as exc:  # DataFilesNotFoundError is a FileNotFoundError
            raise VindexFormatError(
                f"{where}: layer {layer} cannot be read from the mirror ({first_line(exc)})"
            ) from None
        except (HfHubHTTPError, OSError) as exc:
            raise HubError(
                f"{where}: layer {layer}: {type(exc).__name__}: {first_line(exc)}"
            ) from None
        except yaml.YAMLError as exc:  # datasets parses the repo's card front matter first
            raise VindexFormatError(
                f"{where}: layer {layer}: the repo's card front matter does not parse "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from None
        except (
            ValueError
        ) as exc:  # a config the card lacks, or a front matter that is not a mapping
            raise VindexFormatError(
                f"{where}: layer {layer} cannot be read from the mirror ({first_line(exc)})"
            ) from None
        block = gate_vectors_from_table(ds.data.table, e.shape, where=where)
        if self.verify and layer not in self._verified:
            check_sha256(block, self.index, layer, where)
            self._verified.add(layer)
        return block

    def expert(self, layer: int, expert: int) -> np.ndarray:
        return np.asarray(self.layer(layer)[expert])

    def close(self) -> None:
        self._last = None


def layer_sources(
    files: VindexFiles,
    index: sidecar.VindexIndex,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[int, mirror.LayerSource]:
    """Each layer's parquet file, config and split as the card lists them (either layout).

    ``configs``: the card's configs by name when the caller has parsed the card already (``{}``:
    the current layout's names); by default the card is read from ``files``."""
    if configs is None:
        try:
            configs = mirror.configs_by_name(read_card_data(files.path(filenames.CARD_FILE)))
        except (VindexFormatError, RemoteNotFoundError):
            configs = {}  # no card: the current layout's names
    return mirror.layer_sources(configs, index.layer_ids, index.model_config.num_hidden_layers)


def gate_vectors_from_table(table: pa.Table, shape: list[int], *, where: str) -> np.ndarray:
    """Reassemble one layer's ``(E, K, H)`` block from its mirror rows, placed by (expert, feature)."""
    num_experts, num_feats, hidden = shape
    if table.num_rows != num_experts * num_feats:
        raise VindexFormatError(
            f"{where}: {table.num_rows} rows, expected {num_experts} x {num_feats}"
        )
    expert = table.column(mirror.COL_EXPERT).to_numpy().astype(np.int64)
    feature = table.column(mirror.COL_FEATURE).to_numpy().astype(np.int64)
    vectors = table.column(mirror.COL_VECTOR).combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False)
    if flat.dtype != np.float32 or flat.size != table.num_rows * hidden:
        raise VindexFormatError(f"{where}: {mirror.COL_VECTOR} is not float32 x {hidden}")
    if (
        expert.min() < 0
        or expert.max() >= num_experts
        or feature.min() < 0
        or feature.max() >= num_feats
    ):
        raise VindexFormatError(f"{where}: (expert, feature) outside {num_experts} x {num_feats}")
    slot = expert * num_feats + feature
    if np.unique(slot).size != slot.size:
        raise VindexFormatError(f"{where}: repeated (expert, feature) rows")
    out = np.empty((num_experts * num_feats, hidden), dtype=layout.NUMPY_DTYPE)
    out[slot] = flat.reshape(-1, hidden)
    return out.reshape(shape)
