"""Describing a Hub vindex without its binary (``remote_info``) and finding a whole vindex on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RemoteNotFoundError, VindexFormatError
from ..format.layout import format_size
from ..hub.errors import hub_errors
from ..hub.http import download_snapshot, with_retries
from ..hub.refs import DEFAULT_REPO_TYPE, RepoRef, parse_repo
from ..hub.revision import Resolution, hub_cache_root
from .files import resolve_vindex_revision
from .vindex import DEFAULT_REPO_MODE, Vindex

PHASES = ("phase1", "phase2")


def remote_info(
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str = DEFAULT_REPO_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> dict[str, Any]:
    """``Vindex.info()`` of a Hub vindex plus its phase-1/phase-2 JSON, without reading the binary.

    Downloads the sidecar and the small stats JSON; a HEAD of the binary gives its size.
    """
    with Vindex.open(
        repo_id, revision, repo_type, mode=DEFAULT_REPO_MODE, cache_dir=cache_dir, token=token
    ) as vx:
        info = vx.info()
        for name in PHASES:
            try:
                info[name] = getattr(vx, name)
            except (VindexFormatError, RemoteNotFoundError):
                info[name] = None
        return info


def local_folder(
    path_or_repo_id: str | os.PathLike[str],
    revision: str | None = None,
    *,
    repo_type: str = DEFAULT_REPO_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> Path:
    """A folder holding the whole vindex: ``path_or_repo_id`` itself, or a cached Hub snapshot.

    Before a download, ``announce`` (when given) is told how many files and bytes the repo holds.
    """
    return local_copy(
        path_or_repo_id,
        revision,
        repo_type=repo_type,
        cache_dir=cache_dir,
        token=token,
        announce=announce,
    ).folder


@dataclass(frozen=True)
class LocalCopy:
    """A whole vindex on disk, and for a repo, how its commit was found."""

    folder: Path
    links_within: Path  # where its symbolic links may point (a snapshot's: the Hub cache)
    resolution: Resolution | None = None  # None for a local folder


def local_copy(
    path_or_repo_id: str | os.PathLike[str],
    revision: str | None = None,
    *,
    repo_type: str = DEFAULT_REPO_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> LocalCopy:
    """``local_folder`` with the resolution of the revision (``resolution.unconfirmed`` says when
    the Hub refused and the cache answered; a ``CachedCopyWarning`` is issued then)."""
    if Path(path_or_repo_id).is_dir():
        return LocalCopy(Path(path_or_repo_id), Path(path_or_repo_id))
    ref = parse_repo(str(path_or_repo_id), revision=revision, repo_type=repo_type)
    cache = str(cache_dir) if cache_dir else None
    resolved = resolve_vindex_revision(ref, cache_dir=cache, token=token)
    pinned = ref.at(resolved.commit)
    if announce is not None and not resolved.hub_refused:
        count, size = repo_size(pinned, token=token)
        announce(
            f"downloading {ref}: {count} files, {format_size(size)} "
            "(files already in the Hub cache are not fetched again)"
        )
    folder = download_snapshot(pinned, cache_dir=cache, token=token)
    return LocalCopy(folder, hub_cache_root(cache), resolved)


def repo_size(ref: RepoRef, *, token: str | bool | None = None) -> tuple[int, int]:
    """How many files a repo holds at ``ref``, and their bytes (from its file listing)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    def listing() -> list[Any]:
        return list(
            HfApi().list_repo_tree(
                ref.repo_id,
                recursive=True,
                revision=ref.revision,
                repo_type=ref.repo_type,
                token=token,
            )
        )

    with hub_errors(ref):
        tree = with_retries(listing, url=ref.web_url())
    files = [e for e in tree if isinstance(e, RepoFile)]
    return len(files), sum(int(e.size) for e in files)
