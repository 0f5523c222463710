"""Mixtral (``mixtral``): every layer MoE, ``num_local_experts`` experts of ``intermediate_size``.

``model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight`` (w1 = gate, w3 = up, w2 = down),
router ``block_sparse_moe.gate.weight``; transformers fuses w1/w3 only in memory (and writes
``mlp.experts.gate_up_proj`` with ``save_original_format=False``).
"""

from __future__ import annotations

from .family import MoEFamily
from .registry import register_architecture


@register_architecture("mixtral")
class Mixtral(MoEFamily):
    blocks = ("block_sparse_moe", "mlp")
    expert_count_keys = ("num_local_experts",)
    intermediate_key = "intermediate_size"
    expert_gate_projs = ("w1", "gate_proj")
