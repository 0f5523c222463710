"""``phase1_moe_svd.json`` and ``phase2_router_svd.json``, derived from the layers' results.

phase1, per layer: ``routed`` (var{K} over the routed experts: median, q25, q75, mean, min,
max), ``shared`` (the shared expert's var{K} and Frobenius norm, or null) and ``router`` (the
headline router figures). phase2, per layer: the full router decomposition, with its spectrum.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..format import sidecar, statistics
from ..numerics import stats
from ..results import LayerResult

LAYERS = "layers"  # both files: {"<layer id>": that layer's figures}
ROUTED = "routed"
SHARED = "shared"
ROUTER = "router"


def routed_summary(result: LayerResult) -> dict[str, float]:
    """var{K} over the routed experts: ``{median_var64: ..., q25_var64: ..., ...}``."""
    k = result.num_feats
    var = stats.energy_fraction(result.singular_values, result.frobenius_norm)
    return {statistics.summary_var_key(name, k): value for name, value in stats.summarize(var).items()}


def router_figures(result: LayerResult) -> dict[str, Any]:
    return stats.router_stats(result.router_singular_values, result.router_frobenius_norm)


def phase1_json(results: Sequence[LayerResult], index: sidecar.VindexIndex) -> dict[str, Any]:
    k = index.num_feats
    layers: dict[str, Any] = {}
    for r in results:
        shared = None
        if r.shared_singular_values is not None:
            var = stats.energy_fraction(r.shared_singular_values[None, :], [r.shared_frobenius_norm])
            shared = {statistics.var_key(k): float(var[0]), statistics.FROBENIUS_NORM: r.shared_frobenius_norm}
        router = {key: v for key, v in router_figures(r).items() if key != statistics.SINGULAR_VALUES}
        layers[str(r.layer)] = {
            ROUTED: {"n_experts": r.num_experts, **routed_summary(r)},
            SHARED: shared,
            ROUTER: router,
        }
    return {
        "format_version": sidecar.FORMAT_VERSION,
        "num_feats": k,
        "model": index.source.repo_id,
        "revision": index.source.revision,
        LAYERS: layers,
    }


def phase2_json(results: Sequence[LayerResult], index: sidecar.VindexIndex) -> dict[str, Any]:
    return {
        "format_version": sidecar.FORMAT_VERSION,
        "model": index.source.repo_id,
        "revision": index.source.revision,
        LAYERS: {str(r.layer): router_figures(r) for r in results},
    }
