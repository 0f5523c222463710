"""Environment variables that point the real Hub clients at a local Hub server.

``huggingface_hub`` and ``datasets`` read these at import time: apply them to ``os.environ``
before either is imported (in a test session: at the top of ``conftest.py``; in a subprocess:
via its ``env``). ``datasets.config.USE_PARQUET_EXPORT = False`` must still be set after
importing ``datasets``, or ``load_dataset`` looks up ``datasets-server.<host>`` off the machine.
"""

from __future__ import annotations

from pathlib import Path


def client_environment(url: str, home: str | Path, *, token: str | None = None) -> dict[str, str]:
    """Variables for clients of the Hub at ``url`` with all caches under ``home``.

    Uploads go through the LFS batch API (Xet off), nothing contacts hosts outside the machine
    (telemetry and download counts off), progress bars are off. ``token``, if given, becomes
    ``HF_TOKEN`` (the local Hub accepts any token; writes need one).
    """
    home = Path(home)
    env = {
        "HF_ENDPOINT": url.rstrip("/"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env
