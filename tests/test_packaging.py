"""The package is ready to publish: a wheel builds from a clean copy of the repository, its
metadata holds what an index needs, and it installs into a fresh virtual environment where the
command runs the demo from the installed files alone (the card template is package data).

Slow (a fresh environment installs torch and the dependencies from the package registries):
``pytest -m slow tests/test_packaging.py``.
"""

from __future__ import annotations

import email.parser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a build must not see: environments, caches and earlier build outputs.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "*.egg-info",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    "bench-out",
    "out",
)


def _run(*cmd: str, cwd: Path | None = None, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "vindex-hub"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCE)
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source))
    (built,) = dist.glob("vindex_hub-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_data_only(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "vindex_hub/writers/templates/vindex_card.md.j2" in names
    assert "vindex_hub/py.typed" in names
    assert "vindex_hub/cli.py" in names and "vindex_hub/hubserver/server.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "scripts/", "docs/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "vindex-hub = vindex_hub.cli:main" in text


def test_the_wheel_metadata_is_complete(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
    meta = email.parser.BytesParser().parsebytes(raw)
    from vindex_hub import __version__

    assert float(meta["Metadata-Version"]) >= 2.1
    assert (meta["Name"], meta["Version"]) == ("vindex-hub", __version__)
    assert meta["Summary"] and "mixture-of-experts" in meta["Summary"]
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["License-Expression"] == "MIT" or meta["License"] == "MIT"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# vindex-hub")  # the README is the long description
    requires = meta.get_all("Requires-Dist")
    for name in ("torch", "huggingface_hub", "datasets", "safetensors", "jinja2"):
        assert any(r.replace("-", "_").startswith(name) for r in requires), name
    assert set(meta.get_all("Provides-Extra")) >= {"test", "ray"}
    assert any(r.startswith("ray==") and 'extra == "ray"' in r for r in requires)
    assert meta.get_all("Classifier")


def test_twine_accepts_the_wheel(wheel: Path):
    if importlib.util.find_spec("twine") is None:
        pytest.skip("twine is not installed (the metadata test checks the fields it would)")
    _run(sys.executable, "-m", "twine", "check", "--strict", str(wheel))


def test_the_wheel_installs_and_runs_in_a_fresh_environment(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    # torch pinned beside the wheel, as the README says (an open requirement pulls a CUDA build).
    _run(
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-compile",
        "torch==2.13.0",
        str(wheel),
        timeout=900,
    )
    version = _run(str(venv / "bin" / "vindex-hub"), "--version", cwd=tmp_path).strip()
    from vindex_hub import __version__

    assert version == f"vindex-hub {__version__}"
    where = _run(  # from a folder without the repository's copy on sys.path
        str(python), "-c", "import vindex_hub; print(vindex_hub.__file__)", cwd=tmp_path
    ).strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the repository's
    out = _run(str(venv / "bin" / "vindex-hub"), "demo", cwd=tmp_path, timeout=600)
    assert "verify         binary, sidecar, mirror and card agree" in out
