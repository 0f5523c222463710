"""The Git-LFS side of the local Hub server: the batch API and its signed upload and verify links.

``POST /{datasets/}ns/name.git/info/lfs/objects/batch`` (a write: needs ``Authorization``)
answers, for each object not stored yet, ``actions.upload.href`` and ``actions.verify.href``::

    PUT  /_local_hub/lfs/{models|datasets}/ns/name/{sha256}?token=          the raw bytes
    POST /_local_hub/lfs-verify/{models|datasets}/ns/name/{sha256}?token=   {"oid", "size"}

The client PUTs without ``Authorization``, so the link itself carries the right to write: its
``token`` is ``<expiry>.<hmac>``, an HMAC of repo, oid and expiry under a per-server random secret
(a restart invalidates old links). PUT and verify refuse (403) a link without a valid one, so
only a writer can store blobs; the request log redacts tokens. A PUT body is hashed as it
streams to disk and refused (400, nothing kept) unless its sha256 is the link's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import TYPE_CHECKING, Any

from .http import HTTPFailure
from .storage import SHA256_RE, RepoRef

if TYPE_CHECKING:
    from .api import HubHandler

UPLOAD_URL_LIFETIME_S = 86400  # how long an LFS upload/verify link of a batch answer stays valid


class UploadSigner:
    """Signs and checks the ``token`` of LFS upload links with a secret of this server's lifetime."""

    def __init__(self) -> None:
        self._secret = os.urandom(32)

    def _mac(self, repo: RepoRef, oid: str, expires: int) -> str:
        message = f"{repo.repo_type}\n{repo.repo_id}\n{oid}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def token(self, repo: RepoRef, oid: str) -> str:
        """``<expiry>.<hmac>``: lets the bearer upload (and verify) this one object into this repo."""
        expires = int(time.time()) + UPLOAD_URL_LIFETIME_S
        return f"{expires}.{self._mac(repo, oid, expires)}"

    def valid(self, repo: RepoRef, oid: str, token: str) -> bool:
        expires, _, mac = token.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._mac(repo, oid, int(expires)))


def batch(req: HubHandler, repo: RepoRef) -> None:
    req.check_write(repo)
    body = req.read_json()
    if body.get("operation") != "upload":
        raise HTTPFailure(
            400, "only the LFS 'upload' operation is supported; download via /resolve/"
        )
    base = req.base_url()
    objects = []
    for obj in body.get("objects", []):
        oid, size = str(obj.get("oid")), obj.get("size")
        if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
            objects.append(
                {"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}}
            )
            continue
        item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if not req.storage.has_blob(oid, size):
            tail = f"{repo.repo_type}s/{repo.repo_id}/{oid}?token={req.hub.upload_signer.token(repo, oid)}"
            item["actions"] = {
                "upload": {
                    "href": f"{base}/_local_hub/lfs/{tail}",
                    "expires_in": UPLOAD_URL_LIFETIME_S,
                },
                "verify": {
                    "href": f"{base}/_local_hub/lfs-verify/{tail}",
                    "expires_in": UPLOAD_URL_LIFETIME_S,
                },
            }
        objects.append(item)
    req.send_json(
        {"transfer": "basic", "objects": objects},
        headers={"Content-Type": "application/vnd.git-lfs+json"},
    )


def _check_upload_token(req: HubHandler, repo: RepoRef, oid: str) -> None:
    """Refuse an upload/verify link that no batch answer of this server handed out (or expired)."""
    token = (req.query.get("token") or [""])[-1]
    if not req.hub.upload_signer.valid(repo, oid, token):
        # Read and discard the body (no disk, no hashing) so the client gets the 403, not a reset.
        req.drain_body()
        raise HTTPFailure(
            403,
            f"LFS URL for {oid} in {repo.repo_id} has no valid token: take it from the LFS batch answer",
        )


def put(req: HubHandler, repo: RepoRef, oid: str) -> None:
    _check_upload_token(req, repo, oid)
    req.storage.repo_meta(repo)
    if not SHA256_RE.match(oid):
        raise HTTPFailure(400, f"invalid LFS oid {oid!r}")
    # Every byte that arrives counts, also those of an attempt that breaks off.
    req.body_counters.append(lambda n: req.stats.lfs_uploaded(repo, oid, n))
    # A chunked body (no Content-Length) has no announced size; its sha256 is still checked.
    req.storage.put_blob_stream(req.iter_body(), oid, req.unread_body_length())
    req.send_bytes(200, b"", {"ETag": f'"{oid}"'})


def verify(req: HubHandler, repo: RepoRef, oid: str) -> None:
    _check_upload_token(req, repo, oid)
    req.check_write(repo)
    body = req.read_json()
    size = body.get("size")
    if body.get("oid") != oid or not isinstance(size, int):
        raise HTTPFailure(400, "verify needs the object's 'oid' and integer 'size'")
    if not req.storage.has_blob(oid, size):
        raise HTTPFailure(
            404, f"LFS object {oid} with {size} bytes was not uploaded to {repo.repo_id}"
        )
    req.send_json({"message": "Verified"})
