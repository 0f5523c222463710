"""Names of the expert-geometry figures on disk (mirror config, columns, phase-document keys) and
of a comparison dataset's files. The formulas live in ``numerics.geometry``.

``expert_overlap`` (``--geometry``)  one row per (layer, expert): ``overlap`` (float32 x experts,
                                     against every expert of its layer) and, when the vindex has
                                     singular values, ``weighted_overlap`` (energy-weighted)
``expert_stats`` columns            ``router_alignment``, ``router_alignment_other_max``,
                                     ``router_alignment_other_expert`` (when the router is known)
phase1 ``layers[L].geometry``        per-layer summaries (``geometry_summary_keys``)
phase1 ``layers[L].routed.mp_var64`` the Marchenko-Pastur baseline of var{K}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .filenames import DATA_DIR

if TYPE_CHECKING:  # pyarrow loads only where a schema is built (the CLI stays light)
    import pyarrow as pa

CONFIG_EXPERT_OVERLAP = "expert_overlap"
EXPERT_OVERLAP_PARQUET = f"{DATA_DIR}/{CONFIG_EXPERT_OVERLAP}/train.parquet"
COL_LAYER = "layer"  # the same spelling as format.mirror's index columns
COL_EXPERT = "expert"
COL_OVERLAP = "overlap"
COL_WEIGHTED_OVERLAP = "weighted_overlap"

# expert_stats columns (router-expert alignment)
COL_ROUTER_ALIGNMENT = "router_alignment"  # share of ||r_e||^2 in span(V_e)
COL_ROUTER_ALIGNMENT_OTHER_MAX = "router_alignment_other_max"  # largest share in another span
COL_ROUTER_ALIGNMENT_OTHER_EXPERT = "router_alignment_other_expert"  # which expert that is
ALIGNMENT_COLUMNS = (
    COL_ROUTER_ALIGNMENT,
    COL_ROUTER_ALIGNMENT_OTHER_MAX,
    COL_ROUTER_ALIGNMENT_OTHER_EXPERT,
)

# phase1 layers[L][GEOMETRY]
GEOMETRY = "geometry"
OVERLAP = "overlap"  # {mean, median, max, closest_pair}
WEIGHTED_OVERLAP = "weighted_overlap"  # the same, energy-weighted (when singular values exist)
ROUTER_ALIGNMENT = "router_alignment"  # {mean, mean_other_max, above_own}
RANDOM_BASELINE = "random_baseline"  # K / hidden: independent random subspaces
MEAN = "mean"
MEDIAN = "median"
MAX = "max"
CLOSEST_PAIR = "closest_pair"
MEAN_OTHER_MAX = "mean_other_max"
# the share of experts whose router row lies more in another expert's span than in its own
OTHER_ABOVE_OWN = "other_above_own"

# ---- a comparison of two vindexes (``vindex-hub compare``) ----------------------------------
COMPARE_JSON = "compare.json"  # the sidecar-like document: both sources, commits, per-layer summary
COMPARE_FORMAT_VERSION = 1
CONFIG_MATCHING = "matching"  # one row per (layer, expert of A)
CONFIG_CROSS_OVERLAP = (
    "cross_overlap"  # one row per (layer, expert of A): overlaps with B's experts
)
CONFIG_LAYER_SUMMARY = "layer_summary"  # one row per layer
MATCHING_PARQUET = f"{DATA_DIR}/{CONFIG_MATCHING}/train.parquet"
CROSS_OVERLAP_PARQUET = f"{DATA_DIR}/{CONFIG_CROSS_OVERLAP}/train.parquet"
LAYER_SUMMARY_PARQUET = f"{DATA_DIR}/{CONFIG_LAYER_SUMMARY}/train.parquet"
COMPARE_PARQUETS = {
    CONFIG_LAYER_SUMMARY: LAYER_SUMMARY_PARQUET,  # the default: smallest
    CONFIG_MATCHING: MATCHING_PARQUET,
    CONFIG_CROSS_OVERLAP: CROSS_OVERLAP_PARQUET,
}
COL_SAME_INDEX = "same_index_overlap"  # A's e with B's e
COL_MATCH = "matched_expert"  # B's expert matched to A's e (-1: none)
COL_MATCHED = "matched_overlap"
COMPARE_PLOT_FILE = "images/compare_per_layer.png"
# compare.json keys
COMPARE_A = "a"
COMPARE_B = "b"
COMPARE_LAYERS = "layers"
SUMMARY_KEYS = (
    "mean_same_index",
    "min_same_index",
    "mean_matched",
    "mean_cross",
    "matched_to_itself",
)


def expert_overlap_schema(num_experts: int, *, weighted: bool) -> pa.Schema:
    import pyarrow as pa

    fields = [
        (COL_LAYER, pa.int16()),
        (COL_EXPERT, pa.int16()),
        (COL_OVERLAP, pa.list_(pa.float32(), num_experts)),
    ]
    if weighted:
        fields.append((COL_WEIGHTED_OVERLAP, pa.list_(pa.float32(), num_experts)))
    return pa.schema(fields)


def alignment_fields() -> list[pa.Field]:
    import pyarrow as pa

    return [
        pa.field(COL_ROUTER_ALIGNMENT, pa.float64()),
        pa.field(COL_ROUTER_ALIGNMENT_OTHER_MAX, pa.float64()),
        pa.field(COL_ROUTER_ALIGNMENT_OTHER_EXPERT, pa.int16()),
    ]


def cross_overlap_schema(num_experts_b: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            (COL_LAYER, pa.int16()),
            (COL_EXPERT, pa.int16()),
            (COL_OVERLAP, pa.list_(pa.float32(), num_experts_b)),
        ]
    )


def matching_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            (COL_LAYER, pa.int16()),
            (COL_EXPERT, pa.int16()),
            (COL_SAME_INDEX, pa.float64()),
            (COL_MATCH, pa.int16()),
            (COL_MATCHED, pa.float64()),
        ]
    )


def layer_summary_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(COL_LAYER, pa.int16()), *((k, pa.float64()) for k in SUMMARY_KEYS)])
