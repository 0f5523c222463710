"""Requests to the Hub: retries, file metadata and exact ranged reads.

``with_retries`` is the one retry policy for whole operations of the hub client (a file or
snapshot download, repo info, refs, tree, a commit): a transient fault (HTTP 408 / 429 / 5xx, a
dropped or refused connection) is retried with bounded exponential backoff, waiting what a
``Retry-After`` header asks for (capped); a persistent one ends in one ``HubError`` line naming
the URL and the number of attempts. Downloads resume from the client's ``.incomplete`` file, and a
retried commit re-sends only what the server lacks (the LFS batch API skips stored objects).

``fetch_range_into`` is the one place a byte range is read from a Hub file. It sends the ranged
GET itself (``HfFileSystem`` over-fetches small ranges, see ``docs/hub-server.md``) with
the hub client's session and headers, insists on ``206`` with a matching ``Content-Range`` (a
server that ignores ``Range`` and answers ``200`` is an error, never a silent wrong answer),
retries 5xx / 408 / 429 and dropped connections with bounded backoff, and resumes a broken body
by asking only for the bytes still missing. The loader reads vindex layers with it and the remote
checkpoint source reads safetensors tensors with it.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import _http as client_http
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from ..errors import HubError
from .errors import hub_errors
from .refs import RepoRef, commit_sha, ref_from_url

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRIES = 5  # consecutive failures without progress before giving up
MAX_TIMEOUT_RETRIES = 1  # of those, how many may be timeouts (a stalled server)
BACKOFF_S = 0.25  # first wait; doubles per consecutive failure, capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
RETRY_AFTER_MAX_S = 60.0  # a Retry-After asking for longer is waited this long, then retried
T = TypeVar("T")
# Faults that no retry can mend: a malformed endpoint URL (HF_ENDPOINT without http(s)://).
PERMANENT_TRANSPORT_ERRORS = (httpx2.UnsupportedProtocol,)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a resolved commit: where to read it and what its content is."""

    url: str  # resolve URL at the commit sha, so later reads cannot see a newer push
    commit: str
    etag: str  # sha256 of the content for LFS files: the key of cached byte ranges
    size: int


def file_metadata(ref: RepoRef, filename: str, *, token: str | bool | None = None) -> RemoteFile:
    """HEAD one file: commit sha, ETag and true size (``RemoteNotFoundError`` names repo/revision/file)."""
    with hub_errors(ref, filename):
        meta = with_retries(
            lambda: get_hf_file_metadata(ref.url(filename), token=token), url=ref.url(filename)
        )
    if not meta.commit_hash or not meta.etag or meta.size is None:
        raise HubError(
            f"{ref.url(filename)}: the server's HEAD answer lacks X-Repo-Commit, ETag or size"
        )
    return RemoteFile(
        ref.url(filename, meta.commit_hash),
        commit_sha(meta.commit_hash, ref.url(filename)),
        meta.etag,
        meta.size,
    )


# ---- timeouts -----------------------------------------------------------------------------------
def request_timeout() -> httpx2.Timeout:
    """The longest any request of ours waits on the network before giving up (then retried as a
    dropped connection): to connect, the hub client's ``HF_HUB_ETAG_TIMEOUT``; for each read or
    write of a body (a stalled server), its ``HF_HUB_DOWNLOAD_TIMEOUT`` (both 10 s by default,
    set by those environment variables)."""
    return httpx2.Timeout(
        float(constants.HF_HUB_DOWNLOAD_TIMEOUT), connect=float(constants.HF_HUB_ETAG_TIMEOUT)
    )


def _client_with_timeouts() -> httpx2.Client:
    client = client_http.default_client_factory()
    client.timeout = request_timeout()
    return client


def ensure_timeouts() -> None:
    """Give the hub client's shared HTTP session ``request_timeout`` on every request: its own
    default waits forever (``timeout=None``) on the requests that do not pass one (repo info,
    refs, the LFS batch and uploads, the commit). A client factory the user installed is kept."""
    if client_http._GLOBAL_CLIENT_FACTORY is client_http.default_client_factory:
        client_http.set_client_factory(_client_with_timeouts)


# ---- retries ------------------------------------------------------------------------------------
def backoff_s(failures: int, retry_after: float | None = None) -> float:
    """How long to wait before retry number ``failures`` (1-based): ``Retry-After`` when the server
    gave one (capped), else exponential from ``BACKOFF_S``, capped at ``BACKOFF_MAX_S``."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_MAX_S)
    return float(min(BACKOFF_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The delay-seconds form of a ``Retry-After`` header (the HTTP-date form is ignored)."""
    value = (headers or {}).get("Retry-After", "").strip()
    try:
        return float(value) if value else None
    except ValueError:
        return None


def transient(exc: BaseException) -> tuple[str, float | None] | None:
    """(reason, Retry-After) when ``exc`` is a fault worth retrying, else None."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in RETRY_STATUS:
            return f"HTTP {status}", retry_after_s(exc.response.headers)
        return None
    if isinstance(exc, httpx2.TransportError) and not isinstance(exc, PERMANENT_TRANSPORT_ERRORS):
        return f"{type(exc).__name__}: {exc}", None
    return None


def with_retries(call: Callable[[], T], *, url: str, max_retries: int = MAX_RETRIES) -> T:
    """``call()``, retried on transient faults (see the module doc); ``url`` names it in the error.

    Other exceptions pass through unchanged (the caller's ``hub_errors`` turns them into the
    package's types), so a 404 or 401 is reported at once, never retried.
    """
    ensure_timeouts()
    timeouts = 0
    for attempt in range(1, max_retries + 2):
        try:
            return call()
        except (HfHubHTTPError, httpx2.TransportError) as exc:
            fault = transient(exc)
            if fault is None:
                raise
            reason, retry_after = fault
            if isinstance(exc, httpx2.TimeoutException):
                # A server silent for a whole timeout is stalled, not flaky; the client has
                # already retried a stalled download itself. One more try, then say so.
                timeouts += 1
                if timeouts > MAX_TIMEOUT_RETRIES:
                    raise HubError(
                        f"{url}: no answer within {request_timeout().read:g} s "
                        f"(HF_HUB_DOWNLOAD_TIMEOUT) on {attempt} attempts ({reason}); "
                        "the server is stalled, try again later"
                    ) from None
            if attempt > max_retries:
                raise HubError(
                    f"{url}: giving up after {max_retries} retries ({reason}), {attempt} attempts"
                ) from None
            time.sleep(backoff_s(attempt, retry_after))
    raise AssertionError("unreachable")


# ---- the Hub cache's copies --------------------------------------------------------------------
def cached_blob(path: Path) -> Path | None:
    """The blob behind ``path`` when it is a file of a Hub cache snapshot (a link into ``blobs/``),
    else None: the one file to delete when a cached copy is damaged (deleting the snapshot's link
    alone is not enough, the client would link the same blob again)."""
    if not path.is_symlink():
        return None
    blob = path.resolve()
    return blob if blob.parent.name == "blobs" and blob.is_file() else None


def damaged_copy_hint(path: Path) -> str:
    """How to recover from a damaged cached copy of ``path`` (empty when it is not one)."""
    blob = cached_blob(path)
    if blob is None:
        return ""
    return (
        f"; if the Hub cache's copy of {path.name} is damaged, delete {blob} and run again "
        "(it is downloaded again)"
    )


# ---- whole files -------------------------------------------------------------------------------
def download_file(
    ref: RepoRef,
    filename: str,
    *,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> Path:
    """One file of ``ref`` through the Hub cache (``hf_hub_download``), retried, errors typed."""
    with hub_errors(ref, filename):
        return Path(
            with_retries(
                lambda: hf_hub_download(
                    ref.repo_id,
                    filename,
                    repo_type=ref.repo_type,
                    revision=ref.revision,
                    cache_dir=cache_dir,
                    token=token,
                ),
                url=ref.url(filename),
            )
        )


def download_snapshot(
    ref: RepoRef,
    *,
    allow: list[str] | None = None,
    ignore: list[str] | None = None,
    local_dir: Path | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """The repo's files at ``ref`` (``snapshot_download``), retried (files already fetched are kept)."""
    with hub_errors(ref):
        return Path(
            with_retries(
                lambda: snapshot_download(
                    ref.repo_id,
                    repo_type=ref.repo_type,
                    revision=ref.revision,
                    allow_patterns=allow,
                    ignore_patterns=ignore,
                    local_dir=local_dir,
                    cache_dir=cache_dir,
                    token=token,
                ),
                url=ref.web_url(),
            )
        )


# ---- ranged reads -----------------------------------------------------------------------------
def fetch_range_into(
    fileobj: BinaryIO,
    url: str,
    start: int,
    end: int,
    *,
    token: str | bool | None = None,
    expected_total: int | None = None,
    max_retries: int = MAX_RETRIES,
) -> int:
    """Write bytes ``[start, end)`` of the file at ``url`` to ``fileobj``; return the count written.

    ``end`` is exclusive (Python slice convention; the HTTP header carries ``end - 1``).
    ``expected_total`` (the file size from ``file_metadata``) is checked against ``Content-Range``.
    A body cut short is resumed from the first missing byte; ``max_retries`` consecutive
    failures without progress raise ``HubError``. Only ``fileobj`` sees partial data: callers
    write to a temporary file and rename it when the range is complete.
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad byte range [{start}, {end})")
    pos, failures, timeouts = start, 0, 0
    while pos < end:
        try:
            got = _get_once(fileobj, url, pos, end, token=token, expected_total=expected_total)
        except _Retryable as exc:
            got, reason, retry_after = exc.got, exc.reason, exc.retry_after
            # As in with_retries: a server silent for a whole timeout gets one more try.
            timeouts = 0 if got else timeouts + exc.timed_out
            if timeouts > MAX_TIMEOUT_RETRIES:
                raise HubError(
                    f"{url}: bytes {pos}-{end - 1}: no answer within {request_timeout().read:g} s "
                    f"(HF_HUB_DOWNLOAD_TIMEOUT) on {timeouts} attempts; the server is stalled, "
                    "try again later"
                ) from None
        else:
            reason, retry_after = (
                (f"body ended {end - pos - got} bytes early" if pos + got < end else ""),
                None,
            )
        pos += got
        if pos >= end:
            break
        failures = 0 if got else failures + 1
        if failures > max_retries:
            raise HubError(
                f"{url}: bytes {start}-{end - 1}: giving up after {max_retries} retries ({reason}), "
                f"{failures} attempts without progress"
            )
        time.sleep(backoff_s(max(failures, 1), retry_after))
    return end - start


def fetch_range(url: str, start: int, end: int, **kwargs: Any) -> bytes:
    """Bytes ``[start, end)`` of the file at ``url`` (see ``fetch_range_into`` for the options)."""
    buf = io.BytesIO()
    fetch_range_into(buf, url, start, end, **kwargs)
    return buf.getvalue()


class _Retryable(Exception):
    def __init__(
        self, reason: str, got: int = 0, retry_after: float | None = None, timed_out: bool = False
    ):
        super().__init__(reason)
        self.reason, self.got, self.retry_after = reason, got, retry_after
        self.timed_out = timed_out


def _get_once(
    fileobj: BinaryIO,
    url: str,
    pos: int,
    end: int,
    *,
    token: str | bool | None,
    expected_total: int | None,
) -> int:
    """One ranged GET of ``[pos, end)``; returns bytes written, raises ``_Retryable`` for transient faults."""
    headers = build_hf_headers(token=token)
    headers["Range"] = f"bytes={pos}-{end - 1}"
    headers["Accept-Encoding"] = (
        "identity"  # byte offsets are of the stored file, never of a gzip stream
    )
    got = 0
    try:
        with get_session().stream("GET", url, headers=headers, timeout=request_timeout()) as resp:
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(
                    f"HTTP {resp.status_code}", retry_after=retry_after_s(resp.headers)
                )
            if resp.status_code >= 400:
                resp.read()
                with hub_errors(ref_from_url(url)):
                    hf_raise_for_status(resp)
            if resp.status_code != 206:
                raise HubError(
                    f"{url}: asked for bytes {pos}-{end - 1} but the server answered {resp.status_code} "
                    "instead of 206 Partial Content (it ignores Range); refusing to read the whole file "
                    "(use mode='snapshot' for such servers)"
                )
            first, last = _check_content_range(
                resp.headers.get("Content-Range"), url, pos, end, expected_total
            )
            want = last + 1 - first
            for chunk in resp.iter_bytes():  # no chunk_size: buffered bytes would be lost on a drop
                if got + len(chunk) > want:
                    raise HubError(
                        f"{url}: the server sent more than the {want} bytes of its Content-Range"
                    )
                fileobj.write(chunk)
                got += len(chunk)
    except OfflineModeIsEnabled:
        raise HubError(
            f"{url}: bytes {pos}-{end - 1} are not cached and HF_HUB_OFFLINE is set"
        ) from None
    except PERMANENT_TRANSPORT_ERRORS:
        raise HubError(f"{url}: not an http:// or https:// URL; fix HF_ENDPOINT") from None
    except httpx2.TransportError as exc:
        timed_out = isinstance(exc, httpx2.TimeoutException)
        raise _Retryable(f"{type(exc).__name__}: {exc}", got, timed_out=timed_out) from None
    return got


def _check_content_range(
    value: str | None, url: str, pos: int, end: int, total: int | None
) -> tuple[int, int]:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise HubError(f"{url}: 206 answer with a missing or malformed Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if first != pos or last < first or last > end - 1:
        raise HubError(f"{url}: asked for bytes {pos}-{end - 1}, the server sent {value!r}")
    if total is not None and m.group(3) != "*" and int(m.group(3)) != total:
        raise HubError(
            f"{url}: Content-Range says the file holds {m.group(3)} bytes, its metadata {total}"
        )
    return first, last
