"""Names of the statistics a vindex publishes (sidecar, phase documents, mirror, card).

The formulas live in ``numerics.stats``; this module only spells the keys.
"""

from __future__ import annotations

FROBENIUS_NORM = "frobenius_norm"
SINGULAR_VALUES = "singular_values"

# Router statistics: the k of the top-k energy fractions (DESIGN.md, Statistics).
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


def median_var_key(num_feats: int) -> str:
    return summary_var_key("median", num_feats)


def q25_var_key(num_feats: int) -> str:
    return summary_var_key("q25", num_feats)


def q75_var_key(num_feats: int) -> str:
    return summary_var_key("q75", num_feats)


def router_topk_key(k: int) -> str:
    return f"top{k}_energy"


def mp_var_key(num_feats: int) -> str:
    """``mp_var64``: var{K} of a Gaussian random matrix of the expert's shape (Marchenko-Pastur)."""
    return f"mp_{var_key(num_feats)}"
