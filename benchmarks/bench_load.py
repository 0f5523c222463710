"""Loader benchmark against the bundled local Hub server (which counts the bytes it serves).

    python benchmarks/bench_load.py [--experts 32] [--num-feats 64] [--hidden 4096] [--layers 3]

Real hidden size and K (an expert is 64 x 4096 x 4 B = 1 MiB); 32 experts keep a layer at 32 MiB.
Figures (ratios measured side by side in this run):

- lazy ``layer(L)``, cold cache: bytes fetched / layer bytes (target <= 1.01)
- the same layer from a new ``Vindex`` on the same cache: bytes fetched (target 0)
- one ``expert(L, E)``, cold cache: bytes fetched (target <= 1.01 MiB)
- warm ``layer(L)`` + copy vs ``np.memmap`` + copy of the same cached bytes (target within 2x)
- snapshot vs lazy mode for one layer: bytes fetched and wall time
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from vindex_hub.hubserver import LocalHub, client_environment


def timed(fn, repeat: int = 5) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--num-feats", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    hub = LocalHub(work / "server").start()
    os.environ.update(client_environment(hub.url, work / "hf", token="hf_bench_dummy"))
    # The clients read the environment at import time: import them only now.
    import numpy as np
    from huggingface_hub import HfApi

    from vindex_hub.format import filenames, layout, sidecar
    from vindex_hub.load import Vindex
    from vindex_hub.writers.binary import GateVectorsWriter

    e, k, h = args.experts, args.num_feats, args.hidden
    rng = np.random.default_rng(0)
    folder = work / "vindex"
    writer = GateVectorsWriter(
        folder / "partial.bin", num_layers=args.layers, num_experts=e, num_feats=k, hidden_size=h
    )
    index = sidecar.VindexIndex(
        num_feats=k,
        model_config=sidecar.ModelConfig(
            "deepseek_v4", args.layers, sidecar.MoEConfig(e, 1, 6, h, 2048)
        ),
        source=sidecar.SourceInfo(repo_id="bench/moe"),
        builder=sidecar.BuilderInfo("vindex-hub", "bench", "bench"),
    )
    for slot in range(args.layers):
        block = np.stack([np.linalg.qr(rng.standard_normal((h, k)))[0].T for _ in range(e)]).astype(
            np.float32
        )
        index.layers[slot] = sidecar.LayerEntry(
            layout.layer_offset(slot, e, k, h),
            [e, k, h],
            index.layer_nbytes,
            writer.write_layer(slot, block),
            0.5,
            0.4,
            0.6,
        )
    writer.finish(folder / filenames.GATE_VECTORS_BIN)
    (folder / filenames.SIDECAR_JSON).write_text(index.dumps())
    repo = "bench/vindex"
    HfApi().create_repo(repo, repo_type="dataset")
    HfApi().upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset")

    layer, nbytes, mib = 1, index.layer_nbytes, float(1 << 20)

    def fetched() -> int:
        return hub.stats().file(repo, filenames.GATE_VECTORS_BIN).bytes_sent

    def fresh_cache(name: str) -> Path:
        return work / name / "hub"

    rows: list[tuple[str, str]] = []
    # lazy, cold
    cache = fresh_cache("lazy")
    hub.reset_stats()
    t0 = time.perf_counter()
    with Vindex.open(repo, cache_dir=cache) as vx:
        vx.layer(layer)
    t_lazy = time.perf_counter() - t0
    rows.append(
        (
            "lazy layer(L), cold: bytes fetched / layer bytes",
            f"{fetched() / nbytes:.4f} ({fetched()} / {nbytes})",
        )
    )
    sidecar_bytes = hub.stats().file(repo, filenames.SIDECAR_JSON).bytes_sent
    rows.append(
        (
            "lazy open + layer(L), cold: all bytes served / layer bytes",
            f"{hub.stats().bytes_sent / nbytes:.4f} (sidecar {sidecar_bytes} B)",
        )
    )
    # lazy, second load
    hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache) as vx:
        vx.layer(layer)
    rows.append(("lazy layer(L), new Vindex on the same cache: bytes fetched", str(fetched())))
    # one expert
    hub.reset_stats()
    with Vindex.open(repo, cache_dir=fresh_cache("expert")) as vx:
        vx.expert(layer, 5)
    rows.append(
        ("lazy expert(L, E), cold: bytes fetched", f"{fetched()} ({fetched() / mib:.4f} MiB)")
    )

    # warm reads vs np.memmap + copy of the same cached block
    with Vindex.open(repo, cache_dir=cache) as vx:
        block_path = vx._reader.cache.get(
            vx._reader.remote.etag,
            vx.index.layer(layer).file_offset,
            vx.index.layer(layer).file_offset + nbytes,
        )
        t_ref = timed(
            lambda: np.array(
                np.asarray(np.memmap(block_path, dtype="<f4", mode="r")).reshape(e, k, h)
            ),
            9,
        )
        vx.layer(layer)  # verified once for this object
        t_view_copy = timed(lambda: np.array(vx.layer(layer)), 9)

    def first_read(verify: bool) -> float:
        """Median time of the first ``layer(L)`` + copy on freshly opened objects (open not timed)."""
        times = []
        for _ in range(9):
            with Vindex.open(repo, cache_dir=cache, verify=verify) as v:
                t = time.perf_counter()
                np.array(v.layer(layer))
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    t_open = timed(lambda: Vindex.open(repo, cache_dir=cache).close())
    t_first_noverify, t_first_verify = first_read(False), first_read(True)
    rows.append(("np.memmap + copy of the cached block (reference)", f"{t_ref * 1e3:.1f} ms"))
    rows.append(
        (
            "warm layer(L) + copy, object already verified it",
            f"{t_view_copy * 1e3:.1f} ms = {t_view_copy / t_ref:.2f}x",
        )
    )
    rows.append(
        (
            "warm first layer(L) + copy on a new object, verify=False",
            f"{t_first_noverify * 1e3:.1f} ms = {t_first_noverify / t_ref:.2f}x",
        )
    )
    rows.append(
        (
            "warm first layer(L) + copy on a new object, verify=True (sha256)",
            f"{t_first_verify * 1e3:.1f} ms = {t_first_verify / t_ref:.2f}x",
        )
    )
    rows.append(("Vindex.open of a repo (sidecar cached; HEAD requests)", f"{t_open * 1e3:.1f} ms"))

    # snapshot vs lazy, one layer, cold caches
    hub.reset_stats()
    t0 = time.perf_counter()
    with Vindex.open(repo, mode="snapshot", cache_dir=fresh_cache("snapshot")) as vx:
        vx.layer(layer)
    t_snap = time.perf_counter() - t0
    rows.append(
        (
            "snapshot open + layer(L), cold: bytes fetched / layer bytes",
            f"{fetched() / nbytes:.2f} in {t_snap * 1e3:.0f} ms (lazy: 1.00 in {t_lazy * 1e3:.0f} ms)",
        )
    )

    hub.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"layer: {e} experts x {k} feats x {h} hidden = {nbytes / mib:.0f} MiB; {args.layers} layers"
    )
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
