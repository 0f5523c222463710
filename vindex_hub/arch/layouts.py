"""How a checkpoint stores gate_proj matrices: codecs for one matrix, layouts for a layer's experts.

A *codec* says how one 2-D weight is stored (float, FP8 E4M3 with 2-D block or per-row scales,
packed FP4 with E8M0 scales, compressed-tensors' packed INT4/INT8) and which tensors hold it. A *routed layout* says where a layer's routed
experts' gate_proj lives: one tensor per expert, or all experts fused into one tensor (named
once, read once per layer, each expert's gate rows sliced out as a view, never copied whole).
Families (``arch/<family>.py``) pick among these by the names the checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import CheckpointError
from ..numerics.quant import (
    FP8_BLOCK_SIZE,
    decode_e4m3,
    decode_e8m0,
    decode_tensor,
    dequantize_fp4,
    dequantize_fp4_scaled,
    dequantize_fp8,
    dequantize_fp8_scaled,
    dequantize_packed_int,
    fp8_scale_grid,
    widen_to_float32,
)
from ..source.base import RawTensor
from .base import FLOAT_DTYPES, checked_tensor, decode_float, float_view

FP8_WEIGHT_DTYPE = "F8_E4M3"
E8M0_DTYPE = "F8_E8M0"
PACKED_FP4_DTYPES = ("I8", "U8")  # two E2M1 values a byte: raw bytes, never converted numerically
MXFP4_BYTE_DTYPE = "U8"
MXFP4_GROUP = 32  # inputs per E8M0 scale in gpt-oss's *_blocks/*_scales (16 bytes of 2 values)


def sibling(weight: str, part: str) -> str:
    """``a.b.weight`` -> ``a.b.<part>`` (a weight's scale tensor)."""
    return weight.rsplit(".", 1)[0] + "." + part


# ---- codecs: one matrix ------------------------------------------------------------------------
class MatrixCodec(Protocol):
    @property
    def quantized(self) -> bool: ...  # read-only: frozen dataclasses and properties satisfy it

    def names(self, weight: str) -> list[str]:
        """The tensors holding the matrix stored under ``weight`` (the weight first)."""
        ...

    def decode(
        self,
        raw: Mapping[str, RawTensor],
        weight: str,
        shape: tuple[int, int],
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 ``shape``, into ``out`` when given."""
        ...


@dataclass(frozen=True)
class FloatCodec:
    """Unquantized BF16 / F16 / F32, as every ``save_pretrained`` of a float model writes."""

    quantized: bool = False

    def names(self, weight: str) -> list[str]:
        return [weight]

    def decode(self, raw, weight, shape, *, out=None):
        return decode_float(raw, weight, shape, out=out)


@dataclass(frozen=True)
class FP8BlockCodec:
    """F8_E4M3 weight times a 2-D block grid of scales (a multiplier, whatever the tensor's name).

    ``scale_part`` is the scale tensor's last name part (``weight_scale_inv`` in DeepSeek-V3 /
    Kimi-K2 / GLM, ``scale`` in DeepSeek-V4); scales are F32, or E8M0 powers of two.
    """

    scale_part: str
    block: tuple[int, int] = FP8_BLOCK_SIZE
    scale_dtypes: tuple[str, ...] = ("F32",)
    quantized: bool = True

    def names(self, weight: str) -> list[str]:
        return [weight, sibling(weight, self.scale_part)]

    def decode(self, raw, weight, shape, *, out=None):
        scale_name = sibling(weight, self.scale_part)
        w = checked_tensor(raw, weight, (FP8_WEIGHT_DTYPE,), shape)
        grid = fp8_scale_grid(shape, self.block)
        s = raw.get(scale_name)
        if s is not None and tuple(s.info.shape) != grid:
            raise CheckpointError(
                f"tensor {scale_name}: scale grid {list(s.info.shape)} does not fit weight {weight} "
                f"{list(shape)} in {self.block[0]}x{self.block[1]} blocks (expected {list(grid)})"
            )
        s = checked_tensor(raw, scale_name, self.scale_dtypes, grid)
        if s.info.dtype == E8M0_DTYPE:
            scales = decode_e8m0(s.data.reshape(grid), name=scale_name)
        else:
            scales = decode_tensor(s.data, s.info.dtype, grid, name=scale_name)
        return dequantize_fp8(
            w.data.reshape(shape), scales, name=weight, block_size=self.block, out=out
        )


@dataclass(frozen=True)
class PackedFP4Codec:
    """Packed FP4 E2M1 (two a byte, low nibble first) with per-row E8M0 block scales (MXFP4)."""

    scale_part: str
    quantized: bool = True

    def names(self, weight: str) -> list[str]:
        return [weight, sibling(weight, self.scale_part)]

    def decode(self, raw, weight, shape, *, out=None):
        rows, cols = shape
        scale_name = sibling(weight, self.scale_part)
        w = checked_tensor(raw, weight, PACKED_FP4_DTYPES, (rows, cols // 2))
        s = raw.get(scale_name)
        if s is None:
            raise CheckpointError(
                f"tensor {scale_name} was not read (needed to dequantize {weight})"
            )
        # The block size follows from the shapes (in_features / scale columns), not the config.
        scale_cols = s.info.shape[-1] if s.info.shape else 0
        if scale_cols == 0 or cols % scale_cols:
            raise CheckpointError(
                f"tensor {scale_name}: shape {list(s.info.shape)} does not give a block size dividing "
                f"{cols} inputs (expected [{rows}, {cols // MXFP4_GROUP}])"
            )
        checked_tensor(raw, scale_name, (E8M0_DTYPE,), (rows, scale_cols))
        return dequantize_fp4(
            w.data.reshape(rows, cols // 2),
            s.data.reshape(rows, scale_cols),
            name=weight,
            scale_name=scale_name,
            out=out,
        )


# compressed-tensors' tensor names beside a module (``<module>.weight_packed`` ...)
CT_PACKED_PART = "weight_packed"
CT_SCALE_PART = "weight_scale"
CT_SHAPE_PART = "weight_shape"
CT_SCALE_DTYPES = ("BF16", "F16", "F32")
CT_SHAPE_DTYPES = {"I32": "<i4", "I64": "<i8"}


@dataclass(frozen=True)
class PackedIntCodec:
    """compressed-tensors ``pack-quantized``: symmetric INT4/INT8 in int32 words (``weight_packed``
    [O, ceil(I*b/32)], element i at bits b*i.., stored plus 2^(b-1)), a ``weight_scale`` per group
    of ``group_size`` inputs ([O, I/group]; per row, [O, 1], when ``group_size`` is None: the
    channel strategy) and the unpacked shape in ``weight_shape`` [2]."""

    num_bits: int
    group_size: int | None
    quantized: bool = True

    def names(self, weight: str) -> list[str]:
        return [sibling(weight, p) for p in (CT_PACKED_PART, CT_SCALE_PART, CT_SHAPE_PART)]

    def decode(self, raw, weight, shape, *, out=None):
        packed_name, scale_name, shape_name = self.names(weight)
        rows, cols = shape
        stored = checked_tensor(raw, shape_name, tuple(CT_SHAPE_DTYPES), (2,))
        dims = np.frombuffer(stored.data.tobytes(), CT_SHAPE_DTYPES[stored.info.dtype])
        if tuple(int(d) for d in dims) != (rows, cols):
            raise CheckpointError(
                f"tensor {shape_name}: holds {[int(d) for d in dims]}, but the config's sizes make "
                f"this gate_proj {[rows, cols]}"
            )
        group = self.group_size or cols
        if cols % group:
            raise CheckpointError(
                f"tensor {packed_name}: {cols} inputs are not a whole number of groups of {group} "
                "(quantization_config group_size)"
            )
        words = -(-cols * self.num_bits // 32)
        packed = checked_tensor(raw, packed_name, ("I32",), (rows, words))
        s = checked_tensor(raw, scale_name, CT_SCALE_DTYPES, (rows, cols // group))
        scales = decode_tensor(s.data, s.info.dtype, (rows, cols // group), name=scale_name)
        return dequantize_packed_int(
            packed.data.reshape(rows, 4 * words),
            scales,
            self.num_bits,
            cols,
            name=packed_name,
            scale_name=scale_name,
            out=out,
        )


@dataclass(frozen=True)
class FP8ScaledCodec:
    """compressed-tensors ``float-quantized`` FP8: an F8_E4M3 weight times ``weight_scale``, one a
    row ([O, 1], the channel strategy) or one in all ([1] or [1, 1], the tensor strategy)."""

    per_row: bool
    quantized: bool = True

    def names(self, weight: str) -> list[str]:
        return [weight, sibling(weight, CT_SCALE_PART)]

    def decode(self, raw, weight, shape, *, out=None):
        scale_name = sibling(weight, CT_SCALE_PART)
        w = checked_tensor(raw, weight, (FP8_WEIGHT_DTYPE,), shape)
        s = checked_tensor(raw, scale_name, CT_SCALE_DTYPES)
        expected = [shape[0], 1] if self.per_row else [1, 1]
        size = int(np.prod(s.info.shape)) if s.info.shape else 1
        if size != expected[0] or len(s.info.shape) > 2:
            what = "one scale a row" if self.per_row else "one scale"
            raise CheckpointError(
                f"tensor {scale_name}: shape {list(s.info.shape)}, expected {expected} ({what} for "
                f"weight {weight} {list(shape)})"
            )
        scales = decode_tensor(s.data, s.info.dtype, tuple(expected), name=scale_name)
        return dequantize_fp8_scaled(w.data.reshape(shape), scales, name=weight, out=out)


CT_GLOBAL_SCALE_PART = "weight_global_scale"
MX_GROUP, NV_GROUP = 32, 16  # inputs per scale in MXFP4 and NVFP4


@dataclass(frozen=True)
class PackedFP4GroupCodec:
    """compressed-tensors FP4: two E2M1 values a byte in ``weight_packed`` [O, I/2] (low nibble
    first), and per group of inputs either an E8M0 ``weight_scale`` byte ([O, I/32],
    ``mxfp4-pack-quantized``) or an F8_E4M3 ``weight_scale`` divided by the one F32
    ``weight_global_scale`` ([O, I/16], ``nvfp4-pack-quantized``): ``W = e2m1(q) * s / g``."""

    nvfp4: bool
    quantized: bool = True

    @property
    def group(self) -> int:
        return NV_GROUP if self.nvfp4 else MX_GROUP

    def names(self, weight: str) -> list[str]:
        parts = [CT_PACKED_PART, CT_SCALE_PART] + ([CT_GLOBAL_SCALE_PART] if self.nvfp4 else [])
        return [sibling(weight, p) for p in parts]

    def decode(self, raw, weight, shape, *, out=None):
        packed_name, scale_name = self.names(weight)[:2]
        rows, cols = shape
        if cols % self.group:
            raise CheckpointError(
                f"tensor {packed_name}: {cols} inputs are not a whole number of groups of {self.group}"
            )
        p = checked_tensor(raw, packed_name, PACKED_FP4_DTYPES, (rows, cols // 2))
        packed = p.data.reshape(rows, cols // 2)
        grid = (rows, cols // self.group)
        if not self.nvfp4:
            s = checked_tensor(raw, scale_name, (MXFP4_BYTE_DTYPE, E8M0_DTYPE), grid)
            return dequantize_fp4(
                packed, s.data.reshape(grid), name=packed_name, scale_name=scale_name, out=out
            )
        s = checked_tensor(raw, scale_name, (FP8_WEIGHT_DTYPE,), grid)
        global_name = self.names(weight)[2]
        g = checked_tensor(raw, global_name, CT_SCALE_DTYPES)
        if int(np.prod(g.info.shape)) != 1:
            raise CheckpointError(
                f"tensor {global_name}: shape {list(g.info.shape)}, expected one value"
            )
        global_scale = decode_tensor(g.data, g.info.dtype, (1, 1), name=global_name)
        # the group scale as compressed-tensors forms it, in float32, before the product
        scales = (decode_e4m3(s.data.reshape(grid), name=scale_name) / global_scale).astype(
            np.float32
        )
        return dequantize_fp4_scaled(packed, scales, name=packed_name, out=out)


FLOAT = FloatCodec()


# ---- routed layouts: all experts of a layer ----------------------------------------------------
@dataclass(frozen=True)
class ExpertDims:
    """Routed-expert sizes from the config, with the keys they came from (for messages)."""

    num_experts: int
    intermediate: int
    hidden: int
    keys: tuple[str, str, str]

    def describe(self) -> str:
        e, i, h = self.keys
        return f"{e}={self.num_experts}, {i}={self.intermediate}, {h}={self.hidden}"


class RoutedLayout(Protocol):
    @property
    def quantized(self) -> bool: ...  # read-only: frozen dataclasses and properties satisfy it

    def names(self, layer: int) -> list[str]:
        """Every tensor to read for the layer's routed gate_projs, each once."""
        ...

    def expert_name(self, layer: int, expert: int) -> str: ...

    def decode(
        self, layer: int, experts: Sequence[int], raw: Mapping[str, RawTensor], out: np.ndarray
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class PerExpert:
    """One tensor (plus scales) per expert; ``template`` has ``{layer}`` and ``{expert}``."""

    template: str
    codec: MatrixCodec
    dims: ExpertDims

    @property
    def quantized(self) -> bool:
        return self.codec.quantized

    def _weight(self, layer: int, expert: int) -> str:
        return self.template.format(layer=layer, expert=expert)

    def expert_name(self, layer, expert):
        # The first tensor the codec stores: the weight, or compressed-tensors' weight_packed.
        return self.codec.names(self._weight(layer, expert))[0]

    def names(self, layer):
        return [
            n
            for e in range(self.dims.num_experts)
            for n in self.codec.names(self._weight(layer, e))
        ]

    def decode(self, layer, experts, raw, out):
        shape = (self.dims.intermediate, self.dims.hidden)
        for i, expert in enumerate(experts):
            self.codec.decode(raw, self._weight(layer, expert), shape, out=out[i])
        return out


# How a fused gate_up tensor orders its 2I outputs: gate then up ("halves", torch.chunk), or
# alternating gate/up ("interleaved", gpt-oss); and on which axis they lie.
HALVES = "halves"
INTERLEAVED = "interleaved"
ROWS = "rows"  # [E, 2I, H]: the outputs are rows (x @ W^T), what most transformers models hold
COLUMNS = "columns"  # [E, H, 2I]: stored transposed (x @ W), gpt-oss and Llama-4


def _gate_outputs(split: str, intermediate: int) -> slice:
    return slice(0, 2 * intermediate, 2) if split == INTERLEAVED else slice(0, intermediate)


@dataclass(frozen=True)
class FusedGateUp:
    """All experts' gate and up projections in one unquantized tensor ``template`` (``{layer}``)."""

    template: str
    dims: ExpertDims
    axis: str = ROWS
    split: str = HALVES
    quantized: bool = False
    #: LongCat-Flash: transformers allocates rows for its zero-computation experts too (unused)
    extra_experts: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        d = self.dims
        return (
            (d.num_experts, 2 * d.intermediate, d.hidden)
            if self.axis == ROWS
            else (d.num_experts, d.hidden, 2 * d.intermediate)
        )

    def expert_name(self, layer, expert):
        return self.template.format(layer=layer)

    def names(self, layer):
        return [self.template.format(layer=layer)]

    def decode(self, layer, experts, raw, out):
        name = self.template.format(layer=layer)
        t = checked_tensor(raw, name, FLOAT_DTYPES)
        shape = self.shape
        if self.extra_experts and t.info.shape and t.info.shape[0] >= shape[0]:
            shape = (t.info.shape[0], *shape[1:])
        check_fused_shape(t, shape, self.dims, self.axis)
        fused = float_view(t)
        gate = _gate_outputs(self.split, self.dims.intermediate)
        for i, expert in enumerate(experts):
            # A strided view of one expert's gate outputs, as [I, H]; only it is converted.
            part = fused[expert, gate] if self.axis == ROWS else fused[expert][:, gate].T
            widen_to_float32(part, t.info.dtype, out=out[i])
        return out


@dataclass(frozen=True)
class FusedFP8Columns:
    """Llama-4's FP8 release (``quant_method: fbgemm_fp8``): ``gate_up_proj`` F8_E4M3 [E, H, 2I]
    (stored transposed, ``x @ W``) and ``gate_up_proj_scale`` [E, 1, 2I], one scale per output
    (per row of W^T, as FBGEMM's row-wise kernels take it): expert e's gate is
    ``e4m3(Q[e][:, :I]).T * S[e, 0, :I, None]``."""

    template: str
    scale_template: str
    dims: ExpertDims
    split: str = HALVES
    quantized: bool = True

    def expert_name(self, layer, expert):
        return self.template.format(layer=layer)

    def names(self, layer):
        return [self.template.format(layer=layer), self.scale_template.format(layer=layer)]

    def decode(self, layer, experts, raw, out):
        name, scale_name = self.names(layer)
        d = self.dims
        w = checked_tensor(raw, name, (FP8_WEIGHT_DTYPE,))
        check_fused_shape(w, (d.num_experts, d.hidden, 2 * d.intermediate), d, "FP8 gate_up")
        s = checked_tensor(raw, scale_name, CT_SCALE_DTYPES)
        check_fused_shape(
            s, (d.num_experts, 1, 2 * d.intermediate), d, "one scale per gate_up output"
        )
        fused = w.data.reshape(w.info.shape)
        scales = decode_tensor(
            s.data, s.info.dtype, (d.num_experts, 2 * d.intermediate), name=scale_name
        )
        gate = _gate_outputs(self.split, d.intermediate)
        for i, expert in enumerate(experts):
            # A strided [I, H] view of the gate's bytes; only it is decoded.
            dequantize_fp8_scaled(
                fused[expert][:, gate].T, scales[expert, gate, None], name=name, out=out[i]
            )
        return out


@dataclass(frozen=True)
class StackedGate:
    """All experts' gate projections (gate only, no up) in one float tensor: [E, I, H] (Step),
    or the same rows as [E*I, H] when ``flat`` (DBRX's ``experts.mlp.w1``)."""

    template: str
    dims: ExpertDims
    flat: bool = False
    quantized: bool = False

    def expert_name(self, layer, expert):
        return self.template.format(layer=layer)

    def names(self, layer):
        return [self.template.format(layer=layer)]

    def decode(self, layer, experts, raw, out):
        name = self.template.format(layer=layer)
        t = checked_tensor(raw, name, FLOAT_DTYPES)
        d = self.dims
        shape = (d.num_experts, d.intermediate, d.hidden)
        check_fused_shape(
            t, (d.num_experts * d.intermediate, d.hidden) if self.flat else shape, d, "stacked gate"
        )
        stacked = float_view(t).reshape(shape)
        for i, expert in enumerate(experts):
            widen_to_float32(stacked[expert], t.info.dtype, out=out[i])
        return out


@dataclass(frozen=True)
class FusedMXFP4:
    """gpt-oss as published: ``*_blocks`` U8 [E, 2I, H/32, 16] + ``*_scales`` U8 [E, 2I, H/32].

    Rows are the 2I outputs; each row's 16-byte blocks pack 32 E2M1 inputs (low nibble first),
    scaled by one E8M0 byte (``2^(b-127)``; 255 is refused).
    """

    blocks_template: str
    scales_template: str
    dims: ExpertDims
    split: str = INTERLEAVED
    quantized: bool = True

    def expert_name(self, layer, expert):
        return self.blocks_template.format(layer=layer)

    def names(self, layer):
        return [self.blocks_template.format(layer=layer), self.scales_template.format(layer=layer)]

    def decode(self, layer, experts, raw, out):
        blocks_name, scales_name = self.names(layer)
        d = self.dims
        if d.hidden % MXFP4_GROUP:
            raise CheckpointError(
                f"tensor {blocks_name}: hidden size {d.hidden} is not a multiple of {MXFP4_GROUP}"
            )
        groups = d.hidden // MXFP4_GROUP
        b = checked_tensor(raw, blocks_name, (MXFP4_BYTE_DTYPE,))
        check_fused_shape(
            b, (d.num_experts, 2 * d.intermediate, groups, MXFP4_GROUP // 2), d, "MXFP4 blocks"
        )
        s = checked_tensor(raw, scales_name, (MXFP4_BYTE_DTYPE,))
        check_fused_shape(s, (d.num_experts, 2 * d.intermediate, groups), d, "MXFP4 scales")
        blocks = b.data.reshape(b.info.shape)
        scales = s.data.reshape(s.info.shape)
        gate = _gate_outputs(self.split, d.intermediate)
        for i, expert in enumerate(experts):
            # Views of the gate rows only: [I, H/2] packed bytes and [I, H/32] scale bytes.
            rows = blocks[expert, gate].reshape(d.intermediate, d.hidden // 2)
            dequantize_fp4(
                rows, scales[expert, gate], name=blocks_name, scale_name=scales_name, out=out[i]
            )
        return out


def check_fused_shape(t: RawTensor, expected: tuple[int, ...], dims: ExpertDims, what: str) -> None:
    """A fused tensor must split into the config's experts and sizes; say how it does not."""
    if tuple(t.info.shape) != tuple(expected):
        raise CheckpointError(
            f"tensor {t.info.name}: shape {list(t.info.shape)} does not split into the config's "
            f"{dims.describe()} ({what}: expected {list(expected)})"
        )
