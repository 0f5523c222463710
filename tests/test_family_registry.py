"""Every MoE text architecture of the installed transformers: supported, refused, or skipped by name.

The list is generated from transformers' own registry (``family_registry.moe_model_types``), so a
new MoE architecture in a new release is a failing test with its name until it is supported,
refused or skipped here. For each supported model type a tiny random model is saved by
transformers' ``save_pretrained``, built by the real ``build_vindex``, and compared with a float64
reference computed from the model object's own parameters: the decoded gate rows, router, bias
and shared gate bit for bit, the vindex's layers exactly the layers holding experts, and its
vectors against a LAPACK SVD of the in-memory gates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from family_registry import HIDDEN, SKIPPED, build_model, moe_model_types, reference
from test_build import assert_build_matches

from vindex_hub.arch import get_architecture, refused_architectures, supported_architectures
from vindex_hub.builder import build_vindex
from vindex_hub.errors import UnsupportedArchitectureError
from vindex_hub.source.local import LocalCheckpoint

pytestmark = pytest.mark.slow
NUM_FEATS = 4
MOE_TYPES = moe_model_types()
SUPPORTED = set(supported_architectures())
REFUSED = refused_architectures()
# Registered model types that transformers' generative registry does not list (tested elsewhere):
# kimi_k2 is DeepSeek-V3 code under its own model_type (tests/test_families.py).
NOT_IN_TRANSFORMERS = {"kimi_k2"}


def test_every_moe_architecture_is_supported_refused_or_skipped_by_name():
    unaccounted = [
        t for t in MOE_TYPES if t not in SUPPORTED and t not in REFUSED and t not in SKIPPED
    ]
    assert unaccounted == [], (
        f"MoE model types in transformers that vindex-hub does not handle: {unaccounted}"
    )
    assert sorted(SUPPORTED - set(MOE_TYPES) - NOT_IN_TRANSFORMERS) == []


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_a_refused_architecture_says_why_in_one_line(model_type):
    why = r"no gate projection|not gated"
    with pytest.raises(UnsupportedArchitectureError, match=why) as info:
        get_architecture({"model_type": model_type})
    assert "\n" not in str(info.value) and model_type in str(info.value)


@pytest.mark.parametrize("model_type", [t for t in MOE_TYPES if t in SKIPPED])
def test_skipped(model_type):
    pytest.skip(f"{model_type}: {SKIPPED[model_type]}")


def _assert_gates(gates: np.ndarray, ref) -> None:
    """Bit for bit where the gate rows are stored as such; to float32 rounding where they are a
    product of matrices (Muse Spark's pooled experts)."""
    if ref.exact:
        np.testing.assert_array_equal(gates, ref.gates.astype(np.float32))
    else:
        assert gates.shape == ref.gates.shape
        np.testing.assert_allclose(gates, ref.gates, rtol=1e-5, atol=1e-6 * np.abs(ref.gates).max())


def _assert_router(arch, layer: int, raw, ref) -> None:
    """The adapter's router (and bias) is bit for bit one of the block's [E, H] weights."""
    router = arch.router_weight(layer, raw)
    assert any(
        r.shape == router.shape and np.array_equal(router, r.astype(np.float32))
        for r in ref.routers
    ), f"layer {layer}: router {arch.router_name(layer)} is none of the block's [E, H] weights"
    bias = arch.router_bias(layer, raw)
    if bias is not None:
        assert any(
            b.shape == bias.shape and np.array_equal(bias, b.astype(np.float32)) for b in ref.biases
        )


@pytest.mark.parametrize("model_type", [t for t in MOE_TYPES if t in SUPPORTED])
def test_a_tiny_model_saved_by_transformers_builds_against_its_own_parameters(model_type, tmp_path):
    model = build_model(model_type)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        num_experts = arch.moe_config().n_routed_experts
        expected = reference(model, HIDDEN, num_experts)
        assert expected, "the in-memory model holds no gated experts"
        assert arch.moe_layers() == sorted(expected)  # exactly the layers holding experts
        for layer, ref in expected.items():
            raw = src.read(arch.layer_tensors(layer))
            gates = arch.expert_gate_weights(layer, range(num_experts), raw)
            _assert_gates(gates, ref)
            if arch.has_router_matrix:
                _assert_router(arch, layer, raw, ref)
            else:
                # ZAYA: its router is an MLP. No matrix over the router's classes (the experts,
                # and its skip class) reads the hidden state, so there is none to compare.
                e = num_experts
                assert not [r.shape for r in ref.routers if r.shape[0] in (e, e + 1)], layer
                with pytest.raises(UnsupportedArchitectureError, match="router is an MLP"):
                    arch.router_weight(layer, raw)
            shared = arch.shared_gate_weight(layer, raw)
            assert (shared is None) == (ref.shared is None), layer
            if shared is not None:
                np.testing.assert_array_equal(shared, ref.shared.astype(np.float32))
    # transformers' in-memory (fused) layout, as save_pretrained(save_original_format=False)
    # writes it: the same gate rows, whichever way the family stores its fused tensor.
    fused = tmp_path / "fused"
    model.save_pretrained(fused, save_original_format=False)
    with LocalCheckpoint(fused) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.moe_layers() == sorted(expected)
        for layer, ref in expected.items():
            raw = src.read(arch.layer_tensors(layer))
            gates = arch.expert_gate_weights(layer, range(num_experts), raw)
            _assert_gates(gates, ref)
    assert_build_matches(
        folder,
        tmp_path / "vindex",
        {layer: ref.gates for layer, ref in expected.items()},
        NUM_FEATS,
        model_type=model_type,
    )


def test_families_lists_every_supported_and_refused_type_and_the_readme_agrees():
    result = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "families", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {f["model_type"] for f in listed["supported"]} == SUPPORTED
    assert {f["model_type"] for f in listed["refused"]} == set(REFUSED)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Supported model families", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    in_table = {
        t for line in table for t in line.split("`")[1::2] if t in SUPPORTED or t in REFUSED
    }
    assert in_table == SUPPORTED | set(REFUSED)


# ---- bad input to the generic adapter: one line naming the tensor or key ----------------------
@pytest.fixture(scope="module")
def generic_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generic") / "checkpoint"
    build_model("cohere2_moe").save_pretrained(folder)
    return folder


def _changed(folder: Path, tmp_path: Path, change) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    tensors = load_file(copy / "model.safetensors")
    change(tensors)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def _refused(folder: Path, tmp_path: Path, match: str) -> None:
    from vindex_hub.errors import CheckpointError

    with pytest.raises(CheckpointError, match=match) as info:
        build_vindex(folder, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "gate_vectors.bin").exists()


def test_a_layer_missing_one_experts_gate(generic_checkpoint, tmp_path):
    def drop(tensors):
        del tensors["model.layers.2.mlp.experts.3.gate_proj.weight"]

    _refused(
        _changed(generic_checkpoint, tmp_path, drop),
        tmp_path,
        r"layer 2: .* tensor model\.layers\.2\.mlp\.experts\.3\.gate_proj\.weight is not in the checkpoint",
    )


def test_a_router_with_fewer_rows_than_experts(generic_checkpoint, tmp_path):
    def cut(tensors):
        tensors["model.layers.1.mlp.gate.weight"] = tensors["model.layers.1.mlp.gate.weight"][:3]

    _refused(
        _changed(generic_checkpoint, tmp_path, cut),
        tmp_path,
        r"tensor model\.layers\.1\.mlp\.gate\.weight: shape \[3, 64\], expected \[4 or more",
    )


def test_a_checkpoint_without_experts(generic_checkpoint, tmp_path):
    def strip(tensors):
        for name in [n for n in tensors if ".experts." in n]:
            del tensors[name]

    _refused(
        _changed(generic_checkpoint, tmp_path, strip),
        tmp_path,
        r"no layer of the checkpoint holds routed-expert gate_proj tensors",
    )


def test_a_quantized_w13_weight_is_refused_naming_its_dtype(tmp_path):
    # NVFP4 bytes (U8, H/2 columns) without the scale tensors beside them (the quantized
    # releases themselves: tests/test_inkling_quantized.py).
    import torch

    folder = tmp_path / "checkpoint"
    build_model("inkling2_loop_text").save_pretrained(folder)

    def pack(tensors):
        name = "model.llm.layers.0.mlp.experts.w13_weight"
        e, rows, cols = tensors[name].shape
        tensors[name] = torch.zeros((e, rows, cols // 2), dtype=torch.uint8)

    _refused(
        _changed(folder, tmp_path, pack),
        tmp_path,
        r"tensor model\.llm\.layers\.0\.mlp\.experts\.w13_weight: dtype U8, expected BF16",
    )


def test_a_pooled_moe_block_without_its_projection(tmp_path):
    # Muse Spark's gate rows mean nothing without the projection into their pooled space.
    folder = tmp_path / "checkpoint"
    build_model("muse_spark").save_pretrained(folder)

    def drop(tensors):
        del tensors["model.language_model.layers.1.mlp.pre_expert_proj.weight"]

    _refused(
        _changed(folder, tmp_path, drop),
        tmp_path,
        r"layer 1: .* tensor model\.language_model\.layers\.1\.mlp\.pre_expert_proj\.weight is not in",
    )
