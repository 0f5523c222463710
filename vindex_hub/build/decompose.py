"""The per-layer decomposition: one layer's raw tensors in, its gate vectors and spectra out.

Pure computation (no I/O): every engine (serial, worker processes, a Ray task) runs the same
function on the same inputs, so a layer's result does not depend on where it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..arch import MoEArchitecture
from ..numerics import svd
from ..results import LayerResult
from ..source.base import RawTensor


@dataclass
class DecomposedLayer:
    """A layer's gate vectors ``(E, K, H)`` and the spectra ``LayerResult`` keeps (all but the
    checksum of the block, which the binary's writer computes as it writes it)."""

    layer: int
    vectors: np.ndarray
    spectra: dict[str, Any] = field(default_factory=dict)

    def result(self, sha256: str) -> LayerResult:
        return LayerResult(layer=self.layer, sha256=sha256, **self.spectra)


def decompose_layer(arch: MoEArchitecture, layer: int, raw: Mapping[str, RawTensor], *, num_feats: int,
                    device: str, batch_size: int, keep_router: bool,
                    on_batch: Callable[[int], None] | None = None) -> DecomposedLayer:
    """Dequantize and decompose every routed expert of ``layer`` in batches of ``batch_size`` (one
    reused float32 buffer), then the shared expert and the router. ``on_batch(n)`` is told each
    time ``n`` more experts are done (a progress bar)."""
    num_experts = arch.moe_config().n_routed_experts
    vectors = np.empty((num_experts, num_feats, arch.gate_shape[1]), dtype=np.float32)
    singular_values = np.empty((num_experts, num_feats), dtype=np.float32)
    frobenius = np.empty(num_experts, dtype=np.float64)
    buffer: np.ndarray | None = None  # reused across batches: no page faults per batch
    for start in range(0, num_experts, batch_size):
        experts = range(start, min(start + batch_size, num_experts))
        if buffer is None or len(buffer) != len(experts):
            buffer = np.empty((len(experts), *arch.gate_shape), dtype=np.float32)
        weights = arch.expert_gate_weights(layer, experts, raw, out=buffer)
        names = [arch.expert_gate_name(layer, e) for e in experts]
        top = svd.top_k_right_singular(weights, num_feats, device=device, names=names)
        vectors[experts.start:experts.stop] = top.vectors
        singular_values[experts.start:experts.stop] = top.singular_values
        frobenius[experts.start:experts.stop] = top.frobenius_norm
        if on_batch is not None:
            on_batch(len(experts))
    spectra = {"singular_values": singular_values, "frobenius_norm": frobenius,
               **_shared_and_router(arch, layer, raw, num_feats, device, keep_router)}
    return DecomposedLayer(layer, vectors, spectra)


def _shared_and_router(arch: MoEArchitecture, layer: int, raw: Mapping[str, RawTensor], num_feats: int,
                       device: str, keep_router: bool) -> dict[str, Any]:
    """The shared expert's and the router's decompositions of one layer (LayerResult fields)."""
    router = arch.router_weight(layer, raw)
    extras: dict[str, Any] = {
        "router_singular_values": svd.singular_values(router, name=arch.router_name(layer)),
        "router_frobenius_norm": float(np.linalg.norm(router.astype(np.float64))),
    }
    shared = arch.shared_gate_weight(layer, raw)
    if shared is not None:
        top = svd.top_k_right_singular(shared[None], num_feats, device=device,
                                       names=[arch.shared_gate_name(layer)])
        extras["shared_singular_values"] = top.singular_values[0]
        extras["shared_frobenius_norm"] = float(top.frobenius_norm[0])
    if keep_router:
        extras["router_weight"] = router
        extras["router_bias"] = arch.router_bias(layer, raw)
    return extras
