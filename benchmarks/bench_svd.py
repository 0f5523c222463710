"""Exact top-K SVD per expert at real size, on a set of spectrum families, side by side.

One process run measures, on the same expert matrices (K=64), for each spectrum family of
``vindex_hub.testing.synth.SPECTRUM_FAMILIES`` at FP4-like ``2048 x 4096`` (DeepSeek-V4-Flash's
routed gate_proj shape): "flat" (V4-like, top-64 energy near 0.11), "spiky" (a Marchenko-Pastur
bulk + 4 spikes of 0.3-1.5 x its Frobenius norm, per-input scales 0.5-1.5), "power-law" (top-64
energy ~0.85), "clustered" (every gap at the promise's bound, float32 values) and "rank-near-k"
(rank K + 4, float32 values); and, with ``--fp8``, the flat FP8-like ``2048 x 7168`` shape:

* ``numpy.linalg.svd(W, full_matrices=False)`` (the naive builder; float64 inside, so exact),
* ``top_k_right_singular(precision="f64")`` and the default ``precision="mixed"``
  (``vindex_hub.numerics.svd``: the route chosen per matrix by its probe), both with one BLAS
  thread, in this process, with the routes the matrices took,
* the mixed route without its probe (as before issue 24, less its old steep-spectrum guard): a
  float32 attempt on every matrix, the float64 route after it where the certificate refuses it
  (the attempt thrown away),
* on families the probe deflates, the candidate it was measured against: a float64 Gram matrix,
  deflated in float64, then the float32 eigensolver and the same Rayleigh-Ritz step,
* the mixed route on ``--processes`` spawned single-thread processes mapping the experts from
  shared memory (how a build runs it: ``--workers``), reported as wall time per expert: the
  figure the targets are set on,
* where torch sees a GPU (``--device auto``, the default, or ``cuda``), the CUDA route on all the
  experts of a family as one batch (how a build runs it), wall time per expert, transfers included,
* on "flat" only, the 0.1 method (float64 Gram ``dsyrk`` + ``scipy.linalg.eigh`` + numpy matmul)
  and 4-round randomized subspace iteration in float32 (LarQL's MoE summary mode),

then where the mixed route's time goes on one flat expert (Gram, eigensolver, its tridiagonal
reduction, Rayleigh-Ritz, the probe) next to this machine's sgemm/dgemm/ssymv rates. It scores
each method's top-K against a float64 LAPACK reference
(``scipy.linalg.svd(W.astype(float64), lapack_driver="gesdd")``): the worst ``1 - |cos|`` over
*gap-allowing* vectors (singular value gap to both neighbours ``>= GAP_ALLOWS x s_0``: only those
does the matrix determine), the median ``|cos|`` over all, and the worst relative error of the
singular values. A summary table ends the run: per family, the routes, seconds per expert and
the ratio to numpy's SVD, against the targets of issue 24.

Usage: ``python benchmarks/bench_svd.py [--experts 3] [--repeat 3] [--processes 2] [--device auto]
[--families flat,spiky,...] [--fp8] [--scale 1]``; prints markdown tables and the BLAS kernel
(OpenBLAS core type, from threadpoolctl). ``--scale 8`` divides both dimensions by 8 (a quick
check that the script runs, not figures). The full SVD runs once per expert, the others
``--repeat`` times; times are medians. Run it on a quiet machine and report the load average it
prints.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
from bench_load import timed  # median wall seconds of repeated runs
from scipy.linalg import blas, lapack
from scipy.linalg.blas import dsyrk
from threadpoolctl import threadpool_info, threadpool_limits

from vindex_hub.builder.engine import blas_thread_environment
from vindex_hub.numerics import svd
from vindex_hub.numerics.svd import top_k_right_singular
from vindex_hub.testing import synth

K = 64
GAP_ALLOWS = 1e-4
NUMPY_SVD = "numpy.linalg.svd(full_matrices=False)"
FP4_SHAPE = (2048, 4096)  # DeepSeek-V4-Flash's routed gate_proj
FP8_SHAPE = (2048, 7168)  # a 7168-hidden family's routed gate_proj (E4M3 + float32 block scales)
FP8 = "fp8"
# Issue 24's targets: mixed route on 2 single-thread processes, x numpy's full SVD (None: report).
TARGETS = {"flat": 17.0, "spiky": 15.0, "power-law": 10.0, "clustered": None, "rank-near-k": None}

Result = tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]  # (Vt rows, s or None, routes)


def expert(rng: np.random.Generator, rows: int, cols: int, family: str) -> np.ndarray:
    """The exact float32 values of one expert of a spectrum family (or of the FP8-like shape)."""
    if family == FP8:
        return synth.quantize_fp8(synth.gate_matrix(rng, rows, cols), scale_dtype="F32")[2]
    return synth.family_expert(rng, rows, cols, family, k=K)


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
    return (w64.T @ u[:, ::-1] / s).T, s, ()


def numpy_full_svd(w: np.ndarray, k: int) -> Result:
    _, s, vt = np.linalg.svd(w, full_matrices=False)
    return vt[:k], s[:k], ()


def ours(precision: str) -> Callable[[np.ndarray, int], Result]:
    def run(w: np.ndarray, k: int) -> Result:
        top = top_k_right_singular(w[None], k, precision=precision)
        return top.vectors[0], top.singular_values[0], top.routes

    return run


def before_the_probe(w: np.ndarray, k: int) -> Result:
    """The mixed route without its probe: a float32 attempt on every matrix (no deflation), the
    float64 route where the certificate refuses it, the attempt thrown away. (Before issue 24 a
    guard after the float32 eigensolver also refused ranks near K, which the certificate keeps.)"""
    w64 = w.astype(np.float64)
    with threadpool_limits(1, user_api="blas"):
        found = svd._mixed_route(w, w64, k, "expert", None)
        route = svd.ROUTE_MIXED
        if found is None:
            found, route = svd._f64_route(w64, k, "expert"), svd.ROUTE_F64
    return found[1], found[0], (route,)


def f64_gram_deflated(w: np.ndarray, k: int) -> Result:
    """The candidate the deflated route was measured against: the float64 Gram matrix (dsyrk),
    the probe's strong directions projected out of it in float64, then the float32 eigensolver of
    the deflated Gram matrix and the same Rayleigh-Ritz step and certificate (float64 where it
    refuses)."""
    w64 = w.astype(np.float64)
    with threadpool_limits(1, user_api="blas"):
        energy = float(blas.ddot(w64.reshape(-1), w64.reshape(-1)))
        route, strong = svd._choose_route(w, energy, k)
        if strong is None:
            return before_the_probe(w, k)
        u = strong[0]
        n = min(w.shape)
        gram = svd._gram(dsyrk, w64, np.empty((n, n), order="F"))
        gram = np.triu(gram) + np.triu(gram, 1).T
        gu = blas.dgemm(1.0, gram, u)
        gram -= blas.dgemm(1.0, gu, u, trans_b=1) + blas.dgemm(1.0, u, gu, trans_b=1)
        gram += blas.dgemm(1.0, u, blas.dgemm(1.0, blas.dgemm(1.0, u, gu, trans_a=1), u, trans_b=1))
        found = svd._top_eigenpairs(np.asfortranarray(gram, dtype=np.float32), k + svd.OVERSAMPLE)
        assert found is not None
        q = svd._orthonormal(np.hstack([u, found[1]]))
        b = blas.dgemm(1.0, w64.T, q)
        theta, y = svd._top_eigenpairs(
            blas.dsyrk(1.0, b, trans=1, lower=0), q.shape[1], everything=True
        )
        theta, y = theta[::-1], np.asfortranarray(y[:, ::-1])
        by = blas.dgemm(1.0, b, y)
        residual = blas.dgemm(1.0, w64.T, by, trans_a=1) - blas.dgemm(1.0, q, y) * theta
        if not svd._ritz_pairs_certain(theta, np.sqrt(np.sum(residual**2, axis=0)), k):
            s, vt = svd._f64_route(w64, k, "expert")
            return vt, s, (svd.ROUTE_F64,)
        s = np.sqrt(theta[:k])
        return by[:, :k].T / s[:, None], s, (route,)


def randomized_subspace_iteration(w: np.ndarray, k: int, rng: np.random.Generator) -> Result:
    """LarQL's summary mode: float32, oversampling 8, 4 power iterations with re-orthonormalization."""
    omega = rng.standard_normal((w.shape[1], k + 8)).astype(np.float32)
    q, _ = np.linalg.qr(w @ omega)
    for _ in range(4):
        p, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ p)
    _, _, vt = np.linalg.svd(q.T @ w, full_matrices=False)
    return vt[:k], None, ()


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
        probe_start = svd._probe_start(n)
        t_probe = timed(lambda: svd._block_power(w, probe_start, svd.PROBE_STEPS), repeat)
    rest = t_all - t_gram - t_eig - t_probe
    print(
        f"\nWhere `precision=mixed` spends one expert (1 thread; this machine's BLAS: sgemm {sgemm:.0f}, "
        f"dgemm {dgemm:.0f}, ssymv {symv:.0f} GFLOP/s at n={n}):\n"
    )
    print("| stage | seconds | share | GFLOP | GFLOP/s |\n| --- | ---: | ---: | ---: | ---: |")
    for name, seconds, gflop in (
        (
            f"the route's probe ({svd.PROBE_STEPS} block power step, {svd.PROBE_BLOCK} vectors)",
            t_probe,
            4 * rows * cols * svd.PROBE_BLOCK * svd.PROBE_STEPS / 1e9,
        ),
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
    """Which BLAS kernel (OpenBLAS core type, e.g. Haswell = AVX2, SkylakeX = AVX-512) and thread
    count numpy's and scipy's libraries run, from threadpoolctl."""
    found = [
        f"{Path(info['filepath']).name}: {info['internal_api']} {info.get('version')} "
        f"{info.get('architecture')} x{info['num_threads']} threads"
        for info in threadpool_info()
        if info["user_api"] == "blas"
    ]
    return "; ".join(found) or "no BLAS found"


def bench_family(family: str, rows: int, cols: int, args: argparse.Namespace) -> dict[str, object]:
    """One family's table; returns its summary row."""
    rng = np.random.default_rng([0, zlib.crc32(family.encode())])
    methods: dict[str, Callable[[np.ndarray, int], Result]] = {
        NUMPY_SVD: numpy_full_svd,
        "precision=f64: f64 Gram + dsyevr, 1 thread": ours("f64"),
        "no probe: f32 attempt on every matrix, f64 where refused, 1 thread": before_the_probe,
        "precision=mixed (default): probe + route, 1 thread": ours("mixed"),
    }
    if family == "flat":
        methods["0.1: f64 Gram (dsyrk) + scipy eigh evr + numpy matmul"] = method_v01
        methods["randomized subspace iteration (f32, 4 rounds)"] = lambda w, k: (
            randomized_subspace_iteration(w, k, rng)
        )
    times: dict[str, list[float]] = {m: [] for m in methods}
    worst: dict[str, list[float]] = {m: [] for m in methods}
    median_cos: dict[str, list[float]] = {m: [] for m in methods}
    s_err: dict[str, list[float]] = {m: [] for m in methods}
    routes: dict[str, Counter[str]] = {m: Counter() for m in methods}
    energy, n_allowed, experts, references = [], [], [], []
    for e in range(args.experts):
        w = expert(rng, rows, cols, family)
        experts.append(w)
        _, s_ref, vt_ref = scipy.linalg.svd(
            w.astype(np.float64), full_matrices=False, lapack_driver="gesdd"
        )
        energy.append(np.sum(s_ref[:K] ** 2) / np.sum(s_ref**2))
        allowed = gap_allowing(s_ref, K)
        n_allowed.append(int(allowed.sum()))
        references.append((s_ref[:K], vt_ref[:K], allowed))
        if e == 0 and svd.choose_route(w, K) == svd.ROUTE_DEFLATED:
            methods["candidate: f64 Gram, deflated in f64, + ssyevr + f64 Rayleigh-Ritz"] = (
                f64_gram_deflated
            )
            for table in (times, worst, median_cos, s_err):
                table.setdefault(list(methods)[-1], [])
            routes.setdefault(list(methods)[-1], Counter())
        for method_name, method in methods.items():
            for _ in range(1 if method_name == NUMPY_SVD else args.repeat):
                t0 = time.perf_counter()
                vt, s, taken = method(w, K)
                times[method_name].append(time.perf_counter() - t0)
            routes[method_name].update(taken)
            cos = abs_cosines(vt, vt_ref[:K])
            worst[method_name].append(float((1 - cos[allowed]).max()) if allowed.any() else 0.0)
            median_cos[method_name].append(float(np.median(cos)))
            if s is not None:
                s_err[method_name].append(float(np.max(np.abs(s - s_ref[:K]) / s_ref[:K])))
    base = float(np.median(times[NUMPY_SVD]))
    name = f"{family}, {'FP8-like' if family == FP8 else 'FP4-like' if synth.SPECTRUM_FAMILIES.get(family) else 'float32'} {rows} x {cols}"
    print(f"\n### {name} (x{args.experts} experts, K={K})\n")
    print(
        f"top-{K} energy fraction {np.mean(energy):.3f}; gap-allowing vectors (relative gap >= "
        f"{GAP_ALLOWS:g}): {min(n_allowed)}-{max(n_allowed)} of {K}\n"
    )
    print(
        "| method | routes | s / expert | vs numpy SVD | 1 - min \\|cos\\| gap-allowing "
        "| median \\|cos\\| | max rel err of s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for method_name in methods:
        t = float(np.median(times[method_name]))
        err = f"{max(s_err[method_name]):.1e}" if s_err[method_name] else "-"
        print(
            f"| {method_name} | {describe_routes(routes[method_name], args.repeat)} | {t:.3f} "
            f"| {base / t:.1f}x | {max(worst[method_name]):.1e} "
            f"| {np.median(median_cos[method_name]):.6f} | {err} |"
        )
    mixed = "precision=mixed (default): probe + route, 1 thread"
    parallel = None
    if args.processes > 1:
        parallel = wall_per_expert_in_processes(experts, args.processes, args.repeat)
        print(
            f"| precision=mixed on {args.processes} single-thread processes (wall / expert) | "
            f"| {parallel:.3f} | {base / parallel:.1f}x | (same bits as above) | | |"
        )
    if args.device == "cuda":
        batch = np.stack(experts)
        found = top_k_right_singular(batch, K, device="cuda")  # the warm-up: CUDA's start untimed
        t = timed(lambda: top_k_right_singular(batch, K, device="cuda"), args.repeat) / len(experts)
        cos = [abs_cosines(v, vt_ref) for v, (_, vt_ref, _) in zip(found.vectors, references)]
        worst_cuda = max(
            float((1 - c[allowed]).max()) if allowed.any() else 0.0
            for c, (_, _, allowed) in zip(cos, references)
        )
        err = max(
            float(np.max(np.abs(s - s_ref) / s_ref))
            for s, (s_ref, _, _) in zip(found.singular_values, references)
        )
        print(
            f"| device=cuda, the {len(experts)} experts as one batch (wall / expert) | cuda-f64 "
            f"| {t:.3f} | {base / t:.1f}x | {worst_cuda:.1e} "
            f"| {np.median([np.median(c) for c in cos]):.6f} | {err:.1e} |"
        )
    if family == "flat":
        route_stages(experts[0], args.repeat)
    t_mixed = float(np.median(times[mixed]))
    return {
        "family": name,
        "energy": float(np.mean(energy)),
        "routes": describe_routes(routes[mixed], args.repeat),
        "numpy": base,
        "mixed": t_mixed,
        "parallel": parallel,
        "worst": max(worst[mixed]),
        "s_err": max(s_err[mixed]),
        "target": TARGETS.get(family),
    }


def describe_routes(taken: Counter[str], repeat: int) -> str:
    """``cpu-mixed x3, cpu-f64 x1``: the routes the experts took (each run ``repeat`` times)."""
    if not taken:
        return ""
    return ", ".join(
        f"{route} x{count // repeat or count}" for route, count in sorted(taken.items())
    )


def print_summary(rows: list[dict[str, object]], processes: int) -> None:
    print(
        f"\n### Summary: the default route per family (vs numpy's full SVD in the same run; "
        f"targets on {processes} single-thread processes)\n"
    )
    print(
        "| family | top-64 energy | routes | numpy s / expert | mixed s / expert (1 thread) "
        f"| x numpy (1 thread) | x numpy ({processes} processes) | target "
        "| 1 - min \\|cos\\| | max rel err of s |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        numpy_s, mixed_s, parallel = row["numpy"], row["mixed"], row["parallel"]
        assert isinstance(numpy_s, float) and isinstance(mixed_s, float)
        ratio = f"{numpy_s / parallel:.1f}x" if isinstance(parallel, float) else "-"
        target = row["target"]
        goal = (
            f">= {target:g}x"
            if target
            else "no attempt thrown away"
            if row["family"].startswith(("clustered", "rank-near-k"))
            else "-"
        )
        print(
            f"| {row['family']} | {row['energy']:.3f} | {row['routes']} | {numpy_s:.2f} "
            f"| {mixed_s:.3f} | {numpy_s / mixed_s:.1f}x | {ratio} | {goal} | {row['worst']:.1e} "
            f"| {row['s_err']:.1e} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experts", type=int, default=3, help="experts per family (median reported)"
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
        "--families",
        default=",".join(synth.SPECTRUM_FAMILIES),
        help=f"comma-separated spectrum families, of {', '.join(synth.SPECTRUM_FAMILIES)}",
    )
    parser.add_argument("--fp8", action="store_true", help="also the flat FP8-like 2048 x 7168")
    parser.add_argument(
        "--scale", type=int, default=1, help="divide both dimensions by this (smoke runs)"
    )
    args = parser.parse_args()
    args.device = svd.resolve_device(args.device)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(synth.SPECTRUM_FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}: use {', '.join(synth.SPECTRUM_FAMILIES)}")

    load_before = os.getloadavg()[0]  # other jobs on the machine skew the absolute times
    print(f"BLAS: {blas_kernels()}")
    summary = []
    for family in families + ([FP8] if args.fp8 else []):
        rows, cols = FP8_SHAPE if family == FP8 else FP4_SHAPE
        summary.append(bench_family(family, rows // args.scale, cols // args.scale, args))
    print_summary(summary, args.processes)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; {blas_kernels()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )


if __name__ == "__main__":
    main()
