"""DBRX (``dbrx``): the generic rules, with DBRX's own config and tensor names.

Its config nests the MoE keys in ``ffn_config`` (``moe_num_experts``, ``ffn_hidden_size``,
``moe_top_k``) and names the sizes ``d_model`` and ``n_layers``. The experts of a layer are one
tensor per projection, ``transformer.blocks.{L}.ffn.experts.mlp.w1`` [E*I, H] (w1 = gate,
v1 = up, w2 = down), expert e's gate being rows ``e*I .. (e+1)*I``; the router is
``ffn.router.layer.weight``. Every layer is MoE; there is no shared expert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import config_object
from .generic import GenericFamily, Quirks
from .layouts import RoutedLayout, StackedGate
from .registry import register_architecture

FFN_CONFIG_KEY = "ffn_config"
HIDDEN_KEY = "d_model"
LAYERS_KEY = "n_layers"


@register_architecture("dbrx")
class Dbrx(GenericFamily):
    quirks = Quirks("DBRX", note="ffn_config; experts.mlp.w1 [E*I, H]")
    prefixes = ("transformer.",)
    blocks = ("ffn",)
    expert_count_keys = ("moe_num_experts",)

    def _text_params(self) -> tuple[Mapping[str, Any], str]:
        ffn = config_object(self.config, FFN_CONFIG_KEY, where=self.where)
        # The generic keys, read from where DBRX keeps them (messages name the file's section).
        merged = {
            **ffn,
            "hidden_size": self.config.get(HIDDEN_KEY),
            "num_hidden_layers": self.config.get(LAYERS_KEY),
        }
        return merged, f"{self.where} ({FFN_CONFIG_KEY}, {HIDDEN_KEY}, {LAYERS_KEY})"

    def _intermediate_key(self) -> str:
        return "ffn_hidden_size"

    def candidate_layouts(self, block: str) -> list[RoutedLayout]:
        return [StackedGate(f"{block}.experts.mlp.w1", self.dims, flat=True)]
