"""Llama-4 (``llama4_text``, and the text model inside multimodal ``llama4``).

Experts fused: ``model.layers.{L}.feed_forward.experts.gate_up_proj`` [E, H, 2I] (no
``.weight``), stored transposed (``x @ W``), gate = the first half (``chunk(2, -1)``), so expert
e's gate is ``gate_up_proj[e][:, :I].T``. Router ``feed_forward.router.weight``; one shared
expert ``feed_forward.shared_expert.gate_proj.weight``. MoE layers: ``moe_layers``, or every
``interleave_moe_layer_step``-th layer. The multimodal model nests these keys in
``text_config`` and its tensors under ``language_model.model.``.

Meta's FP8 releases (``quantization_config.quant_method: fbgemm_fp8``, Llama-4-Maverick-...-FP8)
store the fused experts as F8_E4M3 ``gate_up_proj`` [E, H, 2I] with ``gate_up_proj_scale``
[E, 1, 2I] (one scale per output), and each Linear they convert as an F8_E4M3 ``weight`` with a
``weight_scale`` [O, 1]; the modules in ``modules_to_not_convert`` (the router, ...) stay BF16.
"""

from __future__ import annotations

import re

from .base import check_moe_layer_list, config_int
from .family import TransposedFusedFamily
from .layouts import FLOAT, HALVES, FP8ScaledCodec, FusedFP8Columns, MatrixCodec, RoutedLayout
from .registry import register_architecture

MOE_LAYERS_KEY = "moe_layers"
STEP_KEY = "interleave_moe_layer_step"
FBGEMM_QUANT_METHOD = "fbgemm_fp8"
NOT_CONVERTED_KEY = "modules_to_not_convert"


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

    # ---- the FP8 releases (fbgemm_fp8) ---------------------------------------------------------
    def _fbgemm(self) -> bool:
        return self.quant.get("quant_method") == FBGEMM_QUANT_METHOD

    def _converted(self, module: str) -> bool:
        """Whether fbgemm_fp8 converts ``module``: not named by a ``modules_to_not_convert``
        pattern, by older transformers' rule (the pattern anywhere in
        the name) or today's (a regex at its start, up to a name boundary, or its suffix)."""
        patterns = self.quant.get(NOT_CONVERTED_KEY) or []
        for key in patterns if isinstance(patterns, list) else []:
            if not isinstance(key, str):
                continue
            if key in module:
                return False
            try:
                if re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", module):
                    return False
            except re.error:  # not a regex: the substring test above decided
                pass
        return True

    def family_layouts(self, block: str) -> list[RoutedLayout]:
        experts = f"{block}.experts.gate_up_proj"
        return [FusedFP8Columns(experts, f"{experts}_scale", self.dims)]

    def candidate_layouts(self, block: str) -> list[RoutedLayout]:
        layouts = super().candidate_layouts(block)
        experts = f"{block}.experts".format(layer=self._moe[0])
        if self._fbgemm() and self._converted(experts):
            # converted experts are stored FP8 only: a gate_up_proj without its scale is then
            # named as missing, not read as float
            layouts = layouts[: len(self.family_layouts(block))]
        return layouts

    def shared_codecs(self) -> list[MatrixCodec]:
        if not self._fbgemm():
            return super().shared_codecs()
        if self.names is None and not self._converted(
            f"{self._block(self._moe[0])}.shared_expert.gate_proj"
        ):
            return [FLOAT]  # names unknown: the config says it stays float
        return [FP8ScaledCodec(per_row=True), FLOAT]

    def quantized_expected(self) -> bool:
        return self._fbgemm() or super().quantized_expected()


@register_architecture("llama4")
class Llama4(Llama4Text):
    prefixes = ("language_model.model.", "model.language_model.", "model.")
    text_config_key = "text_config"
