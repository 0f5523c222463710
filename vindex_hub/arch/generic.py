"""The generic adapter: any transformers MoE family whose experts have a gate projection.

Most MoE models transformers ships keep a layer's experts the same few ways, and
``save_pretrained`` writes them in the layout the original release publishes (transformers'
checkpoint conversion rules run backwards on save). So one adapter reads them all, and finds
where the experts are from the checkpoint's own tensor names:

* the text model's keys: the top-level config, or the nested one that names an expert count
  (``text_config``, ``language_config``, ``llm_config``, ``thinker_config.text_config``);
* the routed gate_proj: the first of the candidate layouts (``GENERIC_PREFIXES`` x
  ``GENERIC_BLOCKS`` x per-expert ``experts.{E}.gate_proj|w1.weight``, FP8 blocks or float, and
  the fused ``experts.gate_up_proj``, ``experts.fc1.weight``, ``input_linear.weight``) present
  for some layer;
* the MoE layers: exactly the layers whose block holds that layout (hybrid models, dense first
  layers, every-n-th-layer MoE: no config rule needed), each checked to hold all of it;
* router, router bias and shared expert: the first of their candidate names present under the
  block. The router may have more rows than there are routed experts (zero-computation or
  identity experts have a router row and no weights); the shared gate_proj is read in whatever
  row count the checkpoint holds (several shared experts side by side, or stacked ``[S, I, H]``).

What is truly specific to a family (a fused tensor stored transposed, an intermediate-size key
of its own) is one :class:`Quirks` entry in ``arch.catalog``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..numerics.quant import widen_to_float32
from ..source.base import RawTensor
from .base import (
    FLOAT_DTYPES,
    checked_tensor,
    config_int,
    config_object,
    first_config_int,
    float_view,
)
from .family import MoEFamily
from .inkling_quant import w13_layouts
from .layouts import (
    FLOAT,
    HALVES,
    ROWS,
    FusedGateUp,
    PerExpert,
    RoutedLayout,
    StackedGate,
)

#: config keys that give the number of routed experts, most specific first
COUNT_KEYS = (
    "n_routed_experts",
    "num_local_experts",
    "num_experts",
    "moe_num_experts",
    "n_experts",
)
#: config keys that give one routed expert's intermediate size, most specific first
INTERMEDIATE_KEYS = (
    "moe_intermediate_size",
    "expert_intermediate_size",
    "expert_ffn_hidden_size",
    "intermediate_size",
)
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layers")
#: config keys that give the number of experts a token is routed to
TOP_K_KEYS = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "moe_topk",
    "moe_k",
    "top_k_experts",
    "moe_top_k",
    "top_k",
)
#: nested configs a multimodal model keeps its text model's keys in
TEXT_CONFIG_KEYS = ("text_config", "language_config", "llm_config", "thinker_config")
SHARED_COUNT_KEYS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
GENERIC_PREFIXES = (
    "model.",
    "model.language_model.",
    "language_model.model.",
    "",
    "model.language_model.model.",
    "thinker.model.",
    "model.text_model.",
    "language_model.",
    "model.llm.",
    # Diffusion Gemma: the decoder's layers (its encoder's language model is tied to them)
    "model.decoder.",
)
#: what holds the decoder layers (``blocks``: what transformers writes for Kimi-K2.5, DBRX)
LAYER_CONTAINERS = ("layers", "blocks")
#: a layer's MoE block ("": the experts sit right in the layer, Mistral's own format)
GENERIC_BLOCKS = ("mlp", "block_sparse_moe", "feed_forward", "ffn", "moe", "mixer", "")
ROUTER_PARTS = (
    "gate.weight",
    "router.weight",
    "router.gate.weight",
    "router.layer.weight",
    "router.classifier.weight",
    "gate.wg.weight",
    "router.proj.weight",
)
ROUTER_BIAS_PARTS = (
    "gate.e_score_correction_bias",
    "router.e_score_correction_bias",
    "e_score_correction_bias",
    "expert_bias",
    "router.expert_bias",
    "moe_statics.e_score_correction_bias",
    "experts.e_score_correction_bias",
    "gate.bias",
    "router.bias",
    "router_bias",
)
#: shared gate_proj names: (part, how its rows hold the gate)
SHARED_PLAIN, SHARED_FUSED, SHARED_INTERLEAVED = "plain", "fused-halves", "fused-interleaved"
SHARED_PARTS = (
    ("shared_experts.gate_proj.weight", SHARED_PLAIN),
    ("shared_expert.gate_proj.weight", SHARED_PLAIN),
    ("shared_experts.w1.weight", SHARED_PLAIN),
    ("shared_mlp.gate_proj.weight", SHARED_PLAIN),
    ("shared_experts.gate_proj", SHARED_PLAIN),  # stacked [S, I, H] (no .weight)
    ("share_expert.gate_proj.weight", SHARED_PLAIN),
    ("shared_experts.linear_gate.weight", SHARED_PLAIN),  # Hunyuan V4's released name
    ("shared_mlp.input_linear.weight", SHARED_FUSED),  # [2I, H], gate = the first half
    ("shared_experts.gate_up_proj.weight", SHARED_FUSED),
    # Inkling: [S, 2I, H], each shared expert's gate and up rows alternating
    ("shared_experts.shared_w13_weight", SHARED_INTERLEAVED),
)


@dataclass(frozen=True)
class Quirks:
    """What one family does differently from the generic rules (``arch.catalog``)."""

    name: str  # the family's name, for ``vindex-hub families``
    #: how its fused gate_up tensors are stored: [E, 2I, H] rows (default) or [E, H, 2I] columns
    fused_axis: str = ROWS
    fused_split: str = HALVES
    intermediate_key: str | None = None  # None: the first of INTERMEDIATE_KEYS present
    #: whether a fused experts tensor may hold more experts than are routed to weights (rows
    #: transformers allocates for zero-computation experts; only the first E are read)
    fused_extra_experts: bool = False
    #: False where the router is not one [E, H] matrix (ZAYA's MLP router): no router is read
    router_matrix: bool = True
    #: one line on what a vindex holds where the family is unusual (zero experts, hybrid layers)
    note: str = ""


def text_params(config: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], str]:
    """The config holding the text model's MoE keys, and how messages name it."""
    if any(config.get(k) is not None for k in COUNT_KEYS):
        return config, where
    for key in TEXT_CONFIG_KEYS:
        nested = config_object(config, key, where=where)
        if any(nested.get(k) is not None for k in COUNT_KEYS):
            return nested, f"{where} {key}"
        inner = config_object(nested, "text_config", where=f"{where} {key}")
        if any(inner.get(k) is not None for k in COUNT_KEYS):
            return inner, f"{where} {key}.text_config"
    return config, where


class GenericFamily(MoEFamily):
    """A family read by the generic rules; ``quirks`` (set per model type) says what differs."""

    quirks: Quirks = Quirks("")
    prefixes: tuple[str, ...] = GENERIC_PREFIXES
    blocks: tuple[str, ...] = GENERIC_BLOCKS
    expert_count_keys: tuple[str, ...] = COUNT_KEYS
    router_parts = ROUTER_PARTS
    router_bias_parts = ROUTER_BIAS_PARTS

    def __init__(self, config: Mapping[str, Any], **kwargs: Any):
        self.fused_axis = self.quirks.fused_axis
        self.fused_split = self.quirks.fused_split
        self.has_router_matrix = self.quirks.router_matrix
        super().__init__(config, **kwargs)

    def _text_params(self) -> tuple[Mapping[str, Any], str]:
        return text_params(self.config, self.where)

    def _layer_count(self) -> int:
        return first_config_int(self.params, LAYER_KEYS, "layer count", where=self.where)

    def _top_k(self) -> int:
        return first_config_int(self.params, TOP_K_KEYS, "top-k expert count", where=self.where)

    def _intermediate_key(self) -> str:
        if self.quirks.intermediate_key is not None:
            return self.quirks.intermediate_key
        return next((k for k in INTERMEDIATE_KEYS if self.params.get(k)), INTERMEDIATE_KEYS[0])

    def candidate_blocks(self) -> list[str]:
        return [
            f"{p}{c}.{{layer}}" + (f".{b}" if b else "")
            for p in self.prefixes
            for c in LAYER_CONTAINERS
            for b in self.blocks
        ]

    def candidate_layouts(self, block: str) -> list[RoutedLayout]:
        d = self.dims
        per_expert: list[RoutedLayout] = [
            PerExpert(f"{block}.experts.{{expert}}.{proj}.weight", codec, d)
            for proj in self.expert_gate_projs
            for codec in self.expert_codecs()
        ]
        fused: list[RoutedLayout] = [
            FusedGateUp(
                f"{block}.experts.gate_up_proj",
                d,
                self.fused_axis,
                self.fused_split,
                extra_experts=self.quirks.fused_extra_experts,
            ),
            FusedGateUp(f"{block}.experts.fc1.weight", d, self.fused_axis, self.fused_split),
            # Inkling's released w13_weight [E, 2I, H] alternates gate and up rows (transformers'
            # conversion mappings de-interleave it into gate_up_proj on load, for every family);
            # the Inkling 2 loop releases quantize it (NVFP4 or MXFP8), tried first
            *w13_layouts(block, d),
            # Granite / JetMoE: ParallelExperts [E, 2I, H], gate = the first half
            FusedGateUp(f"{block}.input_linear.weight", d, ROWS, HALVES),
        ]
        if block.endswith(".moe"):
            # Step: the gate projections alone, stacked [E, I, H]; only under a block named
            # moe, as a dense MLP's gate_proj.weight has the same name
            fused.append(StackedGate(f"{block}.gate_proj.weight", d))
        return per_expert + fused

    def moe_layer_ids(self) -> list[int]:
        """The layers whose block holds routed experts (names unknown: every layer)."""
        if self.names is None:
            return list(range(self._num_layers))
        for layer in range(self._num_layers):
            for block in self.candidate_blocks():
                for layout in self.candidate_layouts(block):
                    if layout.expert_name(layer, 0) in self.names:
                        found = layout
                        return [
                            n
                            for n in range(self._num_layers)
                            if found.expert_name(n, 0) in self.names
                        ]
        example = self.candidate_layouts(self.candidate_blocks()[0])
        raise CheckpointError(
            f"{self.where}: no layer of the checkpoint holds routed-expert gate_proj tensors (looked "
            f"for e.g. {', '.join(list(dict.fromkeys(x.expert_name(0, 0) for x in example))[:3])} under "
            f"{len(self.candidate_blocks())} prefixes and block names)"
        )

    # ---- shared expert: any row count, plain, stacked or fused --------------------------------
    def num_shared_experts(self) -> int:
        if getattr(self, "shared_part", None) is None:
            return 0
        for key in SHARED_COUNT_KEYS:
            if self.params.get(key):
                return config_int(self.params, key, minimum=0, where=self.where)
        # No count in the config: one shared expert where the names show its gate_proj.
        return 1 if getattr(self, "shared_part", None) is not None else 0

    def _pick_shared(self, layer: int) -> tuple[Any, str | None]:
        """The shared gate_proj the names show, under the MoE block or beside it in the layer
        (Step's ``layers.L.share_expert``); none: no shared expert, whatever the config counts
        (some configs keep a count for a shared expert their model does not build)."""
        if self.names is None:
            return None, None
        for base in dict.fromkeys((self.block, self._layer_base())):
            for part, _ in SHARED_PARTS:
                for codec in self.shared_codecs():
                    if all(
                        n in self.names for n in codec.names(f"{base.format(layer=layer)}.{part}")
                    ):
                        self.shared_base = base
                        return codec, part
        return None, None

    def _layer_base(self) -> str:
        """The layer's own prefix: the block less its block name (the block itself when it is the layer)."""
        head, _, tail = self.block.rpartition(".")
        return head if tail != "{layer}" else self.block

    def shared_gate_name(self, layer: int) -> str | None:
        if self.shared_part is None:
            return None
        return f"{self.shared_base.format(layer=layer)}.{self.shared_part}"

    def shared_gate_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        name = self.shared_gate_name(layer)
        if name is None:
            return None
        codec = self.shared_codec
        if codec is not FLOAT and codec is not None:  # quantized: a plain [rows, H] matrix
            t = raw.get(codec.names(name)[0])  # the weight (weight_packed: [rows, packed words])
            rows = t.info.shape[0] if t is not None and len(t.info.shape) == 2 else 0
            return codec.decode(raw, name, (rows, self.dims.hidden))
        t = checked_tensor(raw, name, FLOAT_DTYPES)
        shape = tuple(t.info.shape)
        hidden = self.dims.hidden
        if len(shape) not in (2, 3) or shape[-1] != hidden:
            raise CheckpointError(
                f"tensor {name}: shape {list(shape)} is not a shared gate_proj of hidden size {hidden}"
            )
        view = float_view(t).reshape(-1, hidden)  # stacked shared experts side by side
        kind = dict(SHARED_PARTS).get(self.shared_part or "")
        if kind == SHARED_FUSED:
            view = view[: view.shape[0] // 2]
        elif kind == SHARED_INTERLEAVED:  # each expert has 2I rows, so the pairs never straddle two
            view = view[0::2]
        return widen_to_float32(view, t.info.dtype, out=np.empty(view.shape, np.float32))

    # ---- router: zero-computation experts add rows; a bias may be [1, E] -----------------------
    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        name = self.router_name(layer)
        t = checked_tensor(raw, name, FLOAT_DTYPES)
        shape = tuple(t.info.shape)
        if len(shape) != 2 or shape[1] != self.dims.hidden or shape[0] < self.dims.num_experts:
            raise CheckpointError(
                f"tensor {name}: shape {list(shape)}, expected [{self.dims.num_experts} or more "
                f"(zero-computation experts), {self.dims.hidden}]"
            )
        return widen_to_float32(float_view(t), t.info.dtype, out=np.empty(shape, np.float32))

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        name = self.router_bias_name(layer)
        if name is None:
            return None
        t = checked_tensor(raw, name, FLOAT_DTYPES)
        flat = float_view(t).reshape(-1)
        values = widen_to_float32(flat, t.info.dtype, out=np.empty(flat.shape, np.float32))
        if values.shape[0] < self.dims.num_experts:
            raise CheckpointError(
                f"tensor {name}: shape {list(t.info.shape)}, expected {self.dims.num_experts} or more values"
            )
        return values


def generic_class(model_type: str, quirks: Quirks) -> type[GenericFamily]:
    """A GenericFamily subclass for one model type (what the registry constructs)."""
    return type(
        f"Generic_{model_type}", (GenericFamily,), {"quirks": quirks, "__module__": __name__}
    )
