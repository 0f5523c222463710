"""Where a vindex's small files come from: a local folder, or a Hub repo pinned to a commit.

Both locators answer ``path(name)`` with a local file and ``describe(name)`` for messages; a name
that would leave the vindex folder or repo (absolute, ``..``) is refused before anything is opened.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

from ..errors import CachedCopyWarning, VindexFormatError
from ..format import filenames, sidecar
from ..format.filenames import inside_vindex
from ..hub.http import damaged_copy_hint, download_file
from ..hub.refs import RepoRef
from ..hub.revision import Resolution, resolve_revision


class VindexFiles(Protocol):
    def path(self, name: str) -> Path: ...

    def describe(self, name: str) -> str: ...


class LocalFiles:
    """Files of a vindex folder."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        path = self.root / inside_vindex(name, str(self.root))
        if not path.is_file():
            raise VindexFormatError(f"{path}: no such file in this vindex")
        return path

    def describe(self, name: str) -> str:
        return str(self.root / name)


class HubFiles:
    """Files of a repo pinned to a commit, through the Hub cache (no request once cached)."""

    def __init__(self, ref: RepoRef, *, cache_dir: str | None, token: str | bool | None):
        self.ref, self.cache_dir, self.token = ref, cache_dir, token
        self._paths: dict[str, Path] = {}  # where each file fetched so far is cached

    def path(self, name: str) -> Path:
        path = download_file(
            self.ref, inside_vindex(name, str(self.ref)), cache_dir=self.cache_dir, token=self.token
        )
        self._paths[name] = path
        return path

    def describe(self, name: str) -> str:
        """The file in the repo; once fetched, with how to recover from a damaged cached copy
        (the client never checks a cached file again, so it would fail every later open)."""
        cached = self._paths.get(name)
        return f"{name} in {self.ref}" + (damaged_copy_hint(cached) if cached else "")


def resolve_vindex_revision(
    ref: RepoRef, *, cache_dir: str | None, token: str | bool | None
) -> Resolution:
    """``ref``'s revision resolved with the Hub by a HEAD of its sidecar (bounded in size), or
    the cache's commit where the Hub refused: a ``CachedCopyWarning`` says so then."""
    resolved = resolve_revision(
        ref,
        filenames.SIDECAR_JSON,
        cache_dir=cache_dir,
        token=token,
        max_bytes=sidecar.MAX_SIDECAR_BYTES,
    )
    if resolved.hub_refused:
        warnings.warn(f"{ref}: {resolved.unconfirmed}", CachedCopyWarning, stacklevel=3)
    return resolved
