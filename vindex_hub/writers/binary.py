"""``gate_vectors.bin``: layers written in place at their fixed offsets, renamed when complete.

While a build runs, the binary lives in the build's state folder under a temporary name,
preallocated to its final size; each layer's block is written at ``layout.layer_offset`` and
fsynced before the layer is recorded as done, so a killed build resumes with every recorded
layer intact. ``finish`` moves the file to its final name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..format import layout


class GateVectorsWriter:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_layers: int,
        num_experts: int,
        num_feats: int,
        hidden_size: int,
    ):
        self.path = Path(path)
        self.layer_shape = (num_experts, num_feats, hidden_size)
        self.layer_nbytes = layout.layer_nbytes(num_experts, num_feats, hidden_size)
        self.total_bytes = self.layer_nbytes * num_layers
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+b" if self.path.exists() else "w+b"
        self._file = open(self.path, mode)
        if os.fstat(self._file.fileno()).st_size != self.total_bytes:
            self._file.truncate(self.total_bytes)

    def write_layer(self, slot: int, vectors: np.ndarray) -> str:
        """Write one layer's ``(E, K, H)`` float32 block durably; return its sha256."""
        if vectors.shape != self.layer_shape:
            raise ValueError(f"layer block shape {vectors.shape}, expected {self.layer_shape}")
        data = np.ascontiguousarray(vectors, dtype=layout.NUMPY_DTYPE).tobytes()
        os.pwrite(self._file.fileno(), data, layout.layer_offset(slot, *self.layer_shape))
        os.fsync(self._file.fileno())
        return hashlib.sha256(data).hexdigest()

    def finish(self, final_path: str | os.PathLike[str]) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = Path(final_path)
        os.replace(self.path, final)
        return final

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
