"""Muse Spark (``muse_spark``): the generic rules, with experts that work in a pooled space.

Its MoE block first pools the hidden state down to ``moe_hidden_size`` (``pre_expert_proj``
[M, H]), normalizes it (``pre_expert_norm``: x / rms(x) * (1 + w)), runs the routed experts there
(``experts.gate_up_proj`` [E, 2I, M]) and projects back (``post_expert_proj``). The router reads
the hidden state itself (``gate.weight`` [E, H]).

An expert's gate pre-activation for a hidden state h is therefore
``G diag(1 + w) P h / rms(P h)``: the rms is one positive number per token, the same for every
gate row, so the matrix the gate reads the residual stream with is ``G diag(1 + w) P`` [I, H].
A vindex holds that matrix's right singular vectors, in the hidden space like every other family
(feature tokens and the router compare with them); the stored rows G alone would be directions in
the pooled space, which nothing else of the model shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..source.base import RawTensor
from .base import config_int, decode_float
from .generic import GenericFamily, Quirks
from .layouts import FLOAT, ExpertDims, FusedGateUp, PerExpert, RoutedLayout
from .registry import register_architecture

POOLED_KEY = "moe_hidden_size"
PROJECTION = "pre_expert_proj.weight"  # [M, H]
NORM = "pre_expert_norm.weight"  # [M]: the scale is 1 + w


@dataclass(frozen=True)
class PooledGate:
    """Gate rows stored in a pooled space (``pooled``: [I, M] an expert), read back in the hidden
    space through the block's projection and norm scale: ``rows diag(1 + w) P`` [I, H]."""

    pooled: RoutedLayout
    projection: str  # {layer}: [M, H]
    norm: str  # {layer}: [M]
    dims: ExpertDims  # the hidden size is the model's
    width: int  # M

    @property
    def quantized(self) -> bool:
        return self.pooled.quantized

    def expert_name(self, layer: int, expert: int) -> str:
        return self.pooled.expert_name(layer, expert)

    def names(self, layer: int) -> list[str]:
        return [
            *self.pooled.names(layer),
            self.projection.format(layer=layer),
            self.norm.format(layer=layer),
        ]

    def decode(
        self, layer: int, experts: Sequence[int], raw: Mapping[str, RawTensor], out: np.ndarray
    ) -> np.ndarray:
        d = self.dims
        rows = np.empty((len(experts), d.intermediate, self.width), np.float32)
        self.pooled.decode(layer, experts, raw, rows)
        projection = decode_float(raw, self.projection.format(layer=layer), (self.width, d.hidden))
        scale = 1.0 + decode_float(raw, self.norm.format(layer=layer), (self.width,)).astype(
            np.float64
        )
        p64 = projection.astype(np.float64)
        for i in range(len(experts)):
            out[i] = (rows[i].astype(np.float64) * scale) @ p64
        return out


@register_architecture("muse_spark")
class MuseSpark(GenericFamily):
    quirks = Quirks(
        "Muse Spark (language tower)",
        note="experts in a pooled space: gate x diag(1 + pre_expert_norm) x pre_expert_proj",
    )

    def _check_family_config(self) -> None:
        self.width = config_int(self.params, POOLED_KEY, where=self.where)

    def candidate_layouts(self, block: str) -> list[RoutedLayout]:
        d = self.dims
        pooled = ExpertDims(d.num_experts, d.intermediate, self.width, (*d.keys[:2], POOLED_KEY))
        stored: list[RoutedLayout] = [
            FusedGateUp(f"{block}.experts.gate_up_proj", pooled),
            PerExpert(f"{block}.experts.{{expert}}.gate_proj.weight", FLOAT, pooled),
        ]
        return [
            PooledGate(layout, f"{block}.{PROJECTION}", f"{block}.{NORM}", d, self.width)
            for layout in stored
        ]
