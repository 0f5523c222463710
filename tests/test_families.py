"""Every supported MoE family, on checkpoints ``transformers`` writes itself (``family_models``).

For each family and layout: the adapter decodes exactly the in-memory model's gate rows, router,
bias and shared gate; a real ``build_vindex`` of the saved folder indexes exactly the MoE layers,
with vectors matching a float64 LAPACK SVD of the model's own weights; the quantized layouts
decode bit for bit as transformers' own FP8 / MXFP4 functions do. Then: a remote build of a fused
family fetches only what it needs, ``info`` names the family, and each bad input is one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")  # the test extra; families are tested against its writers

from test_build import matched_top_vectors
from test_source_remote import header_bytes, planned_bytes, shard_bytes_sent, upload

from vindex_hub.arch import MoEArchitecture, get_architecture, supported_architectures
from vindex_hub.arch.catalog import OWN_MODULES
from vindex_hub.builder import build_vindex
from vindex_hub.errors import CheckpointError, QuantizationError, UnsupportedArchitectureError
from vindex_hub.format import filenames, statistics
from vindex_hub.load import Vindex
from vindex_hub.source.local import LocalCheckpoint

from family_models import BASE, BY_ID, CASES, SAFETENSORS, Case, Checkpoint, make_checkpoint

NUM_FEATS = 8
_made: dict[str, Checkpoint] = {}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Each case's checkpoint, generated once per session, on first use."""

    def get(case_id: str) -> Checkpoint:
        if case_id not in _made:
            _made[case_id] = make_checkpoint(
                BY_ID[case_id], tmp_path_factory.mktemp(case_id) / "checkpoint"
            )
        return _made[case_id]

    return get


@pytest.fixture(scope="session")
def built(checkpoints, tmp_path_factory):
    """Each case's vindex, built once by the real ``build_vindex`` from its saved folder."""
    done: dict[str, Path] = {}

    def get(case_id: str) -> Path:
        if case_id not in done:
            out = tmp_path_factory.mktemp(f"{case_id}-vindex") / "vindex"
            build_vindex(
                checkpoints(case_id).folder, out, num_feats=NUM_FEATS, device="cpu", progress=False
            )
            done[case_id] = out
        return done[case_id]

    return get


def adapter(checkpoint: Checkpoint):
    src = LocalCheckpoint(checkpoint.folder)
    return src, get_architecture(src.config, tensor_names=src.tensor_names())


# ---- every family ------------------------------------------------------------------------------
def test_every_family_with_a_module_of_its_own_has_a_case():
    # The generic ones are tested by tests/test_family_registry.py, one per transformers model
    # type; so are DBRX, ERNIE 4.5 VL and Muse Spark (their modules add a rule to the generic ones).
    on_generic = {"dbrx", "ernie4_5_vl_moe", "muse_spark"}
    assert {c.saved_model_type or c.model_type for c in CASES} == set(OWN_MODULES) - on_generic
    assert set(OWN_MODULES) <= set(supported_architectures())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_adapter_decodes_the_models_own_parameters(case: Case, checkpoints):
    checkpoint = checkpoints(case.id)
    src, arch = adapter(checkpoint)
    with src:
        assert isinstance(arch, MoEArchitecture) and arch.model_type == (
            case.saved_model_type or case.model_type
        )
        if case.published_layout:  # without the checkpoint's names the published layout is assumed
            first = min(checkpoint.layers)
            assert get_architecture(src.config).layer_tensors(first) == arch.layer_tensors(first)
        assert arch.moe_layers() == sorted(
            checkpoint.layers
        )  # exactly the layers holding experts in memory
        assert arch.num_hidden_layers == {**BASE, **case.config}["num_hidden_layers"]
        for layer, ref in checkpoint.layers.items():
            names = arch.layer_tensors(layer)
            assert len(names) == len(set(names)) and set(names) <= src.tensor_names()
            if "gate_up_proj" in arch.expert_gate_name(
                layer, 0
            ):  # fused: named once a layer, not per expert
                assert len({arch.expert_gate_name(layer, e) for e in range(len(ref.gates))}) == 1
                assert sum("gate_up_proj" in n for n in names) == (
                    2 if case.quantize == "mxfp4" else 1
                )
            raw = src.read(names)
            num_experts = len(ref.gates)
            assert (
                arch.gate_shape == ref.gates.shape[1:]
                and arch.moe_config().n_routed_experts == num_experts
            )
            buffer = np.full((3, *arch.gate_shape), np.nan, np.float32)
            chosen = [num_experts - 1, 0, 1]
            assert arch.expert_gate_weights(layer, chosen, raw, out=buffer) is buffer
            # Float layouts: the very values in memory; quantized: transformers' dequantization, bit for bit.
            np.testing.assert_array_equal(buffer, ref.gates[chosen].astype(np.float32))
            np.testing.assert_array_equal(
                arch.router_weight(layer, raw), ref.router.astype(np.float32)
            )
            bias = arch.router_bias(layer, raw)
            assert (bias is None) == (ref.bias is None), layer
            if bias is not None:
                np.testing.assert_array_equal(bias, ref.bias.astype(np.float32))
            shared = arch.shared_gate_weight(layer, raw)
            assert (shared is None) == (
                ref.shared is None
            ) and arch.moe_config().n_shared_experts == (shared is not None)
            if shared is not None:
                np.testing.assert_array_equal(shared, ref.shared.astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_build_indexes_exactly_the_moe_layers_against_a_float64_svd(
    case: Case, checkpoints, built
):
    checkpoint = checkpoints(case.id)
    out = built(case.id)
    phase1 = json.loads((out / filenames.PHASE1_JSON).read_text())
    phase2 = json.loads((out / filenames.PHASE2_JSON).read_text())
    checked = total = 0
    with Vindex.open(out) as vindex:
        assert vindex.layers == sorted(
            checkpoint.layers
        )  # dense layers are absent from the sidecar
        assert vindex.index.model_config.model_type == (case.saved_model_type or case.model_type)
        for layer, ref in checkpoint.layers.items():
            c, t = matched_top_vectors(vindex.layer(layer), ref.gates, NUM_FEATS, layer=layer)
            checked, total = checked + c, total + t
            router_s = scipy.linalg.svdvals(ref.router)
            np.testing.assert_allclose(
                phase2["layers"][str(layer)]["singular_values"], router_s, rtol=1e-5
            )
            shared = phase1["layers"][str(layer)].get("shared")
            assert (shared is None) == (ref.shared is None)
            if ref.shared is not None:
                s = scipy.linalg.svdvals(ref.shared)
                assert shared[statistics.var_key(NUM_FEATS)] == pytest.approx(
                    np.sum(s[:NUM_FEATS] ** 2) / np.sum(s**2), rel=1e-5
                )
    assert checked >= 0.9 * total


# ---- the quantized layouts against transformers' own dequantization ----------------------------
@pytest.mark.slow
def test_fp8_blocks_are_ragged_and_scaled_as_a_multiplier(checkpoints):
    checkpoint = checkpoints("kimi_k2-fp8")
    tensors = load_file(checkpoint.folder / SAFETENSORS)
    layer = min(checkpoint.layers)
    weight = tensors[f"model.layers.{layer}.mlp.experts.0.gate_proj.weight"]
    scale = tensors[f"model.layers.{layer}.mlp.experts.0.gate_proj.weight_scale_inv"]
    assert weight.dtype == torch.float8_e4m3fn and tuple(weight.shape) == (40, 64)
    assert scale.dtype == torch.float32 and tuple(scale.shape) == (
        3,
        2,
    )  # 40 rows in 16-row blocks: ragged
    src, arch = adapter(checkpoint)
    with src:
        ours = arch.expert_gate_weights(layer, [0], src.read(arch.layer_tensors(layer)))[0]
    assert np.array_equal(ours[:16, :32], weight[:16, :32].float().numpy() * scale[0, 0].item())
    assert not np.array_equal(ours[:16, :32], weight[:16, :32].float().numpy() / scale[0, 0].item())


@pytest.mark.slow
def test_mxfp4_is_what_transformers_dequantizes(checkpoints):
    from family_models import mxfp4_dequantize_reference

    checkpoint = checkpoints("gpt_oss-mxfp4")
    tensors = load_file(checkpoint.folder / SAFETENSORS)
    name = f"model.layers.{min(checkpoint.layers)}.mlp.experts.gate_up_proj"
    blocks, scales = tensors[name + "_blocks"], tensors[name + "_scales"]
    assert (
        blocks.dtype == torch.uint8
        and tuple(blocks.shape) == (4, 96, 2, 16)
        and tuple(scales.shape) == (4, 96, 2)
    )
    theirs = mxfp4_dequantize_reference(blocks, scales).numpy()  # [E, H, 2I], gate = [..., ::2]
    layer = min(checkpoint.layers)
    src, arch = adapter(checkpoint)
    with src:
        ours = arch.expert_gate_weights(layer, range(4), src.read(arch.layer_tensors(layer)))
    assert np.array_equal(ours, theirs[:, :, 0::2].transpose(0, 2, 1))
    assert not np.array_equal(ours, theirs[:, :, :48].transpose(0, 2, 1))  # halves would be wrong


# ---- remote, info ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_remote_build_of_a_fused_family_fetches_only_what_it_needs(
    local_hub, hub_repo_id, checkpoints, built, tmp_path, monkeypatch
):
    monkeypatch.setenv("VINDEX_HUB_CACHE", str(tmp_path / "block-cache"))
    checkpoint = checkpoints("gpt_oss-mxfp4")
    folder = checkpoint.folder
    upload(folder, hub_repo_id)
    summary = build_vindex(
        hub_repo_id, tmp_path / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False
    )
    local = built("gpt_oss-mxfp4")
    assert (tmp_path / "vindex" / filenames.GATE_VECTORS_BIN).read_bytes() == (
        local / filenames.GATE_VECTORS_BIN
    ).read_bytes()
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        infos = [
            [src.tensor_info(n) for n in arch.layer_tensors(layer)] for layer in summary.layers
        ]
    assert all(
        sum(i.name.endswith("gate_up_proj_blocks") for i in layer) == 1 for layer in infos
    )  # named once
    needed = sum(i.nbytes for layer in infos for i in layer)
    sent = shard_bytes_sent(local_hub, hub_repo_id, folder)
    plan = planned_bytes(infos)
    assert sent == {
        s: plan.get(s, 0) + header_bytes(folder, s) for s in sent
    }  # each tensor fetched once
    assert needed <= sum(sent.values()) <= 1.05 * needed + header_bytes(folder, SAFETENSORS)
    assert sum(sent.values()) < 0.8 * (folder / SAFETENSORS).stat().st_size


@pytest.mark.slow
def test_info_shows_the_family(built):
    out = built("llama4")
    result = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "info", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "(llama4)" in result.stdout


# ---- bad inputs: one line naming the tensor or key ----------------------------------------------
def variant(
    checkpoints, case_id: str, tmp_path: Path, config_change=None, tensors_change=None
) -> Path:
    folder = Path(shutil.copytree(checkpoints(case_id).folder, tmp_path / case_id))
    if config_change is not None:
        config = json.loads((folder / "config.json").read_text())
        config_change(config)
        (folder / "config.json").write_text(json.dumps(config))
    if tensors_change is not None:
        tensors = load_file(folder / SAFETENSORS)
        tensors_change(tensors)
        save_file(tensors, folder / SAFETENSORS, metadata={"format": "pt"})
    return folder


def refused(folder: Path, tmp_path: Path, error: type[Exception], match: str) -> str:
    with pytest.raises(error, match=match) as info:
        build_vindex(folder, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "out" / filenames.SIDECAR_JSON).exists()
    return message


@pytest.mark.slow
def test_an_unknown_model_type_lists_the_families_and_the_nearest(checkpoints, tmp_path):
    folder = variant(
        checkpoints, "qwen3_moe-f16", tmp_path, lambda c: c.update(model_type="qwen3moe")
    )
    message = refused(
        folder, tmp_path, UnsupportedArchitectureError, r"model_type 'qwen3moe' is not supported"
    )
    assert "did you mean 'qwen3_moe'" in message and all(
        f in message for f in supported_architectures()
    )


@pytest.mark.slow
def test_a_fused_tensor_that_does_not_split_into_the_config_sizes(checkpoints, tmp_path):
    folder = variant(checkpoints, "llama4_text", tmp_path, lambda c: c.update(intermediate_size=24))
    refused(
        folder,
        tmp_path,
        CheckpointError,
        r"tensor model\.layers\.1\.feed_forward\.experts\.gate_up_proj: shape \[4, 64, 64\] does not split "
        r"into the config's num_local_experts=4, intermediate_size=24, hidden_size=64",
    )


@pytest.mark.slow
def test_fp8_scales_of_the_wrong_grid(checkpoints, tmp_path):
    folder = variant(
        checkpoints,
        "kimi_k2-fp8",
        tmp_path,
        lambda c: c["quantization_config"].update(weight_block_size=[32, 32]),
    )
    refused(
        folder,
        tmp_path,
        CheckpointError,
        r"tensor model\.layers\.1\.mlp\.experts\.0\.gate_proj\.weight_scale_inv: scale grid \[3, 2\] does not "
        r"fit .* in 32x32 blocks \(expected \[2, 2\]\)",
    )


@pytest.mark.slow
def test_an_mxfp4_scale_byte_255(checkpoints, tmp_path):
    def poison(tensors):
        tensors["model.layers.2.mlp.experts.gate_up_proj_scales"][3, 4, 1] = (
            255  # row 4: a gate row
        )

    folder = variant(checkpoints, "gpt_oss-mxfp4", tmp_path, tensors_change=poison)
    refused(
        folder,
        tmp_path,
        QuantizationError,
        r"tensor model\.layers\.2\.mlp\.experts\.gate_up_proj_scales: E8M0 scale byte 255",
    )


@pytest.mark.parametrize("case_id", ["qwen3_moe-f16", "mixtral-bf16"])
def test_a_config_naming_no_expert_count(checkpoints, tmp_path, case_id):
    def drop(config):
        for key in ("num_experts", "num_local_experts", "n_routed_experts"):
            config.pop(key, None)

    folder = variant(checkpoints, case_id, tmp_path, drop)
    refused(folder, tmp_path, CheckpointError, r"config\.json: no expert count \(looked for num_")


def test_a_layer_the_config_calls_moe_without_expert_tensors(checkpoints, tmp_path):
    folder = variant(
        checkpoints, "deepseek_v3", tmp_path, lambda c: c.update(first_k_dense_replace=0)
    )
    refused(
        folder,
        tmp_path,
        CheckpointError,
        r"layer 0: .*config\.json makes it an MoE layer, but the checkpoint holds no routed-expert gate_proj "
        r"for it \(looked for model\.layers\.0\.mlp\.experts\.0\.gate_proj\.weight",
    )
    folder = variant(
        checkpoints, "llama4_text", tmp_path / "later", lambda c: c.update(moe_layers=[1, 2])
    )
    refused(
        folder,
        tmp_path,
        CheckpointError,
        r"layer 2: .*config\.json makes it an MoE layer, but tensor "
        r"model\.layers\.2\.feed_forward\.experts\.gate_up_proj is not in the checkpoint",
    )


# ---- the generic path --------------------------------------------------------------------------
def test_unquantized_experts_under_another_familys_names_and_dtype(checkpoints, tmp_path):
    """OLMoE's experts renamed to Mixtral's pattern and stored as BF16: read through the generic path."""
    renamed = {
        ".mlp.experts.": ".block_sparse_moe.experts.",
        ".gate_proj.": ".w1.",
        ".mlp.gate.": ".block_sparse_moe.gate.",
    }

    def to_mixtral_names(tensors):
        for name in [n for n in tensors if ".mlp." in n]:
            new = name
            for old, replacement in renamed.items():
                new = new.replace(old, replacement)
            tensors[new] = tensors.pop(name).to(torch.bfloat16)

    checkpoint = checkpoints("olmoe")
    folder = variant(checkpoints, "olmoe", tmp_path, tensors_change=to_mixtral_names)
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.expert_gate_name(2, 3) == "model.layers.2.block_sparse_moe.experts.3.w1.weight"
        raw = src.read(arch.layer_tensors(2))
        ours = arch.expert_gate_weights(2, range(4), raw)
        assert raw[arch.expert_gate_name(2, 0)].info.dtype == "BF16"
    expected = (
        torch.from_numpy(checkpoint.layers[2].gates).to(torch.bfloat16).to(torch.float32).numpy()
    )
    np.testing.assert_array_equal(ours, expected)
