"""Exact top-K right singular vectors of a batch of matrices (pure math, no I/O).

Method: for each ``W`` of shape ``(O, I)`` the float64 Gram matrix of the smaller side
(``W W^T`` when ``O <= I``) is formed and only its top ``k`` eigenpairs are computed with a
partial symmetric eigensolver (LAPACK ``syevr`` with an index range on CPU, ``torch.linalg.eigh``
batched on CUDA). Then ``s = sqrt(lambda)`` and ``V = W^T U / s`` (or ``V = U`` directly when
``O > I``). This is exact up to float64 rounding, not a randomized approximation: on the flat
spectra of MoE experts (top-64 energy fraction near 0.11) randomized subspace iteration returns
vectors far from the true ones, while this method matches a float64 LAPACK SVD to |cos| > 0.9999
wherever the singular value gap makes the vectors well defined (``benchmarks/bench_svd.py``).

Forming the Gram matrix squares the condition number; in float64 that costs nothing we keep:
the input is float32, and singular values below ``s_0 * max(O, I) * eps(float32)`` (the
numerical-rank threshold of a float32 matrix) are refused anyway.

Output rows are unit-norm float32 with the sign rule of ``layout.SIGN_RULE`` applied by
``canonicalize_signs``, so two builds on the same device are bit-identical.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg
from scipy.linalg.blas import dsyrk

from ..errors import CheckpointError, UsageError

__all__ = ["METHOD", "TopK", "canonicalize_signs", "resolve_device", "singular_values", "top_k_right_singular"]

# What the sidecar's builder.method records.
METHOD = "exact top-K SVD: float64 Gram matrix + partial symmetric eigensolver (LAPACK syevr / torch eigh)"


@dataclass(frozen=True)
class TopK:
    """The top-``k`` right singular triplets of a batch of ``B`` matrices of shape ``(O, I)``."""

    vectors: np.ndarray  # float32 (B, k, I): rows of Vt, descending singular value, unit norm
    singular_values: np.ndarray  # float32 (B, k), descending
    frobenius_norm: np.ndarray  # float64 (B,): ||W||_F, for energy fractions


DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"


def resolve_device(device: str = DEFAULT_DEVICE) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; checks ``"cuda"`` is there."""
    if device not in DEVICES:
        raise UsageError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return "cpu"
    import torch  # imported here: the CPU path does not need it

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("--device cuda was asked for but torch sees no CUDA device")
    return "cpu"


def canonicalize_signs(vectors: np.ndarray) -> np.ndarray:
    """Flip each row (last axis) so its largest-magnitude entry is positive, the first on ties.

    ``layout.SIGN_RULE``. Works in place on a float array of any leading shape and returns it.
    Negation is exact, so the rule is applied to the stored float32 values themselves.
    """
    pivot = np.argmax(np.abs(vectors), axis=-1)[..., None]  # argmax: the first index on ties
    negative = np.take_along_axis(vectors, pivot, axis=-1) < 0
    np.negative(vectors, out=vectors, where=negative)  # in place, whatever the memory layout
    return vectors


def singular_values(matrix: np.ndarray, *, name: str = "matrix") -> np.ndarray:
    """All singular values of one 2-D matrix (float64, descending), e.g. a router ``[E, H]``.

    Computed by float64 LAPACK; meant for small matrices (routers), not for expert batches.
    """
    if matrix.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D matrix, got shape {matrix.shape}")
    m64 = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(m64).all():
        raise CheckpointError(f"{name} contains NaN or Inf values")
    return scipy.linalg.svdvals(m64, check_finite=False)


def top_k_right_singular(
    weights: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    names: Sequence[str] | None = None,
) -> TopK:
    """Exact top-``k`` right singular vectors, singular values and Frobenius norms of a batch.

    ``weights``: float32 ``(B, O, I)`` (a batch of experts' ``gate_proj``, ``[out, in]``).
    ``device``: ``"cpu"`` (SciPy/LAPACK, one matrix at a time, BLAS threads as configured) or
    ``"cuda"`` (torch, the whole batch at once); resolve ``"auto"`` with ``resolve_device``.
    ``names``: one label per matrix (tensor name) used in error messages.

    Raises ``UsageError`` when ``k`` exceeds ``min(O, I)`` or a matrix's numerical rank, and
    ``CheckpointError`` when a matrix holds NaN or Inf.
    """
    weights = np.asarray(weights)
    if weights.ndim != 3:
        raise UsageError(f"expected a (batch, out, in) array of gate_proj weights, got shape {weights.shape}")
    batch, rows, cols = weights.shape
    if names is not None and len(names) != batch:
        raise UsageError(f"{len(names)} names given for a batch of {batch} matrices")
    labels = list(names) if names is not None else [f"matrix {b} of the batch" for b in range(batch)]
    if k < 1:
        raise UsageError(f"--num-feats must be positive, got {k}")
    if k > min(rows, cols):
        raise UsageError(
            f"--num-feats {k} is larger than the rank bound min(O, I) of gate_proj "
            f"({rows} x {cols}: {min(rows, cols)})" + (f", e.g. {names[0]}" if names else "")
        )
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if device == "cpu":
        s64, v64, fro64 = _top_k_lapack(weights, k, labels)
    elif device == "cuda":
        s64, v64, fro64 = _top_k_torch(weights, k, labels, device="cuda")
    else:
        raise UsageError(f"device must be 'cpu' or 'cuda' (resolve 'auto' first), not {device!r}")
    vectors = np.ascontiguousarray(v64 / np.linalg.norm(v64, axis=-1, keepdims=True), dtype=np.float32)
    return TopK(
        vectors=canonicalize_signs(vectors),
        singular_values=s64.astype(np.float32),
        frobenius_norm=fro64,
    )


def _check_finite(gram_trace: float, label: str) -> None:
    """The Gram diagonal holds the row (or column) sums of squares, so a NaN/Inf anywhere in
    ``W`` shows up in its trace: checking the trace checks the whole matrix for free (float32
    values squared cannot overflow float64)."""
    if not np.isfinite(gram_trace):
        raise CheckpointError(f"{label} contains NaN or Inf values")


def _checked_singular_values(eigenvalues: np.ndarray, shape: tuple[int, int], k: int, label: str) -> np.ndarray:
    """Descending top-``k`` Gram eigenvalues -> singular values; refuses a rank below ``k``."""
    s = np.sqrt(np.maximum(eigenvalues, 0.0))
    # numpy.linalg.matrix_rank's threshold for a float32 matrix.
    tol = s[0] * max(shape) * np.finfo(np.float32).eps
    if not s[k - 1] > tol:
        rank = int(np.count_nonzero(s > tol))
        raise UsageError(
            f"{label}: the numerical rank ({rank}) of the {shape[0]} x {shape[1]} matrix is below "
            f"--num-feats {k} (singular value {k - 1} is {s[k - 1]:.3g}, the largest {s[0]:.3g}): "
            f"lower --num-feats"
        )
    return s


def _top_k_lapack(weights: np.ndarray, k: int, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch, rows, cols = weights.shape
    s_out = np.empty((batch, k))
    v_out = np.empty((batch, k, cols))
    fro = np.empty(batch)
    for b in range(batch):
        w = weights[b].astype(np.float64)
        # dsyrk computes only one triangle (half the flops of a matmul). A C-ordered (O, I)
        # array is the Fortran-ordered (I, O) matrix w.T, so trans=1 gives w w^T, trans=0 w^T w.
        gram = dsyrk(1.0, w.T, trans=1 if rows <= cols else 0, lower=0)
        n = gram.shape[0]
        trace = np.trace(gram)
        _check_finite(trace, labels[b])
        fro[b] = np.sqrt(trace)
        lam, u = scipy.linalg.eigh(
            gram,
            lower=False,
            subset_by_index=[n - k, n - 1],
            driver="evr",
            overwrite_a=True,
            check_finite=False,
        )
        s = _checked_singular_values(lam[::-1], (rows, cols), k, labels[b])
        u = u[:, ::-1]
        s_out[b] = s
        v_out[b] = (w.T @ u / s).T if rows <= cols else u.T
    return s_out, v_out, fro


def _top_k_torch(
    weights: np.ndarray, k: int, labels: list[str], *, device: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same computation batched in torch float64 (CUDA; also runs on CPU for tests).

    ``torch.linalg.eigh`` has no index range, so it computes all eigenpairs; on a GPU that is
    still far faster than the CPU path.
    """
    import torch

    batch, rows, cols = weights.shape
    with warnings.catch_warnings():
        # A read-only input (an mmap) is fine: the tensor is only read, never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        w32 = torch.from_numpy(weights)
    w = w32.to(device).to(torch.float64)  # widen on the device: half the bytes to transfer
    gram = w @ w.mT if rows <= cols else w.mT @ w
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1).cpu().numpy()
    for b in range(batch):
        _check_finite(trace[b], labels[b])
    lam, u = torch.linalg.eigh(gram)
    del gram
    lam = lam[:, -k:].flip(-1).cpu().numpy()
    u = u[:, :, -k:].flip(-1)
    s = np.stack([_checked_singular_values(lam[b], (rows, cols), k, labels[b]) for b in range(batch)])
    if rows <= cols:
        v = (w.mT @ u / torch.from_numpy(s).to(device)[:, None, :]).mT
    else:
        v = u.mT
    return s, v.cpu().numpy(), np.sqrt(trace)
