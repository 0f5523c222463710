"""OLMoE (``olmoe``): every layer MoE, ``num_experts`` experts of ``intermediate_size``.

``model.layers.{L}.mlp.experts.{E}.gate_proj.weight``, router ``mlp.gate.weight``, no shared expert.
"""

from __future__ import annotations

from .family import MoEFamily
from .registry import register_architecture


@register_architecture("olmoe")
class Olmoe(MoEFamily):
    expert_count_keys = ("num_experts",)
    intermediate_key = "intermediate_size"
