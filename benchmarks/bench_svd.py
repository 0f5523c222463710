"""Exact top-K SVD per expert at real size: our Gram + partial eigensolver vs the alternatives.

One run measures, side by side on the same FP4-rounded expert matrices (2048 x 4096, K=64,
flat spectrum with a top-64 energy fraction near DeepSeek-V4-Flash's 0.11):

* ``vindex_hub.numerics.svd.top_k_right_singular`` (float64 Gram + LAPACK syevr for the top K only),
* ``numpy.linalg.svd(W, full_matrices=False)`` on the float32 matrix (the naive builder),
* 4-round randomized subspace iteration in float32 (LarQL's MoE summary mode),

and scores each method's top-K vectors against a float64 LAPACK reference
(``scipy.linalg.svd(W.astype(float64), lapack_driver="gesdd")``): min / median |cos|, and the
min restricted to *gap-allowing* vectors. A singular vector is determined by the matrix only
up to its gap to the neighbouring singular values (Wedin's theorem: a perturbation ``E`` moves
it by an angle up to ``||E|| / gap``), so vector ``i`` counts as gap-allowing when
``min(s[i-1] - s[i], s[i] - s[i+1]) / s[0] >= GAP_ALLOWS`` (1e-4: a float32-level backward
error ``~ 1e-7 * sqrt(n) * s[0]`` then moves it by at most ~5e-2 rad in the worst case, and
by far less in practice).

Usage: ``python benchmarks/bench_svd.py [--experts 3] [--repeat 3]``; prints a markdown table.
The full SVD runs once per expert, the fast methods ``--repeat`` times; times are medians.
Note: ``numpy.linalg.svd`` computes in float64 even for float32 input (it upcasts), so its
vectors are as accurate as the reference; it is the slow baseline, not an inaccurate one.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import platform
import time

import numpy as np
import scipy
import scipy.linalg

from vindex_hub.numerics.svd import top_k_right_singular

OUT_FEATURES, IN_FEATURES, K = 2048, 4096, 64
GAP_ALLOWS = 1e-4
NUMPY_SVD = "numpy.linalg.svd(full_matrices=False)"
FP4_BLOCK = 32
# E2M1 magnitudes (the FP4 code points of DeepSeek-V4's MXFP4 experts).
FP4_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp4_round(w: np.ndarray) -> np.ndarray:
    """Round to FP4 E2M1 with one power-of-two (E8M0) scale per 32 inputs, as MXFP4 stores it.

    The benchmark only needs realistic FP4 values, not the checkpoint's bytes, so this rounds
    in place of encoding + dequantizing.
    """
    blocks = w.reshape(w.shape[0], -1, FP4_BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = np.exp2(np.ceil(np.log2(amax / FP4_GRID[-1])))
    mag = np.abs(blocks) / scale
    midpoints = (FP4_GRID[1:] + FP4_GRID[:-1]) / 2
    q = FP4_GRID[np.searchsorted(midpoints, mag)]
    return (np.sign(blocks) * q * scale).reshape(w.shape).astype(np.float32)


def synthetic_expert(rng: np.random.Generator) -> np.ndarray:
    """A gate_proj-like matrix: slowly decaying row scales times Gaussian noise, FP4-rounded."""
    decay = (1.0 + np.arange(OUT_FEATURES) / 16.0) ** -0.18
    g = rng.standard_normal((OUT_FEATURES, IN_FEATURES)) / np.sqrt(IN_FEATURES)
    return fp4_round(decay[:, None] * g)


def randomized_subspace_iteration(w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """LarQL's summary mode: float32, oversampling 8, 4 power iterations with re-orthonormalization."""
    omega = rng.standard_normal((w.shape[1], k + 8)).astype(np.float32)
    q, _ = np.linalg.qr(w @ omega)
    for _ in range(4):
        p, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ p)
    _, _, vt = np.linalg.svd(q.T @ w, full_matrices=False)
    return vt[:k]


def numpy_full_svd(w: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(w, full_matrices=False)[2][:k]


def ours(w: np.ndarray, k: int) -> np.ndarray:
    return top_k_right_singular(w[None], k).vectors[0]


def gap_allowing(s: np.ndarray, k: int) -> np.ndarray:
    diffs = -np.diff(s[: k + 1])
    gaps = diffs[:k].copy()
    gaps[1:] = np.minimum(gaps[1:], diffs[: k - 1])
    return gaps / s[0] >= GAP_ALLOWS


def blas_kernels() -> str:
    """Which OpenBLAS kernel (core name) and thread count numpy's and scipy's builds run."""
    found = []
    for mod in (np, scipy):
        libdir = os.path.join(os.path.dirname(mod.__file__), os.pardir, f"{mod.__name__}.libs")
        for path in glob.glob(os.path.join(libdir, "libscipy_openblas*.so")):
            lib = ctypes.CDLL(path)
            suffix = "64_" if "openblas64" in path else ""
            corename = getattr(lib, f"scipy_openblas_get_corename{suffix}")
            corename.restype = ctypes.c_char_p
            threads = getattr(lib, f"scipy_openblas_get_num_threads{suffix}")()
            found.append(f"{mod.__name__}: OpenBLAS {corename().decode()} x{threads} threads")
    return "; ".join(found) or "OpenBLAS not found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=3, help="experts to time (median reported)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per expert of the fast methods")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other jobs on the machine skew the absolute times
    rng = np.random.default_rng(0)
    methods = {
        "vindex_hub (f64 Gram + syevr top-K)": ours,
        NUMPY_SVD: numpy_full_svd,
        "randomized subspace iteration (f32, 4 rounds)": lambda w, k: randomized_subspace_iteration(w, k, rng),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    cos_all: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    cos_gap: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    ref_times, var_k, n_allowed = [], [], []
    for _ in range(args.experts):
        w = synthetic_expert(rng)
        t0 = time.perf_counter()
        _, s_ref, vt_ref = scipy.linalg.svd(w.astype(np.float64), full_matrices=False, lapack_driver="gesdd")
        ref_times.append(time.perf_counter() - t0)
        var_k.append(np.sum(s_ref[:K] ** 2) / np.sum(s_ref**2))
        allowed = gap_allowing(s_ref, K)
        n_allowed.append(int(allowed.sum()))
        for name, method in methods.items():
            # The slow full SVD once per expert, the fast methods a few times (the machine is shared).
            for _ in range(1 if name == NUMPY_SVD else args.repeat):
                t0 = time.perf_counter()
                vt = method(w, K)
                times[name].append(time.perf_counter() - t0)
            vt64 = vt.astype(np.float64)
            # Normalized in float64 so the score is the angle only, not float32 norm rounding.
            vt64 /= np.linalg.norm(vt64, axis=1, keepdims=True)
            cos = np.abs(np.sum(vt64 * vt_ref[:K], axis=1))
            cos_all[name].append(cos)
            cos_gap[name].append(cos[allowed])

    base = float(np.median(times[NUMPY_SVD]))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; {blas_kernels()}"
    )
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}"
    )
    print(
        f"{args.experts} experts {OUT_FEATURES}x{IN_FEATURES} FP4-rounded, K={K}, top-{K} energy fraction "
        f"{np.mean(var_k):.3f}; gap-allowing vectors (relative gap >= {GAP_ALLOWS:g}): "
        f"{min(n_allowed)}-{max(n_allowed)} of {K}; float64 gesdd reference {np.median(ref_times):.2f} s/expert\n"
    )
    print(
        "| method | median s / expert | speed vs numpy SVD | min \\|cos\\| | median \\|cos\\| "
        "| min \\|cos\\| gap-allowing | 1 - min \\|cos\\| gap-allowing |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in methods:
        t = float(np.median(times[name]))
        all_cos = np.concatenate(cos_all[name])
        gap_cos = np.concatenate(cos_gap[name])
        print(
            f"| {name} | {t:.3f} | {base / t:.1f}x | {all_cos.min():.6f} | {np.median(all_cos):.6f} "
            f"| {gap_cos.min():.6f} | {1 - gap_cos.min():.1e} |"
        )


if __name__ == "__main__":
    main()
