"""The keys of ``phase1_moe_svd.json`` and ``phase2_router_svd.json``.

phase1, per layer: ``routed`` (var{K} over the routed experts: median, q25, q75, mean, min,
max, and ``n_experts``), ``shared`` (the shared expert's var{K} and Frobenius norm, or null) and
``router`` (the headline router figures). phase2, per layer: the full router decomposition, with
its spectrum. Both carry the format version, the model and its revision at the top.
"""

from __future__ import annotations

LAYERS = "layers"  # both files: {"<layer id>": that layer's figures}
ROUTED = "routed"
SHARED = "shared"
ROUTER = "router"
N_EXPERTS = "n_experts"
MODEL = "model"
REVISION = "revision"
