"""The checks a reader runs on bytes before handing them out: a layer's sha256, an expert's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checksums import sha256_bytes
from ..errors import IntegrityError
from ..format import layout, sidecar

UNIT_NORM_TOL = (
    1e-3  # rows are unit-norm float32 singular vectors; corrupted bytes rarely stay within this
)


def mapped(path: Path) -> np.ndarray:
    """A read-only float32 view of a whole file (a cache block), for the checks below."""
    return np.memmap(path, dtype=layout.NUMPY_DTYPE, mode="r")


def check_sha256(block: np.ndarray, index: sidecar.VindexIndex, layer: int, where: str) -> None:
    got = sha256_bytes(np.ascontiguousarray(block).data.cast("B"))
    want = index.layer(layer).sha256
    if got != want:
        raise IntegrityError(f"{where}: layer {layer} has sha256 {got}, the sidecar records {want}")


def check_unit_rows(block: np.ndarray, where: str) -> None:
    norms = np.linalg.norm(block.astype(np.float64), axis=-1)
    if not np.all(np.isfinite(norms)) or np.max(np.abs(norms - 1.0)) > UNIT_NORM_TOL:
        raise IntegrityError(f"{where}: rows are not unit-norm gate vectors (corrupted bytes?)")
