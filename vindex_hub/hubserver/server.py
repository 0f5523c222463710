"""The local Hub server assembled: :class:`LocalHub` (start/stop, stats, faults, gates) and :func:`serve`.

Clients select it with ``HF_ENDPOINT`` (see :func:`vindex_hub.hubserver.client_environment`).
The parts: :mod:`.http` frames requests and answers, :mod:`.api` routes them (its ``ROUTES``
table is the URL space) and serves the repo API and access checks, :mod:`.lfs` the LFS batch
API and upload links, :mod:`.xet` the Xet token endpoints and what hf_xet stored, :mod:`.cdn`
the second origin that LFS/Xet downloads are redirected to, :mod:`.storage` keeps repos on
disk, :mod:`.faults` decides which requests fail. File bodies stream from disk in chunks and their bytes are counted per file as
they are written to the socket (:class:`HubStats`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import HubHandler
from .cdn import CdnServer
from .faults import Fault, FaultSet
from .http import TrackingHTTPServer
from .lfs import UploadSigner
from .storage import RepoRef, Storage
from .xet import XetFile, XetStore

TRANSFERS = ("xet", "lfs")  # how clients upload LFS-mode files: Xet (the Hub's default) or LFS

# -- statistics ------------------------------------------------------------------------------------


@dataclass
class FileStats:
    """Traffic of one repo file since the last reset."""

    requests: int = 0  # GET requests on its resolve URL
    head_requests: int = 0
    # body bytes handed to the socket (resolve and CDN legs): a ranged read counts its range, a HEAD none
    bytes_sent: int = 0
    # bytes uploaded for it: LFS PUT body, inline commit content, or Xet chunks stored for it
    bytes_received: int = 0
    cdn_requests: int = 0  # GET/HEAD requests on the CDN leg (after the resolve URL's 302)
    cdn_bytes_sent: int = 0  # the part of bytes_sent that the CDN leg sent
    cdn_requests_with_authorization: int = 0  # CDN requests that carried a token (should be 0)


@dataclass
class HubStats:
    """A snapshot of the server's traffic; ``files`` is keyed by ``(repo_type, repo_id, path)``."""

    files: dict[tuple[str, str, str], FileStats] = field(default_factory=dict)
    requests: int = 0  # every HTTP request except the admin API and the CDN leg
    bytes_sent: int = 0  # file body bytes sent, all files, both legs
    bytes_received: int = 0  # request body bytes received, all requests, plus Xet uploads
    lfs_bytes_received: int = 0  # LFS upload (PUT) body bytes received
    xet_bytes_received: int = 0  # bytes of the xorbs hf_xet stored in this server's CAS
    cdn_bytes_sent: int = 0  # file body bytes sent by the CDN leg

    def file(self, repo_id: str, path: str, repo_type: str = "dataset") -> FileStats:
        """The stats of one file (zeros if it saw no traffic)."""
        return self.files.get((repo_type, repo_id, path), FileStats())

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "lfs_bytes_received": self.lfs_bytes_received,
            "xet_bytes_received": self.xet_bytes_received,
            "cdn_bytes_sent": self.cdn_bytes_sent,
            "files": [
                {"repo_type": k[0], "repo_id": k[1], "path": k[2], **vars(v)}
                for k, v in sorted(self.files.items())
            ],
        }


class _StatsRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._stats = HubStats()
            self._pending_lfs: dict[
                tuple[str, str, str], int
            ] = {}  # (type, repo_id, sha256) -> bytes
            # xorb hash -> stored bytes of each chunk not yet attributed to a committed file
            # (None until a commit needs them)
            self._pending_xet: dict[str, dict[int, int] | None] = {}

    def snapshot(self) -> HubStats:
        with self._lock:
            s = self._stats
            files = {k: FileStats(**vars(v)) for k, v in s.files.items()}
            return HubStats(
                files,
                s.requests,
                s.bytes_sent,
                s.bytes_received,
                s.lfs_bytes_received,
                s.xet_bytes_received,
                s.cdn_bytes_sent,
            )

    def add(
        self, key: tuple[str, str, str] | None = None, *, totals: bool = True, **counts: int
    ) -> None:
        """Add ``counts`` to the totals (unless ``totals=False``: already counted when the request
        arrived) and, with ``key``, to that file's."""
        with self._lock:
            if totals:
                for name, n in counts.items():
                    if hasattr(self._stats, name):
                        setattr(self._stats, name, getattr(self._stats, name) + n)
            if key is not None:
                f = self._stats.files.setdefault(key, FileStats())
                for name, n in counts.items():
                    if hasattr(f, name):
                        setattr(f, name, getattr(f, name) + n)

    def lfs_uploaded(self, repo: RepoRef, sha256: str, n: int) -> None:
        with self._lock:
            self._stats.lfs_bytes_received += n
            k = (repo.repo_type, repo.repo_id, sha256)
            self._pending_lfs[k] = self._pending_lfs.get(k, 0) + n

    def lfs_committed(self, repo: RepoRef, sha256: str, path: str) -> None:
        """Attribute the upload bytes of an LFS object to the file that a commit gave it."""
        with self._lock:
            n = self._pending_lfs.pop((repo.repo_type, repo.repo_id, sha256), 0)
        if n:
            self.add((repo.repo_type, repo.repo_id, path), totals=False, bytes_received=n)

    def xet_uploaded(self, new_xorbs: dict[str, int]) -> None:
        """Count xorbs that appeared in the CAS; their chunks await the commit that uses them."""
        total = sum(new_xorbs.values())
        with self._lock:
            for xorb in new_xorbs:
                self._pending_xet[xorb] = None
        if total:
            self.add(xet_bytes_received=total, bytes_received=total)

    def xet_committed(self, repo: RepoRef, f: XetFile, path: str, store: XetStore) -> None:
        """Attribute the not yet attributed chunk bytes of a committed Xet file to its path."""
        n = 0
        for seg in f.segments:
            with self._lock:
                if seg.xorb not in self._pending_xet:
                    continue
                sizes = self._pending_xet[seg.xorb]
            if sizes is None:
                try:
                    sizes = dict(enumerate(store.chunk_sizes(seg.xorb)))
                except Exception:  # an unreadable xorb only costs the per-file count
                    sizes = {}
            with self._lock:
                sizes = self._pending_xet.get(seg.xorb, sizes) or sizes
                n += sum(sizes.pop(i, 0) for i in range(seg.chunk_start, seg.chunk_end))
                if sizes:
                    self._pending_xet[seg.xorb] = sizes
                else:
                    self._pending_xet.pop(seg.xorb, None)
        if n:
            self.add((repo.repo_type, repo.repo_id, path), totals=False, bytes_received=n)


class _Server(TrackingHTTPServer):
    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        self.hub = hub
        super().__init__(address, HubHandler)


# -- public API ------------------------------------------------------------------------------------


class LocalHub:
    """A Hub-protocol server storing repos under ``root``; ``port=0`` picks a free port.

    >>> with LocalHub(tmp_path) as hub:          # doctest: +SKIP
    ...     HfApi(endpoint=hub.url).create_repo("ns/name", repo_type="dataset")

    Clients that take no ``endpoint`` argument need ``client_environment(hub.url, ...)`` in
    ``os.environ`` before ``huggingface_hub``/``datasets`` are imported.

    ``stats()`` counts traffic per file (see :class:`HubStats`); ``inject_fault`` makes the next
    matching requests fail (see :mod:`vindex_hub.hubserver.faults`).

    ``transfer``: how clients upload LFS-mode files, as on the Hub: ``"xet"`` (default; the
    ``xet-write-token`` / ``xet-read-token`` endpoints hand out hf_xet's file-system CAS under
    ``root``, see :mod:`.xet`) or ``"lfs"`` (the LFS batch API only: clients need
    ``HF_HUB_DISABLE_XET=1``). The attribute may be changed while the server runs. Either way,
    ``GET /resolve/`` of an LFS or Xet file answers 302 to the CDN leg, a second port
    (``cdn_url``) that honours ``Range``.
    """

    def __init__(
        self, root: str | Path, host: str = "127.0.0.1", port: int = 0, *, transfer: str = "xet"
    ) -> None:
        if transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
        self.root = Path(root)
        self.host = host
        self.port = port
        self.transfer = transfer
        self.storage = Storage(self.root)
        self.xet_store = XetStore(self.root)
        self.xet_store.scan()  # what is in the CAS already was uploaded before this server
        self.upload_signer = UploadSigner()  # signs LFS upload links; a restart invalidates them
        self._faults = FaultSet()
        self._stats = _StatsRecorder()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._cdn: CdnServer | None = None
        self._cdn_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server (no trailing slash, as ``HF_ENDPOINT`` wants)."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        """``http://HOST:PORT`` of the CDN leg (another origin: same host, its own port)."""
        if self._cdn is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._cdn.server_address[1]}"

    def _bind(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("LocalHub is already started")
        self._server = _Server((self.host, self.port), self)
        self._cdn = CdnServer((self.host, 0), self)
        self._cdn_thread = threading.Thread(
            target=self._cdn.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-hub-cdn-{self.cdn_url}",
            daemon=True,
        )
        self._cdn_thread.start()
        return self._server

    def start(self) -> LocalHub:
        """Serve from a background thread; returns ``self``."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-hub-{self.url}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (clients see them closed)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_cdn()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _stop_cdn(self) -> None:
        cdn, self._cdn = self._cdn, None
        if cdn is not None:
            cdn.shutdown()
            cdn.server_close()
            cdn.close_connections()
        if self._cdn_thread is not None:
            self._cdn_thread.join()
            self._cdn_thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> HubStats:
        """A snapshot of the traffic since the last ``reset_stats()``."""
        # Xet uploads bypass HTTP: what hf_xet stored since the last look counts now.
        self._stats.xet_uploaded(self.xet_store.scan())
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self.xet_store.scan()  # what the CAS holds now arrived before the reset
        self._stats.reset()

    def inject_fault(self, kind: str, **fields: Any) -> Fault:
        """Make the next matching requests fail; ``fields`` are :class:`Fault`'s.

        ``kind``: ``"error"`` (answer ``status``, with ``retry_after`` a ``Retry-After``),
        ``"drop"`` (close the connection after ``after_bytes`` of a body) or ``"slow"`` (sleep
        ``delay_s`` before each ``chunk_size`` bytes of the response body); matched by
        ``method``, ``path`` (a substring of, or an ``fnmatch`` glob over, the decoded URL path)
        and ``ranged``, for the next ``times`` requests. See :mod:`vindex_hub.hubserver.faults`.
        """
        return self._faults.add(Fault(kind, **fields))

    def clear_faults(self) -> None:
        self._faults.clear()

    def active_faults(self) -> list[Fault]:
        """The injected faults not yet used up (a test checks its faults were met)."""
        return self._faults.active()

    def set_gated(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        granted_tokens: Iterable[str] = (),
        gated: str | bool = "auto",
    ) -> None:
        """Gate a repo: only requests bearing one of ``granted_tokens`` may read its files.

        ``gated`` is what repo info reports (``"auto"`` or ``"manual"``); ``False`` opens the repo
        again. Stored with the repo, so it survives restarts; replaces earlier grants.
        """
        self.storage.set_gated(RepoRef(repo_type, repo_id), gated, granted_tokens)


LOCAL_TOKEN = "hf_local"  # what `serve` tells clients to use: the server accepts any token


def client_lines(hub: LocalHub) -> list[str]:
    """What a client needs to use ``hub``, as shell lines (the server accepts any token)."""
    lines = [f"export HF_ENDPOINT={hub.url}", f"export HF_TOKEN={LOCAL_TOKEN}"]
    if hub.transfer == "lfs":
        lines.append("export HF_HUB_DISABLE_XET=1")
    return lines


def serve(
    root: str | Path, host: str = "127.0.0.1", port: int = 0, *, transfer: str = "xet"
) -> None:
    """Run a :class:`LocalHub` in the foreground until Ctrl-C, printing its URL and the client's
    environment first."""
    hub = LocalHub(root, host, port, transfer=transfer)
    hub._bind()
    print(
        f"local Hub serving {Path(root).resolve()} at {hub.url} (transfer: {transfer};"
        f" CDN leg at {hub.cdn_url}); clients need:",
        *client_lines(hub),
        sep="\n",
        flush=True,
    )
    server = hub._server
    assert server is not None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub._server = None
        hub._stop_cdn()
        server.server_close()
