"""The builder end to end: exact vectors, the seed snippet, layer subsets, kill-and-resume, bad input.

Vectors are checked against a float64 LAPACK SVD of the exact dequantized weights that the
checkpoint generator recorded (``reference``), not against the builder's own arithmetic.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from vindex_hub.arch import deepseek_v4 as ds
from vindex_hub.builder import build_vindex
from vindex_hub.errors import OutputConflictError, UsageError
from vindex_hub.format import filenames, sidecar, statistics
from vindex_hub.load import Vindex
from vindex_hub.results import LayerResult, layer_result_path
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

from vindex_fixtures import NUM_FEATS, SEED_SNIPPET, SmallVindex

TINY = dict(num_layers=4, num_experts=4, hidden_size=64, moe_intermediate_size=32, num_shards=3)


def gap_allows(s: np.ndarray, i: int, rel_gap: float = 1e-3) -> bool:
    """Vector i is well defined when s_i is separated from its neighbours (relative to s_0)."""
    gaps = [abs(s[i] - s[j]) for j in (i - 1, i + 1) if 0 <= j < len(s)]
    return min(gaps) > rel_gap * s[0]


def matched_top_vectors(
    block: np.ndarray, gates: Iterable[np.ndarray], k: int, *, layer: int
) -> tuple[int, int]:
    """Each expert's top-``k`` vectors in ``block`` against a float64 LAPACK SVD of its gate
    rows: every vector whose singular value has a gap (``gap_allows``) must match to
    |cos| >= 0.9999. Returns (vectors checked, vectors in all), for a caller's coverage check."""
    checked = total = 0
    block = np.asarray(block, dtype=np.float64)
    for expert, gate in enumerate(gates):
        _, s, vt = scipy.linalg.svd(gate, lapack_driver="gesvd")
        for i in range(k):
            total += 1
            if gap_allows(s, i):
                assert abs(block[expert, i] @ vt[i]) >= 0.9999, (layer, expert, i)
                checked += 1
    return checked, total


def assert_build_matches(
    checkpoint: Path,
    out: Path,
    gates_by_layer: Mapping[int, np.ndarray],
    num_feats: int,
    *,
    model_type: str | None = None,
) -> None:
    """Build ``checkpoint`` into ``out`` (one process) and check it: exactly the layers of
    ``gates_by_layer`` (each [E, I, H], float64), of ``model_type`` when given, and at least 90%
    of all top-``num_feats`` vectors gap-allowed and matched (``matched_top_vectors``)."""
    build_vindex(checkpoint, out, num_feats=num_feats, device="cpu", progress=False, workers=1)
    checked = total = 0
    with Vindex.open(out) as vindex:
        assert vindex.layers == sorted(gates_by_layer)
        if model_type is not None:
            assert vindex.index.model_config.model_type == model_type
        for layer, gates in gates_by_layer.items():
            c, t = matched_top_vectors(vindex.layer(layer), gates, num_feats, layer=layer)
            checked, total = checked + c, total + t
    assert checked >= 0.9 * total


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", **TINY)


@pytest.fixture(scope="module")
def tiny_vindex(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """An uninterrupted build, the reference for resumed ones (folder name 'vindex' everywhere,
    since the card names its folder)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "vindex"
    build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    return out


# ---- correctness -------------------------------------------------------------------------------
def test_vectors_match_a_float64_lapack_svd_of_the_dequantized_weights(small_vindex: SmallVindex):
    index = sidecar.VindexIndex.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    checked = 0
    for layer in index.layer_ids:
        block = small_vindex.binary_layer(small_vindex.folder, layer)
        for expert in range(index.num_experts):
            _, s, vt = scipy.linalg.svd(
                small_vindex.gate_weight(layer, expert), lapack_driver="gesvd"
            )
            ours = block[expert].astype(np.float64)
            np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
            for i in range(NUM_FEATS):
                if gap_allows(s, i):
                    assert abs(ours[i] @ vt[i]) >= 0.9999, (layer, expert, i)
                    checked += 1
                # The documented sign rule: the entry of largest magnitude is positive.
                assert ours[i][np.argmax(np.abs(ours[i]))] > 0
    assert checked >= 0.9 * len(index.layer_ids) * index.num_experts * NUM_FEATS


def test_spectra_and_sidecar_stats_match_the_reference(small_vindex: SmallVindex):
    folder = small_vindex.folder
    index = sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())
    phase1 = json.loads((folder / filenames.PHASE1_JSON).read_text())
    phase2 = json.loads((folder / filenames.PHASE2_JSON).read_text())
    for layer in index.layer_ids:
        var = []
        for expert in range(index.num_experts):
            w = small_vindex.gate_weight(layer, expert)
            s = scipy.linalg.svdvals(w)
            var.append(np.sum(s[:NUM_FEATS] ** 2) / np.sum(w**2))
        entry = index.layer(layer)
        assert entry.median_var == pytest.approx(np.median(var), rel=1e-5)
        assert entry.q25_var == pytest.approx(np.quantile(var, 0.25), rel=1e-5)
        assert entry.q75_var == pytest.approx(np.quantile(var, 0.75), rel=1e-5)
        routed = phase1["layers"][str(layer)]["routed"]
        assert routed[statistics.median_var_key(NUM_FEATS)] == pytest.approx(
            np.median(var), rel=1e-5
        )
        assert routed[statistics.summary_var_key("max", NUM_FEATS)] == pytest.approx(
            max(var), rel=1e-5
        )

        shared_w = small_vindex.reference[
            ds.shared_tensor(ds.layer_block(layer), ds.GATE_PROJ, ds.WEIGHT)
        ]
        s = scipy.linalg.svdvals(shared_w.astype(np.float64))
        shared = phase1["layers"][str(layer)]["shared"]
        assert shared[statistics.var_key(NUM_FEATS)] == pytest.approx(
            np.sum(s[:NUM_FEATS] ** 2) / np.sum(s**2), rel=1e-5
        )

        router, _ = small_vindex.router(layer)
        s = scipy.linalg.svdvals(router.astype(np.float64))
        np.testing.assert_allclose(phase2["layers"][str(layer)]["singular_values"], s, rtol=1e-6)
        assert phase2["layers"][str(layer)]["s0_s1"] == pytest.approx(s[0] / s[1], rel=1e-6)


def test_layer_sha256_in_the_sidecar_is_the_binary(small_vindex: SmallVindex):
    import hashlib

    folder = small_vindex.folder
    index = sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())
    data = (folder / filenames.GATE_VECTORS_BIN).read_bytes()
    assert len(data) == index.total_bytes
    for layer in index.layer_ids:
        e = index.layer(layer)
        assert (
            hashlib.sha256(data[e.file_offset : e.file_offset + e.nbytes]).hexdigest() == e.sha256
        )


def test_the_seed_cards_usage_snippet_runs_unchanged(small_vindex: SmallVindex):
    seed_card = Path(__file__).parent / "data" / "deepseek-v4-flash-vindex.card.md"
    assert SEED_SNIPPET in seed_card.read_text()  # the snippet is the seed's, verbatim
    result = subprocess.run(
        [sys.executable, "-c", SEED_SNIPPET],
        cwd=small_vindex.folder,
        capture_output=True,
        text=True,
        check=True,
    )
    norm = float(result.stdout.rsplit(":", 1)[1])
    assert norm == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_two_builds_are_bit_identical(tiny_checkpoint: Path, tiny_vindex: Path, tmp_path: Path):
    again = tmp_path / "vindex"
    build_vindex(
        tiny_checkpoint, again, num_feats=NUM_FEATS, device="cpu", progress=False, batch_size=3
    )
    assert folder_bytes(again) == folder_bytes(tiny_vindex)


@pytest.mark.slow
def test_a_layer_subset_is_a_valid_vindex(tiny_checkpoint: Path, tiny_vindex: Path, tmp_path: Path):
    from vindex_hub.verify import verify_vindex

    out = tmp_path / "subset"
    build_vindex(
        tiny_checkpoint, out, num_feats=NUM_FEATS, layers="1-2", device="cpu", progress=False
    )
    index = sidecar.VindexIndex.loads((out / filenames.SIDECAR_JSON).read_text())
    full = sidecar.VindexIndex.loads((tiny_vindex / filenames.SIDECAR_JSON).read_text())
    assert index.layer_ids == [1, 2]
    assert index.layer(1).file_offset == 0
    assert [index.layer(i).sha256 for i in (1, 2)] == [full.layer(i).sha256 for i in (1, 2)]
    assert verify_vindex(out).ok


# ---- resumable builds ----------------------------------------------------------------------------
class Crash(Exception):
    """Stands in for the process dying at a chosen point."""


def crash_on_call(monkeypatch, target: str, call: int = 1) -> None:
    """Make the ``call``-th call of ``target`` (``pkg.module.function`` or
    ``pkg.module.Class.method``) raise ``Crash`` instead of running."""
    import importlib

    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
            break
        except ModuleNotFoundError:
            continue
    for name in parts[cut:-1]:
        owner = getattr(owner, name)
    original = getattr(owner, parts[-1])
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Crash(target)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, parts[-1], wrapper)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,call",
    [
        ("vindex_hub.writers.binary.GateVectorsWriter.write_layer", 2),  # before layer 1 is written
        ("vindex_hub.results.LayerResult.save", 3),  # layer 2 written, not yet recorded
        ("vindex_hub.writers.derived.phase1_json", 1),  # binary final, derived files not yet
        ("vindex_hub.writers.derived.write_mirror", 1),
        ("vindex_hub.writers.derived.write_card", 1),
    ],
)
def test_a_build_crashed_anywhere_resumes_bit_identical(
    target, call, tiny_checkpoint: Path, tiny_vindex: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "vindex"
    with monkeypatch.context() as patch:
        crash_on_call(patch, target, call)
        with pytest.raises(Crash):
            build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    # Nothing looks finished: the sidecar (written last) is absent.
    assert not (out / filenames.SIDECAR_JSON).exists()
    summary = build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert folder_bytes(out) == folder_bytes(tiny_vindex)
    assert not (out / filenames.BUILD_STATE_DIR).exists()
    if "write_layer" in target:
        assert summary.built_layers == [1, 2, 3]
    elif "save" in target:
        assert summary.built_layers == [2, 3]
    else:
        assert summary.built_layers == []


@pytest.mark.slow
def test_a_damaged_resumed_layer_is_computed_again(
    tiny_checkpoint: Path, tiny_vindex: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "vindex"
    crash_on_call(monkeypatch, "vindex_hub.writers.derived.write_mirror")
    with pytest.raises(Crash):
        build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    monkeypatch.undo()
    # Simulate a crash before the final rename, with layer 0's block damaged on disk.
    state = out / filenames.BUILD_STATE_DIR
    partial = state / "gate_vectors.bin.partial"
    os.replace(out / filenames.GATE_VECTORS_BIN, partial)
    with open(partial, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    summary = build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert summary.built_layers == [0]
    assert folder_bytes(out) == folder_bytes(tiny_vindex)


def kill_after_first_layer(cmd: list[str], out: Path, timeout: float = 180) -> None:
    """Run a build command and SIGKILL it as soon as its first layer is recorded in ``out``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_layer = layer_result_path(out / filenames.BUILD_STATE_DIR, 0)
    deadline = time.monotonic() + timeout
    while not first_layer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"


@pytest.mark.slow
def test_a_killed_build_process_resumes_bit_identical(tmp_path: Path):
    """A real SIGKILL in the middle of the layer loop, then the same command again."""
    dims = dict(
        num_layers=4, num_experts=16, hidden_size=1024, moe_intermediate_size=512, num_shards=2
    )
    ckpt = make_deepseek_v4_checkpoint(tmp_path / "ckpt", **dims)
    cmd = [
        sys.executable,
        "-m",
        "vindex_hub",
        "build",
        str(ckpt),
        "--num-feats",
        "16",
        "--quiet",
        "--device",
        "cpu",
    ]
    out = tmp_path / "killed" / "vindex"
    kill_after_first_layer([*cmd, "-o", str(out)], out)
    assert (
        not (out / filenames.GATE_VECTORS_BIN).exists()
        and not (out / filenames.SIDECAR_JSON).exists()
    )

    resumed = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    whole = tmp_path / "whole" / "vindex"
    subprocess.run([*cmd, "-o", str(whole)], check=True, capture_output=True)
    assert folder_bytes(out) == folder_bytes(whole)


@pytest.mark.slow
def test_a_finished_build_run_again_does_nothing(
    tiny_checkpoint: Path, tiny_vindex: Path, tmp_path: Path
):
    out = Path(shutil.copytree(tiny_vindex, tmp_path / "vindex"))
    before = folder_bytes(out)
    summary = build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert summary.built_layers == [] and summary.already_complete
    assert folder_bytes(out) == before


def test_a_finished_build_asked_with_other_options_is_refused(
    tiny_checkpoint, tiny_vindex, tmp_path
):
    out = Path(shutil.copytree(tiny_vindex, tmp_path / "vindex"))
    before = folder_bytes(out)
    with pytest.raises(OutputConflictError, match="larql_router False here, True asked"):
        build_vindex(
            tiny_checkpoint,
            out,
            num_feats=NUM_FEATS,
            device="cpu",
            progress=False,
            larql_router=True,
        )
    assert folder_bytes(out) == before
    (out / filenames.GATE_VECTORS_BIN).unlink()
    with pytest.raises(OutputConflictError, match="gate_vectors.bin is missing"):
        build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)


@pytest.mark.slow
def test_a_resumed_build_never_mixes_devices(tiny_checkpoint, tmp_path, monkeypatch):
    """CPU and CUDA results differ in the last bits, so a build started on one must finish on it."""
    from vindex_hub.builder import plan as build_plan

    out = tmp_path / "vindex"
    crash_on_call(monkeypatch, "vindex_hub.results.LayerResult.save", 2)
    with pytest.raises(Crash):
        build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(build_plan.routes, "resolve_device", lambda device: "cuda")
    with pytest.raises(OutputConflictError, match="device 'cpu' here, 'cuda' asked"):
        build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cuda", progress=False)


@pytest.mark.slow
def test_the_reader_thread_stops_when_the_build_fails(tiny_checkpoint, tmp_path, monkeypatch):
    """A failure while layers are queued must not leave the reader blocked holding a layer."""
    import threading

    crash_on_call(monkeypatch, "vindex_hub.numerics.svd.top_k_right_singular", 1)
    with pytest.raises(Crash):
        # Two layers: the reader queues layer 1 and then its end marker while layer 0 fails.
        build_vindex(
            tiny_checkpoint,
            tmp_path / "v",
            num_feats=NUM_FEATS,
            layers="0-1",
            device="cpu",
            progress=False,
            workers=1,  # decomposed in this process, where the crash is planted
        )
    assert not [t for t in threading.enumerate() if t.name == "vindex-reader"]


def test_layer_result_round_trips_without_pickle(tmp_path: Path):
    rng = np.random.default_rng(0)
    r = LayerResult(
        layer=3,
        sha256="ab" * 32,
        singular_values=rng.random((4, 8), dtype=np.float32),
        frobenius_norm=rng.random(4),
        router_singular_values=rng.random(4),
        router_frobenius_norm=2.5,
        shared_singular_values=None,
        shared_frobenius_norm=None,
    )
    r.save(tmp_path / "r.safetensors")
    back = LayerResult.load(tmp_path / "r.safetensors")
    assert back.layer == 3 and back.sha256 == r.sha256 and back.shared_singular_values is None
    np.testing.assert_array_equal(back.singular_values, r.singular_values)
    np.testing.assert_array_equal(back.frobenius_norm, r.frobenius_norm)


# ---- bad input: a clear error, no complete-looking output ------------------------------------------
def test_output_folder_holding_another_models_vindex_is_refused(
    tiny_checkpoint, tiny_vindex, tmp_path
):
    out = Path(shutil.copytree(tiny_vindex, tmp_path / "vindex"))
    before = folder_bytes(out)
    with pytest.raises(OutputConflictError, match="num_feats"):
        build_vindex(tiny_checkpoint, out, num_feats=4, device="cpu", progress=False)
    other = make_deepseek_v4_checkpoint(tmp_path / "other", **TINY)
    with pytest.raises(OutputConflictError, match="different vindex"):
        build_vindex(other, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert folder_bytes(out) == before  # nothing lost


@pytest.mark.slow
def test_an_unfinished_build_of_other_settings_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "vindex"
    crash_on_call(monkeypatch, "vindex_hub.writers.derived.write_mirror")
    with pytest.raises(Crash):
        build_vindex(tiny_checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    with pytest.raises(OutputConflictError, match="unfinished build"):
        build_vindex(
            tiny_checkpoint, out, num_feats=NUM_FEATS, layers="0-1", device="cpu", progress=False
        )


def test_num_feats_above_the_rank_bound_is_a_usage_error(tiny_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="rank bound 32"):
        build_vindex(tiny_checkpoint, tmp_path / "v", num_feats=33, device="cpu", progress=False)
    assert not (tmp_path / "v").exists()


def _truncate_a_shard(ckpt: Path) -> str:
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name


def _lfs_pointer_shard(ckpt: Path) -> str:
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    shard.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n"
    )
    return shard.name


def _unsupported_architecture(ckpt: Path) -> str:
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(config))
    return "llama"


def _nan_scale(ckpt: Path) -> str:
    """E8M0 byte 255 (NaN) in one routed expert's scale tensor."""
    from safetensors import safe_open

    name = ds.expert_tensor(ds.layer_block(2), 1, ds.GATE_PROJ, ds.SCALE)
    shard = (
        ckpt / json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][name]
    )
    with safe_open(str(shard), framework="numpy") as f:
        del f  # only to show the tensor is there; offsets come from the header below
    from vindex_hub.source.local import LocalCheckpoint

    with LocalCheckpoint(ckpt) as src:
        start = src.tensor_info(name).start
    with open(shard, "r+b") as f:
        f.seek(start + 5)
        f.write(b"\xff")
    return name


def _missing_tensor(ckpt: Path) -> str:
    index_path = ckpt / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = ds.expert_tensor(ds.layer_block(3), 0, ds.GATE_PROJ, ds.WEIGHT)
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    return name


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [_truncate_a_shard, _lfs_pointer_shard, _unsupported_architecture, _nan_scale, _missing_tensor],
)
def test_bad_checkpoints_fail_with_a_clear_error_and_no_vindex(damage, tiny_checkpoint, tmp_path):
    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    culprit = damage(ckpt)
    out = tmp_path / "vindex"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vindex_hub",
            "build",
            str(ckpt),
            "-o",
            str(out),
            "--num-feats",
            "8",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vindex-hub build: error:"), result.stderr
    assert culprit in lines[0]
    assert (
        not (out / filenames.SIDECAR_JSON).exists()
        and not (out / filenames.GATE_VECTORS_BIN).exists()
    )
