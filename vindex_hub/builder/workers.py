"""Worker processes, started before the build needs them.

A spawned worker spends about a second starting its interpreter and importing numpy, scipy and
the architectures before it can decompose anything. Started here first thing (the CLI does so
before it imports the builder; ``build_vindex`` before it opens the checkpoint), that second
overlaps this process's own imports and its reading of the first layer instead of following
them. A worker started here knows nothing of the build: ``engine.ProcessEngine`` adopts it
(``take_spare``) and sends it the build's settings as its first message, so what it computes is
the same as a worker spawned later. Spares nobody adopted are stopped (``stop_spares``) when the
build ends, however it ends.

Standard library and the package's errors only: importing this module loads nothing heavy.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ..errors import UsageError

# The variables BLAS libraries read their thread count from when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_lock = threading.Lock()
_spares: list[tuple[BaseProcess, Connection, int]] = []  # (process, pipe, its BLAS threads)


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(device: str, workers: int | None) -> int:
    """How many processes a build decomposes on (CUDA: this one); checks ``workers``."""
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    if device == "cuda":
        return 1
    return default_workers() if workers is None else workers


@contextlib.contextmanager
def blas_thread_environment(threads: int) -> Iterator[None]:
    """The BLAS thread variables set to ``threads`` for a while: a process spawned meanwhile
    starts with them, so its BLAS loads with that many threads. This process's loaded BLAS is
    not affected."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def spawn_worker(blas_threads: int) -> tuple[BaseProcess, Connection]:
    """A new worker process (``blas_threads`` BLAS threads) and this side of its pipe; it
    imports the builder, then waits for its settings (``worker_loop.serve_worker``)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_worker_entry, name="vindex-worker", daemon=True, args=(child,)
    )
    # SIGINT blocked while the worker is spawned: it inherits the mask, so a Ctrl-C during its
    # start-up (before it ignores SIGINT) is no traceback either; ours is delivered after.
    masked = threading.current_thread() is threading.main_thread()
    if masked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with blas_thread_environment(blas_threads):
            process.start()
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    child.close()
    return process, parent


def _worker_entry(conn: Connection) -> None:
    """A worker's first code. Ctrl-C is the parent's to handle (it stops the workers): a worker
    ignores SIGINT, so a terminal's Ctrl-C, sent to the whole process group, prints no
    traceback from each worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .worker_loop import serve_worker  # the heavy imports, while the parent does its own

    serve_worker(conn)


def start_spares(count: int, blas_threads: int) -> None:
    """Spawn workers now until ``count`` spares with ``blas_threads`` BLAS threads are waiting."""
    with _lock:
        have = sum(1 for _, _, threads in _spares if threads == blas_threads)
        for _ in range(count - have):
            _spares.append((*spawn_worker(blas_threads), blas_threads))


def start_for_build(workers: int | None, device: str, engine: str | None) -> None:
    """Start the spares a build with these arguments will want: its worker processes when it
    runs on this machine's CPU with more than one (a build's ``workers`` and ``device``
    arguments, not yet checked: a wrong guess costs only the spares' start-up)."""
    from ..numerics.routes import BLAS_THREADS  # no numpy: light

    if engine not in (None, "local") or (workers is not None and workers < 1):
        return  # not this engine's workers; a bad count is refused by the build itself
    count = worker_count(device, workers)
    if count < 2:
        return
    # "auto" resolves to CUDA only where torch sees a GPU: not worth importing torch to ask;
    # without NVIDIA's driver there is none.
    if device == "auto" and os.path.exists("/dev/nvidiactl"):
        return
    start_spares(count, BLAS_THREADS)


def take_spare(blas_threads: int) -> tuple[BaseProcess, Connection] | None:
    """A started spare worker with ``blas_threads`` BLAS threads, now the caller's; None if
    there is none (or it has died)."""
    with _lock:
        for i, (process, conn, threads) in enumerate(_spares):
            if threads == blas_threads and process.is_alive():
                del _spares[i]
                return process, conn
    return None


def stop_spares() -> None:
    """Stop every spare nobody adopted (the build needed fewer, or none: resumed, failed)."""
    with _lock:
        spares = _spares[:]
        _spares.clear()
    for process, _, _ in spares:
        process.terminate()
    for process, conn, _ in spares:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()
