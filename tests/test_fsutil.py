"""fsutil: atomic writes create files as open() does (mode 0666 less the umask), and importing it
has no side effect on the process (it neither reads nor sets the umask)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vindex_hub.fsutil import atomic_write_text

from vindex_fixtures import REPO_ROOT


def test_import_does_not_touch_the_umask() -> None:
    code = (
        "import os; calls = []; real = os.umask\n"
        "os.umask = lambda m: calls.append(m) or real(m)\n"
        "import vindex_hub.fsutil, vindex_hub.writers.binary\n"
        "print(len(calls))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


def test_atomic_write_uses_the_umask_in_force_when_writing(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "one")
    finally:
        os.umask(old)
    os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "b.txt", "two")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temp file left
