"""The per-layer decomposition: one layer's raw tensors in, its gate vectors and spectra out.

Pure computation (no I/O): every engine (serial, worker processes, a Ray task) runs the same
function on the same inputs, so a layer's result does not depend on where it was computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arch import MoEArchitecture
from ..numerics.routes import BLAS_THREADS, DEFAULT_PRECISION
from ..results import LayerResult
from ..source.base import RawTensor
from .defaults import DEFAULT_BATCH

if TYPE_CHECKING:
    from ..numerics import svd


@dataclass(frozen=True)
class DecomposeSettings:
    """How experts are decomposed. All but ``batch_size`` fix the bits; plain data, so it crosses
    to worker processes as a dict."""

    num_feats: int
    device: str  # resolved: "cpu" or "cuda"
    precision: str = DEFAULT_PRECISION  # numerics.routes.PRECISIONS
    batch_size: int = DEFAULT_BATCH
    blas_threads: int = BLAS_THREADS


class BufferPool:
    """One reused float32 dequantization buffer (no page faults per batch)."""

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.buffer is None or self.buffer.shape != shape:
            self.buffer = None  # free the old one before allocating the new
            self.buffer = np.empty(shape, dtype=np.float32)
        return self.buffer


@dataclass
class RoutedExperts:
    """A layer's routed experts, filled in batch by batch (in any order)."""

    vectors: np.ndarray  # float32 (E, K, H)
    singular_values: np.ndarray  # float32 (E, K)
    frobenius_norm: np.ndarray  # float64 (E,)

    @classmethod
    def empty(
        cls, arch: MoEArchitecture, num_feats: int, num_experts: int | None = None
    ) -> RoutedExperts:
        """Room for ``num_experts`` experts (None: all the layer's)."""
        if num_experts is None:
            num_experts = arch.moe_config().n_routed_experts
        return cls(
            np.empty((num_experts, num_feats, arch.gate_shape[1]), np.float32),
            np.empty((num_experts, num_feats), np.float32),
            np.empty(num_experts, np.float64),
        )

    @property
    def num_experts(self) -> int:
        return len(self.frobenius_norm)

    def store(
        self,
        experts: range,
        vectors: np.ndarray,
        singular_values: np.ndarray,
        frobenius_norm: np.ndarray,
    ) -> None:
        self.vectors[experts.start : experts.stop] = vectors
        self.singular_values[experts.start : experts.stop] = singular_values  # float64 -> float32
        self.frobenius_norm[experts.start : experts.stop] = frobenius_norm


@dataclass
class SharedAndRouter:
    """The shared expert's and the router's decompositions of one layer (``shared_and_router``);
    the router's weights too when LarQL's router file is asked for. Same meanings as the
    ``LayerResult`` fields of the same names."""

    router_singular_values: np.ndarray | None
    router_frobenius_norm: float | None
    shared_singular_values: np.ndarray | None = None
    shared_frobenius_norm: float | None = None
    router_weight: np.ndarray | None = None
    router_bias: np.ndarray | None = None

    def to_plain(self) -> dict[str, Any]:
        """Its fields as a dict of arrays and numbers (what crosses to and from a Ray task)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DecomposedLayer:
    """A layer's gate vectors ``(E, K, H)`` and the spectra ``LayerResult`` keeps (all but the
    checksum of the block, which the binary's writer computes as it writes it)."""

    layer: int
    vectors: np.ndarray
    singular_values: np.ndarray
    frobenius_norm: np.ndarray
    extras: SharedAndRouter

    @classmethod
    def of(cls, layer: int, routed: RoutedExperts, extras: SharedAndRouter) -> DecomposedLayer:
        """A finished layer: its routed experts, and the shared expert's and router's spectra."""
        return cls(layer, routed.vectors, routed.singular_values, routed.frobenius_norm, extras)

    def result(self, sha256: str) -> LayerResult:
        x = self.extras
        return LayerResult(
            layer=self.layer,
            sha256=sha256,
            singular_values=self.singular_values,
            frobenius_norm=self.frobenius_norm,
            router_singular_values=x.router_singular_values,
            router_frobenius_norm=x.router_frobenius_norm,
            shared_singular_values=x.shared_singular_values,
            shared_frobenius_norm=x.shared_frobenius_norm,
            router_weight=x.router_weight,
            router_bias=x.router_bias,
        )


def expert_batches(num_experts: int, batch_size: int, workers: int = 1) -> list[range]:
    """Batches of at most ``batch_size`` experts, small enough that each of ``workers`` gets one."""
    size = max(1, min(batch_size, -(-num_experts // workers)))
    return [range(start, min(start + size, num_experts)) for start in range(0, num_experts, size)]


def shrinking_batches(num_experts: int, batch_size: int, workers: int) -> list[range]:
    """Batches of at most ``batch_size`` experts, each at most 1 / (2 ``workers``) of the experts
    left from its start: big batches first, single experts last, so ``workers`` processes, each
    handed the next batch as it finishes one, end the layer within about one expert of each
    other. (A batch's results do not depend on how the experts are grouped.)"""
    batches = []
    start = 0
    while start < num_experts:
        size = max(1, min(batch_size, (num_experts - start) // (2 * workers)))
        batches.append(range(start, start + size))
        start += size
    return batches


def decompose_experts(
    arch: MoEArchitecture,
    layer: int,
    experts: range,
    raw: Mapping[str, RawTensor],
    settings: DecomposeSettings,
    buffers: BufferPool,
) -> svd.TopK:
    """Dequantize a batch of routed experts' gate_proj into a reused buffer and decompose it."""
    from ..numerics import svd  # here: a build on worker processes never loads scipy in its own

    weights = arch.expert_gate_weights(
        layer, experts, raw, out=buffers.get((len(experts), *arch.gate_shape))
    )
    names = [arch.expert_gate_name(layer, e) for e in experts]
    return svd.top_k_right_singular(
        weights,
        settings.num_feats,
        device=settings.device,
        precision=settings.precision,
        names=names,
        blas_threads=settings.blas_threads,
    )


def decompose_routed(
    arch: MoEArchitecture,
    layer: int,
    experts: range | None,
    raw: Mapping[str, RawTensor],
    settings: DecomposeSettings,
    buffers: BufferPool,
    on_batch: Callable[[int], None] | None = None,
) -> RoutedExperts:
    """Dequantize and decompose the routed experts ``experts`` of ``layer`` (None: all of them;
    a range starting on a batch boundary) in batches counted from its start, the serial build's
    batches, each into the one reused buffer. ``on_batch(n)`` is told each time ``n`` more
    experts are done (a progress bar)."""
    routed = RoutedExperts.empty(
        arch, settings.num_feats, None if experts is None else len(experts)
    )
    start = 0 if experts is None else experts.start
    for batch in expert_batches(routed.num_experts, settings.batch_size):
        top = decompose_experts(
            arch, layer, range(start + batch.start, start + batch.stop), raw, settings, buffers
        )
        routed.store(batch, top.vectors, top.singular_values, top.frobenius_norm)
        if on_batch is not None:
            on_batch(len(batch))
    return routed


def decompose_layer(
    arch: MoEArchitecture,
    layer: int,
    raw: Mapping[str, RawTensor],
    settings: DecomposeSettings,
    *,
    keep_router: bool,
    buffers: BufferPool | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> DecomposedLayer:
    """Every routed expert of ``layer`` (``decompose_routed``), then the shared expert and the router."""
    routed = decompose_routed(arch, layer, None, raw, settings, buffers or BufferPool(), on_batch)
    return finish_layer(arch, layer, raw, routed, settings, keep_router=keep_router)


def finish_layer(
    arch: MoEArchitecture,
    layer: int,
    raw: Mapping[str, RawTensor],
    routed: RoutedExperts,
    settings: DecomposeSettings,
    *,
    keep_router: bool,
) -> DecomposedLayer:
    """A layer whose routed experts are done: add the shared expert's and the router's spectra."""
    return DecomposedLayer.of(
        layer, routed, shared_and_router(arch, layer, raw, settings, keep_router)
    )


def shared_and_router(
    arch: MoEArchitecture,
    layer: int,
    raw: Mapping[str, RawTensor],
    settings: DecomposeSettings,
    keep_router: bool,
) -> SharedAndRouter:
    """The shared expert's and the router's decompositions of one layer (no router's where the
    model's router is not a matrix: those fields stay None)."""
    from ..numerics import svd

    router = arch.router_weight(layer, raw) if arch.has_router_matrix else None
    extras = SharedAndRouter(router_singular_values=None, router_frobenius_norm=None)
    if router is not None:
        router64 = router.astype(np.float64)  # widened once, for both
        extras.router_singular_values = svd.singular_values(
            router64, name=arch.router_name(layer), blas_threads=settings.blas_threads
        )
        extras.router_frobenius_norm = svd.frobenius_norm(
            router64, blas_threads=settings.blas_threads
        )
    shared = arch.shared_gate_weight(layer, raw)
    if shared is not None:
        top = svd.top_k_right_singular(
            shared[None],
            settings.num_feats,
            device=settings.device,
            precision=settings.precision,
            blas_threads=settings.blas_threads,
            names=[arch.shared_gate_name(layer) or f"layer {layer} shared expert"],
        )
        extras.shared_singular_values = top.singular_values[0].astype(np.float32)
        extras.shared_frobenius_norm = float(top.frobenius_norm[0])
    if keep_router and router is not None:
        extras.router_weight = router
        extras.router_bias = arch.router_bias(layer, raw)
    return extras
