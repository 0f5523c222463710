"""The generic adapter: a model family described by its config keys and tensor-name patterns.

Every family transformers knows keeps a layer's MoE block under ``{prefix}layers.{L}.{block}``
and names its parts the same few ways; a family module subclasses :class:`MoEFamily` and sets
what differs (config keys, which layers are MoE, the block name, extra quantized layouts). At
construction the adapter looks at the checkpoint's tensor names and picks, for the first MoE
layer, the first layout whose tensors are all there, in this order:

1. the family's own layouts (``family_layouts``: FP8 blocks, MXFP4, DeepSeek-V4's FP4 ...);
2. the generic unquantized ones, under the family's prefixes and block names first, then under
   every other family's (``GENERIC_PREFIXES`` x ``GENERIC_BLOCKS``): per-expert
   ``experts.{E}.gate_proj.weight`` or ``experts.{E}.w1.weight`` (FP8-block when a
   ``weight_scale_inv`` sits beside it), and the fused ``experts.gate_up_proj``.

Then every MoE layer is checked to hold that layout's tensors, so a layer the config calls MoE
without experts is refused before anything is read. Without tensor names (``tensor_names=None``)
the family's first (published) layout is assumed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedArchitectureError
from ..format.sidecar import MoEConfig
from ..numerics.quant import FP8_BLOCK_SIZE
from ..source.base import RawTensor
from .base import (
    config_block_size,
    config_int,
    config_object,
    decode_float,
    first_config_int,
    first_present,
    output_buffer,
)
from .compressed import compressed_tensors_codecs
from .layouts import (
    COLUMNS,
    FLOAT,
    HALVES,
    ROWS,
    ExpertDims,
    FP8BlockCodec,
    FusedGateUp,
    MatrixCodec,
    PerExpert,
    RoutedLayout,
)

HIDDEN_KEY = "hidden_size"
TOP_K_KEY = "num_experts_per_tok"
LAYERS_KEY = "num_hidden_layers"
FP8_SCALE_PART = (
    "weight_scale_inv"  # DeepSeek-V3 / Kimi-K2 / GLM FP8: a multiplier despite its name
)
FP8_QUANT_METHOD = "fp8"
# Every prefix and MoE block name a supported family uses: the generic path tries them all.
GENERIC_PREFIXES = ("model.", "", "language_model.model.", "model.language_model.")
GENERIC_BLOCKS = ("mlp", "block_sparse_moe", "feed_forward", "ffn")
SHOWN_CANDIDATES = 4  # names an error lists of the layouts it tried


class MoEFamily:
    """Base of the data-driven adapters; subclasses set the class attributes and rules below."""

    model_type: str = ""
    #: what precedes ``layers.{L}.`` in tensor names, most likely first
    prefixes: tuple[str, ...] = ("model.",)
    #: the name of a layer's MoE block (``mlp``, ``block_sparse_moe``, ``feed_forward``, ``ffn``)
    blocks: tuple[str, ...] = ("mlp",)
    expert_count_keys: tuple[str, ...] = ("num_experts", "num_local_experts", "n_routed_experts")
    intermediate_key: str = "moe_intermediate_size"
    #: how the fused ``experts.gate_up_proj`` orders gate and up (transformers' default: [E, 2I, H] halves)
    fused_axis: str = ROWS
    fused_split: str = HALVES
    #: whether the published float checkpoints fuse the experts (tried first when names are unknown)
    publishes_fused: bool = False
    #: whether the router is one [E, H] matrix (False: an MLP router; the vindex holds no router)
    has_router_matrix: bool = True
    #: a routed expert's gate_proj module name (w1 in Mixtral and DeepSeek-V4), the published one first
    expert_gate_projs: tuple[str, ...] = ("gate_proj", "w1")
    router_parts: tuple[str, ...] = ("gate.weight", "router.weight")
    router_bias_parts: tuple[str, ...] = (
        "gate.e_score_correction_bias",
        "gate.bias",
        "router.bias",
    )
    shared_parts: tuple[str, ...] = (
        "shared_experts.gate_proj.weight",
        "shared_expert.gate_proj.weight",
        "shared_experts.w1.weight",
    )
    #: where the text model's keys live in a multimodal config (Llama-4: ``text_config``)
    text_config_key: str | None = None
    #: the input embedding ``[vocab, hidden]`` (feature tokens, LarQL's embeddings.bin), most likely
    #: first; empty: ``{prefix}embed_tokens.weight`` under the family's then the generic prefixes
    embedding_names: tuple[str, ...] = ()
    #: when the checkpoint's names are unknown, whether a layer the family does not rule on
    #: (``expects_router_bias`` None) is assumed to have the first of ``router_bias_parts``
    assumes_router_bias: bool = False

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        tensor_names: Collection[str] | None = None,
        where: str = "config.json",
    ):
        self.config = dict(config)
        self.model_type = str(
            self.config.get("model_type")
        )  # one class may serve several (kimi_k2)
        self.where = where
        self.names = None if tensor_names is None else frozenset(tensor_names)
        self.params, self.where = self._text_params()
        p = self.params
        self._num_layers = self._layer_count()
        self.dims = ExpertDims(
            num_experts=first_config_int(
                p, self.expert_count_keys, "expert count", where=self.where
            ),
            intermediate=config_int(p, self._intermediate_key(), where=self.where),
            hidden=config_int(p, HIDDEN_KEY, where=self.where),
            keys=(
                next(k for k in self.expert_count_keys if p.get(k) is not None),
                self._intermediate_key(),
                HIDDEN_KEY,
            ),
        )
        self.top_k = self._top_k()
        self.quant = config_object(self.config, "quantization_config", where=where)
        quant_where = where
        if not self.quant and self.params is not self.config:  # a language tower's own config
            self.quant = config_object(self.params, "quantization_config", where=self.where)
            quant_where = self.where
        self.fp8_block = config_block_size(self.quant, FP8_BLOCK_SIZE, where=quant_where)
        #: the codecs a compressed-tensors config's weight groups use (empty for other methods)
        self.compressed_codecs = compressed_tensors_codecs(self.quant, where=quant_where)
        self._check_family_config()
        self._moe = self.moe_layer_ids()
        self._resolve()

    # ---- what a family sets ------------------------------------------------------------------
    def _text_params(self) -> tuple[Mapping[str, Any], str]:
        """The config holding the text model's keys (``text_config_key``), and its name for messages."""
        if self.text_config_key is None:
            return self.config, self.where
        nested = config_object(self.config, self.text_config_key, where=self.where)
        return nested or self.config, f"{self.where} {self.text_config_key}"

    def _intermediate_key(self) -> str:
        return self.intermediate_key

    def _top_k(self) -> int:
        return config_int(self.params, TOP_K_KEY, where=self.where)

    def _layer_count(self) -> int:
        return config_int(self.params, LAYERS_KEY, where=self.where)

    def _check_family_config(self) -> None:
        """Family-specific config checks and attributes (run before the layers are resolved)."""

    def moe_layer_ids(self) -> list[int]:
        """The MoE layers by the family's config rule (default: every layer)."""
        return list(range(self._num_layers))

    def num_shared_experts(self) -> int:
        return 0

    def shared_gate_rows(self) -> int:
        """Output rows of the shared gate_proj (the shared experts side by side)."""
        return self.dims.intermediate * self.num_shared_experts()

    def family_layouts(self, block: str) -> list[RoutedLayout]:
        """The family's own (quantized or unusual) layouts under ``block`` = ``prefix + 'layers.{layer}.' + name``."""
        return []

    def expert_codecs(self) -> list[MatrixCodec]:
        """How one expert's gate_proj may be stored, most specific first: the compressed-tensors
        config's codecs, FP8 blocks with ``weight_scale_inv``, float."""
        return [*self.compressed_codecs, FP8BlockCodec(FP8_SCALE_PART, self.fp8_block), FLOAT]

    def shared_codecs(self) -> list[MatrixCodec]:
        """How the shared gate_proj may be stored, most specific first."""
        return self.expert_codecs()

    def expects_router_bias(self, layer: int) -> bool | None:
        """Whether the layer must have a router bias; None: whatever the checkpoint holds."""
        return None

    def quantized_expected(self) -> bool:
        """Whether the published experts are quantized (decides the layout when names are unknown)."""
        return self.quant.get("quant_method") == FP8_QUANT_METHOD or bool(self.compressed_codecs)

    # ---- resolution ---------------------------------------------------------------------------
    def candidate_blocks(self) -> list[str]:
        """The family's own prefixes and block names first, then every other family's (the generic path)."""
        prefixes = dict.fromkeys(self.prefixes + GENERIC_PREFIXES)
        blocks = dict.fromkeys(self.blocks + GENERIC_BLOCKS)
        return [f"{prefix}layers.{{layer}}.{block}" for prefix in prefixes for block in blocks]

    def candidate_layouts(self, block: str) -> list[RoutedLayout]:
        fused: list[RoutedLayout] = [
            FusedGateUp(
                f"{block}.experts.gate_up_proj", self.dims, self.fused_axis, self.fused_split
            )
        ]
        per_expert: list[RoutedLayout] = [
            PerExpert(f"{block}.experts.{{expert}}.{proj}.weight", codec, self.dims)
            for proj in self.expert_gate_projs
            for codec in self.expert_codecs()
        ]
        generic = fused + per_expert if self.publishes_fused else per_expert + fused
        return self.family_layouts(block) + generic

    def _resolve(self) -> None:
        moe = self._moe
        self.block = ""
        self.routed: RoutedLayout | None = None
        if not moe:
            return
        first = moe[0]
        tried: list[str] = []
        # The layout whose first tensor is there that lacks the fewest others: (lacking, first, one)
        partial: tuple[int, str, str] | None = None
        for block in self.candidate_blocks():
            for layout in self.candidate_layouts(block):
                if self.names is None and layout.quantized != self.quantized_expected():
                    continue  # names unknown: the config's quantization decides
                wanted = layout.names(first)
                tried.append(layout.expert_name(first, 0))
                if self.names is None or all(n in self.names for n in wanted):
                    self.block, self.routed = block, layout
                    break
                if wanted[0] in self.names:
                    missing = [n for n in wanted if n not in self.names]
                    if partial is None or len(missing) < partial[0]:
                        partial = (len(missing), wanted[0], missing[0])
            if self.routed is not None:
                break
        if self.routed is None and partial is not None:  # e.g. a quantized weight without its scale
            raise CheckpointError(
                f"layer {first}: tensor {partial[2]} is not in the checkpoint ({partial[0]} of the "
                f"routed gate_proj tensors that go with {partial[1]} missing)"
            )
        if self.routed is None:
            tried = list(dict.fromkeys(tried))
            more = (
                f" and {len(tried) - SHOWN_CANDIDATES} more"
                if len(tried) > SHOWN_CANDIDATES
                else ""
            )
            raise CheckpointError(
                f"layer {first}: {self.where} makes it an MoE layer, but the checkpoint holds no "
                f"routed-expert gate_proj for it (looked for {', '.join(tried[:SHOWN_CANDIDATES])}{more})"
            )
        self.router_weight_part = (
            self._pick(first, self.router_parts, "router weight") if self.has_router_matrix else ""
        )
        self.shared_codec, self.shared_part = self._pick_shared(first)
        if self.names is not None:
            for layer in moe:
                missing = [n for n in self.layer_tensors(layer) if n not in self.names]
                if missing:
                    raise CheckpointError(
                        f"layer {layer}: {self.where} makes it an MoE layer, but tensor {missing[0]} "
                        f"is not in the checkpoint ({len(missing)} of its tensors missing)"
                    )

    def _block(self, layer: int) -> str:
        return self.block.format(layer=layer)

    def _pick(self, layer: int, parts: Sequence[str], what: str) -> str:
        block = self._block(layer)
        found = first_present([f"{block}.{part}" for part in parts], self.names)
        if found is None:
            raise CheckpointError(
                f"layer {layer}: no {what} tensor (looked for {', '.join(f'{block}.{p}' for p in parts)})"
            )
        return found[len(block) + 1 :]

    def _pick_shared(self, layer: int) -> tuple[MatrixCodec | None, str | None]:
        if not self.num_shared_experts():
            return None, None
        block = self._block(layer)
        for part in self.shared_parts:
            for codec in self.shared_codecs():
                names = codec.names(f"{block}.{part}")
                if self.names is None:
                    if codec.quantized == self.quantized_expected() or codec is FLOAT:
                        return codec, part
                elif all(n in self.names for n in names):
                    return codec, part
        raise CheckpointError(
            f"layer {layer}: {self.where} gives it a shared expert, but the checkpoint holds no shared "
            f"gate_proj (looked for {', '.join(f'{block}.{p}' for p in self.shared_parts)})"
        )

    # ---- the interface -----------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return self._num_layers

    def moe_layers(self) -> list[int]:
        return list(self._moe)

    def moe_config(self) -> MoEConfig:
        return MoEConfig(
            n_routed_experts=self.dims.num_experts,
            n_shared_experts=self.num_shared_experts(),
            num_experts_per_tok=self.top_k,
            hidden_size=self.dims.hidden,
            moe_intermediate_size=self.dims.intermediate,
        )

    @property
    def gate_shape(self) -> tuple[int, int]:
        return (self.dims.intermediate, self.dims.hidden)

    def expert_gate_name(self, layer: int, expert: int) -> str:
        return self._routed().expert_name(layer, expert)

    def shared_gate_name(self, layer: int) -> str | None:
        return None if self.shared_part is None else f"{self._block(layer)}.{self.shared_part}"

    def router_name(self, layer: int) -> str:
        self._check_router_matrix(layer)
        return f"{self._block(layer)}.{self.router_weight_part}"

    def _check_router_matrix(self, layer: int) -> None:
        if not self.has_router_matrix:
            raise UnsupportedArchitectureError(
                f"{self.model_type} layer {layer}: its router is an MLP, not an [E, H] matrix; "
                "a vindex of it holds no router"
            )

    def embedding_tensor(self) -> str:
        """The first of ``embedding_names`` the checkpoint holds (the first when it holds none: the
        caller names it as missing)."""
        candidates = self.embedding_names or tuple(
            f"{prefix}embed_tokens.weight"
            for prefix in dict.fromkeys(self.prefixes + GENERIC_PREFIXES)
        )
        return first_present(candidates, self.names) or candidates[0]

    def router_bias_name(self, layer: int) -> str | None:
        self._check_router_matrix(layer)
        block = self._block(layer)
        candidates = [f"{block}.{part}" for part in self.router_bias_parts]
        expected = self.expects_router_bias(layer)
        if expected is False:
            return None
        if self.names is None:
            return candidates[0] if expected or self.assumes_router_bias else None
        return first_present(candidates, self.names) or (candidates[0] if expected else None)

    def layer_tensors(self, layer: int) -> list[str]:
        names = list(self._routed().names(layer))
        shared = self.shared_gate_name(layer)
        if shared is not None:
            names += self.shared_codec.names(shared)  # type: ignore[union-attr]
        if not self.has_router_matrix:
            return names
        names.append(self.router_name(layer))
        bias = self.router_bias_name(layer)
        if bias is not None:
            names.append(bias)
        return names

    def expert_gate_weights(
        self,
        layer: int,
        experts: Sequence[int],
        raw: Mapping[str, RawTensor],
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        out = output_buffer(out, (len(experts), *self.gate_shape), self.expert_gate_name(layer, 0))
        return self._routed().decode(layer, experts, raw, out)

    def shared_gate_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        name = self.shared_gate_name(layer)
        if name is None:
            return None
        return self.shared_codec.decode(raw, name, (self.shared_gate_rows(), self.dims.hidden))  # type: ignore[union-attr]

    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        return decode_float(raw, self.router_name(layer), (self.dims.num_experts, self.dims.hidden))

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        name = self.router_bias_name(layer)
        return None if name is None else decode_float(raw, name, (self.dims.num_experts,))

    def _routed(self) -> RoutedLayout:
        if self.routed is None:
            raise CheckpointError(f"{self.where}: the model has no MoE layers")
        return self.routed


class TransposedFusedFamily(MoEFamily):
    """Families whose float checkpoints fuse a layer's experts as ``gate_up_proj`` [E, H, 2I]
    (stored transposed, ``x @ W``) behind a ``router`` module: gpt-oss and Llama-4."""

    expert_count_keys = ("num_local_experts",)
    intermediate_key = "intermediate_size"
    fused_axis = COLUMNS
    publishes_fused = True
    router_parts = ("router.weight",)
