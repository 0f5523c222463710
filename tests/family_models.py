"""Tiny random MoE models of every supported family, built and saved by ``transformers`` itself.

Each :class:`Case` is one family and layout: ``make_checkpoint`` builds the model from its config
(``AutoConfig.for_model`` + ``from_config``), saves it with ``save_pretrained`` and returns the
reference read from the model's *in-memory* parameters, the rows its forward pass uses as the
gate (``gate, up = chunk(2)`` of ``x @ gate_up_proj^T``; gpt-oss ``gate_up[..., ::2]``; Llama-4
``chunk`` of ``x @ gate_up_proj``), independent of our readers. The quantized cases then
rewrite the saved file with those weights quantized as the families store them (``docs/families.md``)
(FP8 E4M3 with F32 ``weight_scale_inv`` blocks; MXFP4 ``_blocks`` + ``_scales``), and their
reference is transformers' own dequantization of the bytes written.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vindex_hub.testing.synth import quantize_fp8, quantize_mxfp4

SAFETENSORS = "model.safetensors"
BASE = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    num_hidden_layers=3,
)
FP8_BLOCK = [16, 32]  # small blocks so a tiny gate_proj spans several, with ragged edges
ROWS_HALVES, COLUMNS_HALVES, COLUMNS_INTERLEAVED = (
    "rows-halves",
    "columns-halves",
    "columns-interleaved",
)


@dataclass(frozen=True)
class Case:
    id: str
    model_type: str
    config: dict[str, Any]
    moe: str = "mlp"  # the decoder layer's MoE module, in memory
    gate: str = ROWS_HALVES  # how the in-memory experts.gate_up_proj holds the gate
    router: str = "gate.weight"
    bias: str | None = None
    shared: str | None = None
    layers: str = "model.layers"  # the decoder layers, in memory
    dtype: torch.dtype = torch.float32
    save_kwargs: dict[str, Any] = field(default_factory=dict)
    quantize: str | None = None  # "fp8" (per-expert, DeepSeek-V3 style) or "mxfp4" (gpt-oss)
    saved_model_type: str | None = None  # Kimi-K2: DeepSeek-V3 code under its own model_type
    vision_config: dict[str, Any] | None = None  # multimodal (Llama-4)
    hash_layers: tuple[int, ...] = ()  # DeepSeek-V4 layers routed by token id (no router bias)
    published_layout: bool = (
        True  # the layout the family publishes (assumed when names are unknown)
    )


_V3 = dict(
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    intermediate_size=96,
)
_MLA = dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
_V4 = dict(
    moe_intermediate_size=32,
    num_key_value_heads=1,
    head_dim=32,
    q_lora_rank=16,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    o_groups=2,
    o_lora_rank=16,
    index_n_heads=2,
    index_head_dim=16,
    index_topk=4,
    sliding_window=8,
    hc_mult=2,
    mlp_layer_types=["hash_moe", "moe", "moe"],
)
_LLAMA4 = dict(
    num_local_experts=4,
    num_experts_per_tok=1,
    intermediate_size=32,
    intermediate_size_mlp=96,
    head_dim=16,
    num_hidden_layers=4,
    interleave_moe_layer_step=2,
)
_SHARED_V3 = "shared_experts.gate_proj.weight"
_BIAS_V3 = "gate.e_score_correction_bias"

CASES = [
    Case("olmoe", "olmoe", dict(num_experts=4, num_experts_per_tok=2, intermediate_size=48)),
    Case(
        "mixtral-bf16",
        "mixtral",
        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48),
        dtype=torch.bfloat16,
    ),
    Case(
        "mixtral-fused",
        "mixtral",
        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48),
        save_kwargs=dict(save_original_format=False),
        published_layout=False,
    ),
    Case(
        "qwen2_moe",
        "qwen2_moe",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[0],
            intermediate_size=96,
        ),
        shared="shared_expert.gate_proj.weight",
    ),
    Case(
        "qwen3_moe-f16",
        "qwen3_moe",
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=2,
            num_hidden_layers=4,
            intermediate_size=96,
        ),
        dtype=torch.float16,
    ),
    Case("deepseek_v3", "deepseek_v3", dict(_V3, **_MLA), bias=_BIAS_V3, shared=_SHARED_V3),
    Case(
        "deepseek_v3-fused",
        "deepseek_v3",
        dict(_V3, **_MLA),
        bias=_BIAS_V3,
        shared=_SHARED_V3,
        save_kwargs=dict(save_original_format=False),
        published_layout=False,
    ),
    Case(
        "kimi_k2-fp8",
        "deepseek_v3",
        dict(_V3, **_MLA, moe_intermediate_size=40),
        bias=_BIAS_V3,
        shared=_SHARED_V3,
        quantize="fp8",
        saved_model_type="kimi_k2",
    ),
    Case("glm4_moe", "glm4_moe", dict(_V3), bias=_BIAS_V3, shared=_SHARED_V3),
    Case(
        "gpt_oss",
        "gpt_oss",
        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48, head_dim=16),
        gate=COLUMNS_INTERLEAVED,
        router="router.weight",
        bias="router.bias",
    ),
    Case(
        "gpt_oss-mxfp4",
        "gpt_oss",
        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48, head_dim=16),
        gate=COLUMNS_INTERLEAVED,
        router="router.weight",
        bias="router.bias",
        quantize="mxfp4",
    ),
    Case(
        "llama4_text",
        "llama4_text",
        _LLAMA4,
        moe="feed_forward",
        gate=COLUMNS_HALVES,
        router="router.weight",
        shared="shared_expert.gate_proj.weight",
    ),
    Case(
        "llama4",
        "llama4",
        _LLAMA4,
        moe="feed_forward",
        gate=COLUMNS_HALVES,
        router="router.weight",
        shared="shared_expert.gate_proj.weight",
        layers="language_model.model.layers",
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            vision_output_dim=64,
            projector_input_dim=64,
            projector_output_dim=64,
        ),
    ),
    # transformers' DeepSeek-V4 layouts (the published native one is tests/test_arch_deepseek_v4.py's)
    Case(
        "deepseek_v4",
        "deepseek_v4",
        _V4,
        bias=_BIAS_V3,
        shared=_SHARED_V3,
        hash_layers=(0,),
        published_layout=False,
    ),
    Case(
        "deepseek_v4-fused",
        "deepseek_v4",
        _V4,
        bias=_BIAS_V3,
        shared=_SHARED_V3,
        hash_layers=(0,),
        save_kwargs=dict(save_original_format=False),
        published_layout=False,
    ),
]
BY_ID = {case.id: case for case in CASES}


@dataclass
class LayerReference:
    """One MoE layer as the in-memory model holds it (float64), or as transformers dequantizes it."""

    gates: np.ndarray  # [E, I, H]
    router: np.ndarray  # [E, H]
    bias: np.ndarray | None
    shared: np.ndarray | None


@dataclass
class Checkpoint:
    case: Case
    folder: Path
    layers: dict[int, LayerReference]  # exactly the layers whose in-memory block has experts

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())


def _attr(obj: Any, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), obj)


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def in_memory_gates(case: Case, experts: torch.Tensor, intermediate: int) -> torch.Tensor:
    """[E, I, H] gate_proj rows from the in-memory ``experts.gate_up_proj``, as its forward reads them."""
    if case.gate == ROWS_HALVES:  # [E, 2I, H]; gate, up = (x @ W^T).chunk(2)
        return experts[:, :intermediate]
    if case.gate == COLUMNS_HALVES:  # [E, H, 2I]; gate, up = (x @ W).chunk(2)
        return experts[:, :, :intermediate].transpose(1, 2)
    return experts[:, :, 0::2].transpose(1, 2)  # [E, H, 2I]; gate = (x @ W)[..., ::2]


def build_model(case: Case) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(sum(map(ord, case.id)))
    if case.vision_config is not None:
        config = AutoConfig.for_model(
            case.model_type, text_config={**BASE, **case.config}, vision_config=case.vision_config
        )
        model = AutoModelForImageTextToText.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(case.model_type, **{**BASE, **case.config})
        )
    with torch.no_grad():  # the score-correction biases start at zero: make them worth checking
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_()
    return model if case.dtype == torch.float32 else model.to(case.dtype)


def make_checkpoint(case: Case, folder: Path) -> Checkpoint:
    model = build_model(case)
    model.save_pretrained(folder, **case.save_kwargs)
    layers: dict[int, LayerReference] = {}
    for index, layer in enumerate(_attr(model, case.layers)):
        block = getattr(layer, case.moe)
        if not hasattr(block, "experts"):
            continue  # a dense layer: not in a vindex
        fused = block.experts.gate_up_proj
        intermediate = fused.shape[1 if case.gate == ROWS_HALVES else 2] // 2
        layers[index] = LayerReference(
            gates=_f64(in_memory_gates(case, fused, intermediate)),
            router=_f64(_attr(block, case.router)),
            bias=None
            if case.bias is None or index in case.hash_layers
            else _f64(_attr(block, case.bias)),
            shared=None if case.shared is None else _f64(_attr(block, case.shared)),
        )
    checkpoint = Checkpoint(case, folder, layers)
    if case.quantize == "fp8":
        _quantize_fp8(checkpoint)
    elif case.quantize == "mxfp4":
        _quantize_mxfp4(checkpoint, model)
    if case.saved_model_type:
        config = checkpoint.config
        config["model_type"] = case.saved_model_type
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return checkpoint


def _rewrite(
    checkpoint: Checkpoint, tensors: dict[str, torch.Tensor], quantization_config: dict[str, Any]
) -> None:
    save_file(tensors, checkpoint.folder / SAFETENSORS, metadata={"format": "pt"})
    config = checkpoint.config
    config["quantization_config"] = quantization_config
    (checkpoint.folder / "config.json").write_text(json.dumps(config, indent=2))


def fp8_dequantize_reference(weight: torch.Tensor, scale_inv: torch.Tensor) -> np.ndarray:
    """transformers' own FP8 block dequantization (``integrations/finegrained_fp8.py``), float32."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    return _dequantize_fp8_weight(weight, scale_inv, FP8_BLOCK, torch.float32).numpy()


def _quantize_fp8(checkpoint: Checkpoint) -> None:
    """Every routed and shared gate_proj as F8_E4M3 + F32 ``weight_scale_inv`` (DeepSeek-V3 as published)."""
    tensors = load_file(checkpoint.folder / SAFETENSORS)
    for layer, ref in checkpoint.layers.items():
        block = f"model.layers.{layer}.mlp"
        weights = {f"{block}.experts.{e}.gate_proj.weight": g for e, g in enumerate(ref.gates)}
        weights[f"{block}.{_SHARED_V3}"] = ref.shared
        for name, weight in weights.items():
            q, scale_bytes, _ = quantize_fp8(
                weight.astype(np.float32), scale_dtype="F32", block=tuple(FP8_BLOCK)
            )
            fp8 = torch.from_numpy(q).view(torch.float8_e4m3fn)
            scale = torch.from_numpy(scale_bytes.view(np.float32).copy())
            tensors[name], tensors[name + "_scale_inv"] = fp8, scale
            dequantized = fp8_dequantize_reference(fp8, scale).astype(np.float64)
            if name.endswith(_SHARED_V3):
                ref.shared = dequantized
            else:
                ref.gates[int(name.split(".experts.")[1].split(".")[0])] = dequantized
    _rewrite(
        checkpoint,
        tensors,
        {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": FP8_BLOCK,
        },
    )


def mxfp4_dequantize_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """transformers' own MXFP4 dequantization (``integrations/mxfp4.py``): [E, H, 2I] float32."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)


def _quantize_mxfp4(checkpoint: Checkpoint, model: Any) -> None:
    """Each layer's whole gate_up_proj as gpt-oss publishes it: ``_blocks`` + ``_scales``."""
    tensors = load_file(checkpoint.folder / SAFETENSORS)
    for layer, ref in checkpoint.layers.items():
        name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
        rows = (
            tensors.pop(name).transpose(1, 2).contiguous().numpy()
        )  # [E, 2I, H]: rows are outputs
        blocks, scales = quantize_mxfp4(rows)
        tensors[name + "_blocks"], tensors[name + "_scales"] = (
            torch.from_numpy(blocks),
            torch.from_numpy(scales),
        )
        dequantized = mxfp4_dequantize_reference(
            tensors[name + "_blocks"], tensors[name + "_scales"]
        )
        ref.gates = _f64(in_memory_gates(checkpoint.case, dequantized, ref.gates.shape[1]))
    _rewrite(
        checkpoint,
        tensors,
        {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "embed_tokens", "lm_head"]},
    )
