"""A checkpoint in a Hub model repo, read by exact ranged GETs: only the tensors the builder needs.

The revision is resolved to a commit sha once, when the source is opened, and every later
request names that sha, so a branch that moves during a build cannot change what is read.
``config.json`` and the index come through the Hub cache (``hf_hub_download``). A shard's
safetensors header is read with two exact ranged GETs (its 8-byte length, then the header) and
kept in the persistent block cache under the shard's content hash, along with the shard's size
and ETag for that commit, so a resumed build opens the source without touching a shard.

``read`` fetches the byte ranges of the tensors asked for, merging neighbours within a shard
into fewer, larger requests only where the gap bytes stay a small fraction of what is needed
(``coalesce_ranges``), and runs a few requests in parallel. Broken bodies and 5xx answers are
retried and resumed from the first missing byte (``vindex_hub.hub.http.fetch_range_into``).
``bytes_fetched`` and ``fetch_seconds`` count the traffic, for progress bars and benchmarks.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import HfApi

from ..compat import is_commit_sha
from ..errors import CheckpointError, HubError, UsageError
from ..fsutil import read_json_object
from ..hub.blockcache import BlockCache
from ..hub.errors import hub_errors
from ..hub.http import (
    MAX_RETRIES,
    RemoteFile,
    download_file,
    fetch_range_into,
    file_metadata,
    request_timeout,
    with_retries,
)
from ..hub.refs import parse_repo
from .base import RawTensor, TensorInfo
from .local import CONFIG_FILE, SINGLE_FILE, WEIGHT_MAP_FILE, read_weight_map
from .safetensors_format import PREFIX_BYTES, header_length, parse_header

# Coalescing: merge two ranges of a shard only across a gap below MAX_GAP_BYTES, never into a
# request above MAX_REQUEST_BYTES, and spend at most MAX_WASTE_FRACTION of the bytes asked for
# on gaps (the performance target is <= 5% over the needed bytes; this leaves room for headers).
MAX_GAP_BYTES = 1 << 20
MAX_REQUEST_BYTES = 128 << 20
MAX_WASTE_FRACTION = 0.02
# Parallel range requests per read: one connection rarely fills a link to the Hub's CDN.
DEFAULT_WORKERS = 4


def coalesce_ranges(
    ranges: Iterable[tuple[int, int]],
    *,
    max_gap: int = MAX_GAP_BYTES,
    max_request: int = MAX_REQUEST_BYTES,
    max_waste: float = MAX_WASTE_FRACTION,
) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of one file -> the requests that fetch them, sorted.

    Overlapping and touching ranges always merge. A gap between neighbours is bridged only if it
    is at most ``max_gap`` bytes, the merged request stays within ``max_request`` bytes, and the
    bridged gaps together stay within ``max_waste`` x the bytes asked for (smallest gaps first),
    so the bytes fetched are at most ``(1 + max_waste)`` x the bytes needed.
    """
    spans: list[list[int]] = []
    for start, end in sorted(ranges):
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if not spans:
        return []
    budget = max_waste * sum(end - start for start, end in spans)
    gaps = sorted((spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1))
    bridgeable: set[int] = set()
    for gap, i in gaps:
        if gap > max_gap or gap > budget:
            break
        budget -= gap
        bridgeable.add(i)
    requests = [spans[0][:]]
    for i, (start, end) in enumerate(spans[1:]):
        if i in bridgeable and end - requests[-1][0] <= max_request:
            requests[-1][1] = end
        else:
            requests.append([start, end])
    return [(start, end) for start, end in requests]


class _BufferWriter:
    """A file-like ``write`` into a preallocated buffer (``fetch_range_into`` writes in order)."""

    def __init__(self, buffer: np.ndarray):
        self._view = buffer.data
        self.pos = 0

    def write(self, chunk: bytes) -> int:
        n = len(chunk)
        self._view[self.pos : self.pos + n] = chunk
        self.pos += n
        return n


class HubCheckpoint:
    """A ``CheckpointSource`` over a Hub model repo, pinned to one commit.

    ``revision``: a branch, tag or commit sha (default: the default branch); ``self.revision``
    is always the resolved 40-hex sha. ``token``: as for ``huggingface_hub`` (None: the logged-in
    token or ``HF_TOKEN``). ``cache_dir``: the Hub cache folder (None: ``HF_HUB_CACHE``); shard
    headers go to the ``vindex-hub`` block cache beside it. ``max_retries``: consecutive failed
    attempts of a range without progress before ``HubError``. ``workers``: parallel range requests.
    """

    path: str | None = None

    def __init__(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        max_retries: int = MAX_RETRIES,
        workers: int = DEFAULT_WORKERS,
    ):
        ref = parse_repo(repo_id, revision=revision, repo_type="model")
        if ref.repo_type != "model":
            raise UsageError(f"{repo_id}: a checkpoint is a model repo, not a {ref.repo_type} repo")
        with hub_errors(ref):
            info = with_retries(
                lambda: HfApi().model_info(
                    ref.repo_id, revision=ref.revision, token=token, timeout=request_timeout().read
                ),
                url=ref.web_url(),
            )
        # The sha becomes part of cache paths and every URL: only a real commit hash may.
        if not isinstance(info.sha, str) or not is_commit_sha(info.sha):
            raise HubError(
                f"{ref}: the Hub answered commit sha {info.sha!r}, expected 40 lowercase hex digits"
            )
        self.repo_id: str | None = ref.repo_id
        self.revision: str | None = info.sha
        self._ref = ref.at(info.sha)
        self._token = token
        self._cache_dir = cache_dir
        self._max_retries = max_retries
        self._workers = max(1, workers)
        self._blocks = BlockCache.beside(cache_dir)
        self._files: dict[str, RemoteFile] = {}
        self._headers: dict[str, dict[str, TensorInfo]] = {}
        self._lock = threading.Lock()  # guards the shard metadata/header maps and the counters
        self._pool: ThreadPoolExecutor | None = None
        self.bytes_fetched = 0  # bytes received from the Hub for shards (headers and tensor ranges)
        self.fetch_seconds = 0.0  # wall time spent waiting for them

        self.config: dict[str, Any] = read_json_object(
            self._download(CONFIG_FILE), what="checkpoint config", error=CheckpointError
        )
        files = {s.rfilename for s in info.siblings or ()}
        self._repo_files = frozenset(files)
        if WEIGHT_MAP_FILE in files:
            self._index_file: str | None = WEIGHT_MAP_FILE
            self._weight_map = read_weight_map(self._download(WEIGHT_MAP_FILE))
        elif SINGLE_FILE in files:
            self._index_file = None
            self._weight_map = {name: SINGLE_FILE for name in self._header(SINGLE_FILE)}
        else:
            raise CheckpointError(
                f"{self.describe()}: neither {WEIGHT_MAP_FILE} nor {SINGLE_FILE} in the repo"
            )

    # ---- CheckpointSource ----------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def content_fingerprint(self) -> str | None:
        return None  # the commit sha identifies a Hub checkpoint

    def tensor_names(self) -> frozenset[str]:
        return frozenset(self._weight_map)

    def tensor_info(self, name: str) -> TensorInfo:
        shard = self._weight_map.get(name)
        if shard is None:
            where = f"weight_map of {self._index_file}" if self._index_file else SINGLE_FILE
            raise CheckpointError(f"tensor {name} not in {where} of {self.describe()}")
        info = self._header(shard).get(name)
        if info is None:
            raise CheckpointError(
                f"{self.describe()}: weight_map says {name} is in shard {shard} but {shard} has no such tensor"
            )
        return info

    def read(self, names: Iterable[str]) -> Mapping[str, RawTensor]:
        infos = {name: self.tensor_info(name) for name in names}
        by_shard: dict[str, list[TensorInfo]] = defaultdict(list)
        for info in infos.values():
            by_shard[info.shard].append(info)
        jobs = [
            (self._remote_file(shard), start, end)
            for shard, group in by_shard.items()
            for start, end in coalesce_ranges((i.start, i.end) for i in group)
        ]
        t0 = time.monotonic()
        if self._workers == 1 or len(jobs) == 1:
            buffers = [self._fetch(*job) for job in jobs]
        else:
            buffers = list(self._executor().map(lambda job: self._fetch(*job), jobs))
        with self._lock:
            self.fetch_seconds += time.monotonic() - t0

        # Each tensor is a slice of the one request that covers it.
        fetched: dict[str, tuple[list[int], list[tuple[int, np.ndarray]]]] = {}
        for (remote, start, _), buf in zip(jobs, buffers, strict=True):
            starts, parts = fetched.setdefault(remote.url, ([], []))
            starts.append(start)
            parts.append((start, buf))
        out: dict[str, RawTensor] = {}
        for name, info in infos.items():
            starts, parts = fetched[self._remote_file(info.shard).url]
            start, buf = parts[bisect.bisect_right(starts, info.start) - 1]
            out[name] = RawTensor(info, buf[info.start - start : info.end - start])
        return out

    def file(self, name: str) -> Path:
        if name not in self._repo_files:
            raise CheckpointError(f"{self.describe()} has no {name}")
        return self._download(name)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> HubCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- files ------------------------------------------------------------------------------
    def _download(self, filename: str) -> Path:
        """A small repo file at the pinned commit, through the Hub cache (no request once cached)."""
        return download_file(self._ref, filename, cache_dir=self._cache_dir, token=self._token)

    def _remote_file(self, shard: str) -> RemoteFile:
        """Size and ETag of a shard at the pinned commit: remembered on disk, else one HEAD."""
        with self._lock:
            remote = self._files.get(shard)
        if remote is not None:
            return remote
        remote = self._blocks.recall_remote(self._ref, shard)
        if remote is None:
            remote = file_metadata(self._ref, shard, token=self._token)
            self._blocks.remember_remote(self._ref, shard, remote)
        with self._lock:
            return self._files.setdefault(shard, remote)

    def _header(self, shard: str) -> dict[str, TensorInfo]:
        with self._lock:
            header = self._headers.get(shard)
        if header is not None:
            return header
        remote = self._remote_file(shard)
        prefix = self._cached_range(remote, 0, min(PREFIX_BYTES, remote.size))
        n = header_length(prefix, remote.size, file=remote.url)
        raw = self._cached_range(remote, PREFIX_BYTES, PREFIX_BYTES + n)
        header = parse_header(prefix, raw, remote.size, shard=shard, file=remote.url)
        with self._lock:
            return self._headers.setdefault(shard, header)

    def _cached_range(self, remote: RemoteFile, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a shard, through the block cache keyed by its content hash."""

        def write(f: Any) -> None:
            t0 = time.monotonic()
            self._fetch_into(f, remote, start, end)
            with self._lock:
                self.fetch_seconds += time.monotonic() - t0

        path, _ = self._blocks.obtain(remote.etag, start, end, write)
        return path.read_bytes()

    def _fetch(self, remote: RemoteFile, start: int, end: int) -> np.ndarray:
        buf = np.empty(end - start, dtype=np.uint8)
        self._fetch_into(_BufferWriter(buf), remote, start, end)
        return buf

    def _fetch_into(self, fileobj: Any, remote: RemoteFile, start: int, end: int) -> None:
        n = fetch_range_into(
            fileobj,
            remote.url,
            start,
            end,
            token=self._token,
            expected_total=remote.size,
            max_retries=self._max_retries,
        )
        with self._lock:
            self.bytes_fetched += n

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="vindex-fetch")
        return self._pool


__all__ = ["HubCheckpoint", "coalesce_ranges"]
