"""``--engine ray``: builds on a real Ray cluster of two raylets on 127.0.0.1, started by the test.

Every build here is compared bit for bit with the serial build of the same checkpoint: through
``RAY_ADDRESS``, with a layer split into expert shares, with a task's worker process killed (by
its pid) mid-build, with the driver killed and the build run again, and from a Hub repo id on the
bundled Hub server (bytes served counted across all workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from test_build import _nan_scale, folder_bytes, kill_after_first_layer
from test_source_remote import header_bytes, layer_infos, planned_bytes, shard_bytes_sent, upload

from vindex_hub.builder import build_vindex
from vindex_hub.builder.ray_engine import INSTALL_HINT, TASK_NAME, split_work
from vindex_hub.errors import QuantizationError, UsageError
from vindex_hub.format import filenames
from vindex_hub.format.card_data import CardOptions, default_year
from vindex_hub.testing.ray_cluster import LocalRayCluster, client_environment
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

from conftest import HUB_TOKEN

# Ray reads these when it is imported: set before any test imports it.
os.environ.update(client_environment())

# Big enough that a layer's task runs for a while (a worker can be killed mid-task), small enough
# for a 2-core machine: 16 experts of 512 x 1024 a layer.
DIMS = dict(num_layers=4, num_experts=16, hidden_size=1024, moe_intermediate_size=512, num_shards=2)
NUM_FEATS = 16
# The card's citation year as the CLI writes it (the library writes none unless told), so the
# serial reference and the CLI builds below agree to the byte.
OPTIONS = dict(
    num_feats=NUM_FEATS,
    device="cpu",
    progress=False,
    card_options=CardOptions(year=default_year()),
)


@pytest.fixture(scope="session")
def ray_cluster():
    """Two raylets of one CPU each (head + a node that joined it), stopped by their own pids."""
    cluster = LocalRayCluster(nodes=2, cpus_per_node=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("ray-src") / "ckpt", **DIMS)


def serial_build(source, out: Path, **options) -> Path:
    """The serial build, with one BLAS thread as in a Ray task: LAPACK's bits depend on the thread
    count (the decomposition pins it for every engine once numerics.svd fixes BLAS_THREADS)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        build_vindex(source, out, **{**OPTIONS, **options})
    return out


@pytest.fixture(scope="module")
def serial_vindex(checkpoint, tmp_path_factory) -> Path:
    return serial_build(checkpoint, tmp_path_factory.mktemp("serial") / "vindex")


def ray_cli(*args: str, address: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vindex_hub",
        "build",
        *args,
        "--engine",
        "ray",
        "--ray-address",
        address,
        "--num-feats",
        str(NUM_FEATS),
        "--device",
        "cpu",
        "--quiet",
    ]


# ---- the units of work (pure) ----------------------------------------------------------------
def test_work_is_a_layer_or_whole_batches_of_a_layers_experts():
    layers = split_work([0, 1, 2, 3], num_experts=16, batch_size=4, slots=2)
    assert [(p.layer, p.experts, p.with_layer_extras) for p in layers] == [
        (layer, range(0, 16), True) for layer in range(4)
    ]
    shares = split_work([5], num_experts=18, batch_size=4, slots=3)
    # 5 batches of 4 (the last of 2) in 3 shares: 8 + 8 + 2 experts, each starting on a batch.
    assert [(p.layer, p.experts, p.with_layer_extras) for p in shares] == [
        (5, range(0, 8), True),
        (5, range(8, 16), False),
        (5, range(16, 18), False),
    ]
    assert len(split_work([0], num_experts=4, batch_size=8, slots=4)) == 1  # one batch: not split


# ---- builds ----------------------------------------------------------------------------------------
def test_a_build_through_ray_address_is_bit_identical_to_the_serial_build(
    ray_cluster, checkpoint, serial_vindex, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    out = tmp_path / "ray" / "vindex"
    summary = build_vindex(checkpoint, out, engine="ray", **OPTIONS)
    assert summary.built_layers == [0, 1, 2, 3]
    assert folder_bytes(out) == folder_bytes(serial_vindex)


def test_a_layer_split_into_expert_shares_is_bit_identical(ray_cluster, checkpoint, tmp_path):
    serial, ray = tmp_path / "serial" / "vindex", tmp_path / "ray" / "vindex"
    serial_build(checkpoint, serial, layers="2", batch_size=4)
    # One layer, two slots: two shares of 8 experts, the first also doing shared expert and router.
    build_vindex(
        checkpoint,
        ray,
        layers="2",
        batch_size=4,
        engine="ray",
        ray_address=ray_cluster.address,
        **OPTIONS,
    )
    assert folder_bytes(ray) == folder_bytes(serial)


def test_a_killed_task_worker_is_retried_and_the_build_is_identical(
    ray_cluster, checkpoint, serial_vindex, tmp_path
):
    out = tmp_path / "ray" / "vindex"
    outcome: dict[str, object] = {}

    def build() -> None:
        try:
            outcome["summary"] = build_vindex(
                checkpoint, out, engine="ray", ray_address=ray_cluster.address, **OPTIONS
            )
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=build)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        # A worker is titled ray::<task name> only while it runs that task.
        running = ray_cluster.worker_pids(f"ray::{TASK_NAME}-")
        if running:
            killed = running[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    thread.join(300)
    assert killed is not None, "no task was seen running"
    assert "error" not in outcome, outcome.get("error")
    assert folder_bytes(out) == folder_bytes(serial_vindex)


def test_a_killed_driver_resumes_bit_identical(ray_cluster, checkpoint, serial_vindex, tmp_path):
    out = tmp_path / "killed" / "vindex"
    cmd = ray_cli(str(checkpoint), "-o", str(out), address=ray_cluster.address)
    kill_after_first_layer(cmd, out)
    assert not (out / filenames.SIDECAR_JSON).exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed)" in resumed.stdout
    assert folder_bytes(out) == folder_bytes(serial_vindex)


def test_a_remote_build_on_ray_fetches_only_the_needed_bytes_across_workers(
    ray_cluster, local_hub, checkpoint, serial_vindex, tmp_path
):
    repo = "tests/ray-remote-checkpoint"
    upload(checkpoint, repo)
    out = tmp_path / "ray" / "vindex"
    summary = build_vindex(repo, out, engine="ray", ray_address=ray_cluster.address, **OPTIONS)
    bin_name = filenames.GATE_VECTORS_BIN
    assert (out / bin_name).read_bytes() == (serial_vindex / bin_name).read_bytes()
    assert HfApi().model_info(repo).sha in (out / filenames.SIDECAR_JSON).read_text()

    infos = layer_infos(checkpoint, summary.layers)
    needed = sum(i.nbytes for layer in infos for i in layer)
    touched = {i.shard for layer in infos for i in layer}
    sent = shard_bytes_sent(local_hub, repo, checkpoint)
    plan = planned_bytes(infos)
    # Each task asked for exactly its layer's ranges; headers at most once (the nodes share a cache).
    for shard, nbytes in sent.items():
        assert (
            plan.get(shard, 0) <= nbytes <= plan.get(shard, 0) + header_bytes(checkpoint, shard)
        ), shard
    headers = sum(header_bytes(checkpoint, s) for s in touched)
    assert needed <= sum(sent.values()) <= 1.05 * needed + headers
    # The token travelled as a task argument: no log or file of the cluster holds it.
    for path in ray_cluster.temp_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert HUB_TOKEN.encode() not in path.read_bytes(), path


# ---- failures ----------------------------------------------------------------------------------------
def test_a_checkpoint_error_in_a_task_ends_the_build_with_that_error(ray_cluster, tmp_path):
    ckpt = make_deepseek_v4_checkpoint(
        tmp_path / "ckpt",
        num_layers=4,
        num_experts=4,
        hidden_size=64,
        moe_intermediate_size=32,
        num_shards=3,
    )
    culprit = _nan_scale(ckpt)
    out = tmp_path / "vindex"
    result = subprocess.run(
        ray_cli(str(ckpt), "-o", str(out), address=ray_cluster.address),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("vindex-hub build: error:") and culprit in lines[0]
    ), result.stderr
    assert (
        not (out / filenames.GATE_VECTORS_BIN).exists()
        and not (out / filenames.SIDECAR_JSON).exists()
    )
    # The same error type as a serial build raises (returned as data, raised by the driver).
    with pytest.raises(QuantizationError, match=culprit):
        build_vindex(
            ckpt,
            tmp_path / "again",
            engine="ray",
            ray_address=ray_cluster.address,
            num_feats=8,
            device="cpu",
            progress=False,
        )


@pytest.mark.slow
def test_without_ray_the_engine_says_how_to_install_it(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "vindex"
    with pytest.raises(UsageError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        build_vindex(checkpoint, out, engine="ray", **OPTIONS)
    assert not out.exists()
    with pytest.raises(UsageError, match="engine='spark': must be one of local, ray"):
        build_vindex(checkpoint, out, engine="spark", **OPTIONS)


@pytest.mark.ray  # joins (tries to join) a cluster through Ray itself
@pytest.mark.slow
def test_a_cluster_that_cannot_be_reached_is_one_line(checkpoint, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "vindex"
    result = subprocess.run(
        ray_cli(str(checkpoint), "-o", str(out), address=address), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"vindex-hub build: error: cannot reach the Ray cluster at {address}: "
        "Connection refused; is `ray start` running there?"
    )
    assert not out.exists()
