"""sha256 of byte ranges and files, streamed in bounded chunks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 8 << 20


def iter_chunks(f: BinaryIO, length: int, *, where: str = "file") -> Iterator[bytes]:
    """The next ``length`` bytes of the open file ``f``, in chunks of at most ``CHUNK`` bytes.

    Raises ``EOFError`` naming ``where`` if the file ends first (a file shrinking underneath us
    must not turn into an endless loop or a short, wrong hash).
    """
    left = length
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise EOFError(f"{where}: ends {left} bytes early")
        left -= len(chunk)
        yield chunk


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file_range(path: str | os.PathLike[str], offset: int, length: int) -> str:
    """sha256 of ``length`` bytes of ``path`` starting at ``offset`` (must all exist)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for chunk in iter_chunks(f, length, where=str(path)):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    return sha256_file_range(path, 0, os.path.getsize(path))
