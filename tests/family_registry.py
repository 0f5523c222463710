"""Every MoE text architecture of the installed transformers, as tiny random models it saves itself.

``moe_model_types`` reads transformers' own registry (``CONFIG_MAPPING`` and the auto-model
mappings) and keeps the model types whose config, or a nested text config, names an expert
count: a new MoE architecture in a new transformers release appears here by itself.
``tiny_config`` shrinks a model type's default config (small sizes, 4 experts, few layers, its
per-layer lists cut to match) with a few per-type fixes (``FIXES``); ``reference`` reads, from the
*in-memory* model object, every MoE layer's routed gate_proj rows (as the experts' forward uses
them: transformers' ``has_gate`` / ``is_transposed`` / ``is_concatenated`` flags, or the shape),
router, router bias and shared gate_proj, in float64, independent of the package's readers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

COUNT_KEYS = (
    "n_routed_experts",
    "num_local_experts",
    "num_experts",
    "moe_num_experts",
    "n_experts",
)
HIDDEN = 64
INTERMEDIATE = 24  # 2I != H, so a fused tensor's orientation cannot be guessed from its shape
LAYERS = 4
EXPERTS = 4

# Per-type config changes that let the tiny model instantiate (validators tie sizes together).
_GEMMA4 = dict(
    per_layer_config={},
    enable_moe_block=True,
    num_experts=EXPERTS,
    top_k_experts=2,
    moe_intermediate_size=INTERMEDIATE,
)
# Its indexed-attention layers build a token indexer whose sizes default to None.
_QWEN4_EXP = dict(
    indexer_n_heads=4,
    indexer_kv_heads=1,
    indexer_head_dim=16,
    indexer_budget=64,
    indexer_compress_ratio=4,
)
FIXES: dict[str, dict[str, Any]] = {
    "gemma4_text": _GEMMA4,
    "gemma4": dict(text_config=_GEMMA4),
    "diffusion_gemma": dict(text_config=_GEMMA4),
    "deepseek_v2": dict(num_experts_per_tok=2),
    "dots1": dict(n_routed_experts=EXPERTS, n_shared_experts=1, num_experts_per_tok=2),
    "hunyuan_v1_moe": dict(num_experts=EXPERTS, moe_topk=2, head_dim=16),
    "granitemoehybrid": dict(
        mamba_n_heads=8, mamba_d_head=16, shared_intermediate_size=INTERMEDIATE
    ),
    # transformers 5.24's DbrxAttention reads attn_config.rope_theta, which the config lacks
    "dbrx": dict(attn_config=dict(rope_theta=10000.0)),
    "step3p7": dict(text_config=dict(mlp_layer_types=["dense", "sparse", "dense", "sparse"])),
    "glm5_next": dict(
        text_config=dict(
            num_key_value_heads=4, mlp_layer_types=["dense", "sparse", "dense", "sparse"]
        )
    ),
    "lfm2_moe": dict(
        layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1
    ),
    "granitemoeshared": dict(shared_intermediate_size=INTERMEDIATE),
    "qwen4_exp_text": _QWEN4_EXP,
    "qwen4_exp": dict(text_config=_QWEN4_EXP),
    "deepseek_ocr2": dict(
        text_config=dict(
            mlp_layer_types=["dense", "sparse", "dense", "sparse"], num_experts_per_tok=2
        )
    ),
    # text and vision experts of two sizes; mrope_section must sum to head_dim // 2 (16 // 2)
    "ernie4_5_vl_moe": dict(
        text_config=dict(
            moe_intermediate_size=[INTERMEDIATE, 16],
            rope_parameters=dict(rope_type="default", rope_theta=500000.0, mrope_section=[3, 3, 2]),
        )
    ),
    # its vision encoder's last scale has 40*40*3*2*64 channels at the default patch size (a
    # square layer of 614400: 1.5 TB); a 4-pixel patch keeps it small
    "inkling_mm_model": dict(vision_config=dict(patch_size=4, n_layers=4)),
    # the experts work in a pooled space of their own width (48: neither the hidden size nor 2I)
    # (its audio pyramid and vision adapter keep their default widths otherwise: 118M parameters)
    "muse_spark": dict(
        text_config=dict(moe_hidden_size=48),
        audio_config=dict(hidden_sizes=[16, 16, 32, 32]),
        projector_hidden_size=64,
    ),
    # mrope_section must sum to qk_rope_head_dim // 2 (8 // 2 in the tiny model)
    "hy_v4_vl": dict(
        text_config=dict(
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1])
        )
    ),
}
# Model types whose tiny model cannot be made here, and why (a test skips them by name). None in
# transformers 5.24: a new architecture goes here only with a reason outside vindex-hub's control.
SKIPPED: dict[str, str] = {}


def _auto_mappings() -> list[tuple[str, dict[str, str]]]:
    from transformers.models.auto import modeling_auto as m

    return [
        ("AutoModelForCausalLM", m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        ("AutoModelForImageTextToText", m.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES),
        ("AutoModelForSeq2SeqLM", m.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
    ]


def moe_model_types() -> list[str]:
    """The text-generating model types of transformers' registry whose config (or a nested text
    config: a multimodal model's language tower) declares an expert count.

    The config classes are judged by their module's source (importing all of them takes half a
    minute); a config whose language tower is any ``AutoConfig`` is judged by an instance.
    """
    import importlib.util

    from transformers import CONFIG_MAPPING
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    generative = set().union(*(set(names) for _, names in _auto_mappings()))
    pattern = re.compile(r"\b(" + "|".join(COUNT_KEYS) + r")\b")
    found = []
    for model_type in sorted(generative):
        module = model_type_to_module_name(model_type)
        spec = importlib.util.find_spec(f"transformers.models.{module}.configuration_{module}")
        text = open(spec.origin, encoding="utf-8").read() if spec and spec.origin else ""
        if pattern.search(text):
            found.append(model_type)
        elif "AutoConfig" in text and "sub_configs" in text:
            try:
                config = CONFIG_MAPPING[model_type]()
            except Exception:
                continue
            nested = [getattr(config, k, None) for k in getattr(config, "sub_configs", {})]
            if any(pattern.search(" ".join(vars(n))) for n in nested if n is not None):
                found.append(model_type)
    return found


def _shrink(d: dict[str, Any], layers: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n0 = d.get("num_hidden_layers")
    for k, v in d.items():
        kl = k.lower()
        if k == "per_layer_config" and isinstance(v, dict):  # overrides of layers cut away go
            out[k] = {
                i: _shrink(o, layers) if isinstance(o, dict) else o
                for i, o in v.items()
                if int(i) < layers
            }
        elif isinstance(v, dict) and k.endswith("_config") and k != "quantization_config":
            out[k] = _shrink(v, layers)
        elif isinstance(v, list) and n0 and len(v) == n0 and n0 > layers:
            out[k] = v[:layers]
        elif isinstance(v, bool) or not isinstance(v, int):
            out[k] = v
        elif k in COUNT_KEYS:
            out[k] = min(v, EXPERTS)
        elif k in ("num_experts_per_tok", "moe_topk", "moe_k", "top_k"):
            out[k] = min(v, 2)
        elif k in ("num_hidden_layers", "num_layers"):
            out[k] = min(v, layers)
        elif (
            k in ("hidden_size", "d_model")
            or kl.endswith(("text_hidden_size", "out_hidden_size"))
            or kl in ("adapter_in_dim", "adapter_out_dim", "adapter_input_size")
        ):
            out[k] = HIDDEN
        elif "intermediate" in kl or kl.endswith("ffn_hidden_size") or kl.endswith("ffn_dim"):
            out[k] = INTERMEDIATE if v else v
        elif kl in ("num_attention_heads", "num_heads") or kl.endswith("_attention_heads"):
            out[k] = 4
        elif kl in ("num_key_value_heads", "num_kv_heads"):
            # multi-head attention (as many KV heads as heads) stays so: validators check it
            out[k] = (4 if v == d.get("num_attention_heads") else 2) if v else v
        elif kl == "head_dim":
            out[k] = 16
        elif "vocab_size" in kl:
            out[k] = 256
        elif "lora_rank" in kl:
            out[k] = 16 if v else v
        elif kl in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            out[k] = 8 if v else v  # 0 (NoPE) stays 0
        elif kl in ("first_k_dense_replace", "first_k_dense", "num_dense_layers"):
            out[k] = min(v, 1)
        elif kl in ("n_group", "topk_group"):
            out[k] = 1
        elif kl.endswith("token_id") or kl.endswith("token_index"):
            out[k] = v if v < 128 else 128 + v % 128  # special tokens stay inside the tiny vocab
        else:
            out[k] = v
    return out


def tiny_config(model_type: str) -> Any:
    from transformers import CONFIG_MAPPING, AutoConfig

    d = _shrink(CONFIG_MAPPING[model_type]().to_dict(), LAYERS)
    for key in ("model_type", "transformers_version", "architectures"):
        d.pop(key, None)
    for key, value in FIXES.get(model_type, {}).items():
        if isinstance(value, dict) and isinstance(d.get(key), dict) and "model_type" in d[key]:
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return AutoConfig.for_model(model_type, **d)


def build_model(model_type: str) -> Any:
    import transformers

    config = tiny_config(model_type)
    torch.manual_seed(sum(map(ord, model_type)))
    # A multimodal model is saved whole (its language tower inside), as its releases are.
    for auto, names in sorted(
        _auto_mappings(), key=lambda a: a[0] != "AutoModelForImageTextToText"
    ):
        if model_type in names:
            model = getattr(transformers, auto).from_config(config)
            break
    with torch.no_grad():  # zero-initialised biases and routers would check nothing
        for name, buffer in model.named_buffers():
            if "bias" in name and buffer.is_floating_point():
                buffer.normal_()
        for param in model.parameters():
            if param.is_floating_point() and param.dim() == 2 and not param.any():
                param.normal_(std=0.02)
    return model.eval()


@dataclass
class LayerReference:
    gates: np.ndarray  # [E, I, H] float64
    routers: list[np.ndarray]  # candidate router matrices [>=E, H] of the block
    biases: list[np.ndarray]  # candidate router biases (flattened)
    shared: np.ndarray | None
    #: False where the gates are a product of matrices (float64 here, float32 in the package):
    #: compared to float32 rounding, not bit for bit
    exact: bool = True


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")
ATTENTION = ("attn", "attention")


def _gates(module: torch.nn.Module, hidden: int) -> np.ndarray | None:
    """[E, I, H] gate rows of an in-memory experts module, as its forward uses them."""
    w = getattr(module, "gate_up_proj", None)
    if isinstance(w, torch.Tensor) and w.dim() == 3:
        transposed = getattr(module, "is_transposed", None)
        if transposed is None:
            transposed = w.shape[1] == hidden and w.shape[2] != hidden
        concatenated = getattr(module, "is_concatenated", True)
        rows = w.transpose(1, 2) if transposed else w  # [E, 2I, H]
        gate = rows[:, 0::2] if not concatenated else rows[:, : rows.shape[1] // 2]
        return _f64(gate)
    mlp = getattr(module, "mlp", None)  # DBRX: w1 [E*I, H], expert e = w1.view(E, I, H)[e]
    if mlp is not None and isinstance(getattr(mlp, "w1", None), torch.Tensor):
        w1 = mlp.w1
        return _f64(w1.view(-1, mlp.ffn_hidden_size, hidden))
    linear = getattr(module, "input_linear", None)  # JetMoE ParallelExperts [E, 2I, H]
    if linear is not None and getattr(linear, "weight", None) is not None:
        w = linear.weight
        return _f64(w[:, : w.shape[1] // 2])
    return None


def _pooled(block: torch.nn.Module, gates: np.ndarray, hidden: int) -> np.ndarray | None:
    """Muse Spark: the experts run in a pooled space, after ``pre_expert_proj`` P [M, H] and
    ``pre_expert_norm`` (x / rms(x) * (1 + w)), so the gate reads h through G diag(1 + w) P up
    to 1 / rms(P h), one positive number a token. None for a block that does not pool."""
    proj, norm = getattr(block, "pre_expert_proj", None), getattr(block, "pre_expert_norm", None)
    if proj is None or norm is None:
        return None
    p, scale = _f64(proj.weight), 1.0 + _f64(norm.weight)
    effective = np.stack([(g * scale) @ p for g in gates])
    # The formula against the block's own modules: the gate outputs of a few hidden states.
    x = torch.randn(3, hidden, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = _f64(norm(proj(x)))
        rms = np.sqrt(np.mean(_f64(proj(x)) ** 2, axis=-1, keepdims=True) + norm.eps)
    for g, e in zip(gates, effective):
        np.testing.assert_allclose(pooled @ g.T, (_f64(x) @ e.T) / rms, rtol=1e-4, atol=1e-6)
    return effective


def reference(model: Any, hidden: int, num_experts: int) -> dict[int, LayerReference]:
    """Every MoE layer of the in-memory model: its experts' gate rows, router(s), bias(es), shared."""
    layers: dict[int, LayerReference] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        leaf = name.rsplit(".", 1)[-1]
        m = LAYER.search(name)
        if m is None or any(a in name for a in ATTENTION) or "vision" in name or "visual" in name:
            continue
        if leaf == "experts" or (leaf == "mlp" and hasattr(module, "input_linear")):
            gates = _gates(module, hidden)
            if gates is None:
                continue
            block = modules[name.rsplit(".", 1)[0]] if leaf == "experts" else module
            layer = int(m.group(1))
            gates = gates[:num_experts]  # LongCat allocates rows for its zero-computation experts
            pooled = _pooled(block, gates, hidden)
            exact = pooled is None
            gates = gates if pooled is None else pooled
            routers, biases, shared = [], [], None
            max_rows = max(
                (p.shape[0] for p in block.parameters() if p.dim() == 2 and p.shape[1] == hidden),
                default=num_experts,
            )
            for pname, t in list(block.named_parameters()) + list(block.named_buffers()):
                if pname.startswith("experts.") and "bias" not in pname:
                    continue
                if "share" in pname:
                    if shared is None and (
                        pname.endswith("gate_proj.weight")
                        or pname.endswith("gate_proj")
                        or pname.endswith("w1.weight")
                    ):
                        shared = _f64(t).reshape(-1, hidden)
                    elif shared is None and pname.endswith(
                        ("input_linear.weight", "gate_up_proj.weight")
                    ):
                        shared = _f64(t)[: t.shape[0] // 2]
                    continue
                if t.dim() == 2 and t.shape[1] == hidden and t.shape[0] >= num_experts:
                    routers.append(_f64(t))
                elif "bias" in pname and num_experts <= t.numel() <= max_rows:
                    if "proj" not in pname and "linear" not in pname:
                        biases.append(_f64(t).reshape(-1))
            # a shared expert beside the MoE block (Granite, Step), or beside its parent
            # (ERNIE VL's mlp.shared_experts beside mlp.text_moe)
            layer_name = name[: m.end() - 1]
            parent = name.rsplit(".", 2)[0]
            below = parent.startswith(layer_name + ".")  # not the layer list itself
            for owner in (parent, layer_name) if below else (layer_name,):
                if shared is not None:
                    break
                for pname, t in modules[owner].named_parameters():
                    if "share" in pname.split(".")[0] and pname.endswith("gate_proj.weight"):
                        shared = _f64(t).reshape(-1, hidden)
                    elif "share" in pname.split(".")[0] and pname.endswith("input_linear.weight"):
                        shared = _f64(t)[: t.shape[0] // 2]
            # Two stacks may hold experts under the same layer ids (Diffusion Gemma's encoder and
            # decoder): the vindex indexes one, which is only right when they are the same weights.
            if layer in layers and not np.array_equal(layers[layer].gates, gates):
                raise AssertionError(f"{name}: a second stack's experts differ at layer {layer}")
            layers[layer] = LayerReference(gates, routers, biases, shared, exact)
    return layers
