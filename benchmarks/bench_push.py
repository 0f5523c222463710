"""What ``push_vindex`` sends, measured by the bundled local Hub server's byte counters.

Builds a vindex of a synthetic DeepSeek-V4-format checkpoint (tens of MB), then pushes it three
times to a fresh repo: first push (target: bytes received = folder size, 1.0x), the same folder
again (target: 0 LFS bytes, no commit), and after editing only the card (target: only README.md
sent). Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/bench_push.py [--layers 3] [--experts 32] [--hidden 1024] [--num-feats 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from vindex_hub.hubserver import LocalHub, client_environment

REPO_ID = "bench/push-vindex"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=256)
    ap.add_argument("--num-feats", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    hub = LocalHub(work / "hub").start()
    # The clients read these at import: set them before anything imports huggingface_hub.
    assert "huggingface_hub" not in sys.modules
    os.environ.update(client_environment(hub.url, work / "hf-home", token="hf_bench_token"))

    from vindex_hub.builder import build_vindex
    from vindex_hub.format import filenames
    from vindex_hub.push import publishable_files, push_vindex
    from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

    checkpoint = make_deepseek_v4_checkpoint(
        work / "checkpoint",
        num_layers=args.layers,
        num_experts=args.experts,
        hidden_size=args.hidden,
        moe_intermediate_size=args.inter,
    )
    start = time.monotonic()
    folder = build_vindex(
        checkpoint, work / "vindex", num_feats=args.num_feats, device="cpu", progress=False
    ).out
    build_s = time.monotonic() - start
    files = publishable_files(folder)
    folder_bytes = sum(f.size for f in files)

    def push(label: str) -> dict:
        hub.reset_stats()
        start = time.monotonic()
        result = push_vindex(folder, REPO_ID, progress=False)
        seconds = time.monotonic() - start
        stats = hub.stats()
        per_file = {
            k[2]: v.bytes_received
            for k, v in stats.files.items()
            if k[1] == REPO_ID and v.bytes_received
        }
        return {
            "label": label,
            "seconds": seconds,
            "received": sum(per_file.values()),
            "lfs": stats.lfs_bytes_received + stats.xet_bytes_received,  # whichever path ran
            "files": sorted(per_file),
            "commit": result.commit_oid if result.changed else "none (up to date)",
        }

    rows = [push("first push (new repo)"), push("same folder again")]
    card = folder / filenames.CARD_FILE
    card.write_text(
        card.read_text(encoding="utf-8") + "\nEdited for the benchmark.\n", encoding="utf-8"
    )
    rows.append(push("after editing only README.md"))
    hub.stop()

    print(
        f"vindex: {args.layers} layers x {args.experts} experts x {args.num_feats} feats x {args.hidden} hidden; "
        f"{len(files)} files, {folder_bytes:,} B (gate_vectors.bin "
        f"{(folder / filenames.GATE_VECTORS_BIN).stat().st_size:,} B); built in {build_s:.1f} s\n"
    )
    print(
        "| push | file bytes received | / folder | LFS/Xet bytes received | files received | commit | s |"
    )
    print("| --- | ---: | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        names = ", ".join(r["files"]) if len(r["files"]) <= 2 else f"all {len(r['files'])}"
        commit = (
            r["commit"][:12] if r["commit"] and not r["commit"].startswith("none") else r["commit"]
        )
        print(
            f"| {r['label']} | {r['received']:,} | {r['received'] / folder_bytes:.4f}x | {r['lfs']:,} | "
            f"{names or 'none'} | {commit} | {r['seconds']:.2f} |"
        )
    print(f"\nREADME.md after the edit: {card.stat().st_size:,} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
