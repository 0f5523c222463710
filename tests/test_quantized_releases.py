"""Quantized releases of the generic model types, as real safetensors checkpoints.

Each case starts from a tiny random model that transformers builds and saves itself
(``family_registry.build_model`` + ``save_pretrained``), quantizes its routed experts' gate
projections the way the release does, and writes the release's ``quantization_config``:

* FP8 E4M3 with F32 ``weight_scale_inv`` blocks (``quant_method: fp8``): Qwen3-MoE-FP8
  (``mlp.experts.E.gate_proj``, 128x128 blocks), MiniMax-M2 (``block_sparse_moe.experts.E.w1``)
  and DeepSeek-V3.2 (shared experts too), these two with small blocks so that a tiny matrix
  spans several, ragged at the edges;
* compressed-tensors ``pack-quantized`` INT4, symmetric, one BF16 scale per 32 inputs: Kimi-K2.5
  (``kimi_k25``'s language tower) and Kimi-K2-Thinking (``kimi_k2``), packed by the
  compressed-tensors package's own compressor (the test extra); a W4A16 requantization with its
  shared experts packed too (GLM-4.7-Flash); INT8 per channel likewise;
* compressed-tensors ``float-quantized`` FP8 with one scale per output row (the FP8-dynamic
  releases) or a BF16 ``weight_scale`` per 2-D block (llm-compressor's FP8_BLOCK);
* compressed-tensors ``nvfp4-pack-quantized`` (E2M1, E4M3 scales per 16 over a global scale) and
  ``mxfp4-pack-quantized`` (E2M1, E8M0 scales per 32), packed by the package's own compressors.

The reference is the dequantization of the quantized values, computed here in float64 numpy
(torch's own FP8 decoding; compressed-tensors' own integer quantization), never by our readers:
the adapter's gate rows must equal it, and the built vindex's vectors must match a LAPACK SVD of
it. Then every bad input (a format, bit width or strategy not read, a missing scale, a shape that
disagrees) is one line naming the config key or tensor, and nothing is written.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from family_registry import HIDDEN, build_model, reference
from safetensors.torch import load_file, save_file
from test_build import assert_build_matches

from vindex_hub.arch import get_architecture
from vindex_hub.builder import build_vindex
from vindex_hub.errors import CheckpointError
from vindex_hub.format import filenames
from vindex_hub.source.local import LocalCheckpoint

pytestmark = pytest.mark.slow
NUM_FEATS = 4
SAFETENSORS = "model.safetensors"
# Scales map a block's largest magnitude a little below E4M3's largest finite value (448), so a
# scale rounded to BF16 never pushes a value out of range.
FP8_MAX = 440.0
GATE = re.compile(r"\.(?:layers|blocks)\.(\d+)\..*experts\.(\d+)\.(?:gate_proj|w1)\.weight$")
SHARED = re.compile(r"\.(?:layers|blocks)\.(\d+)\..*shared_experts?\.(?:gate_proj|w1)\.weight$")

# ---- the releases' quantization_config (as their config.json has it) --------------------------
FP8_BLOCKS = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
# Kimi-K2-Thinking / K2.5: INT4 routed experts (quantization-aware trained), everything else BF16.
KIMI_IGNORE = [
    "lm_head",
    "re:.*self_attn.*",
    "re:.*shared_experts.*",
    "re:.*mlp\\.(gate|up|gate_up|down)_proj.*",
    "re:vision_tower.*",
    "re:mm_projector.*",
]


def ct_config(fmt: str, weights: dict[str, Any], ignore: list[str]) -> dict[str, Any]:
    """A compressed-tensors ``quantization_config`` with one group targeting every Linear."""
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "input_activations": None,
                "output_activations": None,
                "weights": {"dynamic": False, "observer": "minmax", "actorder": None, **weights},
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
    }


INT4_GROUP32 = dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
INT8_CHANNEL = dict(num_bits=8, type="int", symmetric=True, strategy="channel", group_size=None)
FP8_CHANNEL = dict(num_bits=8, type="float", symmetric=True, strategy="channel", group_size=None)


# ---- quantizers: (float32 weight) -> (tensors to store beside the module, float64 reference) ---
Quantizer = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], np.ndarray]]


def _expand(scale: np.ndarray, block: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)[: shape[0], : shape[1]]


def fp8_blocks(
    block: tuple[int, int], part: str = "weight_scale_inv", dtype: torch.dtype = torch.float32
) -> Quantizer:
    """DeepSeek-style FP8: E4M3 ``weight`` and an F32 ``weight_scale_inv`` (a multiplier) per
    block; compressed-tensors' FP8 blocks name it ``weight_scale`` and may keep it in BF16."""

    def quantize(module: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        rows, cols = w.shape
        grid = (-(-rows // block[0]), -(-cols // block[1]))
        scale = torch.empty(grid, dtype=torch.float32)
        for r in range(grid[0]):
            for c in range(grid[1]):
                tile = w[r * block[0] : (r + 1) * block[0], c * block[1] : (c + 1) * block[1]]
                scale[r, c] = tile.abs().max() / FP8_MAX
        scale = scale.to(dtype).float()  # the stored scale is the one the values are divided by
        expanded = torch.from_numpy(_expand(scale.numpy(), block, (rows, cols)))
        q = (w / expanded).to(torch.float8_e4m3fn)
        ref = q.to(torch.float64).numpy() * _expand(scale.double().numpy(), block, (rows, cols))
        return {f"{module}.weight": q, f"{module}.{part}": scale.to(dtype)}, ref

    return quantize


def fp8_channel(module: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """compressed-tensors float-quantized FP8: E4M3 ``weight``, a BF16 ``weight_scale`` [O, 1]."""
    scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).to(torch.bfloat16)
    q = (w / scale.float()).to(torch.float8_e4m3fn)
    ref = q.to(torch.float64).numpy() * scale.double().numpy()
    return {f"{module}.weight": q, f"{module}.weight_scale": scale}, ref


def ct_packed(weights: dict[str, Any]) -> Quantizer:
    """compressed-tensors pack-quantized, by the package's own compressor (the release's tool)."""

    def quantize(module: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        pytest.importorskip("compressed_tensors", reason="the test extra's compressed-tensors")
        from compressed_tensors.compressors.pack_quantized.base import (
            PackedQuantizationCompressor,
        )
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
        from compressed_tensors.quantization.utils import calculate_qparams

        args = QuantizationArgs(**{k: v for k, v in weights.items() if v is not None})
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
        rows, cols = w.shape
        w = w.to(torch.bfloat16)  # the releases quantize BF16 weights and keep BF16 scales
        group = args.group_size or cols
        grouped = w.float().reshape(rows, cols // group, group)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
        scale = scale.to(torch.bfloat16)
        stored = PackedQuantizationCompressor.compress(
            {"weight": w, "weight_scale": scale, "weight_zero_point": zero}, scheme
        )
        # The integers the words hold, as compressed-tensors computes them; dequantized here.
        q = ct_quantize(x=w, scale=scale, zero_point=zero, args=args, dtype=torch.int8)
        ref = q.to(torch.float64).numpy() * np.repeat(scale.double().numpy(), group, axis=1)
        assert set(stored) == {"weight_packed", "weight_scale", "weight_shape"}, set(stored)
        return {f"{module}.{k}": v.contiguous() for k, v in stored.items()}, ref

    return quantize


def ct_fp4(fmt: str, weights: dict[str, Any]) -> Quantizer:
    """compressed-tensors MXFP4 / NVFP4, by the package's own compressor: two E2M1 values a byte,
    E8M0 scales per 32 inputs (MX) or E4M3 scales per 16 over one F32 global scale (NV)."""

    def quantize(module: str, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        pytest.importorskip("compressed_tensors", reason="the test extra's compressed-tensors")
        from compressed_tensors.compressors.base import BaseCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
        from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

        nvfp4 = fmt.startswith("nvfp4")
        args = QuantizationArgs(**weights, scale_dtype=None if nvfp4 else torch.uint8)
        scheme = QuantizationScheme(targets=["Linear"], weights=args, format=fmt)
        rows, cols = w.shape
        w = w.to(torch.bfloat16)
        group = args.group_size
        grouped = w.float().reshape(rows, cols // group, group)
        state: dict[str, torch.Tensor] = {"weight": w}
        global_scale = None
        if nvfp4:
            global_scale = generate_gparam(w.float().min(), w.float().max()).reshape(1)
            state["weight_global_scale"] = global_scale
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args, global_scale)
        if nvfp4:  # the scale the values are quantized with is the one stored (E4M3)
            scale = scale.to(torch.float8_e4m3fn).float()
        state.update(weight_scale=scale, weight_zero_point=zero)
        stored = BaseCompressor.get_value_from_registry(fmt).compress(state, scheme)
        # The E2M1 values the bytes hold, as compressed-tensors computes them; dequantized here.
        q = ct_quantize(x=w, scale=scale, zero_point=zero, args=args, global_scale=global_scale)
        effective = scale.double().numpy()
        if nvfp4:  # the group scale over the global one, formed in float32 (as the format does)
            effective = (scale / global_scale).float().double().numpy()
        ref = q.to(torch.float64).numpy() * np.repeat(effective, group, axis=1)
        expected = {"weight_packed", "weight_scale"} | ({"weight_global_scale"} if nvfp4 else set())
        assert set(stored) == expected, set(stored)
        return {f"{module}.{k}": v.contiguous() for k, v in stored.items()}, ref

    return quantize


MXFP4 = dict(num_bits=4, type="float", symmetric=True, strategy="group", group_size=32)
NVFP4 = dict(num_bits=4, type="float", symmetric=True, strategy="tensor_group", group_size=16)


# ---- the checkpoints ----------------------------------------------------------------------------
class Release:
    def __init__(self, folder: Path, refs: dict[int, np.ndarray], model_type: str):
        self.folder, self.refs, self.model_type = folder, refs, model_type
        self.shared: dict[int, np.ndarray] = {}  # quantized shared gate_projs' references


def make_release(
    model_type: str,
    folder: Path,
    quantize: Quantizer,
    quantization_config: dict[str, Any],
    *,
    saved_model_type: str | None = None,
    rename: tuple[str, str] | None = None,
    shared: bool = False,
) -> Release:
    """The tiny model of ``model_type`` saved by transformers, its routed gate_projs quantized
    (and its shared experts' too, with ``shared``)."""
    model = build_model(model_type)
    model.save_pretrained(folder)
    tensors = load_file(folder / SAFETENSORS)
    num_experts = max(int(m.group(2)) for n in tensors if (m := GATE.search(n))) + 1
    expected = reference(model, HIDDEN, num_experts)
    refs = {layer: np.empty_like(ref.gates) for layer, ref in expected.items()}
    found = set()
    for name in [n for n in tensors if GATE.search(n) and "vision" not in n]:
        m = GATE.search(name)
        layer, expert = int(m.group(1)), int(m.group(2))
        # the saved tensor is the in-memory gate rows (so the reference is the model's own)
        np.testing.assert_array_equal(tensors[name].double().numpy(), expected[layer].gates[expert])
        stored, refs[layer][expert] = quantize(name[: -len(".weight")], tensors.pop(name).float())
        tensors.update(stored)
        found.add((layer, expert))
    assert found == {(layer, e) for layer in expected for e in range(num_experts)}
    release = Release(folder, refs, saved_model_type or model_type)
    for name in [n for n in tensors if shared and SHARED.search(n)]:
        layer = int(SHARED.search(name).group(1))
        np.testing.assert_array_equal(tensors[name].double().numpy(), expected[layer].shared)
        stored, release.shared[layer] = quantize(name[: -len(".weight")], tensors.pop(name).float())
        tensors.update(stored)
    assert not shared or set(release.shared) == set(expected)
    if rename is not None:
        tensors = {n.replace(*rename): t for n, t in tensors.items()}
    save_file(tensors, folder / SAFETENSORS, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = quantization_config
    if saved_model_type:
        config["model_type"] = saved_model_type
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return release


# id: (model_type, quantizer, quantization_config, saved model_type, rename[, shared experts too])
CASES: dict[str, tuple[Any, ...]] = {
    # Qwen3-30B-A3B-FP8 and the other Qwen3 MoE FP8 releases: 128x128 blocks (one, ragged, here)
    "qwen3_moe-fp8-blocks": (
        "qwen3_moe",
        fp8_blocks((128, 128)),
        {**FP8_BLOCKS, "weight_block_size": [128, 128]},
        None,
        None,
    ),
    # MiniMax-M2: block_sparse_moe.experts.E.w1, FP8 blocks (small: several a matrix, ragged)
    "minimax_m2-fp8-blocks": (
        "minimax_m2",
        fp8_blocks((16, 32)),
        {**FP8_BLOCKS, "weight_block_size": [16, 32]},
        None,
        None,
    ),
    # Kimi-K2.5 as published: language_model.model.layers.L (transformers writes .blocks.L)
    "kimi_k25-int4": (
        "kimi_k25",
        ct_packed(INT4_GROUP32),
        ct_config("pack-quantized", INT4_GROUP32, KIMI_IGNORE),
        None,
        ("language_model.model.blocks.", "language_model.model.layers."),
    ),
    # Kimi-K2-Thinking: DeepSeek-V3 code under model_type kimi_k2 (its own module)
    "kimi_k2-int4": (
        "deepseek_v3",
        ct_packed(INT4_GROUP32),
        ct_config("pack-quantized", INT4_GROUP32, KIMI_IGNORE[:4]),
        "kimi_k2",
        None,
    ),
    # DeepSeek-V3.2 as published: routed and shared experts FP8 blocks (a generic model type)
    "deepseek_v32-fp8-blocks": (
        "deepseek_v32",
        fp8_blocks((16, 32)),
        {**FP8_BLOCKS, "weight_block_size": [16, 32]},
        None,
        None,
        True,
    ),
    # a W4A16 requantization (llm-compressor) of a GLM MoE: shared experts packed too
    "glm4_moe_lite-int4-shared": (
        "glm4_moe_lite",
        ct_packed(INT4_GROUP32),
        ct_config("pack-quantized", INT4_GROUP32, ["lm_head", "re:.*mlp.gate$"]),
        None,
        None,
        True,
    ),
    "minimax_m2-int8-channel": (
        "minimax_m2",
        ct_packed(INT8_CHANNEL),
        ct_config("pack-quantized", INT8_CHANNEL, ["lm_head", "re:.*gate$"]),
        None,
        None,
    ),
    # llm-compressor's FP8_BLOCK scheme (Mistral Large 3, GLM-4.6V requantizations)
    "minimax_m2-fp8-ct-blocks": (
        "minimax_m2",
        fp8_blocks((16, 32), "weight_scale", torch.bfloat16),
        ct_config(
            "float-quantized",
            dict(FP8_CHANNEL, strategy="block", block_structure=[16, 32]),
            ["lm_head", "re:.*gate$"],
        ),
        None,
        None,
    ),
    # NVFP4 requantizations (llm-compressor: Qwen3 MoE, Mistral Large 3, GLM-5.1 ...)
    "qwen3_moe-nvfp4": (
        "qwen3_moe",
        ct_fp4("nvfp4-pack-quantized", NVFP4),
        ct_config("nvfp4-pack-quantized", NVFP4, ["lm_head", "re:.*mlp.gate$"]),
        None,
        None,
    ),
    # compressed-tensors MXFP4, shared experts too
    "glm4_moe_lite-mxfp4": (
        "glm4_moe_lite",
        ct_fp4("mxfp4-pack-quantized", MXFP4),
        ct_config("mxfp4-pack-quantized", MXFP4, ["lm_head", "re:.*mlp.gate$"]),
        None,
        None,
        True,
    ),
    "qwen3_moe-fp8-channel": (
        "qwen3_moe",
        fp8_channel,
        ct_config("float-quantized", FP8_CHANNEL, ["lm_head", "re:.*mlp.gate$"]),
        None,
        None,
    ),
}
_made: dict[str, Release] = {}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    def get(case: str) -> Release:
        if case not in _made:
            model_type, quantize, config, saved, rename, *shared = CASES[case]
            folder = tmp_path_factory.mktemp(case) / "checkpoint"
            _made[case] = make_release(
                model_type,
                folder,
                quantize,
                config,
                saved_model_type=saved,
                rename=rename,
                shared=bool(shared),
            )
        return _made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_a_quantized_release_builds_against_its_float64_dequantization(case, release, tmp_path):
    r = release(case)
    with LocalCheckpoint(r.folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.model_type == r.model_type
        assert arch.moe_layers() == sorted(r.refs)
        for layer, ref in r.refs.items():
            names = arch.layer_tensors(layer)
            assert set(names) <= src.tensor_names()
            raw = src.read(names)
            gates = arch.expert_gate_weights(layer, range(len(ref)), raw)
            # exact: each product of a quantized value and its scale is one float32 rounding
            np.testing.assert_array_equal(gates, ref.astype(np.float32))
            if r.shared:
                shared = arch.shared_gate_weight(layer, raw)
                np.testing.assert_array_equal(shared, r.shared[layer].astype(np.float32))
    assert_build_matches(r.folder, tmp_path / "vindex", r.refs, NUM_FEATS, model_type=r.model_type)


def test_the_packed_words_are_read_low_bits_first(release):
    """The first expert's first word, by hand: eight 4-bit fields, element 0 in the lowest bits."""
    r = release("kimi_k25-int4")
    tensors = load_file(r.folder / SAFETENSORS)
    layer = min(r.refs)
    module = f"language_model.model.layers.{layer}.mlp.experts.0.gate_proj"
    word = int(tensors[f"{module}.weight_packed"][0, 0]) & 0xFFFFFFFF
    fields = [(word >> (4 * i)) & 0xF for i in range(8)]
    scale = float(tensors[f"{module}.weight_scale"][0, 0])
    assert tensors[f"{module}.weight_packed"].dtype == torch.int32
    assert tensors[f"{module}.weight_shape"].tolist() == [24, HIDDEN]
    np.testing.assert_array_equal(r.refs[layer][0, 0, :8], [(f - 8) * scale for f in fields])


def test_a_quantization_config_in_the_text_config_is_read(release, tmp_path):
    """A language tower's config may carry the quantization_config (not the top level)."""
    r = release("kimi_k25-int4")
    folder = Path(shutil.copytree(r.folder, tmp_path / "copy"))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["quantization_config"] = config.pop("quantization_config")
    (folder / "config.json").write_text(json.dumps(config))
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        layer = min(r.refs)
        gates = arch.expert_gate_weights(layer, [1], src.read(arch.layer_tensors(layer)))
    np.testing.assert_array_equal(gates[0], r.refs[layer][1].astype(np.float32))


# ---- bad input: one line naming the config key or the tensor, nothing written ----------------
def _changed(r: Release, tmp_path: Path, tensors=None, config=None) -> Path:
    folder = Path(shutil.copytree(r.folder, tmp_path / "copy"))
    if tensors is not None:
        data = load_file(folder / SAFETENSORS)
        tensors(data)
        save_file(data, folder / SAFETENSORS, metadata={"format": "pt"})
    if config is not None:
        data = json.loads((folder / "config.json").read_text())
        config(data["quantization_config"])
        (folder / "config.json").write_text(json.dumps(data))
    return folder


def _refused(folder: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        build_vindex(folder, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / filenames.GATE_VECTORS_BIN).exists()


def _weights(q: dict[str, Any]) -> dict[str, Any]:
    return q["config_groups"]["group_0"]["weights"]


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda q: q.update(format="mxfp6-pack-quantized"),
            r"quantization_config\.format is 'mxfp6-pack-quantized': this storage format is not read",
        ),
        (
            lambda q: _weights(q).update(num_bits=3),
            r"quantization_config\.config_groups\.group_0\.weights\.num_bits is 3",
        ),
        (
            lambda q: _weights(q).update(strategy="tensor"),
            r"quantization_config\.config_groups\.group_0\.weights\.strategy is 'tensor'",
        ),
        (
            lambda q: _weights(q).update(symmetric=False),
            r"weights\.symmetric is False: zero points are not read",
        ),
        (
            lambda q: _weights(q).update(actorder="group"),
            r"weights\.actorder is 'group'",
        ),
        (
            lambda q: _weights(q).update(group_size=None),
            r"weights\.group_size is None: not a positive integer",
        ),
        (
            lambda q: q["config_groups"]["group_0"].update(format="int-quantized"),
            r"quantization_config\.config_groups\.group_0\.format is 'int-quantized'",
        ),
        (
            lambda q: q.update(transform_config={"config_groups": {"u": {"type": "hadamard"}}}),
            r"quantization_config\.transform_config is set: the weights are stored rotated",
        ),
        (
            lambda q: q.update(sparsity_config={"format": "sparse-24-bitmask"}),
            r"quantization_config\.sparsity_config\.format is 'sparse-24-bitmask'",
        ),
    ],
    ids=[
        "format",
        "num_bits",
        "strategy",
        "symmetric",
        "actorder",
        "group_size",
        "group-format",
        "transform",
        "sparsity",
    ],
)
def test_a_compressed_tensors_config_not_read_is_one_line_naming_the_key(
    release, tmp_path, change, match
):
    folder = _changed(release("kimi_k25-int4"), tmp_path, config=change)
    _refused(folder, tmp_path, match)


def test_an_fp8_config_with_another_bit_width_is_refused(release, tmp_path):
    folder = _changed(
        release("qwen3_moe-fp8-channel"), tmp_path, config=lambda q: _weights(q).update(num_bits=4)
    )
    _refused(folder, tmp_path, r"group_0\.weights\.num_bits is 4: only FP8 \(float, 8 bits\)")


def _module(r: Release, layer: int, expert: int) -> str:
    return f"language_model.model.layers.{layer}.mlp.experts.{expert}.gate_proj"


def test_a_missing_scale_names_the_tensor(release, tmp_path):
    r = release("kimi_k25-int4")
    first, last = min(r.refs), max(r.refs)
    # in a later layer: the layer check names it
    folder = _changed(r, tmp_path, tensors=lambda t: t.pop(f"{_module(r, last, 2)}.weight_scale"))
    _refused(
        folder,
        tmp_path,
        rf"layer {last}: .* tensor {re.escape(_module(r, last, 2))}\.weight_scale is not in the checkpoint",
    )
    # in the first MoE layer, where the layout is chosen: named too (not "no gate_proj found")
    shutil.rmtree(folder)
    folder = _changed(r, tmp_path, tensors=lambda t: t.pop(f"{_module(r, first, 0)}.weight_scale"))
    _refused(
        folder,
        tmp_path,
        rf"layer {first}: tensor {re.escape(_module(r, first, 0))}\.weight_scale is not in the checkpoint",
    )


@pytest.mark.parametrize(
    "part, change, match",
    [
        (
            "weight_shape",
            lambda t: torch.tensor([24, 96]),
            r"weight_shape: holds \[24, 96\], but the config's sizes make this gate_proj \[24, 64\]",
        ),
        (
            "weight_packed",
            lambda t: t[:, :-1].contiguous(),
            r"weight_packed: shape \[24, 7\], expected \[24, 8\]",
        ),
        (
            "weight_scale",
            lambda t: t[:, :1].contiguous(),
            r"weight_scale: shape \[24, 1\], expected \[24, 2\]",
        ),
        (
            "weight_scale",
            lambda t: t.float().to(torch.float8_e4m3fn),
            r"weight_scale: dtype F8_E4M3, expected BF16 or F16 or F32",
        ),
    ],
    ids=["shape", "packed", "scale-shape", "scale-dtype"],
)
def test_a_packed_tensor_that_disagrees_names_it(release, tmp_path, part, change, match):
    r = release("kimi_k25-int4")
    name = f"{_module(r, max(r.refs), 1)}.{part}"

    def edit(tensors):
        tensors[name] = change(tensors[name])

    folder = _changed(r, tmp_path, tensors=edit)
    _refused(folder, tmp_path, re.escape(name) + ": " + match.split(": ", 1)[1])


# ---- vindex-hub families and the README say which formats each family reads --------------------
def test_families_and_the_readme_say_which_formats_each_family_reads():
    import subprocess
    import sys

    from vindex_hub.arch.catalog import FORMATS

    result = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "families", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    formats = {
        f["model_type"]: f["formats"].split() for f in json.loads(result.stdout)["supported"]
    }
    assert all(set(tags) <= set(FORMATS) and "float" in tags for tags in formats.values())
    # the model types the releases above were built for read their format
    assert {"fp8", "ct"} <= set(formats["kimi_k25"]) & set(formats["kimi_k2"])
    assert {"fp8", "ct"} <= set(formats["qwen3_moe"]) & set(formats["minimax_m2"])
    assert "fbgemm" in set(formats["llama4"]) & set(
        formats["llama4_text"]
    )  # tests/test_fbgemm_fp8.py
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Supported model families", 1)[1].split("\n## ", 1)[0]
    header = "| family | `model_type` | layouts read | quantizations |"
    rows = section.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    spelled = {"ct": "compressed-tensors", "mxfp4": "MXFP4", "fp4": "FP4 E2M1", "fp8": "FP8"}
    spelled["fbgemm"] = "FBGEMM FP8"
    for row in rows:
        cell = row.split(" | ")[-1]
        for model_type in row.split(" | ")[1].split("`")[1::2]:
            for tag, words in spelled.items():
                assert (words in cell) == (tag in formats[model_type]), (model_type, tag, cell)
    assert "compressed-tensors INT4/INT8" in section  # the generic types: one sentence for all


def test_an_fp4_config_with_another_group_size_is_refused(release, tmp_path):
    folder = _changed(
        release("qwen3_moe-nvfp4"), tmp_path, config=lambda q: _weights(q).update(group_size=32)
    )
    _refused(folder, tmp_path, r"group_0\.weights\.group_size is 32: this format has 16")


def test_an_nvfp4_weight_without_its_global_scale_names_it(release, tmp_path):
    r = release("qwen3_moe-nvfp4")
    name = f"model.layers.{max(r.refs)}.mlp.experts.3.gate_proj.weight_global_scale"

    def drop(tensors):
        del tensors[name]

    folder = _changed(r, tmp_path, tensors=drop)
    _refused(folder, tmp_path, rf"tensor {re.escape(name)} is not in the checkpoint")
