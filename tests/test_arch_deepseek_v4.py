"""The DeepSeek-V4 adapter on generated checkpoints in the real format: names, layer sets, and
decoded weights equal to the generator's exact float values; every misshaped input refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vindex_hub.arch import get_architecture, supported_architectures
from vindex_hub.arch.deepseek_v4 import SCALE, DeepseekV4
from vindex_hub.arch.layouts import sibling
from vindex_hub.errors import CheckpointError, QuantizationError, UnsupportedArchitectureError
from vindex_hub.format.sidecar import MoEConfig
from vindex_hub.source.base import RawTensor
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

SMALL = dict(
    num_layers=3,
    num_experts=4,
    num_experts_per_tok=2,
    num_hash_layers=1,
    vocab_size=64,
    num_shards=3,
)


@pytest.fixture(
    scope="module", params=["fp4", "fp8", None], ids=["fp4", "fp8-base", "no-expert_dtype"]
)
def model(request, tmp_path_factory):
    """(source, adapter, reference) for Flash, Flash-Base and an older Flash config."""
    reference: dict[str, np.ndarray] = {}
    # 160 x 96 leaves ragged 128x128 FP8 blocks (2 x 1 grid for 96 x 160).
    root = make_deepseek_v4_checkpoint(
        tmp_path_factory.mktemp("v4") / "m",
        hidden_size=160,
        moe_intermediate_size=96,
        expert_dtype=request.param,
        reference=reference,
        seed=11,
        **SMALL,
    )
    src = LocalCheckpoint(root)
    yield src, get_architecture(src.config), reference
    src.close()


def test_registered():
    assert "deepseek_v4" in supported_architectures()


def test_unsupported_model_type():
    with pytest.raises(
        UnsupportedArchitectureError,
        match=r"config\.json: model_type 'deepseek_v5' is not supported.*deepseek_v4.*did you mean 'deepseek_v4'",
    ):
        get_architecture({"model_type": "deepseek_v5"})


def test_shape_and_layers(model):
    src, arch, _ = model
    assert isinstance(arch, DeepseekV4)
    assert arch.num_hidden_layers == 3
    assert arch.moe_layers() == [0, 1, 2]
    assert arch.gate_shape == (96, 160)
    assert arch.moe_config() == MoEConfig(
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        hidden_size=160,
        moe_intermediate_size=96,
    )


def test_first_k_dense_replace_is_honoured():
    config = {
        "model_type": "deepseek_v4",
        "num_hidden_layers": 6,
        "first_k_dense_replace": 2,
        "hidden_size": 64,
        "moe_intermediate_size": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
    }
    assert get_architecture(config).moe_layers() == [2, 3, 4, 5]


def test_names_exist_and_exclude_mtp_and_other_projections(model):
    src, arch, _ = model
    names = src.tensor_names()
    assert any(n.startswith("mtp.0.ffn.experts.") for n in names)  # the checkpoint has an MTP block
    for layer in arch.moe_layers():
        wanted = arch.layer_tensors(layer)
        assert set(wanted) <= names, set(wanted) - names
        assert len(wanted) == len(set(wanted))
        assert not any(n.startswith("mtp.") for n in wanted)
        assert not any(".w2." in n or ".w3." in n or "tid2eid" in n for n in wanted)
        assert arch.expert_gate_name(layer, 3) == f"layers.{layer}.ffn.experts.3.w1.weight"
        assert {
            f"layers.{layer}.ffn.experts.3.w1.scale",
            f"layers.{layer}.ffn.shared_experts.w1.scale",
        } <= set(wanted)
        assert arch.shared_gate_name(layer) == f"layers.{layer}.ffn.shared_experts.w1.weight"


def test_hash_layers_have_no_bias(model):
    src, arch, _ = model
    names = src.tensor_names()
    assert arch.router_name(0) == "layers.0.ffn.gate.weight" and arch.router_bias_name(0) is None
    assert "layers.0.ffn.gate.tid2eid" in names and "layers.0.ffn.gate.bias" not in names
    assert arch.router_bias_name(
        1
    ) == "layers.1.ffn.gate.bias" and "layers.1.ffn.gate.bias" in arch.layer_tensors(1)
    assert "layers.1.ffn.gate.tid2eid" not in names
    raw = src.read([arch.router_name(0)])
    assert arch.router_bias(0, raw) is None


def test_decoded_weights_equal_generator_values(model):
    src, arch, ref = model
    for layer in arch.moe_layers():
        raw = src.read(arch.layer_tensors(layer))
        buffer = np.full((3, 96, 160), np.nan, np.float32)
        experts = arch.expert_gate_weights(layer, [3, 0, 2], raw, out=buffer)
        assert experts is buffer and np.array_equal(
            arch.expert_gate_weights(layer, [3, 0, 2], raw), buffer
        )
        assert experts.dtype == np.float32 and experts.shape == (3, 96, 160)
        for i, e in enumerate([3, 0, 2]):
            assert np.array_equal(experts[i], ref[f"layers.{layer}.ffn.experts.{e}.w1.weight"])
        assert np.array_equal(
            arch.shared_gate_weight(layer, raw), ref[f"layers.{layer}.ffn.shared_experts.w1.weight"]
        )
        router = arch.router_weight(layer, raw)
        assert router.shape == (4, 160) and np.array_equal(
            router, ref[f"layers.{layer}.ffn.gate.weight"]
        )
        bias = arch.router_bias(layer, raw)
        if layer >= 1:
            assert bias.dtype == np.float32 and np.array_equal(
                bias, ref[f"layers.{layer}.ffn.gate.bias"]
            )
    # the weights are not trivially zero or constant
    assert np.linalg.matrix_rank(experts[0].astype(np.float64)) == 96


# ---- bad inputs -------------------------------------------------------------------------------
def with_scale(weight: str) -> tuple[str, str]:
    """A V4 weight's name and its scale tensor's (``...w1.weight`` -> ``...w1.scale``)."""
    return weight, sibling(weight, SCALE)


def altered(
    raw: dict[str, RawTensor], name: str, *, data: np.ndarray | None = None, **info_changes
) -> dict[str, RawTensor]:
    t = raw[name]
    return {
        **raw,
        name: RawTensor(
            dataclasses.replace(t.info, **info_changes), t.data if data is None else data
        ),
    }


def test_wrong_dtype_names_tensor(model):
    src, arch, _ = model
    w, s = with_scale(arch.expert_gate_name(1, 2))
    raw = src.read([w, s])
    with pytest.raises(CheckpointError, match=rf"tensor {w}: dtype BF16, expected"):
        arch.expert_gate_weights(1, [2], altered(raw, w, dtype="BF16"))


def test_wrong_shape_names_tensor(model):
    src, arch, _ = model
    w, s = with_scale(arch.expert_gate_name(1, 2))
    raw = src.read([w, s])
    bad_shape = (raw[w].info.shape[1], raw[w].info.shape[0])
    with pytest.raises(
        CheckpointError, match=rf"tensor {w}: shape \[{bad_shape[0]}, {bad_shape[1]}\], expected"
    ):
        arch.expert_gate_weights(1, [2], altered(raw, w, shape=bad_shape))
    name = "layers.1.ffn.gate.weight"
    raw = src.read([name])
    with pytest.raises(
        CheckpointError,
        match=r"tensor layers\.1\.ffn\.gate\.weight: shape \[2, 160\], expected \[4, 160\]",
    ):
        arch.router_weight(1, altered(raw, name, shape=(2, 160)))


def test_tensor_not_read(model):
    src, arch, _ = model
    w, s = with_scale(arch.expert_gate_name(1, 2))
    with pytest.raises(CheckpointError, match=rf"{s}"):
        arch.expert_gate_weights(1, [2], src.read([w]))


def test_scale_byte_255_names_tensor(model):
    src, arch, _ = model
    w, s = with_scale(arch.shared_gate_name(2))
    raw = src.read([w, s])
    data = raw[s].data.copy()
    data[0] = 255
    with pytest.raises(QuantizationError, match=rf"{s}.*255"):
        arch.shared_gate_weight(2, altered(raw, s, data=data))


def test_nan_weight_names_tensor(model):
    src, arch, _ = model
    w, s = with_scale(arch.shared_gate_name(2))
    raw = src.read([w, s])
    data = raw[w].data.copy()
    data[5] = 0x7F  # E4M3 NaN
    with pytest.raises(QuantizationError, match=rf"{w}.*NaN/Inf"):
        arch.shared_gate_weight(2, altered(raw, w, data=data))


def test_routed_scale_255_in_fp4(tmp_path):
    root = make_deepseek_v4_checkpoint(
        tmp_path / "m",
        num_layers=1,
        num_experts=2,
        hidden_size=64,
        moe_intermediate_size=32,
        num_hash_layers=0,
        vocab_size=8,
        num_shards=1,
        include_mtp=False,
        include_attention=False,
    )
    with LocalCheckpoint(root) as src:
        arch = get_architecture(src.config)
        w, s = with_scale(arch.expert_gate_name(0, 1))
        raw = src.read([w, s])
        data = raw[s].data.copy()
        data[-1] = 255
        with pytest.raises(
            QuantizationError, match=r"tensor layers\.0\.ffn\.experts\.1\.w1\.scale: .*255"
        ):
            arch.expert_gate_weights(0, [1], altered(raw, s, data=data))
        # a scale grid whose columns do not divide the inputs
        with pytest.raises(CheckpointError, match=rf"tensor {s}: shape \[32, 3\]"):
            arch.expert_gate_weights(0, [1], altered(raw, s, shape=(32, 3)))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"expert_dtype": "int4"}, "expert_dtype 'int4'"),
        ({"hidden_size": None}, "hidden_size must be a positive integer"),
        ({"n_routed_experts": 0}, "n_routed_experts must be a positive integer"),
        (
            {"num_hash_layers": "three"},
            "num_hash_layers must be a non-negative integer, got 'three'",
        ),
        ({"num_hash_layers": None}, "num_hash_layers must be a non-negative integer, got None"),
        ({"n_shared_experts": [1]}, r"n_shared_experts must be a non-negative integer, got \[1\]"),
        ({"n_shared_experts": -1}, "n_shared_experts must be a non-negative integer, got -1"),
        (
            {"first_k_dense_replace": 1.5},
            "first_k_dense_replace must be a non-negative integer, got 1.5",
        ),
        (
            {"quantization_config": {"weight_block_size": ["a", 128]}},
            "quantization_config.weight_block_size must be a positive integer, got 'a'",
        ),
        (
            {"quantization_config": {"weight_block_size": 128}},
            "quantization_config.weight_block_size must be a list of 2 positive integers, got 128",
        ),
        (
            {"quantization_config": {"weight_block_size": [0, 128]}},
            "quantization_config.weight_block_size must be a positive integer, got 0",
        ),
        ({"quantization_config": "fp8"}, "quantization_config must be an object, got 'fp8'"),
    ],
)
def test_bad_config(change, match):
    config = {
        "model_type": "deepseek_v4",
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "moe_intermediate_size": 32,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        **change,
    }
    with pytest.raises(CheckpointError, match=rf"config\.json: {match}"):
        get_architecture(config)


def test_transformers_config_spellings(model, tmp_path):
    """``mlp_layer_types`` for ``num_hash_layers``, ``quantization_config.expert_dtype`` for ``expert_dtype``."""
    src, arch, _ = model
    config = dict(src.config)
    config["quantization_config"] = {
        **config["quantization_config"],
        "expert_dtype": arch.expert_dtype,
    }
    config.pop("expert_dtype", None)
    config.pop("num_hash_layers")
    config["mlp_layer_types"] = ["hash_moe", "moe", "moe"]
    resaved = get_architecture(config, tensor_names=src.tensor_names())
    assert resaved.expert_dtype == arch.expert_dtype and resaved.num_hash_layers == 1
    for layer in resaved.moe_layers():
        assert resaved.layer_tensors(layer) == arch.layer_tensors(layer)
    with pytest.raises(
        CheckpointError,
        match=r"config\.json: mlp_layer_types must list 'hash_moe' or 'moe' for each of the 3 layers",
    ):
        get_architecture({**config, "mlp_layer_types": ["hash_moe", "moe"]})
    with pytest.raises(CheckpointError, match=r"config\.json: expert_dtype 'int4'"):
        get_architecture({**config, "quantization_config": {"expert_dtype": "int4"}})
