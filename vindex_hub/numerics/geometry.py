"""Expert geometry: how the experts' gate subspaces sit against each other (pure, no I/O).

An expert's vindex entry is ``V`` (``K x H``), the top-K right singular vectors of its
``gate_proj`` (orthonormal rows), with singular values ``s`` (``K``). Definitions:

* **overlap** of experts a, b: ``||V_a V_b^T||_F^2 / K``, the mean squared cosine of the K
  principal angles between the two subspaces. 1: the same subspace; 0: orthogonal subspaces;
  two independent uniformly random K-dimensional subspaces of R^H give ``K / H`` on average
  (``random_overlap``). Two vindexes of different K (``compare``) divide by ``min(K_a, K_b)``,
  so 1 means the smaller subspace lies inside the larger.
* **energy-weighted overlap**: the cosine similarity of the experts' rank-K Gram operators
  ``G = V^T diag(s^2) V`` (the part of ``W^T W`` the vindex keeps: which input directions the
  gate reads, and how strongly), ``<G_a, G_b>_F / (||G_a||_F ||G_b||_F)``
  ``= sum_ij s_ai^2 s_bj^2 (v_ai . v_bj)^2 / sqrt(sum_i s_ai^4 * sum_j s_bj^4)``. With a flat
  spectrum it equals the plain overlap; it is 1 for the same subspace with proportional spectra
  and discounts agreement in an expert's weak directions. Its random baseline is
  ``K / H`` times ``(sum s_a^2)(sum s_b^2) / (K sqrt(sum s_a^4 sum s_b^4))`` (at most ``K/H``).
* **router alignment** of expert e: the share of router row ``r_e``'s squared norm inside
  ``span(V_e)``, ``||V_e r_e||^2 / ||r_e||^2``; and the largest share of ``r_e`` inside another
  expert's span, ``max_{e' != e} ||V_e' r_e||^2 / ||r_e||^2`` (with that expert). A random
  direction has ``K / H`` of its energy in a K-dimensional subspace on average.
* **Marchenko-Pastur baseline of var{K}**: the top-K energy fraction a matrix of i.i.d. Gaussian
  entries of the expert's shape would have, ``mp_energy_fraction(rows, cols, K)``: in the MP limit
  the eigenvalues of ``W W^T / n`` (``p = min(rows, cols)`` of them, ratio ``y = p / n``) follow
  the MP law, and the top K of p carry the mass above the law's ``1 - K/p`` quantile. With
  ``x = 1 + y - 2 sqrt(y) cos(theta)`` both the law's CDF and its first moment have closed forms
  in theta (``mp_cdf_theta``), so the quantile and the fraction are exact up to a bisection.

Products are taken in float32 (what BLAS is fast at; the vectors are float32) and every
squared sum is accumulated in float64: overlaps of unit vectors agree with a float64 reference
to about 1e-7. Whole layers are processed a block of experts at a time, so the working memory is
one ``(block*K) x (E*K)`` float32 matrix beside the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import UsageError

__all__ = [
    "AlignmentResult",
    "CrossOverlap",
    "OverlapSummary",
    "best_matching",
    "compare_layers",
    "cross_overlaps",
    "mp_energy_fraction",
    "overlaps",
    "random_overlap",
    "random_weighted_overlap",
    "router_alignment",
    "summarize_overlaps",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Rows of the product matrix computed at once: (BLOCK_ROWS x E*K) float32, 128 MiB at 256 x 64.
BLOCK_ROWS = 2048


def _check_block(v: npt.ArrayLike, name: str) -> F32:
    a = np.asarray(v)
    if a.ndim != 3 or 0 in a.shape:
        raise UsageError(f"{name}: expected (experts, K, hidden) vectors, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _gram_weights(singular_values: npt.ArrayLike | None, shape: tuple[int, int], name: str) -> F64:
    """Per-row weights ``s^2 / sqrt(sum s^4)`` of the energy-weighted overlap (float64)."""
    if singular_values is None:
        raise UsageError(f"{name}: the energy-weighted overlap needs singular values")
    s = np.asarray(singular_values, dtype=np.float64)
    if s.shape != shape:
        raise UsageError(f"{name}: singular values of shape {s.shape}, expected {shape}")
    w = s**2
    norm = np.sqrt(np.sum(w**2, axis=1, keepdims=True))
    if np.any(norm <= 0) or not np.all(np.isfinite(norm)):
        raise UsageError(f"{name}: an expert's singular values are all zero or not finite")
    out: F64 = w / norm
    return out


@dataclass(frozen=True)
class CrossOverlap:
    """Overlaps of every expert of ``a`` (rows) with every expert of ``b`` (columns), float64."""

    plain: F64  # (E_a, E_b)
    weighted: F64 | None  # (E_a, E_b), when both sides' singular values were given


def cross_overlaps(
    a: npt.ArrayLike,
    b: npt.ArrayLike | None = None,
    *,
    singular_values_a: npt.ArrayLike | None = None,
    singular_values_b: npt.ArrayLike | None = None,
    weighted: bool = False,
    block_rows: int = BLOCK_ROWS,
) -> CrossOverlap:
    """Plain (and with ``weighted``, energy-weighted) overlaps of ``a``'s experts with ``b``'s.

    ``a``, ``b``: ``(E, K, H)`` orthonormal-row vectors of one hidden size; ``b`` None means
    ``a`` against itself (then only the upper triangle of blocks is multiplied, and the result is
    symmetric by construction). One float32 matmul per block of ``block_rows`` rows of ``a``
    against all of ``b``; squares summed in float64.
    """
    va = _check_block(a, "a")
    same = b is None
    vb = va if b is None else _check_block(b, "b")
    ea, ka, h = va.shape
    eb, kb, hb = vb.shape
    if h != hb:
        raise UsageError(f"hidden sizes differ: {h} (a) and {hb} (b); overlaps need one space")
    if same and singular_values_b is None:
        singular_values_b = singular_values_a
    wa = _gram_weights(singular_values_a, (ea, ka), "a") if weighted else None
    wb = _gram_weights(singular_values_b, (eb, kb), "b") if weighted else None
    xa = va.reshape(ea * ka, h)
    xb = vb.reshape(eb * kb, h)
    plain = np.zeros((ea, eb), dtype=np.float64)
    weighted_out = np.zeros((ea, eb), dtype=np.float64) if weighted else None
    step = max(1, block_rows // ka)  # experts of a per block
    for start in range(0, ea, step):
        stop = min(ea, start + step)
        first_b = start if same else 0  # symmetric: the blocks left of the diagonal are mirrored
        c = xa[start * ka : stop * ka] @ xb[first_b * kb :].T  # float32 products
        np.square(c, out=c)
        c4 = c.reshape(stop - start, ka, eb - first_b, kb)
        plain[start:stop, first_b:] = c4.sum(axis=(1, 3), dtype=np.float64)
        if weighted_out is not None and wa is not None and wb is not None:
            # sum_j c^2 w_b[j], then sum_i w_a[i] (...): both sums in float64
            inner = np.einsum("aibj,bj->aib", c4, wb[first_b:].astype(np.float32), dtype=np.float64)
            weighted_out[start:stop, first_b:] = np.einsum("aib,ai->ab", inner, wa[start:stop])
    plain /= min(ka, kb)
    if same:
        _mirror_upper(plain)
        if weighted_out is not None:
            _mirror_upper(weighted_out)
    return CrossOverlap(plain=plain, weighted=weighted_out)


def _mirror_upper(m: F64) -> None:
    """Fill the lower triangle from the upper one (only the upper blocks were multiplied)."""
    lower = np.tril_indices(m.shape[0], -1)
    m[lower] = m.T[lower]


def overlaps(
    vectors: npt.ArrayLike,
    singular_values: npt.ArrayLike | None = None,
    *,
    block_rows: int = BLOCK_ROWS,
) -> CrossOverlap:
    """Every pair of one layer's experts: ``(E, E)`` plain overlaps, and energy-weighted ones
    when ``singular_values`` (``(E, K)``) are given. The diagonal is 1 up to rounding."""
    return cross_overlaps(
        vectors,
        None,
        singular_values_a=singular_values,
        weighted=singular_values is not None,
        block_rows=block_rows,
    )


def random_overlap(num_feats: int, hidden_size: int) -> float:
    """The expected overlap of two independent uniformly random K-dimensional subspaces: ``K / H``."""
    if not 0 < num_feats <= hidden_size:
        raise UsageError(f"num_feats {num_feats} must be in 1..hidden_size ({hidden_size})")
    return num_feats / hidden_size


def random_weighted_overlap(
    singular_values_a: npt.ArrayLike, singular_values_b: npt.ArrayLike, hidden_size: int
) -> float:
    """The expected energy-weighted overlap of two experts with these spectra whose subspaces are
    independent and uniformly random: ``E[(v . u)^2] = 1/H`` for unit v, u, so the baseline is
    ``(sum s_a^2)(sum s_b^2) / (H sqrt(sum s_a^4 sum s_b^4))``."""
    wa = np.asarray(singular_values_a, dtype=np.float64) ** 2
    wb = np.asarray(singular_values_b, dtype=np.float64) ** 2
    return float(wa.sum() * wb.sum() / (hidden_size * math.sqrt(np.sum(wa**2) * np.sum(wb**2))))


@dataclass(frozen=True)
class OverlapSummary:
    """One layer's overlaps in a few numbers (off-diagonal pairs a < b only)."""

    mean: float  # mean over pairs
    median: float
    max: float  # the closest pair's overlap
    closest_pair: tuple[int, int]  # (a, b), a < b; ties: the first in row-major order

    def to_json(self) -> dict[str, float | list[int]]:
        return {
            "mean": self.mean,
            "median": self.median,
            "max": self.max,
            "closest_pair": list(self.closest_pair),
        }


def summarize_overlaps(matrix: npt.ArrayLike) -> OverlapSummary:
    """Mean, median and maximum of a symmetric ``(E, E)`` overlap matrix off its diagonal."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise UsageError(f"summarize_overlaps needs an (E, E) matrix with E >= 2, got {m.shape}")
    rows, cols = np.triu_indices(m.shape[0], 1)
    pairs = m[rows, cols]
    best = int(np.argmax(pairs))
    return OverlapSummary(
        mean=float(pairs.mean()),
        median=float(np.median(pairs)),
        max=float(pairs[best]),
        closest_pair=(int(rows[best]), int(cols[best])),
    )


@dataclass(frozen=True)
class AlignmentResult:
    """Router alignment of one layer, per expert (``(E,)`` arrays)."""

    own: F64  # share of ||r_e||^2 inside span(V_e)
    other_max: F64  # the largest share of ||r_e||^2 inside span(V_e'), e' != e
    other_expert: I64  # that e'


def router_alignment(
    vectors: npt.ArrayLike, router: npt.ArrayLike, *, block_rows: int = BLOCK_ROWS
) -> AlignmentResult:
    """``router`` ``(E, H)`` rows against the layer's ``(E, K, H)`` subspaces, in float64."""
    v = _check_block(vectors, "vectors")
    r = np.asarray(router, dtype=np.float64)
    e, k, h = v.shape
    if r.shape != (e, h):
        raise UsageError(f"router of shape {r.shape}, expected ({e}, {h}) for these vectors")
    norms = np.sum(r**2, axis=1)
    if np.any(norms <= 0) or not np.all(np.isfinite(norms)):
        raise UsageError("router: a row is zero or not finite; its alignment is undefined")
    shares = np.empty((e, e), dtype=np.float64)  # [router row, expert subspace]
    step = max(1, block_rows // k)
    for start in range(0, e, step):
        stop = min(e, start + step)
        proj = r @ v[start:stop].reshape(-1, h).astype(np.float64).T  # (E, block*K)
        shares[:, start:stop] = np.sum(proj.reshape(e, stop - start, k) ** 2, axis=2)
    shares /= norms[:, None]
    own = np.diagonal(shares).copy()
    others = shares.copy()
    np.fill_diagonal(others, -np.inf)
    if e == 1:
        return AlignmentResult(own, np.full(1, np.nan), np.full(1, -1, dtype=np.int64))
    best = np.argmax(others, axis=1).astype(np.int64)
    return AlignmentResult(own, others[np.arange(e), best], best)


# ---- comparing two vindexes ------------------------------------------------------------------
def best_matching(matrix: npt.ArrayLike) -> tuple[I64, F64]:
    """The one-to-one matching of rows to columns with the largest total overlap
    (``scipy.optimize.linear_sum_assignment``): per row, its column (-1 when there are more rows
    than columns and it is left out) and the matched overlap (NaN when left out)."""
    from scipy.optimize import linear_sum_assignment

    m = np.asarray(matrix, dtype=np.float64)
    rows, cols = linear_sum_assignment(m, maximize=True)
    match = np.full(m.shape[0], -1, dtype=np.int64)
    value = np.full(m.shape[0], np.nan, dtype=np.float64)
    match[rows] = cols
    value[rows] = m[rows, cols]
    return match, value


@dataclass(frozen=True)
class LayerComparison:
    """One layer of two vindexes compared."""

    cross: F64  # (E_a, E_b) overlaps of A's experts with B's
    same_index: F64  # (min(E_a, E_b),): overlap of A's e with B's e
    match: I64  # (E_a,): B's expert matched to A's e (-1: none)
    matched: F64  # (E_a,): the matched overlap

    def summary(self) -> dict[str, float]:
        matched = self.matched[self.match >= 0]
        n = min(len(self.same_index), len(self.match))
        return {
            "mean_same_index": float(self.same_index.mean()),
            "min_same_index": float(self.same_index.min()),
            "mean_matched": float(matched.mean()),
            "mean_cross": float(self.cross.mean()),
            "matched_to_itself": float(np.mean(self.match[:n] == np.arange(n))),
        }


def compare_layers(
    a: npt.ArrayLike, b: npt.ArrayLike, *, block_rows: int = BLOCK_ROWS
) -> LayerComparison:
    """A's ``(E_a, K_a, H)`` layer against B's ``(E_b, K_b, H)``: the full cross overlap, the
    same-index overlaps and the best one-to-one matching."""
    cross = cross_overlaps(a, b, block_rows=block_rows).plain
    n = min(cross.shape)
    match, matched = best_matching(cross)
    return LayerComparison(
        cross=cross,
        same_index=cross[np.arange(n), np.arange(n)].copy(),
        match=match,
        matched=matched,
    )


# ---- the Marchenko-Pastur baseline of var{K} -------------------------------------------------
def mp_cdf_theta(theta: npt.ArrayLike, y: float) -> F64:
    """The MP law's CDF (ratio ``y`` in (0, 1], unit variance) at ``x = 1 + y - 2 sqrt(y) cos(theta)``.

    With that substitution the density ``sqrt((b-x)(x-a)) / (2 pi y x)`` becomes
    ``2 sin^2(theta) / (pi x)`` d theta, whose integral from 0 is closed-form (below).
    """
    t = np.asarray(theta, dtype=np.float64)
    sy = math.sqrt(y)
    out = np.sin(t) / (2 * sy) + (1 + y) * t / (4 * y)
    if y < 1:
        # the arctan's branch: tan(t/2) runs to +inf at t = pi, where the term is pi/2
        half = np.where(t >= math.pi, math.pi / 2, np.arctan((1 + sy) / (1 - sy) * np.tan(t / 2)))
        out = out - (1 - y) / (2 * y) * half
    result: F64 = np.clip(2 / math.pi * out, 0.0, 1.0)
    return result


def mp_energy_fraction(rows: int, cols: int, num_feats: int) -> float:
    """The expected top-K energy fraction of a ``rows x cols`` matrix of i.i.d. Gaussian entries
    in the Marchenko-Pastur limit: the share of the MP law's first moment above its
    ``1 - K/p`` quantile (``p = min(rows, cols)``). 1 when K >= p.

    The first moment up to theta is ``(theta - sin(theta) cos(theta)) / pi`` (the total is 1), so
    the fraction is ``1 - (theta_K - sin cos) / pi`` where ``CDF(theta_K) = 1 - K/p``.
    """
    if rows <= 0 or cols <= 0 or num_feats <= 0:
        raise UsageError(f"mp_energy_fraction({rows}, {cols}, {num_feats}): all must be positive")
    p, n = min(rows, cols), max(rows, cols)
    if num_feats >= p:
        return 1.0
    y = p / n
    target = 1 - num_feats / p
    lo, hi = 0.0, math.pi
    for _ in range(100):  # bisection on a monotone CDF: 2^-100 of pi
        mid = (lo + hi) / 2
        if float(mp_cdf_theta(mid, y)) < target:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return 1 - (theta - math.sin(theta) * math.cos(theta)) / math.pi
