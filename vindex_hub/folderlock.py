"""The exclusive lock a ``build``, ``convert`` or ``pull`` holds on its output folder, for its whole run.

Two writers in one folder could each pass the folder's checks and then interleave their files
(a sidecar naming layers 3-5 beside a binary of layers 0-2). So each takes an OS file lock
(``filelock``, ``flock`` on POSIX) on ``OUT/.vindex.lock`` first, without waiting: a second process
(or a second call in the same process) is refused at once with one line naming the folder and the
holder, whose pid, host and command sit in ``OUT/.vindex.lock.json``. The kernel drops the lock
when its holder dies (even ``kill -9``), so a stale lock never blocks; the info file of a dead
holder is simply overwritten by the next one. Both files are hidden: never pushed, never pulled.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .errors import OutputConflictError
from .format import filenames
from .safetext import printable

_MAX_SHOWN = 200  # characters of the holder's command shown in the refusal


class FolderLock:
    """Held from construction until ``release`` (or the end of a ``with`` block)."""

    def __init__(self, folder: str | os.PathLike[str], verb: str):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputConflictError(f"{self.folder}: exists and is not a folder; choose another")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._info = self.folder / filenames.OUTPUT_LOCK_INFO
        self._lock = FileLock(str(self.folder / filenames.OUTPUT_LOCK), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputConflictError(
                f"{self.folder} is in use by another vindex-hub process ({_holder(self._info)}); "
                "wait for it to finish, or choose another folder"
            ) from None
        try:
            _write_info(self._info, verb)
        except OSError:  # the info is only a courtesy to whoever is refused
            pass

    def release(self) -> None:
        if self._lock.is_locked:
            self._info.unlink(missing_ok=True)  # still ours: nobody else can hold the lock yet
            self._lock.release()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_info(path: Path, verb: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "verb": verb,
        "command": _command(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _command() -> str:
    """The holder's command line when it is our CLI (whose arguments carry no secret), else just
    the program's name (a script's arguments might)."""
    argv = sys.argv or [""]
    program = Path(argv[0])
    if program.name == "vindex-hub" or program.parent.name == "vindex_hub":  # also python -m
        return shlex.join(["vindex-hub", *argv[1:]])
    return program.name


def _holder(path: Path) -> str:
    """Who holds the lock, from its info file, in words (printable characters only)."""
    try:
        info: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "holder unknown: it has not recorded itself yet"
    if not isinstance(info, dict):
        return "holder unknown"
    fields = {k: printable(str(info.get(k, "?"))) for k in ("verb", "pid", "host", "since")}
    command = printable(str(info.get("command", "")))
    if len(command) > _MAX_SHOWN:
        command = command[:_MAX_SHOWN] + "..."
    return (
        f"a {fields['verb']} by pid {fields['pid']} on {fields['host']} since {fields['since']}"
        + (f": {command}" if command else "")
    )
