"""Publishing a vindex folder to the Hub: ``push_vindex``, one verified folder -> one commit.

What a push does, in order:

1. Checks the arguments (repo id, repo type, branch options) and runs ``verify_vindex`` on the
   folder: a folder that fails any check is refused before anything is sent.
2. Creates the repo if needed (``exist_ok``; ``private`` applies only to a repo it creates) and
   finds the head commit of the target branch (``revision``, default ``main``). A missing branch
   is an error unless ``create_branch``, which creates it from ``main``.
3. Compares the folder with the remote tree at that head: a file whose size and content hash
   match (sha256 for LFS files, git blob sha1 for regular ones) is *unchanged* and not sent.
   The sha256s the verification computed (the binary's, the LarQL index's checksummed files) and
   those computed here go to the client, so no file is hashed twice. Behind this,
   the LFS batch API skips objects the server already stores (from an earlier failed push, or
   another repo), so bytes that arrived once are never sent again.
4. Makes ONE commit (``HfApi.create_commit``) with the new and changed files, deleting *stale*
   files: remote files the vindex owns (the schema's file names and everything under ``data/``)
   that the folder no longer has. So a re-push of a vindex with fewer layers leaves no parquet
   split that the card no longer lists; files the vindex does not own (``.gitattributes``, a
   LICENSE added on the Hub) are left alone. The commit names the head it was compared against
   (``parent_commit``): if the branch moved meanwhile, the server refuses it instead of applying
   a stale diff. ``create_pr`` opens a pull request from that head instead.

Uploaded: only the files a vindex owns (``filenames.is_vindex_path``: the binary, sidecar, phase
JSON, card, its plot, the LarQL files and everything under ``data/``), plus those the user names
(``include``, fnmatch patterns); any other file of the folder is left out, with a note. Never
uploaded: our bookkeeping (``filenames.is_bookkeeping_path``): hidden paths (any part
starting with ``.``: the build's work folder, the pull marker, temporary files of atomic writes)
and unfinished files (``filenames.UNFINISHED_SUFFIXES``). A symbolic link whose target lies
outside the folder is never followed: ``verify`` (run first) refuses the folder.

Failure leaves the branch as it was: LFS objects go to the server's object store first, and only
the final commit request changes a branch, atomically. Every request (repo info, refs, tree, the
LFS batch and uploads, the commit) is retried on 5xx / 429 / dropped connections
(``hub.http.with_retries``); what still fails becomes ``HubError`` / ``RemoteNotFoundError`` naming the repo
and URL. The token (``token=``, else ``HF_TOKEN``, else the saved login) is never printed: it is
scrubbed, as a whole token, from every message (``hub.errors.hub_errors``), and a token that
cannot travel in a header is refused before anything is sent, quoting none of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Importing hub.http below loads huggingface_hub (its hf_api, errors, utils) anyway: these add nothing.
from huggingface_hub import CommitOperationDelete, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    HFValidationError,
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
    validate_repo_id,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from .checksums import iter_chunks
from .compat import counted_commit_operation_add, git_blob_sha1
from .errors import HubError, RemoteNotFoundError, UsageError, VindexFormatError
from .format import filenames, layout, selection, sidecar
from .format.layout import format_size
from .hub.errors import (
    XET_EXCEPTIONS,
    check_token,
    first_line,
    hub_errors,
    xet_failure,
    xet_message,
)
from .hub.http import request_timeout, with_retries
from .hub.refs import DEFAULT_REPO_TYPE, REPO_TYPES, RepoRef

if TYPE_CHECKING:
    from .verify import VerifyReport

DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class PushFile:
    path: str  # relative to the vindex root, "/"-separated, as in the repo
    size: int


@dataclass
class PushResult:
    """What a push sent (or, for a dry run, would send), skipped and deleted, and where it went."""

    folder: Path
    repo_id: str
    repo_type: str
    revision: str  # the branch committed to (for a pull request: the branch it targets)
    repo_url: str
    uploaded: list[PushFile] = field(default_factory=list)  # new or changed files in the commit
    unchanged: list[PushFile] = field(default_factory=list)  # already on the Hub with this content
    deleted: list[str] = field(default_factory=list)  # stale vindex files removed by the commit
    dry_run: bool = False
    created_repo: bool = False  # for a dry run: would be created
    created_branch: bool = False  # for a dry run: would be created
    commit_oid: str | None = None  # None: dry run, or nothing changed (no commit made)
    commit_url: str | None = None
    pr_url: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def uploaded_bytes(self) -> int:
        return sum(f.size for f in self.uploaded)

    @property
    def unchanged_bytes(self) -> int:
        return sum(f.size for f in self.unchanged)

    @property
    def changed(self) -> bool:
        return bool(self.uploaded or self.deleted)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("uploaded", "unchanged")}
        return {
            **data,
            "folder": str(self.folder),
            "uploaded": [f.__dict__ for f in self.uploaded],
            "unchanged": [f.__dict__ for f in self.unchanged],
        }

    def render(self) -> str:
        """The CLI's report: a summary line, the commit / PR URL, per-file lines for a dry run."""
        target = f"{self.repo_type} repo {self.repo_id}@{self.revision}"
        counts = (
            f"{len(self.uploaded)} file(s), {format_size(self.uploaded_bytes)}; "
            f"{len(self.unchanged)} unchanged ({format_size(self.unchanged_bytes)}); "
            f"{len(self.deleted)} stale file(s) deleted"
        )
        creations = [
            what
            for what, done in (
                ("repo", self.created_repo),
                (f"branch {self.revision}", self.created_branch),
            )
            if done
        ]
        lines: list[str] = []
        if self.dry_run:
            lines.append(
                f"dry run: would push to {target}: {counts.replace('deleted', 'to delete')}"
            )
            if creations:
                lines.append(f"would create: {', '.join(creations)}")
            lines += [f"  upload     {f.path}  ({format_size(f.size)})" for f in self.uploaded]
            lines += [f"  unchanged  {f.path}" for f in self.unchanged]
            lines += [f"  delete     {p}" for p in self.deleted]
        elif not self.changed:
            lines.append(
                f"{target} is up to date: {len(self.unchanged)} file(s) unchanged "
                f"({format_size(self.unchanged_bytes)}); no commit made"
            )
        else:
            kind = "pull request" if self.pr_url else "commit"
            lines.append(f"pushed to {target} in one {kind}: {counts}")
            if creations:
                lines.append(f"created: {', '.join(creations)}")
            lines.append(f"commit: {self.commit_url}")
            if self.pr_url:
                lines.append(f"pull request: {self.pr_url}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def push_vindex(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    repo_type: str = DEFAULT_REPO_TYPE,
    revision: str | None = None,
    create_branch: bool = False,
    create_pr: bool = False,
    private: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    progress: bool = True,
    include: Sequence[str] = (),
) -> PushResult:
    """Upload the vindex in ``folder`` to the Hub repo ``repo_id`` in one commit (see the module doc).

    ``revision``: the branch to commit to (default ``main``); ``create_branch`` creates it from
    ``main`` when missing. ``create_pr``: open a pull request against that branch instead.
    ``commit_message`` replaces the default summary (source model, revision, builder version).
    ``dry_run``: work out what would be uploaded, skipped and deleted, and send nothing.
    ``include``: fnmatch patterns of other files of the folder to publish too (``LICENSE``).
    """
    folder = Path(folder)
    branch = revision or DEFAULT_BRANCH
    _check_arguments(folder, repo_id, repo_type, revision, create_branch)
    verified = _verified(folder)
    local = publishable_files(folder, include)
    ref = RepoRef(repo_id, repo_type, branch)
    api = HfApi(token=token)
    check_token(token)
    with hub_errors(ref, token=token), _progress_bars(progress):
        result = PushResult(
            folder, repo_id, repo_type, branch, repo_url=ref.repo_url(api.endpoint), dry_run=dry_run
        )
        left_out = sorted(set(_folder_files(folder)) - {f.path for f in local})
        if left_out:
            shown = ", ".join(left_out[:5]) + (", ..." if len(left_out) > 5 else "")
            result.notes.append(
                f"not published ({len(left_out)} file(s) a vindex does not own: {shown}); "
                "name them with --include PATTERN to publish them"
            )
        info = with_retries(lambda: _existing_repo(api, ref), url=result.repo_url)
        exists = info is not None
        if not exists and branch != DEFAULT_BRANCH:
            _require_create_branch(api, ref, create_branch)  # before creating anything
        if not exists:
            result.created_repo = True
            if not dry_run:
                result.repo_url = str(
                    with_retries(
                        lambda: api.create_repo(
                            repo_id, repo_type=repo_type, private=private, exist_ok=True
                        ),
                        url=result.repo_url,
                    )
                )
        elif private and not info.private:
            result.notes.append(
                f"{repo_id} already exists and is public: private=True applies only to a new repo"
            )
        head = None
        if exists or not dry_run:
            head, result.created_branch = _branch_head(
                api, ref, create_branch=create_branch, dry_run=dry_run
            )
        else:
            result.created_branch = branch != DEFAULT_BRANCH
        remote = _remote_files(api, ref, head) if head is not None else {}
        hashes = _plan(folder, local, remote, result, known=verified.sha256, progress=progress)
        if dry_run or not result.changed:
            if not dry_run:
                result.commit_oid = head
            return result
        summary, description = (
            commit_text(verified.index)
            if verified.index is not None
            else comparison_commit_text(folder)
        )
        commit = _commit(
            api,
            ref,
            folder,
            result,
            hashes,
            head=head,
            create_pr=create_pr,
            summary=commit_message or summary,
            description=description,
        )
        result.commit_oid, result.commit_url, result.pr_url = (
            commit.oid,
            commit.commit_url,
            commit.pr_url,
        )
    return result


# ---- what is pushed ----------------------------------------------------------------------------
def publishable_files(folder: Path, include: Sequence[str] = ()) -> list[PushFile]:
    """Every file of the vindex to publish, sorted: those it owns and those ``include`` names
    (``filenames.is_published_path``); ``VindexFormatError`` for one that is a symbolic link out of
    the folder (its target is never read)."""
    from .verify import link_leaves

    out = []
    for rel in _folder_files(folder):
        if filenames.is_published_path(rel, include):
            path = folder / rel
            if link_leaves(path, folder):
                raise VindexFormatError(
                    f"{path}: a symbolic link to a file outside {folder}; refusing to publish it "
                    "(copy the file into the folder instead)"
                )
            if path.is_file():
                out.append(PushFile(rel, path.stat().st_size))
    return sorted(out, key=lambda f: f.path)


def _folder_files(folder: Path) -> Iterator[str]:
    """The folder's file paths ("/"-separated), our bookkeeping left out."""
    for dirpath, dirnames, names in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        dirnames[:] = sorted(d for d in dirnames if not _excluded(rel_dir / d))
        for name in names:
            rel = rel_dir / name
            if not _excluded(rel):
                yield rel.as_posix()


def _excluded(rel: Path) -> bool:
    return filenames.is_bookkeeping_path(rel.as_posix())


def commit_text(index: sidecar.VindexIndex) -> tuple[str, str]:
    """The default commit summary and description, from the sidecar (never a local path)."""
    src, b = index.source, index.builder
    at = f"@{src.revision[:12]}" if src.revision else ""
    summary = f"Upload vindex of {index.display_name}{at} ({b.name} {b.version})"
    description = "\n".join(
        [
            f"source: {index.display_name}"
            + (f" at revision {src.revision}" if src.revision else ""),
            f"builder: {b.name} {b.version}, method: {b.method}",
            f"layers: {selection.layer_span(index.layer_ids)} ({len(index.layers)} x {index.num_experts} experts x "
            f"{index.num_feats} feats x {index.hidden_size} hidden, {layout.DTYPE})",
        ]
    )
    return summary, description


def comparison_commit_text(folder: Path) -> tuple[str, str]:
    """The commit text of a ``compare`` output: both sides, from its document."""
    from .format import geometry
    from .fsutil import read_json_object

    doc = read_json_object(folder / geometry.COMPARE_JSON, what="comparison document")
    a, b = doc[geometry.COMPARE_A], doc[geometry.COMPARE_B]
    return (
        f"Upload comparison of {a['name']} and {b['name']}",
        "\n".join(f"{s['name']}: commit {s.get('commit')}" for s in (a, b)),
    )


def _check_arguments(
    folder: Path, repo_id: str, repo_type: str, revision: str | None, create_branch: bool
) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"invalid repo id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise UsageError(f"invalid repo id {repo_id!r}: expected 'namespace/name'")
    if repo_type not in REPO_TYPES:
        raise UsageError(f"repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
    if create_branch and revision is None:
        raise UsageError("create_branch needs a revision: the name of the branch to create")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (expected a built vindex)")


def _verified(folder: Path) -> VerifyReport:
    """``verify_vindex`` of the folder, raising on any problem; the push reuses what it computed (the
    parsed sidecar, the files' sha256s)."""
    from .verify import verify_vindex

    report = verify_vindex(folder)
    report.raise_if_failed()
    return report


# ---- the remote side -----------------------------------------------------------------------------
def _existing_repo(api: HfApi, ref: RepoRef):
    """The repo's info, or None when it does not exist (or is private and the token cannot see it)."""
    try:
        # repo_info passes its own timeout (None: wait forever) over the session's.
        return api.repo_info(ref.repo_id, repo_type=ref.repo_type, timeout=request_timeout().read)
    except RepositoryNotFoundError:
        return None


def _branch_head(
    api: HfApi, ref: RepoRef, *, create_branch: bool, dry_run: bool
) -> tuple[str, bool]:
    """(head commit of the target branch, whether it is (to be) created from main)."""
    refs = with_retries(
        lambda: api.list_repo_refs(
            ref.repo_id, repo_type=ref.repo_type, include_pull_requests=True
        ),
        url=ref.web_url(),
    )
    heads = {b.name: b.target_commit for b in refs.branches}
    heads.update(
        {p.ref: p.target_commit for p in refs.pull_requests or []}
    )  # refs/pr/N: push onto a PR
    if ref.revision in heads:
        return heads[ref.revision], False
    _require_create_branch(api, ref, create_branch)
    if DEFAULT_BRANCH not in heads:
        raise RemoteNotFoundError(
            f"{ref.repo_type} repo {ref.repo_id} has no {DEFAULT_BRANCH!r} branch "
            f"to create {ref.revision!r} from"
        )
    if not dry_run:
        with_retries(
            lambda: api.create_branch(
                ref.repo_id,
                branch=ref.revision or DEFAULT_BRANCH,
                revision=heads[DEFAULT_BRANCH],
                repo_type=ref.repo_type,
                exist_ok=True,
            ),
            url=ref.web_url(),
        )
    return heads[DEFAULT_BRANCH], True


def _require_create_branch(api: HfApi, ref: RepoRef, create_branch: bool) -> None:
    if not create_branch:
        raise RemoteNotFoundError(
            f"branch {ref.revision!r} does not exist in {ref.repo_type} repo {ref.repo_id} at {api.endpoint}; "
            f"pass create_branch=True to create it from {DEFAULT_BRANCH}"
        )


def _remote_files(api: HfApi, ref: RepoRef, head: str) -> dict[str, RepoFile]:
    tree = with_retries(
        lambda: list(
            api.list_repo_tree(ref.repo_id, recursive=True, revision=head, repo_type=ref.repo_type)
        ),
        url=ref.at(head).web_url(),
    )
    return {e.path: e for e in tree if isinstance(e, RepoFile)}


def _plan(
    folder: Path,
    local: list[PushFile],
    remote: dict[str, RepoFile],
    result: PushResult,
    *,
    known: dict[str, str],
    progress: bool,
) -> dict[str, str]:
    """Sort the folder's files into uploaded / unchanged and find stale remote files.

    ``known``: sha256s already computed (by the verification), by path. Returns the sha256 of each
    file known or hashed here (those with a same-size LFS remote file).
    """
    to_hash = [f for f in local if f.path in remote and remote[f.path].size == f.size]
    hashes = {f.path: known[f.path] for f in local if f.path in known}
    with hf_tqdm(
        total=sum(f.size for f in to_hash),
        unit="B",
        unit_scale=True,
        desc="Comparing with the Hub",
        disable=not progress or not to_hash,
    ) as bar:
        for f in local:
            r = remote.get(f.path)
            if r is None or r.size != f.size:
                same = False
            elif r.lfs is not None:
                if f.path in hashes:
                    bar.update(f.size)
                else:
                    hashes[f.path] = _sha256(folder / f.path, bar)
                same = hashes[f.path] == r.lfs.sha256
            else:
                same = _git_blob_sha1(folder / f.path) == r.blob_id
                bar.update(f.size)
            (result.unchanged if same else result.uploaded).append(f)
    local_paths = {f.path for f in local}
    result.deleted = sorted(
        p for p in remote if filenames.is_vindex_path(p) and p not in local_paths
    )
    return hashes


def _sha256(path: Path, bar) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter_chunks(f, path.stat().st_size, where=str(path)):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """What the Hub reports as a regular file's ``oid`` (regular files are small: read whole)."""
    return git_blob_sha1(path.read_bytes())


def _commit(
    api: HfApi,
    ref: RepoRef,
    folder: Path,
    result: PushResult,
    hashes: dict[str, str],
    *,
    head: str | None,
    create_pr: bool,
    summary: str,
    description: str,
):
    operations: list = []
    for f in result.uploaded:
        op = counted_commit_operation_add(f.path, str(folder / f.path))
        if (
            f.path in hashes
        ):  # already hashed (by the verification or the plan): spare the client a pass
            op.upload_info.sha256 = bytes.fromhex(hashes[f.path])
        operations.append(op)
    operations += [CommitOperationDelete(path_in_repo=p) for p in result.deleted]
    try:
        # A retried commit re-sends only what the server lacks: the LFS batch skips stored objects.
        return with_retries(
            lambda: api.create_commit(
                ref.repo_id,
                operations,
                commit_message=summary,
                commit_description=description,
                repo_type=ref.repo_type,
                revision=ref.revision,
                create_pr=create_pr,
                parent_commit=head,
            ),
            url=f"{api.endpoint}/api/{ref.repo_type}s/{ref.repo_id}/commit/{ref.revision}",
        )
    except XET_EXCEPTIONS as exc:
        if xet_failure(exc):  # hf_xet's errors reach us unwrapped; files are in the CAS or not
            raise HubError(
                f"{xet_message(str(ref), exc)}; nothing was committed, push again to resume"
                " (chunks that arrived are not sent twice)"
            ) from None
        if not isinstance(exc, (RuntimeError, ValueError)):
            raise
        # The client wraps a failed LFS upload in RuntimeError("Error while uploading '<path>' ...").
        cause = f" ({first_line(exc.__cause__)})" if exc.__cause__ is not None else ""
        raise HubError(
            f"{ref}: upload to {api.endpoint} failed: {first_line(exc)}{cause}; nothing was committed, "
            "push again to resume (files that arrived are not sent twice)"
        ) from None


# ---- plumbing --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Show the client's progress bars or not, for the duration of one push."""
    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
