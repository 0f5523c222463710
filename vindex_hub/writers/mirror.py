"""The Arrow mirror: the vindex as parquet files that ``datasets.load_dataset`` reads.

Three configs (``schema``): ``gate_vectors`` (one file per layer, split ``layer_NN``, one row per
(expert, feature), the vector as a fixed-size float32 list copied bit for bit from
``gate_vectors.bin``), ``expert_stats`` (one row per (layer, expert): var{K}, Frobenius norm and
the top-K singular values, which the binary does not keep) and ``router_svd`` (one row per layer:
the phase-2 router figures). ``convert_vindex`` adds the mirror, LarQL index and card to a folder
that only has the binary and its sidecar (the seed's published vindex, for one).

Parquet settings, chosen by measurement (``benchmarks/bench_mirror.py``, BENCHMARKS.md):

* ``vector``: BYTE_STREAM_SPLIT + zstd, no dictionary, no statistics. Unit-norm float32 vectors
  barely compress as plain bytes (zstd: 0.92 of raw), but split into byte planes their exponent
  bytes do (0.84 of raw), and decoding stays as fast as uncompressed. A dictionary on random
  floats is pure overhead (it was 1.5x raw with small row groups); min/max statistics of vector
  entries serve no query.
* ``layer``/``expert``/``feature``: int16 with dictionary and statistics, so readers can prune
  row groups by expert.
* Row groups hold whole experts, at most ``ROW_GROUP_BYTES`` (16 MiB) of vectors: 16 experts at
  DeepSeek-V4-Flash size. The Hub's dataset viewer refuses pages whose row groups exceed about
  286 MiB and reads whole row groups to show 100 rows, so small groups keep it quick;
  ``datasets`` itself caps row groups at 100 MB. Reading speed did not change between 1 MiB and
  16 MiB groups.

Every file is written under a temporary name and renamed when complete (``fsutil``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..format import filenames, layout, mirror, sidecar, statistics
from ..numerics import stats
from ..errors import VindexFormatError
from ..fsutil import atomic_path, read_json_object
from ..results import LayerResult
from .phases import router_figures

ROW_GROUP_BYTES = 16 << 20
UNKNOWN = "unknown"  # builder fields of a converted seed-style vindex, which recorded none
_UNSET = -1  # placeholder for a count the seed must give: no real one is negative
INDEX_COLUMNS = [mirror.COL_LAYER, mirror.COL_EXPERT, mirror.COL_FEATURE]
_VECTOR_LEAF = f"{mirror.COL_VECTOR}.list.element"  # parquet's path of the list's values

GATE_VECTORS_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": INDEX_COLUMNS,
    "write_statistics": INDEX_COLUMNS,
    "column_encoding": {_VECTOR_LEAF: "BYTE_STREAM_SPLIT"},
}
# The stats tables are small (kilobytes to a few MB): plain zstd.
STATS_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd"}


# ---- schemas and tables (pure) -----------------------------------------------------------
def gate_vectors_schema(hidden_size: int) -> pa.Schema:
    return pa.schema([
        (mirror.COL_LAYER, pa.int16()),
        (mirror.COL_EXPERT, pa.int16()),
        (mirror.COL_FEATURE, pa.int16()),
        (mirror.COL_VECTOR, pa.list_(pa.float32(), hidden_size)),
    ])


def experts_per_row_group(num_feats: int, hidden_size: int) -> int:
    return max(1, ROW_GROUP_BYTES // layout.expert_nbytes(num_feats, hidden_size))


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
        schema=gate_vectors_schema(h),
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
    return pa.table({
        mirror.COL_LAYER: pa.array(np.concatenate(layers)),
        mirror.COL_EXPERT: pa.array(np.concatenate(experts)),
        statistics.var_key(num_feats): pa.array(np.concatenate(var).astype(np.float64)),
        statistics.FROBENIUS_NORM: pa.array(np.concatenate(frob)),
        statistics.SINGULAR_VALUES: pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(svals), type=pa.float32()), num_feats),
    })


def router_svd_table(results: Sequence[LayerResult]) -> pa.Table:
    """One row per layer: ``layer`` then the phase-2 figures, in ``router_figures`` order.

    Scalars become int64/float64 columns, sequences (the spectrum) fixed-size float64 lists.
    """
    rows = [router_figures(r) for r in results]
    columns: dict[str, pa.Array] = {
        mirror.COL_LAYER: pa.array(np.array([r.layer for r in results], dtype=np.int16))
    }
    for key in rows[0] if rows else []:
        values = [row[key] for row in rows]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            matrix = np.asarray(values, dtype=np.float64)
            columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            columns[key] = pa.array(np.asarray(values, dtype=np.int64))
        else:  # None (s0/s1 of a rank-1 router) becomes null
            columns[key] = pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.table(columns)


# ---- writing ---------------------------------------------------------------------------------
def open_gate_vectors(folder: Path, index: sidecar.VindexIndex, layer: int) -> np.ndarray:
    """Read-only ``(E, K, H)`` memmap of one layer's block of ``gate_vectors.bin``."""
    entry = index.layer(layer)
    return np.memmap(folder / filenames.GATE_VECTORS_BIN, dtype=layout.NUMPY_DTYPE, mode="r",
                     offset=entry.file_offset, shape=tuple(entry.shape))


def write_gate_vectors_layer(folder: Path, index: sidecar.VindexIndex, layer: int) -> str:
    """One layer's parquet file, streamed one row group at a time from the binary."""
    rel = mirror.gate_vectors_parquet(layer)
    block = open_gate_vectors(folder, index, layer)
    step = experts_per_row_group(index.num_feats, index.hidden_size)
    with atomic_path(folder / rel) as tmp:
        with pq.ParquetWriter(tmp, gate_vectors_schema(index.hidden_size),
                              **GATE_VECTORS_WRITE_OPTIONS) as writer:
            for start in range(0, index.num_experts, step):
                table = gate_vectors_table(layer, start, np.array(block[start:start + step]))
                writer.write_table(table, row_group_size=table.num_rows)
    return rel


def _write_table(folder: Path, rel: str, table: pa.Table) -> str:
    with atomic_path(folder / rel) as tmp:
        pq.write_table(table, tmp, **STATS_WRITE_OPTIONS)
    return rel


def write_mirror(folder: str | Path, index: sidecar.VindexIndex,
                 results: Sequence[LayerResult] | None) -> list[str]:
    """Write the mirror's parquet files; return their paths relative to ``folder``.

    Without ``results`` (a binary converted without its spectra) only ``gate_vectors`` is written.
    """
    folder = Path(folder)
    written = [write_gate_vectors_layer(folder, index, layer) for layer in index.layer_ids]
    if results is not None:
        have = [r.layer for r in results]
        if have != index.layer_ids:
            raise VindexFormatError(
                f"{folder}: layer results {have} do not match the index's layers {index.layer_ids}")
        written.append(_write_table(folder, mirror.EXPERT_STATS_PARQUET,
                                    expert_stats_table(results, index.num_feats)))
        written.append(_write_table(folder, mirror.ROUTER_SVD_PARQUET, router_svd_table(results)))
    return written


def write_stats_for_layers(folder: str | Path, tables: Mapping[str, pa.Table], layers: Sequence[int]) -> list[str]:
    """Write the stats configs of a vindex cut from a larger one: each table of ``tables``
    (``{mirror.EXPERT_STATS_PARQUET: ..., mirror.ROUTER_SVD_PARQUET: ...}``, as published)
    restricted to the rows of ``layers``."""
    folder = Path(folder)
    written = []
    for rel, table in sorted(tables.items()):
        keep = pa.array(list(layers), type=table.schema.field(mirror.COL_LAYER).type)
        written.append(_write_table(folder, rel, table.filter(pc.is_in(table[mirror.COL_LAYER], value_set=keep))))
    return written


# ---- converting an existing vindex --------------------------------------------------------
def convert_vindex(folder: str | Path, *, config: dict[str, Any] | None = None,
                   card_options: Any = None) -> list[str]:
    """Add the Arrow mirror, LarQL index and card to a folder with a binary and its sidecar.

    A sidecar without ``format_version`` (the seed's own) is upgraded first: layer checksums are
    computed from the binary and the current keys added, keeping every key the seed's usage
    snippet reads. ``config`` is the model's ``config.json`` when at hand (LarQL's vocab_size...).
    Returns the files written, relative to ``folder``.
    """
    from .card import CardOptions, write_card
    from .larql import write_larql_index

    folder = Path(folder)
    index, upgraded = load_or_upgrade_index(folder)
    index.check_layout(where=str(folder / filenames.INDEX_JSON),
                       file_size=(folder / filenames.GATE_VECTORS_BIN).stat().st_size)
    written = write_mirror(folder, index, None)
    written += write_larql_index(folder, index, config or {}, None)
    write_card(folder, index, card_options or CardOptions())
    written += [filenames.CARD_FILE, filenames.VAR_PLOT_FILE]
    if upgraded:
        from ..fsutil import atomic_write_json

        atomic_write_json(folder / filenames.INDEX_JSON, index.to_json())
        written.append(filenames.INDEX_JSON)
    return written


def load_or_upgrade_index(folder: Path) -> tuple[sidecar.VindexIndex, bool]:
    """The folder's sidecar; a seed-style one (no ``format_version``) upgraded. (index, upgraded)."""
    path = folder / filenames.INDEX_JSON
    data = read_json_object(path, what="sidecar (a vindex folder needs one)")
    if sidecar.FORMAT_VERSION_KEY in data:
        return sidecar.VindexIndex.from_json(data, where=str(path)), False
    return _upgrade_seed_index(folder, data, where=str(path)), True


def _upgrade_seed_index(folder: Path, seed: dict[str, Any], *, where: str) -> sidecar.VindexIndex:
    """The seed's sidecar (num_feats, model_config, layers{file_offset, shape, var quartiles}), typed.

    What the seed did not record comes from typed defaults that ``schema`` serializes, with the
    seed's own values laid over them, so no sidecar key is spelled here: an unknown builder and
    model type, the card's ``base_model`` as the source, and per layer the ``nbytes`` and
    ``sha256`` of the block the layout rule places it in. ``from_json`` then checks the seed's
    offsets and shapes against that same rule, so the checksums cover the blocks it names.
    What the seed must give itself starts as a placeholder (-1, NaN) and is refused if still one.
    """
    from ..checksums import sha256_file_range

    seed_layers = seed.get(sidecar.LAYERS_KEY)
    if not isinstance(seed_layers, dict) or not seed_layers:
        raise VindexFormatError(f"{where}: no {sidecar.FORMAT_VERSION_KEY} and no {sidecar.LAYERS_KEY} "
                                "mapping: neither a vindex-hub sidecar nor a seed-style one")
    unset_moe = sidecar.MoEConfig(**{f.name: _UNSET for f in dataclasses.fields(sidecar.MoEConfig)})
    defaults = sidecar.VindexIndex(
        num_feats=_UNSET,
        model_config=sidecar.ModelConfig(model_type=UNKNOWN, num_hidden_layers=len(seed_layers), moe=unset_moe),
        source=sidecar.SourceInfo(repo_id=_card_base_model(folder)),
        builder=sidecar.BuilderInfo(name=UNKNOWN, version=UNKNOWN, method=UNKNOWN, sign_rule=UNKNOWN),
    )
    # First without layers: the geometry, which fixes each layer's block.
    index = sidecar.VindexIndex.from_json(_overlay(defaults.to_json(), {**seed, sidecar.LAYERS_KEY: {}}),
                                         where=where)
    unset = [name for name, value in dataclasses.asdict(index.model_config.moe).items() if value == _UNSET]
    if index.num_feats == _UNSET:
        unset.insert(0, sidecar.NUM_FEATS_KEY)
    if unset:
        raise VindexFormatError(f"{where}: a seed-style sidecar (no {sidecar.FORMAT_VERSION_KEY}) lacking {unset}")
    try:
        layer_ids = sorted(int(name) for name in seed_layers)
    except ValueError as exc:
        raise VindexFormatError(f"{where}: a layer id is not a number ({exc})") from None
    shape = [index.num_experts, index.num_feats, index.hidden_size]
    for slot, layer in enumerate(layer_ids):
        offset = slot * index.layer_nbytes
        try:
            digest = sha256_file_range(folder / filenames.GATE_VECTORS_BIN, offset, index.layer_nbytes)
        except (EOFError, FileNotFoundError) as exc:
            raise VindexFormatError(f"{where}: layer {layer}: {exc}") from None
        index.layers[layer] = sidecar.LayerEntry(file_offset=offset, shape=shape, nbytes=index.layer_nbytes,
                                                sha256=digest, median_var=math.nan, q25_var=math.nan,
                                                q75_var=math.nan)
    index = sidecar.VindexIndex.from_json(_overlay(index.to_json(), seed), where=where)
    lacking = [layer for layer, e in index.layers.items()
               if any(math.isnan(v) for v in (e.median_var, e.q25_var, e.q75_var))]
    if lacking:
        raise VindexFormatError(f"{where}: layers {lacking} lack the var quartiles "
                                f"({statistics.median_var_key(index.num_feats)}, ...)")
    return index


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values laid on top, mappings merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _card_base_model(folder: Path) -> str | None:
    """``base_model`` from the folder's existing card, if it has one."""
    from .card import read_card_data

    card = folder / filenames.CARD_FILE
    if not card.exists():
        return None
    value = read_card_data(card).get("base_model")
    return value if isinstance(value, str) else None
