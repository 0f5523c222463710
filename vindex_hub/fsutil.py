"""Atomic file creation (a file appears under its final name only when it is complete) and the one
reader of JSON-object files."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import VindexError, VindexFormatError


def _create_beside(final: Path) -> Path:
    """A new empty file named ``.<name>.<random>.tmp`` beside ``final``, created with mode 0666
    less the process umask, as ``open`` creates files (no reading or flipping of the umask)."""
    for _ in range(100):
        tmp = final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{final}: no free temporary name beside it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(final)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json_object(
    path: str | os.PathLike[str], *, what: str, error: type[VindexError] = VindexFormatError
) -> dict[str, Any]:
    """The JSON object in the file at ``path``; ``error`` (default ``VindexFormatError``) naming the
    path and ``what`` the file is (``"sidecar"``, ``"checkpoint config"``) when it is missing,
    unreadable, not JSON or not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} not found (the {what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: the {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} is not a JSON object (got {type(data).__name__})")
    return data
