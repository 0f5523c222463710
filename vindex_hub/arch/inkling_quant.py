"""Inkling's fused ``experts.w13_weight`` as the original Inkling 2 loop releases store it.

The routed experts of a layer are one tensor ``w13_weight`` [E, 2I, H] whose rows alternate
gate and up (gate = rows ``0::2``), quantized one of two ways, told apart by the tensors beside it:

* NVFP4: ``w13_weight`` U8 [E, 2I, H/2] (two E2M1 codes a byte, the even input in the low
  nibble), ``w13_weight_scale`` F8_E4M3 [E, 2I, H/16] (one scale per 16 inputs), and per expert
  ``w13_weight_amax`` and ``w13_weight_outer_scale_denominator`` [E] (one denominator for all
  experts is accepted too): ``W = E2M1 * scale * (amax / denominator)``.
* MXFP8: ``w13_weight`` F8_E4M3 [E, 2I, H] and ``w13_weight_scale`` [E, 2I, H/32] of E8M0
  exponent bytes (U8, or F8_E8M0): ``W = E4M3 * 2^(scale - 127)``.

transformers 5.24 dequantizes both on load (``Inkling2LoopDequantizeExperts`` in
``core_model_loading``); only the gate rows are decoded here, one expert at a time, from views.
A ``w13_weight`` in a quantized dtype without the tensors its format needs is refused naming them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..numerics.quant import (
    MXFP8_BLOCK,
    NVFP4_BLOCK,
    decode_tensor,
    dequantize_mxfp8,
    dequantize_nvfp4,
    nvfp4_global_scales,
)
from ..source.base import RawTensor
from .base import FLOAT_DTYPES, checked_tensor
from .layouts import (
    E8M0_DTYPE,
    FP8_WEIGHT_DTYPE,
    INTERLEAVED,
    ROWS,
    ExpertDims,
    FusedGateUp,
    check_fused_shape,
)

NVFP4, MXFP8 = "nvfp4", "mxfp8"
NVFP4_CODE_DTYPE = "U8"
MXFP8_SCALE_DTYPES = ("U8", E8M0_DTYPE)  # E8M0 exponent bytes either way
#: the tensors beside ``w13_weight`` (its name + suffix), per format
SCALE_SUFFIX = "_scale"
NVFP4_SUFFIXES = (SCALE_SUFFIX, "_amax", "_outer_scale_denominator")
QUANTIZED_DTYPES = (NVFP4_CODE_DTYPE, "I8", FP8_WEIGHT_DTYPE)


def _needs(weight: str, dtype: str) -> str:
    """What a quantized ``w13_weight`` of ``dtype`` needs beside it, for messages."""
    suffixes = NVFP4_SUFFIXES if dtype != FP8_WEIGHT_DTYPE else (SCALE_SUFFIX,)
    fmt = "NVFP4" if dtype != FP8_WEIGHT_DTYPE else "MXFP8"
    return f"{fmt} needs {', '.join(weight + s for s in suffixes)} beside it"


@dataclass(frozen=True)
class QuantizedW13:
    """All routed experts' interleaved gate/up rows in one NVFP4 or MXFP8 ``w13_weight``."""

    template: str  # the weight's name, with ``{layer}``
    dims: ExpertDims
    fmt: str  # NVFP4 or MXFP8
    quantized: bool = True

    def expert_name(self, layer: int, expert: int) -> str:
        return self.template.format(layer=layer)

    def names(self, layer: int) -> list[str]:
        weight = self.template.format(layer=layer)
        suffixes = NVFP4_SUFFIXES if self.fmt == NVFP4 else (SCALE_SUFFIX,)
        return [weight] + [weight + s for s in suffixes]

    def decode(
        self, layer: int, experts: Sequence[int], raw: Mapping[str, RawTensor], out: np.ndarray
    ) -> np.ndarray:
        d = self.dims
        weight, scale_name = self.names(layer)[:2]
        block = NVFP4_BLOCK if self.fmt == NVFP4 else MXFP8_BLOCK
        if d.hidden % block:
            raise CheckpointError(
                f"tensor {weight}: hidden size {d.hidden} is not a multiple of the "
                f"{self.fmt.upper()} block of {block} inputs"
            )
        w = raw.get(weight)
        if w is not None and self.fmt == MXFP8 and w.info.dtype in (NVFP4_CODE_DTYPE, "I8"):
            # An NVFP4 tensor whose amax or denominator is missing resolves to MXFP8.
            raise CheckpointError(
                f"tensor {weight}: dtype {w.info.dtype}, expected {FP8_WEIGHT_DTYPE} "
                f"({_needs(weight, w.info.dtype)}; one of them is not in the checkpoint)"
            )
        rows = 2 * d.intermediate
        if self.fmt == NVFP4:
            w = checked_tensor(raw, weight, (NVFP4_CODE_DTYPE,))
            check_fused_shape(w, (d.num_experts, rows, d.hidden // 2), d, "NVFP4 codes")
            s = checked_tensor(raw, scale_name, (FP8_WEIGHT_DTYPE,))
            check_fused_shape(s, (d.num_experts, rows, d.hidden // block), d, "NVFP4 scales")
            factors = self._global_scales(layer, raw)
        else:
            w = checked_tensor(raw, weight, (FP8_WEIGHT_DTYPE,))
            check_fused_shape(w, (d.num_experts, rows, d.hidden), d, "MXFP8 values")
            s = checked_tensor(raw, scale_name, MXFP8_SCALE_DTYPES)
            check_fused_shape(s, (d.num_experts, rows, d.hidden // block), d, "MXFP8 scales")
        codes = w.data.reshape(w.info.shape)
        scales = s.data.reshape(s.info.shape)
        gate = slice(0, rows, 2)  # interleaved: the gate rows are the even ones
        for i, expert in enumerate(experts):
            # Views of one expert's gate rows only: [I, H/2] or [I, H] codes, [I, H/block] scales.
            if self.fmt == NVFP4:
                dequantize_nvfp4(
                    codes[expert, gate],
                    scales[expert, gate],
                    float(factors[expert]),
                    name=weight,
                    scale_name=scale_name,
                    out=out[i],
                )
            else:
                dequantize_mxfp8(
                    codes[expert, gate],
                    scales[expert, gate],
                    name=weight,
                    scale_name=scale_name,
                    out=out[i],
                )
        return out

    def _global_scales(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        """[E] float32 ``amax / denominator``: amax one value per expert, the denominator one per
        expert or one for all."""
        _, _, amax_name, denominator_name = self.names(layer)
        e = self.dims.num_experts
        values = []
        for name, counts in ((amax_name, (e,)), (denominator_name, (e, 1))):
            t = checked_tensor(raw, name, FLOAT_DTYPES)
            size = int(np.prod(t.info.shape, dtype=np.int64))
            if size not in counts:
                raise CheckpointError(
                    f"tensor {name}: shape {list(t.info.shape)}, expected {' or '.join(str(c) for c in counts)} "
                    f"value(s) (one per expert of {self.dims.describe()})"
                )
            values.append(decode_tensor(t.data, t.info.dtype, (size,), name=name))
        return np.broadcast_to(
            nvfp4_global_scales(values[0], values[1], name=denominator_name), (e,)
        )


@dataclass(frozen=True)
class UnscaledW13(FusedGateUp):
    """A float ``w13_weight``; one in a quantized dtype is refused naming the tensors it lacks."""

    def decode(self, layer, experts, raw, out):
        name = self.template.format(layer=layer)
        t = raw.get(name)
        if t is not None and t.info.dtype in QUANTIZED_DTYPES:
            raise CheckpointError(
                f"tensor {name}: dtype {t.info.dtype}, expected {' or '.join(FLOAT_DTYPES)} "
                f"({_needs(name, t.info.dtype)}; the checkpoint lacks them)"
            )
        return super().decode(layer, experts, raw, out)


def w13_layouts(block: str, dims: ExpertDims) -> list[FusedGateUp | QuantizedW13]:
    """Where a block's ``experts.w13_weight`` may be: NVFP4, MXFP8, float (the order tried)."""
    weight = f"{block}.experts.w13_weight"
    return [
        QuantizedW13(weight, dims, NVFP4),
        QuantizedW13(weight, dims, MXFP8),
        UnscaledW13(weight, dims, ROWS, INTERLEAVED),
    ]
