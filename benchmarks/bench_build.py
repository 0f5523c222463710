"""Building at real size: where the time goes in one layer, whether memory grows with layers,
and the whole command against numpy's SVD on several spectrum families.

Generates a DeepSeek-V4-Flash-format checkpoint with real expert dimensions (gate_proj 2048 x
4096 FP4 + E8M0, shared expert FP8, BF16 router) but fewer experts per layer, then

1. times one layer's stages with the builder's own functions: read (``LocalCheckpoint.read``),
   dequantize (``DeepseekV4.expert_gate_weights``), exact top-K (``svd.top_k_right_singular``),
   after one untimed batch (a build's buffers are warm after its first batch), and counts the
   SVD routes the experts took;
2. runs whole builds of 1 and of ``--layers`` layers, each in a fresh process on ``--workers``
   processes, and reports wall time, peak RSS (the build process and its largest worker) and the
   *core busy share*: CPU time of the build and its workers / (wall time x cores);
3. times the whole command ``vindex-hub build --layers 0`` (start-up, reading, writing the
   derived files included) against ``numpy.linalg.svd`` of the same layer's dequantized experts;
4. times the same command on a checkpoint of the same experts count and hidden size whose
   gate_proj has only ``OVERHEAD_ROWS`` rows (the SVD next to nothing, the files written the same
   size): what the command costs besides the SVD (start-up, reading, writing), best of
   ``--overhead-repeat`` runs, and the first run's core busy share.

With ``--spectra flat,spiky`` (families of ``vindex_hub.testing.synth.SPECTRUM_FAMILIES``; FP4
quantization fills "clustered"'s gaps and "rank-near-k"'s null space, so those two are only
measured by ``bench_svd.py``), steps 1 and 3 run on a checkpoint of each family, steps 2 and 4
on the first, and a last table sets the whole command's ratio against issue 24's targets (64 experts:
>= 14x flat, >= 12x spiky).

    python benchmarks/bench_build.py [--experts 16] [--layers 4] [--workers N] [--spectra flat]
        [--numpy-experts N] [--overhead-repeat 3] [--workdir DIR]

``--layers 1`` skips the multi-layer build. ``--scale 8`` divides the matrix dimensions by 8 (a
quick check that it runs, not figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vindex_hub.arch import get_architecture
from vindex_hub.builder.plan import default_workers
from vindex_hub.numerics import svd
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.testing.synth import SPECTRUM_FAMILIES, make_deepseek_v4_checkpoint

# Issue 24: the whole command at 64 experts, x numpy's SVD of them (2 single-thread workers).
WHOLE_COMMAND_TARGETS = {"flat": 14.0, "spiky": 12.0}

HIDDEN, MOE_INTERMEDIATE, NUM_FEATS, BATCH = 4096, 2048, 64, 8
OVERHEAD_ROWS = 128  # step 4's gate_proj rows: K = 64 still fits, the SVD costs next to nothing

BUILD_AND_MEASURE = """
import json, resource, sys, time
from vindex_hub.builder import build_vindex
t = time.perf_counter()
build_vindex(sys.argv[1], sys.argv[2], num_feats=64, layers=sys.argv[3], device="cpu", progress=False,
             workers=int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def stage_times(
    checkpoint: Path, layer: int, *, num_feats: int = NUM_FEATS, device: str = "cpu"
) -> dict[str, Any]:
    """Seconds one layer spends in read, dequantize and SVD (also used by bench_families.py)."""
    with LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        num_experts = arch.moe_config().n_routed_experts
        t0 = time.perf_counter()
        raw = src.read(arch.layer_tensors(layer))
        read = time.perf_counter() - t0
        buffer = np.empty((BATCH, *arch.gate_shape), dtype=np.float32)
        # A build's process reuses its buffers and its allocator's pages over every batch and
        # layer: one untimed batch first, or a layer of one batch is charged the first-touch page
        # faults (about 0.05 s an FP8 expert) and workspace set-up a real build pays once a worker.
        warm = arch.expert_gate_weights(
            layer, range(min(BATCH, num_experts)), raw, out=buffer[: min(BATCH, num_experts)]
        )
        svd.top_k_right_singular(warm[:1], num_feats, device=device)
        dequant = decompose = 0.0
        routes: Counter[str] = Counter()
        for start in range(0, num_experts, BATCH):
            experts = range(start, min(start + BATCH, num_experts))
            t0 = time.perf_counter()
            weights = arch.expert_gate_weights(layer, experts, raw, out=buffer[: len(experts)])
            t1 = time.perf_counter()
            routes.update(svd.top_k_right_singular(weights, num_feats, device=device).routes)
            t2 = time.perf_counter()
            dequant += t1 - t0
            decompose += t2 - t1
    return {
        "experts": num_experts,
        "read": read,
        "dequantize": dequant,
        "svd": decompose,
        "routes": ", ".join(f"{route} x{n}" for route, n in sorted(routes.items())),
    }


def _cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants: workers too
    return usage.ru_utime + usage.ru_stime


def run_measured(command: list[str]) -> tuple[str, float, float]:
    """Run ``command`` to its end: (its stdout, wall seconds, core busy share of it and its workers)."""
    cpu = _cpu_seconds_of_children()
    t = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    return result.stdout, wall, (_cpu_seconds_of_children() - cpu) / (wall * (os.cpu_count() or 1))


def build_in_fresh_process(
    checkpoint: Path, out: Path, layers: str, workers: int
) -> dict[str, float]:
    stdout, _, busy = run_measured(
        [sys.executable, "-c", BUILD_AND_MEASURE, str(checkpoint), str(out), layers, str(workers)]
    )
    return {**json.loads(stdout.strip().splitlines()[-1]), "busy": busy}


def whole_command(checkpoint: Path, out: Path, workers: int) -> tuple[float, float]:
    """``vindex-hub build --layers 0`` as a user runs it: (wall seconds, core busy share)."""
    _, wall, busy = run_measured(
        [
            sys.executable,
            "-m",
            "vindex_hub",
            "build",
            str(checkpoint),
            "-o",
            str(out),
            "--layers",
            "0",
            "--workers",
            str(workers),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    return wall, busy


def numpy_svd_seconds(checkpoint: Path, layer: int, experts: int) -> float:
    """``numpy.linalg.svd`` of the first ``experts`` dequantized experts of ``layer``, in seconds."""
    with LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config)
        raw = src.read(arch.layer_tensors(layer))
        total = 0.0
        for e in range(experts):
            w = arch.expert_gate_weights(layer, [e], raw)[0]
            t0 = time.perf_counter()
            np.linalg.svd(w, full_matrices=False)
            total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=16, help="routed experts per layer")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--workers", type=int, default=default_workers(), help="build worker processes")
    ap.add_argument(
        "--numpy-experts",
        type=int,
        default=None,
        help="experts numpy's SVD is timed on (default all; fewer are scaled up)",
    )
    ap.add_argument(
        "--spectra",
        default="flat",
        help="comma-separated spectrum families of the checkpoints (flat, spiky, power-law)",
    )
    ap.add_argument(
        "--scale", type=int, default=1, help="divide the matrix dimensions by this (smoke runs)"
    )
    ap.add_argument("--overhead-repeat", type=int, default=3, help="runs of step 4 (0: skip it)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    spectra = [f for f in args.spectra.split(",") if f]
    unknown = [f for f in spectra if not SPECTRUM_FAMILIES.get(f)]
    if unknown:
        ap.error(
            f"--spectra {unknown}: use FP4 families {[f for f, q in SPECTRUM_FAMILIES.items() if q]}"
        )
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-build-"))
    hidden, intermediate = HIDDEN // args.scale, MOE_INTERMEDIATE // args.scale
    load_before = os.getloadavg()[0]
    from bench_svd import blas_kernels  # the BLAS kernel line, as the SVD benchmark prints it

    print(f"BLAS: {blas_kernels()}")
    ratios = []
    for number, spectrum in enumerate(spectra):
        t = time.perf_counter()
        checkpoint = make_deepseek_v4_checkpoint(
            work / f"checkpoint-{spectrum}",
            num_layers=args.layers,
            num_experts=args.experts,
            hidden_size=hidden,
            moe_intermediate_size=intermediate,
            num_shards=args.layers,
            include_mtp=False,
            spectrum=spectrum,
        )
        size = sum(p.stat().st_size for p in checkpoint.iterdir()) / 1e9
        print(
            f"\n## spectrum {spectrum}\n\ngenerated {args.layers} layers x {args.experts} experts "
            f"at {intermediate} x {hidden} in {time.perf_counter() - t:.0f} s ({size:.2f} GB)"
        )

        s = stage_times(
            checkpoint, layer=args.layers - 1
        )  # a non-hash layer (it has a router bias)
        total = s["read"] + s["dequantize"] + s["svd"]
        print(f"\nSVD routes of the layer's experts: {s['routes']}")
        print("\n| stage (one layer) | seconds | per expert | share |\n| --- | --- | --- | --- |")
        for stage in ("read", "dequantize", "svd"):
            print(
                f"| {stage} | {s[stage]:.2f} | {s[stage] / s['experts']:.3f} | {s[stage] / total:.1%} |"
            )
        print(
            f"| read + dequantize vs svd | | | {(s['read'] + s['dequantize']) / s['svd']:.1%} of svd |"
        )

        if number == 0:
            builds_and_memory(checkpoint, work, args)

        timed = min(args.numpy_experts or args.experts, args.experts)
        numpy_seconds = numpy_svd_seconds(checkpoint, 0, timed) * args.experts / timed
        wall, busy = whole_command(checkpoint, work / f"out-command-{spectrum}", args.workers)
        print(
            f"\n| whole command, layer 0 ({args.experts} experts, {args.workers} workers) | seconds | core busy |"
            f" vs numpy SVD of the same experts |\n| --- | --- | --- | --- |"
        )
        print(
            f"| `vindex-hub build --layers 0` | {wall:.1f} | {busy:.0%} | {numpy_seconds / wall:.1f}x |"
        )
        print(
            f"| numpy.linalg.svd x {args.experts}"
            + (f" (timed on {timed})" if timed < args.experts else "")
            + f" | {numpy_seconds:.1f} | | 1.0x |"
        )
        ratios.append((spectrum, s["routes"], wall, numpy_seconds))

    if args.overhead_repeat > 0:
        overhead(work, args, hidden)

    print(
        "\n| spectrum | routes | whole command s | numpy SVD s | ratio | target (64 experts) |"
        "\n| --- | --- | ---: | ---: | ---: | ---: |"
    )
    for spectrum, routes, wall, numpy_seconds in ratios:
        target = WHOLE_COMMAND_TARGETS.get(spectrum)
        print(
            f"| {spectrum} | {routes} | {wall:.1f} | {numpy_seconds:.1f} | {numpy_seconds / wall:.1f}x "
            f"| {f'>= {target:g}x' if target else '-'} |"
        )
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{blas_kernels()}"
    )


def overhead(work: Path, args: argparse.Namespace, hidden: int) -> None:
    """Step 4: the whole command where the SVD costs next to nothing (see the module docstring)."""
    checkpoint = make_deepseek_v4_checkpoint(
        work / "checkpoint-overhead",
        num_layers=1,
        num_experts=args.experts,
        hidden_size=hidden,
        moe_intermediate_size=OVERHEAD_ROWS,
        num_shards=1,
        include_mtp=False,
    )
    runs = [
        whole_command(checkpoint, work / f"out-overhead-{i}", args.workers)
        for i in range(args.overhead_repeat)
    ]
    print(
        f"\n| whole command besides the SVD ({args.experts} experts, gate_proj {OVERHEAD_ROWS} x "
        f"{hidden}, {args.workers} workers) | best of {len(runs)} s | runs s | core busy (first) |"
        "\n| --- | ---: | --- | ---: |"
    )
    print(
        f"| start-up + reading + writing | {min(w for w, _ in runs):.2f} "
        f"| {', '.join(f'{w:.2f}' for w, _ in runs)} | {runs[0][1]:.0%} |"
    )


def builds_and_memory(checkpoint: Path, work: Path, args: argparse.Namespace) -> None:
    """Step 2: whole builds of 1 and of ``args.layers`` layers (the latter skipped at 1 layer)."""
    one = build_in_fresh_process(checkpoint, work / "out-1", "0", args.workers)
    runs = [("1 layer", one, 1)]
    if args.layers > 1:
        many = build_in_fresh_process(
            checkpoint, work / f"out-{args.layers}", f"0-{args.layers - 1}", args.workers
        )
        runs.append((f"{args.layers} layers", many, args.layers))
    print(
        f"\n| build ({args.workers} workers) | seconds | per expert | core busy | peak RSS (build, largest worker) |"
        "\n| --- | --- | --- | --- | --- |"
    )
    for name, run, count in runs:
        print(
            f"| {name} | {run['seconds']:.1f} | {run['seconds'] / (count * args.experts):.2f} | {run['busy']:.0%} "
            f"| {run['peak_rss_mib']:.0f} MiB, {run['worker_peak_rss_mib']:.0f} MiB |"
        )
    if args.layers > 1:
        many = runs[1][1]
        print(
            f"| ratio {args.layers} layers / 1 | | | | {many['peak_rss_mib'] / one['peak_rss_mib']:.2f}x, "
            f"{many['worker_peak_rss_mib'] / max(one['worker_peak_rss_mib'], 1):.2f}x |"
        )


if __name__ == "__main__":
    main()
