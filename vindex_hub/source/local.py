"""A checkpoint in a local folder: ``config.json`` + safetensors shards (+ the index).

Shard headers are parsed lazily, the first time a tensor of that shard is asked for, so a
build touches only the shards it needs. Tensors are read with positioned reads into fresh
buffers (never a whole shard in memory, no long-lived mapping whose resident pages would grow
with the number of layers read).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..fsutil import read_json_object
from .base import RawTensor, TensorInfo
from .safetensors_format import PREFIX_BYTES, header_length, parse_header

CONFIG_FILE = "config.json"
WEIGHT_MAP_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_weight_map(index_path: Path) -> dict[str, str]:
    """The checked ``weight_map`` (tensor name -> shard file) of a ``model.safetensors.index.json``."""
    weight_map = read_json_object(index_path, what="safetensors index", error=CheckpointError).get(
        "weight_map"
    )
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index_path}: no weight_map object of tensor name -> shard file")
    for shard in set(weight_map.values()):
        # A shard name must stay inside the checkpoint folder.
        if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard:
            raise CheckpointError(
                f"{index_path}: shard name {shard!r} points outside the checkpoint folder"
            )
    return weight_map


class LocalCheckpoint:
    """A ``CheckpointSource`` over a local folder."""

    repo_id: str | None = None
    revision: str | None = None

    def __init__(self, path: str | os.PathLike[str]):
        self.root = Path(path)
        self.path: str | None = str(path)
        if not self.root.is_dir():
            raise CheckpointError(f"checkpoint folder {self.root} does not exist")
        self.config: dict[str, Any] = read_json_object(
            self.root / CONFIG_FILE, what="checkpoint config", error=CheckpointError
        )
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        self._files: dict[str, Any] = {}
        self._closed = False
        self._lock = threading.Lock()
        index_path = self.root / WEIGHT_MAP_FILE
        if index_path.exists():
            self._index_file: str | None = str(index_path)
            self._weight_map = read_weight_map(index_path)
        elif (self.root / SINGLE_FILE).exists():
            self._index_file = None
            self._weight_map = {name: SINGLE_FILE for name in self._header(SINGLE_FILE)}
        else:
            raise CheckpointError(f"{self.root}: neither {WEIGHT_MAP_FILE} nor {SINGLE_FILE} found")

    # ---- CheckpointSource ----------------------------------------------------------------
    def describe(self) -> str:
        return str(self.root)

    def content_fingerprint(self) -> str | None:
        h = hashlib.sha256()
        if self._index_file is not None:
            h.update(Path(self._index_file).read_bytes())
        else:
            h.update((self.root / CONFIG_FILE).read_bytes())
            with open(self.root / SINGLE_FILE, "rb") as f:
                prefix = f.read(PREFIX_BYTES)
                size = os.fstat(f.fileno()).st_size
                h.update(
                    prefix + f.read(header_length(prefix, size, file=str(self.root / SINGLE_FILE)))
                )
        return h.hexdigest()

    def tensor_names(self) -> frozenset[str]:
        return frozenset(self._weight_map)

    def tensor_info(self, name: str) -> TensorInfo:
        shard = self._weight_map.get(name)
        if shard is None:
            where = self._index_file or str(self.root / SINGLE_FILE)
            kind = "weight_map of " if self._index_file else ""
            raise CheckpointError(f"tensor {name} not in {kind}{where}")
        info = self._header(shard).get(name)
        if info is None:
            raise CheckpointError(
                f"weight_map says {name} is in shard {shard} but {shard} has no such tensor"
            )
        return info

    def read(self, names: Iterable[str]) -> Mapping[str, RawTensor]:
        out: dict[str, RawTensor] = {}
        for name in names:
            info = self.tensor_info(name)
            out[name] = RawTensor(
                info, self._read_range(info.shard, info.start, info.nbytes, what=f"tensor {name}")
            )
        return out

    def file(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise CheckpointError(f"{self.root} has no {name}")
        return path

    def close(self) -> None:
        """Close the open shard files; reading afterwards raises ``CheckpointError``."""
        with self._lock:
            self._closed = True
            for f in self._files.values():
                f.close()
            self._files.clear()

    def __enter__(self) -> LocalCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- shards ------------------------------------------------------------------------------
    def _file(self, shard: str) -> Any:
        """The open shard file (caller holds ``_lock``); opened on first use, never after ``close()``."""
        if self._closed:
            raise CheckpointError(f"checkpoint {self.root} is closed: cannot read shard {shard}")
        f = self._files.get(shard)
        if f is None:
            where = f" (listed in {self._index_file})" if self._index_file else ""
            try:
                f = open(self.root / shard, "rb", buffering=0)
            except FileNotFoundError:
                raise CheckpointError(f"shard file {self.root / shard} is missing{where}") from None
            except OSError as exc:  # a folder, no permission, ...
                raise CheckpointError(
                    f"shard file {self.root / shard}{where}: cannot open ({exc.strerror or exc})"
                ) from None
            self._files[shard] = f
        return f

    def _read_range(self, shard: str, start: int, nbytes: int, *, what: str) -> np.ndarray:
        buf = np.empty(nbytes, dtype=np.uint8)
        view = buf.data
        with self._lock:
            f = self._file(shard)
            f.seek(start)
            got = 0
            while got < nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise CheckpointError(
                        f"{self.root / shard}: {what} needs bytes {start}..{start + nbytes} but the file ends "
                        f"at {start + got}: truncated"
                    )
                got += n
        return buf

    def _header(self, shard: str) -> dict[str, TensorInfo]:
        header = self._headers.get(shard)
        if header is None:
            file = str(self.root / shard)
            with self._lock:
                f = self._file(shard)
                size = os.fstat(f.fileno()).st_size
            prefix = self._read_range(shard, 0, min(PREFIX_BYTES, size), what="the header length")
            n = header_length(prefix.tobytes(), size, file=file)
            raw = self._read_range(shard, PREFIX_BYTES, n, what="the header")
            header = parse_header(prefix.tobytes(), raw.tobytes(), size, shard=shard, file=file)
            self._headers[shard] = header
        return header
