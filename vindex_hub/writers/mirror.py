"""The Arrow mirror: the vindex as parquet files that ``datasets.load_dataset`` reads.

One file per layer (``format.mirror``: config ``layer_NN``, and all of them config
``gate_vectors``), one row per (expert, feature), the vector as a fixed-size float32 list copied
bit for bit from ``gate_vectors.bin``; ``expert_stats`` (one row per (layer, expert): var{K},
Frobenius norm and the top-K singular values, which the binary does not keep) and ``router_svd``
(one row per layer: the phase-2 router figures).

Parquet settings, chosen by measurement (``benchmarks/bench_mirror.py``, BENCHMARKS.md):

* ``vector``: BYTE_STREAM_SPLIT + zstd, no dictionary, no statistics. Unit-norm float32 vectors
  barely compress as plain bytes (zstd: 0.92 of raw), but split into byte planes their exponent
  bytes do (0.84 of raw), and decoding stays as fast as uncompressed. A dictionary on random
  floats is pure overhead (it was 1.5x raw with small row groups); min/max statistics of vector
  entries serve no query.
* ``layer``/``expert``/``feature``: int16 with dictionary and statistics, so readers can prune
  row groups by expert.
* Row groups hold whole experts, at most ``ROW_GROUP_BYTES`` (16 MiB) of vectors and
  ``ROW_GROUP_ROWS`` rows: 16 experts (1024 rows) at DeepSeek-V4-Flash size, 9 (576 rows) at
  hidden 7168. The Hub's dataset viewer refuses pages whose row groups exceed about 286 MiB and
  reads whole row groups to show 100 rows, so small groups keep it quick; ``datasets`` itself
  caps row groups at 100 MB. Reading speed did not change between 1 MiB and 16 MiB groups.
* Every file has a page index (``write_page_index``), as the Hub advises for large parquet, so
  readers can seek inside a row group.
* The card's ``num_bytes`` is what ``datasets`` counts: the decoded Arrow size of each row group
  (``arrow_nbytes``), not parquet's ``total_byte_size``.

Every file is written under a temporary name and renamed when complete (``fsutil``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import VindexFormatError
from ..format import filenames, geometry, layout, mirror, sidecar, statistics
from ..fsutil import atomic_path
from ..numerics import stats
from ..results import LayerResult
from .phases import router_figures

INDEX_COLUMNS = list(mirror.INDEX_COLUMNS)
_VECTOR_LEAF = f"{mirror.COL_VECTOR}.list.element"  # parquet's path of the list's values

GATE_VECTORS_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": INDEX_COLUMNS,
    "write_statistics": INDEX_COLUMNS,
    "column_encoding": {_VECTOR_LEAF: "BYTE_STREAM_SPLIT"},
    "write_page_index": True,
}
# The stats tables are small (kilobytes to a few MB): plain zstd.
STATS_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_page_index": True}


# ---- tables (pure) ---------------------------------------------------------------------------
def gate_vectors_table(layer: int, first_expert: int, vectors: np.ndarray) -> pa.Table:
    """Rows of experts ``first_expert ...`` of one layer; ``vectors`` is float32 ``(e, K, H)``."""
    e, k, h = vectors.shape
    flat = np.ascontiguousarray(vectors, dtype=layout.NUMPY_DTYPE).reshape(-1)
    return pa.Table.from_arrays(
        [
            pa.array(np.full(e * k, layer, dtype=np.int16)),
            pa.array(np.repeat(np.arange(first_expert, first_expert + e, dtype=np.int16), k)),
            pa.array(np.tile(np.arange(k, dtype=np.int16), e)),
            pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), h),
        ],
        schema=mirror.gate_vectors_schema(h),
    )


def expert_stats_table(results: Sequence[LayerResult], num_feats: int) -> pa.Table:
    layers, experts, var, frob, svals = [], [], [], [], []
    for r in results:
        e = r.num_experts
        layers.append(np.full(e, r.layer, dtype=np.int16))
        experts.append(np.arange(e, dtype=np.int16))
        var.append(stats.energy_fraction(r.singular_values, r.frobenius_norm))
        frob.append(np.asarray(r.frobenius_norm, dtype=np.float64))
        svals.append(np.asarray(r.singular_values, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            mirror.COL_LAYER: pa.array(np.concatenate(layers)),
            mirror.COL_EXPERT: pa.array(np.concatenate(experts)),
            statistics.var_key(num_feats): pa.array(np.concatenate(var).astype(np.float64)),
            statistics.FROBENIUS_NORM: pa.array(np.concatenate(frob)),
            statistics.SINGULAR_VALUES: pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate(svals), type=pa.float32()), num_feats
            ),
        },
        schema=mirror.expert_stats_schema(num_feats),
    )


def router_svd_table(results: Sequence[LayerResult]) -> pa.Table:
    """One row per layer: ``layer`` then the phase-2 figures, in ``router_figures`` order.

    Scalars become int64/float64 columns, sequences (the spectrum) fixed-size float64 lists.
    Where the model's router is not a matrix there are no figures: the ``layer`` column alone.
    """
    figures = [router_figures(r) for r in results]
    rows = [f for f in figures if f is not None]
    if rows and len(rows) != len(figures):
        raise VindexFormatError("router figures for some layers and none for others")
    columns: dict[str, pa.Array] = {
        mirror.COL_LAYER: pa.array(np.array([r.layer for r in results], dtype=np.int16))
    }
    for key in rows[0] if rows else []:
        values = [row[key] for row in rows]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            matrix = np.asarray(values, dtype=np.float64)
            columns[key] = pa.FixedSizeListArray.from_arrays(
                pa.array(matrix.reshape(-1)), matrix.shape[1]
            )
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            columns[key] = pa.array(np.asarray(values, dtype=np.int64))
        else:  # None (s0/s1 of a rank-1 router) becomes null
            columns[key] = pa.array(
                [None if v is None else float(v) for v in values], type=pa.float64()
            )
    return pa.table(columns)


# ---- writing ---------------------------------------------------------------------------------
def arrow_nbytes(pf: pq.ParquetFile) -> int:
    """The decoded size of a parquet file as ``datasets`` counts a split's ``num_bytes``: the sum
    of ``Table.nbytes`` over its row groups (datasets reads one row group a batch), validity
    buffers included; parquet's ``total_byte_size`` differs from it."""
    return sum(pf.read_row_group(i).nbytes for i in range(pf.metadata.num_row_groups))


def written_file(folder: Path, config: str, rel: str) -> mirror.MirrorFile:
    """What a just-written parquet file holds, from its footer (the card reports these figures)."""
    with pq.ParquetFile(folder / rel) as pf:
        meta = pf.metadata
        return mirror.MirrorFile(
            config=config,
            split=mirror.SPLIT,
            path=rel,
            num_rows=meta.num_rows,
            num_bytes=arrow_nbytes(pf),
            size=(folder / rel).stat().st_size,
            arrow_schema=meta.schema.to_arrow_schema(),
        )


def write_gate_vectors_layer(
    folder: Path, index: sidecar.VindexIndex, layer: int, block: np.ndarray
) -> mirror.MirrorFile:
    """One layer's parquet file from its ``(E, K, H)`` block, one row group at a time."""
    n = index.model_config.num_hidden_layers
    rel = mirror.gate_vectors_parquet(layer, n)
    step = mirror.experts_per_row_group(index.num_feats, index.hidden_size)
    with atomic_path(folder / rel) as tmp:
        with pq.ParquetWriter(
            tmp, mirror.gate_vectors_schema(index.hidden_size), **GATE_VECTORS_WRITE_OPTIONS
        ) as writer:
            for start in range(0, index.num_experts, step):
                table = gate_vectors_table(layer, start, np.array(block[start : start + step]))
                writer.write_table(table, row_group_size=table.num_rows)
    return written_file(folder, mirror.layer_config(layer, n), rel)


def write_stats_table(folder: Path, rel: str, table: pa.Table) -> mirror.MirrorFile:
    """One stats config's file (``mirror.EXPERT_STATS_PARQUET`` or ``mirror.ROUTER_SVD_PARQUET``)."""
    config = mirror.STATS_CONFIG_OF[rel]
    with atomic_path(folder / rel) as tmp:
        pq.write_table(table, tmp, **STATS_WRITE_OPTIONS)
    return written_file(folder, config, rel)


def write_mirror(
    folder: str | Path,
    index: sidecar.VindexIndex,
    tables: Mapping[str, pa.Table] | None = None,
    *,
    binary_hash: Any = None,
) -> list[mirror.MirrorFile]:
    """Write the mirror: each layer's parquet file, streamed from ``gate_vectors.bin`` in file order
    (each block also fed to ``binary_hash``, a hashlib object, when given), then ``tables`` (the
    stats configs by file path; ``stats_tables`` makes them from a build's results). Parquet
    files of layers under ``data/gate_vectors/`` that the mirror no longer names (an old
    layout's names) are removed, so a push deletes them from the repo too."""
    folder = Path(folder)
    vectors = np.memmap(
        folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        mode="r",
        shape=index.array_shape,
    )
    written = []
    for slot, layer in enumerate(index.layer_ids):  # slot order is file order
        if binary_hash is not None:
            binary_hash.update(memoryview(vectors[slot]).cast("B"))
        written.append(write_gate_vectors_layer(folder, index, layer, vectors[slot]))
    del vectors
    _remove_unnamed_layer_files(folder, {f.path for f in written})
    return written + [
        write_stats_table(folder, rel, table) for rel, table in sorted((tables or {}).items())
    ]


def _remove_unnamed_layer_files(folder: Path, keep: set[str]) -> None:
    layer_dir = folder / mirror.GATE_VECTORS_DIR
    for path in sorted(layer_dir.glob("*.parquet")) if layer_dir.is_dir() else []:
        if path.relative_to(folder).as_posix() not in keep:
            path.unlink()


def written_mirror(folder: Path, index: sidecar.VindexIndex) -> list[mirror.MirrorFile]:
    """The mirror files a finished folder holds (for re-rendering its card)."""
    n = index.model_config.num_hidden_layers
    paths = [
        (mirror.layer_config(layer, n), mirror.gate_vectors_parquet(layer, n))
        for layer in index.layer_ids
    ]
    paths += list(mirror.STATS_PARQUET_OF.items())
    files = [written_file(folder, *entry) for entry in paths if (folder / entry[1]).is_file()]
    # the stats configs come as a pair: one without the other is not listed (as a build writes them)
    stats = [f for f in files if f.config in mirror.STATS_CONFIGS]
    files = (
        files
        if len(stats) in (0, len(mirror.STATS_CONFIGS))
        else [f for f in files if f not in stats]
    )
    if (folder / mirror.FEATURE_TOKENS_PARQUET).is_file():
        files.append(
            written_file(folder, mirror.CONFIG_FEATURE_TOKENS, mirror.FEATURE_TOKENS_PARQUET)
        )
    if (folder / geometry.EXPERT_OVERLAP_PARQUET).is_file():
        files.append(
            written_file(folder, geometry.CONFIG_EXPERT_OVERLAP, geometry.EXPERT_OVERLAP_PARQUET)
        )
    return files


def stats_tables(index: sidecar.VindexIndex, results: Sequence[LayerResult]) -> dict[str, pa.Table]:
    """The two stats configs' tables of a build's results, by file path."""
    have = [r.layer for r in results]
    if have != index.layer_ids:
        raise VindexFormatError(
            f"layer results {have} do not match the index's layers {index.layer_ids}"
        )
    return {
        mirror.EXPERT_STATS_PARQUET: expert_stats_table(results, index.num_feats),
        mirror.ROUTER_SVD_PARQUET: router_svd_table(results),
    }


def restrict_to_layers(table: pa.Table, layers: Sequence[int]) -> pa.Table:
    """A published stats table's rows of ``layers`` (for a vindex cut from a larger one)."""
    keep = pa.array(list(layers), type=table.schema.field(mirror.COL_LAYER).type)
    return table.filter(pc.is_in(table[mirror.COL_LAYER], value_set=keep))
