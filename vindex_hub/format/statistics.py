"""Names of the statistics a vindex publishes (sidecar, phase documents, mirror, card).

The formulas live in ``numerics.stats``; this module only spells the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FROBENIUS_NORM = "frobenius_norm"
SINGULAR_VALUES = "singular_values"

# Router statistics: the k of the top-k energy fractions (docs/format.md, Statistics).
ROUTER_TOPK = (1, 8, 16, 32, 64)
ROUTER_EFFECTIVE_RANK = "effective_rank"
ROUTER_STABLE_RANK = "stable_rank"
ROUTER_S0_S1 = "s0_s1"


def var_key(num_feats: int) -> str:
    """``var64``: the energy fraction sum(s[:K]^2)/||W||_F^2 for K = num_feats."""
    return f"var{num_feats}"


def summary_var_key(stat: str, num_feats: int) -> str:
    """``median_var64``, ``q25_var64``, ``mean_var64``...: a statistic of var{K} over experts."""
    return f"{stat}_{var_key(num_feats)}"


@dataclass(frozen=True)
class Summary:
    """A 1-D sample (var{K} over a layer's experts) summarized: each field's name is the
    statistic's name in the published keys (``median`` -> ``median_var64``), spelled here only.
    The field order is the order the phase document lists them."""

    median: float
    q25: float
    q75: float
    mean: float
    min: float
    max: float

    def by_key(self, num_feats: int) -> dict[str, float]:
        """``{"median_var64": ..., "q25_var64": ..., ...}``: the published keys and values."""
        return {summary_var_key(f.name, num_feats): getattr(self, f.name) for f in fields(self)}


# The three statistics the sidecar records for each layer.
MEDIAN, Q25, Q75 = "median", "q25", "q75"  # fields of Summary (tests/test_stats.py)


def median_var_key(num_feats: int) -> str:
    return summary_var_key(MEDIAN, num_feats)


def q25_var_key(num_feats: int) -> str:
    return summary_var_key(Q25, num_feats)


def q75_var_key(num_feats: int) -> str:
    return summary_var_key(Q75, num_feats)


# ``vindex-hub info --json`` / ``Vindex.info()``: each layer's var{K} quartiles under names that do
# not change with K (scripts comparing vindexes of different K read the same keys), and K itself.
INFO_VAR_K = "var_k"
INFO_MEDIAN_VAR = "median_var"
INFO_Q25_VAR = "q25_var"
INFO_Q75_VAR = "q75_var"


def router_topk_key(k: int) -> str:
    return f"top{k}_energy"


def mp_var_key(num_feats: int) -> str:
    """``mp_var64``: var{K} of a Gaussian random matrix of the expert's shape (Marchenko-Pastur)."""
    return f"mp_{var_key(num_feats)}"
