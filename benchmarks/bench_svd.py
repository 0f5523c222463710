"""Exact top-K SVD per expert at real size: the mixed route vs 0.1's method vs numpy's full SVD.

One process run measures, side by side on the same expert matrices (K=64):

* FP4-like ``2048 x 4096`` (DeepSeek-V4-Flash routed gate_proj: MXFP4 values, flat spectrum,
  top-64 energy fraction near 0.11) and FP8-like ``2048 x 7168`` (a 7168-hidden family's routed
  gate_proj: E4M3 values with a float32 scale per 128 x 128 block), both from
  ``vindex_hub.testing.synth``;
* ``numpy.linalg.svd(W, full_matrices=False)`` (the naive builder; float64 inside, so exact),
* the 0.1 method (float64 Gram ``dsyrk`` + ``scipy.linalg.eigh(subset_by_index, driver="evr")``
  + ``V = W^T U / s`` with numpy's matmul), kept here as it shipped,
* ``top_k_right_singular(precision="f64")`` and the default ``precision="mixed"``
  (``vindex_hub.numerics.svd``), both with one BLAS thread, in this process,
* the mixed route on ``--processes`` spawned single-thread processes mapping the experts from
  shared memory (how a build runs it: ``--workers``), reported as wall time per expert,
* where torch sees a GPU (``--device auto``, the default, or ``cuda``), the CUDA route on all the
  experts of a shape as one batch (how a build runs it), reported as wall time per expert,
  transfers included,
* 4-round randomized subspace iteration in float32 (LarQL's MoE summary mode),

then where the mixed route's time goes on one expert (Gram, eigensolver, its tridiagonal
reduction, Rayleigh-Ritz) next to this machine's sgemm/dgemm/ssymv rates. It scores each
method's top-K against a float64 LAPACK reference
(``scipy.linalg.svd(W.astype(float64), lapack_driver="gesdd")``): the worst ``1 - |cos|`` over
*gap-allowing* vectors (singular value gap to both neighbours ``>= GAP_ALLOWS x s_0``: only those
does the matrix determine), the median ``|cos|`` over all, and the worst relative error of the
singular values (methods that return them).

Usage: ``python benchmarks/bench_svd.py [--experts 3] [--repeat 3] [--processes 2] [--device auto]
[--scale 1]``;
prints a markdown table per shape. ``--scale 8`` divides both dimensions by 8 (a quick check that
the script runs, not figures). The full SVD runs once per expert, the others ``--repeat`` times;
times are medians. Run it on a quiet machine and report the load average it prints.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory

import numpy as np
import scipy
import scipy.linalg
from bench_load import timed  # median wall seconds of repeated runs
from scipy.linalg import blas, lapack
from scipy.linalg.blas import dsyrk
from threadpoolctl import threadpool_limits

from vindex_hub.builder.engine import blas_thread_environment
from vindex_hub.numerics import svd
from vindex_hub.numerics.svd import top_k_right_singular
from vindex_hub.testing import synth

K = 64
GAP_ALLOWS = 1e-4
NUMPY_SVD = "numpy.linalg.svd(full_matrices=False)"
SHAPES = {  # name: (out, in, values)
    "FP4-like 2048 x 4096": (2048, 4096, "fp4"),
    "FP8-like 2048 x 7168": (2048, 7168, "fp8"),
}

Result = tuple[np.ndarray, np.ndarray | None]  # (top-K rows of Vt, singular values or None)


def expert(rng: np.random.Generator, rows: int, cols: int, values: str) -> np.ndarray:
    w = synth.gate_matrix(rng, rows, cols)
    if values == "fp4":
        return synth.quantize_fp4(w)[2]
    return synth.quantize_fp8(w, scale_dtype="F32")[2]


def method_v01(w: np.ndarray, k: int) -> Result:
    """The method shipped in 0.1, as it was (numpy matmul between scipy calls included)."""
    w64 = w.astype(np.float64)
    gram = dsyrk(1.0, w64.T, trans=1, lower=0)
    n = gram.shape[0]
    lam, u = scipy.linalg.eigh(
        gram,
        lower=False,
        subset_by_index=[n - k, n - 1],
        driver="evr",
        overwrite_a=True,
        check_finite=False,
    )
    s = np.sqrt(np.maximum(lam[::-1], 0.0))
    return (w64.T @ u[:, ::-1] / s).T, s


def numpy_full_svd(w: np.ndarray, k: int) -> Result:
    _, s, vt = np.linalg.svd(w, full_matrices=False)
    return vt[:k], s[:k]


def ours(precision: str) -> Callable[[np.ndarray, int], Result]:
    def run(w: np.ndarray, k: int) -> Result:
        top = top_k_right_singular(w[None], k, precision=precision)
        return top.vectors[0], top.singular_values[0]

    return run


def randomized_subspace_iteration(w: np.ndarray, k: int, rng: np.random.Generator) -> Result:
    """LarQL's summary mode: float32, oversampling 8, 4 power iterations with re-orthonormalization."""
    omega = rng.standard_normal((w.shape[1], k + 8)).astype(np.float32)
    q, _ = np.linalg.qr(w @ omega)
    for _ in range(4):
        p, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ p)
    _, _, vt = np.linalg.svd(q.T @ w, full_matrices=False)
    return vt[:k], None


# In a worker process: the shared block (open for the worker's life) and every expert in it.
_shared: tuple[shared_memory.SharedMemory, np.ndarray] | None = None


def _map_experts(name: str, shape: tuple[int, ...]) -> None:
    global _shared
    block = shared_memory.SharedMemory(name=name)
    _shared = block, np.ndarray(shape, dtype=np.float32, buffer=block.buf)


def _mixed_in_worker(index: int) -> np.ndarray:
    assert _shared is not None, "the pool's initializer maps the experts"
    return top_k_right_singular(_shared[1][index][None], K).vectors[0]


def wall_per_expert_in_processes(experts: list[np.ndarray], processes: int, repeat: int) -> float:
    """The mixed route on ``processes`` spawned processes (1 BLAS thread each, as a build's
    workers): median over ``repeat`` rounds of wall time / experts, start-up excluded.

    The experts sit once in shared memory, mapped by every process, and a task names its expert
    by index: as in a build (``builder.engine`` shares each layer's bytes the same way), no matrix
    is pickled through a pipe (32 MiB an expert, ~0.1 s of copying that a build does not do).
    """
    stacked = np.stack(experts)
    block = shared_memory.SharedMemory(create=True, size=stacked.nbytes)
    try:
        np.ndarray(stacked.shape, dtype=np.float32, buffer=block.buf)[...] = stacked
        context = multiprocessing.get_context("spawn")
        with (
            blas_thread_environment(1),
            ProcessPoolExecutor(
                processes,
                mp_context=context,
                initializer=_map_experts,
                initargs=(block.name, stacked.shape),
            ) as pool,
        ):
            list(
                pool.map(_mixed_in_worker, range(min(processes, len(experts))))
            )  # start-up, buffers
            # Every expert once per process: a round whose task count the processes divide (3
            # experts on 2 processes would leave one idle for a third of the round).
            tasks = [i % len(experts) for i in range(len(experts) * processes)]
            rounds = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                list(pool.map(_mixed_in_worker, tasks))
                rounds.append((time.perf_counter() - t0) / len(tasks))
    finally:
        block.close()
        block.unlink()
    return float(np.median(rounds))


def route_stages(w: np.ndarray, repeat: int) -> None:
    """Where the mixed route's time goes on one expert, next to what this machine's BLAS can do
    on one thread: how far each step is from its floor here (the stages are the route's own
    helpers; "the rest" is the whole call less the Gram and the eigensolver)."""
    rows, cols = w.shape
    n, p = min(rows, cols), min(K + svd.OVERSAMPLE, min(rows, cols))
    square = np.asfortranarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    with threadpool_limits(1, user_api="blas"):
        sgemm = 2 * n**3 / timed(lambda: blas.sgemm(1.0, square, square), repeat) / 1e9
        square64 = square.astype(np.float64, order="F")
        dgemm = 2 * n**3 / timed(lambda: blas.dgemm(1.0, square64, square64), repeat) / 1e9
        x = np.ones(n, dtype=np.float32)
        symv = (
            2
            * n**2
            * 20
            / timed(lambda: [blas.ssymv(1.0, square, x) for _ in range(20)], repeat)
            / 1e9
        )
        gram = np.empty((n, n), dtype=np.float32, order="F")
        t_gram = timed(lambda: svd._gram(blas.ssyrk, w, gram), repeat)
        t_eig = (
            timed(lambda: svd._top_eigenpairs(svd._gram(blas.ssyrk, w, gram), p), repeat) - t_gram
        )
        lwork = int(lapack.ssytrd_lwork(n, lower=0)[0])
        t_trd = (
            timed(
                lambda: lapack.ssytrd(
                    svd._gram(blas.ssyrk, w, gram), lower=0, lwork=lwork, overwrite_a=1
                ),
                repeat,
            )
            - t_gram
        )
        t_all = timed(lambda: top_k_right_singular(w[None], K), repeat)
    rest = t_all - t_gram - t_eig
    print(
        f"\nWhere `precision=mixed` spends one expert (1 thread; this machine's BLAS: sgemm {sgemm:.0f}, "
        f"dgemm {dgemm:.0f}, ssymv {symv:.0f} GFLOP/s at n={n}):\n"
    )
    print("| stage | seconds | share | GFLOP | GFLOP/s |\n| --- | ---: | ---: | ---: | ---: |")
    for name, seconds, gflop in (
        (f"float32 Gram (ssyrk, {n} x {n})", t_gram, n * n * max(rows, cols) / 1e9),
        (f"ssyevr, top {p} eigenpairs", t_eig, None),
        (
            "- of which the tridiagonal reduction (ssytrd; half of it ssymv)",
            t_trd,
            4 / 3 * n**3 / 1e9,
        ),
        (
            "float64 Rayleigh-Ritz (two dgemm passes over W) and the rest",
            rest,
            4 * rows * cols * p / 1e9,
        ),
    ):
        rate = f"{gflop / seconds:.0f}" if gflop else ""
        flops = f"{gflop:.1f}" if gflop else ""
        print(f"| {name} | {seconds:.3f} | {seconds / t_all:.0%} | {flops} | {rate} |")
    print(f"| total | {t_all:.3f} | | | |")


def abs_cosines(vt: np.ndarray, vt_ref: np.ndarray) -> np.ndarray:
    """``|cos|`` between each row of ``vt`` and the reference's, in float64 (the angle, not float32
    norms)."""
    vt64 = np.asarray(vt, dtype=np.float64)
    vt64 = vt64 / np.linalg.norm(vt64, axis=1, keepdims=True)
    return np.abs(np.sum(vt64 * vt_ref, axis=1))


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


def bench_shape(name: str, rows: int, cols: int, values: str, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    methods: dict[str, Callable[[np.ndarray, int], Result]] = {
        NUMPY_SVD: numpy_full_svd,
        "0.1: f64 Gram (dsyrk) + scipy eigh evr + numpy matmul": method_v01,
        "precision=f64: f64 Gram + dsyevr, scipy BLAS, 1 thread": ours("f64"),
        "precision=mixed (default): f32 Gram + ssyevr + f64 Rayleigh-Ritz, 1 thread": ours("mixed"),
        "randomized subspace iteration (f32, 4 rounds)": lambda w, k: randomized_subspace_iteration(
            w, k, rng
        ),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    worst: dict[str, list[float]] = {m: [] for m in methods}
    median_cos: dict[str, list[float]] = {m: [] for m in methods}
    s_err: dict[str, list[float]] = {m: [] for m in methods}
    energy, n_allowed, experts, references = [], [], [], []
    for _ in range(args.experts):
        w = expert(rng, rows, cols, values)
        experts.append(w)
        _, s_ref, vt_ref = scipy.linalg.svd(
            w.astype(np.float64), full_matrices=False, lapack_driver="gesdd"
        )
        energy.append(np.sum(s_ref[:K] ** 2) / np.sum(s_ref**2))
        allowed = gap_allowing(s_ref, K)
        n_allowed.append(int(allowed.sum()))
        references.append((s_ref[:K], vt_ref[:K], allowed))
        for method_name, method in methods.items():
            for _ in range(1 if method_name == NUMPY_SVD else args.repeat):
                t0 = time.perf_counter()
                vt, s = method(w, K)
                times[method_name].append(time.perf_counter() - t0)
            cos = abs_cosines(vt, vt_ref[:K])
            worst[method_name].append(float((1 - cos[allowed]).max()))
            median_cos[method_name].append(float(np.median(cos)))
            if s is not None:
                s_err[method_name].append(float(np.max(np.abs(s - s_ref[:K]) / s_ref[:K])))
    base = float(np.median(times[NUMPY_SVD]))
    print(f"\n### {name} (x{args.experts} experts, K={K})\n")
    print(
        f"top-{K} energy fraction {np.mean(energy):.3f}; gap-allowing vectors (relative gap >= "
        f"{GAP_ALLOWS:g}): {min(n_allowed)}-{max(n_allowed)} of {K}\n"
    )
    print(
        "| method | s / expert | vs numpy SVD | 1 - min \\|cos\\| gap-allowing | median \\|cos\\| "
        "| max rel err of s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method_name in methods:
        t = float(np.median(times[method_name]))
        err = f"{max(s_err[method_name]):.1e}" if s_err[method_name] else "-"
        print(
            f"| {method_name} | {t:.3f} | {base / t:.1f}x | {max(worst[method_name]):.1e} "
            f"| {np.median(median_cos[method_name]):.6f} | {err} |"
        )
    if args.processes > 1:
        t = wall_per_expert_in_processes(experts, args.processes, args.repeat)
        print(
            f"| precision=mixed on {args.processes} single-thread processes (wall / expert) | {t:.3f} "
            f"| {base / t:.1f}x | (same bits as above) | | |"
        )
    if args.device == "cuda":
        batch = np.stack(experts)
        found = top_k_right_singular(
            batch, K, device="cuda"
        )  # also the warm-up: CUDA's start is not timed
        t = timed(lambda: top_k_right_singular(batch, K, device="cuda"), args.repeat) / len(experts)
        cos = [abs_cosines(v, vt_ref) for v, (_, vt_ref, _) in zip(found.vectors, references)]
        worst_cuda = max(
            float((1 - c[allowed]).max()) for c, (_, _, allowed) in zip(cos, references)
        )
        err = max(
            float(np.max(np.abs(s - s_ref) / s_ref))
            for s, (s_ref, _, _) in zip(found.singular_values, references)
        )
        print(
            f"| device=cuda, the {len(experts)} experts as one batch (wall / expert) | {t:.3f} | {base / t:.1f}x "
            f"| {worst_cuda:.1e} | {np.median([np.median(c) for c in cos]):.6f} | {err:.1e} |"
        )
    route_stages(experts[0], args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experts", type=int, default=3, help="experts per shape (median reported)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per expert of the fast methods")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for the multi-process row (1: skip it)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=svd.DEVICES,
        help="cuda (or auto, where torch sees a GPU) adds the CUDA route's row",
    )
    parser.add_argument(
        "--scale", type=int, default=1, help="divide both dimensions by this (smoke runs)"
    )
    args = parser.parse_args()
    args.device = svd.resolve_device(args.device)

    load_before = os.getloadavg()[0]  # other jobs on the machine skew the absolute times
    for name, (rows, cols, values) in SHAPES.items():
        rows, cols = rows // args.scale, cols // args.scale
        bench_shape(name if args.scale == 1 else f"{name} / {args.scale}", rows, cols, values, args)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; {blas_kernels()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )


if __name__ == "__main__":
    main()
