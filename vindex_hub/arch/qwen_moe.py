"""Qwen2-MoE (``qwen2_moe``) and Qwen3-MoE (``qwen3_moe``).

``model.layers.{L}.mlp.experts.{E}.gate_proj.weight``, router ``mlp.gate.weight``. A layer is
MoE when it is not in ``mlp_only_layers`` and ``(L + 1) % decoder_sparse_step == 0``. Qwen2-MoE
has one shared expert (``mlp.shared_expert.*``, singular, ``shared_expert_intermediate_size``
rows) scaled by a sigmoid ``mlp.shared_expert_gate``; Qwen3-MoE has none. The expert count is
``num_experts`` on the Hub; transformers 5.x writes ``num_local_experts`` for Qwen3-MoE.
"""

from __future__ import annotations

from .base import check_moe_layer_list, config_int
from .family import MoEFamily
from .registry import register_architecture

DENSE_LIST_KEY = "mlp_only_layers"
STEP_KEY = "decoder_sparse_step"
SHARED_SIZE_KEY = "shared_expert_intermediate_size"


class QwenMoe(MoEFamily):
    expert_count_keys = ("num_experts", "num_local_experts")

    def moe_layer_ids(self) -> list[int]:
        dense = check_moe_layer_list(
            self.params.get(DENSE_LIST_KEY) or [],
            DENSE_LIST_KEY,
            self.num_hidden_layers,
            where=self.where,
        )
        step = config_int(self.params, STEP_KEY, default=1, where=self.where)
        return [
            layer
            for layer in range(self.num_hidden_layers)
            if layer not in dense and (layer + 1) % step == 0
        ]


@register_architecture("qwen2_moe")
class Qwen2Moe(QwenMoe):
    shared_parts = ("shared_expert.gate_proj.weight", *MoEFamily.shared_parts)

    def num_shared_experts(self) -> int:
        return (
            1
            if config_int(self.params, SHARED_SIZE_KEY, minimum=0, default=0, where=self.where)
            else 0
        )

    def shared_gate_rows(self) -> int:
        return config_int(self.params, SHARED_SIZE_KEY, where=self.where)


@register_architecture("qwen3_moe")
class Qwen3Moe(QwenMoe):
    pass
