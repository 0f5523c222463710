"""DeepSeek-V4 (``model_type: deepseek_v4``; DeepSeek-V4-Flash and Flash-Base).

DeepSeek's own layout (``docs/families.md``): no ``model.``
prefix, ``ffn.experts.{E}.w1`` is the routed expert's gate_proj, one tensor per expert.
Routed experts are packed FP4 E2M1 (``I8``, two a byte) with per-32 ``F8_E8M0`` scales, or
``F8_E4M3`` with ``F32`` 128x128 block scales when ``expert_dtype`` is ``"fp8"`` (Flash-Base);
the shared expert is ``F8_E4M3`` with 128x128 block scales; the router is ``BF16``, with an
``F32`` bias on learned-routing layers only (the first ``num_hash_layers`` layers route by a
token-id table, ``gate.tid2eid``, instead). The MTP block (``mtp.0.*``) is not a model layer.

Also read: the layouts transformers writes. The default ``save_pretrained`` keeps DeepSeek's
names under a ``model.`` prefix with unquantized ``w1`` (no ``.scale``);
``save_original_format=False`` writes the fused ``model.layers.{L}.mlp.experts.gate_up_proj``
[E, 2I, H] (gate = rows ``[:I]``), ``mlp.gate.e_score_correction_bias`` and
``mlp.shared_experts.gate_proj.weight``. Re-saved configs give the hash layers as the
``"hash_moe"`` entries of ``mlp_layer_types`` instead of ``num_hash_layers``, and V4.1-style
configs put ``expert_dtype`` inside ``quantization_config``.

Every tensor name and storage fact of the family is written in this module, or in the module
it shares it with (``arch.layouts``' dtypes, ``arch.deepseek_v3``'s config keys); the test
checkpoint generator imports them from there.
"""

from __future__ import annotations

from ..errors import CheckpointError
from ..numerics.quant import FP8_BLOCK_SIZE
from .base import config_int
from .deepseek_v3 import DENSE_KEY, SHARED_KEY
from .family import MoEFamily
from .layouts import E8M0_DTYPE, FP8BlockCodec, MatrixCodec, PackedFP4Codec, PerExpert, RoutedLayout
from .registry import register_architecture

MODEL_TYPE = "deepseek_v4"

# ---- names ----------------------------------------------------------------------------------
# A "block" is "layers.{L}" for model layers and "mtp.{i}" for multi-token-prediction blocks.
LAYER_BLOCK = "layers.{layer}"
MTP_BLOCK = "mtp.{index}"
EXPERT_TENSOR = "{block}.ffn.experts.{expert}.{proj}.{part}"  # proj w1 (gate) / w2 (down) / w3 (up)
SHARED_TENSOR = "{block}.ffn.shared_experts.{proj}.{part}"
GATE_TENSOR = "{block}.ffn.gate.{part}"  # part: weight / bias / tid2eid
EMBED_TENSOR = "embed.weight"  # the input embedding [vocab, hidden], BF16
GATE_PROJ = "w1"
UP_PROJ = "w3"
DOWN_PROJ = "w2"
WEIGHT = "weight"
SCALE = "scale"
ROUTER_BIAS = "bias"
ROUTER_HASH_TABLE = "tid2eid"
EXPERT_DTYPE_KEY = "expert_dtype"
HASH_LAYERS_KEY = "num_hash_layers"
MLP_LAYER_TYPES_KEY = "mlp_layer_types"  # transformers' spelling: "hash_moe" / "moe" per layer
HASH_MOE = "hash_moe"
LEARNED_MOE = "moe"

# ---- storage formats ------------------------------------------------------------------------
EXPERT_DTYPE_FP4 = "fp4"  # also what an absent expert_dtype means (older revisions)
EXPERT_DTYPE_FP8 = "fp8"  # Flash-Base
# FP8 weights are layouts.FP8_WEIGHT_DTYPE, FP4 scales layouts.E8M0_DTYPE (the codecs' facts).
FP4_WEIGHT_DTYPE = "I8"  # packed E2M1, 2 a byte, low nibble first; raw bytes, never numeric int8
FP4_BLOCK = 32  # inputs per E8M0 scale in the real checkpoint (the decoder reads it off the shapes)
SHARED_SCALE_DTYPE = E8M0_DTYPE  # the shared expert's (and attention's) FP8 block scales
ROUTED_FP8_SCALE_DTYPE = "F32"  # Flash-Base's routed experts
FP8_SCALE_DTYPES = (SHARED_SCALE_DTYPE, ROUTED_FP8_SCALE_DTYPE)  # E8M0 in Flash, F32 in Flash-Base
ROUTER_DTYPE = "BF16"
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


@register_architecture(MODEL_TYPE)
class DeepseekV4(MoEFamily):
    """The DeepSeek-V4 adapter. Checks ``config.json`` on construction."""

    prefixes = ("", "model.")
    blocks = ("ffn", "mlp")
    expert_count_keys = ("n_routed_experts",)
    expert_gate_projs = ("w1", "gate_proj")
    router_parts = (f"gate.{WEIGHT}",)
    router_bias_parts = (f"gate.{ROUTER_BIAS}", "gate.e_score_correction_bias")
    shared_parts = (f"shared_experts.{GATE_PROJ}.{WEIGHT}", "shared_experts.gate_proj.weight")
    embedding_names = (
        EMBED_TENSOR,
        "model.embed_tokens.weight",
    )  # DeepSeek's layout, then transformers'

    def _check_family_config(self) -> None:
        expert_dtype = (
            self.config.get(EXPERT_DTYPE_KEY)
            or self.quant.get(EXPERT_DTYPE_KEY)
            or EXPERT_DTYPE_FP4
        )
        if expert_dtype not in (EXPERT_DTYPE_FP4, EXPERT_DTYPE_FP8):
            raise CheckpointError(
                f"{self.where}: {EXPERT_DTYPE_KEY} {expert_dtype!r} is not one DeepSeek-V4 uses "
                f"({EXPERT_DTYPE_FP4!r}, {EXPERT_DTYPE_FP8!r})"
            )
        self.expert_dtype: str = expert_dtype
        self.hash_layers = self._hash_layers()
        self.first_moe_layer = config_int(
            self.config, DENSE_KEY, minimum=0, default=0, where=self.where
        )
        self.n_shared_experts = config_int(
            self.config, SHARED_KEY, minimum=0, default=0, where=self.where
        )

    def _hash_layers(self) -> frozenset[int]:
        types = self.config.get(MLP_LAYER_TYPES_KEY)
        if types is None:
            count = config_int(self.config, HASH_LAYERS_KEY, minimum=0, default=0, where=self.where)
            return frozenset(range(count))
        if (
            not isinstance(types, list)
            or len(types) != self.num_hidden_layers
            or any(t not in (HASH_MOE, LEARNED_MOE) for t in types)
        ):
            raise CheckpointError(
                f"{self.where}: {MLP_LAYER_TYPES_KEY} must list {HASH_MOE!r} or {LEARNED_MOE!r} for each of the "
                f"{self.num_hidden_layers} layers, got {types!r}"
            )
        return frozenset(i for i, t in enumerate(types) if t == HASH_MOE)

    @property
    def num_hash_layers(self) -> int:
        return len(self.hash_layers)

    def moe_layer_ids(self) -> list[int]:
        return list(range(self.first_moe_layer, self.num_hidden_layers))

    def num_shared_experts(self) -> int:
        return self.n_shared_experts

    def quantized_expected(self) -> bool:
        return True  # the published checkpoint: FP4 (or FP8) experts, FP8 shared expert

    def family_layouts(self, block: str) -> list[RoutedLayout]:
        codec: MatrixCodec = (
            PackedFP4Codec(SCALE)
            if self.expert_dtype == EXPERT_DTYPE_FP4
            else FP8BlockCodec(SCALE, self.fp8_block, (ROUTED_FP8_SCALE_DTYPE,))
        )
        return [PerExpert(f"{block}.experts.{{expert}}.{GATE_PROJ}.{WEIGHT}", codec, self.dims)]

    def shared_codecs(self) -> list[MatrixCodec]:
        return [FP8BlockCodec(SCALE, self.fp8_block, FP8_SCALE_DTYPES), *super().shared_codecs()]

    def expects_router_bias(self, layer: int) -> bool:
        """Learned-routing layers carry a score-correction bias; hash-routed layers do not."""
        return layer not in self.hash_layers
