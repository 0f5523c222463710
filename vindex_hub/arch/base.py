"""Per-architecture naming and layout: which tensors a vindex needs and how they decode.

An adapter turns a model family's tensor names and storage formats into plain float32 arrays.
The pipeline only talks to this interface, so adding a family means adding one module that
registers itself with ``@register_architecture("model_type")``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import UnsupportedArchitectureError
from ..format.sidecar import MoEConfig
from ..source.base import RawTensor


class MoEArchitecture:
    """Base class of the adapters. ``config`` is the checkpoint's parsed ``config.json``."""

    model_type: str = ""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)

    # ---- the model's shape --------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        """Number of layers counted in the model (the vindex's layer ids are 0..n-1)."""
        raise NotImplementedError

    def moe_layers(self) -> list[int]:
        """Ids of the MoE layers (those a vindex indexes), ascending."""
        raise NotImplementedError

    def moe_config(self) -> MoEConfig:
        raise NotImplementedError

    @property
    def gate_shape(self) -> tuple[int, int]:
        """(out_features, in_features) of one routed expert's dequantized gate_proj."""
        raise NotImplementedError

    # ---- tensor names ---------------------------------------------------------------------
    def expert_gate_tensors(self, layer: int, expert: int) -> list[str]:
        """Names of the tensors (weight, scales) holding one routed expert's gate_proj."""
        raise NotImplementedError

    def shared_gate_tensors(self, layer: int) -> list[str]:
        """Names for the shared expert's gate_proj; empty when the model has none."""
        raise NotImplementedError

    def router_tensors(self, layer: int) -> list[str]:
        """Names for the router weight (and bias, where the layer has one)."""
        raise NotImplementedError

    def layer_tensors(self, layer: int) -> list[str]:
        """Every tensor the builder reads for one layer (all experts, shared, router)."""
        names: list[str] = []
        for e in range(self.moe_config().n_routed_experts):
            names += self.expert_gate_tensors(layer, e)
        return names + self.shared_gate_tensors(layer) + self.router_tensors(layer)

    # ---- decoding (pure: raw bytes in, float32 out) ----------------------------------------
    def expert_gate_weights(
        self, layer: int, experts: Sequence[int], raw: Mapping[str, RawTensor]
    ) -> np.ndarray:
        """Dequantized gate_proj of several experts: float32 ``(len(experts), out, in)``.

        Raises ``CheckpointError`` (shape/dtype) or ``QuantizationError`` (E8M0 255, NaN/Inf),
        naming the tensor.
        """
        raise NotImplementedError

    def shared_gate_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        """float32 ``(out, in)`` of the shared expert's gate_proj, or None."""
        raise NotImplementedError

    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        """float32 ``(num_experts, hidden)``."""
        raise NotImplementedError

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        """float32 ``(num_experts,)`` score-correction bias, or None where the layer has none."""
        raise NotImplementedError


_REGISTRY: dict[str, type[MoEArchitecture]] = {}


def register_architecture(model_type: str) -> Callable[[type[MoEArchitecture]], type[MoEArchitecture]]:
    def deco(cls: type[MoEArchitecture]) -> type[MoEArchitecture]:
        cls.model_type = model_type
        _REGISTRY[model_type] = cls
        return cls

    return deco


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(config: Mapping[str, Any], *, where: str = "config.json") -> MoEArchitecture:
    model_type = config.get("model_type")
    cls = _REGISTRY.get(model_type)  # type: ignore[arg-type]
    if cls is None:
        raise UnsupportedArchitectureError(
            f"{where}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(supported_architectures())})"
        )
    return cls(config)
