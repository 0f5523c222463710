"""Arrow mirror: parquet size and read speed per encoding, and ``load_dataset`` vs ``np.memmap``.

A synthetic vindex (default 2 layers x 64 experts x 64 features x 4096 hidden: a quarter of a
DeepSeek-V4-Flash layer each) is written directly (unit-norm Gaussian rows, whose float32 bytes
look like real singular vectors' to a compressor; no SVD needed to measure I/O), then:

1. one layer is written with each candidate parquet setting: size vs the binary, write time,
   and read time (``pyarrow.parquet.read_table`` to numpy, best of 3);
2. ``load_dataset(folder, "layer_01", split="train")`` to an ``(E, K, H)`` torch tensor,
   first load (fresh cache: parquet -> Arrow cache) and cached load (same cache), against
   ``np.memmap`` + copy of the same bytes, side by side in one run.

    python benchmarks/bench_mirror.py [--experts 64] [--feats 64] [--hidden 4096] [--layers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vindex_hub.checksums import sha256_file_range
from vindex_hub.format import filenames, layout, mirror, sidecar
from vindex_hub.load import Vindex
from vindex_hub.writers import mirror as parquet_mirror
from vindex_hub.writers.derived import rewrite_card

VECTOR_LEAF = f"{mirror.COL_VECTOR}.list.element"
INTS = parquet_mirror.INDEX_COLUMNS
CANDIDATES = {
    "none (pyarrow defaults, dictionary on)": dict(compression="none"),
    "snappy (pyarrow default)": dict(compression="snappy"),
    "zstd": dict(compression="zstd"),
    "zstd, no dictionary on vector": dict(compression="zstd", use_dictionary=INTS),
    "BYTE_STREAM_SPLIT, uncompressed": dict(
        compression="none", use_dictionary=INTS, column_encoding={VECTOR_LEAF: "BYTE_STREAM_SPLIT"}
    ),
    "BYTE_STREAM_SPLIT + zstd (chosen)": parquet_mirror.GATE_VECTORS_WRITE_OPTIONS,
}


def make_vindex(
    folder: Path, layers: int, experts: int, feats: int, hidden: int
) -> sidecar.VindexIndex:
    rng = np.random.default_rng(0)
    index = sidecar.VindexIndex(
        num_feats=feats,
        model_config=sidecar.ModelConfig(
            "deepseek_v4", layers, sidecar.MoEConfig(experts, 1, 6, hidden, 2048)
        ),
        source=sidecar.SourceInfo(repo_id="bench/synthetic"),
        builder=sidecar.BuilderInfo("bench_mirror", "0", "random unit vectors (I/O benchmark)"),
    )
    nbytes = layout.layer_nbytes(experts, feats, hidden)
    with open(folder / filenames.GATE_VECTORS_BIN, "wb") as f:
        for layer in range(layers):
            v = rng.standard_normal((experts, feats, hidden), dtype=np.float32)
            v /= np.linalg.norm(v, axis=-1, keepdims=True)
            f.write(v.tobytes())
    for layer in range(layers):
        offset = layout.layer_offset(layer, experts, feats, hidden)
        index.layers[layer] = sidecar.LayerEntry(
            offset,
            [experts, feats, hidden],
            nbytes,
            sha256_file_range(folder / filenames.GATE_VECTORS_BIN, offset, nbytes),
            0.1,
            0.09,
            0.11,
        )
    (folder / filenames.SIDECAR_JSON).write_text(index.dumps())
    return index


def best_of(n: int, fn):
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def encodings(folder: Path, index: sidecar.VindexIndex, layer: int) -> None:
    block = np.array(Vindex.open(folder).layer(layer))
    table = parquet_mirror.gate_vectors_table(layer, 0, block)
    rows_per_group = (
        mirror.experts_per_row_group(index.num_feats, index.hidden_size) * index.num_feats
    )
    print(
        f"\n### Parquet settings, one layer ({block.nbytes / 2**20:.0f} MiB of vectors, "
        f"{rows_per_group} rows a row group)\n"
    )
    print("| setting | size / binary | write s | read s (best of 3) | read GB/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, options in CANDIDATES.items():
        path = folder / "candidate.parquet"
        t0 = time.perf_counter()
        pq.write_table(table, path, row_group_size=rows_per_group, **options)
        write_s = time.perf_counter() - t0
        read_s, back = best_of(
            3,
            lambda: (
                pq.read_table(path).column(mirror.COL_VECTOR).combine_chunks().flatten().to_numpy()
            ),
        )
        assert back.tobytes() == block.tobytes()
        print(
            f"| {name} | {path.stat().st_size / block.nbytes:.3f} | {write_s:.2f} | {read_s:.3f} | "
            f"{block.nbytes / read_s / 1e9:.2f} |"
        )
        path.unlink()
    for experts_per_group in (1, mirror.experts_per_row_group(index.num_feats, index.hidden_size)):
        path = folder / "rowgroups.parquet"
        pq.write_table(
            table,
            path,
            row_group_size=experts_per_group * index.num_feats,
            **parquet_mirror.GATE_VECTORS_WRITE_OPTIONS,
        )
        read_s, _ = best_of(3, lambda: pq.read_table(path))
        print(
            f"| chosen, {experts_per_group} expert(s) a row group | {path.stat().st_size / block.nbytes:.3f} "
            f"| | {read_s:.3f} | {block.nbytes / read_s / 1e9:.2f} |"
        )
        path.unlink()


def load_vs_memmap(folder: Path, index: sidecar.VindexIndex, layer: int, cache: Path) -> None:
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    entry = index.layers[layer]

    def via_datasets():
        ds = load_dataset(
            str(folder),
            mirror.layer_config(layer, index.model_config.num_hidden_layers),
            split=mirror.SPLIT,
            cache_dir=str(cache),
        ).with_format("torch")
        return ds[mirror.COL_VECTOR][:].reshape(entry.shape)

    def via_memmap():
        arr = np.memmap(
            folder / filenames.GATE_VECTORS_BIN,
            dtype=layout.NUMPY_DTYPE,
            mode="r",
            offset=entry.file_offset,
            shape=tuple(entry.shape),
        )
        return np.array(arr)

    first_mm, a = best_of(1, via_memmap)
    first_ds, b = best_of(1, via_datasets)  # fresh cache: converts the layer's file
    cached_ds, c = best_of(3, via_datasets)
    cached_mm, _ = best_of(3, via_memmap)
    assert b.numpy().tobytes() == a.tobytes() == c.numpy().tobytes()
    mb = entry.nbytes / 2**20
    print(f"\n### One layer ({mb:.0f} MiB) to an (E, K, H) array\n")
    print("| reader | first load s | cached load s (best of 3) |")
    print("| --- | --- | --- |")
    print(f"| np.memmap + copy | {first_mm:.3f} | {cached_mm:.3f} |")
    print(f"| load_dataset -> torch | {first_ds:.3f} | {cached_ds:.3f} |")
    print(
        f"| ratio load_dataset / memmap | {first_ds / first_mm:.1f}x | {cached_ds / cached_mm:.1f}x |"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--feats", type=int, default=64)
    p.add_argument("--hidden", type=int, default=4096)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    try:
        folder = root / "vindex"
        folder.mkdir()
        index = make_vindex(folder, args.layers, args.experts, args.feats, args.hidden)
        t0 = time.perf_counter()
        parquet_mirror.write_mirror(folder, index)
        mirror_s = time.perf_counter() - t0
        rewrite_card(folder, index)
        binary = (folder / filenames.GATE_VECTORS_BIN).stat().st_size
        mirror_size = sum(
            f.stat().st_size for f in (folder / filenames.DATA_DIR).rglob("*.parquet")
        )
        print(
            f"synthetic vindex: {args.layers} layers x {args.experts} experts x {args.feats} feats x "
            f"{args.hidden} hidden = {binary / 2**20:.0f} MiB; cpus {os.cpu_count()}"
        )
        print(
            f"write_mirror: {mirror_s:.2f} s ({binary / mirror_s / 1e6:.0f} MB/s); "
            f"mirror / binary size {mirror_size / binary:.3f}"
        )
        encodings(folder, index, 1 if args.layers > 1 else 0)
        load_vs_memmap(folder, index, 1 if args.layers > 1 else 0, root / "hf-cache")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
