"""References to Hub repos: ``RepoRef`` (repo, type, revision), ``parse_repo`` and commit shas."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from huggingface_hub import constants

from ..compat import is_commit_sha
from ..errors import HubError, UsageError

# The repo types a vindex lives in (the CLI's --repo-type choices); a dataset repo by default,
# since only those are read by ``datasets.load_dataset``.
REPO_TYPES = ("dataset", "model")
DEFAULT_REPO_TYPE = "dataset"

_HF_URI = re.compile(
    r"^hf://(?:(?P<type>datasets|models|spaces)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/?$"
)
# What only a path starts with: a repo id's namespace is a Hub user or org name, never "." or "~".
_PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` can only be a filesystem path (``./x``, ``../x``, ``/x``, ``~/x``, ``x/y/z``,
    or a path that exists), never a repo id: so a missing folder is named as one."""
    return (
        spec.startswith(_PATH_PREFIXES)
        or spec in (".", "..")
        or os.path.isabs(spec)
        or (os.sep != "/" and os.sep in spec)
        or os.path.exists(spec)
        or (not spec.startswith("hf://") and spec.count("/") > 1)
    )


_RESOLVE = re.compile(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/")


@dataclass(frozen=True)
class RepoRef:
    """A Hub repo at a revision (branch, tag or commit sha; None means the default branch)."""

    repo_id: str
    repo_type: str = DEFAULT_REPO_TYPE
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_type} repo {self.repo_id}@{self.revision or constants.DEFAULT_REVISION}"

    def url(self, filename: str, revision: str | None = None) -> str:
        # the client's download module costs ~0.4 s to import: only where a URL is made
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            self.repo_id, filename, repo_type=self.repo_type, revision=revision or self.revision
        )

    def at(self, revision: str) -> RepoRef:
        return RepoRef(self.repo_id, self.repo_type, revision)

    def repo_url(self, endpoint: str | None = None) -> str:
        """The repo's page on ``endpoint`` (default: the client's ``HF_ENDPOINT``), as the Hub spells
        it: ``{endpoint}/datasets/ns/name``, ``{endpoint}/ns/name`` for a model."""
        prefix = constants.REPO_TYPES_URL_PREFIXES.get(self.repo_type, "")
        return f"{endpoint or constants.ENDPOINT}/{prefix}{self.repo_id}"

    def web_url(self) -> str:
        """The repo's page at its revision (names the repo in messages about whole-repo requests)."""
        return f"{self.repo_url()}/tree/{self.revision or constants.DEFAULT_REVISION}"


def parse_repo(
    spec: str, *, revision: str | None = None, repo_type: str = DEFAULT_REPO_TYPE
) -> RepoRef:
    """``ns/name`` (of ``repo_type``) or ``hf://datasets/ns/name@rev`` (``hf://ns/name`` is a model).

    A revision inside an ``hf://`` URI may be URL-encoded (``refs%2Fpr%2F1``).
    """
    m = _HF_URI.match(spec)
    if m:
        kind = constants.REPO_TYPES_MAPPING.get(
            m.group("type"), constants.REPO_TYPE_MODEL
        )  # hf://ns/name
        uri_rev = unquote(m.group("rev")) if m.group("rev") else None
        if uri_rev and revision and uri_rev != revision:
            raise UsageError(
                f"{spec}: revision {uri_rev!r} in the URI conflicts with revision={revision!r}"
            )
        return RepoRef(m.group("repo"), kind, uri_rev or revision)
    if looks_like_path(spec):
        what = "is not a folder" if os.path.exists(spec) else "no such folder"
        raise UsageError(f"{spec}: {what} (a path, so not read as a Hub repo id)")
    if spec.startswith("hf://") or spec.count("/") != 1 or not all(spec.split("/")):
        raise UsageError(
            f"{spec!r} is neither an existing folder nor a Hub repo id (ns/name or hf://datasets/ns/name@rev)"
        )
    if repo_type not in constants.REPO_TYPES:
        raise UsageError(f"repo_type {repo_type!r}: expected one of {constants.REPO_TYPES}")
    return RepoRef(spec, repo_type, revision)


def commit_sha(value: str, where: str) -> str:
    """``value`` if it is a full 40-hex commit sha (it names cache files); else ``HubError``."""
    if not is_commit_sha(value or ""):
        raise HubError(
            f"{where}: the server gave commit {value!r}, not a 40-hex sha; refusing to use it"
        )
    return value


def ref_from_url(url: str) -> RepoRef:
    """The repo a ``.../resolve/<rev>/...`` URL points into (for error messages)."""
    m = _RESOLVE.search(url)
    if not m:
        return RepoRef(url, "model")
    kind = constants.REPO_TYPES_MAPPING.get(
        m.group(1), constants.REPO_TYPE_MODEL
    )  # no prefix: a model
    return RepoRef(m.group(2), kind, unquote(m.group(3)))
