"""Environment variables that point the real Hub clients at a local Hub server.

``huggingface_hub`` and ``datasets`` read these at import time: apply them to ``os.environ``
before either is imported (in a test session: at the top of ``conftest.py``; in a subprocess:
via its ``env``). ``datasets.config.USE_PARQUET_EXPORT = False`` must still be set after
importing ``datasets``, or ``load_dataset`` looks up ``datasets-server.<host>`` off the machine.
"""

from __future__ import annotations

from pathlib import Path


def client_environment(
    url: str, home: str | Path, *, token: str | None = None, transfer: str = "xet"
) -> dict[str, str]:
    """Variables for clients of the Hub at ``url`` with all caches under ``home``.

    ``transfer``: ``"xet"`` (default, as a real user's client: hf_xet uploads and downloads LFS
    files) or ``"lfs"`` (``HF_HUB_DISABLE_XET=1``: the LFS batch API and plain HTTP downloads,
    for a ``LocalHub(transfer="lfs")``). Nothing contacts hosts outside the machine (telemetry
    and download counts off), progress bars are off. ``token``, if given, becomes ``HF_TOKEN``
    (the local Hub accepts any token; writes need one).
    """
    if transfer not in ("xet", "lfs"):
        raise ValueError(f"transfer must be 'xet' or 'lfs', got {transfer!r}")
    home = Path(home)
    env = {
        "HF_ENDPOINT": url.rstrip("/"),
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
    }
    if transfer == "lfs":
        env["HF_HUB_DISABLE_XET"] = "1"
    if token is not None:
        env["HF_TOKEN"] = token
    return env
