"""Resolving a revision to a commit, and saying so when only the local cache could answer.

The hub client's own download calls fall back to the cached copy of a revision, silently, when
the Hub answers 401 / 403 / 5xx or cannot be reached: after ``main`` moved, a reader would get the
old commit with no word. ``resolve_revision`` asks the Hub itself (a HEAD of one file, retried
like every request) and falls back to the cache only on such a refusal, returning why
(``Resolution.unconfirmed``), so loaders can warn and ``verify`` can refuse to pass it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name

from ..errors import HubError, RemoteNotFoundError, VindexFormatError
from .http import file_metadata
from .refs import RepoRef


@dataclass(frozen=True)
class Resolution:
    commit: str
    # Why ``commit`` was not confirmed by the Hub as what the revision names now (None: it was, or
    # the revision is itself a commit sha), and whether that is because the Hub refused
    # (``hub_refused``) rather than because HF_HUB_OFFLINE asked for no request at all.
    unconfirmed: str | None = None
    hub_refused: bool = False


def resolve_revision(
    ref: RepoRef,
    filename: str,
    *,
    cache_dir: str | None,
    token: str | bool | None,
    max_bytes: int | None = None,
) -> Resolution:
    """The commit ``ref.revision`` names, from a HEAD of ``filename`` there; when the Hub refuses
    (any ``HubError`` but not-found), the commit the local cache recorded for that revision, with the
    reason. ``max_bytes``: ``VindexFormatError`` when the file is larger (before it is downloaded).
    """
    revision = _revision(ref)
    if REGEX_COMMIT_HASH.fullmatch(revision):
        return Resolution(revision)
    if constants.is_offline_mode():
        cached = cached_commit(ref, filename, cache_dir=cache_dir)
        if cached is None:
            raise HubError(f"{filename} in {ref}: not in the local cache and HF_HUB_OFFLINE is set")
        return Resolution(
            cached,
            f"HF_HUB_OFFLINE is set: revision {revision!r} is the cached commit {cached}, "
            "not confirmed with the Hub",
        )
    try:
        remote = file_metadata(ref, filename, token=token)
    except RemoteNotFoundError:
        raise
    except HubError as exc:
        cached = cached_commit(ref, filename, cache_dir=cache_dir)
        if cached is None:
            raise
        return Resolution(
            cached,
            f"the Hub refused ({exc}); read the cached copy of revision {revision!r} at commit "
            f"{cached}, which may be out of date",
            hub_refused=True,
        )
    if max_bytes is not None and remote.size > max_bytes:
        raise VindexFormatError(
            f"{filename} in {ref}: {remote.size:,} bytes, above the {max_bytes:,} it may hold; "
            "refusing to download it"
        )
    _remember(ref, remote.commit, cache_dir=cache_dir)
    return Resolution(remote.commit)


def _revision(ref: RepoRef) -> str:
    return ref.revision or constants.DEFAULT_REVISION


def hub_cache_root(cache_dir: str | None) -> Path:
    """The Hub cache's root: where a snapshot's links may lead. A snapshot links into its repo's
    ``blobs``; with Xet, those blobs link on into the root's shared, content-addressed
    ``blobs/<xx>/<xet hash>`` (one copy of a file for every repo that holds it)."""
    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def _repo_cache(ref: RepoRef, cache_dir: str | None) -> Path:
    return hub_cache_root(cache_dir) / repo_folder_name(
        repo_id=ref.repo_id, repo_type=ref.repo_type
    )


def _plain(revision: str) -> bool:
    """A revision that can name a file under ``refs/`` (``refs/pr/1`` can; ``../x`` cannot)."""
    parts = revision.split("/")
    return not revision.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def cached_commit(ref: RepoRef, filename: str, *, cache_dir: str | None) -> str | None:
    """The commit the Hub cache recorded for ``ref.revision`` (``refs/<revision>``), if its
    snapshot holds ``filename``."""
    revision = _revision(ref)
    if not _plain(revision):
        return None
    repo = _repo_cache(ref, cache_dir)
    try:
        commit = (repo / "refs" / revision).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not REGEX_COMMIT_HASH.fullmatch(commit):
        return None
    return commit if (repo / "snapshots" / commit / filename).is_file() else None


def _remember(ref: RepoRef, commit: str, *, cache_dir: str | None) -> None:
    """Record revision -> commit in the Hub cache (its ``refs/`` layout), as the hub client does,
    so a later offline or refused open finds the commit confirmed last."""
    revision = _revision(ref)
    if revision == commit or not _plain(revision):
        return
    path = _repo_cache(ref, cache_dir) / "refs" / revision
    try:
        if path.is_file() and path.read_text(encoding="ascii").strip() == commit:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the record is only a convenience
        pass
