"""What a worker process runs (``workers.spawn_worker`` starts it, ``engine.ProcessEngine``
feeds it): the build's settings first, then tasks on layers held in shared memory.

Only plain data crosses the pipe: the config dict and tensor names, the settings as a dict, a
shared-memory name with its table of tensor names/dtypes/shapes/offsets, numpy arrays, and an
error's type name and message.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from multiprocessing.connection import Connection

import numpy as np

from ..arch import get_architecture
from ..source.base import RawTensor, TensorInfo
from .decompose import BufferPool, DecomposeSettings, decompose_experts, shared_and_router

# A layer's raw tensors in its shared-memory block: name -> (dtype, shape, offset, nbytes).
LayerTable = dict[str, tuple[str, tuple[int, ...], int, int]]
# A task besides a batch of routed experts (a ``range``): the layer's shared expert and router.
SHARED = "shared"


def layer_views(block: shared_memory.SharedMemory, table: LayerTable) -> dict[str, RawTensor]:
    """The layer's raw tensors as views of ``block`` (no copy)."""
    return {
        name: RawTensor(
            TensorInfo(name, dtype, shape, "", 0, nbytes),
            np.ndarray((nbytes,), dtype=np.uint8, buffer=block.buf, offset=offset),
        )
        for name, (dtype, shape, offset, nbytes) in table.items()
    }


def serve_worker(conn: Connection) -> None:
    """Take the build's settings, then do the tasks sent until told to stop (None) or the pipe
    closes: ``(layer, experts, block name, table)`` for a batch of routed experts (a range),
    ``(layer, (SHARED, keep_router), block name, table)`` for the shared expert and router."""
    try:
        setup = conn.recv()
    except (EOFError, OSError):  # a spare nobody adopted, or the parent is gone
        return
    if setup is None:
        return
    config, tensor_names, settings = setup
    decompose = DecomposeSettings(**settings)
    arch = get_architecture(config, tensor_names=tensor_names)
    buffers = BufferPool()  # kept across batches and layers
    block: shared_memory.SharedMemory | None = None
    raw: dict[str, RawTensor] = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            task = None
        if task is None:
            break
        layer, what, block_name, table = task
        if block is None or block.name != block_name:  # a new layer: map its block
            raw = {}
            if block is not None:
                block.close()
                block = None
            try:
                block = shared_memory.SharedMemory(name=block_name)
            except FileNotFoundError:  # the parent gave the layer up (an error): it reads no reply
                conn.send(("error", "RuntimeError", f"layer {layer} is no longer shared"))
                continue
            raw = layer_views(block, table)
        try:
            if isinstance(what, range):
                top = decompose_experts(arch, layer, what, raw, decompose, buffers)
                reply: tuple = ("ok", top.vectors, top.singular_values, top.frobenius_norm)
            else:
                extras = shared_and_router(arch, layer, raw, decompose, keep_router=what[1])
                reply = ("ok", extras.to_plain())
        except Exception as exc:
            reply = ("error", type(exc).__name__, str(exc))
        try:
            conn.send(reply)
        except OSError:  # the parent is gone (stopped mid-batch): nothing to report to
            break
    raw = {}
    if block is not None:
        block.close()
