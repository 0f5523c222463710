"""gpt-oss (``gpt_oss``): every layer MoE, all experts of a layer fused, no shared expert.

Unquantized (``save_pretrained``): ``model.layers.{L}.mlp.experts.gate_up_proj`` [E, H, 2I],
stored transposed (``x @ W``) with gate and up **interleaved** on the last axis (the forward
takes ``gate_up[..., ::2]``), so expert e's gate is ``gate_up_proj[e][:, 0::2].T``.
Published (``quant_method: mxfp4``): ``gate_up_proj_blocks`` U8 [E, 2I, H/32, 16] +
``gate_up_proj_scales`` U8 [E, 2I, H/32], rows the 2I outputs, gate = rows ``0::2``.
Router ``mlp.router.weight`` [E, H] + ``mlp.router.bias`` [E].
"""

from __future__ import annotations

from .family import TransposedFusedFamily
from .layouts import INTERLEAVED, FusedMXFP4, RoutedLayout
from .registry import register_architecture

MXFP4_QUANT_METHOD = "mxfp4"


@register_architecture("gpt_oss")
class GptOss(TransposedFusedFamily):
    fused_split = INTERLEAVED
    router_bias_parts = ("router.bias",)
    assumes_router_bias = True

    def family_layouts(self, block: str) -> list[RoutedLayout]:
        mxfp4 = FusedMXFP4(
            f"{block}.experts.gate_up_proj_blocks",
            f"{block}.experts.gate_up_proj_scales",
            self.dims,
            split=INTERLEAVED,
        )
        return [mxfp4]

    def quantized_expected(self) -> bool:
        return self.quant.get("quant_method") == MXFP4_QUANT_METHOD
