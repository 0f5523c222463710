"""The builder: checkpoint -> vindex folder, one layer at a time, resumable.

``plan`` fixes what is built (source, architecture, layers, fingerprint, output folder);
``decompose`` is the pure per-layer computation; ``engine`` runs it (a reader thread fetches the
raw tensors of layer L+1, from local mmap or ranged Hub reads, while layer L is decomposed);
``pipeline`` writes each layer at its fixed offset, records it, and ends with the one write
sequence of ``writers.derived``.
"""

from ..errors import VindexError
from .decompose import DEFAULT_BATCH
from .pipeline import BuildSummary, build_vindex
from .plan import DEFAULT_NUM_FEATS, DEFAULT_PREFETCH_LAYERS, open_source

__all__ = [
    "build_vindex",
    "open_source",
    "BuildSummary",
    "VindexError",
    "DEFAULT_BATCH",
    "DEFAULT_NUM_FEATS",
    "DEFAULT_PREFETCH_LAYERS",
]
