"""``phase1_moe_svd.json`` and ``phase2_router_svd.json``, derived from the layers' results.

The documents' keys are ``format.phases`` and ``format.statistics``; the formulas ``numerics.stats``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..format import phases, sidecar, statistics
from ..numerics import geometry, stats
from ..results import LayerResult


def routed_summary(result: LayerResult) -> statistics.Summary:
    """var{K} over the routed experts, summarized."""
    return stats.summarize(stats.energy_fraction(result.singular_values, result.frobenius_norm))


def router_figures(result: LayerResult) -> dict[str, Any] | None:
    """The layer's router figures; None where the model's router is not a matrix (the phase
    documents' null, ``sidecar.ROUTER_MATRIX_KEY``)."""
    if result.router_singular_values is None or result.router_frobenius_norm is None:
        return None
    return stats.router_stats(result.router_singular_values, result.router_frobenius_norm)


def _header(index: sidecar.VindexIndex, **first: Any) -> dict[str, Any]:
    """The documents' opening keys; ``first`` goes right after the format version."""
    return {
        sidecar.FORMAT_VERSION_KEY: sidecar.FORMAT_VERSION,
        **first,
        phases.MODEL: index.source.repo_id,
        phases.REVISION: index.source.revision,
    }


header = _header  # also what writers.geometry opens a phase-1 document with


def phase1_json(results: Sequence[LayerResult], index: sidecar.VindexIndex) -> dict[str, Any]:
    k = index.num_feats
    moe = index.model_config.moe
    mp = geometry.mp_energy_fraction(moe.moe_intermediate_size, moe.hidden_size, k)
    layers: dict[str, Any] = {}
    for r in results:
        shared = None
        if r.shared_singular_values is not None and r.shared_frobenius_norm is not None:
            var = stats.energy_fraction(
                r.shared_singular_values[None, :], [r.shared_frobenius_norm]
            )
            shared = {
                statistics.var_key(k): float(var[0]),
                statistics.FROBENIUS_NORM: r.shared_frobenius_norm,
            }
        figures = router_figures(r)
        router = (
            None
            if figures is None
            else {k: v for k, v in figures.items() if k != statistics.SINGULAR_VALUES}
        )
        summary = routed_summary(r).by_key(k)
        summary[statistics.mp_var_key(k)] = mp  # what a Gaussian matrix of this shape gives
        layers[str(r.layer)] = {
            phases.ROUTED: {phases.N_EXPERTS: r.num_experts, **summary},
            phases.SHARED: shared,
            phases.ROUTER: router,
        }
    return {**_header(index, **{sidecar.NUM_FEATS_KEY: k}), phases.LAYERS: layers}


def phase2_json(results: Sequence[LayerResult], index: sidecar.VindexIndex) -> dict[str, Any]:
    return {**_header(index), phases.LAYERS: {str(r.layer): router_figures(r) for r in results}}


def restrict_to_layers(document: dict[str, Any], layers: Sequence[int]) -> dict[str, Any]:
    """A published phase document cut to ``layers`` (for a vindex of some of its layers)."""
    have = document.get(phases.LAYERS, {})
    return {
        **document,
        phases.LAYERS: {str(layer): have[str(layer)] for layer in layers if str(layer) in have},
    }
