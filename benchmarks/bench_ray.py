"""Serial build vs ``--engine ray`` on a local cluster of single-CPU raylets, same checkpoint.

Generates a DeepSeek-V4-Flash-format checkpoint (default: the real expert shape, gate_proj 2048 x
4096 FP4 + E8M0, 8 routed experts a layer, 4 layers), builds it with the serial engine (one process, ``workers=1``), then
starts ``--nodes`` raylets of one CPU each on 127.0.0.1 (``vindex_hub.testing.ray_cluster``) and
builds it again through the cluster (one BLAS thread a task). Prints both wall times, the ratio,
the cost per expert and whether the two binaries are the same bits (every route pins one BLAS
thread). Both times include the derived files; the
Ray time includes the driver joining the cluster and the workers starting (not the cluster's own
start), the serial one the first imports of the writers.

    python benchmarks/bench_ray.py [--experts 8] [--layers 4] [--nodes 2] [--workdir DIR]
    python benchmarks/bench_ray.py --experts 4 --layers 2 --hidden 256 --intermediate 128  # tiny
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from vindex_hub.testing.ray_cluster import LocalRayCluster, client_environment

os.environ.update(client_environment())  # before Ray is imported (by the engine)

from vindex_hub.builder import build_vindex
from vindex_hub.format import filenames
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint


def timed_build(checkpoint: Path, out: Path, num_feats: int, **engine) -> float:
    t0 = time.perf_counter()
    build_vindex(checkpoint, out, num_feats=num_feats, device="cpu", progress=False, **engine)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--num-feats", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=2, help="raylets of one CPU each")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ray-"))
    checkpoint = make_deepseek_v4_checkpoint(
        work / "ckpt",
        num_layers=args.layers,
        num_experts=args.experts,
        hidden_size=args.hidden,
        moe_intermediate_size=args.intermediate,
        num_shards=max(1, args.layers // 2),
    )
    num_feats = min(args.num_feats, args.intermediate)
    serial = timed_build(
        checkpoint, work / "serial" / "vindex", num_feats, workers=1
    )  # one process, one thread
    with LocalRayCluster(nodes=args.nodes, cpus_per_node=1) as cluster:
        ray = timed_build(
            checkpoint,
            work / "ray" / "vindex",
            num_feats,
            engine="ray",
            ray_address=cluster.address,
        )
    experts = args.layers * args.experts
    binaries = [
        (work / side / "vindex" / filenames.GATE_VECTORS_BIN).read_bytes()
        for side in ("serial", "ray")
    ]
    same = binaries[0] == binaries[1]
    print(
        json.dumps(
            {
                "checkpoint": {
                    "layers": args.layers,
                    "experts": args.experts,
                    "gate_proj": [args.intermediate, args.hidden],
                    "num_feats": num_feats,
                },
                "serial_s": round(serial, 2),
                "ray_s": round(ray, 2),
                "serial_over_ray": round(serial / ray, 3),
                "serial_s_per_expert": round(serial / experts, 4),
                "ray_s_per_expert": round(ray / experts, 4),
                "ray_workers": args.nodes,
                "same_bits": same,
                "workdir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
