"""Test session setup: the real Hub clients talk to a local Hub server on 127.0.0.1.

``huggingface_hub`` and ``datasets`` read ``HF_ENDPOINT`` and friends at import time, so this
file picks the server's port and sets the environment (``client_environment``) before anything
imports them: caches live in a temporary folder of the session and ``HF_TOKEN`` is the dummy
:data:`HUB_TOKEN` (tests may check that it never appears in output).

Fixtures:

- ``local_hub`` (session): the started :class:`vindex_hub.hubserver.LocalHub` at ``HF_ENDPOINT``.
  Before each test that uses it, its faults are cleared and its stats reset, so a test sees only
  its own traffic: ``local_hub.stats().file(repo_id, path).bytes_sent``, and
  ``local_hub.inject_fault("error", method="GET", path="*.parquet")`` affects that test only.
- ``hub_repo_id``: a repo id (``tests/<test name>-<n>``) unique in the session, not yet created.
- ``lfs_transfer``: for tests of the LFS path on purpose: ``local_hub`` speaks LFS only
  (``transfer="lfs"``) and the client has Xet off (``HF_HUB_DISABLE_XET``, which the client
  reads into ``constants`` at import) for that test. Every other test runs the default
  environment of a real user: hf_xet installed and on, a server that speaks Xet.

Markers (pyproject.toml): a test using ``local_hub`` is marked ``hub`` and one using
``ray_cluster`` ``ray`` here, automatically; ``slow`` (over ~3 s) is set on the test itself.
``bash scripts/test.sh -m "not slow and not ray"`` is the quick tier.

Use the clients as usual (``HfApi()``, ``hf_hub_download``, ``datasets.load_dataset``); they
reach ``local_hub`` without an explicit endpoint. A test that needs its own server (a restart, an
empty root) starts ``LocalHub(tmp_path / "root")`` and passes ``endpoint=hub.url`` to the clients. ``datasets.config.USE_PARQUET_EXPORT`` is set
to ``False`` when ``local_hub`` starts (otherwise ``load_dataset`` looks up a host off-machine).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

assert "huggingface_hub" not in sys.modules and "datasets" not in sys.modules, (
    "huggingface_hub/datasets were imported before tests/conftest.py set HF_ENDPOINT"
)

from vindex_hub.hubserver import LocalHub, client_environment  # noqa: E402 (standard library only)

HUB_TOKEN = "hf_test_dummy_token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SESSION_DIR = Path(tempfile.mkdtemp(prefix="vindex-hub-tests-"))
HUB_PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_ETAG_TIMEOUT"):
    os.environ.pop(_var, None)
os.environ.update(client_environment(HUB_URL, SESSION_DIR / "hf-home", token=HUB_TOKEN))

import pytest  # noqa: E402

# Fixtures shared across modules (``small_vindex``, ``vindex_copy``), loaded after the environment
# above is set: they import huggingface_hub.
pytest_plugins = ["vindex_fixtures"]

_started_hub: LocalHub | None = None
_repo_counter = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``hub`` and ``ray`` markers follow from the fixtures a test uses (``slow`` is set by
    hand: docs/development.md)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "local_hub" in fixtures:
            item.add_marker(pytest.mark.hub)
        if "ray_cluster" in fixtures:
            item.add_marker(pytest.mark.ray)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def local_hub():
    """The session's local Hub server, at ``HF_ENDPOINT``."""
    global _started_hub
    import datasets

    datasets.config.USE_PARQUET_EXPORT = False
    hub = LocalHub(SESSION_DIR / "hub-root", port=HUB_PORT).start()
    _started_hub = hub
    yield hub
    _started_hub = None
    hub.stop()


@pytest.fixture(autouse=True)
def _local_hub_per_test(request: pytest.FixtureRequest):
    """Give each test that uses ``local_hub`` no leftover faults and fresh stats."""
    if "local_hub" in request.fixturenames:
        hub = request.getfixturevalue("local_hub")
        hub.clear_faults()
        hub.reset_stats()
    yield
    if _started_hub is not None:
        _started_hub.clear_faults()


@pytest.fixture
def lfs_transfer(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    """``local_hub`` with LFS transfers only, and a client with Xet off (this test only)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # for subprocesses the test starts
    local_hub.transfer = "lfs"
    yield local_hub
    local_hub.transfer = "xet"


@pytest.fixture
def hub_repo_id(request: pytest.FixtureRequest) -> str:
    """A fresh ``namespace/name`` for this test (not created)."""
    # huggingface_hub refuses "--" and ".." in repo ids.
    name = re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name).strip("-")[:60]
    return f"tests/{name}-{next(_repo_counter)}"
