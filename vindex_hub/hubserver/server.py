"""A Hub-protocol HTTP server on 127.0.0.1 for the real ``huggingface_hub`` and ``datasets`` clients.

Clients select it with ``HF_ENDPOINT`` (see :func:`vindex_hub.hubserver.client_environment`).
Standard library only: ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, every response with a
``Content-Length`` (no chunked bodies); request bodies may be chunked. File bodies stream from
disk in chunks and their bytes are counted per file as they are written to the socket.

Routes (``{t}`` is ``models`` or ``datasets``, ``{p}`` the URL prefix: ``""`` or ``"datasets/"``;
revisions are branch names, tags, ``refs/pr/N`` or full commit shas, percent-encoded or not)::

    POST   /api/repos/create                      {"name","organization","type","private"|"visibility"}
    DELETE /api/repos/delete
    POST   /api/validate-yaml                     always valid
    GET    /api/whoami-v2
    GET    /api/{t}/{ns}/{name}[/revision/{rev}]   repo info (?blobs=1: sizes and LFS in siblings)
    GET    /api/{t}/{ns}/{name}/tree/{rev}[/{path}]?recursive=&expand=
    POST   /api/{t}/{ns}/{name}/paths-info/{rev}  form: paths=..&paths=..&expand=..
    POST   /api/{t}/{ns}/{name}/preupload/{rev}
    POST   /api/{t}/{ns}/{name}/commit/{rev}      NDJSON; ?create_pr=1
    POST   /api/{t}/{ns}/{name}/branch/{branch}   {"startingPoint"?}; DELETE deletes
    POST   /api/{t}/{ns}/{name}/tag/{rev}         {"tag"}
    GET    /api/{t}/{ns}/{name}/refs[?include_prs=1]
    GET    /api/{t}/{ns}/{name}/commits/{rev}
    POST   /{p}{ns}/{name}.git/info/lfs/objects/batch
    PUT    /_local_hub/lfs/{t}/{ns}/{name}/{sha256}?token=         LFS upload (href of the batch answer)
    POST   /_local_hub/lfs-verify/{t}/{ns}/{name}/{sha256}?token=  LFS verify
    HEAD   /{p}{ns}/{name}/resolve/{rev}/{path}   + GET; single ranges -> 206, 416
    GET    /_local_hub/stats   POST|DELETE /_local_hub/faults   POST /_local_hub/reset   (admin)
    POST   /_local_hub/gated   {"repo_id","repo_type"?,"gated"?,"granted_tokens"?}        (admin)

Access: writes (create, delete, preupload, LFS batch, commit, branch, tag) need an
``Authorization`` header; any value is accepted and it is never logged. A private repo answers
401 ``RepoNotFound`` to requests without one, like the Hub does for anonymous callers. The
client PUTs LFS bodies without ``Authorization``, so the (authenticated) batch answer hands out
upload and verify URLs carrying a ``token`` query parameter: an HMAC of repo, oid and expiry
under a per-server random secret. PUT and verify refuse (403) a URL without a valid one, so
only a writer can store blobs; tokens are redacted from the request log.

Gated repos (``LocalHub.set_gated``) behave like the Hub's: their info stays public (with
``"gated": "auto"|"manual"``), but file downloads (``resolve``, ranged or not) and the ``tree`` /
``paths-info`` listings need ``Authorization: Bearer <token>`` with a granted token. Without one
the answer is 401, with another one 403, both with ``X-Error-Code: GatedRepo`` and the Hub's
"Access to model ns/name is restricted..." message, which the client raises as ``GatedRepoError``.
Only sha256 digests of granted tokens are stored (in ``repo.json``), compared and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Fault, FaultSet
from .storage import (
    DEFAULT_BRANCH,
    Commit,
    Entry,
    SHA256_RE,
    RepoRef,
    Storage,
    StorageError,
    git_blob_sha1,
    is_lfs_upload,
    lfs_pointer,
    token_digest,
)

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024  # file bodies are read and sent in chunks of this size
_ADMIN_PATHS = ("/_local_hub/stats", "/_local_hub/faults", "/_local_hub/reset", "/_local_hub/gated")
_LOCAL_USER = "local-user"
UPLOAD_URL_LIFETIME_S = 86400  # how long an LFS upload/verify URL of a batch answer stays valid
_TOKEN_IN_URL_RE = re.compile(r"([?&]token=)[^&\s\"]+")


# -- statistics ------------------------------------------------------------------------------------


@dataclass
class FileStats:
    """Traffic of one repo file since the last reset."""

    requests: int = 0  # GET requests on its resolve URL
    head_requests: int = 0
    bytes_sent: int = 0  # body bytes written to clients (a ranged read counts only its range)
    bytes_received: int = 0  # bytes uploaded for it (LFS PUT body or inline commit content)


@dataclass
class HubStats:
    """A snapshot of the server's traffic; ``files`` is keyed by ``(repo_type, repo_id, path)``."""

    files: dict[tuple[str, str, str], FileStats] = field(default_factory=dict)
    requests: int = 0  # every HTTP request except the admin API
    bytes_sent: int = 0  # file body bytes sent, all files
    bytes_received: int = 0  # request body bytes received, all requests
    lfs_bytes_received: int = 0  # LFS upload (PUT) body bytes received

    def file(self, repo_id: str, path: str, repo_type: str = "dataset") -> FileStats:
        """The stats of one file (zeros if it saw no traffic)."""
        return self.files.get((repo_type, repo_id, path), FileStats())

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "lfs_bytes_received": self.lfs_bytes_received,
            "files": [
                {"repo_type": k[0], "repo_id": k[1], "path": k[2], **vars(v)} for k, v in sorted(self.files.items())
            ],
        }


class _StatsRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._stats = HubStats()
            self._pending_lfs: dict[tuple[str, str, str], int] = {}  # (type, repo_id, sha256) -> bytes

    def snapshot(self) -> HubStats:
        with self._lock:
            s = self._stats
            files = {k: FileStats(**vars(v)) for k, v in s.files.items()}
            return HubStats(files, s.requests, s.bytes_sent, s.bytes_received, s.lfs_bytes_received)

    def add(self, key: tuple[str, str, str] | None = None, *, totals: bool = True, **counts: int) -> None:
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


# -- HTTP plumbing ---------------------------------------------------------------------------------


class _HTTPFailure(Exception):
    """An error answer: status, message, the Hub's ``X-Error-Code``, extra headers and body keys."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.headers = headers or {}
        self.body = body or {}


class _Dropped(Exception):
    """A drop fault closed the connection: nothing more is sent."""


class _Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive ``(start, end)``; raises if unsatisfiable.

    Multiple ranges are refused (416) rather than ignored: a 200 to a ranged request makes
    ``HfFileSystem`` return wrong bytes silently.
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m[1] == "" and m[2] == ""):
        raise _Unsatisfiable
    if m[1] == "":
        n = int(m[2])
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - n), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if start >= size or end < start:
        raise _Unsatisfiable
    return start, min(end, size - 1)


def _split_revision(segments: list[str]) -> tuple[str, list[str]]:
    """First revision in already-decoded path segments, accepting an unencoded ``refs/pr/N``."""
    if not segments or not segments[0]:
        raise _HTTPFailure(400, "missing revision in URL")
    if len(segments) >= 3 and segments[0] == "refs" and segments[1] in ("pr", "heads", "tags", "convert"):
        return "/".join(segments[:3]), segments[3:]
    return segments[0], segments[1:]


def _bool_param(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes live connections itself instead of waiting on them

    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vindex-hub-local-hub/1"
    timeout = 300  # idle keep-alive connections and stalled uploads give up after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        # The request line of an LFS upload carries its upload token: keep it out of the log.
        logger.debug("%s %s", self.address_string(), _TOKEN_IN_URL_RE.sub(r"\1<redacted>", format % args))

    # Every method goes through one dispatcher.
    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # -- request plumbing --

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self._raw_segments = split.path.split("/")[1:]
        self._decoded_path = unquote(split.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        self._body_left: int | None = 0
        self._on_body_bytes: Callable[[int], None] | None = None  # extra counter of request body bytes
        self._fault: Fault | None = None
        self._headers_sent = False
        admin = self._decoded_path in _ADMIN_PATHS
        if not admin:
            self._fault = self.hub._faults.take(self.command, self._decoded_path)
            self.hub._stats.add(requests=1)
        try:
            self._body_left = self._body_length()
            if self._fault is not None and self._fault.kind == "error":
                self._drain_body()
                retry_after = self._fault.retry_after_s
                raise _HTTPFailure(self._fault.status, f"injected fault #{self._fault.id}",
                                   headers=None if retry_after is None else {"Retry-After": str(retry_after)})
            if self._fault is not None and self._fault.kind == "drop" and self.command == "HEAD":
                self._abort()
                return
            self._route()
        except _HTTPFailure as e:
            self._send_error(e.status, str(e), e.error_code, e.headers, e.body)
        except StorageError as e:
            self._send_error(e.status, str(e), e.error_code)
        except _Dropped:
            pass
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True
        except Exception:
            logger.exception("local hub: %s %s failed", self.command, self._decoded_path)
            self._send_error(500, "internal error in the local Hub server", None)
        if self._body_left != 0:
            self.close_connection = True  # an unread request body would corrupt the next request

    def _body_length(self) -> int | None:
        """Bytes of request body still to read; ``None`` for a chunked body."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _HTTPFailure(400, "invalid Content-Length") from None

    def _iter_body(self) -> Iterator[bytes]:
        """The request body in chunks (Content-Length or chunked), honouring a drop fault."""
        limit = self._fault.after_bytes if self._fault is not None and self._fault.kind == "drop" else None
        received = 0
        for chunk in self._raw_body_chunks():
            if limit is not None and received + len(chunk) >= limit:
                self._count_received(limit - received)
                self._abort()
                raise _Dropped
            received += len(chunk)
            self._count_received(len(chunk))
            yield chunk
        if limit is not None:  # the whole body arrived before the drop point: drop before answering
            self._abort()
            raise _Dropped

    def _count_received(self, n: int) -> None:
        if n:
            self.hub._stats.add(bytes_received=n)
            if self._on_body_bytes is not None:
                self._on_body_bytes(n)

    def _raw_body_chunks(self) -> Iterator[bytes]:
        if self._body_left is None:
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailers
                    self._body_left = 0
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()  # CRLF after the chunk
        else:
            yield from self._read_exactly(self._body_left, track_left=True)

    def _read_exactly(self, n: int, track_left: bool = False) -> Iterator[bytes]:
        while n > 0:
            data = self.rfile.read(min(_CHUNK, n))
            if not data:
                raise ConnectionAbortedError("client closed the connection mid-body")
            n -= len(data)
            if track_left:
                self._body_left = n
            yield data

    def _read_body(self) -> bytes:
        return b"".join(self._iter_body())

    def _drain_body(self) -> None:
        for _ in self._raw_body_chunks():
            pass

    def _read_json(self) -> Any:
        try:
            return json.loads(self._read_body() or b"{}")
        except ValueError:
            raise _HTTPFailure(400, "request body is not valid JSON") from None

    def _abort(self) -> None:
        """Drop the connection now, like a network failure."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.hub.url

    def _start(self, status: int, headers: dict[str, str], length: int) -> None:
        self._headers_sent = True
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        if self.close_connection or self._body_left != 0:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _write_body(self, chunks: Iterable[bytes], on_sent: Callable[[int], None] | None = None) -> None:
        """Send a response body, applying a drop or slow fault; ``on_sent`` gets each count sent."""
        fault = self._fault
        if fault is not None and fault.kind == "slow":
            chunks = _rechunk(chunks, fault.chunk_size)
        limit = fault.after_bytes if fault is not None and fault.kind == "drop" else None
        sent = 0
        for chunk in chunks:
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.delay_s)
            if limit is not None and sent + len(chunk) >= limit:
                chunk = chunk[: limit - sent]
                self.wfile.write(chunk)
                if on_sent and chunk:
                    on_sent(len(chunk))
                self._abort()
                raise _Dropped
            self.wfile.write(chunk)
            sent += len(chunk)
            if on_sent:
                on_sent(len(chunk))

    def _send_bytes(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._start(status, headers or {}, len(body))
        if self.command != "HEAD":
            self._write_body([body])

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_error(
        self,
        status: int,
        message: str,
        error_code: str | None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        if self._headers_sent:  # failed mid-body: the client must see a broken response, not a second one
            logger.warning("local hub: %s %s failed mid-body: %s", self.command, self._decoded_path, message)
            self._abort()
            return
        # Header values must be latin-1: escape anything else (a non-ASCII path in the message).
        header_message = message.replace("\n", " ").encode("ascii", "backslashreplace").decode()
        h = {"Content-Type": "application/json", "X-Error-Message": header_message}
        if error_code:
            h["X-Error-Code"] = error_code
        h.update(headers or {})
        try:
            self._send_bytes(status, json.dumps({"error": message, **(body or {})}).encode(), h)
        except (_Dropped, OSError):
            self.close_connection = True

    # -- routing --

    def _route(self) -> None:
        segs = [unquote(s) for s in self._raw_segments]
        method = self.command
        if self._decoded_path in _ADMIN_PATHS:
            return self._admin(method, self._decoded_path)
        if segs[0] == "api":
            return self._route_api(method, segs[1:])
        if segs[0] == "_local_hub" and len(segs) == 6 and segs[1] in ("lfs", "lfs-verify"):
            repo = self._repo_ref(segs[2], segs[3], segs[4])
            if segs[1] == "lfs" and method == "PUT":
                return self._lfs_put(repo, segs[5])
            if segs[1] == "lfs-verify" and method == "POST":
                return self._lfs_verify(repo, segs[5])
        if segs[0] == "datasets" and len(segs) >= 3:
            repo_type, ns, name, rest = "dataset", segs[1], segs[2], segs[3:]
        elif len(segs) >= 2:
            repo_type, ns, name, rest = "model", segs[0], segs[1], segs[2:]
        else:
            raise _HTTPFailure(404, f"no route for {method} {self._decoded_path}")
        if name.endswith(".git") and rest == ["info", "lfs", "objects", "batch"] and method == "POST":
            return self._lfs_batch(RepoRef(repo_type, f"{ns}/{name[:-4]}"))
        if rest and rest[0] == "resolve" and method in ("GET", "HEAD"):
            rev, path = _split_revision(rest[1:])
            return self._resolve(RepoRef(repo_type, f"{ns}/{name}"), rev, "/".join(path))
        raise _HTTPFailure(404, f"no route for {method} {self._decoded_path}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if segs == ["validate-yaml"] and method == "POST":
            self._read_body()
            return self._send_json({"errors": [], "warnings": []})
        if segs == ["whoami-v2"] and method == "GET":
            self._require_auth()
            return self._send_json(
                {"type": "user", "name": _LOCAL_USER, "fullname": "Local Hub user", "orgs": [],
                 "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}}
            )
        if len(segs) < 3:
            raise _HTTPFailure(404, f"no route for {method} /api/{'/'.join(segs)}")
        repo = self._repo_ref(segs[0], segs[1], segs[2])
        action, rest = (segs[3], segs[4:]) if len(segs) > 3 else ("", [])
        if method == "GET" and action == "":
            return self._repo_info(repo, None)
        if method == "GET" and action == "revision":
            return self._repo_info(repo, "/".join(rest))
        if method == "GET" and action == "tree":
            rev, path = _split_revision(rest)
            return self._tree(repo, rev, "/".join(path))
        if method == "GET" and action == "refs" and not rest:
            return self._refs(repo)
        if method == "GET" and action == "commits":
            return self._commits(repo, "/".join(rest) or DEFAULT_BRANCH)
        if method == "POST" and action == "paths-info":
            return self._paths_info(repo, "/".join(rest))
        if method == "POST" and action == "preupload":
            return self._preupload(repo, "/".join(rest))
        if method == "POST" and action == "commit":
            return self._commit(repo, "/".join(rest))
        if method in ("POST", "DELETE") and action == "branch":
            return self._branch(repo, "/".join(rest), delete=method == "DELETE")
        if method == "POST" and action == "tag":
            return self._tag(repo, "/".join(rest) or DEFAULT_BRANCH)
        raise _HTTPFailure(404, f"no route for {method} /api/{'/'.join(segs)}")

    @staticmethod
    def _repo_ref(type_segment: str, ns: str, name: str) -> RepoRef:
        """``("datasets", ns, name)`` -> the repo (``RepoRef`` validates the names)."""
        return RepoRef(type_segment.removesuffix("s"), f"{ns}/{name}")

    def _require_auth(self) -> None:
        if not self.headers.get("Authorization"):
            raise _HTTPFailure(
                401, "Authentication required: send any 'Authorization: Bearer <token>' header to write"
            )

    def _check_read(self, repo: RepoRef) -> dict[str, Any]:
        meta = self.hub.storage.repo_meta(repo)
        if meta["private"] and not self.headers.get("Authorization"):
            raise _HTTPFailure(401, f"Repository {repo.repo_id} is private", "RepoNotFound")
        return meta

    def _bearer_token(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def _check_files(self, repo: RepoRef) -> dict[str, Any]:
        """``_check_read`` plus the gate: a gated repo's files need a granted token, as on the Hub."""
        meta = self._check_read(repo)
        if not meta["gated"]:
            return meta
        what = f"{repo.repo_type} {repo.repo_id}"
        token = self._bearer_token()
        if token is None:
            raise _HTTPFailure(
                401, f"Access to {what} is restricted. You must have access to it and be authenticated to access it."
                " Please log in.", "GatedRepo"
            )
        digest = token_digest(token)
        if not any(hmac.compare_digest(digest, granted) for granted in meta["granted_token_sha256"]):
            raise _HTTPFailure(
                403, f"Access to {what} is restricted and you are not in the authorized list. Visit"
                f" {self._base_url()}/{repo.url_prefix}{repo.repo_id} to ask for access.", "GatedRepo"
            )
        return meta

    def _check_write(self, repo: RepoRef) -> dict[str, Any]:
        self._require_auth()
        return self.hub.storage.repo_meta(repo)

    # -- admin --

    def _admin(self, method: str, path: str) -> None:
        if path == "/_local_hub/stats" and method == "GET":
            return self._send_json(self.hub.stats().to_json())
        if path == "/_local_hub/faults" and method == "POST":
            spec = self._read_json()
            try:
                fault = self.hub.inject_fault(**spec)
            except (TypeError, ValueError) as e:
                raise _HTTPFailure(400, f"bad fault spec: {e}") from None
            return self._send_json(fault.to_json())
        if path == "/_local_hub/faults" and method == "GET":
            return self._send_json([f.to_json() for f in self.hub._faults.active()])
        if path == "/_local_hub/faults" and method == "DELETE":
            self.hub.clear_faults()
            return self._send_json({})
        if path == "/_local_hub/gated" and method == "POST":
            spec = self._read_json()
            tokens = spec.get("granted_tokens", [])
            if not isinstance(spec.get("repo_id"), str) or not isinstance(tokens, list):
                raise _HTTPFailure(400, "gated needs 'repo_id' (ns/name) and a list 'granted_tokens'")
            self.hub.set_gated(spec["repo_id"], repo_type=spec.get("repo_type", "model"),
                               granted_tokens=tokens, gated=spec.get("gated", "auto"))
            return self._send_json({})
        if path == "/_local_hub/reset" and method == "POST":
            self._read_body()
            self.hub.clear_faults()
            self.hub.reset_stats()
            return self._send_json({})
        raise _HTTPFailure(405, f"{method} not allowed on {path}")

    # -- repos --

    def _create_repo(self) -> None:
        self._require_auth()
        body = self._read_json()
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if not isinstance(name, str) or not org:
            raise _HTTPFailure(400, "create needs 'name' and 'organization' (repo ids are 'namespace/name')")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = RepoRef(repo_type, f"{org}/{name}")
        url = f"{self._base_url()}/{repo.url_prefix}{repo.repo_id}"
        try:
            self.hub.storage.create_repo(repo, private)
        except StorageError as e:
            if e.status == 409:
                raise _HTTPFailure(409, str(e), body={"url": url}) from None  # exist_ok reads the url
            raise
        self._send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def _delete_repo(self) -> None:
        self._require_auth()
        body = self._read_json()
        repo = RepoRef(body.get("type") or "model", f"{body.get('organization')}/{body.get('name')}")
        self.hub.storage.delete_repo(repo)
        self._send_json({})

    def _repo_info(self, repo: RepoRef, revision: str | None) -> None:
        meta = self._check_read(repo)
        commit = self.hub.storage.resolve(repo, revision or DEFAULT_BRANCH)
        blobs = _bool_param(self._query.get("blobs"))
        siblings = []
        for path in sorted(commit.tree):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                e = commit.tree[path]
                sibling.update(size=e.size, blobId=e.oid)
                if e.lfs:
                    sibling["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.created_at,
            "createdAt": meta["created_at"],
            "private": meta["private"],
            "gated": meta["gated"],
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        self._send_json(info)

    def _refs(self, repo: RepoRef) -> None:
        meta = self._check_read(repo)

        def refs(kind: str, prefix: str) -> list[dict[str, str]]:
            return [
                {"name": n if kind != "pulls" else f"refs/pr/{n}", "ref": f"{prefix}{n}", "targetCommit": sha}
                for n, sha in sorted(meta[kind].items())
            ]

        out = {"branches": refs("branches", "refs/heads/"), "tags": refs("tags", "refs/tags/"), "converts": []}
        if _bool_param(self._query.get("include_prs")):
            out["pullRequests"] = refs("pulls", "refs/pr/")
        self._send_json(out)

    def _commits(self, repo: RepoRef, revision: str) -> None:
        self._check_read(repo)
        self._send_json([_commit_json(c) for c in self.hub.storage.history(repo, revision)])

    def _branch(self, repo: RepoRef, branch: str, delete: bool) -> None:
        self._check_write(repo)
        if delete:
            self._read_body()
            if branch == DEFAULT_BRANCH or branch not in self.hub.storage.repo_meta(repo)["branches"]:
                raise _HTTPFailure(404 if branch != DEFAULT_BRANCH else 403, f"cannot delete branch {branch!r}",
                                   "RevisionNotFound" if branch != DEFAULT_BRANCH else None)
            self.hub.storage.set_ref(repo, "branches", branch, None)
        else:
            body = self._read_json()
            self.hub.storage.create_branch(repo, branch, body.get("startingPoint"))
        self._send_json({})

    def _tag(self, repo: RepoRef, revision: str) -> None:
        meta = self._check_write(repo)
        body = self._read_json()
        tag = body.get("tag")
        if not isinstance(tag, str) or not tag:
            raise _HTTPFailure(400, "tag needs a 'tag' name")
        if tag in meta["tags"]:
            raise _HTTPFailure(409, f"Tag {tag} already exists")
        sha = self.hub.storage.resolve(repo, revision).sha
        self.hub.storage.set_ref(repo, "tags", tag, sha)
        self._send_json({})

    # -- listings --

    def _entries(self, repo: RepoRef, commit: Commit, paths: Iterable[str], expand: bool) -> list[dict]:
        tree = commit.tree
        dirs = _directories(tree)
        history = self.hub.storage.history(repo, commit.sha) if expand else []
        out = []
        for path in paths:
            if path in tree:
                e = tree[path]
                item: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
                if e.lfs:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            else:
                item = {"type": "directory", "oid": dirs[path], "size": 0, "path": path}
            if expand:
                item["lastCommit"] = _last_commit(history, path, item["oid"])
            out.append(item)
        return out

    def _tree(self, repo: RepoRef, revision: str, path: str) -> None:
        self._check_files(repo)
        commit = self.hub.storage.resolve(repo, revision)
        path = path.strip("/")
        dirs = _directories(commit.tree)
        if path and path not in dirs:
            raise _HTTPFailure(404, f"{path!r} is not a folder at {revision}", "EntryNotFound",
                               {"X-Repo-Commit": commit.sha})
        prefix = f"{path}/" if path else ""
        recursive = _bool_param(self._query.get("recursive"))
        children = [
            p for p in [*dirs, *commit.tree]
            if p and p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])
        ]
        # The Hub lists each folder's subfolders before its files; any stable order works for clients.
        children.sort(key=lambda p: (p in commit.tree, p))
        self._send_json(self._entries(repo, commit, children, _bool_param(self._query.get("expand"))))

    def _paths_info(self, repo: RepoRef, revision: str) -> None:
        self._check_files(repo)
        form = parse_qs(self._read_body().decode(), keep_blank_values=True)
        commit = self.hub.storage.resolve(repo, revision)
        dirs = _directories(commit.tree)
        wanted = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p and (p in commit.tree or p in dirs) and p not in wanted:
                wanted.append(p)
        self._send_json(self._entries(repo, commit, wanted, _bool_param(form.get("expand"))))

    # -- uploads --

    def _preupload(self, repo: RepoRef, revision: str) -> None:
        self._check_write(repo)
        body = self._read_json()
        tree = self.hub.storage.resolve(repo, revision).tree
        files = []
        for f in body.get("files", []):
            path, size = f["path"], int(f["size"])
            lfs = is_lfs_upload(path, size, base64.b64decode(f.get("sample", "")))
            item: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            current = tree.get(path)
            if current is not None and current.lfs == lfs:
                # The oid the client compares with its own to skip unchanged files.
                item["oid"] = current.sha256 if lfs else current.oid
            files.append(item)
        self._send_json({"files": files, "commitOid": None})

    def _lfs_batch(self, repo: RepoRef) -> None:
        self._check_write(repo)
        body = self._read_json()
        if body.get("operation") != "upload":
            raise _HTTPFailure(400, "only the LFS 'upload' operation is supported; download via /resolve/")
        base = self._base_url()
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), obj.get("size")
            if not SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid or size"}})
                continue
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.hub.storage.has_blob(oid, size):
                tail = f"{repo.repo_type}s/{repo.repo_id}/{oid}?token={self.hub._upload_token(repo, oid)}"
                item["actions"] = {
                    "upload": {"href": f"{base}/_local_hub/lfs/{tail}", "expires_in": UPLOAD_URL_LIFETIME_S},
                    "verify": {"href": f"{base}/_local_hub/lfs-verify/{tail}", "expires_in": UPLOAD_URL_LIFETIME_S},
                }
            objects.append(item)
        self._send_json({"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _check_upload_token(self, repo: RepoRef, oid: str) -> None:
        """Refuse an LFS upload/verify URL that no batch answer of this server handed out (or expired)."""
        token = (self._query.get("token") or [""])[-1]
        if not self.hub._upload_token_valid(repo, oid, token):
            # Read and discard the body (no disk, no hashing) so the client gets the 403, not a reset.
            self._drain_body()
            raise _HTTPFailure(
                403, f"LFS URL for {oid} in {repo.repo_id} has no valid token: take it from the LFS batch answer"
            )

    def _lfs_put(self, repo: RepoRef, oid: str) -> None:
        self._check_upload_token(repo, oid)
        self.hub.storage.repo_meta(repo)
        if not SHA256_RE.match(oid):
            raise _HTTPFailure(400, f"invalid LFS oid {oid!r}")
        # Every byte that arrives counts, also those of an attempt that breaks off.
        self._on_body_bytes = lambda n: self.hub._stats.lfs_uploaded(repo, oid, n)
        # A chunked body (no Content-Length) has no announced size; its sha256 is still checked.
        self.hub.storage.put_blob_stream(self._iter_body(), oid, self._body_left)
        self._send_bytes(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo: RepoRef, oid: str) -> None:
        self._check_upload_token(repo, oid)
        self._check_write(repo)
        body = self._read_json()
        size = body.get("size")
        if body.get("oid") != oid or not isinstance(size, int):
            raise _HTTPFailure(400, "verify needs the object's 'oid' and integer 'size'")
        if not self.hub.storage.has_blob(oid, size):
            raise _HTTPFailure(404, f"LFS object {oid} with {size} bytes was not uploaded to {repo.repo_id}")
        self._send_json({"message": "Verified"})

    def _commit(self, repo: RepoRef, revision: str) -> None:
        self._check_write(repo)
        header: dict[str, Any] | None = None
        added: dict[str, Entry] = {}
        deleted_files: list[str] = []
        deleted_folders: list[str] = []
        inline_bytes: dict[str, int] = {}
        lfs_paths: list[tuple[str, str]] = []
        for line in self._read_body().splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise _HTTPFailure(400, "commit payload lines must be JSON objects with 'key' and 'value'") from None
            if not isinstance(value, dict):
                raise _HTTPFailure(400, f"commit payload line {key!r}: 'value' must be a JSON object")
            if key == "header":
                header = value
            elif key == "file":
                path = _clean_path(value.get("path"))
                if value.get("encoding", "base64") != "base64":
                    raise _HTTPFailure(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
                try:
                    data = base64.b64decode(value.get("content", ""), validate=True)
                except (TypeError, ValueError):
                    raise _HTTPFailure(400, f"content of {path!r} is not valid base64") from None
                sha = self.hub.storage.put_blob_bytes(data)
                added[path] = Entry(git_blob_sha1(data), len(data), sha, False)
                inline_bytes[path] = len(data)
            elif key == "lfsFile":
                path, oid = _clean_path(value.get("path")), value.get("oid")
                if value.get("algo", "sha256") != "sha256":
                    raise _HTTPFailure(400, f"unsupported LFS hash {value.get('algo')!r} for {path}")
                if not isinstance(oid, str) or not SHA256_RE.match(oid):
                    raise _HTTPFailure(400, f"LFS oid {oid!r} for {path!r} is not 64 lowercase hex digits")
                size = value.get("size")
                if size is None:  # a copy of an existing LFS file: the size is the stored blob's
                    try:
                        size = self.hub.storage.blob_path(oid).stat().st_size
                    except FileNotFoundError:
                        raise _HTTPFailure(400, f"LFS object {oid} for {path!r} was never uploaded") from None
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise _HTTPFailure(400, f"LFS size {size!r} for {path!r} is not a non-negative integer")
                pointer = lfs_pointer(oid, size)
                added[path] = Entry(git_blob_sha1(pointer), size, oid, True)
                lfs_paths.append((oid, path))
            elif key == "deletedFile":
                deleted_files.append(_clean_path(value.get("path")))
            elif key == "deletedFolder":
                deleted_folders.append(_clean_path(value.get("path"), folder=True))
            else:
                raise _HTTPFailure(400, f"unknown commit operation {key!r}")
        if header is None:
            raise _HTTPFailure(400, "commit payload has no header line")
        create_pr = _bool_param(self._query.get("create_pr"))
        commit, pr_num = self.hub.storage.apply_commit(
            repo,
            revision,
            summary=str(header.get("summary") or ""),
            description=str(header.get("description") or ""),
            added=added,
            deleted_files=deleted_files,
            deleted_folders=deleted_folders,
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        for path, n in inline_bytes.items():
            self.hub._stats.add((repo.repo_type, repo.repo_id, path), totals=False, bytes_received=n)
        for oid, path in lfs_paths:
            self.hub._stats.lfs_committed(repo, oid, path)
        web = f"{self._base_url()}/{repo.url_prefix}{repo.repo_id}"
        out: dict[str, Any] = {"success": True, "commitOid": commit.sha, "commitUrl": f"{web}/commit/{commit.sha}"}
        if pr_num is not None:
            out["pullRequestUrl"] = f"{web}/discussions/{pr_num}"
        self._send_json(out)

    # -- downloads --

    def _resolve(self, repo: RepoRef, revision: str, path: str) -> None:
        self._check_files(repo)
        commit = self.hub.storage.resolve(repo, revision)
        entry = commit.tree.get(path)
        if entry is None:
            raise _HTTPFailure(404, f"Entry not found: {path!r} at {revision}", "EntryNotFound",
                               {"X-Repo-Commit": commit.sha})
        key = (repo.repo_type, repo.repo_id, path)
        self.hub._stats.add(key, totals=False, **{"head_requests" if self.command == "HEAD" else "requests": 1})
        etag = f'"{entry.sha256}"' if entry.lfs else f'"{entry.oid}"'
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header is not None:
            try:
                start, end = parse_range(range_header, entry.size)
            except _Unsatisfiable:
                raise _HTTPFailure(416, f"Range {range_header!r} not satisfiable for {path!r} ({entry.size} bytes)",
                                   None, {"Content-Range": f"bytes */{entry.size}", **headers}) from None
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = end - start + 1
        self._start(status, headers, length)
        if self.command == "HEAD":
            return
        chunks = self.hub.storage.iter_blob(entry.sha256, start, length, _CHUNK)
        self._write_body(chunks, lambda n: self.hub._stats.add(key, bytes_sent=n))


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    for chunk in chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


def _clean_path(path: Any, *, folder: bool = False) -> str:
    """A client's repo path, checked: relative, ``/``-separated, no ``.``/``..``/empty parts.

    Clients write these paths under their snapshot folders, so anything that could land outside
    one is refused: absolute paths, backslashes (a separator on Windows), control characters.
    A folder may end with ``/`` (the client sends ``deletedFolder`` paths that way).
    """
    if folder and isinstance(path, str):
        path = path.removesuffix("/")
    if (
        not isinstance(path, str)
        or "\\" in path
        or any(ord(c) < 0x20 or c == "\x7f" for c in path)
        or any(p in ("", ".", "..") for p in path.split("/"))  # also "" and "/absolute"
    ):
        raise _HTTPFailure(400, f"invalid path in repo: {path!r} (relative, '/'-separated, no '.' or '..' parts)")
    return path


def _directories(tree: dict[str, Entry]) -> dict[str, str]:
    """Every folder of a tree -> a stable id (sha1 of its sorted contents' oids)."""
    contents: dict[str, list[str]] = {}
    for path in sorted(tree):
        parts = path.split("/")
        for i in range(1, len(parts)):
            contents.setdefault("/".join(parts[:i]), []).append(f"{path} {tree[path].oid}")
    return {d: hashlib.sha1("\n".join(items).encode()).hexdigest() for d, items in contents.items()}


def _last_commit(history: list[Commit], path: str, oid: str) -> dict[str, str]:
    """The commit that last changed ``path``: the oldest of the newest-first ``history`` run with this ``oid``."""
    last = history[0]
    for older in history[1:]:
        if path in older.tree:
            older_oid = older.tree[path].oid
        else:
            older_oid = _directories(older.tree).get(path)
        if older_oid != oid:
            break
        last = older
    return {"id": last.sha, "title": last.summary, "date": last.created_at}


def _commit_json(c: Commit) -> dict[str, Any]:
    message = f"{c.summary}\n\n{c.description}" if c.description else c.summary
    return {"id": c.sha, "title": c.summary, "message": message, "authors": [{"user": _LOCAL_USER}], "date": c.created_at}


# -- public API ------------------------------------------------------------------------------------


class LocalHub:
    """A Hub-protocol server storing repos under ``root``; ``port=0`` picks a free port.

    >>> with LocalHub(tmp_path) as hub:          # doctest: +SKIP
    ...     HfApi(endpoint=hub.url).create_repo("ns/name", repo_type="dataset")

    Clients that take no ``endpoint`` argument need ``client_environment(hub.url, ...)`` in
    ``os.environ`` before ``huggingface_hub``/``datasets`` are imported.

    ``stats()`` counts traffic per file (see :class:`HubStats`); ``inject_fault`` makes the next
    matching requests fail (see :mod:`vindex_hub.hubserver.faults`).
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.storage = Storage(self.root)
        self._upload_secret = os.urandom(32)  # signs LFS upload URLs; a restart invalidates them
        self._faults = FaultSet()
        self._stats = _StatsRecorder()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _upload_mac(self, repo: RepoRef, oid: str, expires: int) -> str:
        message = f"{repo.repo_type}\n{repo.repo_id}\n{oid}\n{expires}".encode()
        return hmac.new(self._upload_secret, message, hashlib.sha256).hexdigest()

    def _upload_token(self, repo: RepoRef, oid: str) -> str:
        """``<expiry>.<hmac>``: lets the bearer upload (and verify) this one object into this repo."""
        expires = int(time.time()) + UPLOAD_URL_LIFETIME_S
        return f"{expires}.{self._upload_mac(repo, oid, expires)}"

    def _upload_token_valid(self, repo: RepoRef, oid: str, token: str) -> bool:
        expires, _, mac = token.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, self._upload_mac(repo, oid, int(expires)))

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server (no trailing slash, as ``HF_ENDPOINT`` wants)."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def _bind(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("LocalHub is already started")
        self._server = _Server((self.host, self.port), self)
        return self._server

    def start(self) -> LocalHub:
        """Serve from a background thread; returns ``self``."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"local-hub-{self.url}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (clients see them closed)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for conn in list(server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> HubStats:
        """A snapshot of the traffic since the last ``reset_stats()``."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def inject_fault(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str = "*",
        times: int | None = 1,
        status: int = 500,
        after_bytes: int = 0,
        delay_s: float = 0.0,
        chunk_size: int = 64 * 1024,
        retry_after_s: int | None = None,
    ) -> Fault:
        """Make the next ``times`` requests matching ``method`` and ``path`` fail.

        ``kind``: ``"error"`` (answer ``status``), ``"drop"`` (close the connection after
        ``after_bytes`` of the request body, or of the response body for bodiless requests) or
        ``"slow"`` (sleep ``delay_s`` before each ``chunk_size`` bytes of the response body).
        ``path``: a substring of, or an ``fnmatch`` glob over, the decoded URL path.
        """
        fault = Fault(kind, method, path, times, status, after_bytes, delay_s, chunk_size, retry_after_s)
        return self._faults.add(fault)

    def clear_faults(self) -> None:
        self._faults.clear()

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


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run a :class:`LocalHub` in the foreground until Ctrl-C, printing its URL first."""
    hub = LocalHub(root, host, port)
    hub._bind()
    print(f"local Hub serving {Path(root).resolve()} at {hub.url} (set HF_ENDPOINT={hub.url})", flush=True)
    server = hub._server
    assert server is not None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub._server = None
        server.server_close()
