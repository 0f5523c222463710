"""Bytes a push sends per transfer path (Xet, the Hub's default, and plain LFS), by the bundled server.

Builds two vindexes of a synthetic DeepSeek-V4-format checkpoint that differ in ONE layer (the
second checkpoint doubles every other block scale of layer 1's expert gate_proj weights), then, for each transfer path on its own
fresh local Hub (``LocalHub(transfer=...)``, client environment to match), pushes: the first
vindex to a new repo, the same folder again, then the second vindex (one layer changed) over it.
Reports the bytes the server received for each: Xet counts the xorb bytes hf_xet stored in the
server's CAS (chunk-level dedup: a changed layer re-sends about that layer), LFS the PUT bodies
(whole changed files). Bytes, not timings: the figures do not depend on machine load.

    python benchmarks/bench_transfer.py [--layers 4] [--experts 32] [--hidden 1024] [--num-feats 64]

Each transfer path runs in its own process (the hub client reads HF_HUB_DISABLE_XET at import).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ID = "bench/transfer-vindex"
TOKEN = "hf_bench_token"


def build(work: Path, args: argparse.Namespace) -> None:
    """Vindex ``a`` of a checkpoint, and ``b`` of the same with layer 1's expert gate_proj changed."""
    import torch
    from safetensors.torch import load_file, save_file

    from vindex_hub.builder import build_vindex
    from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

    for name in ("a", "b"):
        make_deepseek_v4_checkpoint(
            work / f"checkpoint-{name}",
            num_layers=args.layers,
            num_experts=args.experts,
            hidden_size=args.hidden,
            moe_intermediate_size=args.inter,
            seed=1234,
            include_mtp=False,
        )
    changed = 0
    for shard in sorted((work / "checkpoint-b").glob("*.safetensors")):
        tensors = load_file(shard)
        keys = [k for k in tensors if re.fullmatch(r"layers\.1\.ffn\.experts\.\d+\.w1\.scale", k)]
        if not keys:
            continue
        for key in keys:
            # Double every other block scale (E8M0: the byte is the exponent): new gate_proj
            # matrices for every expert of layer 1, so new singular vectors for the whole layer.
            raw = tensors[key].view(torch.uint8).clone()
            raw.view(-1)[::2] += 1
            tensors[key] = raw.view(tensors[key].dtype)
            changed += 1
        save_file(tensors, shard, metadata={"format": "pt"})
    assert changed, "no layer-1 expert scales found to change"
    for name in ("a", "b"):
        build_vindex(
            work / f"checkpoint-{name}",
            work / f"vindex-{name}",
            num_feats=args.num_feats,
            device="cpu",
            progress=False,
        )


def push_all(work: Path, transfer: str) -> list[dict]:
    """First push, unchanged re-push, one-layer change, on a fresh server speaking ``transfer``."""
    from vindex_hub.hubserver import LocalHub, client_environment

    hub = LocalHub(work / f"hub-{transfer}", transfer=transfer).start()
    assert "huggingface_hub" not in sys.modules
    os.environ.update(
        client_environment(hub.url, work / f"hf-{transfer}", token=TOKEN, transfer=transfer)
    )
    from vindex_hub.push import push_vindex

    rows = []
    for label, folder in (
        ("first push", "vindex-a"),
        ("same folder again", "vindex-a"),
        ("one layer changed", "vindex-b"),
    ):
        hub.reset_stats()
        result = push_vindex(work / folder, REPO_ID, progress=False)
        stats = hub.stats()
        rows.append(
            {
                "transfer": transfer,
                "push": label,
                "files_sent": len(result.uploaded),
                "file_bytes": result.uploaded_bytes,
                "received": stats.xet_bytes_received
                if transfer == "xet"
                else stats.lfs_bytes_received,
                "other_received": stats.bytes_received,
            }
        )
    hub.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=256)
    ap.add_argument("--num-feats", type=int, default=64)
    ap.add_argument("--step", choices=("build", "xet", "lfs"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step == "build":
        build(args.work, args)
        return 0
    if args.step in ("xet", "lfs"):
        print(json.dumps(push_all(args.work, args.step)))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    argv = [sys.executable, __file__, "--work", str(work)]
    argv += ["--layers", str(args.layers), "--experts", str(args.experts)]
    argv += ["--hidden", str(args.hidden), "--inter", str(args.inter)]
    argv += ["--num-feats", str(args.num_feats)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    subprocess.run([*argv, "--step", "build"], check=True, env=env)
    rows = []
    for transfer in ("xet", "lfs"):
        done = subprocess.run(
            [*argv, "--step", transfer], check=True, env=env, capture_output=True, text=True
        )
        rows += json.loads(done.stdout.strip().splitlines()[-1])

    folder = work / "vindex-a"
    files = [p for p in folder.rglob("*") if p.is_file() and ".vindex-build" not in p.parts]
    total = sum(p.stat().st_size for p in files)
    binary = (folder / "gate_vectors.bin").stat().st_size
    print(
        f"vindex: {args.layers} layers x {args.experts} experts x {args.num_feats} feats x "
        f"{args.hidden} hidden; {total:,} B in its files (gate_vectors.bin {binary:,} B, "
        f"one layer of it {binary // args.layers:,} B)\n"
    )
    print("| transfer | push | files in the commit | their bytes | bytes the server received |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['transfer']} | {r['push']} | {r['files_sent']} | {r['file_bytes']:,} |"
            f" {r['received']:,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
