"""``--engine ray``: a build's layers decomposed as Ray tasks, on an existing cluster or a local one.

The unit of work is a layer, or, when there are fewer layers to do than worker slots, a share of
one layer's experts (shares start on ``batch_size`` boundaries, so the batches are the serial
build's). Each task opens the checkpoint itself from a *source spec* of plain data (a Hub repo id
and its resolved commit sha, or a folder path the workers see), reads only its tensors (ranged
reads from the Hub; a share reads its whole layer), dequantizes and decomposes them by the same
pure functions as the serial engine (with its fixed BLAS threads, or on one GPU, ``num_gpus=1``),
and returns numpy arrays and plain values. The driver writes each layer and its resume state
exactly as a serial build does, so the bits and the resume are the same.

Only numpy arrays and plain data cross Ray's object store: no source object, no exception of
ours (a task that meets a ``VindexError`` returns its type name and message, and the driver
raises it; those are never retried, since they would fail again). A task whose worker or node
dies is retried ``max_retries`` times by Ray, then the build ends with a ``ClusterError``. At
most ``max_in_flight`` tasks are submitted at a time (default: the cluster's slots), which bounds
the results held in the object store and the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arch import get_architecture
from ..errors import CheckpointError, ClusterError, UsageError, VindexError
from ..source.base import CheckpointSource
from .decompose import (
    BufferPool,
    DecomposedLayer,
    DecomposeSettings,
    RoutedExperts,
    SharedAndRouter,
    decompose_routed,
    shared_and_router,
)
from .engine import error_from
from .plan import BuildPlan, config_sha256

INSTALL_HINT = "pip install -e '.[ray]' in a clone of vindex-hub"
# Ray retries a task this many times when its worker process or node dies.
DEFAULT_MAX_RETRIES = 3
# The client settings a worker must share with the driver to reach the same Hub.
HUB_CLIENT_VARIABLES = ("HF_ENDPOINT",)
# How long the driver waits to reach a named cluster's address before giving up.
REACH_TIMEOUT_S = 10
# Task names (and so worker process titles, ``ray::<name>``) start with this.
TASK_NAME = "vindex-layer"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"engine=ray needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


def source_spec(src: CheckpointSource) -> dict[str, str]:
    """What a worker needs to open ``src`` itself: plain data, never the source object."""
    if src.repo_id is not None:
        return {"repo_id": src.repo_id, "revision": str(src.revision)}
    if src.path is not None:
        return {"path": os.path.abspath(src.path)}
    raise UsageError(f"engine=ray needs a checkpoint folder or a Hub repo id, not {src.describe()}")


# ---- the units of work (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    layer: int
    experts: range
    with_layer_extras: bool  # the share that also decomposes the shared expert and the router

    @property
    def name(self) -> str:
        return f"{TASK_NAME}-{self.layer}-experts-{self.experts.start}-{self.experts.stop}"


def split_work(layers: list[int], num_experts: int, batch_size: int, slots: int) -> list[Part]:
    """One part per layer, or, with fewer layers than ``slots``, each layer in about
    ``slots / len(layers)`` shares of whole batches."""
    batches = math.ceil(num_experts / batch_size)
    shares = 1 if len(layers) >= slots else min(batches, math.ceil(slots / len(layers)))
    size = math.ceil(batches / shares) * batch_size
    return [
        Part(layer, range(start, min(start + size, num_experts)), start == 0)
        for layer in layers
        for start in range(0, num_experts, size)
    ]


# ---- the task (runs on a worker) -------------------------------------------------------------
_open_sources: dict[
    tuple[tuple[str, str], ...], CheckpointSource
] = {}  # per worker process, reused by its tasks
# The arrays a task returns of its share of a layer's experts, by RoutedExperts' field names.
_ROUTED_FIELDS = tuple(field.name for field in dataclasses.fields(RoutedExperts))


def _open(spec: dict[str, str], token: str | None) -> CheckpointSource:
    key = tuple(sorted(spec.items()))
    if key not in _open_sources:
        for old in _open_sources.values():
            old.close()
        _open_sources.clear()
        if "repo_id" in spec:
            from ..source.hub import HubCheckpoint

            _open_sources[key] = HubCheckpoint(
                spec["repo_id"], revision=spec["revision"], token=token
            )
        else:
            from ..source.local import LocalCheckpoint

            _open_sources[key] = LocalCheckpoint(spec["path"])
    return _open_sources[key]


def decompose_part(
    spec: dict[str, str],
    token: str | None,
    expected_config: str,
    layer: int,
    start: int,
    stop: int,
    with_layer_extras: bool,
    settings: dict[str, Any],
    keep_router: bool,
) -> dict[str, Any]:
    """One part, as a Ray task: numpy arrays and plain values, or ``{"error", "message"}``."""
    try:
        src = _open(spec, token)
        if config_sha256(src.config) != expected_config:
            raise CheckpointError(
                f"{src.describe()}: the config.json this worker reads differs from the "
                "driver's; every node must see the same checkpoint"
            )
        arch = get_architecture(
            src.config, tensor_names=src.tensor_names(), where=f"{src.describe()}/config.json"
        )
        t0 = time.monotonic()
        # The whole layer's tensors even for a share: a family may fuse all experts into one
        # tensor (the arch interface names tensors per layer). Shares exist only with fewer
        # layers than slots, so at most ``slots`` layer reads in all.
        raw = src.read(arch.layer_tensors(layer))
        read_seconds = time.monotonic() - t0
        decompose = DecomposeSettings(**settings)
        # A share starts on a batch boundary: its batches are the serial build's.
        share = decompose_routed(arch, layer, range(start, stop), raw, decompose, BufferPool())
        extras = (
            shared_and_router(arch, layer, raw, decompose, keep_router).to_plain()
            if with_layer_extras
            else None
        )
        return {
            **{key: getattr(share, key) for key in _ROUTED_FIELDS},
            "extras": extras,
            "read_seconds": read_seconds,
            "read_bytes": sum(int(t.data.nbytes) for t in raw.values()),
        }
    except VindexError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


# ---- the driver --------------------------------------------------------------------------------
class _Assembly:
    """A split layer's shares, put together as they arrive."""

    def __init__(self, layer: int, parts: int):
        self.layer, self.missing = layer, parts
        self.pieces: list[tuple[range, dict[str, Any]]] = []
        self.extras: SharedAndRouter | None = None  # from the share with_layer_extras

    def add(self, part: Part, out: dict[str, Any]) -> DecomposedLayer | None:
        self.pieces.append((part.experts, out))
        if out["extras"] is not None:
            self.extras = SharedAndRouter(**out["extras"])
        self.missing -= 1
        if self.missing:
            return None
        self.pieces.sort(key=lambda piece: piece[0].start)
        joined = RoutedExperts(
            **{
                key: np.concatenate([o[key] for _, o in self.pieces])
                if len(self.pieces) > 1
                else self.pieces[0][1][key]
                for key in _ROUTED_FIELDS
            }
        )
        assert self.extras is not None, "no share decomposed the shared expert and router"
        return DecomposedLayer.of(self.layer, joined, self.extras)


def _check_reachable(address: str) -> None:
    """One TCP connect to a ``host:port`` address: Ray itself retries an unreachable GCS for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
            "is `ray start` running there?"
        ) from None


AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
AUTH_HINT = (
    "if the cluster uses token authentication, give this process its token: "
    "RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
)


def _token_auth_as_ray_cli_does() -> bool:
    """Turn Ray's token authentication on for this driver when ``RAY_AUTH_MODE`` is unset and a
    token is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), as
    ``ray start`` does for a node; True when it did.

    Ray (2.60) starts a cluster with token authentication whenever such a token exists, but
    ``ray.init(address=...)`` only sends the token when ``RAY_AUTH_MODE=token`` is set, so a
    driver following ``ray start --head`` could not join. An explicit ``RAY_AUTH_MODE`` is left
    as it is.
    """
    if os.environ.get(AUTH_MODE_VARIABLE) is not None:
        return False
    from ..compat import enable_ray_token_auth_if_token

    return enable_ray_token_auth_if_token()


@contextlib.contextmanager
def _core_log_aside() -> Iterator[None]:
    """While joining, what Ray's C++ core writes to stderr (a line per failed attempt to reach
    the cluster, 20 or more before its error, which no log level silences) goes to a temporary
    file: the failure is reported as one line. The file is dropped."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as aside:
        os.dup2(aside.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class RayEngine:
    """Runs the parts on the Ray cluster at ``address`` (else ``RAY_ADDRESS``, else a new local one)."""

    def __init__(
        self,
        *,
        batch_size: int,
        address: str | None = None,
        token: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_in_flight: int | None = None,
    ):
        if max_in_flight is not None and max_in_flight < 1:
            raise UsageError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.batch_size, self.token, self.max_retries = batch_size, token, max_retries
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.max_in_flight = max_in_flight
        self.ray = import_ray()
        if self.address:
            _check_reachable(self.address)

    def run(
        self,
        src: CheckpointSource,
        plan: BuildPlan,
        todo: list[int],
        *,
        on_experts: Callable[[int], None],
        on_layer_read: Callable[[int, float, int], None],
    ) -> Iterator[DecomposedLayer]:
        ray = self.ray
        spec = source_spec(src)
        token = self.token
        if token is None and "repo_id" in spec:
            from huggingface_hub import get_token

            token = get_token()
        joined_here = self._join()
        pending: dict[Any, Part] = {}
        try:
            gpu = plan.device == "cuda"
            slots = self._slots("GPU" if gpu else "CPU")
            num_experts = plan.index.num_experts
            parts = deque(split_work(todo, num_experts, self.batch_size, slots))
            shares = {layer: sum(p.layer == layer for p in parts) for layer in todo}
            assemblies: dict[int, _Assembly] = {}
            task = ray.remote(decompose_part)
            resources = dict(
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )
            args = (spec, token, plan.fingerprint["config_sha256"])
            settings = (
                dataclasses.asdict(plan.decompose_settings(self.batch_size)),
                plan.keep_router,
            )
            in_flight = self.max_in_flight or slots
            while parts or pending:
                while parts and len(pending) < in_flight:
                    p = parts.popleft()
                    ref = task.options(name=p.name, **resources).remote(
                        *args,
                        p.layer,
                        p.experts.start,
                        p.experts.stop,
                        p.with_layer_extras,
                        *settings,
                    )
                    pending[ref] = p
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                part = pending.pop(ref)
                out = self._get(ref, part)
                if "error" in out:
                    raise error_from(out["error"], out["message"])
                on_layer_read(part.layer, out["read_seconds"], out["read_bytes"])
                on_experts(len(part.experts))
                assembly = assemblies.setdefault(
                    part.layer, _Assembly(part.layer, shares[part.layer])
                )
                done = assembly.add(part, out)
                del out, ref
                if done is not None:
                    del assemblies[part.layer]
                    yield done
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if joined_here:
                ray.shutdown()

    def _join(self) -> bool:
        """Connect to the cluster (or start a local one); True when this call did it."""
        ray = self.ray
        if ray.is_initialized():
            return False
        env = {name: os.environ[name] for name in HUB_CLIENT_VARIABLES if name in os.environ}
        options: dict[str, Any] = {
            "logging_level": logging.ERROR,
            "log_to_driver": False,
            "runtime_env": {"env_vars": env} if env else None,
        }
        try:
            if self.address:
                _token_auth_as_ray_cli_does()
                with _core_log_aside():
                    ray.init(address=self.address, **options)
            else:
                ray.init(address="local", include_dashboard=False, **options)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            where = f"at {self.address}" if self.address else "(a new local one)"
            message = " ".join(str(exc).split())
            hint = ""
            if self.address and os.environ.get(AUTH_MODE_VARIABLE, "").lower() != "token":
                hint = f" ({AUTH_HINT})"
            raise ClusterError(
                f"cannot join the Ray cluster {where}: {message[:500]}{hint}"
            ) from None
        return True

    def _slots(self, resource: str) -> int:
        slots = int(self.ray.cluster_resources().get(resource, 0))
        if slots < 1:
            raise ClusterError(f"the Ray cluster has no {resource}s to run the build's tasks on")
        return slots

    def _get(self, ref: Any, part: Part) -> dict[str, Any]:
        exceptions = self.ray.exceptions
        died = (
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.OutOfMemoryError,
            exceptions.ObjectLostError,
        )
        try:
            return self.ray.get(ref)
        except died as exc:
            tries = self.max_retries + 1
            raise ClusterError(
                f"layer {part.layer} (experts {part.experts.start}-{part.experts.stop - 1}): the worker running "
                f"its Ray task died on each of {tries} tries ({type(exc).__name__}); see the cluster's logs"
            ) from None


__all__ = ["RayEngine", "split_work", "source_spec", "INSTALL_HINT"]
