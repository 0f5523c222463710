"""Where a build's time outside the SVD goes (issue 24's whole-command row): worker processes
started before the builder loads, adopted by the engine and never left behind; the shared expert
and router decomposed on a worker with the serial engine's error order; batches that shrink
towards a layer's end; the card's plot rendered in a process of its own, the same PNG. Real spawned processes and real checkpoints; no timing assertions (the
figures are ``benchmarks/bench_build.py``'s)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vindex_hub.builder import build_vindex, engine
from vindex_hub.builder import workers as worker_processes
from vindex_hub.builder.decompose import expert_batches, shrinking_batches
from vindex_hub.errors import VindexError
from vindex_hub.format import filenames, sidecar
from vindex_hub.numerics.routes import BLAS_THREADS
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint
from vindex_hub.writers import card, derived

# gate_proj 128 x 256, 16 features: small, and big enough for the mixed route.
DIMS = dict(num_layers=2, num_experts=12, hidden_size=256, moe_intermediate_size=128, num_shards=1)
NUM_FEATS = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deepseek_v4_checkpoint(
        tmp_path_factory.mktemp("startup") / "ckpt", **DIMS, include_mtp=False
    )


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every worker process spawned from now on (through ``workers.spawn_worker``)."""
    processes: list = []
    real = worker_processes.spawn_worker

    def recording(blas_threads: int):
        process, conn = real(blas_threads)
        processes.append(process)
        return process, conn

    monkeypatch.setattr(worker_processes, "spawn_worker", recording)
    monkeypatch.setattr(engine, "spawn_worker", recording)  # the engine's replacements
    yield processes
    worker_processes.stop_spares()


def _build(checkpoint: Path, out: Path, workers: int) -> None:
    build_vindex(
        checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False, workers=workers
    )


@pytest.mark.slow
def test_spares_started_early_are_adopted_and_none_outlives_the_build(
    checkpoint: Path, tmp_path: Path, spawned: list
) -> None:
    worker_processes.start_for_build(3, "cpu", None)  # as the CLI does, before the builder loads
    assert len(spawned) == 3 and all(p.is_alive() for p in spawned)
    _build(checkpoint, tmp_path / "v", workers=2)
    # the build spawned none of its own: it adopted two spares, and stopped the third
    assert len(spawned) == 3
    assert not any(p.is_alive() for p in spawned)
    assert worker_processes.take_spare(BLAS_THREADS) is None


def test_a_build_that_fails_stops_the_spares(
    checkpoint: Path, tmp_path: Path, spawned: list
) -> None:
    worker_processes.start_for_build(2, "cpu", None)
    with pytest.raises(VindexError, match="layer"):
        build_vindex(checkpoint, tmp_path / "v", layers="7", device="cpu", workers=2)
    assert len(spawned) == 2 and not any(p.is_alive() for p in spawned)


def test_no_spares_where_the_build_runs_in_this_process_or_elsewhere(spawned: list) -> None:
    for workers, device, where in ((1, "cpu", None), (4, "cuda", None), (4, "cpu", "ray")):
        worker_processes.start_for_build(workers, device, where)
    assert spawned == []


@pytest.mark.parametrize("num_experts", [1, 7, 64, 256])
@pytest.mark.parametrize("workers", [2, 3, 16])
def test_shrinking_batches_cover_each_expert_once_and_end_small(
    num_experts: int, workers: int
) -> None:
    batches = shrinking_batches(num_experts, 8, workers)
    assert [e for b in batches for e in b] == list(range(num_experts))
    sizes = [len(b) for b in batches]
    assert max(sizes) <= 8 and sizes == sorted(sizes, reverse=True)
    assert sizes[-1] == 1  # the layer ends on single experts: the workers finish together
    # full batches while every worker has two of them still to come
    assert all(len(b) == 8 for b in batches if num_experts - b.start >= 2 * workers * 8)
    assert len(batches) >= len(expert_batches(num_experts, 8, workers))


def _poison(checkpoint: Path, out: Path, tensors: list[str]) -> Path:
    """A copy of ``checkpoint`` with every byte of ``tensors`` (E8M0 scales) set to 0xFF: NaN."""
    out.mkdir(parents=True)
    for path in checkpoint.iterdir():
        data = bytearray(path.read_bytes())
        if path.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8 : 8 + n])
            for name in tensors:
                begin, end = header[name]["data_offsets"]
                data[8 + n + begin : 8 + n + end] = b"\xff" * (end - begin)
        (out / path.name).write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    "tensors, named",
    [
        (["layers.1.ffn.shared_experts.w1.scale"], "shared_experts"),
        # both bad: the routed expert's error, as the serial engine, going in order, meets it
        (
            ["layers.1.ffn.shared_experts.w1.scale", "layers.1.ffn.experts.9.w1.scale"],
            "experts.9",
        ),
    ],
)
def test_a_bad_shared_expert_fails_the_same_way_on_workers_as_in_process(
    checkpoint: Path, tmp_path: Path, tensors: list[str], named: str
) -> None:
    bad = _poison(checkpoint, tmp_path / "bad", tensors)
    errors = []
    for workers in (1, 2):
        with pytest.raises(VindexError) as caught:
            _build(bad, tmp_path / f"v{workers}", workers=workers)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1]
    assert named in errors[0][1]


@pytest.mark.slow
def test_the_card_plot_rendered_in_a_spawned_process_is_the_same_png(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "v"
    _build(checkpoint, out, workers=1)  # one process: the plot rendered in it
    png = (out / filenames.VAR_PLOT_FILE).read_bytes()
    index = sidecar.VindexIndex.load(out / filenames.SIDECAR_JSON)

    def not_here(index: sidecar.VindexIndex) -> bytes:
        raise AssertionError("the plot was rendered in this process")

    for module in (derived, card):  # a spawned process imports its own, unpatched
        monkeypatch.setattr(module, "var_plot_png", not_here)
    (out / filenames.VAR_PLOT_FILE).unlink()
    derived.write_derived_files(out, index, plot_elsewhere=True)
    assert (out / filenames.VAR_PLOT_FILE).read_bytes() == png


def test_where_no_process_starts_the_plot_is_rendered_here(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "v"
    _build(checkpoint, out, workers=1)
    png = (out / filenames.VAR_PLOT_FILE).read_bytes()
    index = sidecar.VindexIndex.load(out / filenames.SIDECAR_JSON)

    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(derived, "ProcessPoolExecutor", no_processes)
    (out / filenames.VAR_PLOT_FILE).unlink()
    derived.write_derived_files(out, index, plot_elsewhere=True)
    assert (out / filenames.VAR_PLOT_FILE).read_bytes() == png


@pytest.mark.slow
def test_import_ahead_loads_what_the_card_imports() -> None:
    """The modules named are the card's real imports (a renamed one would silently load
    nothing ahead): each is importable, and the thread loads them all."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from vindex_hub.writers import derived\n"
        "derived.import_ahead().join()\n"
        "print(all(m in sys.modules for m in derived.CARD_MODULES))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    from vindex_hub.format import card_data

    card_sources = Path(card.__file__).read_text() + Path(card_data.__file__).read_text()
    for name in derived.CARD_MODULES:
        # each is imported on first use by the card's own code
        top = name.split(".")[0]
        assert f"from {top} import" in card_sources or f"import {top}" in card_sources
