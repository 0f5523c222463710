"""The persistent block cache of lazily read byte ranges, shared by processes and revisions.

Where: ``$VINDEX_HUB_CACHE`` if set, else a ``vindex-hub`` folder next to the Hub cache
(``$HF_HUB_CACHE/../vindex-hub``, which is ``$HF_HOME/vindex-hub`` by default; with an explicit
``cache_dir`` it is ``cache_dir/../vindex-hub``)::

    blocks/<content sha256>/<start>-<end>    bytes [start, end) of the file with that content
    blocks/<content sha256>/<start>-<end>.sha256   the sha256 of those bytes, taken when fetched
    meta/<repo folder>/<commit>.json         {filename: {"etag", "size"}}: lets offline opens key blocks
    .locks/...                               filelock files, one per block / record

Blocks are keyed by the file's content hash (the LFS sha256 / ETag at the resolved commit), not
by repo or revision: a new revision with a new binary gets new keys and never sees stale bytes,
and identical binaries share blocks. A block appears under its name only when complete and
checked (atomic rename, under a per-block file lock so two processes fetch it once); a block
whose size is wrong (truncated on disk) is treated as absent and fetched again.

Every block is checked against the sha256 recorded when it was fetched (written, before the block
appears, beside it) the first time a ``BlockCache`` hands it out (unless the caller checks it
against a stronger hash itself, ``caller_checks``): a bit flipped on disk since (a
sign bit in an expert's rows keeps them unit-norm, so no other check would see it) is caught, the
block dropped and fetched again; when it cannot be fetched again, ``IntegrityError`` names it. A
block without its digest (cached by an older vindex-hub, or the digest lost) counts as absent.

A fetch killed mid-way (kill -9) leaves its temporary file ``blocks/<sha>/.<start>-<end>.*.tmp``
behind (up to a layer). The cache removes such a file itself, the next time a block of that
content is obtained, when it is older than this process and its block's lock is free (so no live
fetch is writing it); ``usage`` never counts temporary files.

Every path component built from remote data (content hash, commit, repo folder) must be one
plain file name (``HubError`` otherwise), so a crafted server header cannot point outside the cache.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock, Timeout
from huggingface_hub import constants

from ..checksums import sha256_file
from ..compat import repo_cache_folder_name
from ..errors import HubError, IntegrityError, VindexFormatError
from ..fsutil import atomic_path, atomic_write_json, atomic_write_text, read_json_object
from .http import RemoteFile
from .refs import RepoRef

ENV_CACHE = "VINDEX_HUB_CACHE"
TMP_GLOB = ".*.tmp"  # fsutil.atomic_path's temporary files: ".<final name>.<random>.tmp"
_STARTED = time.time()  # a temporary file older than this process is no write of this run
# One path segment: no separators, no leading dot (so never "." or ".."), bounded length.
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_-][0-9A-Za-z._-]{0,199}$")
_ETAG, _SIZE = "etag", "size"  # the keys of a file's record under meta/
DIGEST_SUFFIX = ".sha256"  # beside each block: the sha256 of its bytes, taken when it was fetched


def default_cache_root(hub_cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The block cache root for a Hub cache folder (None: the client's current ``HF_HUB_CACHE``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    hub = Path(hub_cache_dir if hub_cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    return hub.resolve().parent / "vindex-hub"


def safe_name(value: str, what: str) -> str:
    """``value`` if it can be one cache path segment; else ``HubError`` naming ``what`` it is."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise HubError(
            f"{what} {value!r} cannot name a cache file (expected letters, digits, '.', '_', '-'); "
            "refusing to use it"
        )
    return value


def _commit(ref: RepoRef) -> str:
    """The commit a pinned ``ref`` (``RepoRef.at(commit)``) names; records are per commit."""
    if ref.revision is None:
        raise HubError(f"{ref}: not pinned to a commit; the block cache records only commits")
    return ref.revision


def _repo_folder(ref: RepoRef) -> str:
    """The repo's name in the block cache's records: the Hub cache's own folder name for it."""
    return repo_cache_folder_name(ref.repo_id, ref.repo_type)


class BlockCache:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._swept: set[str] = set()  # content hashes whose stale temporary files were removed
        self._checked: set[Path] = set()  # blocks this object found equal to their digest
        # Blocks found changed on disk since they were fetched (then dropped and fetched again).
        self.corrupt_found: list[str] = []

    @classmethod
    def beside(cls, hub_cache_dir: str | os.PathLike[str] | None = None) -> BlockCache:
        """The block cache that goes with a Hub cache folder (see ``default_cache_root``)."""
        return cls(default_cache_root(hub_cache_dir))

    def block_path(self, key: str, start: int, end: int) -> Path:
        return self.root / "blocks" / safe_name(key, "content hash (ETag)") / f"{start}-{end}"

    def digest_path(self, key: str, start: int, end: int) -> Path:
        block = self.block_path(key, start, end)
        return block.with_name(block.name + DIGEST_SUFFIX)

    def get(self, key: str, start: int, end: int) -> Path | None:
        """The cached block of ``[start, end)``, or None when absent, of the wrong size or without
        its digest (its bytes are checked against the digest by ``obtain``)."""
        path = self.block_path(key, start, end)
        try:
            ok = path.stat().st_size == end - start
        except FileNotFoundError:
            return None
        return path if ok and self.digest_path(key, start, end).is_file() else None

    def _intact(
        self, key: str, start: int, end: int, *, source: str, locked: bool, hash_it: bool = True
    ) -> Path | None:
        """The cached block if present and equal to its recorded digest (hashed once per object),
        else None (fetch it). Only with the block's lock held (``locked``) is a block that differs
        taken as changed on disk, and dropped: without it, a concurrent refetch may be mid-way."""
        path = self.get(key, start, end)
        if path is None or path in self._checked or not hash_it:
            return path
        try:
            recorded = self.digest_path(key, start, end).read_text(encoding="ascii").strip()
            actual = sha256_file(path)
        except (OSError, UnicodeDecodeError):  # removed meanwhile, or unreadable: fetch again
            return None
        if actual != recorded:
            if locked:
                self.corrupt_found.append(f"{source}: bytes {start}-{end - 1} (cache block {path})")
                path.unlink(missing_ok=True)
                self.digest_path(key, start, end).unlink(missing_ok=True)
            return None
        self._checked.add(path)
        return path

    def obtain(
        self,
        key: str,
        start: int,
        end: int,
        write: Callable[[BinaryIO], None],
        check: Callable[[Path], None] | None = None,
        *,
        source: str = "the remote file",
        caller_checks: bool = False,
    ) -> tuple[Path, bool]:
        """(the block, whether this call wrote it), creating it with ``write(fileobj)`` if absent.

        ``check(tmp_path)`` runs on the complete temporary file before it is renamed into
        place; if it raises, nothing is cached. Concurrent callers for one block wait on a lock
        and the later ones find the block made by the first (``False``: this call did not check
        it). ``source`` (the URL) names where the bytes come from in errors.
        ``caller_checks``: the caller checks a block found in the cache itself, against a hash at
        least as strong as the recorded digest (a layer's sha256 from the sidecar), so the digest
        is not hashed too (it still must exist).
        """
        path = self.block_path(key, start, end)
        if self._intact(key, start, end, source=source, locked=False, hash_it=not caller_checks):
            return path, False
        self._sweep(key)
        dropped = len(self.corrupt_found)
        with self._lock(f"blocks-{key}-{start}-{end}"):
            if self._intact(key, start, end, source=source, locked=True, hash_it=not caller_checks):
                return path, False
            try:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        write(f)
                    size = tmp.stat().st_size
                    if size != end - start:
                        raise HubError(
                            f"{source}: bytes {start}-{end - 1} came as {size} bytes, expected "
                            f"{end - start}; not cached"
                        )
                    if check is not None:
                        check(tmp)
                    digest = sha256_file(tmp)
                    # The digest first: a block never appears without the digest it is checked against.
                    atomic_write_text(self.digest_path(key, start, end), digest + "\n")
            except HubError as exc:
                if (
                    len(self.corrupt_found) > dropped
                ):  # a bad cached copy, and no good one to be had
                    raise IntegrityError(
                        f"{self.corrupt_found[-1]} differs from the sha256 recorded when it was "
                        f"fetched (changed on disk); dropped it, and fetching it again failed: {exc}"
                    ) from None
                raise
        self._checked.add(path)
        return path, True

    def discard(self, key: str, start: int, end: int) -> None:
        """Drop a block found to be bad (another process may still hold its old inode: harmless)."""
        with self._lock(f"blocks-{key}-{start}-{end}"):
            self.block_path(key, start, end).unlink(missing_ok=True)
            self.digest_path(key, start, end).unlink(missing_ok=True)
        self._checked.discard(self.block_path(key, start, end))

    def _sweep(self, key: str) -> None:
        """Remove the temporary files a killed fetch left for blocks of ``key`` (once per object)."""
        if key in self._swept:
            return
        self._swept.add(key)
        for tmp in self.block_path(key, 0, 0).parent.glob(TMP_GLOB):
            block = tmp.name[1:].split(".")[0]  # ".<start>-<end>.<random>.tmp"
            try:
                if tmp.stat().st_mtime >= _STARTED:
                    continue  # perhaps this process's own fetch, in another thread
                with self._lock(f"blocks-{key}-{block}").acquire(timeout=0):
                    tmp.unlink(missing_ok=True)
            except (FileNotFoundError, Timeout):  # gone already, or a live fetch holds its lock
                continue

    def usage(self) -> tuple[int, int]:
        """(complete blocks, their bytes) in the cache; temporary files are never counted."""
        count = size = 0
        for block in (self.root / "blocks").glob("*/*"):
            if (
                not block.name.startswith(".")
                and not block.name.endswith(DIGEST_SUFFIX)
                and block.is_file()
            ):
                count, size = count + 1, size + block.stat().st_size
        return count, size

    # Per-commit file records, so an offline open can find the content hash of a file.
    def record_path(self, repo_folder: str, commit: str) -> Path:
        return (
            self.root
            / "meta"
            / safe_name(repo_folder, "repo folder")
            / f"{safe_name(commit, 'commit')}.json"
        )

    def remember(self, repo_folder: str, commit: str, filename: str, info: dict[str, Any]) -> None:
        path = self.record_path(repo_folder, commit)
        with self._lock(f"meta-{path.parent.name}-{path.stem}"):
            records = self._read(path)
            if records.get(filename) != info:
                atomic_write_json(path, {**records, filename: info})

    def recall(self, repo_folder: str, commit: str, filename: str) -> dict[str, Any] | None:
        return self._read(self.record_path(repo_folder, commit)).get(filename)

    def recall_remote(self, ref: RepoRef, filename: str) -> RemoteFile | None:
        """``filename`` of ``ref`` (pinned to a commit) as remembered by ``remember_remote``; None
        without a record, or with a damaged one (a record is only a hint: the caller asks the Hub)."""
        record = self.recall(_repo_folder(ref), _commit(ref), filename)
        if not (
            isinstance(record, dict)
            and isinstance(record.get(_ETAG), str)
            and isinstance(record.get(_SIZE), int)
        ):
            return None
        return RemoteFile(ref.url(filename), _commit(ref), record[_ETAG], record[_SIZE])

    def remember_remote(self, ref: RepoRef, filename: str, remote: RemoteFile) -> None:
        """Record ``remote``'s ETag and size for ``filename`` of ``ref`` (pinned to a commit, whose
        files never change, so the record stays true), for offline opens and fewer HEADs."""
        self.remember(
            _repo_folder(ref), _commit(ref), filename, {_ETAG: remote.etag, _SIZE: remote.size}
        )

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            return read_json_object(path, what="block cache record")
        except VindexFormatError:  # missing or damaged: a record is only a hint, rebuilt online
            return {}

    def _lock(self, name: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"))
