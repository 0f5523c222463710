"""Llama-4's FP8 releases (``quant_method: fbgemm_fp8``), as real safetensors checkpoints.

A tiny random ``llama4_text`` and multimodal ``llama4`` model is built and saved by transformers
itself (``family_registry.build_model`` + ``save_pretrained``); its fused experts are then
rewritten into the layout the release stores, quantized here from the spec: transformers'
``integrations/fbgemm_fp8.py`` (``FbgemmFp8Quantize.convert`` and
``FbgemmFp8Llama4TextExperts``) stores ``gate_up_proj`` [E, H, 2I] as F8_E4M3 beside a
``gate_up_proj_scale`` [E, 1, 2I] F32, quantized per row of its transpose [E, 2I, H] (one scale
per output), and each Linear it converts (``FbgemmFp8Linear``) as an F8_E4M3 ``weight`` with a
``weight_scale`` [O, 1]; FBGEMM's ``quantize_fp8_per_row`` scales a row by 448 / absmax and keeps
the reciprocal. Modules in ``modules_to_not_convert`` stay float: one release below keeps the
shared expert float, the other converts it.

The reference is the float64 dequantization of those quantized values (torch's own E4M3
decoding), never our readers: the adapter's gate rows must equal it bit for bit, and the built
vindex's vectors must match a LAPACK SVD of it. Bad input (a missing scale, a scale or weight of
the wrong shape or dtype) is one line naming the tensor, and nothing is written.
"""

from __future__ import annotations

import json
import re
import shutil
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
from vindex_hub.arch.layouts import FLOAT, FP8ScaledCodec, FusedFP8Columns
from vindex_hub.builder import build_vindex
from vindex_hub.errors import CheckpointError
from vindex_hub.format import filenames
from vindex_hub.source.local import LocalCheckpoint

pytestmark = pytest.mark.slow
NUM_FEATS = 4
SAFETENSORS = "model.safetensors"
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max, FBGEMM's row-wise target
FUSED = re.compile(r"\.layers\.(\d+)\.feed_forward\.experts\.gate_up_proj$")
SHARED = re.compile(r"\.layers\.(\d+)\.feed_forward\.shared_expert\.gate_proj\.weight$")
# Attention and the router stay BF16 in the releases; here the shared expert too, or not.
KEEP_FLOAT = [
    "self_attn",
    "feed_forward.router",
    "lm_head",
    "vision_model",
    "multi_modal_projector",
]


def fbgemm_config(keep_float: list[str]) -> dict[str, Any]:
    return {
        "quant_method": "fbgemm_fp8",
        "activation_scale_ub": 1200.0,
        "modules_to_not_convert": keep_float,
    }


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """FBGEMM's ``quantize_fp8_per_row`` on [R, C]: per row, q = e4m3(w * 448 / absmax), kept
    with the reciprocal 1 / (448 / absmax) as its F32 scale [R]; reference q * scale in float64."""
    w = w.float()
    multiplier = E4M3_MAX / w.abs().amax(dim=1).clamp(min=1e-12)
    q = (w * multiplier[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    scale = (1.0 / multiplier).float()
    ref = q.to(torch.float64).numpy() * scale.double().numpy()[:, None]
    return q, scale, ref


class Release:
    def __init__(self, folder: Path, model_type: str) -> None:
        self.folder, self.model_type = folder, model_type
        self.refs: dict[int, np.ndarray] = {}  # [E, I, H] float64 gate rows a layer
        self.shared: dict[int, np.ndarray] = {}
        self.fused: dict[int, str] = {}  # the gate_up_proj tensor's name a layer


def make_release(model_type: str, folder: Path, shared_fp8: bool) -> Release:
    model = build_model(model_type)
    model.save_pretrained(folder)
    tensors = load_file(folder / SAFETENSORS)
    release = Release(folder, model_type)
    fused = {int(m.group(1)): n for n in tensors if (m := FUSED.search(n))}
    num_experts = next(iter(tensors[n] for n in fused.values())).shape[0]
    expected = reference(model, HIDDEN, num_experts)
    assert sorted(fused) == sorted(expected) and fused
    for layer, name in fused.items():
        w = tensors.pop(name)  # [E, H, 2I], x @ W
        e, h, two_i = w.shape
        i = two_i // 2
        # the saved tensor is the in-memory experts' (so the reference is the model's own)
        np.testing.assert_array_equal(
            w[:, :, :i].transpose(1, 2).double().numpy(), expected[layer].gates
        )
        # as FbgemmFp8Quantize.convert: transpose to [E, 2I, H], quantize per row, transpose back
        q, scale, ref = quantize_rows(w.transpose(1, 2).reshape(e * two_i, h))
        tensors[name] = q.reshape(e, two_i, h).transpose(1, 2).contiguous()
        tensors[f"{name}_scale"] = scale.reshape(e, 1, two_i)
        release.refs[layer] = ref.reshape(e, two_i, h)[:, :i]
        release.fused[layer] = name
    for name in [n for n in tensors if SHARED.search(n)]:
        layer = int(SHARED.search(name).group(1))
        np.testing.assert_array_equal(tensors[name].double().numpy(), expected[layer].shared)
        if shared_fp8:  # as FbgemmFp8Linear stores it: weight_scale [O, 1]
            q, scale, release.shared[layer] = quantize_rows(tensors[name])
            tensors[name] = q
            tensors[name.replace(".weight", ".weight_scale")] = scale[:, None].contiguous()
        else:
            release.shared[layer] = tensors[name].double().numpy()
    assert sorted(release.shared) == sorted(expected)
    save_file(tensors, folder / SAFETENSORS, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    keep = KEEP_FLOAT if shared_fp8 else [*KEEP_FLOAT, "feed_forward.shared_expert"]
    config["quantization_config"] = fbgemm_config(keep)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return release


CASES = {
    "llama4_text-shared-fp8": ("llama4_text", True),
    "llama4-shared-bf16": ("llama4", False),
}
_made: dict[str, Release] = {}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    def get(case: str) -> Release:
        if case not in _made:
            model_type, shared_fp8 = CASES[case]
            folder = tmp_path_factory.mktemp(case) / "checkpoint"
            _made[case] = make_release(model_type, folder, shared_fp8)
        return _made[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_an_fbgemm_fp8_release_builds_against_its_float64_dequantization(case, release, tmp_path):
    r = release(case)
    with LocalCheckpoint(r.folder) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.model_type == r.model_type
        assert isinstance(arch.routed, FusedFP8Columns)
        assert arch.shared_codec == (FP8ScaledCodec(per_row=True) if CASES[case][1] else FLOAT)
        assert arch.moe_layers() == sorted(r.refs)
        for layer, ref in r.refs.items():
            names = arch.layer_tensors(layer)
            assert f"{r.fused[layer]}_scale" in names and set(names) <= src.tensor_names()
            raw = src.read(names)
            gates = arch.expert_gate_weights(layer, range(len(ref)), raw)
            # exact: each product of an E4M3 value and its F32 scale is one float32 rounding
            np.testing.assert_array_equal(gates, ref.astype(np.float32))
            shared = arch.shared_gate_weight(layer, raw)
            np.testing.assert_array_equal(shared, r.shared[layer].astype(np.float32))
    assert_build_matches(r.folder, tmp_path / "vindex", r.refs, NUM_FEATS, model_type=r.model_type)


def test_the_scale_is_per_output_of_the_gate(release):
    """By hand, expert 1's gate row 2 is its E4M3 bytes of column 2 times scale [1, 0, 2]."""
    r = release("llama4_text-shared-fp8")
    layer = min(r.refs)
    tensors = load_file(r.folder / SAFETENSORS)
    q, s = tensors[r.fused[layer]], tensors[f"{r.fused[layer]}_scale"]
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert list(s.shape) == [q.shape[0], 1, q.shape[2]]
    row = q[1, :, 2].to(torch.float64).numpy() * float(s[1, 0, 2])
    np.testing.assert_array_equal(row, r.refs[layer][1, 2])
    assert not np.array_equal(r.refs[layer][1, 2], r.refs[layer][1, 3])


def test_without_tensor_names_the_config_decides(release):
    for case, shared_fp8 in (("llama4_text-shared-fp8", True), ("llama4-shared-bf16", False)):
        r = release(case)
        config = json.loads((r.folder / "config.json").read_text())
        arch = get_architecture(config, tensor_names=None)
        assert isinstance(arch.routed, FusedFP8Columns)
        assert arch.expert_gate_name(min(r.refs), 0) == r.fused[min(r.refs)]
        assert arch.shared_codec == (FP8ScaledCodec(per_row=True) if shared_fp8 else FLOAT)


# ---- bad input: one line naming the tensor, nothing written ------------------------------------
def _changed(r: Release, tmp_path: Path, edit) -> Path:
    folder = Path(shutil.copytree(r.folder, tmp_path / "copy"))
    data = load_file(folder / SAFETENSORS)
    edit(data)
    save_file(data, folder / SAFETENSORS, metadata={"format": "pt"})
    return folder


def _refused(folder: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        build_vindex(folder, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / filenames.GATE_VECTORS_BIN).exists()


def test_a_missing_gate_up_proj_scale_names_it(release, tmp_path):
    r = release("llama4_text-shared-fp8")
    first, last = min(r.refs), max(r.refs)
    scale = f"{r.fused[first]}_scale"
    # in the first MoE layer, where the layout is chosen: named, not read as a float tensor
    folder = _changed(r, tmp_path, lambda t: t.pop(scale))
    _refused(
        folder, tmp_path, rf"layer {first}: tensor {re.escape(scale)} is not in the checkpoint"
    )
    shutil.rmtree(folder)
    scale = f"{r.fused[last]}_scale"
    folder = _changed(r, tmp_path, lambda t: t.pop(scale))
    _refused(
        folder, tmp_path, rf"layer {last}: .*tensor {re.escape(scale)} is not in the checkpoint"
    )


@pytest.mark.parametrize(
    "part, change, match",
    [
        ("_scale", lambda t: t[:, 0].contiguous(), r"shape \[4, 48\] does not split"),
        ("_scale", lambda t: t.to(torch.int32), r"dtype I32, expected BF16 or F16 or F32"),
        ("", lambda t: t.float(), r"dtype F32, expected F8_E4M3"),
        ("", lambda t: t[:, :, :-2].contiguous(), r"shape \[4, 64, 46\] does not split"),
    ],
    ids=["scale-shape", "scale-dtype", "weight-dtype", "weight-shape"],
)
def test_a_tensor_that_disagrees_names_it(release, tmp_path, part, change, match):
    r = release("llama4_text-shared-fp8")
    name = r.fused[max(r.refs)] + part

    def edit(tensors):
        tensors[name] = change(tensors[name])

    _refused(_changed(r, tmp_path, edit), tmp_path, rf"tensor {re.escape(name)}: {match}")


def test_a_shared_weight_scale_of_the_wrong_shape_names_it(release, tmp_path):
    r = release("llama4_text-shared-fp8")
    tensors = load_file(r.folder / SAFETENSORS)
    name = next(n for n in tensors if SHARED.search(n)).replace(".weight", ".weight_scale")

    def edit(t):
        t[name] = t[name][:-1].contiguous()

    _refused(_changed(r, tmp_path, edit), tmp_path, rf"tensor {re.escape(name)}: shape \[23, 1\]")
