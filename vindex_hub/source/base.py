"""What the builder needs from a checkpoint, wherever it lives (local folder or Hub repo).

A source resolves ``config.json`` and the safetensors ``weight_map`` and hands out tensors by
name as *raw bytes*: packed FP4 (``I8``), FP8 and E8M0 tensors are never converted numerically
here (``quant`` decodes them). Both sources parse shard headers with the same checked parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard file and its byte range inside that file."""

    name: str
    dtype: str  # safetensors dtype string: "I8", "F8_E4M3", "F8_E8M0", "BF16", "F32", ...
    shape: tuple[int, ...]
    shard: str  # file name relative to the checkpoint root
    start: int  # absolute byte offset in the shard file (header included)
    end: int  # exclusive

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RawTensor:
    """A tensor's bytes, undecoded: ``data`` is a 1-D ``uint8`` array of ``info.nbytes``."""

    info: TensorInfo
    data: np.ndarray


class CheckpointSource(Protocol):
    """A checkpoint the builder reads from. Implementations: ``LocalCheckpoint``, ``HubCheckpoint``."""

    config: dict[str, Any]  # parsed config.json
    repo_id: str | None  # Hub repo id, when the checkpoint came from the Hub
    revision: str | None  # resolved commit sha, when known
    path: str | None  # local folder, when local

    def describe(self) -> str:
        """A short human name for messages: a path, or ``repo@sha``."""
        ...

    def content_fingerprint(self) -> str | None:
        """For a local checkpoint, the sha256 that identifies its contents without its path (of the
        index JSON; of config.json and the shard header for a single-file one); None for a Hub one,
        which its commit sha identifies."""
        ...

    def tensor_names(self) -> frozenset[str]: ...

    def tensor_info(self, name: str) -> TensorInfo:
        """Raises ``CheckpointError`` naming the tensor when it is not in the weight_map or shard."""
        ...

    def read(self, names: Iterable[str]) -> Mapping[str, RawTensor]:
        """Read several tensors at once (a remote source coalesces adjacent byte ranges)."""
        ...

    def file(self, name: str) -> Path:
        """A small file beside the weights (``tokenizer.json``) as a local path; raises
        ``CheckpointError`` naming it and the checkpoint when there is none."""
        ...

    def close(self) -> None: ...
