"""Building at real size: where the time goes in one layer, and whether memory grows with layers.

Generates a DeepSeek-V4-Flash-format checkpoint with real expert dimensions (gate_proj 2048 x
4096 FP4 + E8M0, shared expert FP8, BF16 router) but fewer experts per layer, then

1. times one layer's stages with the builder's own functions: read (``LocalCheckpoint.read``),
   dequantize (``DeepseekV4.expert_gate_weights``), exact top-K (``svd.top_k_right_singular``);
2. runs whole builds of 1 and of 4 layers, each in a fresh process, and reports peak RSS.

    python benchmarks/bench_build.py [--experts 8] [--layers 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vindex_hub.numerics import svd
from vindex_hub.arch import get_architecture
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

HIDDEN, MOE_INTERMEDIATE, NUM_FEATS, BATCH = 4096, 2048, 64, 8

BUILD_AND_MEASURE = """
import json, resource, sys, time
from vindex_hub.build import build_vindex
t = time.perf_counter()
build_vindex(sys.argv[1], sys.argv[2], num_feats=64, layers=sys.argv[3], device="cpu", progress=False)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def stage_times(checkpoint: Path, layer: int, *, num_feats: int = NUM_FEATS, device: str = "cpu") -> dict[str, float]:
    """Seconds one layer spends in read, dequantize and SVD (also used by bench_families.py)."""
    with LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        num_experts = arch.moe_config().n_routed_experts
        t0 = time.perf_counter()
        raw = src.read(arch.layer_tensors(layer))
        read = time.perf_counter() - t0
        buffer = np.empty((BATCH, *arch.gate_shape), dtype=np.float32)
        dequant = decompose = 0.0
        for start in range(0, num_experts, BATCH):
            experts = range(start, min(start + BATCH, num_experts))
            t0 = time.perf_counter()
            weights = arch.expert_gate_weights(layer, experts, raw, out=buffer[: len(experts)])
            t1 = time.perf_counter()
            svd.top_k_right_singular(weights, num_feats, device=device)
            t2 = time.perf_counter()
            dequant += t1 - t0
            decompose += t2 - t1
    return {"experts": num_experts, "read": read, "dequantize": dequant, "svd": decompose}


def build_in_fresh_process(checkpoint: Path, out: Path, layers: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", BUILD_AND_MEASURE, str(checkpoint), str(out), layers],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=8, help="routed experts per layer")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-build-"))

    t = time.perf_counter()
    checkpoint = make_deepseek_v4_checkpoint(
        work / "checkpoint", num_layers=args.layers, num_experts=args.experts, hidden_size=HIDDEN,
        moe_intermediate_size=MOE_INTERMEDIATE, num_shards=args.layers, include_mtp=False)
    print(f"generated {args.layers} layers x {args.experts} experts at 2048 x 4096 in "
          f"{time.perf_counter() - t:.0f} s ({sum(p.stat().st_size for p in checkpoint.iterdir()) / 1e9:.2f} GB)")

    s = stage_times(checkpoint, layer=args.layers - 1)  # a non-hash layer (it has a router bias)
    total = s["read"] + s["dequantize"] + s["svd"]
    print("\n| stage (one layer) | seconds | per expert | share |\n| --- | --- | --- | --- |")
    for stage in ("read", "dequantize", "svd"):
        print(f"| {stage} | {s[stage]:.2f} | {s[stage] / s['experts']:.3f} | {s[stage] / total:.1%} |")
    print(f"| read + dequantize vs svd | | | {(s['read'] + s['dequantize']) / s['svd']:.1%} of svd |")

    one = build_in_fresh_process(checkpoint, work / "out-1", "0")
    many = build_in_fresh_process(checkpoint, work / f"out-{args.layers}", f"0-{args.layers - 1}")
    print(f"\n| build | seconds | per expert | peak RSS |\n| --- | --- | --- | --- |")
    print(f"| 1 layer | {one['seconds']:.1f} | {one['seconds'] / args.experts:.2f} | {one['peak_rss_mib']:.0f} MiB |")
    print(f"| {args.layers} layers | {many['seconds']:.1f} | "
          f"{many['seconds'] / (args.layers * args.experts):.2f} | {many['peak_rss_mib']:.0f} MiB |")
    print(f"| ratio | | | {many['peak_rss_mib'] / one['peak_rss_mib']:.2f}x |")


if __name__ == "__main__":
    main()
