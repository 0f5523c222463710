"""Requests to the Hub: file metadata and exact ranged reads.

``fetch_range_into`` is the one place a byte range is read from a Hub file. It sends the ranged
GET itself (``HfFileSystem`` over-fetches small ranges, see ``reference/hub-protocol.md``) with
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
from dataclasses import dataclass
from typing import BinaryIO

import httpx2
from huggingface_hub import get_hf_file_metadata
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from ..errors import HubError
from .errors import hub_errors
from .refs import RepoRef, commit_sha, ref_from_url

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRIES = 5  # consecutive failures without progress before giving up
BACKOFF_S = 0.25  # first wait; doubles per consecutive failure, capped at BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
TIMEOUT_S = 60.0

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
        meta = get_hf_file_metadata(ref.url(filename), token=token, retry_on_errors=True)
    if not meta.commit_hash or not meta.etag or meta.size is None:
        raise HubError(f"{ref.url(filename)}: the server's HEAD answer lacks X-Repo-Commit, ETag or size")
    return RemoteFile(ref.url(filename, meta.commit_hash), commit_sha(meta.commit_hash, ref.url(filename)),
                      meta.etag, meta.size)


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
    pos, failures = start, 0
    while pos < end:
        try:
            got = _get_once(fileobj, url, pos, end, token=token, expected_total=expected_total)
        except _Retryable as exc:
            got, reason = exc.got, exc.reason
        else:
            reason = f"body ended {end - pos - got} bytes early" if pos + got < end else ""
        pos += got
        if pos >= end:
            break
        failures = 0 if got else failures + 1
        if failures > max_retries:
            raise HubError(f"{url}: bytes {start}-{end - 1}: giving up after {max_retries} retries ({reason})")
        time.sleep(min(BACKOFF_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))
    return end - start


def fetch_range(url: str, start: int, end: int, **kwargs) -> bytes:
    """Bytes ``[start, end)`` of the file at ``url`` (see ``fetch_range_into`` for the options)."""
    buf = io.BytesIO()
    fetch_range_into(buf, url, start, end, **kwargs)
    return buf.getvalue()


class _Retryable(Exception):
    def __init__(self, reason: str, got: int = 0):
        super().__init__(reason)
        self.reason, self.got = reason, got


def _get_once(fileobj: BinaryIO, url: str, pos: int, end: int, *, token, expected_total: int | None) -> int:
    """One ranged GET of ``[pos, end)``; returns bytes written, raises ``_Retryable`` for transient faults."""
    headers = build_hf_headers(token=token)
    headers["Range"] = f"bytes={pos}-{end - 1}"
    headers["Accept-Encoding"] = "identity"  # byte offsets are of the stored file, never of a gzip stream
    got = 0
    try:
        with get_session().stream("GET", url, headers=headers, timeout=TIMEOUT_S) as resp:
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code}")
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
            first, last = _check_content_range(resp.headers.get("Content-Range"), url, pos, end, expected_total)
            want = last + 1 - first
            for chunk in resp.iter_bytes():  # no chunk_size: buffered bytes would be lost on a drop
                if got + len(chunk) > want:
                    raise HubError(f"{url}: the server sent more than the {want} bytes of its Content-Range")
                fileobj.write(chunk)
                got += len(chunk)
    except OfflineModeIsEnabled:
        raise HubError(f"{url}: bytes {pos}-{end - 1} are not cached and HF_HUB_OFFLINE is set") from None
    except httpx2.TransportError as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}", got) from None
    return got


def _check_content_range(value: str | None, url: str, pos: int, end: int, total: int | None) -> tuple[int, int]:
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise HubError(f"{url}: 206 answer with a missing or malformed Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if first != pos or last < first or last > end - 1:
        raise HubError(f"{url}: asked for bytes {pos}-{end - 1}, the server sent {value!r}")
    if total is not None and m.group(3) != "*" and int(m.group(3)) != total:
        raise HubError(f"{url}: Content-Range says the file holds {m.group(3)} bytes, its metadata {total}")
    return first, last
