"""Remote-build benchmark: building straight from a Hub model repo vs from a local folder.

    python benchmarks/bench_remote_build.py [--layers 3] [--experts 8] [--hidden 4096] [--inter 2048]

A DeepSeek-V4-Flash-format checkpoint with real expert sizes (gate_proj 2048 x 4096 packed FP4
+ E8M0 scales, FP8 shared expert, BF16 router, plus the w2/w3 experts, MTP block and attention
tensors a builder must skip) is generated, uploaded to the bundled local Hub server (which counts
the bytes it serves), then measured side by side in this run, each in its own process (fresh
caches, peak RSS from ``getrusage``):

- remote build: bytes fetched / bytes of the tensors the builder needs (target <= 1.05)
- the same vs a full ``snapshot_download`` of the checkpoint (bytes and seconds)
- wall time of the remote build vs the local build of the same checkpoint (fetching overlaps compute)
- fetch alone (no compute): ranged-read throughput of ``HubCheckpoint.read``
- peak RSS of each build; both builds' ``gate_vectors.bin`` are compared byte for byte
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vindex_hub.hubserver import LocalHub, client_environment

REPO_ID = "bench/deepseek-v4-flash-format"
TOKEN = "hf_bench_dummy"


def child(kind: str, target: str, out: str) -> dict:
    """One measured job, in its own process (the environment points at the server)."""
    from vindex_hub.builder import build_vindex

    t0 = time.perf_counter()
    result: dict = {}
    if kind == "local":
        build_vindex(target, out, device="cpu", progress=False)
    elif kind == "remote":
        from vindex_hub.source.hub import HubCheckpoint

        src = HubCheckpoint(target)
        build_vindex(src, out, device="cpu", progress=False)
        result = {"bytes_fetched": src.bytes_fetched, "fetch_seconds": src.fetch_seconds}
    elif kind == "fetch":
        from vindex_hub.arch import get_architecture
        from vindex_hub.source.hub import HubCheckpoint

        with HubCheckpoint(target) as src:
            arch = get_architecture(src.config)
            for layer in arch.moe_layers():
                src.read(arch.layer_tensors(layer))
            result = {"bytes_fetched": src.bytes_fetched, "fetch_seconds": src.fetch_seconds}
    elif kind == "snapshot":
        from huggingface_hub import snapshot_download

        snapshot_download(target, repo_type="model", local_dir=out)
    else:
        raise ValueError(kind)
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_child(kind: str, target: str, out: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, target, str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} job failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=2048)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--child", nargs=3, metavar=("KIND", "TARGET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-remote-build-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    hub = LocalHub(work / "server").start()
    os.environ.update(client_environment(hub.url, work / "hf-parent", token=TOKEN))
    # The clients read the environment at import time: import them only now.
    from huggingface_hub import HfApi

    from vindex_hub.arch import get_architecture
    from vindex_hub.format import filenames
    from vindex_hub.source.local import LocalCheckpoint
    from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

    t0 = time.perf_counter()
    ckpt = make_deepseek_v4_checkpoint(
        work / "ckpt",
        num_layers=args.layers,
        num_experts=args.experts,
        hidden_size=args.hidden,
        moe_intermediate_size=args.inter,
        num_shards=args.shards,
    )
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    checkpoint_bytes = sum((ckpt / s).stat().st_size for s in shards)
    print(
        f"generated {checkpoint_bytes / 1e6:.0f} MB in {len(shards)} shards ({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
    )
    api = HfApi()
    api.create_repo(REPO_ID, repo_type="model")
    api.upload_folder(folder_path=ckpt, repo_id=REPO_ID, repo_type="model")

    with LocalCheckpoint(ckpt) as src:
        arch = get_architecture(src.config)
        infos = [
            src.tensor_info(n) for layer in arch.moe_layers() for n in arch.layer_tensors(layer)
        ]
    needed = sum(i.nbytes for i in infos)
    headers = 0
    for shard in {i.shard for i in infos}:
        with open(ckpt / shard, "rb") as f:
            headers += 8 + int.from_bytes(f.read(8), "little")

    def measured(kind: str, target: str, name: str) -> tuple[dict, int]:
        hub.reset_stats()
        env = client_environment(hub.url, work / f"hf-{name}", token=TOKEN)  # a cold cache per job
        result = run_child(kind, target, work / name, env)
        stats = hub.stats()
        return result, sum(stats.file(REPO_ID, s, repo_type="model").bytes_sent for s in shards)

    local, _ = measured("local", str(ckpt), "local")
    remote, remote_bytes = measured("remote", REPO_ID, "remote")
    fetch, fetch_bytes = measured("fetch", REPO_ID, "fetch")
    snap, snap_bytes = measured("snapshot", REPO_ID, "snapshot")
    identical = (work / "remote" / filenames.GATE_VECTORS_BIN).read_bytes() == (
        work / "local" / filenames.GATE_VECTORS_BIN
    ).read_bytes()
    hub.stop()

    mb = 1e6
    rows = [
        (
            "checkpoint",
            f"{args.layers} layers x {args.experts} experts, gate_proj {args.inter} x {args.hidden} FP4, "
            f"{len(shards)} shards, {checkpoint_bytes / mb:.1f} MB",
            "",
        ),
        (
            "needed tensors (routed + shared gate_proj, router) / checkpoint",
            f"{needed / mb:.1f} MB = {needed / checkpoint_bytes:.3f}",
            "",
        ),
        (
            "remote build: shard bytes fetched / needed tensor bytes",
            f"{remote_bytes / needed:.4f} ({remote_bytes} / {needed} B)",
            "<= 1.05",
        ),
        (
            "  the same without the shard headers (tensor ranges only)",
            f"{(remote_bytes - headers) / needed:.4f} (headers: {headers} B)",
            "",
        ),
        (
            "remote build: shard bytes fetched / full snapshot_download",
            f"{remote_bytes / snap_bytes:.3f} ({remote_bytes / mb:.1f} / {snap_bytes / mb:.1f} MB)",
            "",
        ),
        (
            "source's own count (bytes_fetched) = server count",
            f"{remote['bytes_fetched'] == remote_bytes}",
            "",
        ),
        (
            "wall: local build / remote build",
            f"{local['seconds']:.1f} s / {remote['seconds']:.1f} s "
            f"= {remote['seconds'] / local['seconds']:.2f}x",
            "close to 1x",
        ),
        (
            "remote build: seconds fetching (reader thread, overlapped with compute)",
            f"{remote['fetch_seconds']:.1f} s",
            "",
        ),
        (
            "fetch only (no compute): throughput",
            f"{fetch_bytes / mb / fetch['fetch_seconds']:.0f} MB/s "
            f"({fetch_bytes / mb:.1f} MB in {fetch['fetch_seconds']:.2f} s)",
            "",
        ),
        ("snapshot_download alone", f"{snap['seconds']:.2f} s", ""),
        (
            "peak RSS: local build / remote build",
            f"{local['peak_rss_mib']:.0f} / {remote['peak_rss_mib']:.0f} MiB",
            "",
        ),
        ("gate_vectors.bin remote == local", f"{identical}", "True"),
    ]
    print("| figure | result | target |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
