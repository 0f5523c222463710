"""The CLI is a thin, lazy layer: ``--help``, ``info`` and ``verify`` of a local folder load
none of the heavy libraries; the package's public API resolves lazily and is listed by ``dir``.

Each case runs in a fresh interpreter (the test process has imported everything already) and
reads that interpreter's ``sys.modules`` after the command ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vindex_hub

from vindex_fixtures import REPO_ROOT

HEAVY = ("scipy", "torch", "pyarrow", "datasets")

# Runs the CLI's main() in-process, then reports the exit status and the top-level modules loaded.
_PROBE = """
import contextlib, io, json, sys
from vindex_hub.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:  # --help
        status = exc.code
print(json.dumps({"status": status, "modules": sorted({m.split(".")[0] for m in sys.modules}),
                  "vindex_hub": sorted(m for m in sys.modules if m.startswith("vindex_hub."))}))
"""


def _probe(*argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _heavy(result: dict) -> list[str]:
    return [m for m in HEAVY if m in result["modules"]]


def test_help_imports_nothing_heavy() -> None:
    for argv in (["--help"], ["build", "--help"], ["pull", "--help"]):
        result = _probe(*argv)
        assert result["status"] == 0
        assert _heavy(result) == [], argv
        # parser() reads the builder's defaults, not the builder; pull is not loaded at all
        assert "vindex_hub.builder.pipeline" not in result["vindex_hub"]
        assert "vindex_hub.pull" not in result["vindex_hub"]


def test_info_of_a_local_folder_imports_nothing_heavy(small_vindex) -> None:
    result = _probe("info", str(small_vindex.folder))
    assert result["status"] == 0
    assert _heavy(result) == []


@pytest.mark.slow
def test_verify_of_a_local_folder_loads_pyarrow_only_for_its_mirror(
    small_vindex, tmp_path: Path
) -> None:
    # The one exception: a vindex's Arrow mirror is parquet, read by pyarrow, and the card's
    # declared features are read by datasets, as load_dataset reads them. Neither scipy nor torch.
    result = _probe("verify", str(small_vindex.folder))
    assert result["status"] == 0
    assert _heavy(result) == ["pyarrow", "datasets"]
    # Without a mirror (and so no card config pointing at a file) neither is loaded.
    bare = tmp_path / "bare"
    shutil.copytree(small_vindex.folder, bare)
    shutil.rmtree(bare / "data")
    result = _probe("verify", str(bare))
    assert result["status"] == 1  # the missing mirror is reported
    assert _heavy(result) == []


def test_public_api_is_lazy_and_listed() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, vindex_hub; names = dir(vindex_hub); "
            "print(json.dumps([names, sorted(m for m in sys.modules if m.startswith('vindex_hub.'))]))",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    names, loaded = json.loads(done.stdout)
    for name in ("build_vindex", "push_vindex", "Vindex", "pull_vindex", "verify_vindex"):
        assert name in names
    assert set(vindex_hub._LAZY) <= set(vindex_hub.__all__)
    assert loaded == ["vindex_hub.errors"]  # nothing but the exception types on import
    assert vindex_hub.Vindex.__name__ == "Vindex"
    assert callable(vindex_hub.pull_vindex)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vindex_hub.nope
