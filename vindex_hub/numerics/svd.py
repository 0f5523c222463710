"""Exact top-K right singular vectors of a batch of matrices (pure math, no I/O).

Two CPU precisions, both exact (not randomized: on the flat spectra of MoE experts, top-64
energy fraction near 0.11, randomized subspace iteration returns vectors far from the true ones).
``docs/svd.md`` tells the whole story, with what each spectrum family gets.

``mixed`` (the default) chooses each matrix's route before any Gram matrix is formed
(``choose_route``), from a *probe*: one float32 block power step with the smaller Gram matrix
``G`` from a fixed start (``PROBE_BLOCK`` vectors; two passes over ``W``, ``G`` never formed) and
its Ritz values. A function of the matrix alone, so the same for any batch, order or worker.

* ``cpu-mixed``: for ``W`` of shape ``(O, I)`` the float32 Gram matrix of the smaller side
  (``W W^T`` when ``O <= I``, LAPACK ``ssyrk``) and its top ``p = k + 32`` eigenpairs (float32
  ``ssyevr`` with an index range) give a subspace that holds the top-``k`` singular vectors to
  float32 accuracy; one float64 Rayleigh-Ritz step with ``W`` itself (orthonormalize the
  subspace ``Q``, ``B = W^T Q``, eigenpairs ``(theta, Y)`` of ``B^T B``, ``V = B Y / s``) then
  makes them exact to about float64 rounding: what is left of a Ritz vector's error is the
  subspace's float32 error *outside* it, over its gap to the spectrum left outside (1-|cos| ~
  2e-12 against a float64 LAPACK SVD on gate_proj-like matrices, singular values to ~1e-12).
* ``cpu-mixed-deflated``: where the probe's Ritz values fall by ``STRONG_GAP`` (16x, 4x in
  singular value) from one to the next, the ones above are strong directions over the rest (a
  spiky spectrum: a few directions 100-1000x the bulk in eigenvalue). Float32's rounding is
  relative to the largest eigenvalue, so they would leave the float32 subspace of the rest too
  coarse. Their gap makes them cheap to find: a few more block power steps (as many as the gap's
  ratio needs to reach ``DEFLATION_ACCURACY``) give ``U``, which is projected out of ``W`` on the
  Gram side in float32 (``(I - U U^T) W``); the float32 stage sees only the flat rest, and the
  Rayleigh-Ritz step runs on ``[U, Q]`` with ``W`` itself, so the result is as exact.
* ``cpu-f64`` from the start where the probe finds a spectrum flat to its end
  (``FLAT_TO_THE_END``: every gap at the promise's bound, say), where the matrix is too small for a
  partial solve to pay off (``MIN_SIZE_FACTOR``), or where its magnitudes are outside float32's
  safe range.

Both float32 routes end with a certificate from the float64 residuals of the Ritz pairs
(``_ritz_pairs_certain``): a matrix it refuses (a steep decay the probe cannot tell from a power
law, say) takes the float64 route after all, the one case that throws an attempt away.

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
    ROUTE_DEFLATED,
    ROUTE_F64,
    ROUTE_MIXED,
    method_for,
    resolve_device,
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
    "choose_route",
    "frobenius_norm",
    "method_for",
    "resolve_device",
    "route_for",
    "singular_values",
    "top_k_right_singular",
]

# The mixed route (module docstring): its subspace, its choice and its certificate.
# Eigenpairs computed beyond k: the Rayleigh-Ritz subspace's margin. The Ritz vectors' error
# falls with the gap between eigenvalue k-1 and p-1; at 32 (not 16) the certificate's estimate on
# gate_proj-like matrices sits 3x (not 1.5x) inside its bound, for ~3% more time.
OVERSAMPLE = 32
MIN_SIZE_FACTOR = 2  # a Gram matrix smaller than this x p -> float64 (a full solve is as cheap)
# ||W||_F^2 outside this range could overflow or lose the spectrum to underflow in float32.
FLOAT32_SAFE_ENERGY = (1e-30, 1e30)
# What the Ritz pairs must be estimated to meet (``_ritz_pairs_certain``), else float64:
CERTAIN_ANGLE = 3e-5  # radians, for vectors with a gap: 1 - |cos| = 4.5e-10, 2x inside 1e-9
CERTAIN_GAP = 0.5e-4  # relative singular value gap from which a vector counts as determined
CERTAIN_VALUE = 5e-10  # relative eigenvalue error: singular values to 2.5e-10, 4x inside 1e-9
# The route's choice, made before any Gram matrix (``choose_route``): a float32 block power
# probe of the Gram matrix from a fixed start, PROBE_BLOCK vectors, PROBE_STEPS products with it.
PROBE_BLOCK = 16
PROBE_STEPS = 1
PROBE_SEED = 0x5EC7
# Consecutive probe Ritz values this far apart (eigenvalues: 4x in singular value) mark strong
# directions over the rest: the ones above the largest such gap are deflated (``ROUTE_DEFLATED``).
STRONG_GAP = 16.0
MAX_DEFLATED = PROBE_BLOCK - 4  # the block keeps at least 4 vectors of the rest beside them
# Power steps continue until (gap ratio)^steps is below this: the deflated directions' error
# components outside the float32 stage's subspace are then far below what it resolves itself.
DEFLATION_ACCURACY = 1e-6
MAX_DEFLATION_STEPS = 12
# Both the mean eigenvalue beyond the probe's block and its last Ritz value above this x its
# largest: a spectrum flat to its end (e.g. every gap at the promise's bound), whose top float32
# cannot separate from the rest (the certificate would refuse it): float64 from the start.
# Measured (one probe step): 0.96-0.99 on such spectra; at most 0.87 on Gaussian and MoE-like
# matrices of aspect ratios 1-14, which the certificate accepts.
FLAT_TO_THE_END = 0.92


@dataclass(frozen=True)
class TopK:
    """The top-``k`` right singular triplets of a batch of ``B`` matrices of shape ``(O, I)``."""

    vectors: np.ndarray  # float32 (B, k, I): rows of Vt, descending singular value, unit norm
    singular_values: np.ndarray  # float64 (B, k), descending
    frobenius_norm: np.ndarray  # float64 (B,): ||W||_F, for energy fractions
    routes: tuple[str, ...] = field(default=())  # per matrix, the route it took (ROUTE_*)


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
        route, strong = _choose_route(weights[b], energy, k) if mixed else (ROUTE_F64, None)
        found = None
        if route != ROUTE_F64:
            found = _mixed_route(weights[b], w64, k, labels[b], strong)
        if found is None:  # chosen, or the certificate refused the float32 subspace
            route = ROUTE_F64
            found = _f64_route(w64, k, labels[b])
        routes.append(route)
        s_out[b], v_out[b] = found
    return s_out, v_out, fro, routes


def choose_route(matrix: np.ndarray, k: int, *, blas_threads: int = BLAS_THREADS) -> str:
    """The route ``precision="mixed"`` chooses for one float32 ``(O, I)`` matrix before any Gram
    matrix is formed (module docstring): ``ROUTE_MIXED``, ``ROUTE_DEFLATED`` or ``ROUTE_F64``.
    A function of the matrix alone. The route a matrix ends up on (``TopK.routes``) is this one
    unless the certificate refuses the float32 subspace, which then costs a thrown-away attempt."""
    w32 = np.ascontiguousarray(matrix, dtype=np.float32)
    flat = w32.reshape(-1).astype(np.float64)
    with _blas_threads(blas_threads):
        energy = float(blas.ddot(flat, flat))
        _check_finite(energy, "matrix")
        return _choose_route(w32, energy, k)[0]


@functools.cache
def _probe_start(n: int) -> np.ndarray:
    """The probe's fixed start block: the same for every matrix of a size, whatever the batch."""
    start = np.random.default_rng(PROBE_SEED).standard_normal((n, PROBE_BLOCK))
    start = np.asfortranarray(start, dtype=np.float32)
    start.flags.writeable = False
    return start


def _orthonormal(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis (float64, Fortran) of the columns of a tall ``x`` (LAPACK QR)."""
    q, tau, _, info = lapack.dgeqrf(np.asfortranarray(x, dtype=np.float64), overwrite_a=1)
    q, _, info2 = lapack.dorgqr(q, tau, lwork=max(64 * x.shape[1], 1), overwrite_a=1)
    if info != 0 or info2 != 0:
        raise RuntimeError(
            f"LAPACK QR of a {x.shape[0]} x {x.shape[1]} block failed: {info}, {info2}"
        )
    return np.asarray(q)


def _gram_products(w32: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Z, Y)`` with ``Z = M x`` and ``Y = M^T Z = G x`` for the smaller Gram matrix ``G`` of
    ``w32`` (``M`` the factor with ``G = M^T M``), two passes over ``w32`` and ``G`` never formed.
    The product that runs over ``w32``'s rows is written ``(a^T W)^T``: OpenBLAS's sgemm with the
    big operand on the right, untransposed, is about 1.8x faster on a narrow block."""
    rows, cols = w32.shape
    if rows <= cols:  # G = W W^T: Z = W^T x, Y = W Z
        z = blas.sgemm(1.0, w32.T, x)
        return z, blas.sgemm(1.0, z, w32.T, trans_a=1).T
    z = blas.sgemm(1.0, x, w32.T, trans_a=1).T  # G = W^T W: Z = W x, Y = W^T Z
    return z, blas.sgemm(1.0, w32.T, z)


def _block_power(
    w32: np.ndarray, x: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``steps`` float32 block power steps with the smaller Gram matrix ``G`` of ``w32`` from the
    orthonormal block ``x``, two passes over ``w32`` each (``G`` is never formed), then Ritz pairs
    from the last step's own products, no third pass: with ``Z = M x`` and ``Y = M^T Z = G x``,
    ``Y^T Y = x^T G^2 x`` and ``Z^T Z = x^T G x`` make the pencil whose eigenpairs are the Ritz
    pairs of ``G`` on ``G^(1/2) x``; their vectors, one half-step further, are ``Y`` times the
    pencil's vectors, orthogonal with norms ``sqrt(theta)``. Returns (Ritz values descending,
    unit Ritz vectors float64 ``(n, b)``), or None where ``x^T G x`` is singular (rank below b).
    """
    for step in range(steps):
        z, y = _gram_products(w32, x)
        if step < steps - 1:
            x = np.asfortranarray(_orthonormal(y), dtype=np.float32)
    z64 = np.asfortranarray(z, dtype=np.float64)
    y64 = np.asfortranarray(y, dtype=np.float64)
    theta, vectors, info = lapack.dsygv(
        blas.dsyrk(1.0, y64, trans=1, lower=1), blas.dsyrk(1.0, z64, trans=1, lower=1), uplo="L"
    )
    if info != 0 or not theta[0] > 0:
        return None
    theta, vectors = theta[::-1], np.asfortranarray(vectors[:, ::-1])
    ritz = blas.dgemm(1.0, y64, vectors) / np.sqrt(theta)
    return theta, ritz


def _strong_directions(
    w32: np.ndarray, x: np.ndarray, steps: int, strong: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``strong`` Ritz vectors ``U`` (float64 ``(n, strong)``, orthonormal) after
    ``steps`` more block power steps from the orthonormal block ``x``, and ``M U`` (float32; ``M``
    as in ``_gram_products``), the product the deflation needs: the Rayleigh-Ritz step's own pass
    ``Z = M x`` gives it as ``Z C``, with no pass over ``w32`` of its own."""
    for _ in range(steps):
        x = np.asfortranarray(_orthonormal(_gram_products(w32, x)[1]), dtype=np.float32)
    rows, cols = w32.shape
    z = blas.sgemm(1.0, w32.T, x) if rows <= cols else blas.sgemm(1.0, x, w32.T, trans_a=1).T
    z64 = np.asfortranarray(z, dtype=np.float64)
    found = _top_eigenpairs(blas.dsyrk(1.0, z64, trans=1, lower=0), strong)  # Ritz pairs on x
    assert found is not None  # a few well separated values of a small matrix
    c = np.asfortranarray(found[1][:, ::-1])
    u = blas.dgemm(1.0, np.asfortranarray(x, dtype=np.float64), c)
    return u, np.asfortranarray(blas.dgemm(1.0, z64, c), dtype=np.float32)


def _choose_route(
    w32: np.ndarray, energy: float, k: int
) -> tuple[str, tuple[np.ndarray, np.ndarray] | None]:
    """The route for one matrix, and for ``ROUTE_DEFLATED`` its strong directions on the Gram
    side (float64 ``(n, r)``, orthonormal): module docstring."""
    rows, cols = w32.shape
    n = min(rows, cols)
    p = min(k + OVERSAMPLE, n)
    if n < MIN_SIZE_FACTOR * p or not FLOAT32_SAFE_ENERGY[0] < energy < FLOAT32_SAFE_ENERGY[1]:
        return ROUTE_F64, None
    probe = _block_power(w32, _probe_start(n), PROBE_STEPS)
    if probe is None:  # a rank below the probe's block: nothing for float32 to be spared
        return ROUTE_MIXED, None
    theta, ritz = probe
    rest = (energy - theta.sum()) / (n - PROBE_BLOCK)
    if min(rest, theta[-1]) >= FLAT_TO_THE_END * theta[0]:
        return ROUTE_F64, None
    ratios = theta[:MAX_DEFLATED] / theta[1 : MAX_DEFLATED + 1]
    gap = int(np.argmax(ratios))
    if not ratios[gap] >= STRONG_GAP:
        return ROUTE_MIXED, None
    strong = gap + 1
    # Block power converges at least at the gap's ratio a step: continue to DEFLATION_ACCURACY.
    total = int(np.ceil(np.log(DEFLATION_ACCURACY) / np.log(1.0 / ratios[gap])))
    more = min(max(total - PROBE_STEPS, 1), MAX_DEFLATION_STEPS)
    start = np.asfortranarray(_orthonormal(ritz), dtype=np.float32)
    return ROUTE_DEFLATED, _strong_directions(w32, start, more, strong)


def _deflated(w32: np.ndarray, strong: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``w32`` with its strong directions ``U`` projected out on the Gram side, in float32 (a
    reused buffer): ``M - (M U) U^T`` (wide: ``(I - U U^T) W``) or ``M - U (U^T M)`` (tall:
    ``W (I - U U^T)``), ``strong = (U, M U or U^T M)``. Only the float32 stage sees it; the
    Rayleigh-Ritz step and its certificate use ``W`` itself."""
    rows, cols = w32.shape
    u, product = strong
    out = _workspace.get("deflated", (cols, rows), np.float32, order="F")  # M', Fortran
    np.copyto(out, w32.T)
    u32 = np.asfortranarray(u, dtype=np.float32)
    if rows <= cols:
        out = blas.sgemm(-1.0, product, u32, trans_b=1, beta=1.0, c=out, overwrite_c=1)
    else:
        out = blas.sgemm(-1.0, u32, product, trans_b=1, beta=1.0, c=out, overwrite_c=1)
    result: np.ndarray = np.asarray(out).T  # C-ordered (O, I)
    return result


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
    assert found is not None  # the whole spectrum: syevr finds every eigenvalue
    lam, u = found
    s = _checked_singular_values(lam[::-1], (rows, cols), k, label)
    u = np.asfortranarray(u[:, ::-1])
    if rows > cols:
        return s, u.T
    return s, blas.dgemm(1.0, w64.T, u).T / s[:, None]


def _mixed_route(
    w32: np.ndarray,
    w64: np.ndarray,
    k: int,
    label: str,
    strong: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Float32 subspace (of ``w32`` less its ``strong`` directions, where given) + one float64
    Rayleigh-Ritz step: ``(s, V^T)``, or None where the certificate refuses it."""
    rows, cols = w32.shape
    n = min(rows, cols)
    p = min(k + OVERSAMPLE, n)
    source = w32 if strong is None else _deflated(w32, strong)
    gram = _gram(blas.ssyrk, source, _workspace.get("gram32", (n, n), np.float32, order="F"))
    found = _top_eigenpairs(gram, p)
    if found is None:
        return None
    _, u32 = found
    basis = u32 if strong is None else np.hstack([strong[0], u32])
    q = _orthonormal(basis)
    # G = M^T M is the Gram matrix of the smaller side, M the Fortran view of W or W^T.
    # B = M Q in float64; B^T B is G projected on the subspace, its eigenpairs the Ritz pairs.
    m = w64.T  # Fortran-ordered (I, O): W^T
    wide = rows <= cols
    b = blas.dgemm(1.0, m, q, trans_a=0 if wide else 1)
    ritz_pairs = _top_eigenpairs(blas.dsyrk(1.0, b, trans=1, lower=0), q.shape[1], everything=True)
    assert ritz_pairs is not None  # the whole spectrum
    theta, y = ritz_pairs
    # Descending; a PSD matrix's Ritz values below zero are rounding (a rank below p).
    theta, y = np.maximum(theta[::-1], 0.0), np.asfortranarray(y[:, ::-1])
    if not theta[k - 1] > 0:
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
