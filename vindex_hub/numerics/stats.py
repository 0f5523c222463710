"""Spectral statistics of experts and routers (pure functions on singular values).

Definitions (``docs/format.md``, Statistics), all computed in float64:

* energy fraction ``var{K} = sum(s[:K]^2) / ||W||_F^2``; ``||W||_F`` is passed separately since
  only the top K singular values of an expert are computed;
* effective rank ``exp(H(p))`` with ``p_i = s_i / sum(s)`` and ``H`` the Shannon entropy in nats
  (Roy & Vetterli, 2007), ``0 log 0 = 0``;
* stable rank ``||W||_F^2 / s_0^2``;
* ``s0/s1``, the ratio of the two largest singular values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UsageError
from ..format import statistics

__all__ = ["effective_rank", "energy_fraction", "router_stats", "summarize"]


def energy_fraction(
    singular_values: np.ndarray, frobenius_norm: np.ndarray | Sequence[float]
) -> np.ndarray:
    """``sum(s[:K]^2) / ||W||_F^2`` per matrix: ``(n, K)`` singular values, ``(n,)`` norms -> ``(n,)``."""
    s = np.asarray(singular_values, dtype=np.float64)
    fro = np.asarray(frobenius_norm, dtype=np.float64)
    if s.ndim != 2 or fro.shape != s.shape[:1]:
        raise UsageError(
            f"energy_fraction needs (n, K) singular values and (n,) norms, got {s.shape}, {fro.shape}"
        )
    if np.any(fro <= 0):
        raise UsageError("energy_fraction of a zero matrix (Frobenius norm 0) is undefined")
    fraction: np.ndarray = np.sum(s**2, axis=1) / fro**2
    return fraction


def summarize(values: np.ndarray | Sequence[float]) -> statistics.Summary:
    """Median, quartiles, mean, min and max of a 1-D sample (numpy's linear quantiles)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise UsageError(f"summarize needs a non-empty 1-D sample, got shape {v.shape}")
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return statistics.Summary(
        median=float(median),
        q25=float(q25),
        q75=float(q75),
        mean=float(v.mean()),
        min=float(v.min()),
        max=float(v.max()),
    )


def effective_rank(singular_values: np.ndarray | Sequence[float]) -> float:
    """``exp(H(p))``, ``p = s / sum(s)``: between 1 (rank one) and ``len(s)`` (flat spectrum)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        raise UsageError("effective rank of a zero matrix is undefined")
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def router_stats(
    singular_values: np.ndarray | Sequence[float], frobenius_norm: float
) -> dict[str, Any]:
    """The router decomposition of one layer from its *full* spectrum (all ``min(E, H)`` values).

    Keys: ``statistics.router_topk_key(k)`` for ``k`` in ``statistics.ROUTER_TOPK`` (the top-k energy
    fraction; for ``k > len(s)`` the sum runs over all ``len(s)`` values, so the key set is
    the same for every model and the value is the whole energy, 1 up to rounding),
    ``effective_rank``, ``stable_rank``, ``s0_s1`` (None when ``s1`` is 0 or absent: JSON has
    no infinity) and ``statistics.SINGULAR_VALUES`` (the spectrum, a list of floats).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise UsageError(f"router_stats needs a non-empty 1-D spectrum, got shape {s.shape}")
    if np.any(np.diff(s) > 0):
        raise UsageError("router_stats needs singular values in descending order")
    fro2 = float(frobenius_norm) ** 2
    if not fro2 > 0 or not s[0] > 0:
        raise UsageError("router_stats of a zero router matrix is undefined")
    energy = np.cumsum(s**2) / fro2
    out: dict[str, Any] = {
        statistics.router_topk_key(k): float(energy[min(k, s.size) - 1])
        for k in statistics.ROUTER_TOPK
    }
    out[statistics.ROUTER_EFFECTIVE_RANK] = effective_rank(s)
    out[statistics.ROUTER_STABLE_RANK] = fro2 / s[0] ** 2
    out[statistics.ROUTER_S0_S1] = float(s[0] / s[1]) if s.size > 1 and s[1] > 0 else None
    out[statistics.SINGULAR_VALUES] = s.tolist()
    return out
