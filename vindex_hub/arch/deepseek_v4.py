"""DeepSeek-V4 (``model_type: deepseek_v4``; DeepSeek-V4-Flash and Flash-Base).

DeepSeek's own layout (``/work/shared/reference/deepseek-v4-checkpoint.md``): no ``model.``
prefix, ``ffn.experts.{E}.w1`` is the routed expert's gate_proj, one tensor per expert.
Routed experts are packed FP4 E2M1 (``I8``, two a byte) with per-32 ``F8_E8M0`` scales, or
``F8_E4M3`` with ``F32`` 128x128 block scales when ``expert_dtype`` is ``"fp8"`` (Flash-Base);
the shared expert is ``F8_E4M3`` with 128x128 block scales; the router is ``BF16``, with an
``F32`` bias on learned-routing layers only (the first ``num_hash_layers`` layers route by a
token-id table, ``gate.tid2eid``, instead). The MTP block (``mtp.0.*``) is not a model layer.

Every tensor name and storage fact of the family is written in this module (the test
checkpoint generator imports them from here).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError
from ..numerics.quant import FP8_BLOCK_SIZE, decode_e8m0, decode_tensor, dequantize_fp4, dequantize_fp8
from ..format.sidecar import MoEConfig
from ..source.base import RawTensor
from .base import MoEArchitecture, register_architecture

MODEL_TYPE = "deepseek_v4"

# ---- names ----------------------------------------------------------------------------------
# A "block" is "layers.{L}" for model layers and "mtp.{i}" for multi-token-prediction blocks.
LAYER_BLOCK = "layers.{layer}"
MTP_BLOCK = "mtp.{index}"
EXPERT_TENSOR = "{block}.ffn.experts.{expert}.{proj}.{part}"  # proj w1 (gate) / w2 (down) / w3 (up)
SHARED_TENSOR = "{block}.ffn.shared_experts.{proj}.{part}"
GATE_TENSOR = "{block}.ffn.gate.{part}"  # part: weight / bias / tid2eid
GATE_PROJ = "w1"
UP_PROJ = "w3"
DOWN_PROJ = "w2"
WEIGHT = "weight"
SCALE = "scale"
ROUTER_BIAS = "bias"
ROUTER_HASH_TABLE = "tid2eid"

# ---- storage formats ------------------------------------------------------------------------
EXPERT_DTYPE_FP4 = "fp4"  # also what an absent expert_dtype means (older revisions)
EXPERT_DTYPE_FP8 = "fp8"  # Flash-Base
FP4_WEIGHT_DTYPE = "I8"  # packed E2M1, 2 a byte, low nibble first; raw bytes, never numeric int8
FP4_SCALE_DTYPE = "F8_E8M0"
FP4_BLOCK = 32  # inputs per E8M0 scale in the real checkpoint (the decoder reads it off the shapes)
FP8_WEIGHT_DTYPE = "F8_E4M3"
FP8_SCALE_DTYPES = ("F8_E8M0", "F32")  # E8M0 in Flash, F32 in Flash-Base
SHARED_SCALE_DTYPE = "F8_E8M0"
ROUTED_FP8_SCALE_DTYPE = "F32"
ROUTER_DTYPE = "BF16"
ROUTER_FLOAT_DTYPES = ("BF16", "F16", "F32")
ROUTER_BIAS_DTYPE = "F32"
HASH_TABLE_DTYPE = "I64"

QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "scale_fmt": "ue8m0",
    "weight_block_size": list(FP8_BLOCK_SIZE),
    "activation_scheme": "dynamic",
}


def layer_block(layer: int) -> str:
    return LAYER_BLOCK.format(layer=layer)


def mtp_block(index: int) -> str:
    return MTP_BLOCK.format(index=index)


def expert_tensor(block: str, expert: int, proj: str, part: str) -> str:
    return EXPERT_TENSOR.format(block=block, expert=expert, proj=proj, part=part)


def shared_tensor(block: str, proj: str, part: str) -> str:
    return SHARED_TENSOR.format(block=block, proj=proj, part=part)


def gate_tensor(block: str, part: str) -> str:
    return GATE_TENSOR.format(block=block, part=part)


def fp8_scale_grid(shape: tuple[int, int], block: tuple[int, int] = FP8_BLOCK_SIZE) -> tuple[int, int]:
    """Scale grid of a block-quantized FP8 matrix: ``ceil(rows/bo) x ceil(cols/bi)``."""
    return (-(-shape[0] // block[0]), -(-shape[1] // block[1]))


_REQUIRED_INTS = ("num_hidden_layers", "hidden_size", "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok")


def _config_int(value: Any, key: str, *, minimum: int) -> int:
    """``value`` of ``config.json``'s ``key`` as an int, refused (naming the key) unless a real int >= minimum."""
    # bool is an int subclass and a float like 2.5 would truncate: neither is a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise CheckpointError(f"config.json: {key} must be {kind}, got {value!r}")
    return value


@register_architecture(MODEL_TYPE)
class DeepseekV4(MoEArchitecture):
    """The DeepSeek-V4 adapter. Checks ``config.json`` on construction."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__(config)
        for key in _REQUIRED_INTS:
            _config_int(self.config.get(key), key, minimum=1)
        expert_dtype = self.config.get("expert_dtype") or EXPERT_DTYPE_FP4
        if expert_dtype not in (EXPERT_DTYPE_FP4, EXPERT_DTYPE_FP8):
            raise CheckpointError(
                f"config.json: expert_dtype {expert_dtype!r} is not one DeepSeek-V4 uses "
                f"({EXPERT_DTYPE_FP4!r}, {EXPERT_DTYPE_FP8!r})"
            )
        self.expert_dtype: str = expert_dtype
        self.num_hash_layers: int = _config_int(self.config.get("num_hash_layers", 0), "num_hash_layers", minimum=0)
        self.first_moe_layer: int = _config_int(
            self.config.get("first_k_dense_replace", 0), "first_k_dense_replace", minimum=0
        )
        self.n_shared_experts: int = _config_int(
            self.config.get("n_shared_experts", 0), "n_shared_experts", minimum=0
        )
        quant = self.config.get("quantization_config") or {}
        if not isinstance(quant, Mapping):
            raise CheckpointError(f"config.json: quantization_config must be an object, got {quant!r}")
        block = quant.get("weight_block_size", FP8_BLOCK_SIZE)
        key = "quantization_config.weight_block_size"
        if not isinstance(block, (list, tuple)) or len(block) != 2:
            raise CheckpointError(f"config.json: {key} must be a list of 2 positive integers, got {block!r}")
        self.fp8_block: tuple[int, int] = (_config_int(block[0], key, minimum=1), _config_int(block[1], key, minimum=1))

    # ---- the model's shape --------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def moe_layers(self) -> list[int]:
        return list(range(self.first_moe_layer, self.num_hidden_layers))

    def moe_config(self) -> MoEConfig:
        return MoEConfig(
            n_routed_experts=int(self.config["n_routed_experts"]),
            n_shared_experts=self.n_shared_experts,
            num_experts_per_tok=int(self.config["num_experts_per_tok"]),
            hidden_size=int(self.config["hidden_size"]),
            moe_intermediate_size=int(self.config["moe_intermediate_size"]),
        )

    @property
    def gate_shape(self) -> tuple[int, int]:
        return (int(self.config["moe_intermediate_size"]), int(self.config["hidden_size"]))

    @property
    def shared_gate_shape(self) -> tuple[int, int]:
        """(out, in) of the shared expert's gate_proj: the shared experts side by side."""
        out, hidden = self.gate_shape
        return (out * self.n_shared_experts, hidden)

    def has_router_bias(self, layer: int) -> bool:
        """Learned-routing layers carry a score-correction bias; hash-routed layers do not."""
        return layer >= self.num_hash_layers

    # ---- tensor names ---------------------------------------------------------------------
    def expert_gate_tensors(self, layer: int, expert: int) -> list[str]:
        block = layer_block(layer)
        return [expert_tensor(block, expert, GATE_PROJ, WEIGHT), expert_tensor(block, expert, GATE_PROJ, SCALE)]

    def shared_gate_tensors(self, layer: int) -> list[str]:
        if not self.n_shared_experts:
            return []
        block = layer_block(layer)
        return [shared_tensor(block, GATE_PROJ, WEIGHT), shared_tensor(block, GATE_PROJ, SCALE)]

    def router_tensors(self, layer: int) -> list[str]:
        block = layer_block(layer)
        names = [gate_tensor(block, WEIGHT)]
        if self.has_router_bias(layer):
            names.append(gate_tensor(block, ROUTER_BIAS))
        return names

    # ---- decoding ------------------------------------------------------------------------------
    def expert_gate_weights(
        self, layer: int, experts: Sequence[int], raw: Mapping[str, RawTensor], *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """See the base class; ``out`` (float32 ``(len(experts), O, I)``) lets a caller reuse one buffer."""
        shape = (len(experts), *self.gate_shape)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
        for i, expert in enumerate(experts):
            weight_name, scale_name = self.expert_gate_tensors(layer, expert)
            if self.expert_dtype == EXPERT_DTYPE_FP4:
                self._fp4(raw, weight_name, scale_name, self.gate_shape, out=out[i])
            else:
                self._fp8(raw, weight_name, scale_name, self.gate_shape, out=out[i])
        return out

    def shared_gate_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        names = self.shared_gate_tensors(layer)
        if not names:
            return None
        return self._fp8(raw, names[0], names[1], self.shared_gate_shape)

    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        name = gate_tensor(layer_block(layer), WEIGHT)
        shape = (self.moe_config().n_routed_experts, self.gate_shape[1])
        t = _checked(raw, name, ROUTER_FLOAT_DTYPES, shape)
        return decode_tensor(t.data, t.info.dtype, shape, name=name)

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        if not self.has_router_bias(layer):
            return None
        name = gate_tensor(layer_block(layer), ROUTER_BIAS)
        shape = (self.moe_config().n_routed_experts,)
        t = _checked(raw, name, ROUTER_FLOAT_DTYPES, shape)
        return decode_tensor(t.data, t.info.dtype, shape, name=name)

    # ---- formats ----------------------------------------------------------------------------------
    def _fp4(
        self, raw: Mapping[str, RawTensor], weight_name: str, scale_name: str, shape: tuple[int, int], *, out: np.ndarray
    ) -> np.ndarray:
        rows, cols = shape
        w = _checked(raw, weight_name, (FP4_WEIGHT_DTYPE,), (rows, cols // 2))
        s = raw.get(scale_name)
        if s is None:
            raise CheckpointError(f"tensor {scale_name} was not read (needed to dequantize {weight_name})")
        scale_cols = s.info.shape[-1] if s.info.shape else 0
        if scale_cols == 0 or cols % scale_cols:
            raise CheckpointError(
                f"tensor {scale_name}: shape {list(s.info.shape)} does not give a block size dividing "
                f"{cols} inputs (expected [{rows}, {cols // FP4_BLOCK}])"
            )
        _checked(raw, scale_name, (FP4_SCALE_DTYPE,), (rows, scale_cols))
        return dequantize_fp4(
            w.data.reshape(rows, cols // 2), s.data.reshape(rows, scale_cols),
            name=weight_name, scale_name=scale_name, out=out,
        )

    def _fp8(
        self,
        raw: Mapping[str, RawTensor],
        weight_name: str,
        scale_name: str,
        shape: tuple[int, int],
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        w = _checked(raw, weight_name, (FP8_WEIGHT_DTYPE,), shape)
        grid = fp8_scale_grid(shape, self.fp8_block)
        s = _checked(raw, scale_name, FP8_SCALE_DTYPES, grid)
        if s.info.dtype == "F8_E8M0":
            scales = decode_e8m0(s.data.reshape(grid), name=scale_name)
        else:
            scales = decode_tensor(s.data, s.info.dtype, grid, name=scale_name)
        return dequantize_fp8(w.data.reshape(shape), scales, name=weight_name, block_size=self.fp8_block, out=out)


def _checked(raw: Mapping[str, RawTensor], name: str, dtypes: Sequence[str], shape: tuple[int, ...]) -> RawTensor:
    """The raw tensor ``name``, after checking it was read and has an expected dtype and shape."""
    t = raw.get(name)
    if t is None:
        raise CheckpointError(f"tensor {name} was not read")
    if t.info.dtype not in dtypes:
        raise CheckpointError(f"tensor {name}: dtype {t.info.dtype}, expected {' or '.join(dtypes)}")
    if tuple(t.info.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name}: shape {list(t.info.shape)}, expected {list(shape)}")
    return t
