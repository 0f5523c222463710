"""Exact top-K right singular vectors of a batch of matrices (pure math, no I/O).

Two CPU routes, both exact (not randomized: on the flat spectra of MoE experts, top-64 energy
fraction near 0.11, randomized subspace iteration returns vectors far from the true ones):

``mixed`` (the default): for each ``W`` of shape ``(O, I)`` the float32 Gram matrix of the
smaller side (``W W^T`` when ``O <= I``, LAPACK ``ssyrk``) and its top ``p = k + 32`` eigenpairs
(float32 ``ssyevr`` with an index range) give a subspace that holds the top-``k`` singular
vectors to float32 accuracy; one float64 Rayleigh-Ritz step with ``W`` itself (orthonormalize
the subspace ``Q``, ``B = W^T Q``, eigenpairs ``(theta, Y)`` of ``B^T B``, ``V = B Y / s``)
then makes them exact to about float64 rounding: the Ritz vectors' error is the *product* of
the subspace's float32 error and its coupling to the spectrum left outside, so it is squared
away (1-|cos| ~ 2e-12 against a float64 LAPACK SVD on gate_proj-like matrices, singular values
to ~1e-12 relative; ``docs/svd.md``). A guard sends a matrix to the
float64 route where that does not hold: before the work, a steep spectrum (eigenvalue ``p-1``
below ``STEEP_SPECTRUM`` of the largest: float32 noise would reach the subspace, e.g. a rank
near ``k``), a matrix too small for a partial solve to pay off, or magnitudes outside float32's
safe range; after it, a certificate from the float64 residuals of the Ritz pairs
(``_ritz_pairs_certain``), which catches e.g. a tail of the spectrum crowding right below the
top ``k``, or 64 gaps all at 1e-4 of ``s_0``.

``f64``: the float64 Gram matrix (``dsyrk``) and its top ``k`` eigenpairs (``dsyevr``), then
``s = sqrt(lambda)`` and ``V = W^T U / s`` (or ``V = U`` directly when ``O > I``). Forming the
Gram matrix squares the condition number; in float64 that costs nothing we keep: the input is
float32, and singular values below ``s_0 * max(O, I) * eps(float32)`` (the numerical-rank
threshold of a float32 matrix) are refused anyway.

Every BLAS/LAPACK call of both routes goes through ``scipy.linalg.blas`` / ``scipy.linalg.lapack``
(numpy's matmul would load numpy's own OpenBLAS, whose spinning threads fight scipy's), with
LAPACK's optimal work sizes queried, and runs with a fixed number of BLAS threads
(``BLAS_THREADS``, whatever the caller's setting): LAPACK's bits change with the thread count,
so a fixed count makes a build bit-identical across machines with the same BLAS kernel, and
resumable anywhere. Parallelism comes from processes (``builder.engine``), not BLAS threads.

``cuda``: the float64 method batched in torch on the device (``torch.linalg.eigh``).

Output rows are unit-norm float32 with the sign rule of ``layout.SIGN_RULE`` applied by
``canonicalize_signs``, so two builds with the same route are bit-identical.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
from scipy.linalg import blas, lapack

from ..errors import CheckpointError, UsageError
from .routes import (
    BLAS_THREADS,
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    DEVICES,
    PRECISIONS,
    ROUTE_CUDA,
    ROUTE_F64,
    ROUTE_MIXED,
    method_for,
    route_for,
)

__all__ = [
    "BLAS_THREADS",
    "DEFAULT_DEVICE",
    "DEFAULT_PRECISION",
    "DEVICES",
    "PRECISIONS",
    "TopK",
    "canonicalize_signs",
    "frobenius_norm",
    "method_for",
    "resolve_device",
    "route_for",
    "singular_values",
    "top_k_right_singular",
]

# Guard of the mixed route (module docstring).
# Eigenpairs computed beyond k: the Rayleigh-Ritz subspace's margin. The Ritz vectors' error
# falls with the gap between eigenvalue k-1 and p-1; at 32 (not 16) the certificate's estimate on
# gate_proj-like matrices sits 3x (not 1.5x) inside its bound, for ~3% more time.
OVERSAMPLE = 32
STEEP_SPECTRUM = 1e-3  # eigenvalue p-1 of the Gram matrix below this x the largest -> float64
MIN_SIZE_FACTOR = 2  # a Gram matrix smaller than this x p -> float64 (a full solve is as cheap)
# ||W||_F^2 outside this range could overflow or lose the spectrum to underflow in float32.
FLOAT32_SAFE_ENERGY = (1e-30, 1e30)
# What the Ritz pairs must be estimated to meet (``_ritz_pairs_certain``), else float64:
CERTAIN_ANGLE = 3e-5  # radians, for vectors with a gap: 1 - |cos| = 4.5e-10, 2x inside 1e-9
CERTAIN_GAP = 0.5e-4  # relative singular value gap from which a vector counts as determined
CERTAIN_VALUE = 5e-10  # relative eigenvalue error: singular values to 2.5e-10, 4x inside 1e-9


@dataclass(frozen=True)
class TopK:
    """The top-``k`` right singular triplets of a batch of ``B`` matrices of shape ``(O, I)``."""

    vectors: np.ndarray  # float32 (B, k, I): rows of Vt, descending singular value, unit norm
    singular_values: np.ndarray  # float64 (B, k), descending
    frobenius_norm: np.ndarray  # float64 (B,): ||W||_F, for energy fractions
    routes: tuple[str, ...] = field(default=())  # per matrix, the route it took (ROUTE_*)


def resolve_device(device: str = DEFAULT_DEVICE) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; checks ``"cuda"`` is there."""
    if device not in DEVICES:
        raise UsageError(f"device={device!r}: must be auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch  # imported here: the CPU path does not need it

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("device=cuda was asked for but torch sees no CUDA device")
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


def singular_values(
    matrix: np.ndarray, *, name: str = "matrix", blas_threads: int = BLAS_THREADS
) -> np.ndarray:
    """All singular values of one 2-D matrix (float64, descending), e.g. a router ``[E, H]``.

    Computed by float64 LAPACK with ``blas_threads`` BLAS threads, whatever the caller's setting
    (the bits depend on it); meant for small matrices (routers), not for expert batches. A
    float64 ``matrix`` is not widened again.
    """
    if matrix.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D matrix, got shape {matrix.shape}")
    m64 = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(m64).all():
        raise CheckpointError(f"{name} contains NaN or Inf values")
    with _blas_threads(blas_threads):
        return np.asarray(scipy.linalg.svdvals(m64, check_finite=False))


def frobenius_norm(matrix: np.ndarray, *, blas_threads: int = BLAS_THREADS) -> float:
    """``||matrix||_F`` in float64: one BLAS ``ddot`` of its float64 values with ``blas_threads``
    threads (a threaded ddot sums in another order), as the decomposition computes an expert's."""
    flat = np.ascontiguousarray(matrix, dtype=np.float64).reshape(-1)
    with _blas_threads(blas_threads):
        return float(np.sqrt(blas.ddot(flat, flat)))


def top_k_right_singular(
    weights: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    precision: str = DEFAULT_PRECISION,
    names: Sequence[str] | None = None,
    blas_threads: int = BLAS_THREADS,
) -> TopK:
    """Exact top-``k`` right singular vectors, singular values and Frobenius norms of a batch.

    ``weights``: float32 ``(B, O, I)`` (a batch of experts' ``gate_proj``, ``[out, in]``).
    ``device``: ``"cpu"`` (SciPy/LAPACK, one matrix at a time) or ``"cuda"`` (torch, the whole
    batch at once); resolve ``"auto"`` with ``resolve_device``. ``precision``: the CPU route,
    ``"mixed"`` or ``"f64"`` (module docstring). ``names``: one label per matrix (tensor name)
    used in error messages. ``blas_threads``: the BLAS threads the CPU routes run with, whatever
    the caller's setting (the result's bits depend on it).

    Raises ``UsageError`` when ``k`` exceeds ``min(O, I)`` or a matrix's numerical rank, and
    ``CheckpointError`` when a matrix holds NaN or Inf.
    """
    weights = np.asarray(weights)
    if weights.ndim != 3:
        raise UsageError(
            f"expected a (batch, out, in) array of gate_proj weights, got shape {weights.shape}"
        )
    batch, rows, cols = weights.shape
    if names is not None and len(names) != batch:
        raise UsageError(f"{len(names)} names given for a batch of {batch} matrices")
    labels = (
        list(names) if names is not None else [f"matrix {b} of the batch" for b in range(batch)]
    )
    if k < 1:
        raise UsageError(f"num_feats must be positive, got {k}")
    if k > min(rows, cols):
        raise UsageError(
            f"num_feats={k} is larger than the rank bound min(O, I) of gate_proj "
            f"({rows} x {cols}: {min(rows, cols)})" + (f", e.g. {names[0]}" if names else "")
        )
    route = route_for(device, precision)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if device == "cpu":
        with _blas_threads(blas_threads):
            s64, v64, fro64, routes = _top_k_lapack(weights, k, labels, mixed=route == ROUTE_MIXED)
    elif device == "cuda":
        s64, v64, fro64 = _top_k_torch(weights, k, labels, device="cuda")
        routes = [ROUTE_CUDA] * batch
    else:
        raise UsageError(f"device must be 'cpu' or 'cuda' (resolve 'auto' first), not {device!r}")
    return _finish(s64, v64, fro64, routes)


def _finish(s64: np.ndarray, v64: np.ndarray, fro64: np.ndarray, routes: Sequence[str]) -> TopK:
    """float64 results -> the output contract: unit rows in float32, the sign rule applied."""
    vectors = np.ascontiguousarray(
        v64 / np.linalg.norm(v64, axis=-1, keepdims=True), dtype=np.float32
    )
    return TopK(
        vectors=canonicalize_signs(vectors),
        singular_values=s64,
        frobenius_norm=fro64,
        routes=tuple(routes),
    )


@functools.cache
def _blas_controller() -> Any:
    """One scan of the loaded BLAS libraries (numpy's and scipy's OpenBLAS): limiting through
    it costs microseconds, a fresh ``threadpool_limits`` rescans every call."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _blas_threads(threads: int) -> contextlib.AbstractContextManager[Any]:
    if threads < 1:
        raise UsageError(f"blas_threads must be at least 1, got {threads}")
    limit: contextlib.AbstractContextManager[Any] = _blas_controller().limit(
        limits=threads, user_api="blas"
    )
    return limit


class _Workspace(threading.local):
    """Per-thread buffers reused across calls (no 64 MiB allocation and page faults per expert)."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: type, order: Literal["C", "F"] = "C"
    ) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.buffers[name] = np.empty(shape, dtype=dtype, order=order)
        return buf


_workspace = _Workspace()


@functools.cache
def _lwork(routine: str, n: int) -> tuple[int, int]:
    """LAPACK's optimal (lwork, liwork) of ``syevr`` at size ``n``: the default lwork is too small
    for the blocked tridiagonal reduction, which then runs unblocked (about 2x slower)."""
    work, iwork, info = getattr(lapack, f"{routine}_lwork")(n, lower=0)
    if info != 0:
        raise RuntimeError(f"{routine}_lwork({n}) failed: info {info}")
    return max(int(work), 1), max(int(iwork), 1)


def _check_finite(energy: float, label: str) -> None:
    """``||W||_F^2`` is NaN or Inf exactly when ``W`` holds a NaN or Inf (float32 values squared
    cannot overflow float64, and the sum of squares cannot cancel), so checking it checks the
    whole matrix for free."""
    if not np.isfinite(energy):
        raise CheckpointError(f"{label} contains NaN or Inf values")


def _checked_singular_values(
    eigenvalues: np.ndarray, shape: tuple[int, int], k: int, label: str
) -> np.ndarray:
    """Descending top-``k`` Gram eigenvalues -> singular values; refuses a rank below ``k``."""
    s: np.ndarray = np.sqrt(np.maximum(eigenvalues, 0.0))
    # numpy.linalg.matrix_rank's threshold for a float32 matrix.
    tol = s[0] * max(shape) * np.finfo(np.float32).eps
    if not s[k - 1] > tol:
        rank = int(np.count_nonzero(s > tol))
        raise UsageError(
            f"{label}: the numerical rank ({rank}) of the {shape[0]} x {shape[1]} matrix is below "
            f"num_feats={k} (singular value {k - 1} is {s[k - 1]:.3g}, the largest {s[0]:.3g}): "
            f"lower num_feats"
        )
    return s


def _top_k_lapack(
    weights: np.ndarray, k: int, labels: list[str], *, mixed: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    batch, rows, cols = weights.shape
    s_out = np.empty((batch, k))
    v_out = np.empty((batch, k, cols))
    fro = np.empty(batch)
    routes = []
    w64 = _workspace.get("w64", (rows, cols), np.float64)
    for b in range(batch):
        np.copyto(w64, weights[b])  # exact: every float32 is a float64
        flat = w64.reshape(-1)
        energy = float(blas.ddot(flat, flat))
        _check_finite(energy, labels[b])
        fro[b] = np.sqrt(energy)
        found = _mixed_route(weights[b], w64, energy, k, labels[b]) if mixed else None
        if found is None:
            found = _f64_route(w64, k, labels[b])
            routes.append(ROUTE_F64)
        else:
            routes.append(ROUTE_MIXED)
        s_out[b], v_out[b] = found
    return s_out, v_out, fro, routes


def _gram(syrk: Callable[..., Any], w: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """The upper triangle of the smaller Gram matrix of ``w``, written into ``buffer``.

    ``syrk`` computes one triangle only (half the flops of a matmul). A C-ordered ``(O, I)``
    array is the Fortran-ordered ``(I, O)`` matrix ``w.T``, so trans=1 gives ``w w^T``, trans=0
    ``w^T w``.
    """
    rows, cols = w.shape
    return np.asarray(
        syrk(1.0, w.T, beta=0.0, c=buffer, trans=1 if rows <= cols else 0, lower=0, overwrite_c=1)
    )


def _top_eigenpairs(
    gram: np.ndarray, count: int, *, everything: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``count`` largest eigenpairs of a symmetric matrix (upper triangle), ascending,
    computed in place by LAPACK ``syevr`` (of the matrix's precision) with an index range (all of
    them with ``everything``) and its optimal work sizes. None where syevr found fewer than asked
    for, which it may when a cluster of equal eigenvalues straddles the index range."""
    n = gram.shape[0]
    routine = {np.dtype(np.float32): "ssyevr", np.dtype(np.float64): "dsyevr"}[gram.dtype]
    lwork, liwork = _lwork(routine, n)
    lam, vec, found, _, info = getattr(lapack, routine)(
        gram,
        compute_v=1,
        range="A" if everything else "I",
        lower=0,
        il=n - count + 1,
        iu=n,
        lwork=lwork,
        liwork=liwork,
        overwrite_a=1,
    )
    if info != 0:
        raise RuntimeError(f"LAPACK {routine} failed on a {n} x {n} Gram matrix: info {info}")
    if found < count:
        return None
    # Within a cluster of equal eigenvalues syevr may also return more than asked for.
    return lam[found - count : found], vec[:, found - count : found]


def _f64_route(w64: np.ndarray, k: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 Gram + top-``k`` eigenpairs: ``(s, V^T)``, descending."""
    rows, cols = w64.shape
    n = min(rows, cols)
    buffer = _workspace.get("gram64", (n, n), np.float64, order="F")
    found = _top_eigenpairs(_gram(blas.dsyrk, w64, buffer), k)
    if found is None:  # an index range cut through a cluster: the whole spectrum, then
        found = _top_eigenpairs(_gram(blas.dsyrk, w64, buffer), k, everything=True)
    assert found is not None  # the whole spectrum has every eigenpair
    lam, u = found
    s = _checked_singular_values(lam[::-1], (rows, cols), k, label)
    u = np.asfortranarray(u[:, ::-1])
    if rows > cols:
        return s, u.T
    return s, blas.dgemm(1.0, w64.T, u).T / s[:, None]


def _mixed_route(
    w32: np.ndarray, w64: np.ndarray, energy: float, k: int, label: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Float32 subspace + one float64 Rayleigh-Ritz step: ``(s, V^T)``, or None where the guard
    (module docstring) asks for the float64 route."""
    rows, cols = w32.shape
    n = min(rows, cols)
    p = min(k + OVERSAMPLE, n)
    if n < MIN_SIZE_FACTOR * p or not FLOAT32_SAFE_ENERGY[0] < energy < FLOAT32_SAFE_ENERGY[1]:
        return None
    gram = _gram(blas.ssyrk, w32, _workspace.get("gram32", (n, n), np.float32, order="F"))
    found = _top_eigenpairs(gram, p)
    if found is None:
        return None
    lam32, u32 = found
    if not lam32[0] >= STEEP_SPECTRUM * lam32[-1]:  # ascending: [0] is eigenvalue p-1
        return None
    # Orthonormal basis Q of the float32 subspace, in float64.
    q, tau, _, info = lapack.dgeqrf(np.asfortranarray(u32, dtype=np.float64), overwrite_a=1)
    q, _, info2 = lapack.dorgqr(q, tau, lwork=max(64 * p, 1), overwrite_a=1)
    if info != 0 or info2 != 0:
        raise RuntimeError(f"LAPACK QR of the {n} x {p} subspace failed: info {info}, {info2}")
    # G = M^T M is the Gram matrix of the smaller side, M the Fortran view of W or W^T.
    # B = M Q in float64; B^T B is G projected on the subspace, its eigenpairs the Ritz pairs.
    m = w64.T  # Fortran-ordered (I, O): W^T
    wide = rows <= cols
    b = blas.dgemm(1.0, m, q, trans_a=0 if wide else 1)
    ritz = _top_eigenpairs(blas.dsyrk(1.0, b, trans=1, lower=0), p, everything=True)
    assert ritz is not None  # the whole spectrum has every eigenpair
    theta, y = ritz
    theta, y = theta[::-1], np.asfortranarray(y[:, ::-1])  # descending
    if not theta[-1] > 0:
        return None
    by = blas.dgemm(1.0, b, y)
    ritz = blas.dgemm(1.0, q, y)  # the Ritz vectors on the Gram side
    residual = blas.dgemm(1.0, m, by, trans_a=1 if wide else 0)  # G Q Y
    residual -= ritz * theta
    if not _ritz_pairs_certain(theta, np.sqrt(np.sum(residual * residual, axis=0)), k):
        return None
    s = _checked_singular_values(theta[:k], (rows, cols), k, label)
    if not wide:
        return s, ritz[:, :k].T
    return s, by[:, :k].T / s[:, None]


def _ritz_pairs_certain(theta: np.ndarray, residual_norms: np.ndarray, k: int) -> bool:
    """Whether the top-``k`` Ritz pairs are exact to the route's promise, estimated from the
    residuals ``r_j = (G - theta_j) u_j`` of all ``p`` Ritz pairs (descending ``theta``).

    The residuals are orthogonal to the subspace, so they couple each pair only to the part of
    the spectrum left outside it, which lies below about ``theta_{p-1}``. Knyazev's bound for
    Ritz vectors then gives the angle to the exact vector as about
    ``eta_j / (theta_j - theta_{p-1}) * sqrt(1 + gamma^2 / delta_j^2)`` (``gamma`` the size of
    all residuals together, ``delta_j`` the distance to the other Ritz values), and the eigenvalue
    error as ``eta_j^2 / (theta_j - theta_{p-1})``. A spectrum whose tail crowds right below the
    top ``k``, or float32 noise reaching the subspace, shows up here.
    """
    tail_gap = theta[:k] - theta[-1]
    if not np.all(tail_gap > 0):
        return False
    eta = residual_norms[:k]
    if not np.all(eta * eta / tail_gap <= CERTAIN_VALUE * theta[:k]):
        return False
    # Vectors the spectrum determines: singular value gap to both neighbours (p > k, so the
    # next one was computed) of at least CERTAIN_GAP x s_0; the others have no exact answer.
    s = np.sqrt(theta)
    gaps = s[:k] - s[1 : k + 1]
    gaps[1:] = np.minimum(gaps[1:], gaps[:-1])
    defined = gaps >= CERTAIN_GAP * s[0]
    distance = np.abs(theta[:k, None] - theta[None, :])
    distance[np.arange(k), np.arange(k)] = np.inf
    delta = distance.min(axis=1)
    gamma = np.sqrt(np.sum(residual_norms * residual_norms))
    angle = eta / tail_gap * np.sqrt(1.0 + (gamma / delta) ** 2)
    return bool(np.all(angle[defined] <= CERTAIN_ANGLE))


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
    s = np.stack(
        [_checked_singular_values(lam[b], (rows, cols), k, labels[b]) for b in range(batch)]
    )
    if rows <= cols:
        v = (w.mT @ u / torch.from_numpy(s).to(device)[:, None, :]).mT
    else:
        v = u.mT
    return s, v.cpu().numpy(), np.sqrt(trace)
