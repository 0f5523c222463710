"""scripts/setup.sh: its levels (the package alone for the demo, test extras for the tests), the
virtual environment it is told to use, and doing nothing when that one is up to date."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path, venv: str) -> tuple[Path, str]:
    """A copy of the script and pyproject.toml, with a stand-in venv at ``venv``; the digest the
    script stamps."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / venv / "bin").mkdir(parents=True)
    (root / venv / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha256(
        (root / "pyproject.toml").read_bytes() + (root / "scripts" / "setup.sh").read_bytes()
    ).hexdigest()
    return root, digest


def _setup(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize(
    "level,stamp", [("base", ".vindex-hub-setup"), ("test", ".vindex-hub-setup-test")]
)
def test_each_level_is_up_to_date_by_its_own_stamp(tmp_path: Path, level: str, stamp: str):
    root, digest = _project(tmp_path, "elsewhere/venv")
    (root / "elsewhere" / "venv" / stamp).write_text(digest + "\n")
    run = _setup(root, level, VENV="elsewhere/venv")
    assert run.returncode == 0 and "elsewhere/venv is up to date" in run.stdout, (
        run.stdout + run.stderr
    )


def test_an_unknown_level_is_refused_in_one_line(tmp_path: Path):
    root, _ = _project(tmp_path, ".venv")
    run = _setup(root, "everything")
    assert run.returncode == 2
    assert run.stderr.strip() == "setup: unknown level 'everything' (expected base or test)"


def test_the_demo_sets_up_the_package_alone_and_the_tests_add_their_extras():
    demo = (REPO_ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh\n" in demo  # the base level: no ray, transformers or pytest
    for script in ("test.sh", "lint.sh"):
        assert "bash scripts/setup.sh test\n" in (REPO_ROOT / "scripts" / script).read_text()
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert 'test) EXTRAS="[test,ray]"' in setup and 'base) EXTRAS=""' in setup
