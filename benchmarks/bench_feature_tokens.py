"""Feature tokens' cost next to the SVD's, at real size, extrapolated to DeepSeek-V4-Flash.

One run times, on the same machine:

* ``numerics.feature_tokens.top_abs_cosine`` for ``--vectors`` unit gate vectors against a
  ``--vocab x --hidden`` embedding (real: 129280 x 4096), K = ``--k``;
* ``numerics.svd.top_k_right_singular`` of ``--experts`` expert matrices (real: 2048 x 4096, K=64),

and scales both to the whole model (43 layers x 256 experts x 64 vectors = 704,512 vectors;
11,008 experts): the cosine matmul is ``vectors x vocab x hidden`` = 3.7e14 multiply-adds. Prints
a markdown table: seconds measured, multiply-adds per second, extrapolated full-model hours.

Usage (real size, ~1 min on 2 cores, ~5 GB of memory for the float32 embedding and its unit rows):
``python benchmarks/bench_feature_tokens.py --device cpu``; on a GPU add ``--device cuda
--vectors 16384`` (one layer). Tiny smoke run: ``--vocab 4096 --hidden 256 --vectors 256
--experts 1 --rows 256``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vindex_hub.numerics.feature_tokens import UnitEmbedding, top_abs_cosine
from vindex_hub.numerics.svd import DEVICES, resolve_device, top_k_right_singular

V4_FLASH_VECTORS = 43 * 256 * 64
V4_FLASH_EXPERTS = 43 * 256
V4_FLASH_VOCAB, V4_FLASH_HIDDEN, V4_FLASH_INTER = 129280, 4096, 2048


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=V4_FLASH_VOCAB)
    ap.add_argument("--hidden", type=int, default=V4_FLASH_HIDDEN)
    ap.add_argument(
        "--rows", type=int, default=V4_FLASH_INTER, help="rows of an expert's gate_proj"
    )
    ap.add_argument(
        "--vectors", type=int, default=1024, help="gate vectors labelled in the timed run"
    )
    ap.add_argument(
        "--experts", type=int, default=2, help="experts decomposed in the timed SVD run"
    )
    ap.add_argument("--k", type=int, default=10, help="feature tokens per vector")
    ap.add_argument("--device", default="cpu", choices=DEVICES)
    args = ap.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)

    embedding = rng.standard_normal((args.vocab, args.hidden), dtype=np.float32) * 0.02
    unit = UnitEmbedding.of(embedding)
    vectors = rng.standard_normal((args.vectors, args.hidden), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    top_abs_cosine(vectors[:8], unit, args.k, device=device)  # warm-up (BLAS threads, CUDA context)
    t0 = time.perf_counter()
    top_abs_cosine(vectors, unit, args.k, device=device)
    tokens_s = time.perf_counter() - t0
    macs = args.vectors * args.vocab * args.hidden
    full_macs = V4_FLASH_VECTORS * V4_FLASH_VOCAB * V4_FLASH_HIDDEN
    tokens_full_h = (
        tokens_s / macs * full_macs / 3600
    )  # the matmul dominates: time scales with mult-adds

    weights = rng.standard_normal((args.experts, args.rows, args.hidden), dtype=np.float32) * 0.02
    t0 = time.perf_counter()
    top_k_right_singular(weights, min(64, args.rows), device=device)
    svd_s = time.perf_counter() - t0
    svd_full_h = svd_s / args.experts * V4_FLASH_EXPERTS / 3600
    # the SVD's time scales with rows x hidden^2: rescale a reduced run to real size
    svd_full_h *= (V4_FLASH_INTER * V4_FLASH_HIDDEN**2) / (args.rows * args.hidden**2)

    print(f"device {device}; embedding {args.vocab} x {args.hidden}, K = {args.k}\n")
    print("| stage | measured | seconds | rate | DeepSeek-V4-Flash, extrapolated |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| feature tokens | {args.vectors} vectors | {tokens_s:.2f} | {macs / tokens_s / 1e9:.1f} G mult-add/s "
        f"| {tokens_full_h:.2f} h ({full_macs:.2e} mult-adds) |"
    )
    print(
        f"| exact top-K SVD | {args.experts} experts of {args.rows} x {args.hidden} | {svd_s:.2f} "
        f"| {svd_s / args.experts:.3f} s/expert | {svd_full_h:.2f} h ({V4_FLASH_EXPERTS} experts) |"
    )
    print(f"\nfeature tokens / SVD: {tokens_full_h / svd_full_h:.2f}")


if __name__ == "__main__":
    main()
