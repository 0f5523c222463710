"""HubCheckpoint: a DeepSeek-V4-format checkpoint built straight from a model repo on the local
Hub server, with the real ``huggingface_hub`` client, checked against a build of the same local
folder and against the server's byte counts (exact ranges, no over-fetch, nothing fetched twice).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi

from vindex_hub.arch import get_architecture
from vindex_hub.builder import build_vindex
from vindex_hub.errors import (
    CheckpointError,
    HubError,
    RemoteNotFoundError,
    UnsupportedArchitectureError,
)
from vindex_hub.format import filenames
from vindex_hub.results import layer_result_path
from vindex_hub.source.hub import HubCheckpoint, coalesce_ranges
from vindex_hub.source.local import CONFIG_FILE, SINGLE_FILE, WEIGHT_MAP_FILE, LocalCheckpoint
from vindex_hub.source.safetensors_format import PREFIX_BYTES
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

SYNTH = dict(num_layers=4, num_experts=8, hidden_size=256, moe_intermediate_size=128, num_shards=4)
NUM_FEATS = 16
CHECKPOINT_REPO = "tests/remote-source-checkpoint"


# ---- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("remote-src") / "ckpt", **SYNTH)


@pytest.fixture(scope="module")
def local_vindex(checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local-build") / "vindex"
    build_vindex(checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def remote_repo(local_hub, checkpoint: Path) -> str:
    """The checkpoint uploaded once to a model repo (tests that change a repo use their own)."""
    upload(checkpoint, CHECKPOINT_REPO)
    return CHECKPOINT_REPO


@pytest.fixture
def fresh_header_cache(tmp_path, monkeypatch) -> Path:
    """An empty block cache, so shard headers are fetched (and counted) again."""
    root = tmp_path / "block-cache"
    monkeypatch.setenv("VINDEX_HUB_CACHE", str(root))
    return root


def upload(folder: Path, repo_id: str) -> str:
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model").oid


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def shard_bytes_sent(hub, repo_id: str, folder: Path) -> dict[str, int]:
    stats = hub.stats()
    return {s: stats.file(repo_id, s, repo_type="model").bytes_sent for s in shard_files(folder)}


def header_bytes(folder: Path, shard: str) -> int:
    with open(folder / shard, "rb") as f:
        return PREFIX_BYTES + int.from_bytes(f.read(PREFIX_BYTES), "little")


def layer_infos(folder: Path, layers) -> list:
    with LocalCheckpoint(folder) as src:
        arch = get_architecture(src.config)
        return [[src.tensor_info(n) for n in arch.layer_tensors(layer)] for layer in layers]


def planned_bytes(infos_per_read) -> dict[str, int]:
    """Bytes a reader that coalesces each ``read`` call's ranges per shard asks for, per shard."""
    out: dict[str, int] = defaultdict(int)
    for infos in infos_per_read:
        by_shard = defaultdict(list)
        for i in infos:
            by_shard[i.shard].append((i.start, i.end))
        for shard, ranges in by_shard.items():
            out[shard] += sum(end - start for start, end in coalesce_ranges(ranges))
    return dict(out)


def assert_same_vindex(remote: Path, local: Path, *, repo_id: str, revision: str) -> None:
    """Bit-identical binary, sidecar (but for its source fields), phase JSONs and layer hashes."""
    assert (remote / filenames.GATE_VECTORS_BIN).read_bytes() == (
        local / filenames.GATE_VECTORS_BIN
    ).read_bytes()
    ours, theirs = (json.loads((f / filenames.SIDECAR_JSON).read_text()) for f in (remote, local))
    assert ours["source"]["repo_id"] == repo_id and ours["source"]["revision"] == revision
    assert ours.pop("source") != theirs.pop("source")
    assert ours == theirs
    assert {k: v["sha256"] for k, v in ours["layers"].items()} == {
        k: v["sha256"] for k, v in theirs["layers"].items()
    }
    for name in (filenames.PHASE1_JSON, filenames.PHASE2_JSON):
        ours, theirs = (json.loads((f / name).read_text()) for f in (remote, local))
        assert (ours.pop("model"), ours.pop("revision")) == (repo_id, revision), name
        del theirs["model"], theirs["revision"]
        assert ours == theirs, name


# ---- coalescing (pure) ---------------------------------------------------------------------------
def test_coalesce_merges_touching_ranges_and_bridges_only_small_gaps_within_budget():
    assert coalesce_ranges([]) == []
    assert coalesce_ranges([(10, 20), (0, 10), (15, 30)]) == [(0, 30)]
    # A 10-byte gap costs 1% of 1000 needed bytes: bridged; a 100-byte gap (10%) is not.
    assert coalesce_ranges([(0, 500), (510, 1010)], max_waste=0.02) == [(0, 1010)]
    assert coalesce_ranges([(0, 500), (600, 1100)], max_waste=0.02) == [(0, 500), (600, 1100)]
    # The budget goes to the smallest gaps first.
    assert coalesce_ranges([(0, 400), (420, 800), (805, 1000)], max_waste=0.01) == [
        (0, 400),
        (420, 1000),
    ]
    # Neither a gap above max_gap nor a request above max_request is made.
    assert coalesce_ranges([(0, 10**6), (10**6 + 10, 2 * 10**6)], max_gap=5) == [
        (0, 10**6),
        (10**6 + 10, 2 * 10**6),
    ]
    assert coalesce_ranges([(0, 60), (60, 120), (121, 180)], max_request=150) == [
        (0, 120),
        (121, 180),
    ]


def test_coalesce_covers_every_range_and_bounds_the_waste():
    rng = random.Random(7)
    for _ in range(200):
        ranges, pos = [], 0
        for _ in range(rng.randint(1, 40)):
            pos += rng.choice([0, 0, rng.randint(1, 64), rng.randint(1, 5000)])
            size = rng.randint(1, 3000)
            ranges.append((pos, pos + size))
            pos += size
        rng.shuffle(ranges)
        requests = coalesce_ranges(ranges, max_gap=2000, max_request=20_000, max_waste=0.05)
        assert requests == sorted(requests)
        assert all(a[1] < b[0] for a, b in zip(requests, requests[1:]))  # disjoint, not touching
        for start, end in ranges:
            assert any(s <= start and end <= e for s, e in requests)
        needed = sum(e - s for s, e in ranges)
        assert sum(e - s for s, e in requests) <= 1.05 * needed


# ---- building from the Hub -----------------------------------------------------------------------
@pytest.mark.slow
def test_remote_build_is_identical_and_fetches_only_the_needed_tensors(
    local_hub, remote_repo, checkpoint, local_vindex, fresh_header_cache, tmp_path
):
    summary = build_vindex(
        remote_repo, tmp_path / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False
    )
    sha = HfApi().model_info(remote_repo).sha
    assert_same_vindex(tmp_path / "vindex", local_vindex, repo_id=remote_repo, revision=sha)

    infos = layer_infos(checkpoint, summary.layers)
    needed = sum(i.nbytes for layer in infos for i in layer)
    touched = {i.shard for layer in infos for i in layer}
    headers = sum(header_bytes(checkpoint, s) for s in touched)
    sent = shard_bytes_sent(local_hub, remote_repo, checkpoint)
    # Exactly the headers plus the planned (coalesced) requests: nothing else, nothing twice.
    plan = planned_bytes(infos)
    assert sent == {
        s: plan.get(s, 0) + (header_bytes(checkpoint, s) if s in touched else 0) for s in sent
    }
    assert needed <= sum(sent.values()) <= 1.05 * needed + headers
    checkpoint_size = sum((checkpoint / s).stat().st_size for s in shard_files(checkpoint))
    assert sum(sent.values()) < 0.3 * checkpoint_size


@pytest.mark.slow
def test_the_source_counts_what_it_fetched(local_hub, remote_repo, checkpoint, fresh_header_cache):
    with HubCheckpoint(remote_repo) as src:
        assert (src.bytes_fetched, src.path) == (0, None)
        assert src.describe() == f"{remote_repo}@{src.revision}" and len(src.revision) == 40
        arch = get_architecture(src.config)
        raw = src.read(arch.layer_tensors(1))
        assert src.bytes_fetched == sum(
            shard_bytes_sent(local_hub, remote_repo, checkpoint).values()
        )
        assert src.fetch_seconds > 0
    with LocalCheckpoint(checkpoint) as local:
        expected = local.read(raw)
    for name, tensor in raw.items():
        assert tensor.data.dtype == np.uint8 and tensor.data.ndim == 1
        assert tensor.info == expected[name].info
        np.testing.assert_array_equal(tensor.data, expected[name].data)


@pytest.mark.slow
def test_a_resumed_build_fetches_nothing_for_the_layers_already_done(
    local_hub, remote_repo, checkpoint, local_vindex, fresh_header_cache, tmp_path, monkeypatch
):
    out = tmp_path / "vindex"
    real_read = HubCheckpoint.read
    killed_at = "layers.2."

    def read_then_die(self, names):
        names = list(names)
        raw = real_read(self, names)
        if any(n.startswith(killed_at) for n in names):
            raise KeyboardInterrupt("killed while reading layer 2")
        return raw

    monkeypatch.setattr(HubCheckpoint, "read", read_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_vindex(remote_repo, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    monkeypatch.setattr(HubCheckpoint, "read", real_read)
    state = out / filenames.BUILD_STATE_DIR
    done = [
        layer for layer in range(SYNTH["num_layers"]) if layer_result_path(state, layer).exists()
    ]
    assert done == [0, 1]
    first_run = shard_bytes_sent(local_hub, remote_repo, checkpoint)

    local_hub.reset_stats()
    src = HubCheckpoint(remote_repo)
    assert (
        local_hub.stats().bytes_sent == 0
    )  # config, index (Hub cache) and headers: nothing fetched
    summary = build_vindex(src, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert summary.built_layers == [2, 3]
    assert_same_vindex(out, local_vindex, repo_id=remote_repo, revision=src.revision)

    todo = layer_infos(checkpoint, summary.built_layers)
    new_shards = {i.shard for layer in todo for i in layer if not first_run[i.shard]}
    plan = planned_bytes(todo)
    expected = {
        s: plan.get(s, 0) + (header_bytes(checkpoint, s) if s in new_shards else 0)
        for s in first_run
    }
    assert shard_bytes_sent(local_hub, remote_repo, checkpoint) == expected


@pytest.mark.slow
def test_server_errors_and_dropped_connections_are_retried(
    local_hub, remote_repo, checkpoint, local_vindex, tmp_path
):
    with HubCheckpoint(remote_repo) as src:  # headers cached, so every GET below reads tensor bytes
        for name in src.tensor_names():
            src.tensor_info(name)
    faults = [
        local_hub.inject_fault("error", method="GET", path="*.safetensors", status=500, times=3),
        local_hub.inject_fault("error", method="GET", path="*.safetensors", status=503, times=1),
        local_hub.inject_fault("drop", method="GET", path="*.safetensors", after_bytes=10, times=4),
    ]
    build_vindex(
        remote_repo, tmp_path / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False
    )
    assert [f.times for f in faults] == [0, 0, 0]  # every fault was met
    assert_same_vindex(
        tmp_path / "vindex",
        local_vindex,
        repo_id=remote_repo,
        revision=HfApi().model_info(remote_repo).sha,
    )


@pytest.mark.slow
def test_a_body_dropped_mid_tensor_resumes_from_the_missing_byte(
    local_hub, remote_repo, checkpoint
):
    with HubCheckpoint(remote_repo, workers=1) as src:
        # Routed gate weights of one layer: separate 16 KiB requests (w2/w3 lie between them).
        names = [
            n
            for n in src.tensor_names()
            if n.startswith("layers.3.ffn.experts.") and n.endswith("w1.weight")
        ]
        shards = {src.tensor_info(n).shard for n in names}
        local_hub.reset_stats()
        drop = local_hub.inject_fault(
            "drop", method="GET", path="*.safetensors", after_bytes=5000, times=3
        )
        raw = src.read(names)
    assert drop.times == 0
    with LocalCheckpoint(checkpoint) as local:
        expected = local.read(names)
    for name in names:
        np.testing.assert_array_equal(raw[name].data, expected[name].data)
    needed = sum(expected[n].info.nbytes for n in names)
    stats = local_hub.stats()
    # Three bodies cut after 5000 bytes and resumed: not one byte was sent twice.
    assert sum(stats.file(remote_repo, s, repo_type="model").bytes_sent for s in shards) == needed
    assert (
        sum(stats.file(remote_repo, s, repo_type="model").requests for s in shards)
        == len(names) + 3
    )


@pytest.mark.slow
def test_a_range_that_keeps_failing_is_a_hub_error_naming_the_url(local_hub, remote_repo):
    with HubCheckpoint(remote_repo, max_retries=1) as src:
        name = "layers.0.ffn.gate.weight"
        shard = src.tensor_info(name).shard
        local_hub.inject_fault("error", method="GET", path=f"*{shard}", status=500, times=None)
        with pytest.raises(HubError, match=f"{src.revision}/{shard}.*giving up"):
            src.read([name])


@pytest.mark.slow
def test_a_branch_moving_during_the_build_does_not_change_what_is_read(
    local_hub, hub_repo_id, checkpoint, local_vindex, tmp_path
):
    first = upload(checkpoint, hub_repo_id)
    src = HubCheckpoint(hub_repo_id)  # main, resolved now
    assert src.revision == first
    other = make_deepseek_v4_checkpoint(tmp_path / "other", **SYNTH, seed=1)
    second = upload(other, hub_repo_id)
    assert second != first and HubCheckpoint(hub_repo_id).revision == second

    probe = "layers.0.ffn.experts.0.w1.weight"
    with HubCheckpoint(hub_repo_id) as moved, LocalCheckpoint(checkpoint) as local:
        assert not np.array_equal(moved.read([probe])[probe].data, local.read([probe])[probe].data)
    build_vindex(src, tmp_path / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False)
    assert_same_vindex(tmp_path / "vindex", local_vindex, repo_id=hub_repo_id, revision=first)


# ---- bad repos -----------------------------------------------------------------------------------
def test_a_missing_repo_or_revision_is_a_typed_error_naming_it(local_hub, remote_repo, tmp_path):
    with pytest.raises(RemoteNotFoundError, match="tests/no-such-model"):
        HubCheckpoint("tests/no-such-model")
    with pytest.raises(RemoteNotFoundError, match=f"no-such-branch.*{remote_repo}"):
        build_vindex(remote_repo, tmp_path / "out", revision="no-such-branch", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sha", ["../../../escape", "a" * 39, "A" * 40, None])
@pytest.mark.slow
def test_a_commit_sha_that_is_not_a_hash_is_refused(monkeypatch, tmp_path, sha):
    """A hostile or broken server's model-info sha never reaches the cache paths."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(
                {"id": "ns/hostile", "sha": sha, "siblings": [{"rfilename": CONFIG_FILE}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(
            HubError,
            match=rf"ns/hostile@main: the Hub answered commit sha {re.escape(repr(sha))}, expected 40",
        ):
            HubCheckpoint("ns/hostile", cache_dir=tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()


def test_an_unsupported_model_is_refused_by_its_config(
    local_hub, hub_repo_id, checkpoint, tmp_path
):
    folder = tmp_path / "llama"
    folder.mkdir()
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    config["model_type"] = "llama"
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    shutil.copy(checkpoint / WEIGHT_MAP_FILE, folder / WEIGHT_MAP_FILE)
    sha = upload(folder, hub_repo_id)
    with pytest.raises(UnsupportedArchitectureError, match=f"{hub_repo_id}@{sha}"):
        build_vindex(hub_repo_id, tmp_path / "out", progress=False)
    assert local_hub.stats().bytes_sent == len((folder / CONFIG_FILE).read_bytes()) + len(
        (folder / WEIGHT_MAP_FILE).read_bytes()
    )


@pytest.mark.slow
def test_a_shard_header_that_disagrees_with_the_weight_map_names_shard_and_tensor(
    local_hub, hub_repo_id, checkpoint, tmp_path
):
    folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    index = json.loads((folder / WEIGHT_MAP_FILE).read_text())
    name = "layers.1.ffn.experts.2.w1.weight"
    wrong = next(s for s in shard_files(folder) if s != index["weight_map"][name])
    index["weight_map"][name] = wrong
    (folder / WEIGHT_MAP_FILE).write_text(json.dumps(index))
    upload(folder, hub_repo_id)
    with pytest.raises(
        CheckpointError, match=f"{name} is in shard {wrong} but {wrong} has no such tensor"
    ):
        build_vindex(hub_repo_id, tmp_path / "out", num_feats=NUM_FEATS, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.slow
def test_a_damaged_shard_is_a_checkpoint_error_naming_its_url(
    local_hub, hub_repo_id, checkpoint, tmp_path, damage
):
    folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    shard = folder / shard_files(folder)[-1]
    data = shard.read_bytes()
    if damage == "truncated":  # the last tensor's range now runs past the end of the file
        shard.write_bytes(data[:-100])
        message = "data ends at byte .* but the file holds .*truncated"
    else:
        shard.write_bytes(
            np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
        )
        message = "oversized header"
    sha = upload(folder, hub_repo_id)
    name = next(
        n
        for n, s in json.loads((folder / WEIGHT_MAP_FILE).read_text())["weight_map"].items()
        if s == shard.name
    )
    with HubCheckpoint(hub_repo_id) as src:
        with pytest.raises(CheckpointError, match=f"{sha}/{shard.name}: .*{message}"):
            src.tensor_info(name)
    # Only the 8 length bytes, and for the truncated file its header, were fetched.
    sent = local_hub.stats().file(hub_repo_id, shard.name, repo_type="model").bytes_sent
    assert sent == (header_bytes(checkpoint, shard.name) if damage == "truncated" else PREFIX_BYTES)


def test_a_single_file_checkpoint_is_read_through_its_header(local_hub, hub_repo_id, tmp_path):
    folder = make_deepseek_v4_checkpoint(
        tmp_path / "single",
        num_layers=2,
        num_experts=4,
        hidden_size=64,
        moe_intermediate_size=32,
        num_shards=1,
    )
    assert (folder / SINGLE_FILE).exists() and not (folder / WEIGHT_MAP_FILE).exists()
    upload(folder, hub_repo_id)
    with HubCheckpoint(hub_repo_id) as src, LocalCheckpoint(folder) as local:
        assert src.tensor_names() == local.tensor_names()
        names = get_architecture(src.config).layer_tensors(1)
        raw, expected = src.read(names), local.read(names)
        for name in names:
            np.testing.assert_array_equal(raw[name].data, expected[name].data)
        with pytest.raises(CheckpointError, match=f"no.such.tensor not in {SINGLE_FILE}"):
            src.tensor_info("no.such.tensor")
