"""Builds on worker processes: the same bits for any worker count and any OMP_NUM_THREADS, resumed
or not, and a worker killed mid-build replaced without losing a bit. Real CLI runs (subprocesses),
real SIGKILLs; no timing assertions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_build import folder_bytes

from vindex_hub.builder.decompose import DecomposeSettings
from vindex_hub.builder.engine import ProcessEngine
from vindex_hub.errors import UsageError
from vindex_hub.format import filenames
from vindex_hub.numerics import routes, svd
from vindex_hub.results import layer_result_path
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

# gate_proj 256 x 512 with 16 features: big enough for the mixed route (p = 48, n >= 2p).
DIMS = dict(num_layers=6, num_experts=16, hidden_size=512, moe_intermediate_size=256, num_shards=2)
NUM_FEATS = "16"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _build_command(ckpt: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vindex_hub",
        "build",
        str(ckpt),
        "-o",
        str(out),
        "--num-feats",
        NUM_FEATS,
        "--quiet",
        "--device",
        "cpu",
        "--workers",
        str(workers),
    ]


def _environment(blas_threads: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    if blas_threads is not None:
        env.update({name: str(blas_threads) for name in THREAD_VARIABLES})
    return env


def _build(
    ckpt: Path, out: Path, workers: int, blas_threads: int | None = None
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _build_command(ckpt, out, workers),
        capture_output=True,
        text=True,
        env=_environment(blas_threads),
    )
    assert done.returncode == 0, done.stderr
    return done


def _published(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; the sidecar without ``builder.workers``, the one thing a worker count
    changes (it records how the vindex was built, not what it holds)."""
    files = folder_bytes(folder)
    index = json.loads(files.pop(filenames.SIDECAR_JSON))
    index["builder"].pop("workers")
    files[filenames.SIDECAR_JSON] = json.dumps(index, sort_keys=True).encode()
    return files


def _builder(folder: Path) -> dict:
    return json.loads((folder / filenames.SIDECAR_JSON).read_text())["builder"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("workers") / "ckpt", **DIMS)


@pytest.fixture(scope="module")
def reference(checkpoint: Path, tmp_path_factory) -> Path:
    """One uninterrupted build in this process's way: one worker, BLAS threads left unset."""
    out = tmp_path_factory.mktemp("reference") / "vindex"
    _build(checkpoint, out, workers=1)
    assert _builder(out) == {
        **_builder(out),
        "svd_route": routes.ROUTE_MIXED,
        "blas_threads": 1,
        "workers": 1,
    }
    return out


@pytest.mark.slow
def test_two_workers_and_other_blas_threads_give_the_same_bits(
    checkpoint: Path, reference: Path, tmp_path: Path
) -> None:
    for workers, threads in ((2, 2), (2, 1), (1, 2)):
        out = tmp_path / f"w{workers}-t{threads}" / "vindex"
        _build(checkpoint, out, workers, blas_threads=threads)
        assert _builder(out)["workers"] == workers
        assert _published(out) == _published(reference), (workers, threads)
    info = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "info", str(out)], capture_output=True, text=True
    )
    assert info.returncode == 0, info.stderr
    assert f"svd route  {routes.ROUTE_MIXED} (1 BLAS thread(s) each, 1 worker(s))" in info.stdout
    assert f"SVD route `{routes.ROUTE_MIXED}`" in (out / filenames.CARD_FILE).read_text()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _worker_pids(pid: int) -> list[int]:
    """The build's worker processes: its spawned children."""
    return [child for child in _children(pid) if b"spawn_main" in _cmdline(child)]


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300  # a bound for a stuck build, not a timing assertion
    while not condition():
        assert proc.poll() is None, (
            f"the build ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, f"no {what} in 300 s"
        time.sleep(0.005)


def _first_layer_done(out: Path):
    return layer_result_path(out / filenames.BUILD_STATE_DIR, 0).exists


@pytest.mark.slow
def test_a_killed_build_resumes_with_another_worker_count_bit_identical(
    checkpoint: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed" / "vindex"
    proc = subprocess.Popen(
        _build_command(checkpoint, out, workers=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(None),
    )
    _wait_for(lambda: len(_worker_pids(proc.pid)) == 2, proc, "two workers")
    workers = _worker_pids(proc.pid)
    _wait_for(_first_layer_done(out), proc, "a finished layer")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / filenames.SIDECAR_JSON).exists()
    for pid in workers:  # orphaned workers see their pipe close and leave
        _wait_gone(pid)

    resumed = _build(checkpoint, out, workers=1, blas_threads=2)
    assert "resumed" in resumed.stdout
    assert _published(out) == _published(reference)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and b"spawn_main" in _cmdline(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived its build"
        time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_a_worker_killed_mid_build_is_replaced_and_the_build_ends_identical(
    checkpoint: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "worker-killed" / "vindex"
    proc = subprocess.Popen(
        _build_command(checkpoint, out, workers=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(None),
    )
    _wait_for(_first_layer_done(out), proc, "a finished layer")
    victim = _worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert f"worker process {victim} died (signal 9) in layer" in stderr
    assert "starting another and redoing them" in stderr
    assert "resumed" not in stdout  # the same run finished it
    assert _published(out) == _published(reference)


@pytest.mark.slow
def test_worker_count_must_be_positive(checkpoint: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        _build_command(checkpoint, tmp_path / "v", workers=0), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "--workers must be at least 1, got 0" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(UsageError, match="^workers must be at least 1"):
        ProcessEngine({}, DecomposeSettings(num_feats=4, device="cpu"), 0, prefetch_layers=1)


@pytest.mark.slow
def test_spiky_experts_take_the_deflated_route_with_the_same_bits_for_any_workers_and_batch(
    tmp_path: Path,
) -> None:
    """A checkpoint of strong directions over a flat bulk: its experts are deflated (chosen per
    matrix, so the choice cannot depend on how a build groups them), and one worker with the
    default batch and two with batches of 3 write the same bits."""
    values: dict = {}
    ckpt = make_deepseek_v4_checkpoint(
        tmp_path / "spiky",
        **{**DIMS, "num_layers": 2, "num_experts": 8},
        spectrum="spiky",
        reference=values,
    )
    gates = [
        v for name, v in values.items() if ".ffn.experts." in name and name.endswith("w1.weight")
    ]
    assert len(gates) >= 2 * 8  # the layers (and the MTP block)
    assert {svd.choose_route(w, int(NUM_FEATS)) for w in gates} == {routes.ROUTE_DEFLATED}
    one = tmp_path / "one" / "vindex"
    _build(ckpt, one, workers=1)
    two = tmp_path / "two" / "vindex"
    done = subprocess.run(
        [*_build_command(ckpt, two, workers=2), "--batch-size", "3"],
        capture_output=True,
        text=True,
        env=_environment(None),
    )
    assert done.returncode == 0, done.stderr
    assert _published(two) == _published(one)
    assert _builder(one)["svd_route"] == routes.ROUTE_MIXED  # the route asked for, as before
