"""Engines: where a build's layers are decomposed.

An engine takes the layers still to do and yields each one's ``DecomposedLayer`` (in any
order); the pipeline writes and records them. ``SerialEngine`` reads layer L+1 on a background
thread while this process decomposes layer L.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

from ..arch import MoEArchitecture
from ..source.base import CheckpointSource, RawTensor
from .decompose import DecomposedLayer, decompose_layer
from .plan import BuildPlan


class Engine(Protocol):
    def run(self, src: CheckpointSource, plan: BuildPlan, todo: list[int], *,
            on_experts: Callable[[int], None], on_layer_read: Callable[[int, float, int], None]
            ) -> Iterator[DecomposedLayer]:
        """Decompose ``todo``'s layers; ``on_experts(n)`` per batch of experts done,
        ``on_layer_read(layer, seconds, nbytes)`` as each layer's tensors arrive."""
        ...


class SerialEngine:
    """This process decomposes; a reader thread stays ``prefetch_layers`` layers ahead."""

    def __init__(self, *, batch_size: int, prefetch_layers: int):
        self.batch_size, self.prefetch_layers = batch_size, prefetch_layers

    def run(self, src, plan, todo, *, on_experts, on_layer_read):
        for layer, raw, seconds, nbytes in prefetch(src, plan.arch, todo, self.prefetch_layers):
            on_layer_read(layer, seconds, nbytes)
            decomposed = decompose_layer(plan.arch, layer, raw, num_feats=plan.num_feats, device=plan.device,
                                         batch_size=self.batch_size, keep_router=plan.larql_router,
                                         on_batch=on_experts)
            del raw  # before the layer is written: one raw layer less in memory
            yield decomposed


_DONE = object()


def prefetch(src: CheckpointSource, arch: MoEArchitecture, layers: list[int],
             depth: int) -> Iterator[tuple[int, Mapping[str, RawTensor], float, int]]:
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
