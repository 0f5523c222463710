"""DeepSeek-V3 (``deepseek_v3``) and Kimi-K2 (``kimi_k2``, DeepSeek-V3 code and tensors).

``model.layers.{L}.mlp.experts.{E}.gate_proj.weight``, as published FP8 E4M3 with F32
``weight_scale_inv`` 128x128 block scales (a multiplier), or unquantized; router
``mlp.gate.weight`` + ``mlp.gate.e_score_correction_bias``; shared experts
``mlp.shared_experts.gate_proj.weight`` (``n_shared_experts`` side by side). Layers
``L >= first_k_dense_replace`` with ``L % moe_layer_freq == 0`` are MoE (DeepSeek's modeling
code); the MTP layer(s) past ``num_hidden_layers`` are not model layers.
"""

from __future__ import annotations

from .base import config_int
from .family import MoEFamily
from .registry import register_architecture

DENSE_KEY = "first_k_dense_replace"
FREQ_KEY = "moe_layer_freq"
SHARED_KEY = "n_shared_experts"


class DeepseekV3Style(MoEFamily):
    """The DeepSeek-V3 rules, shared with GLM-4.5 (``glm4_moe``)."""

    expert_count_keys = ("n_routed_experts",)
    assumes_router_bias = True

    def moe_layer_ids(self) -> list[int]:
        dense = config_int(self.params, DENSE_KEY, minimum=0, default=0, where=self.where)
        freq = config_int(self.params, FREQ_KEY, default=1, where=self.where)
        return [
            layer for layer in range(self.num_hidden_layers) if layer >= dense and layer % freq == 0
        ]

    def num_shared_experts(self) -> int:
        return config_int(self.params, SHARED_KEY, minimum=0, default=0, where=self.where)


@register_architecture("deepseek_v3", "kimi_k2")
class DeepseekV3(DeepseekV3Style):
    pass
