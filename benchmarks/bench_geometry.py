"""Expert geometry at DeepSeek-V4-Flash size: what it adds to a build, what ``compare`` costs.

One run measures, on one layer of ``--experts`` x ``--num-feats`` x ``--hidden`` random
orthonormal float32 subspaces (256 x 64 x 4096 by default, a DeepSeek-V4-Flash layer):

* ``numerics.geometry.overlaps`` with singular values (plain + energy-weighted overlaps of every
  pair: the build's ``--geometry`` step for one layer), and ``router_alignment`` against a
  ``(experts, hidden)`` router;
* the same layer's exact top-K SVD, for the comparison the target is stated in: ``--svd-experts``
  Gaussian ``--intermediate x --hidden`` float32 matrices through ``numerics.svd``'s default
  (mixed) route with one BLAS thread each, as a build's workers run them, extrapolated to the
  layer's experts and divided by ``--workers`` (default: the cores this process may use);
* ``compare_layers`` of two such layers (the full cross overlap + ``linear_sum_assignment``);
* the peak of memory allocated by each step (``tracemalloc``, which sees numpy's buffers), next
  to the size of one layer;
* the accuracy of the overlaps against float64 on the first 8 experts;
* geometry and SVD both on one BLAS thread (the ratio a busy machine distorts least).

Usage: ``python benchmarks/bench_geometry.py [--scale 1] [--svd-experts 4] [--repeat 3]``;
``--scale 8`` divides the hidden and intermediate sizes and the expert count by 8 (a quick check
that the script runs, not figures). Prints a markdown table; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize  # noqa: F401 (imported before timing: compare's matching uses it)
from threadpoolctl import threadpool_info, threadpool_limits

from vindex_hub.numerics import geometry as geo
from vindex_hub.numerics import svd


def measured(fn: Callable[[], Any], repeat: int) -> tuple[float, int, Any]:
    """Median wall seconds of ``fn()`` over ``repeat`` runs, the peak bytes it allocated, its result."""
    times, peak, out = [], 0, None
    for _ in range(repeat):
        tracemalloc.start()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return float(np.median(times)), peak, out


def random_layer(rng: np.random.Generator, e: int, k: int, h: int) -> np.ndarray:
    out = np.empty((e, k, h), dtype=np.float32)
    for i in range(e):
        out[i] = np.linalg.qr(rng.standard_normal((h, k), dtype=np.float32))[0].T
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--num-feats", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--svd-experts", type=int, default=4)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()
    e = max(2, args.experts // args.scale)
    k, h = args.num_feats // max(1, args.scale // 4 or 1), args.hidden // args.scale
    inter = args.intermediate // args.scale
    rng = np.random.default_rng(0)
    a = random_layer(rng, e, k, h)
    b = random_layer(rng, e, k, h)
    s = np.sort(rng.uniform(0.5, 5.0, (e, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    router = rng.standard_normal((e, h)).astype(np.float32)
    layer_bytes = a.nbytes

    t_overlap, m_overlap, result = measured(lambda: geo.overlaps(a, s), args.repeat)
    t_align, m_align, _ = measured(lambda: geo.router_alignment(a, router), args.repeat)
    t_compare, m_compare, _ = measured(lambda: geo.compare_layers(a, b), args.repeat)
    with threadpool_limits(1):  # one core against one core: robust to a busy machine
        t_single, _, _ = measured(lambda: (geo.overlaps(a, s), geo.router_alignment(a, router)), 1)

    sub = a[:8].astype(np.float64).reshape(-1, h)
    ref = ((sub @ sub.T) ** 2).reshape(8, k, 8, k).sum(axis=(1, 3)) / k
    worst = float(np.max(np.abs(result.plain[:8, :8] - ref)))

    weights = rng.standard_normal((args.svd_experts, inter, h)).astype(np.float32)
    t = time.perf_counter()
    svd.top_k_right_singular(weights, k, device="cpu", blas_threads=1)
    per_expert = (time.perf_counter() - t) / args.svd_experts
    layer_svd = per_expert * e / args.workers

    geometry_s = t_overlap + t_align
    blas = ", ".join(f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info())
    print(
        f"layer {e} experts x {k} x {h} (one layer: {layer_bytes / 2**20:.0f} MiB); BLAS {blas}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| step | seconds | peak allocated | note |")
    print("| --- | --- | --- | --- |")
    print(
        f"| overlaps (plain + energy-weighted), one layer | {t_overlap:.2f} | "
        f"{m_overlap / 2**20:.0f} MiB | worst error vs float64: {worst:.1e} |"
    )
    print(f"| router alignment, one layer | {t_align:.2f} | {m_align / 2**20:.0f} MiB | |")
    print(
        f"| exact top-{k} SVD, one layer ({args.workers} worker(s)) | {layer_svd:.1f} | | "
        f"{per_expert:.2f} s an expert ({inter} x {h}), {args.svd_experts} measured |"
    )
    print(f"| geometry / SVD | {geometry_s / layer_svd:.1%} | | target <= 25% |")
    print(
        f"| the same, one BLAS thread each: geometry {t_single:.1f} s / SVD "
        f"{per_expert * e:.1f} s | {t_single / (per_expert * e):.1%} | | |"
    )
    print(
        f"| compare_layers of two layers (cross + matching) | {t_compare:.2f} | "
        f"{m_compare / 2**20:.0f} MiB | inputs: 2 x {layer_bytes / 2**20:.0f} MiB |"
    )


if __name__ == "__main__":
    main()
