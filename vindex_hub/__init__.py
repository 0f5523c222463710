"""vindex-hub: build, publish and load vindexes of mixture-of-experts models.

The public surface::

    build_vindex(source, out, ...)     checkpoint (folder or Hub repo) -> vindex folder
    push_vindex(folder, repo_id, ...)  vindex folder -> Hub repo (one commit)
    Vindex.open(path_or_repo_id, ...)  read a vindex: numpy / torch, lazy or cached
    verify_vindex(folder)              check binary, index, mirror and card against each other
    compare(a, b, out=None)            the expert subspaces of two vindexes, layer by layer
    add_geometry(path, out=None)       add the expert geometry to an existing vindex
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    HubError,
    IntegrityError,
    OutputConflictError,
    QuantizationError,
    RemoteNotFoundError,
    UnsupportedArchitectureError,
    UsageError,
    VindexError,
    VindexFormatError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below loads them
    from .builder import build_vindex
    from .comparison import compare
    from .geometry import add_geometry
    from .load import Vindex
    from .pull import pull_vindex
    from .push import push_vindex
    from .verify import verify_vindex

# Heavy modules (torch, datasets) load on first use, so `vindex-hub --help` stays instant.
_LAZY = {
    "build_vindex": "vindex_hub.builder",
    "push_vindex": "vindex_hub.push",
    "Vindex": "vindex_hub.load",
    "pull_vindex": "vindex_hub.pull",
    "verify_vindex": "vindex_hub.verify",
    "compare": "vindex_hub.comparison",
    "add_geometry": "vindex_hub.geometry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vindex_hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "__version__",
    "build_vindex",
    "push_vindex",
    "Vindex",
    "pull_vindex",
    "verify_vindex",
    "compare",
    "add_geometry",
    "VindexError",
    "CheckpointError",
    "UnsupportedArchitectureError",
    "QuantizationError",
    "VindexFormatError",
    "IntegrityError",
    "OutputConflictError",
    "UsageError",
    "HubError",
    "RemoteNotFoundError",
]
