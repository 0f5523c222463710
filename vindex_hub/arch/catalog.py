"""Every MoE model type the package reads, and those it refuses, with what is specific to each.

``GENERIC`` lists the model types read by the generic adapter (``arch.generic``): most need
nothing but their name; an entry's :class:`Quirks` says what differs. The families with modules of
their own (quantized releases, config rules checked against the names) register themselves in
their modules. ``REFUSED`` gives, for the MoE model types whose experts have no gate projection,
the one line a build answers with. ``tests/test_family_registry.py`` derives the MoE model types
of the installed transformers from its config registry and fails on one that is in none of these.
"""

from __future__ import annotations

from .generic import Quirks, generic_class
from .layouts import COLUMNS, HALVES
from .registry import register_architecture, register_refusal

_DSV3 = "shared experts, score-correction bias; first layers dense"
_ZERO = (
    "zero-computation experts: router rows and bias values with no weights; the vindex holds "
    "the real experts' gate vectors, the router spectrum covers every row"
)
_HYBRID = "hybrid: only the layers whose block holds experts are indexed"
_W13 = "fused experts.w13_weight [E, 2I, H], gate and up rows interleaved"
_W13_MXFP8 = _W13 + "; float or MXFP8"
_W13_LOOP = _W13 + "; float, NVFP4 or MXFP8"

GENERIC: dict[str, Quirks] = {
    "afmoe": Quirks("AFMoE (Arcee Trinity)", note="shared experts, expert bias"),
    "aria": Quirks("Aria (language tower)", fused_axis=COLUMNS, fused_split=HALVES),
    "aria_text": Quirks("Aria text", fused_axis=COLUMNS, fused_split=HALVES),
    "axk1": Quirks("A.X K1", note=_DSV3),
    "axk2": Quirks("A.X K2", note=_DSV3),
    "bailing_hybrid": Quirks("Ling / Bailing hybrid", note=_HYBRID),
    "beam": Quirks("Beam", note=_HYBRID),
    "cohere2_moe": Quirks("Cohere2 MoE"),
    "deepseek_v2": Quirks("DeepSeek-V2", note=_DSV3),
    "deepseek_v32": Quirks("DeepSeek-V3.2", note=_DSV3),
    "dots1": Quirks("dots.llm1", note=_DSV3),
    "ernie4_5_moe": Quirks("ERNIE 4.5 MoE", note="bias in moe_statics [1, E]"),
    "exaone_moe": Quirks("EXAONE MoE", note=_DSV3),
    "flex_olmo": Quirks("FlexOlmo"),
    "flint": Quirks("Flint", note=_HYBRID),
    "glm4_moe_lite": Quirks("GLM-4.7-Flash (glm4_moe_lite)", note=_DSV3),
    "glm4v_moe": Quirks("GLM-4.5V (language tower)", note=_DSV3),
    "glm5_next": Quirks("GLM-5 next (language tower)", note=_HYBRID),
    "glm_moe_dsa": Quirks("GLM-5 (glm_moe_dsa)", note=_DSV3),
    "granitemoe": Quirks("Granite MoE", note="input_linear [E, 2I, H]"),
    "granitemoe_swa": Quirks("Granite MoE SWA"),
    "granitemoeshared": Quirks("Granite MoE shared", note="shared_mlp"),
    "granitemoehybrid": Quirks("Granite 4 hybrid", note=_HYBRID),
    "hunyuan_v1_moe": Quirks("Hunyuan MoE"),
    "hy_v4": Quirks("Hunyuan V4", note="shared_experts.linear_gate"),
    "hy_v3": Quirks("Hunyuan V3", note="shared_mlp, expert bias"),
    "jamba": Quirks("Jamba", note=_HYBRID),
    "jetmoe": Quirks("JetMoE", note="MLP experts only (the attention experts are not gated MLPs)"),
    "kimi_k25": Quirks("Kimi-K2.5 (language tower)", note=_DSV3),
    "kimi_linear": Quirks("Kimi Linear", note=_HYBRID),
    "kolibri1": Quirks("Kolibri-1"),
    "laguna": Quirks("Laguna"),
    "lfm2_moe": Quirks("LFM2-MoE", note=_HYBRID),
    "longcat_flash": Quirks("LongCat-Flash", note=_ZERO, fused_extra_experts=True),
    "mellum": Quirks("Mellum"),
    "mimo_v2_flash": Quirks("MiMo-V2-Flash"),
    "minimax": Quirks("MiniMax-Text-01"),
    "minimax_m2": Quirks("MiniMax-M2"),
    "mistral4": Quirks("Mistral 4", note=_DSV3),
    "mistral_large4": Quirks("Mistral Large 4 (language tower)", note=_DSV3),
    "phimoe": Quirks("Phi-MoE"),
    "qwen3_5_moe": Quirks("Qwen3.5-MoE (language tower)"),
    "qwen3_5_moe_text": Quirks("Qwen3.5-MoE text"),
    "qwen3_next": Quirks("Qwen3-Next", note="hybrid attention; shared expert with a sigmoid gate"),
    "qwen3_omni_moe_thinker": Quirks("Qwen3-Omni thinker (language tower)"),
    "qwen3_vl_moe": Quirks("Qwen3-VL-MoE (language tower)"),
    "step3p7": Quirks("Step-3.5 / 3.7 (language tower)", note=_HYBRID),
    "sarvam_mla": Quirks("Sarvam MLA", note=_DSV3),
    "sarvam_moe": Quirks("Sarvam MoE"),
    "solar_open": Quirks("Solar Open", note=_DSV3),
    "gemma4": Quirks("Gemma 4 (language tower)"),
    "gemma4_text": Quirks("Gemma 4 text"),
    "diffusion_gemma": Quirks(
        "Diffusion Gemma",
        note="the decoder's experts (its encoder's language model ties the same weights)",
    ),
    "inkling_text": Quirks("Inkling text"),
    "lara_mini": Quirks("Lara mini"),
    "minimax_m3_vl": Quirks("MiniMax-M3 VL (language tower)"),
    "minimax_m3_vl_text": Quirks("MiniMax-M3 text"),
    "unlimited_ocr": Quirks("Unlimited OCR (language tower)"),
    "deepseek_ocr2": Quirks("DeepSeek-OCR 2 (language tower)", note=_DSV3),
    "dots3_note": Quirks("dots3 note (language tower)", note=_DSV3),
    "dots3_note_text": Quirks("dots3 note text", note=_DSV3),
    "hy_v4_vl": Quirks("Hunyuan V4 VL (language tower)", note="shared_experts.linear_gate"),
    "qwen4_exp": Quirks("Qwen4 exp (language tower)", note=_HYBRID),
    "qwen4_exp_text": Quirks("Qwen4 exp text", note=_HYBRID),
    "inkling_mm_model": Quirks("Inkling multimodal (language tower)", note=_W13),
    "inkling2": Quirks("Inkling 2 (language tower)", note=_W13_MXFP8),
    "inkling2_text": Quirks("Inkling 2 text", note=_W13_MXFP8),
    "inkling2_loop": Quirks("Inkling 2 loop (language tower)", note=_W13_LOOP),
    "inkling2_loop_text": Quirks("Inkling 2 loop text", note=_W13_LOOP),
    # its router is an MLP (down_proj, GELU layers, out_proj over the experts and a skip class,
    # fed state from the layer before): no [E, H] matrix, so no router figures
    "zaya": Quirks(
        "ZAYA",
        router_matrix=False,
        note="router is an MLP, not an [E, H] matrix: the vindex holds no router figures",
    ),
}

REFUSED: dict[str, str] = {
    "switch_transformers": "its experts are plain two-matrix MLPs (wi, wo): there is no gate projection",
    "nllb-moe": "its experts are plain two-matrix MLPs (fc1, fc2): there is no gate projection",
    "nemotron_h": "its experts are ungated (up_proj, relu^2, down_proj): there is no gate projection",
    "nemotron_h_omni": "its language model's experts are ungated (Nemotron-H): there is no gate projection",
    "nemo_speechlm": "its language model is Nemotron-H, whose experts are ungated: there is no gate projection",
    "doge": "its experts are single embedding vectors (cross-domain MoE), not gated MLPs",
}

for _model_type, _quirks in GENERIC.items():
    register_architecture(_model_type)(generic_class(_model_type, _quirks))
for _model_type, _reason in REFUSED.items():
    register_refusal(_model_type, _reason)

# The families with modules of their own (quantized releases, config rules of their own).
OWN_MODULES: dict[str, tuple[str, str]] = {
    "deepseek_v3": ("DeepSeek-V3", "FP8 E4M3 + F32 weight_scale_inv blocks; " + _DSV3),
    "kimi_k2": ("Kimi-K2", "DeepSeek-V3 code and tensors; FP8 blocks"),
    "deepseek_v4": (
        "DeepSeek-V4",
        "FP4 E2M1 + E8M0 / FP8 experts; hash-routed layers have no bias",
    ),
    "glm4_moe": ("GLM-4.5 / 4.6 / Air", "FP8 blocks; " + _DSV3),
    "qwen2_moe": ("Qwen2-MoE", "shared expert with a sigmoid gate; mlp_only_layers"),
    "qwen3_moe": ("Qwen3-MoE", "mlp_only_layers, decoder_sparse_step"),
    "olmoe": ("OLMoE", ""),
    "mixtral": ("Mixtral", "block_sparse_moe.experts.E.w1"),
    "gpt_oss": ("gpt-oss", "MXFP4 blocks + scales; fused, gate/up interleaved"),
    "llama4_text": ("Llama-4 text", "fused [E, H, 2I]; moe_layers; fbgemm_fp8 FP8 experts"),
    "llama4": ("Llama-4 (language tower)", "fused [E, H, 2I]; moe_layers; fbgemm_fp8 FP8 experts"),
    "dbrx": ("DBRX", "ffn_config; transformer.blocks.L.ffn.experts.mlp.w1 [E*I, H]"),
    "muse_spark": (
        "Muse Spark (language tower)",
        "experts in a pooled space: gate x diag(1 + pre_expert_norm) x pre_expert_proj",
    ),
    "ernie4_5_vl_moe": (
        "ERNIE 4.5 VL MoE (language tower)",
        "text experts (moe_intermediate_size[0]); the vision experts are not indexed",
    ),
}


# The storage formats a build reads, by short tag (``vindex-hub families``) and full name.
FORMATS: dict[str, str] = {
    "float": "BF16/F16/F32",
    "fp8": "FP8 E4M3 + weight_scale_inv blocks",
    "ct": "compressed-tensors INT4/INT8 (pack-quantized), FP8 (float-quantized), MXFP4, NVFP4",
    "mxfp4": "MXFP4 (gate_up_proj_blocks + _scales)",
    "fp4": "FP4 E2M1 + E8M0 scales, FP8 + E8M0 blocks (DeepSeek-V4's own)",
    "fbgemm": "FBGEMM FP8 E4M3 + per-output scales (fbgemm_fp8: Llama-4's FP8 releases)",
}
#: what a family with one tensor per routed expert reads (``MoEFamily.expert_codecs``): every
#: generic type and own module, unless listed in ``OWN_FORMATS``
COMMON_FORMATS = ("float", "fp8", "ct")
OWN_FORMATS: dict[str, tuple[str, ...]] = {
    "gpt_oss": ("float", "fp8", "ct", "mxfp4"),
    "deepseek_v4": ("float", "fp8", "ct", "fp4"),
    "dbrx": ("float",),  # one stacked w1 tensor a layer: float only
    "muse_spark": ("float",),  # its pooled-space layouts are read as float only
    "llama4_text": ("float", "fp8", "ct", "fbgemm"),
    "llama4": ("float", "fp8", "ct", "fbgemm"),
}


def family_formats(model_type: str) -> tuple[str, ...]:
    """The format tags (``FORMATS``) a build of ``model_type`` reads."""
    return OWN_FORMATS.get(model_type, COMMON_FORMATS)


def describe_families(
    supported: list[str], refused: dict[str, str]
) -> dict[str, list[dict[str, str]]]:
    """What ``vindex-hub families`` prints: each supported model type with its family, how it
    is read (its own module or the generic adapter), the storage formats it reads and a note;
    each refused one with why."""
    rows = []
    for model_type in supported:
        if model_type in GENERIC:
            q = GENERIC[model_type]
            rows.append(
                {"model_type": model_type, "family": q.name, "adapter": "generic", "note": q.note}
            )
        else:
            name, note = OWN_MODULES.get(model_type, (model_type, ""))
            rows.append(
                {"model_type": model_type, "family": name, "adapter": "own module", "note": note}
            )
        rows[-1]["formats"] = " ".join(family_formats(model_type))
    return {
        "supported": rows,
        "refused": [{"model_type": t, "reason": r} for t, r in refused.items()],
    }
