"""ERNIE 4.5 VL MoE (``ernie4_5_vl_moe``): the generic rules, for its language model's text experts.

Each MoE layer of its language model holds two expert sets with routers of their own: text
experts (``moe_intermediate_size[0]``), which every text token is routed to, and vision experts
(``moe_intermediate_size[1]``, a smaller size), which only image and video tokens see. A vindex
indexes the text experts: they are the ones that read the text a researcher probes with, and one
vindex holds one expert size. The vision experts are not in it.

The release (what ``save_pretrained`` writes) numbers both sets in one list,
``mlp.experts.{0..E-1}`` text then ``mlp.experts.{E..2E-1}`` vision, stores the text router
transposed (``mlp.gate.weight`` [H, E]; ``gate.weight_1`` is the vision one) and both routers'
biases as one ``mlp.moe_statics.e_score_correction_bias`` [2, E] (row 0: text). transformers'
in-memory layout splits them: ``mlp.text_moe.experts.gate_up_proj``, ``mlp.text_moe.gate.weight``
[E, H] and a [1, E] bias. The shared experts (``mlp.shared_experts``) serve both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..numerics.quant import widen_to_float32
from ..source.base import RawTensor
from .base import FLOAT_DTYPES, checked_tensor, float_view
from .generic import GENERIC_BLOCKS, GenericFamily, Quirks, text_params
from .registry import register_architecture

INTERMEDIATE_KEY = "moe_intermediate_size"  # [text, vision]
TEXT = 0
RELEASED_BLOCK = "mlp"  # both sets numbered in one list, the text router transposed
IN_MEMORY_BLOCK = "mlp.text_moe"


@register_architecture("ernie4_5_vl_moe")
class Ernie45VLMoe(GenericFamily):
    quirks = Quirks(
        "ERNIE 4.5 VL MoE (language tower)",
        note="text experts (moe_intermediate_size[0]); the vision experts are not indexed",
    )
    blocks = (RELEASED_BLOCK, IN_MEMORY_BLOCK, *GENERIC_BLOCKS)

    def _text_params(self) -> tuple[Mapping[str, Any], str]:
        params, where = text_params(self.config, self.where)
        sizes = params.get(INTERMEDIATE_KEY)
        if isinstance(sizes, list):
            if not sizes:
                raise CheckpointError(f"{where}: {INTERMEDIATE_KEY} is an empty list")
            # The text experts' size; config_int checks it is a positive integer.
            params = {**params, INTERMEDIATE_KEY: sizes[TEXT]}
        return params, where

    def _released(self) -> bool:
        return self.block.endswith(f".{RELEASED_BLOCK}")

    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        if not self._released():
            return super().router_weight(layer, raw)
        e, h = self.dims.num_experts, self.dims.hidden
        t = checked_tensor(raw, self.router_name(layer), FLOAT_DTYPES, (h, e))
        return widen_to_float32(float_view(t).T, t.info.dtype, out=np.empty((e, h), np.float32))

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        values = super().router_bias(layer, raw)  # [2, E] released, [1, E] in memory: row 0 first
        return None if values is None else values[: self.dims.num_experts]
