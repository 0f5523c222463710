"""The test-checkpoint generator writes the real DeepSeek-V4-Flash format (read back with the
safetensors library itself, not with our reader) and quantizes correctly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vindex_hub.arch import deepseek_v4 as ds
from vindex_hub.testing.synth import (
    gate_matrix,
    make_deepseek_v4_checkpoint,
    quantize_fp4,
    quantize_fp8,
    round_bf16,
)

# Spelled out here on purpose (not imported) so the generator is checked against the reference doc.
REAL_QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "scale_fmt": "ue8m0",
    "weight_block_size": [128, 128],
    "activation_scheme": "dynamic",
}
ITEMSIZE = {"I8": 1, "F8_E4M3": 1, "F8_E8M0": 1, "BF16": 2, "F32": 4, "I64": 8}


def read_all(root):
    """{name: (dtype, shape, shard)} straight from the files, via the safetensors library."""
    weight_map = json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]
    found = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(root / shard, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                found[name] = (sl.get_dtype(), tuple(sl.get_shape()), shard)
    return weight_map, found


@pytest.fixture(scope="module")
def flash(tmp_path_factory):
    reference = {}
    root = make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("s") / "flash", reference=reference)
    return root, reference


@pytest.mark.slow
def test_config_has_the_real_keys(flash):
    root, _ = flash
    config = json.loads((root / "config.json").read_text())
    assert config["model_type"] == "deepseek_v4"
    assert config["quantization_config"] == REAL_QUANTIZATION_CONFIG
    assert (
        config["num_hidden_layers"],
        config["num_hash_layers"],
        config["hidden_size"],
        config["moe_intermediate_size"],
        config["n_routed_experts"],
        config["n_shared_experts"],
        config["num_experts_per_tok"],
        config["num_nextn_predict_layers"],
    ) == (4, 1, 256, 128, 8, 1, 2, 1)
    assert (config["scoring_func"], config["topk_method"], config["routed_scaling_factor"]) == (
        "sqrtsoftplus",
        "noaux_tc",
        1.5,
    )
    assert config["expert_dtype"] == "fp4" and config["vocab_size"] == 512
    assert "first_k_dense_replace" not in config


def test_tensor_names_dtypes_shapes_follow_the_reference(flash):
    root, _ = flash
    weight_map, found = read_all(root)
    assert set(found) == set(weight_map)
    assert all(found[n][2] == weight_map[n] for n in found)
    H, I, E, V, K = 256, 128, 8, 512, 2
    for block in ["layers.0", "layers.1", "layers.2", "layers.3", "mtp.0"]:
        for e in range(E):
            assert found[f"{block}.ffn.experts.{e}.w1.weight"][:2] == ("I8", (I, H // 2))
            assert found[f"{block}.ffn.experts.{e}.w1.scale"][:2] == ("F8_E8M0", (I, H // 32))
            assert found[f"{block}.ffn.experts.{e}.w3.weight"][:2] == ("I8", (I, H // 2))
            assert found[f"{block}.ffn.experts.{e}.w2.weight"][:2] == ("I8", (H, I // 2))
            assert found[f"{block}.ffn.experts.{e}.w2.scale"][:2] == ("F8_E8M0", (H, I // 32))
        assert found[f"{block}.ffn.shared_experts.w1.weight"][:2] == ("F8_E4M3", (I, H))
        assert found[f"{block}.ffn.shared_experts.w1.scale"][:2] == ("F8_E8M0", (1, 2))
        assert found[f"{block}.ffn.shared_experts.w2.scale"][:2] == ("F8_E8M0", (2, 1))
        assert found[f"{block}.ffn.gate.weight"][:2] == ("BF16", (E, H))
    assert found["layers.0.ffn.gate.tid2eid"][:2] == ("I64", (V, K))
    assert "layers.0.ffn.gate.bias" not in found
    for block in ["layers.1", "layers.2", "layers.3", "mtp.0"]:
        assert found[f"{block}.ffn.gate.bias"][:2] == ("F32", (E,))
        assert f"{block}.ffn.gate.tid2eid" not in found
    assert {"embed.weight", "head.weight", "norm.weight", "layers.0.attn_norm.weight"} <= set(found)


def test_shards_split_by_bytes_with_layers_straddling(flash):
    root, _ = flash
    weight_map, found = read_all(root)
    shards = sorted(set(weight_map.values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((root / "model.safetensors.index.json").read_text())
    total = sum(math.prod(shape) * ITEMSIZE[dtype] for dtype, shape, _ in found.values())
    assert index["metadata"]["total_size"] == total
    layer_shards = {
        L: {s for n, (_, _, s) in found.items() if n.startswith(f"layers.{L}.")} for L in range(4)
    }
    assert any(len(s) > 1 for s in layer_shards.values())  # not one shard per layer
    for n, (_, _, s) in found.items():  # a weight and its scales share a shard
        if n.endswith(".scale"):
            assert found[n.removesuffix(".scale") + ".weight"][2] == s


def test_reference_matches_torch_decoding_of_the_files(flash):
    root, ref = flash
    weight_map, _ = read_all(root)
    # FP8 shared expert: torch's own float8 dtypes decode the stored tensors.
    name = "layers.2.ffn.shared_experts.w1"
    with safe_open(root / weight_map[f"{name}.weight"], framework="pt") as f:
        w = f.get_tensor(f"{name}.weight").to(torch.float32).numpy()
        s = f.get_tensor(f"{name}.scale").to(torch.float32).numpy()
    assert np.array_equal(
        ref[f"{name}.weight"],
        w * np.repeat(np.repeat(s, 128, 0), 128, 1)[: w.shape[0], : w.shape[1]],
    )
    # BF16 router and F32 bias
    with safe_open(root / weight_map["layers.3.ffn.gate.weight"], framework="pt") as f:
        assert np.array_equal(
            ref["layers.3.ffn.gate.weight"],
            f.get_tensor("layers.3.ffn.gate.weight").float().numpy(),
        )
    with safe_open(root / weight_map["layers.3.ffn.gate.bias"], framework="pt") as f:
        assert np.array_equal(
            ref["layers.3.ffn.gate.bias"], f.get_tensor("layers.3.ffn.gate.bias").numpy()
        )


def test_deterministic_and_independent_of_sharding(tmp_path):
    small = dict(
        num_layers=2, num_experts=2, hidden_size=64, moe_intermediate_size=32, vocab_size=16
    )
    a, b, c = {}, {}, {}
    make_deepseek_v4_checkpoint(tmp_path / "a", num_shards=2, seed=5, reference=a, **small)
    make_deepseek_v4_checkpoint(
        tmp_path / "b", num_shards=4, seed=5, include_attention=False, reference=b, **small
    )
    make_deepseek_v4_checkpoint(tmp_path / "c", num_shards=2, seed=6, reference=c, **small)
    # without attention/embedding tensors the reference lacks only the input embedding
    assert a.keys() - {ds.EMBED_TENSOR} == b.keys() and b
    assert all(np.array_equal(a[k], b[k]) for k in b)
    assert not np.array_equal(
        a["layers.1.ffn.experts.0.w1.weight"], c["layers.1.ffn.experts.0.w1.weight"]
    )


def test_fp8_base_variant_and_old_config(tmp_path):
    small = dict(
        num_layers=1,
        num_experts=2,
        hidden_size=64,
        moe_intermediate_size=32,
        vocab_size=16,
        include_mtp=False,
        include_attention=False,
        num_hash_layers=0,
    )
    root = make_deepseek_v4_checkpoint(tmp_path / "base", expert_dtype="fp8", **small)
    _, found = read_all(root)
    assert found["layers.0.ffn.experts.1.w1.weight"][:2] == ("F8_E4M3", (32, 64))
    assert found["layers.0.ffn.experts.1.w1.scale"][:2] == ("F32", (1, 1))
    assert not any(n.startswith("mtp.") for n in found)
    assert json.loads((root / "config.json").read_text())["num_nextn_predict_layers"] == 0
    old = make_deepseek_v4_checkpoint(tmp_path / "old", expert_dtype=None, **small)
    assert "expert_dtype" not in json.loads((old / "config.json").read_text())


# ---- quantizers -----------------------------------------------------------------------------------
def test_quantize_fp4_rounds_to_nearest_grid_point():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block
    packed, scale, values = quantize_fp4(w)
    assert (
        packed.shape == (8, 32)
        and scale.shape == (8, 2)
        and packed.dtype == scale.dtype == np.uint8
    )
    scale_f = np.ldexp(1.0, scale.astype(int) - 127).repeat(32, axis=1)
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    q = w / scale_f
    assert np.abs(q).max() <= 6
    # each value is the nearest grid point (times the scale) to w
    nearest = grid[np.abs(np.abs(q)[..., None] - grid).argmin(-1)]
    assert np.array_equal(np.abs(values / scale_f), nearest)
    assert np.all(np.signbit(values) == np.signbit(w))  # sign kept, -0 included
    # the scale is the smallest power of two that fits the block in +-6
    amax = np.abs(w.reshape(8, 2, 32)).max(-1)
    e = scale.astype(int) - 127
    nonzero = amax > 0
    assert np.all(amax[nonzero] <= 6 * 2.0 ** e[nonzero]) and np.all(
        amax[nonzero] > 6 * 2.0 ** (e[nonzero] - 1)
    )
    assert scale[0, 0] == 0 and np.all(values[0, :32] == 0)


def test_quantize_fp8_matches_torch_cast():
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((130, 260)) * 0.02).astype(np.float32)
    for scale_dtype, scale_shape in (("F8_E8M0", (2, 3)), ("F32", (2, 12))):
        q, scale_bytes, values = quantize_fp8(w, scale_dtype=scale_dtype)
        assert q.shape == w.shape and scale_bytes.shape == scale_shape
        scales = (
            np.ldexp(1.0, scale_bytes.astype(int) - 127)
            if scale_dtype == "F8_E8M0"
            else scale_bytes.view("<f4")
        ).astype(np.float32)
        full = np.repeat(np.repeat(scales, 128, 0), 128, 1)[:130, :260]
        decoded = torch.from_numpy(q.copy()).view(torch.float8_e4m3fn).float().numpy()
        assert np.array_equal(values, decoded * full)
        assert np.abs(decoded).max() <= 448
        # E4M3 keeps 3 mantissa bits: relative error of large entries within 2^-4
        big = np.abs(w) > np.abs(w).max() / 4
        assert np.all(np.abs(values - w)[big] <= np.abs(w)[big] * 2.0**-4)


def test_round_bf16():
    raw, values = round_bf16(np.array([1.0, 1.00390625, 1.01171875], np.float32))
    assert raw.dtype == np.uint8 and raw.shape == (6,)
    assert values.tolist() == [1.0, 1.0, 1.015625]  # ties to even; nearest otherwise


def test_spectra_and_quantization_preserve_them():
    rng = np.random.default_rng(2)
    energy = {}
    for spectrum in ("flat", "decaying"):
        w = gate_matrix(rng, 128, 256, spectrum)
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        energy[spectrum] = (s[:16] ** 2).sum() / (s**2).sum()
        sq = np.linalg.svd(quantize_fp4(w)[2].astype(np.float64), compute_uv=False)
        assert np.allclose(
            sq[:16], s[:16], rtol=0.05
        )  # FP4 noise barely moves the top of the spectrum
    assert energy["flat"] < 0.5 < energy["decaying"]
    with pytest.raises(ValueError, match="spectrum"):
        gate_matrix(rng, 4, 4, "steep")
