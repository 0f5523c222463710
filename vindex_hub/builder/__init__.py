"""The builder: checkpoint -> vindex folder, one layer at a time, resumable.

``plan`` fixes what is built (source, architecture, layers, fingerprint, output folder);
``decompose`` is the pure per-layer computation; ``engine`` runs it (a reader thread fetches the
raw tensors of layer L+1, from local mmap or ranged Hub reads, while layer L is decomposed);
``pipeline`` writes each layer at its fixed offset, records it, and ends with the one write
sequence of ``writers.derived``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..errors import VindexError
from .defaults import DEFAULT_BATCH, DEFAULT_NUM_FEATS, DEFAULT_PREFETCH_LAYERS

if TYPE_CHECKING:
    from .pipeline import BuildSummary, build_vindex
    from .plan import open_source

# The builder loads numpy, scipy and safetensors: imported on first use, so that reading the
# defaults (the CLI's --help) stays light.
_LAZY = {
    "build_vindex": ".pipeline",
    "BuildSummary": ".pipeline",
    "open_source": ".plan",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "build_vindex",
    "open_source",
    "BuildSummary",
    "VindexError",
    "DEFAULT_BATCH",
    "DEFAULT_NUM_FEATS",
    "DEFAULT_PREFETCH_LAYERS",
]
