"""The dataset a comparison of two vindexes becomes (``vindex-hub compare A B -o OUT``).

Files (names in ``format.geometry``): three parquet configs, ``layer_summary`` (the default:
one row per layer), ``matching`` (one row per layer and expert of A: the same-index overlap,
B's matched expert and the matched overlap) and ``cross_overlap`` (one row per layer and expert
of A: its overlaps with every expert of B's layer); a plot; a card; and ``compare.json`` (both
sources with their commits, the per-layer summaries), written last: a folder holding it is a
finished comparison.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..format import filenames, geometry
from ..fsutil import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from ..numerics.geometry import LayerComparison
from .mirror import STATS_WRITE_OPTIONS


def comparison_tables(layers: Mapping[int, LayerComparison]) -> dict[str, pa.Table]:
    """The three configs' tables, by file path."""
    ids = sorted(layers)
    rows_layer = np.concatenate([np.full(len(layers[i].match), i, np.int16) for i in ids])
    rows_expert = np.concatenate([np.arange(len(layers[i].match), dtype=np.int16) for i in ids])
    same = np.concatenate(
        [
            np.pad(
                layers[i].same_index,
                (0, len(layers[i].match) - len(layers[i].same_index)),
                constant_values=np.nan,
            )
            for i in ids
        ]
    )
    matching = pa.Table.from_arrays(
        [
            pa.array(rows_layer),
            pa.array(rows_expert),
            pa.array(same, from_pandas=True),  # NaN (no expert e in B) becomes null
            pa.array(np.concatenate([layers[i].match for i in ids]).astype(np.int16)),
            pa.array(np.concatenate([layers[i].matched for i in ids]), from_pandas=True),
        ],
        schema=geometry.matching_schema(),
    )
    width = layers[ids[0]].cross.shape[1]
    cross = pa.Table.from_arrays(
        [
            pa.array(rows_layer),
            pa.array(rows_expert),
            pa.FixedSizeListArray.from_arrays(
                pa.array(
                    np.concatenate([layers[i].cross.astype(np.float32).reshape(-1) for i in ids]),
                    type=pa.float32(),
                ),
                width,
            ),
        ],
        schema=geometry.cross_overlap_schema(width),
    )
    summaries = [layers[i].summary() for i in ids]
    summary = pa.Table.from_arrays(
        [
            pa.array(np.array(ids, dtype=np.int16)),
            *(
                pa.array([s[k] for s in summaries], type=pa.float64())
                for k in geometry.SUMMARY_KEYS
            ),
        ],
        schema=geometry.layer_summary_schema(),
    )
    return {
        geometry.LAYER_SUMMARY_PARQUET: summary,
        geometry.MATCHING_PARQUET: matching,
        geometry.CROSS_OVERLAP_PARQUET: cross,
    }


def compare_plot_png(layers: Mapping[int, LayerComparison], baseline: float, title: str) -> bytes:
    """Per layer: mean same-index and mean matched overlap, against the random baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ids = sorted(layers)
    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        ids,
        [layers[i].summary()["mean_same_index"] for i in ids],
        marker="o",
        markersize=3,
        label="A's expert e vs B's expert e",
    )
    ax.plot(
        ids,
        [layers[i].summary()["mean_matched"] for i in ids],
        marker="s",
        markersize=3,
        label="best one-to-one matching",
    )
    ax.axhline(
        baseline,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"random subspaces (K/hidden = {baseline:.4f})",
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean overlap")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _card(document: dict[str, Any], tables: Mapping[str, pa.Table]) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    a, b = document[geometry.COMPARE_A], document[geometry.COMPARE_B]
    configs = [
        {
            "config_name": name,
            **({"default": True} if name == geometry.CONFIG_LAYER_SUMMARY else {}),
            "data_files": [{"split": "train", "path": rel}],
        }
        for name, rel in geometry.COMPARE_PARQUETS.items()
    ]
    data = DatasetCardData(
        tags=["vindex-comparison", "mixture-of-experts", "interpretability"],
        configs=configs,
        pretty_name=f"{a['name']} vs {b['name']}: expert subspace comparison",
    )
    summary = tables[geometry.LAYER_SUMMARY_PARQUET].to_pylist()
    rows = "\n".join(
        f"| {r['layer']} | {r['mean_same_index']:.4f} | {r['mean_matched']:.4f} | "
        f"{r['matched_to_itself']:.2f} |"
        for r in summary
    )

    def where(side: dict[str, Any]) -> str:
        commit = f" at commit `{side['commit']}`" if side.get("commit") else ""
        return f"`{side['name']}`{commit} (model `{side['model']}`)"

    text = f"""---
{data.to_yaml()}
---

# {a["name"]} vs {b["name"]}

A comparison of the per-expert gate subspaces of two vindexes of one hidden size
({document["hidden_size"]}), made with `vindex-hub compare`:

- **A**: {where(a)}
- **B**: {where(b)}

For A's expert a and B's expert b of one layer, the **overlap** `||V_a V_b^T||_F^2 / K` is the
mean squared cosine of the principal angles between their top-K gate subspaces: 1 for the same
subspace, {document["random_baseline"]:.4f} (`K / hidden`) on average for random subspaces.

![mean overlap per layer]({geometry.COMPARE_PLOT_FILE})

| layer | mean overlap of A's e with B's e | mean overlap, best matching | share matched to the same index |
| --- | --- | --- | --- |
{rows}

Configs: `layer_summary` (the default, one row per layer), `matching` (per layer and expert of A:
`same_index_overlap`, `matched_expert` and `matched_overlap` of the one-to-one matching of
largest total overlap, `scipy.optimize.linear_sum_assignment`) and `cross_overlap` (per layer and
expert of A: the overlaps with every expert of B). `{geometry.COMPARE_JSON}` names both sources
and their commits.
"""
    DatasetCard(text)  # the front matter parses as the Hub would parse it
    return text


def write_comparison(
    out: Path,
    document: dict[str, Any],
    layers: Mapping[int, LayerComparison],
) -> list[str]:
    """Write the comparison dataset into ``out``; ``compare.json`` (``document``) last."""
    out.mkdir(parents=True, exist_ok=True)
    tables = comparison_tables(layers)
    written = []
    for rel, table in tables.items():
        with atomic_path(out / rel) as tmp:
            pq.write_table(table, tmp, **STATS_WRITE_OPTIONS)
        written.append(rel)
    title = f"{document[geometry.COMPARE_A]['name']} vs {document[geometry.COMPARE_B]['name']}"
    atomic_write_bytes(
        out / geometry.COMPARE_PLOT_FILE,
        compare_plot_png(layers, document["random_baseline"], title),
    )
    atomic_write_text(out / filenames.CARD_FILE, _card(document, tables))
    atomic_write_json(out / geometry.COMPARE_JSON, document)
    return [*written, geometry.COMPARE_PLOT_FILE, filenames.CARD_FILE, geometry.COMPARE_JSON]
