"""The SVD routes' names, choices and defaults (no numpy: the CLI reads them at start-up).

``numerics.svd`` implements the routes; a build records the route it asked for, and the BLAS
thread count, in the sidecar's builder block and its resume fingerprint.
"""

from __future__ import annotations

from ..errors import UsageError

__all__ = [
    "BLAS_THREADS",
    "DEFAULT_DEVICE",
    "DEFAULT_PRECISION",
    "DEVICES",
    "PRECISIONS",
    "ROUTE_CUDA",
    "ROUTE_DEFLATED",
    "ROUTE_F64",
    "ROUTE_MIXED",
    "method_for",
    "resolve_device",
    "route_for",
]

# ``--device`` choices (``resolve_device`` resolves "auto"), the default first.
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = DEVICES[0]
# ``precision`` choices of the CPU routes (``numerics.svd``'s docstring), the default first.
PRECISIONS = ("mixed", "f64")
DEFAULT_PRECISION = PRECISIONS[0]
# The BLAS threads every decomposition runs with: part of what fixes its bits.
BLAS_THREADS = 1

# The route a matrix took (``TopK.routes``); the route a build records is the one it asked for.
ROUTE_MIXED = "cpu-mixed"
ROUTE_DEFLATED = "cpu-mixed-deflated"  # a matrix's route within a cpu-mixed build
ROUTE_F64 = "cpu-f64"
ROUTE_CUDA = "cuda-f64"
_METHODS = {
    ROUTE_MIXED: "exact top-K SVD, the route chosen per matrix by a block power probe: float32 "
    "Gram matrix (of W less its strong directions, where the probe finds them) + float32 partial "
    "symmetric eigensolver (LAPACK ssyevr, top K+32) + one float64 Rayleigh-Ritz step with W, "
    "certified by its residuals; float64 route where the probe or the certificate asks for it",
    ROUTE_DEFLATED: "exact top-K SVD: the cpu-mixed route with the strong directions found by "
    "float32 block power iteration projected out before the float32 stage",
    ROUTE_F64: "exact top-K SVD: float64 Gram matrix + partial symmetric eigensolver (LAPACK dsyevr)",
    ROUTE_CUDA: "exact top-K SVD: float64 Gram matrix + symmetric eigensolver (torch eigh, batched)",
}


def resolve_device(device: str = DEFAULT_DEVICE) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; checks ``"cuda"`` is there."""
    if device not in DEVICES:
        raise UsageError(f"device={device!r}: must be auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch  # imported here: the CPU path does not need it

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("device=cuda was asked for but torch sees no CUDA device")
    return "cpu"


def route_for(device: str, precision: str = DEFAULT_PRECISION) -> str:
    """The route a build with this (resolved) device and precision asks for."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    if device == "cuda":
        return ROUTE_CUDA
    return ROUTE_MIXED if precision == "mixed" else ROUTE_F64


def method_for(route: str) -> str:
    """The sidecar's ``builder.method`` text of a route."""
    return _METHODS[route]
