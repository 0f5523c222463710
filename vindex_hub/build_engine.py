"""Where a layer's routed experts are decomposed: in this process, or on worker processes.

``SerialEngine`` dequantizes and decomposes in the calling process (``--workers 1``, and CUDA,
which batches on the device). ``ProcessEngine`` runs ``workers`` spawned processes, each with
``blas_threads`` BLAS threads (set in its environment before BLAS loads, and by threadpoolctl):
the parent hands each idle worker the raw bytes of a batch of experts, the worker dequantizes
them into its own reused buffer and decomposes them, and sends the float results back. Both
engines call the same ``decompose_experts`` with the same thread setting, so their results are
the same bits, whatever the worker count or the machine's ``OMP_NUM_THREADS``.

A worker that dies (killed, out of memory) is replaced and its batch redone; one that keeps
dying ends the build with an error. Only plain data crosses the process boundary: the config
dict, settings, tensor names/dtypes/shapes, numpy arrays, and error messages.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Mapping

import numpy as np

from . import errors
from .arch import MoEArchitecture, get_architecture
from .errors import UsageError, VindexError
from .numerics import svd
from .source.base import RawTensor, TensorInfo

__all__ = ["DecomposeSettings", "ExpertResults", "ProcessEngine", "SerialEngine", "decompose_experts",
           "default_workers", "make_engine", "worker_count"]

# Deaths of worker processes tolerated within one layer before the build gives up.
MAX_WORKER_DEATHS_PER_LAYER = 3
# The variables BLAS libraries read their thread count from when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DecomposeSettings:
    """How experts are decomposed: what fixes the bits (all but ``batch_size``, which does not)."""

    num_feats: int
    device: str  # resolved: "cpu" or "cuda"
    precision: str  # numerics.svd.PRECISIONS
    batch_size: int
    blas_threads: int = svd.BLAS_THREADS


@dataclass
class ExpertResults:
    """One layer's routed experts, decomposed."""

    vectors: np.ndarray  # float32 (E, K, H)
    singular_values: np.ndarray  # float32 (E, K)
    frobenius_norm: np.ndarray  # float64 (E,)
    routes: list[str]  # per expert, the SVD route it took

    @classmethod
    def empty(cls, num_experts: int, num_feats: int, hidden_size: int) -> "ExpertResults":
        return cls(np.empty((num_experts, num_feats, hidden_size), np.float32),
                   np.empty((num_experts, num_feats), np.float32), np.empty(num_experts, np.float64),
                   [""] * num_experts)

    def store(self, experts: range, top: svd.TopK) -> None:
        self.vectors[experts.start:experts.stop] = top.vectors
        self.singular_values[experts.start:experts.stop] = top.singular_values
        self.frobenius_norm[experts.start:experts.stop] = top.frobenius_norm
        self.routes[experts.start:experts.stop] = top.routes


class _BufferPool:
    """One reused dequantization buffer (no page faults per batch)."""

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.buffer is None or self.buffer.shape != shape:
            self.buffer = None  # free the old one before allocating
            self.buffer = np.empty(shape, dtype=np.float32)
        return self.buffer


def decompose_experts(arch: MoEArchitecture, layer: int, experts: range, raw: Mapping[str, RawTensor],
                      settings: DecomposeSettings, buffers: _BufferPool) -> svd.TopK:
    """Dequantize a batch of experts' gate_proj into a reused buffer and decompose it (pure math)."""
    weights = arch.expert_gate_weights(layer, experts, raw, out=buffers.get((len(experts), *arch.gate_shape)))
    names = [arch.expert_gate_tensors(layer, e)[0] for e in experts]
    return svd.top_k_right_singular(weights, settings.num_feats, device=settings.device,
                                    precision=settings.precision, names=names,
                                    blas_threads=settings.blas_threads)


def _batches(num_experts: int, batch_size: int, workers: int) -> list[range]:
    """Batches of at most ``batch_size`` experts, small enough that every worker gets one."""
    size = max(1, min(batch_size, math.ceil(num_experts / workers)))
    return [range(start, min(start + size, num_experts)) for start in range(0, num_experts, size)]


class SerialEngine:
    """Decomposes in this process, one batch at a time."""

    workers = 1

    def __init__(self, settings: DecomposeSettings):
        self.settings = settings
        self._buffers = _BufferPool()

    def decompose_layer(self, arch: MoEArchitecture, layer: int, raw: Mapping[str, RawTensor],
                        results: ExpertResults, progress: Callable[[int], None]) -> None:
        for experts in _batches(len(results.routes), self.settings.batch_size, 1):
            results.store(experts, decompose_experts(arch, layer, experts, raw, self.settings, self._buffers))
            progress(len(experts))

    def close(self) -> None:
        self._buffers = _BufferPool()

    def __enter__(self) -> "SerialEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- worker processes ---------------------------------------------------------------------------
def _worker_main(conn: Connection, config: dict[str, Any], settings: dict[str, Any]) -> None:
    """A worker: decompose the batches it is sent until told to stop (None) or the pipe closes."""
    from threadpoolctl import threadpool_limits

    decompose = DecomposeSettings(**settings)
    threadpool_limits(limits=decompose.blas_threads, user_api="blas")  # BLAS loaded by an import
    arch = get_architecture(config)
    buffers = _BufferPool()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        layer, start, stop, tensors = task
        raw = {name: RawTensor(TensorInfo(name, dtype, tuple(shape), "", 0, int(data.nbytes)), data)
               for name, (dtype, shape, data) in tensors.items()}
        try:
            top = decompose_experts(arch, layer, range(start, stop), raw, decompose, buffers)
            reply: tuple = ("ok", top.vectors, top.singular_values, top.frobenius_norm, list(top.routes))
        except Exception as exc:  # noqa: BLE001 - sent to the parent as (type name, message)
            reply = ("error", type(exc).__name__, str(exc))
        del raw, tensors, task
        conn.send(reply)


def _error_from(type_name: str, message: str) -> Exception:
    """The package's own exception type of a worker's error (plain data across the pipe)."""
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, VindexError):
        return cls(message)
    return RuntimeError(f"a worker process failed: {type_name}: {message}")


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    task: tuple[int, range] | None = None  # (layer, experts) in flight


class ProcessEngine:
    """Decomposes on ``workers`` spawned processes with ``settings.blas_threads`` BLAS threads each."""

    def __init__(self, config: Mapping[str, Any], settings: DecomposeSettings, workers: int, *,
                 warn: Callable[[str], None] | None = None):
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.settings = settings
        self.workers = workers
        self._config = dict(config)
        self._context = multiprocessing.get_context("spawn")
        self._warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self._pool: list[_Worker] = []
        try:
            for _ in range(workers):
                self._pool.append(self._start())
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._pool if w.process.pid is not None]

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, name="vindex-worker", daemon=True,
                                        args=(child, self._config, asdict(self.settings)))
        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        os.environ.update({name: str(self.settings.blas_threads) for name in THREAD_VARIABLES})
        try:  # a spawned child takes the environment as it is now: BLAS loads with these
            process.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        child.close()
        return _Worker(process, parent)

    def decompose_layer(self, arch: MoEArchitecture, layer: int, raw: Mapping[str, RawTensor],
                        results: ExpertResults, progress: Callable[[int], None]) -> None:
        todo = _batches(len(results.routes), self.settings.batch_size, self.workers)
        todo.reverse()  # popped from the end: lowest experts first
        deaths = 0
        while todo or any(w.task for w in self._pool):
            for worker in self._pool:
                if worker.task is None and todo:
                    experts = todo.pop()
                    worker.task = (layer, experts)
                    try:
                        worker.conn.send((layer, experts.start, experts.stop,
                                          self._payload(arch, layer, experts, raw)))
                    except OSError:  # it died: its sentinel says so below
                        pass
            busy = [w for w in self._pool if w.task]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for i, worker in enumerate(self._pool):
                if worker.task is None:
                    continue
                if worker.conn in ready:
                    try:
                        reply = worker.conn.recv()
                    except (EOFError, OSError):
                        reply = None
                    if reply is not None:
                        experts = worker.task[1]
                        worker.task = None
                        if reply[0] == "error":
                            raise _error_from(reply[1], reply[2])
                        _, vectors, singular_values, frobenius, routes = reply
                        results.store(experts, svd.TopK(vectors, singular_values, frobenius, tuple(routes)))
                        progress(len(experts))
                        continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    deaths += 1
                    experts = worker.task[1]
                    self._warn(
                        f"worker process {worker.process.pid} died ({_exit_reason(worker.process)}) during "
                        f"layer {layer}, experts {experts.start}-{experts.stop - 1}; "
                        + ("starting another and redoing them" if deaths <= MAX_WORKER_DEATHS_PER_LAYER
                           else "giving up")
                    )
                    worker.conn.close()
                    if deaths > MAX_WORKER_DEATHS_PER_LAYER:
                        raise VindexError(
                            f"layer {layer}: {deaths} worker processes died (out of memory? try fewer "
                            f"--workers or a smaller batch); rerun the same command to resume"
                        )
                    todo.append(experts)
                    self._pool[i] = self._start()

    @staticmethod
    def _payload(arch: MoEArchitecture, layer: int, experts: range,
                 raw: Mapping[str, RawTensor]) -> dict[str, tuple[str, tuple[int, ...], np.ndarray]]:
        """The raw tensors of a batch as plain data: name -> (dtype, shape, bytes)."""
        names = [name for e in experts for name in arch.expert_gate_tensors(layer, e)]
        return {name: (raw[name].info.dtype, raw[name].info.shape, raw[name].data) for name in names}

    def close(self) -> None:
        """Stop every worker (by its own process handle), however the build ends."""
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pool = []

    def __enter__(self) -> "ProcessEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    process.join(timeout=1)
    code = process.exitcode
    if code is None:
        return "no exit status"
    return f"signal {-code}" if code < 0 else f"exit status {code}"


def make_engine(config: Mapping[str, Any], settings: DecomposeSettings, workers: int | None,
                ) -> SerialEngine | ProcessEngine:
    """``workers`` processes (None: ``default_workers()``); one, or CUDA, decomposes in this process."""
    count = default_workers() if workers is None else workers
    if count < 1:
        raise UsageError(f"--workers must be at least 1, got {count}")
    if count == 1 or settings.device == "cuda":
        return SerialEngine(settings)
    return ProcessEngine(config, settings, count)


def worker_count(settings: DecomposeSettings, workers: int | None) -> int:
    """The worker count a build with these settings records (CUDA: the one calling process)."""
    return 1 if settings.device == "cuda" else (default_workers() if workers is None else workers)

