"""Llama-4 (``llama4_text``, and the text model inside multimodal ``llama4``).

Experts fused: ``model.layers.{L}.feed_forward.experts.gate_up_proj`` [E, H, 2I] (no
``.weight``), stored transposed (``x @ W``), gate = the first half (``chunk(2, -1)``), so expert
e's gate is ``gate_up_proj[e][:, :I].T``. Router ``feed_forward.router.weight``; one shared
expert ``feed_forward.shared_expert.gate_proj.weight``. MoE layers: ``moe_layers``, or every
``interleave_moe_layer_step``-th layer. The multimodal model nests these keys in
``text_config`` and its tensors under ``language_model.model.``.
"""

from __future__ import annotations

from .base import check_moe_layer_list, config_int
from .family import TransposedFusedFamily
from .layouts import HALVES
from .registry import register_architecture

MOE_LAYERS_KEY = "moe_layers"
STEP_KEY = "interleave_moe_layer_step"


@register_architecture("llama4_text")
class Llama4Text(TransposedFusedFamily):
    blocks = ("feed_forward",)
    fused_split = HALVES
    shared_parts = ("shared_expert.gate_proj.weight",)

    def moe_layer_ids(self) -> list[int]:
        listed = self.params.get(MOE_LAYERS_KEY)
        if listed is not None:
            return check_moe_layer_list(
                listed, MOE_LAYERS_KEY, self.num_hidden_layers, where=self.where
            )
        step = config_int(self.params, STEP_KEY, default=1, where=self.where)
        return list(range(step - 1, self.num_hidden_layers, step))

    def num_shared_experts(self) -> int:
        return 1


@register_architecture("llama4")
class Llama4(Llama4Text):
    prefixes = ("language_model.model.", "model.language_model.", "model.")
    text_config_key = "text_config"
