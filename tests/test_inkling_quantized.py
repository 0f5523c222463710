"""The original Inkling 2 loop releases' quantized experts: NVFP4 and MXFP8 ``w13_weight``.

A tiny Inkling 2 loop model is saved by transformers' ``save_pretrained`` (float ``w13_weight`` /
``w2_weight``, the released names), then its experts are rewritten into the released quantized
layout by a quantizer written here from each format's specification, with the tensor names
transformers' conversion mapping for ``inkling2_loop`` reads (``w13_weight``,
``w13_weight_scale``, ``w13_weight_amax``, ``w13_weight_outer_scale_denominator``; no
``quantization_config``: transformers loads these releases without a quantizer and dequantizes the
experts in a conversion op). The reference is that checkpoint loaded by transformers' own
``from_pretrained``: the in-memory model's gate rows in float64. The package's decoded gate rows
must equal them bit for bit, and a built vindex's vectors must match a LAPACK SVD of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch
from family_registry import HIDDEN, reference, tiny_config
from test_build import assert_build_matches

from vindex_hub.arch import get_architecture
from vindex_hub.builder import build_vindex
from vindex_hub.errors import CheckpointError, QuantizationError
from vindex_hub.numerics.quant import dequantize_mxfp8, dequantize_nvfp4, nvfp4_global_scales
from vindex_hub.source.local import LocalCheckpoint

NUM_FEATS = 4
#: the expert intermediate size: a multiple of 32, so w2_weight [E, H, I] quantizes in MXFP8 blocks
#: too (the release quantizes both), and 2I != H
INTERMEDIATE = 96
E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E4M3_MAX = 448.0


# ---- quantizers, from the formats' specifications ---------------------------------------------
def quantize_nvfp4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """[E, R, C] float -> the NVFP4 tensors, suffixes of the weight's name.

    NVFP4 as NVIDIA specifies it (the NVFP4 section of NVIDIA's "Introducing NVFP4 for Efficient
    and Accurate Low-Precision Inference" and TensorRT Model Optimizer's NVFP4 tensor): E2M1
    elements (sign, 2 exponent bits, 1 mantissa bit), one E4M3 scale per 16 consecutive elements,
    and a second-level FP32 scale ``amax / (6 * 448)`` (here one per expert, as the release
    stores ``amax`` and ``outer_scale_denominator`` per expert). Two codes a byte, the even
    element in the low nibble.
    """
    e, r, c = w.shape
    w = w.float()
    amax = w.abs().amax(dim=(1, 2))
    denominator = torch.full((e,), 6.0 * E4M3_MAX)
    factor = (amax / denominator)[:, None, None]
    blocks = w.reshape(e, r, c // 16, 16)
    scale = (blocks.abs().amax(-1) / 6.0 / factor).to(torch.float8_e4m3fn)
    step = scale.float() * factor
    x = torch.where(step[..., None] > 0, blocks / step[..., None], torch.zeros_like(blocks))
    magnitude = (x.abs().clamp(max=6.0)[..., None] - E2M1_MAGNITUDES).abs().argmin(-1)
    codes = (magnitude | ((x < 0).long() << 3)).reshape(e, r, c)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return {
        "": packed,
        "_scale": scale,
        "_amax": amax,
        "_outer_scale_denominator": denominator,
    }


def quantize_mxfp8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """[E, R, C] float -> the MXFP8 tensors, suffixes of the weight's name.

    OCP Microscaling Formats (MX) v1.0, section 6.3 (conversion to MX): per block of 32 elements
    the shared scale is ``2^(floor(log2(max |V|)) - emax)``, emax = 8 for E4M3, stored as an E8M0
    byte (exponent + 127); each element is ``V / scale`` rounded to E4M3, saturated at 448.
    """
    e, r, c = w.shape
    blocks = w.float().reshape(e, r, c // 32, 32)
    top = blocks.abs().amax(-1)
    exponent = torch.where(top > 0, torch.floor(torch.log2(top)) - 8, torch.full_like(top, -127))
    exponent = exponent.clamp(-127, 127)
    values = (blocks / torch.exp2(exponent)[..., None]).clamp(-E4M3_MAX, E4M3_MAX)
    return {
        "": values.to(torch.float8_e4m3fn).reshape(e, r, c),
        "_scale": (exponent + 127).to(torch.uint8),
    }


QUANTIZERS = {"nvfp4": quantize_nvfp4, "mxfp8": quantize_mxfp8}
W13 = "model.llm.layers.{}.mlp.experts.w13_weight"


# ---- checkpoints ------------------------------------------------------------------------------
def _tiny_model(model_type: str):
    import transformers

    config = tiny_config(model_type)
    config.get_text_config().moe_intermediate_size = INTERMEDIATE
    torch.manual_seed(sum(map(ord, model_type)))
    auto = (
        transformers.AutoModelForImageTextToText
        if model_type == "inkling2_loop"
        else transformers.AutoModelForCausalLM
    )
    return auto.from_config(config).eval()


def _rewrite(folder: Path, out: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(folder, out))
    tensors = load_file(copy / "model.safetensors")
    change(tensors)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def _quantize_experts(fmt: str):
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for name in [n for n in tensors if n.endswith(("experts.w13_weight", "experts.w2_weight"))]:
            for suffix, t in QUANTIZERS[fmt](tensors.pop(name)).items():
                tensors[name + suffix] = t.contiguous()

    return change


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """model type -> (float checkpoint saved by transformers, the model)."""
    out = {}
    for model_type in ("inkling2_loop", "inkling2_loop_text"):
        model = _tiny_model(model_type)
        folder = tmp_path_factory.mktemp(model_type) / "float"
        model.save_pretrained(folder)
        out[model_type] = (folder, model)
    return out


@pytest.fixture(scope="module")
def quantized(saved, tmp_path_factory) -> dict[tuple[str, str], Path]:
    return {
        (model_type, fmt): _rewrite(
            folder, tmp_path_factory.mktemp(f"{model_type}-{fmt}") / "ckpt", _quantize_experts(fmt)
        )
        for model_type, (folder, _) in saved.items()
        for fmt in QUANTIZERS
    }


# ---- transformers' dequantization is the reference ---------------------------------------------
@pytest.mark.parametrize("fmt", sorted(QUANTIZERS))
@pytest.mark.parametrize("model_type", ["inkling2_loop", "inkling2_loop_text"])
def test_quantized_experts_build_against_transformers_own_dequantization(
    model_type, fmt, saved, quantized, tmp_path
):
    folder = quantized[(model_type, fmt)]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # as released: no quantizer, a conversion op
    float_model = saved[model_type][1]
    loaded = type(float_model).from_pretrained(folder, dtype=torch.float32).eval()
    expected = reference(loaded, HIDDEN, 4)
    original = reference(float_model, HIDDEN, 4)
    assert sorted(expected) == sorted(original) and expected
    for layer, ref in expected.items():
        # transformers read our tensors (close to the float weights, not equal: quantized)
        err = np.abs(ref.gates - original[layer].gates).max()
        assert 0 < err < 0.2 * np.abs(original[layer].gates).max(), (layer, err)
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.moe_layers() == sorted(expected)
        assert arch.expert_gate_name(0, 0).endswith("experts.w13_weight")
        for layer, ref in expected.items():
            raw = src.read(arch.layer_tensors(layer))
            gates = arch.expert_gate_weights(layer, range(4), raw)
            np.testing.assert_array_equal(gates, ref.gates.astype(np.float32))
            gates = arch.expert_gate_weights(layer, [3, 1], raw)  # a subset, in any order
            np.testing.assert_array_equal(gates, ref.gates[[3, 1]].astype(np.float32))
    assert_build_matches(
        folder,
        tmp_path / "vindex",
        {layer: ref.gates for layer, ref in expected.items()},
        NUM_FEATS,
    )


def test_the_decoders_match_transformers_op_on_every_code():
    # Every E2M1 byte and many E4M3 / E8M0 scale bytes, against the op transformers runs; called
    # without a model, the op rounds its float32 result to bfloat16, so ours is rounded too.
    from transformers.core_model_loading import Inkling2LoopDequantizeExperts

    op = Inkling2LoopDequantizeExperts()
    g = torch.Generator().manual_seed(0)
    codes = torch.arange(256, dtype=torch.uint8).repeat(2, 4, 1)  # [E=2, 4 rows, 256 bytes]
    e4m3 = torch.randint(0, 126, (2, 4, 32), generator=g, dtype=torch.uint8)  # no NaN (127)
    amax = torch.tensor([3.5, 0.25])
    denominator = torch.tensor([2688.0, 7.0])
    patterns = ["w", "w_scale", "w_amax", "w_outer_scale_denominator"]
    inputs = dict(zip(patterns, [codes, e4m3.view(torch.float8_e4m3fn), amax, denominator]))
    want = op.convert({k: [v] for k, v in inputs.items()}, patterns, ["out"])["out"]
    factors = nvfp4_global_scales(amax.numpy(), denominator.numpy())
    for e in range(2):
        got = dequantize_nvfp4(codes[e].numpy(), e4m3[e].numpy(), float(factors[e]))
        assert torch.equal(torch.from_numpy(got).to(want.dtype), want[e])
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 8, 32)
    values[(values & 0x7F) == 0x7F] = 0  # E4M3 NaN bytes
    e8m0 = torch.randint(100, 150, (1, 8, 1), generator=g, dtype=torch.uint8)
    inputs = {"w": [values.view(torch.float8_e4m3fn)], "w_scale": [e8m0]}
    want = op.convert(inputs, patterns, ["out"])["out"]
    got = dequantize_mxfp8(values[0].numpy(), e8m0[0].numpy())
    assert torch.equal(torch.from_numpy(got).to(want.dtype), want[0])


def test_inkling2_mxfp8_release_against_transformers_fp8_dequantize(tmp_path):
    # The non-loop Inkling 2 releases (Inkling-2-Small-MXFP8) store the same MXFP8 w13_weight and
    # w13_weight_scale under an "fp8" quantization_config, which transformers loads through its
    # fine-grained FP8 quantizer (it needs accelerate, not installed here). The reference is that
    # quantizer's own dequantize op on each expert, then the conversion mapping's Interleave.
    import transformers
    from safetensors.torch import load_file
    from transformers.core_model_loading import Interleave
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    config = tiny_config("inkling2_text")
    config.get_text_config().moe_intermediate_size = INTERMEDIATE
    torch.manual_seed(2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "float")
    folder = _rewrite(tmp_path / "float", tmp_path / "mxfp8", _quantize_experts("mxfp8"))
    settings = json.loads((folder / "config.json").read_text())
    settings["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [1, 32]}
    (folder / "config.json").write_text(json.dumps(settings))
    tensors = load_file(folder / "model.safetensors")
    original = reference(model, HIDDEN, 4)
    op = Fp8Dequantize(None)
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.moe_layers() == sorted(original)
        for layer in original:
            name = W13.format(layer)
            dense = torch.stack(
                [
                    op._dequantize_one(w, s, output_dtype=torch.float32)
                    for w, s in zip(tensors[name], tensors[name + "_scale"])
                ]
            )
            gate_up = Interleave(dim=1).convert({name: dense}, [name], ["gate_up"])["gate_up"]
            expected = gate_up[:, :INTERMEDIATE].numpy()  # gate_up_proj: the gate half first
            err = np.abs(expected - original[layer].gates).max()
            assert 0 < err < 0.2 * np.abs(original[layer].gates).max()
            raw = src.read(arch.layer_tensors(layer))
            np.testing.assert_array_equal(arch.expert_gate_weights(layer, range(4), raw), expected)


# ---- bad input: one line naming the tensor ------------------------------------------------------


def _refused(folder: Path, tmp_path: Path, match: str, error=CheckpointError) -> None:
    with pytest.raises(error, match=match) as info:
        build_vindex(folder, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "gate_vectors.bin").exists()


def _broken(quantized, tmp_path, fmt: str, change) -> Path:
    return _rewrite(quantized[("inkling2_loop_text", fmt)], tmp_path / "broken", change)


@pytest.mark.parametrize("suffix", ["_amax", "_outer_scale_denominator"])
def test_nvfp4_without_its_global_scale_names_the_missing_tensor(quantized, tmp_path, suffix):
    def drop(tensors):
        del tensors[W13.format(0) + suffix]

    # Layer 0 then looks MXFP8 by its names; its U8 codes say otherwise.
    _refused(
        _broken(quantized, tmp_path, "nvfp4", drop),
        tmp_path,
        rf"tensor {W13.format(0)}: dtype U8, expected F8_E4M3 \(NVFP4 needs .*{suffix}",
    )


def test_a_later_layer_missing_its_amax_is_named(quantized, tmp_path):
    def drop(tensors):
        del tensors[W13.format(2) + "_amax"]

    _refused(
        _broken(quantized, tmp_path, "nvfp4", drop),
        tmp_path,
        rf"layer 2: .* tensor {W13.format(2)}_amax is not in the checkpoint",
    )


@pytest.mark.parametrize("fmt", sorted(QUANTIZERS))
def test_quantized_codes_without_their_scale_name_it(quantized, tmp_path, fmt):
    def drop(tensors):
        del tensors[W13.format(0) + "_scale"]
        tensors.pop(W13.format(0) + "_amax", None)
        tensors.pop(W13.format(0) + "_outer_scale_denominator", None)

    _refused(
        _broken(quantized, tmp_path, fmt, drop),
        tmp_path,
        rf"tensor {W13.format(0)}: dtype (U8|F8_E4M3), expected BF16 .*{W13.format(0)}_scale",
    )


LAST_COLUMN, ROW, EXPERT = (..., slice(0, -1)), (slice(None), slice(0, -1)), slice(0, -1)


@pytest.mark.parametrize(
    ("fmt", "suffix", "cut", "match"),
    [
        (
            "nvfp4",
            "_scale",
            LAST_COLUMN,
            r"_scale: shape \[4, 192, 3\] does not split .*NVFP4 scales",
        ),
        (
            "nvfp4",
            "",
            LAST_COLUMN,
            r"w13_weight: shape \[4, 192, 31\] does not split .*NVFP4 codes",
        ),
        ("mxfp8", "_scale", ROW, r"_scale: shape \[4, 191, 2\] does not split .*MXFP8 scales"),
        ("mxfp8", "", ROW, r"w13_weight: shape \[4, 191, 64\] does not split .*MXFP8 values"),
        ("nvfp4", "_amax", EXPERT, r"_amax: shape \[3\], expected 4 value"),
        (
            "nvfp4",
            "_outer_scale_denominator",
            EXPERT,
            r"_denominator: shape \[3\], expected 4 or 1",
        ),
    ],
)
def test_a_wrong_shape_names_the_tensor(quantized, tmp_path, fmt, suffix, cut, match):
    def shrink(tensors):
        name = W13.format(0) + suffix
        tensors[name] = tensors[name][cut].contiguous()

    _refused(_broken(quantized, tmp_path, fmt, shrink), tmp_path, match)


@pytest.mark.parametrize(
    ("fmt", "suffix", "dtype", "match"),
    [
        ("mxfp8", "", torch.float8_e5m2, r"w13_weight: dtype F8_E5M2, expected F8_E4M3$"),
        ("mxfp8", "_scale", torch.float16, r"w13_weight_scale: dtype F16, expected U8 or F8_E8M0"),
        ("nvfp4", "_scale", torch.uint8, r"w13_weight_scale: dtype U8, expected F8_E4M3"),
        ("nvfp4", "_amax", torch.int32, r"w13_weight_amax: dtype I32, expected BF16"),
    ],
)
def test_an_unknown_dtype_names_the_tensor(quantized, tmp_path, fmt, suffix, dtype, match):
    def cast(tensors):
        name = W13.format(0) + suffix
        tensors[name] = tensors[name].to(dtype)

    _refused(_broken(quantized, tmp_path, fmt, cast), tmp_path, match)


def test_an_e8m0_nan_scale_names_the_tensor(quantized, tmp_path):
    def poison(tensors):
        tensors[W13.format(1) + "_scale"][2, 4, 1] = 255

    _refused(
        _broken(quantized, tmp_path, "mxfp8", poison),
        tmp_path,
        rf"tensor {W13.format(1)}_scale: E8M0 scale byte 255",
        QuantizationError,
    )


def test_a_zero_denominator_names_the_tensor(quantized, tmp_path):
    def zero(tensors):
        tensors[W13.format(0) + "_outer_scale_denominator"][1] = 0.0

    _refused(
        _broken(quantized, tmp_path, "nvfp4", zero),
        tmp_path,
        rf"tensor {W13.format(0)}_outer_scale_denominator: amax / outer_scale_denominator is not finite at expert 1",
        QuantizationError,
    )
