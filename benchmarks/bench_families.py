"""Per-expert build cost of one family of each storage kind at its real gate_proj shape and format.

For each family a one-layer checkpoint with synthetic tensors of the real shape and storage
format is written as real safetensors (config.json + model.safetensors), then one layer is
timed with the builder's own functions (``bench_build.stage_times``), per expert: read
(``LocalCheckpoint.read`` of ``layer_tensors``), dequantize (``expert_gate_weights``, in batches
into one buffer, as the builder does), exact top-K (``svd.top_k_right_singular``), and the
dequantization share.

| family | gate_proj [I, H] | storage |
| --- | --- | --- |
| Qwen3-30B-A3B (``qwen3_moe``) | 768 x 2048 | BF16, one tensor per expert |
| gpt-oss-20b (``gpt_oss``) | 2880 x 2880 | MXFP4 ``gate_up_proj_blocks``/``_scales``, all experts fused (gate = rows 0::2) |
| Kimi-K2 (``kimi_k2``) | 2048 x 7168 | FP8 E4M3 + F32 ``weight_scale_inv`` 128x128 blocks, one per expert |
| DeepSeek-V4-Flash (``deepseek_v4``) | 2048 x 4096 | FP4 E2M1 packed ``I8`` + E8M0 scales per 32 inputs, one per expert |
| Kimi-K2-Thinking (``kimi_k2``) | 2048 x 7168 | compressed-tensors INT4 ``weight_packed`` I32 + BF16 ``weight_scale`` per 32 inputs, one per expert |
| Qwen3-30B-A3B NVFP4 (``qwen3_moe``) | 768 x 2048 | compressed-tensors NVFP4: E2M1 ``weight_packed`` U8 + E4M3 ``weight_scale`` per 16 + F32 global scale |
| Qwen3-30B-A3B FP8-dynamic (``qwen3_moe``) | 768 x 2048 | compressed-tensors FP8 E4M3 ``weight`` + BF16 ``weight_scale`` per row |

Each storage kind a build dequantizes (BF16, FP8 blocks, MXFP4, FP4, compressed-tensors INT4,
NVFP4 and FP8 per row), one family each (Kimi-K2.5's language tower stores its experts as
Kimi-K2-Thinking does; compressed-tensors MXFP4 decodes as gpt-oss's MXFP4).

    python benchmarks/bench_families.py [--experts 8] [--num-feats 64] [--device cpu] [--tiny] [--workdir DIR]

``--tiny`` divides every dimension by about 16 (a smoke run, not figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_build import stage_times  # the same read / dequantize / SVD loop as the builder's
from safetensors.torch import save_file

from vindex_hub.arch.layouts import MXFP4_GROUP
from vindex_hub.numerics import svd
from vindex_hub.numerics.quant import FP8_BLOCK_SIZE, fp8_scale_grid
from vindex_hub.source.local import CONFIG_FILE, SINGLE_FILE

WEIGHT_STD = 0.02


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    intermediate: int
    hidden: int
    storage: str
    write: Callable[[Family, int, np.random.Generator], tuple[dict, dict[str, torch.Tensor]]]


def _bf16(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32) * WEIGHT_STD).to(
        torch.bfloat16
    )


def _router(rng, prefix: str, experts: int, hidden: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _bf16(rng, experts, hidden)}


def write_qwen3(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    block = "model.layers.0.mlp"
    tensors = {
        f"{block}.experts.{e}.gate_proj.weight": _bf16(rng, f.intermediate, f.hidden)
        for e in range(experts)
    }
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    config = dict(
        num_experts=experts,
        moe_intermediate_size=f.intermediate,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    return config, tensors


def write_gpt_oss(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    block = "model.layers.0.mlp"
    groups = f.hidden // MXFP4_GROUP
    blocks = rng.integers(
        0, 256, (experts, 2 * f.intermediate, groups, MXFP4_GROUP // 2), dtype=np.uint8
    )
    scales = rng.integers(
        118, 124, (experts, 2 * f.intermediate, groups), dtype=np.uint8
    )  # 2^-9 .. 2^-4
    tensors = {
        f"{block}.experts.gate_up_proj_blocks": torch.from_numpy(blocks),
        f"{block}.experts.gate_up_proj_scales": torch.from_numpy(scales),
        f"{block}.router.bias": _bf16(rng, experts),
    }
    tensors.update(_router(rng, f"{block}.router", experts, f.hidden))
    config = dict(
        num_local_experts=experts,
        intermediate_size=f.intermediate,
        quantization_config={"quant_method": "mxfp4"},
    )
    return config, tensors


def _fp8(rng, rows: int, cols: int, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    q = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    q[(q & 0x7F) == 0x7F] = 0  # E4M3 NaN codes: a real checkpoint has none
    scale = np.exp(
        rng.normal(np.log(WEIGHT_STD / 448 * 4), 0.3, fp8_scale_grid((rows, cols), block))
    ).astype(np.float32)
    return torch.from_numpy(q).view(torch.float8_e4m3fn), torch.from_numpy(scale)


def write_kimi(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    block = "model.layers.0.mlp"
    scaled = f.hidden != 7168  # --tiny: shrink the 128x128 blocks with the shapes
    fp8_block = (8, 8) if scaled else FP8_BLOCK_SIZE
    tensors: dict[str, torch.Tensor] = {}
    for name in [f"{block}.experts.{e}.gate_proj.weight" for e in range(experts)] + [
        f"{block}.shared_experts.gate_proj.weight"
    ]:
        tensors[name], tensors[name + "_scale_inv"] = _fp8(rng, f.intermediate, f.hidden, fp8_block)
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    tensors[f"{block}.gate.e_score_correction_bias"] = torch.zeros(experts)
    config = dict(
        n_routed_experts=experts,
        moe_intermediate_size=f.intermediate,
        n_shared_experts=1,
        first_k_dense_replace=0,
        quantization_config={
            "quant_method": "fp8",
            "fmt": "e4m3",
            "weight_block_size": list(fp8_block),
        },
    )
    return config, tensors


def write_deepseek_v4(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    """DeepSeek's own layout: ``layers.0.ffn.experts.E.w1.weight`` I8 [I, H/2] + ``.scale``
    F8_E8M0 [I, H/32]; the shared expert FP8 with E8M0 128x128 block scales."""
    block = "layers.0.ffn"
    groups = f.hidden // MXFP4_GROUP
    tensors: dict[str, torch.Tensor] = {}
    for e in range(experts):
        name = f"{block}.experts.{e}.w1.weight"
        packed = rng.integers(0, 256, (f.intermediate, f.hidden // 2), dtype=np.uint8)
        scales = rng.integers(118, 124, (f.intermediate, groups), dtype=np.uint8)
        tensors[name] = torch.from_numpy(packed.view(np.int8))
        tensors[name[: -len("weight")] + "scale"] = torch.from_numpy(scales).view(
            torch.float8_e8m0fnu
        )
    scaled = f.hidden != 4096  # --tiny: shrink the 128x128 blocks with the shapes
    fp8_block = (8, 8) if scaled else FP8_BLOCK_SIZE
    shared, _ = _fp8(rng, f.intermediate, f.hidden, fp8_block)
    grid = fp8_scale_grid((f.intermediate, f.hidden), fp8_block)
    tensors[f"{block}.shared_experts.w1.weight"] = shared
    tensors[f"{block}.shared_experts.w1.scale"] = torch.from_numpy(
        rng.integers(118, 124, grid, dtype=np.uint8)
    ).view(torch.float8_e8m0fnu)
    tensors[f"{block}.gate.weight"] = _bf16(rng, experts, f.hidden)
    tensors[f"{block}.gate.bias"] = torch.zeros(experts)
    config = dict(
        n_routed_experts=experts,
        moe_intermediate_size=f.intermediate,
        n_shared_experts=1,
        quantization_config={
            "quant_method": "fp8",
            "fmt": "e4m3",
            "scale_fmt": "ue8m0",
            "weight_block_size": list(fp8_block),
        },
    )
    return config, tensors


def write_kimi_int4(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    """Kimi-K2-Thinking as published: routed gate_proj as compressed-tensors pack-quantized INT4
    (``weight_packed`` I32 [I, H/8], BF16 ``weight_scale`` [I, H/32], ``weight_shape``); the shared
    expert and router BF16 (the release's ``ignore`` list)."""
    block = "model.layers.0.mlp"
    tensors: dict[str, torch.Tensor] = {}
    for e in range(experts):
        name = f"{block}.experts.{e}.gate_proj"
        words = rng.integers(0, 2**32, (f.intermediate, f.hidden // 8), dtype=np.uint64)
        tensors[f"{name}.weight_packed"] = torch.from_numpy(words.astype(np.uint32).view(np.int32))
        tensors[f"{name}.weight_scale"] = _bf16(rng, f.intermediate, f.hidden // 32).abs() / 7
        tensors[f"{name}.weight_shape"] = torch.tensor([f.intermediate, f.hidden])
    tensors[f"{block}.shared_experts.gate_proj.weight"] = _bf16(rng, f.intermediate, f.hidden)
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    tensors[f"{block}.gate.e_score_correction_bias"] = torch.zeros(experts)
    weights = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    config = dict(
        n_routed_experts=experts,
        moe_intermediate_size=f.intermediate,
        n_shared_experts=1,
        first_k_dense_replace=0,
        quantization_config={
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
            "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*"],
        },
    )
    return config, tensors


def _ct_config(fmt: str, weights: dict) -> dict:
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
        "ignore": ["lm_head", "re:.*mlp.gate$"],
    }


def _qwen3_config(f: Family, experts: int, quantization_config: dict) -> dict:
    return dict(
        num_experts=experts,
        moe_intermediate_size=f.intermediate,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        quantization_config=quantization_config,
    )


def write_qwen3_nvfp4(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    """An NVFP4 requantization (llm-compressor): ``weight_packed`` U8 [I, H/2], E4M3
    ``weight_scale`` [I, H/16], F32 ``weight_global_scale`` [1]."""
    block = "model.layers.0.mlp"
    tensors: dict[str, torch.Tensor] = {}
    for e in range(experts):
        name = f"{block}.experts.{e}.gate_proj"
        packed = rng.integers(0, 256, (f.intermediate, f.hidden // 2), dtype=np.uint8)
        scales = rng.uniform(16, 448, (f.intermediate, f.hidden // 16)).astype(np.float32)
        tensors[f"{name}.weight_packed"] = torch.from_numpy(packed)
        tensors[f"{name}.weight_scale"] = torch.from_numpy(scales).to(torch.float8_e4m3fn)
        tensors[f"{name}.weight_global_scale"] = torch.tensor([448.0 * 6 / (WEIGHT_STD * 4)])
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    weights = dict(num_bits=4, type="float", symmetric=True, strategy="tensor_group", group_size=16)
    return _qwen3_config(f, experts, _ct_config("nvfp4-pack-quantized", weights)), tensors


def write_qwen3_fp8_rows(f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    """An FP8-dynamic requantization: E4M3 ``weight`` + BF16 ``weight_scale`` [I, 1]."""
    block = "model.layers.0.mlp"
    tensors: dict[str, torch.Tensor] = {}
    for e in range(experts):
        name = f"{block}.experts.{e}.gate_proj"
        q = rng.integers(0, 256, (f.intermediate, f.hidden), dtype=np.uint8)
        q[(q & 0x7F) == 0x7F] = 0  # E4M3 NaN codes: a real checkpoint has none
        tensors[f"{name}.weight"] = torch.from_numpy(q).view(torch.float8_e4m3fn)
        tensors[f"{name}.weight_scale"] = _bf16(rng, f.intermediate, 1).abs() / 448
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    weights = dict(num_bits=8, type="float", symmetric=True, strategy="channel")
    return _qwen3_config(f, experts, _ct_config("float-quantized", weights)), tensors


FAMILIES = [
    Family("Qwen3-30B-A3B", "qwen3_moe", 768, 2048, "BF16 per expert", write_qwen3),
    Family("gpt-oss-20b", "gpt_oss", 2880, 2880, "MXFP4 fused blocks+scales", write_gpt_oss),
    Family("Kimi-K2", "kimi_k2", 2048, 7168, "FP8 E4M3 + F32 128x128 scales", write_kimi),
    Family(
        "DeepSeek-V4-Flash",
        "deepseek_v4",
        2048,
        4096,
        "FP4 E2M1 + E8M0 per 32",
        write_deepseek_v4,
    ),
    Family(
        "Kimi-K2-Thinking",
        "kimi_k2",
        2048,
        7168,
        "INT4 + BF16 per 32 (compressed-tensors)",
        write_kimi_int4,
    ),
    Family(
        "Qwen3-30B-A3B NVFP4",
        "qwen3_moe",
        768,
        2048,
        "NVFP4: E2M1 + E4M3 per 16 / global (compressed-tensors)",
        write_qwen3_nvfp4,
    ),
    Family(
        "Qwen3-30B-A3B FP8-dynamic",
        "qwen3_moe",
        768,
        2048,
        "FP8 E4M3 + BF16 per row (compressed-tensors)",
        write_qwen3_fp8_rows,
    ),
]


# ---- Inkling 2 loop (the transformers default config's shape): NVFP4 and MXFP8 w13_weight ----
# One fused [E, 2I, H] tensor a layer, gate = rows 0::2 (docs/families.md); the build decodes
# only the gate rows of each expert.
def _write_inkling(fmt: str, f: Family, experts: int, rng) -> tuple[dict, dict[str, torch.Tensor]]:
    block = "model.llm.layers.0.mlp"
    name = f"{block}.experts.w13_weight"
    rows = 2 * f.intermediate
    if fmt == "nvfp4":
        codes = rng.integers(0, 256, (experts, rows, f.hidden // 2), dtype=np.uint8)
        scales = rng.integers(0x30, 0x70, (experts, rows, f.hidden // 16), dtype=np.uint8)
        tensors = {
            name: torch.from_numpy(codes),
            f"{name}_scale": torch.from_numpy(scales).view(torch.float8_e4m3fn),
            f"{name}_amax": torch.full((experts,), 6 * 448 * WEIGHT_STD / 4),
            f"{name}_outer_scale_denominator": torch.full((experts,), 6.0 * 448),
        }
    else:
        values = rng.integers(0, 256, (experts, rows, f.hidden), dtype=np.uint8)
        values[(values & 0x7F) == 0x7F] = 0  # E4M3 NaN codes: a real checkpoint has none
        scales = rng.integers(118, 124, (experts, rows, f.hidden // 32), dtype=np.uint8)
        tensors = {
            name: torch.from_numpy(values).view(torch.float8_e4m3fn),
            f"{name}_scale": torch.from_numpy(scales),
        }
    tensors.update(_router(rng, f"{block}.gate", experts, f.hidden))
    tensors[f"{block}.gate.bias"] = torch.zeros(experts)
    return dict(n_routed_experts=experts, moe_intermediate_size=f.intermediate), tensors


FAMILIES += [
    Family(
        "Inkling 2 loop",
        "inkling2_loop_text",
        1152,
        2304,
        "NVFP4 fused w13 (E2M1 + E4M3 per 16 + amax)",
        lambda f, e, rng: _write_inkling("nvfp4", f, e, rng),
    ),
    Family(
        "Inkling 2 loop",
        "inkling2_loop_text",
        1152,
        2304,
        "MXFP8 fused w13 (E4M3 + E8M0 per 32)",
        lambda f, e, rng: _write_inkling("mxfp8", f, e, rng),
    ),
]


def write_checkpoint(f: Family, folder: Path, experts: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config, tensors = f.write(f, experts, np.random.default_rng(seed))
    config = {
        "model_type": f.model_type,
        "num_hidden_layers": 1,
        "hidden_size": f.hidden,
        "num_experts_per_tok": min(8, experts),
        **config,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(tensors, folder / SINGLE_FILE, metadata={"format": "pt"})
    return folder


def per_expert(folder: Path, num_feats: int, device: str) -> dict[str, float]:
    """The builder's stage times for the one layer (``bench_build.stage_times``), per expert."""
    t = stage_times(folder, 0, num_feats=num_feats, device=device)
    total = t["read"] + t["dequantize"] + t["svd"]
    return {
        "experts": t["experts"],
        "total_ms": 1e3 * total / t["experts"],
        "dequantize_share": t["dequantize"] / total,
        **{f"{stage}_ms": 1e3 * t[stage] / t["experts"] for stage in ("read", "dequantize", "svd")},
    }


def _shrunk(dim: int, shrink: int) -> int:
    """A dimension divided by ``shrink``, kept a multiple of the MXFP4 group (32)."""
    return dim if shrink == 1 else max(MXFP4_GROUP, dim // shrink // MXFP4_GROUP * MXFP4_GROUP)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=8, help="routed experts in the one layer")
    ap.add_argument("--num-feats", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="every dimension / 16: a smoke run")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-families-"))
    shrink = 16 if args.tiny else 1
    num_feats = max(1, args.num_feats // shrink)
    device = svd.resolve_device(args.device)

    print(
        f"| family | gate_proj | storage | experts | read ms | dequantize ms | SVD (K={num_feats}) ms "
        f"| total ms / expert | dequantize share |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed, full in enumerate(FAMILIES):
        f = dataclasses.replace(
            full,
            intermediate=_shrunk(full.intermediate, shrink),
            hidden=_shrunk(full.hidden, shrink),
        )
        folder = write_checkpoint(f, work / f"{seed}-{f.model_type}", args.experts, seed)
        r = per_expert(folder, num_feats, device)
        print(
            f"| {f.name} | {f.intermediate} x {f.hidden} | {f.storage} | {r['experts']} | {r['read_ms']:.1f} "
            f"| {r['dequantize_ms']:.1f} | {r['svd_ms']:.1f} | {r['total_ms']:.1f} | {100 * r['dequantize_share']:.0f}% |"
        )
    print(f"\n(device {device}; checkpoints under {work})")


if __name__ == "__main__":
    main()
