"""The expert geometry of a vindex folder: computed from its binary, written by the write sequence.

``compute_geometry`` streams ``gate_vectors.bin`` one layer at a time (memory: one layer and its
``E x E`` products) and applies ``numerics.geometry``; the rest shapes the figures into what is
published (``format.geometry`` names them): the ``expert_overlap`` config, the router-alignment
columns of ``expert_stats``, the per-layer summaries in ``phase1_moe_svd.json`` and the card's
overlap figure (``card_figures`` reads them back from the folder, so a re-rendered card draws the
same figure).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import VindexFormatError
from ..format import filenames, geometry, larql, layout, mirror, phases, sidecar, statistics
from ..format.mirror import MirrorFile
from ..fsutil import atomic_path
from ..numerics import geometry as geo
from ..results import LayerResult
from .mirror import STATS_WRITE_OPTIONS, written_file

GEOMETRY_PLOT_FILE = filenames.GEOMETRY_PLOT_FILE


@dataclass(frozen=True)
class LayerGeometry:
    layer: int
    overlaps: geo.CrossOverlap
    alignment: geo.AlignmentResult | None


@dataclass(frozen=True)
class GeometryInputs:
    """What the geometry needs beside the binary: per layer, the experts' singular values
    (``(E, K)``, for the energy-weighted overlap) and the router (``(E, H)``, for the alignment);
    either may be missing (a seed-format vindex keeps neither)."""

    singular_values: Mapping[int, np.ndarray] | None = None
    routers: Mapping[int, np.ndarray] | None = None

    @classmethod
    def of_results(cls, results: Sequence[LayerResult]) -> GeometryInputs:
        routers = {r.layer: r.router_weight for r in results if r.router_weight is not None}
        return cls(
            singular_values={r.layer: r.singular_values for r in results},
            routers=routers if len(routers) == len(results) else None,
        )

    @classmethod
    def of_folder(cls, folder: Path, index: sidecar.VindexIndex) -> GeometryInputs:
        """From a finished folder: ``expert_stats``' singular values and LarQL's
        ``router_weights.bin``, where the folder has them."""
        svals = None
        stats_path = folder / mirror.EXPERT_STATS_PARQUET
        if stats_path.is_file():
            table = pq.read_table(
                stats_path, columns=[mirror.COL_LAYER, statistics.SINGULAR_VALUES]
            )
            layer_col = table.column(mirror.COL_LAYER).to_numpy()
            col = table.column(statistics.SINGULAR_VALUES).combine_chunks()
            values = col.values.to_numpy(zero_copy_only=False).reshape(len(col), index.num_feats)
            svals = {layer: values[layer_col == layer] for layer in index.layer_ids}
            if any(v.shape[0] != index.num_experts for v in svals.values()):
                raise VindexFormatError(
                    f"{stats_path}: expected {index.num_experts} rows of each layer {index.layer_ids}"
                )
        return cls(singular_values=svals, routers=_routers_of_folder(folder, index))


def _routers_of_folder(folder: Path, index: sidecar.VindexIndex) -> dict[int, np.ndarray] | None:
    """The routers in LarQL's ``router_weights.bin`` (layers its index.json lists as real)."""
    path = folder / filenames.LARQL_ROUTER_BIN
    doc_path = folder / filenames.LARQL_INDEX_JSON
    if not path.is_file() or not doc_path.is_file():
        return None
    import json

    real = json.loads(doc_path.read_text(encoding="utf-8")).get(larql.ROUTER_LAYERS) or []
    if not set(index.layer_ids) <= set(real):
        return None
    e, h = index.num_experts, index.hidden_size
    block = larql.router_block_values(e, h)
    data = np.memmap(path, dtype=layout.NUMPY_DTYPE, mode="r")
    if data.size < index.model_config.num_hidden_layers * block:
        raise VindexFormatError(f"{path}: {data.size} values, shorter than its index.json says")
    return {
        layer: np.array(data[layer * block : layer * block + e * h]).reshape(e, h)
        for layer in index.layer_ids
    }


def compute_geometry(
    folder: Path, index: sidecar.VindexIndex, inputs: GeometryInputs
) -> list[LayerGeometry]:
    """Overlaps (and router alignment, with routers) of every layer of the folder's binary."""
    vectors = np.memmap(
        folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        mode="r",
        shape=index.array_shape,
    )
    out = []
    try:
        for slot, layer in enumerate(index.layer_ids):
            block = np.asarray(vectors[slot])
            svals = inputs.singular_values.get(layer) if inputs.singular_values else None
            router = inputs.routers.get(layer) if inputs.routers else None
            out.append(
                LayerGeometry(
                    layer=layer,
                    overlaps=geo.overlaps(block, svals),
                    alignment=geo.router_alignment(block, router) if router is not None else None,
                )
            )
    finally:
        del vectors
    return out


# ---- what is published -----------------------------------------------------------------------
def expert_overlap_table(layers: Sequence[LayerGeometry], num_experts: int) -> pa.Table:
    weighted = all(g.overlaps.weighted is not None for g in layers)
    rows = [
        pa.array(np.repeat([g.layer for g in layers], num_experts).astype(np.int16)),
        pa.array(np.tile(np.arange(num_experts, dtype=np.int16), len(layers))),
        _matrix_column([g.overlaps.plain for g in layers], num_experts),
    ]
    if weighted:
        rows.append(_matrix_column([g.overlaps.weighted for g in layers], num_experts))
    return pa.Table.from_arrays(
        rows, schema=geometry.expert_overlap_schema(num_experts, weighted=weighted)
    )


def _matrix_column(matrices: Sequence[Any], width: int) -> pa.FixedSizeListArray:
    flat = np.concatenate([np.asarray(m, dtype=np.float32).reshape(-1) for m in matrices])
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), width)


def write_expert_overlap(
    folder: Path, layers: Sequence[LayerGeometry], num_experts: int
) -> MirrorFile:
    return write_overlap_table(folder, expert_overlap_table(layers, num_experts))


def write_overlap_table(folder: Path, table: pa.Table) -> MirrorFile:
    """The ``expert_overlap`` config's file (computed, or carried from a source vindex)."""
    rel = geometry.EXPERT_OVERLAP_PARQUET
    with atomic_path(folder / rel) as tmp:
        pq.write_table(table, tmp, **STATS_WRITE_OPTIONS)
    return written_file(folder, geometry.CONFIG_EXPERT_OVERLAP, rel)


def with_alignment(table: pa.Table, layers: Sequence[LayerGeometry]) -> pa.Table:
    """``expert_stats`` with the router-alignment columns (replaced if present); unchanged when a
    layer's router is unknown."""
    if any(g.alignment is None for g in layers):
        return table
    by_layer = {g.layer: g.alignment for g in layers}
    layer_col = table.column(mirror.COL_LAYER).to_numpy()
    expert_col = table.column(mirror.COL_EXPERT).to_numpy()
    own = np.full(len(layer_col), np.nan)
    other = np.full(len(layer_col), np.nan)
    which = np.full(len(layer_col), -1, dtype=np.int16)
    for layer, a in by_layer.items():
        assert a is not None
        rows = layer_col == layer
        experts = expert_col[rows]
        own[rows], other[rows], which[rows] = (
            a.own[experts],
            a.other_max[experts],
            a.other_expert[experts],
        )
    for name in geometry.ALIGNMENT_COLUMNS:
        if name in table.column_names:
            table = table.drop_columns([name])
    for field, values in zip(geometry.alignment_fields(), (own, other, which), strict=True):
        table = table.append_column(field, pa.array(values, type=field.type))
    return table


def layer_summary(g: LayerGeometry, index: sidecar.VindexIndex) -> dict[str, Any]:
    """The phase-1 ``geometry`` section of one layer."""
    baseline = geo.random_overlap(index.num_feats, index.hidden_size)
    out: dict[str, Any] = {
        geometry.RANDOM_BASELINE: baseline,
        geometry.OVERLAP: geo.summarize_overlaps(g.overlaps.plain).to_json(),
    }
    if g.overlaps.weighted is not None:
        out[geometry.WEIGHTED_OVERLAP] = geo.summarize_overlaps(g.overlaps.weighted).to_json()
    if g.alignment is not None:
        out[geometry.ROUTER_ALIGNMENT] = {
            geometry.MEAN: float(g.alignment.own.mean()),
            geometry.MEAN_OTHER_MAX: float(np.nanmean(g.alignment.other_max)),
            geometry.OTHER_ABOVE_OWN: float(np.mean(g.alignment.other_max > g.alignment.own)),
        }
    return out


def mp_baseline(index: sidecar.VindexIndex) -> float:
    """var{K} of a Gaussian matrix of a routed expert's gate_proj shape (intermediate x hidden)."""
    moe = index.model_config.moe
    return geo.mp_energy_fraction(moe.moe_intermediate_size, moe.hidden_size, index.num_feats)


def phase1_with_geometry(
    document: dict[str, Any] | None, index: sidecar.VindexIndex, layers: Sequence[LayerGeometry]
) -> dict[str, Any]:
    """The phase-1 document with each layer's ``geometry`` section and the MP baseline; a folder
    without one (a seed-format vindex) gets one made from the sidecar's var{K} quartiles."""
    from .phases import header

    k = index.num_feats
    doc = dict(document) if document else {**header(index, **{sidecar.NUM_FEATS_KEY: k})}
    have = dict(doc.get(phases.LAYERS) or {})
    mp = mp_baseline(index)
    for g in layers:
        entry = dict(have.get(str(g.layer)) or {})
        if not entry:
            e = index.layer(g.layer)
            entry[phases.ROUTED] = {
                phases.N_EXPERTS: index.num_experts,
                statistics.median_var_key(k): e.median_var,
                statistics.q25_var_key(k): e.q25_var,
                statistics.q75_var_key(k): e.q75_var,
            }
        routed = dict(entry.get(phases.ROUTED) or {})
        routed[statistics.mp_var_key(k)] = mp
        entry[phases.ROUTED] = routed
        entry[geometry.GEOMETRY] = layer_summary(g, index)
        have[str(g.layer)] = entry
    doc[phases.LAYERS] = {str(layer): have[str(layer)] for layer in sorted(map(int, have))}
    return doc


# ---- the card's figure -----------------------------------------------------------------------
@dataclass(frozen=True)
class CardGeometry:
    """What the card says about the geometry: per layer mean overlaps, the baseline, and the most
    structured layer's matrix (the largest mean overlap)."""

    layers: list[int]
    mean: list[float]
    weighted_mean: list[float] | None
    max: list[float]
    baseline: float
    heatmap_layer: int
    heatmap: np.ndarray  # (E, E)

    @property
    def top_ratio(self) -> float:
        return max(self.mean) / self.baseline


def card_figures(
    folder: Path, index: sidecar.VindexIndex, mirror_files: Sequence[MirrorFile]
) -> CardGeometry | None:
    """The card's geometry figures, read from what the folder holds (None without the config)."""
    import json

    if not any(f.config == geometry.CONFIG_EXPERT_OVERLAP for f in mirror_files):
        return None
    doc = json.loads((folder / filenames.PHASE1_JSON).read_text(encoding="utf-8"))
    sections = [doc[phases.LAYERS][str(layer)][geometry.GEOMETRY] for layer in index.layer_ids]
    mean = [s[geometry.OVERLAP][geometry.MEAN] for s in sections]
    weighted = (
        [s[geometry.WEIGHTED_OVERLAP][geometry.MEAN] for s in sections]
        if all(geometry.WEIGHTED_OVERLAP in s for s in sections)
        else None
    )
    top = index.layer_ids[int(np.argmax(mean))]
    table = pq.read_table(
        folder / geometry.EXPERT_OVERLAP_PARQUET,
        columns=[geometry.COL_OVERLAP],
        filters=[(geometry.COL_LAYER, "=", top)],
    )
    col = table.column(geometry.COL_OVERLAP).combine_chunks()
    heatmap = col.values.to_numpy(zero_copy_only=False).reshape(len(col), index.num_experts)
    return CardGeometry(
        layers=index.layer_ids,
        mean=mean,
        weighted_mean=weighted,
        max=[s[geometry.OVERLAP][geometry.MAX] for s in sections],
        baseline=sections[0][geometry.RANDOM_BASELINE],
        heatmap_layer=top,
        heatmap=heatmap,
    )


def geometry_plot_png(figures: CardGeometry, title: str) -> bytes:
    """Mean overlap per layer against the random baseline, and the most structured layer's
    ``E x E`` overlap matrix; PNG bytes without time/software metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax, hm = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    ax.plot(figures.layers, figures.mean, marker="o", markersize=3, label="mean overlap")
    if figures.weighted_mean is not None:
        ax.plot(
            figures.layers,
            figures.weighted_mean,
            marker="s",
            markersize=3,
            label="mean energy-weighted overlap",
        )
    ax.axhline(
        figures.baseline,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"random subspaces (K/hidden = {figures.baseline:.4f})",
    )
    ax.set_ylim(0, max(max(figures.mean), figures.baseline) * 1.3)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("overlap ||V_a V_b^T||_F^2 / K")
    ax.set_title(f"{title}: expert subspace overlap, pairs of one layer")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    off = figures.heatmap.copy()
    np.fill_diagonal(off, np.nan)  # the diagonal (1) would wash out the scale
    image = hm.imshow(off, cmap="viridis", vmin=0, interpolation="nearest")
    hm.set_title(f"layer {figures.heatmap_layer}: overlap of experts (off-diagonal)")
    hm.set_xlabel("expert")
    hm.set_ylabel("expert")
    hm.xaxis.set_major_locator(MaxNLocator(integer=True))
    hm.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(image, ax=hm, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
