"""Engines: where a build's layers are decomposed.

An engine takes the layers still to do and yields each one's ``DecomposedLayer`` (in any
order); the pipeline writes and records them. In both engines here a reader thread reads layer
L+1 while layer L is decomposed:

* ``SerialEngine``: this process dequantizes and decomposes (``--workers 1``, and CUDA, which
  batches on the device);
* ``ProcessEngine``: ``workers`` spawned processes, each with ``blas_threads`` BLAS threads (set
  in its environment before BLAS loads), started early where they can be (``builder.workers``).
  A layer's raw bytes sit once in shared memory, mapped by every worker; each idle worker is
  handed a task: the layer's shared expert and router first, then batches of routed experts
  that shrink towards the layer's end (so the workers finish it together, no core idle while
  the last big batch ends). A worker dequantizes into its own reused buffer, decomposes and
  sends the floats back. Errors are raised in the serial engine's order: the lowest failed
  routed batch, else the shared expert's and router's, so a bad checkpoint fails the same way.
  Once the last layer is decomposed the workers are told to stop, and exit while this process
  writes it.

Both run ``decompose.decompose_experts`` with the same settings, and ``numerics.svd`` runs every
BLAS call of a decomposition with ``blas_threads`` threads whatever the process's setting, so the
results are the same bits whatever the worker count or the machine's ``OMP_NUM_THREADS``. A
worker that dies (killed, out of memory) is replaced and its batch redone; workers that keep
dying end the build with an error (it resumes when run again). Only plain data crosses between
processes (``worker_loop``): the config dict and tensor names, the settings, a shared-memory
name with its table of tensor names/dtypes/shapes/offsets, numpy arrays, and error type + message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from .. import errors
from ..arch import MoEArchitecture
from ..errors import UsageError, VindexError
from ..source.base import CheckpointSource, RawTensor
from .decompose import (
    BufferPool,
    DecomposedLayer,
    DecomposeSettings,
    RoutedExperts,
    SharedAndRouter,
    decompose_layer,
    shrinking_batches,
)
from .plan import BuildPlan
from .worker_loop import SHARED
from .worker_loop import LayerTable as _Table
from .worker_loop import layer_views as _views
from .workers import blas_thread_environment as blas_thread_environment  # its old home
from .workers import spawn_worker, take_spare

# Deaths of worker processes tolerated within one layer before the build gives up.
MAX_WORKER_DEATHS_PER_LAYER = 3


class Engine(Protocol):
    def run(
        self,
        src: CheckpointSource,
        plan: BuildPlan,
        todo: list[int],
        *,
        on_experts: Callable[[int], None],
        on_layer_read: Callable[[int, float, int], None],
    ) -> Iterator[DecomposedLayer]:
        """Decompose ``todo``'s layers; ``on_experts(n)`` per batch of experts done,
        ``on_layer_read(layer, seconds, nbytes)`` as each layer's tensors arrive."""
        ...


class SerialEngine:
    """This process decomposes; a reader thread stays ``prefetch_layers`` layers ahead."""

    workers = 1

    def __init__(self, settings: DecomposeSettings, *, prefetch_layers: int):
        self.settings, self.prefetch_layers = settings, prefetch_layers

    def run(self, src, plan, todo, *, on_experts, on_layer_read):
        buffers = BufferPool()
        for layer, raw, seconds, nbytes in prefetch(src, plan.arch, todo, self.prefetch_layers):
            on_layer_read(layer, seconds, nbytes)
            decomposed = decompose_layer(
                plan.arch,
                layer,
                raw,
                self.settings,
                keep_router=plan.keep_router,
                buffers=buffers,
                on_batch=on_experts,
            )
            del raw  # before the layer is written: one raw layer less in memory
            yield decomposed


def make_engine(
    config: Mapping[str, Any],
    settings: DecomposeSettings,
    workers: int,
    *,
    prefetch_layers: int,
    tensor_names: list[str] | None = None,
) -> SerialEngine | ProcessEngine:
    """One worker, or CUDA: this process; more: that many worker processes (``tensor_names``:
    the checkpoint's, which some families' adapters check)."""
    if workers == 1 or settings.device == "cuda":
        return SerialEngine(settings, prefetch_layers=prefetch_layers)
    return ProcessEngine(
        config, settings, workers, prefetch_layers=prefetch_layers, tensor_names=tensor_names
    )


# ---- worker processes ---------------------------------------------------------------------------
def _share_layer(
    raw: Mapping[str, RawTensor],
) -> tuple[shared_memory.SharedMemory, _Table, dict[str, RawTensor]]:
    """One shared-memory copy of a layer's raw tensors, its table, and views of it to use in
    place of ``raw`` (so the layer's bytes are held once, and every worker maps them)."""
    table: _Table = {}
    offset = 0
    for name, tensor in raw.items():
        table[name] = (tensor.info.dtype, tuple(tensor.info.shape), offset, int(tensor.data.nbytes))
        offset += int(tensor.data.nbytes)
    block = shared_memory.SharedMemory(create=True, size=max(offset, 1))
    try:
        views = _views(block, table)
        for name, tensor in raw.items():
            views[name].data[...] = tensor.data
    except BaseException:  # Ctrl-C mid-copy included: the segment must not outlive us
        views = {}
        block.close()
        block.unlink()
        raise
    return block, table, views


def error_from(type_name: str, message: str) -> Exception:
    """A worker's (or a Ray task's) error as the package's own exception type (it crossed as plain
    data)."""
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, VindexError):
        return cls(message)
    return RuntimeError(f"a worker process failed: {type_name}: {message}")


def _exit_reason(process: multiprocessing.process.BaseProcess) -> str:
    process.join(timeout=1)
    code = process.exitcode
    if code is None:
        return "no exit status"
    return f"signal {-code}" if code < 0 else f"exit status {code}"


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    task: range | str | None = None  # in flight: a batch of routed experts, or SHARED


class ProcessEngine:
    """Routed experts on ``workers`` spawned processes, ``settings.blas_threads`` BLAS threads each."""

    def __init__(
        self,
        config: Mapping[str, Any],
        settings: DecomposeSettings,
        workers: int,
        *,
        prefetch_layers: int,
        tensor_names: list[str] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        self.settings, self.workers, self.prefetch_layers = settings, workers, prefetch_layers
        self._config = dict(config)
        self._tensor_names = tensor_names
        self._warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self._pool: list[_Worker] = []

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        return [w.process.pid for w in self._pool if w.process.pid is not None]

    def run(self, src, plan, todo, *, on_experts, on_layer_read):
        finished = False
        try:
            for layer, raw, seconds, nbytes in prefetch(src, plan.arch, todo, self.prefetch_layers):
                on_layer_read(layer, seconds, nbytes)
                # Once the first layer is read (the spares' imports had that long): a worker
                # still importing reads its settings late, and sending a checkpoint's many
                # tensor names would wait for it.
                while len(self._pool) < self.workers:
                    self._pool.append(self._start())
                block, table, raw = _share_layer(raw)  # the read copy is dropped here
                try:
                    decomposed = self._layer(plan, layer, raw, block.name, table, on_experts)
                finally:
                    raw = {}
                    block.close()
                    block.unlink()
                if layer == todo[-1]:  # the last: the workers exit while it is written
                    self._tell_stop()
                yield decomposed
            finished = True
        finally:
            # Stopped early (an error, Ctrl-C, the consumer gone): the workers' batches are
            # wasted work, so they are stopped at once rather than waited for.
            self.close(abort=not finished)

    def _start(self, *, spare: bool = True) -> _Worker:
        """A worker with this build's settings: a spare started early (``spare``), else a new one."""
        threads = self.settings.blas_threads
        process, conn = (spare and take_spare(threads)) or spawn_worker(threads)
        try:
            conn.send((self._config, self._tensor_names, asdict(self.settings)))
        except OSError:  # it died: its sentinel says so when it is handed a task
            pass
        return _Worker(process, conn)

    def _layer(
        self,
        plan: BuildPlan,
        layer: int,
        raw: Mapping[str, RawTensor],
        block_name: str,
        table: _Table,
        on_experts: Callable[[int], None],
    ) -> DecomposedLayer:
        arch = plan.arch
        routed = RoutedExperts.empty(arch, self.settings.num_feats)
        # popped from the end: the shared expert and router first, then the batches in order
        todo: list[range | str] = [
            *shrinking_batches(routed.num_experts, self.settings.batch_size, self.workers)[::-1],
            SHARED,
        ]
        extras: SharedAndRouter | None = None
        self._feed(layer, plan.keep_router, block_name, table, todo)
        deaths = 0
        # The failure of the lowest batch, raised once no lower batch is in flight: the error the
        # serial engine, going in order, would stop at; the shared expert's after every batch's.
        failure: tuple[int, Exception] | None = None
        shared_failure: Exception | None = None
        while todo or any(w.task for w in self._pool):
            busy = [w for w in self._pool if w.task]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for i, worker in enumerate(self._pool):
                if worker.task is None:
                    continue
                reply = None
                if worker.conn in ready:
                    try:
                        reply = worker.conn.recv()
                    except (EOFError, OSError):  # died mid-reply: handled as a death below
                        pass
                if reply is not None:
                    task, worker.task = worker.task, None
                    if reply[0] == "error":
                        error = error_from(reply[1], reply[2])
                        if not isinstance(task, range):
                            shared_failure = error
                            continue
                        if failure is None or task.start < failure[0]:
                            failure = (task.start, error)
                        todo[:] = [b for b in todo if isinstance(b, range) and b.start < failure[0]]
                        continue
                    if isinstance(task, range):
                        routed.store(task, *reply[1:])
                        on_experts(len(task))
                    else:
                        extras = SharedAndRouter(**reply[1])
                elif worker.process.sentinel in ready or not worker.process.is_alive():
                    deaths += 1
                    task = worker.task
                    self._replace(i, layer, deaths)
                    todo.append(task)
            self._feed(layer, plan.keep_router, block_name, table, todo)
        if failure is not None:
            raise failure[1]
        if shared_failure is not None:
            raise shared_failure
        assert extras is not None  # no failure: its task was done
        return DecomposedLayer.of(layer, routed, extras)

    def _feed(
        self, layer: int, keep_router: bool, block_name: str, table: _Table, todo: list[range | str]
    ) -> None:
        """Hand each idle worker the next task (popped from the end of ``todo``)."""
        for worker in self._pool:
            if worker.task is None and todo:
                worker.task = task = todo.pop()
                what = task if isinstance(task, range) else (SHARED, keep_router)
                try:
                    worker.conn.send((layer, what, block_name, table))
                except OSError:  # it died: its sentinel says so
                    pass

    def _replace(self, i: int, layer: int, deaths: int) -> None:
        worker = self._pool[i]
        task = worker.task
        assert task is not None  # a worker dies while it holds a task
        giving_up = deaths > MAX_WORKER_DEATHS_PER_LAYER
        what = (
            f"experts {task.start}-{task.stop - 1}"
            if isinstance(task, range)
            else "the shared expert and router"
        )
        self._warn(
            f"worker process {worker.process.pid} died ({_exit_reason(worker.process)}) in layer {layer}, "
            f"{what}; " + ("giving up" if giving_up else "starting another and redoing them")
        )
        worker.conn.close()
        if giving_up:
            raise VindexError(
                f"layer {layer}: {deaths} worker processes died (out of memory? try fewer "
                "workers or a smaller batch_size); run the same command again to resume"
            )
        self._pool[i] = self._start(spare=False)

    def _tell_stop(self) -> None:
        """Tell every worker to stop once its task is done (``close`` waits for them)."""
        for worker in self._pool:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)

    def close(self, *, abort: bool = False) -> None:
        """Stop every worker through its own process handle, however the build ends: told to
        stop and waited for, or (``abort``) terminated at once."""
        for worker in self._pool:
            try:
                if abort:
                    worker.process.terminate()
                else:
                    worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=1 if abort else 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pool = []


_DONE = object()


def prefetch(
    src: CheckpointSource, arch: MoEArchitecture, layers: list[int], depth: int
) -> Iterator[tuple[int, Mapping[str, RawTensor], float, int]]:
    """Read layers on a background thread, at most ``depth`` ahead of the consumer:
    yields ``(layer, raw tensors, read seconds, bytes read)``.

    However the consumer stops (done, an error, Ctrl-C), the reader is told to stop, the queue is
    drained so it never blocks holding a layer, and it is joined before the source may be closed.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for layer in layers:
                if stop.is_set():
                    return
                t0 = time.monotonic()
                # Sources return bytes already read into memory (no lazy mmap), so disk and
                # network time overlap the previous layer's compute.
                raw = src.read(arch.layer_tensors(layer))
                nbytes = sum(int(t.data.nbytes) for t in raw.values())
                if not put((layer, raw, time.monotonic() - t0, nbytes)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_DONE)

    thread = threading.Thread(target=reader, name="vindex-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
