"""sha256 of byte ranges and files, streamed in bounded chunks."""

from __future__ import annotations

import hashlib
import os

CHUNK = 8 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file_range(path: str | os.PathLike[str], offset: int, length: int) -> str:
    """sha256 of ``length`` bytes of ``path`` starting at ``offset`` (must all exist)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise EOFError(f"{path}: ends before byte {offset + length}")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    return sha256_file_range(path, 0, os.path.getsize(path))
