"""A local Hub-protocol server for the real ``huggingface_hub`` / ``datasets`` clients.

Like a cloud SDK's local emulator: it stores repos on disk under a root folder (surviving
restarts), counts the bytes it serves per file, and can inject faults. Standard library only.

    hub = LocalHub(root).start()                       # Xet, like the Hub; LocalHub(root, transfer="lfs")
    os.environ.update(client_environment(hub.url, cache_dir, token="hf_..."))
    ...                                                # then import huggingface_hub / datasets
    hub.stats().file("ns/name", "data/train.parquet").bytes_sent
    hub.inject_fault("error", method="GET", path="*.parquet", times=2)
    hub.inject_fault("error", status=429, retry_after=1, method="POST", path="*/commit/*")

LFS-mode files travel through Xet (hf_xet's file-system CAS under ``root``, see :mod:`.xet`)
or, with ``transfer="lfs"``, the LFS batch API; their downloads answer 302 to a second origin,
the CDN leg (:mod:`.cdn`), that honours ``Range``. ``hub.stats()`` counts both legs.

``serve(root, host, port)`` runs one in the foreground (``vindex-hub local-hub``); its admin API
is then ``GET /_local_hub/stats``, ``POST /_local_hub/faults`` (JSON: ``inject_fault``'s
arguments, see :mod:`.faults`), ``DELETE /_local_hub/faults``, ``POST /_local_hub/reset`` (stats and faults) and
``POST /_local_hub/gated`` (JSON: ``{"repo_id", "repo_type", "granted_tokens", "gated"}``, as
``set_gated``).

    hub.set_gated("ns/name", repo_type="model", granted_tokens=["hf_..."])   # like a gated Hub repo
"""

from __future__ import annotations

from .environment import client_environment
from .faults import Fault
from .server import FileStats, HubStats, LocalHub, serve

__all__ = ["Fault", "FileStats", "HubStats", "LocalHub", "client_environment", "serve"]
