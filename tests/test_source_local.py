"""LocalCheckpoint and the shared safetensors header parser, on real generated shards and on
every kind of broken file the builder must refuse."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vindex_hub.errors import CheckpointError
from vindex_hub.source.local import WEIGHT_MAP_FILE, LocalCheckpoint
from vindex_hub.source.safetensors_format import (
    MAX_HEADER_BYTES,
    PREFIX_BYTES,
    header_length,
    parse_header,
)
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 3600000000\n"
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "model",
        num_layers=3,
        num_experts=4,
        hidden_size=128,
        moe_intermediate_size=64,
        num_shards=3,
        vocab_size=64,
    )


@pytest.fixture
def ckpt(pristine, tmp_path) -> Path:
    """A private copy a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "model"))


def weight_map(root: Path) -> dict[str, str]:
    return json.loads((root / WEIGHT_MAP_FILE).read_text())["weight_map"]


def shard_of(root: Path, name: str) -> Path:
    return root / weight_map(root)[name]


def other_shard_tensor(root: Path, shard: Path) -> str:
    return next(n for n, s in weight_map(root).items() if s != shard.name)


EXPERT_W1 = "layers.1.ffn.experts.2.w1.weight"


# ---- reading --------------------------------------------------------------------------------
def test_reads_every_tensor_byte_exact_like_safetensors(pristine):
    src = LocalCheckpoint(pristine)
    wm = weight_map(pristine)
    assert src.tensor_names() == frozenset(wm)
    assert src.config["model_type"] == "deepseek_v4"
    assert (src.repo_id, src.revision, src.path) == (None, None, str(pristine))
    raw = src.read(sorted(wm))
    for shard in set(wm.values()):
        with safe_open(pristine / shard, framework="pt") as f:
            for name in f.keys():
                t = raw[name]
                expect = f.get_tensor(name).contiguous().view(-1).view(torch.uint8).numpy()
                assert t.data.dtype == np.uint8 and t.data.ndim == 1
                assert t.data.nbytes == t.info.nbytes == expect.nbytes
                assert np.array_equal(t.data, expect), name
                assert t.info.shard == shard
                assert list(t.info.shape) == list(f.get_slice(name).get_shape())
    src.close()


def test_offsets_are_absolute(pristine):
    with LocalCheckpoint(pristine) as src:
        info = src.tensor_info(EXPERT_W1)
        blob = (pristine / info.shard).read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        begin, end = header[EXPERT_W1]["data_offsets"]
        assert (info.start, info.end) == (8 + n + begin, 8 + n + end)
        assert info.dtype == "I8" and info.shape == (64, 64)


def test_single_file_checkpoint(tmp_path):
    root = make_deepseek_v4_checkpoint(
        tmp_path / "one",
        num_layers=2,
        num_experts=2,
        hidden_size=64,
        moe_intermediate_size=32,
        num_shards=1,
        vocab_size=16,
    )
    assert not (root / WEIGHT_MAP_FILE).exists()
    with LocalCheckpoint(root) as src:
        assert "layers.0.ffn.gate.weight" in src.tensor_names()
        assert src.read(["layers.1.ffn.gate.bias"])["layers.1.ffn.gate.bias"].data.nbytes == 2 * 4


# ---- missing things -------------------------------------------------------------------------
def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        LocalCheckpoint(ckpt)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        LocalCheckpoint(tmp_path / "nope")


def test_no_weights_at_all(ckpt):
    (ckpt / WEIGHT_MAP_FILE).unlink()
    with pytest.raises(
        CheckpointError, match="neither model.safetensors.index.json nor model.safetensors"
    ):
        LocalCheckpoint(ckpt)


def test_tensor_not_in_weight_map(pristine):
    with LocalCheckpoint(pristine) as src:
        with pytest.raises(
            CheckpointError,
            match=r"tensor layers\.9\.ffn\.gate\.weight not in weight_map of .*model\.safetensors\.index\.json",
        ):
            src.read(["layers.9.ffn.gate.weight"])


def test_weight_map_points_to_wrong_shard(ckpt):
    index = json.loads((ckpt / WEIGHT_MAP_FILE).read_text())
    shard = index["weight_map"][EXPERT_W1]
    index["weight_map"]["layers.0.ffn.experts.0.w9.weight"] = shard
    (ckpt / WEIGHT_MAP_FILE).write_text(json.dumps(index))
    with LocalCheckpoint(ckpt) as src:
        with pytest.raises(
            CheckpointError,
            match=rf"weight_map says layers\.0\.ffn\.experts\.0\.w9\.weight is in shard {shard} but {shard} has no such tensor",
        ):
            src.tensor_info("layers.0.ffn.experts.0.w9.weight")


def test_missing_shard_file_only_fails_its_tensors(ckpt):
    shard = shard_of(ckpt, EXPERT_W1)
    shard.unlink()
    with LocalCheckpoint(ckpt) as src:
        with pytest.raises(CheckpointError, match=rf"shard file .*{shard.name} is missing"):
            src.read([EXPERT_W1])
        other = other_shard_tensor(ckpt, shard)
        assert src.read([other])[other].data.nbytes > 0


def test_unopenable_shard_names_the_file(ckpt):
    shard = shard_of(ckpt, EXPERT_W1)
    shard.unlink()
    shard.mkdir()  # IsADirectoryError on open: an OSError that is not FileNotFoundError
    with LocalCheckpoint(ckpt) as src:
        with pytest.raises(
            CheckpointError,
            match=rf"shard file .*{shard.name} \(listed in .*{WEIGHT_MAP_FILE}\): cannot open",
        ):
            src.read([EXPERT_W1])


def test_read_after_close_is_refused_and_opens_nothing(pristine):
    src = LocalCheckpoint(pristine)
    first = src.read([EXPERT_W1])[EXPERT_W1].data.copy()
    other = other_shard_tensor(pristine, shard_of(pristine, EXPERT_W1))
    src.close()
    fds_before = len(list(Path("/proc/self/fd").iterdir()))
    for name in (EXPERT_W1, other):  # a shard opened before close, and one never opened
        with pytest.raises(
            CheckpointError, match=rf"checkpoint {pristine} is closed: cannot read shard"
        ):
            src.read([name])
    assert len(list(Path("/proc/self/fd").iterdir())) == fds_before
    src.close()  # closing twice is fine
    with LocalCheckpoint(pristine) as again:  # a new source reads the same bytes
        assert np.array_equal(again.read([EXPERT_W1])[EXPERT_W1].data, first)


def test_weight_map_escaping_the_folder(ckpt):
    index = json.loads((ckpt / WEIGHT_MAP_FILE).read_text())
    index["weight_map"][EXPERT_W1] = "../elsewhere.safetensors"
    (ckpt / WEIGHT_MAP_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        LocalCheckpoint(ckpt)


def test_index_without_weight_map(ckpt):
    (ckpt / WEIGHT_MAP_FILE).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="no weight_map"):
        LocalCheckpoint(ckpt)


# ---- broken shards: each fails only the tensors in it ------------------------------------------
def break_shard_and_check(ckpt: Path, content: bytes, match: str) -> None:
    shard = shard_of(ckpt, EXPERT_W1)
    shard.write_bytes(content)
    with LocalCheckpoint(ckpt) as src:
        with pytest.raises(CheckpointError, match=match) as exc:
            src.read([EXPERT_W1])
        assert shard.name in str(exc.value)
        other = other_shard_tensor(ckpt, shard)  # other shards never looked at
        assert src.read([other])[other].data.nbytes == src.tensor_info(other).nbytes


def test_lfs_pointer(ckpt):
    break_shard_and_check(ckpt, LFS_POINTER.encode(), r"Git-LFS pointer.*git lfs pull")


def test_truncated_shard(ckpt):
    shard = shard_of(ckpt, EXPERT_W1)
    break_shard_and_check(ckpt, shard.read_bytes()[:-100], "truncated")


def test_garbage_header(ckpt):
    break_shard_and_check(
        ckpt, struct.pack("<Q", 20) + b"\x89PNG garbage bytes!!" + bytes(50), "not valid JSON"
    )


def test_header_not_an_object(ckpt):
    break_shard_and_check(ckpt, struct.pack("<Q", 2) + b"[]", "JSON list, expected an object")


def test_oversized_header(ckpt):
    break_shard_and_check(ckpt, struct.pack("<Q", 1 << 40) + bytes(100), "oversized header")


def test_header_past_end_of_file(ckpt):
    break_shard_and_check(ckpt, struct.pack("<Q", 5000) + b"{}", "oversized header")


def test_file_shorter_than_prefix(ckpt):
    break_shard_and_check(ckpt, b"\x01\x02\x03", "too short")


# ---- the parser on its own (what the remote source calls) -----------------------------------
def encode(header: dict, data_size: int) -> tuple[bytes, bytes, int]:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)), body, PREFIX_BYTES + len(body) + data_size


def test_parse_header_absolute_offsets_and_metadata():
    prefix, body, size = encode(
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "F8_E8M0", "shape": [2, 3], "data_offsets": [0, 6]},
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [6, 14]},
        },
        14,
    )
    assert header_length(prefix, size, file="f") == len(body)
    infos = parse_header(prefix, body, size, shard="s.safetensors", file="http://h/s.safetensors")
    assert set(infos) == {"a", "b"}
    base = PREFIX_BYTES + len(body)
    assert (infos["b"].start, infos["b"].end, infos["b"].shape, infos["b"].shard) == (
        base + 6,
        base + 14,
        (4,),
        "s.safetensors",
    )


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"dtype": "F4_E9", "shape": [2], "data_offsets": [0, 2]}, r"t: unknown dtype 'F4_E9'"),
        (
            {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
            r"t: 8 bytes for a F32 tensor of shape \[3\] \(expected 12\)",
        ),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 64]}, "truncated"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "bad shape"),
        ("nope", "not an object"),
    ],
)
def test_parse_header_rejects(entry, match):
    prefix, body, size = encode({"t": entry}, 16)
    with pytest.raises(CheckpointError, match=match) as exc:
        parse_header(prefix, body, size, shard="x.safetensors", file="/data/x.safetensors")
    assert "/data/x.safetensors" in str(exc.value)


def test_header_length_limits():
    assert MAX_HEADER_BYTES == 100_000_000
    with pytest.raises(CheckpointError, match="oversized header"):
        header_length(struct.pack("<Q", MAX_HEADER_BYTES + 1), 10**12, file="big")
    with pytest.raises(CheckpointError, match="Git-LFS pointer"):
        header_length(LFS_POINTER.encode()[:8], 130, file="p")
    with pytest.raises(CheckpointError, match="got 3 header bytes"):
        parse_header(struct.pack("<Q", 10), b"{}x", 100, shard="x")
