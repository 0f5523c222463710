"""The CDN leg of the local Hub server: a second origin on 127.0.0.1 that serves LFS/Xet file bytes.

On the Hub, ``GET /resolve/`` of an LFS or Xet-backed file answers ``302`` to a CDN host with a
signed URL; the client follows it (without its ``Authorization`` header: another origin) and the
CDN honours ``Range``. The local server does the same: :func:`location` signs a URL on this
second port, and :class:`CdnHandler` serves the blob (200, or 206 for one range), counting its
bytes per file (``cdn_requests`` / ``cdn_bytes_sent``, also in ``bytes_sent``).

The CDN URL keeps the resolve URL's path (``/{datasets/}ns/name/resolve/{rev}/{file}``) and adds
``sha256`` and ``token`` (``<expiry>.<hmac>`` of repo, file and sha256 under the server's secret;
a restart invalidates old links), so faults injected for a file's resolve path
(``LocalHub.inject_fault``) reach its body on this leg too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from .http import CHUNK, FramedHandler, HTTPFailure, TrackingHTTPServer
from .storage import SHA256_RE, RepoRef, StorageError

if TYPE_CHECKING:
    from .server import LocalHub


def _signed_object(path: str, sha256: str) -> str:
    return f"cdn\n{path}\n{sha256}"


def location(hub: LocalHub, repo: RepoRef, revision: str, path: str, sha256: str) -> str:
    """The signed CDN URL of one file's bytes."""
    token = hub.upload_signer.token(repo, _signed_object(path, sha256))
    url_path = quote(f"/{repo.url_prefix}{repo.repo_id}/resolve/{revision}/{path}", safe="/")
    return f"{hub.cdn_url}{url_path}?sha256={sha256}&token={token}"


class CdnServer(TrackingHTTPServer):
    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        self.hub = hub
        super().__init__(address, CdnHandler)


class CdnHandler(FramedHandler):
    server_version = "vindex-hub-local-cdn/1"
    server: CdnServer

    def respond(self) -> None:
        hub = self.server.hub
        self.fault = hub._faults.take(self.command, self.decoded_path, "Range" in self.headers)
        self.apply_fault_at_start()
        if self.command not in ("GET", "HEAD"):
            raise HTTPFailure(
                405, f"{self.command} not allowed on the CDN", None, {"Allow": "GET, HEAD"}
            )
        segments = self.segments
        prefix = 1 if segments[:1] == ["datasets"] else 0
        if len(segments) < prefix + 5 or segments[prefix + 2] != "resolve":
            raise HTTPFailure(404, f"no CDN object at {self.decoded_path}")
        try:
            repo = RepoRef(
                "dataset" if prefix else "model", "/".join(segments[prefix : prefix + 2])
            )
        except StorageError as e:
            raise HTTPFailure(e.status, str(e)) from None
        path = "/".join(segments[prefix + 4 :])
        sha256 = (self.query.get("sha256") or [""])[-1]
        token = (self.query.get("token") or [""])[-1]
        if not SHA256_RE.match(sha256) or not hub.upload_signer.valid(
            repo, _signed_object(path, sha256), token
        ):
            raise HTTPFailure(403, f"CDN URL for {path!r} has no valid signature: follow /resolve/")
        try:
            size = hub.storage.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            raise HTTPFailure(404, f"no stored object {sha256}") from None
        key = (repo.repo_type, repo.repo_id, path)
        hub._stats.add(key, cdn_requests=1)
        if self.headers.get("Authorization"):
            hub._stats.add(key, cdn_requests_with_authorization=1)
        self.send_file(
            path,
            size,
            {
                "ETag": f'"{sha256}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            },
            lambda start, length: hub.storage.iter_blob(sha256, start, length, CHUNK),
            lambda n: hub._stats.add(key, bytes_sent=n, cdn_bytes_sent=n),
        )
