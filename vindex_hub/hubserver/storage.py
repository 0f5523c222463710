"""On-disk storage of the local Hub server: content-addressed blobs and git-like repo metadata.

Layout under ``root``::

    blobs/<sha256[:2]>/<sha256>                  every file body (regular and LFS), by sha256
    tmp/                                         partial writes; emptied on open
    repos/<datasets|models>/<ns>/<name>/repo.json          private/gated flags, grants, created_at, refs
    repos/<datasets|models>/<ns>/<name>/commits/<sha>.json one immutable commit each

A commit record is ``{"parent", "summary", "description", "created_at", "tree"}`` where ``tree``
maps each file path to ``{"oid": git sha1, "size", "sha256", "lfs": bool}`` plus ``"xet_hash"``
for a file that arrived through Xet. ``oid`` is what the
Hub calls a file's blob id: the git sha1 of the content for regular files, of the LFS pointer for
LFS files. The commit sha is the sha1 of the record's canonical JSON, so it is 40 hex digits like
git's. Refs are ``branches`` and ``tags`` (name -> sha) and ``pulls`` (PR number -> sha).
A gated repo's ``repo.json`` has ``gated`` (``"auto"`` or ``"manual"``; ``false`` when open) and
``granted_token_sha256``: the sha256 of each token granted access, so no token is on disk.

Every file is written to ``tmp/`` first, fsynced and renamed into place, so a crash or a broken
upload never leaves a partial blob or metadata file under its final name. One lock serialises
metadata updates; blobs need none (same name, same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

REPO_TYPES = ("model", "dataset")
DEFAULT_BRANCH = "main"
# \Z, not $: $ also matches before a trailing newline, letting "name\n" through.
SHA1_RE = re.compile(r"^[0-9a-f]{40}\Z")
ABBREV_SHA1_RE = re.compile(r"^[0-9a-f]{7,40}\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
PR_REF_RE = re.compile(r"^refs/pr/([0-9]+)\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")

# What the Hub writes as the first commit of a new repo (it tracks these patterns with LFS).
LFS_SUFFIXES = (
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".tgz",
    ".wasm",
    ".xz",
    ".zip",
    ".zst",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".mp3",
    ".wav",
    ".ogg",
    ".flac",
    ".mp4",
)
GITATTRIBUTES = "".join(
    f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES
).encode()
# Files at least this large go to LFS whatever their type (the Hub's limit for regular files).
LFS_MIN_SIZE = 10 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024


class StorageError(Exception):
    """A request the storage refuses; carries the HTTP status and the Hub's ``X-Error-Code``."""

    def __init__(self, status: int, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports as ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git-LFS pointer file git stores in place of an LFS file's content."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def is_lfs_upload(path: str, size: int, sample: bytes) -> bool:
    """Decide regular vs LFS like the Hub: LFS by suffix, by size, or when the sample looks binary."""
    if size == 0:
        return False  # the client commits empty files as regular whatever we say
    if path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE:
        return True
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut by the 512-byte sample boundary is still text.
        return e.start < len(sample) - 3
    return False


def token_digest(token: str) -> str:
    """How a granted token is stored and compared: its sha256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RepoRef:
    """A repo address: ``repo_type`` is ``"model"`` or ``"dataset"``, ``repo_id`` is ``ns/name``."""

    repo_type: str
    repo_id: str

    def __post_init__(self) -> None:
        # Checked here, once: repo ids become folder names under the storage root.
        if self.repo_type not in REPO_TYPES:
            raise StorageError(
                404, f"repo type {self.repo_type!r} is not served here", "RepoNotFound"
            )
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(NAME_RE.match(p) for p in parts) or ".." in self.repo_id:
            raise StorageError(400, f"invalid repo id {self.repo_id!r}: expected 'namespace/name'")

    @property
    def url_prefix(self) -> str:
        """The path prefix of the repo's web and resolve URLs (models have none)."""
        return "" if self.repo_type == "model" else f"{self.repo_type}s/"


@dataclass(frozen=True)
class Entry:
    """One file of a commit's tree."""

    oid: str
    size: int
    sha256: str
    lfs: bool
    xet_hash: str | None = None  # set when the file arrived through Xet (see .xet)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"oid": self.oid, "size": self.size, "sha256": self.sha256}
        out["lfs"] = self.lfs
        if self.xet_hash is not None:
            out["xet_hash"] = self.xet_hash
        return out

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    summary: str
    description: str
    created_at: str
    tree: dict[str, Entry]


class Storage:
    """Repos, refs, commits and blobs of the local Hub under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        shutil.rmtree(self._tmp, ignore_errors=True)  # leftovers of writes that never completed
        for sub in ("blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._commits: dict[tuple[RepoRef, str], Commit] = {}

    # -- files ---------------------------------------------------------------------------------

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write_json(self, dest: Path, obj: Any) -> None:
        self._atomic_write(dest, json.dumps(obj, indent=1, sort_keys=True).encode())

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        if not SHA256_RE.match(sha256):
            return False
        try:
            stored = self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or stored == size

    def put_blob_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha, len(data)):
            self._atomic_write(self.blob_path(sha), data)
        return sha

    def put_blob_stream(self, chunks: Iterable[bytes], sha256: str, size: int | None) -> None:
        """Store a blob streamed from ``chunks``; only a body with this sha256 (and size, if given) lands.

        A broken stream (the iterator raises) or a mismatch leaves nothing behind.
        """
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            digest = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    written += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if (size is not None and written != size) or digest.hexdigest() != sha256:
                raise StorageError(
                    400,
                    f"uploaded object {sha256} has {written} bytes and sha256 {digest.hexdigest()};"
                    f" expected {size} bytes and sha256 {sha256}",
                )
            dest = self.blob_path(sha256)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def open_blob(self, sha256: str) -> BinaryIO:
        return open(self.blob_path(sha256), "rb")

    def iter_blob(self, sha256: str, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
        with self.open_blob(sha256) as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(chunk_size, length))
                if not chunk:
                    raise StorageError(500, f"blob {sha256} is shorter than its recorded size")
                length -= len(chunk)
                yield chunk

    # -- repos ---------------------------------------------------------------------------------

    def _repo_dir(self, repo: RepoRef) -> Path:
        return self.root / "repos" / f"{repo.repo_type}s" / repo.repo_id

    def _read_repo(self, repo: RepoRef) -> dict[str, Any]:
        try:
            return json.loads((self._repo_dir(repo) / "repo.json").read_bytes())
        except FileNotFoundError:
            raise StorageError(
                404, f"Repository {repo.repo_type}s/{repo.repo_id} not found", "RepoNotFound"
            ) from None

    def repo_meta(self, repo: RepoRef) -> dict[str, Any]:
        """``{"private", "gated", "granted_token_sha256", "created_at", "branches", "tags", "pulls"}``
        (404 RepoNotFound if absent)."""
        with self._lock:
            meta = self._read_repo(repo)
            meta.setdefault("gated", False)  # repos stored before gating existed are open
            meta.setdefault("granted_token_sha256", [])
            return meta

    def set_gated(self, repo: RepoRef, gated: str | bool, granted_tokens: Iterable[str]) -> None:
        """Gate ``repo`` (``gated`` ``"auto"``/``"manual"``) so only ``granted_tokens`` read its files;
        ``False`` opens it again (and drops the grants)."""
        if gated not in ("auto", "manual", False):
            raise StorageError(400, f"gated={gated!r}: expected 'auto', 'manual' or false")
        tokens = list(granted_tokens)
        if not all(isinstance(t, str) and t for t in tokens):
            raise StorageError(400, "granted tokens must be non-empty strings")
        with self._lock:
            meta = self._read_repo(repo)
            meta["gated"] = gated
            meta["granted_token_sha256"] = (
                sorted({token_digest(t) for t in tokens}) if gated else []
            )
            self._write_json(self._repo_dir(repo) / "repo.json", meta)

    def create_repo(self, repo: RepoRef, private: bool) -> None:
        """Create a repo with the Hub's initial commit (a ``.gitattributes``); 409 when it exists."""
        if repo.repo_id.endswith(".git"):
            raise StorageError(
                400, f"invalid repo id {repo.repo_id!r}: names cannot end with '.git'"
            )
        with self._lock:
            if (self._repo_dir(repo) / "repo.json").exists():
                raise StorageError(
                    409, f"You already created this {repo.repo_type} repo: {repo.repo_id}"
                )
            sha = self.put_blob_bytes(GITATTRIBUTES)
            tree = {
                ".gitattributes": Entry(
                    git_blob_sha1(GITATTRIBUTES), len(GITATTRIBUTES), sha, False
                )
            }
            commit = self._write_commit(repo, None, "initial commit", "", tree)
            meta = {
                "private": private,
                "gated": False,
                "granted_token_sha256": [],
                "created_at": commit.created_at,
                "branches": {DEFAULT_BRANCH: commit.sha},
                "tags": {},
                "pulls": {},
            }
            self._write_json(self._repo_dir(repo) / "repo.json", meta)

    def list_repos(self, repo_type: str) -> list[RepoRef]:
        """Every repo of ``repo_type`` (``model``, ``dataset``...), sorted by id."""
        base = self.root / "repos" / f"{repo_type}s"
        return [
            RepoRef(repo_type, p.parent.relative_to(base).as_posix())
            for p in sorted(base.glob("*/*/repo.json"))
        ]

    def delete_repo(self, repo: RepoRef) -> None:
        with self._lock:
            self._read_repo(repo)
            # Rename first so the repo disappears atomically; blobs stay (they may be shared).
            doomed = self._tmp / f"deleted-{os.urandom(8).hex()}"
            os.replace(self._repo_dir(repo), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            self._commits = {k: v for k, v in self._commits.items() if k[0] != repo}

    def set_ref(self, repo: RepoRef, kind: str, name: str, sha: str | None) -> None:
        """Point ``branches``/``tags``/``pulls`` ``name`` at ``sha`` (``None`` deletes it)."""
        with self._lock:
            meta = self._read_repo(repo)
            if sha is None:
                meta[kind].pop(name, None)
            else:
                meta[kind][name] = sha
            self._write_json(self._repo_dir(repo) / "repo.json", meta)

    # -- commits -------------------------------------------------------------------------------

    def _write_commit(
        self,
        repo: RepoRef,
        parent: str | None,
        summary: str,
        description: str,
        tree: dict[str, Entry],
    ) -> Commit:
        record = {
            "parent": parent,
            "summary": summary,
            "description": description,
            "created_at": (created := _now()),
            "tree": {path: tree[path].to_json() for path in sorted(tree)},
        }
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        sha = hashlib.sha1(data).hexdigest()
        self._atomic_write(self._repo_dir(repo) / "commits" / f"{sha}.json", data)
        commit = Commit(sha, parent, summary, description, created, dict(tree))
        self._commits[(repo, sha)] = commit
        return commit

    def commit(self, repo: RepoRef, sha: str) -> Commit:
        with self._lock:
            cached = self._commits.get((repo, sha))
            if cached is not None:
                return cached
            try:
                record = json.loads((self._repo_dir(repo) / "commits" / f"{sha}.json").read_bytes())
            except FileNotFoundError:
                raise StorageError(404, f"Invalid rev id: {sha}", "RevisionNotFound") from None
            tree = {
                p: Entry(e["oid"], e["size"], e["sha256"], e["lfs"], e.get("xet_hash"))
                for p, e in record["tree"].items()
            }
            commit = Commit(
                sha,
                record["parent"],
                record["summary"],
                record["description"],
                record["created_at"],
                tree,
            )
            self._commits[(repo, sha)] = commit
            return commit

    def resolve(self, repo: RepoRef, revision: str) -> Commit:
        """A branch, tag, ``refs/pr/N`` or full commit sha -> its commit (404 RevisionNotFound)."""
        with self._lock:
            meta = self._read_repo(repo)
            sha = meta["branches"].get(revision) or meta["tags"].get(revision)
            if sha is None and revision.startswith("refs/heads/"):
                sha = meta["branches"].get(revision[len("refs/heads/") :])
            if sha is None and (m := PR_REF_RE.match(revision)):
                sha = meta["pulls"].get(m.group(1))
            if sha is None and SHA1_RE.match(revision):
                if (self._repo_dir(repo) / "commits" / f"{revision}.json").exists():
                    sha = revision
            if sha is None:
                raise StorageError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return self.commit(repo, sha)

    def history(self, repo: RepoRef, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        with self._lock:
            commits = [self.resolve(repo, revision)]
            while commits[-1].parent is not None:
                commits.append(self.commit(repo, commits[-1].parent))
            return commits

    def apply_commit(
        self,
        repo: RepoRef,
        revision: str,
        *,
        summary: str,
        description: str,
        added: dict[str, Entry],
        deleted_files: Iterable[str],
        deleted_folders: Iterable[str],
        parent_commit: str | None,
        create_pr: bool,
    ) -> tuple[Commit, int | None]:
        """Commit onto branch/PR ``revision`` (or open a PR from it); returns the commit and PR number.

        Every LFS entry in ``added`` must already be stored. Pushing to a revision that is not a
        branch or an open PR is 404 RevisionNotFound; a ``parent_commit`` that is not the branch
        head is 412 (for a PR it is the PR's base).
        """
        for path, entry in added.items():
            if not self.has_blob(entry.sha256, entry.size):
                raise StorageError(
                    400,
                    f"LFS object {entry.sha256} ({entry.size} bytes) for {path!r} was never uploaded",
                )
        with self._lock:
            meta = self._read_repo(repo)
            pr_match = PR_REF_RE.match(revision)
            if revision in meta["branches"]:
                ref_kind, ref_name = "branches", revision
            elif pr_match and pr_match.group(1) in meta["pulls"] and not create_pr:
                ref_kind, ref_name = "pulls", pr_match.group(1)
            else:
                raise StorageError(
                    404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound"
                )
            head = meta[ref_kind][ref_name]
            if parent_commit is not None:
                parent_sha = self._expand_sha(repo, parent_commit)
                if not create_pr and parent_sha != head:
                    raise StorageError(
                        412, f"parent commit {parent_commit} is not the head of {revision} ({head})"
                    )
                base = parent_sha
            else:
                base = head
            tree = dict(self.commit(repo, base).tree)
            for path in deleted_files:
                if tree.pop(path, None) is None:
                    raise StorageError(
                        404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                    )
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                doomed = [p for p in tree if p.startswith(prefix)]
                if not doomed:
                    raise StorageError(
                        404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound"
                    )
                for p in doomed:
                    del tree[p]
            tree.update(added)
            commit = self._write_commit(repo, base, summary, description, tree)
            pr_num = None
            if create_pr:
                pr_num = max((int(n) for n in meta["pulls"]), default=0) + 1
                meta["pulls"][str(pr_num)] = commit.sha
            else:
                meta[ref_kind][ref_name] = commit.sha
            self._write_json(self._repo_dir(repo) / "repo.json", meta)
            return commit, pr_num

    def _expand_sha(self, repo: RepoRef, prefix: Any) -> str:
        """A full or abbreviated (>= 7 hex) commit sha -> the full sha."""
        # Checked before it becomes a glob: "*" or "../" would match files that are not its commits.
        if not isinstance(prefix, str) or not ABBREV_SHA1_RE.match(prefix.lower()):
            raise StorageError(
                400,
                f"invalid parent commit {prefix!r}: expected 7 to 40 hex digits of a commit sha",
            )
        prefix = prefix.lower()
        found = [p.stem for p in (self._repo_dir(repo) / "commits").glob(f"{prefix}*.json")]
        if len(found) != 1:
            raise StorageError(404, f"Invalid rev id: {prefix}", "RevisionNotFound")
        return found[0]

    def create_branch(self, repo: RepoRef, branch: str, starting_point: str | None) -> None:
        """Create ``branch`` at ``starting_point`` (default: head of main); 409 when it exists."""
        with self._lock:
            meta = self._read_repo(repo)
            if branch in meta["branches"]:
                raise StorageError(409, f"Reference already exists: refs/heads/{branch}")
            if PR_REF_RE.match(branch) or not branch or branch.startswith("/") or ".." in branch:
                raise StorageError(400, f"invalid branch name {branch!r}")
            sha = self.resolve(repo, starting_point or DEFAULT_BRANCH).sha
            self.set_ref(repo, "branches", branch, sha)
