"""The local Hub server's routes and repo API: repos, refs, listings, downloads, commits, access.

:data:`ROUTES` is the whole URL space (the LFS routes' handlers are in :mod:`.lfs`). Patterns
match the URL path's ``/``-separated parts, each percent-decoded, so an encoded ``%2F`` stays
inside its part (a branch ``feature/x`` sent as ``feature%2Fx``). Placeholders:

- ``{repo}``: ``datasets/ns/name`` (a dataset) or ``ns/name`` (a model), the web and resolve
  URLs' form; ``{repo.git}`` the same with ``.git`` after the name;
- ``{api_repo}``: ``models/ns/name`` or ``datasets/ns/name``, the ``/api/`` form;
- ``{revision*}``: every remaining part, rejoined with ``/`` (may be empty: the handler's default);
- ``{revision_path*}``: a revision (one part, or an unencoded ``refs/pr/N`` and the like), then
  a file or folder path;
- ``{name}``: one part.

A path that some route matches with another method is answered 405 (with ``Allow``), any other 404.

Access, as on the Hub: writes (create, delete, preupload, LFS batch and verify, commit, branch,
tag) need an ``Authorization`` header; any value is accepted and it is never logged. A private
repo answers 401 ``RepoNotFound`` to requests without one, like the Hub does for anonymous
callers. Gated repos (``LocalHub.set_gated``) keep their info public (with ``"gated":
"auto"|"manual"``), but file downloads (``resolve``, ranged or not) and the ``tree`` /
``paths-info`` listings need ``Authorization: Bearer <token>`` with a granted token. Without
one the answer is 401, with another one 403, both with ``X-Error-Code: GatedRepo`` and the Hub's
"Access to model ns/name is restricted..." message, which the client raises as
``GatedRepoError``. Only sha256 digests of granted tokens are stored (in ``repo.json``),
compared and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from . import cdn, lfs, xet
from .http import CHUNK, FramedHandler, HTTPFailure, bool_param
from .storage import (
    DEFAULT_BRANCH,
    SHA256_RE,
    Commit,
    Entry,
    RepoRef,
    Storage,
    StorageError,
    git_blob_sha1,
    is_lfs_upload,
    lfs_pointer,
    token_digest,
)

if TYPE_CHECKING:
    from .server import LocalHub, _StatsRecorder

LOCAL_USER = "local-user"
# What a refused write says: users meet it when HF_TOKEN is unset (or empty), and any value will do.
WRITE_NEEDS_TOKEN = (
    "Authentication required to write to the bundled local Hub server: it accepts any non-empty"
    " token, so set HF_TOKEN to any non-empty value (or pass token=...)"
)


# -- routing ---------------------------------------------------------------------------------------


def _split_revision(segments: list[str]) -> tuple[str, str]:
    """``(revision, path)`` from decoded path parts, accepting an unencoded ``refs/pr/N``."""
    if not segments or not segments[0]:
        raise HTTPFailure(400, "missing revision in URL")
    if (
        len(segments) >= 3
        and segments[0] == "refs"
        and segments[1] in ("pr", "heads", "tags", "convert")
    ):
        return "/".join(segments[:3]), "/".join(segments[3:])
    return segments[0], "/".join(segments[1:])


def _match_repo(segments: list[str], git: bool) -> tuple[dict[str, Any], int] | None:
    """``[datasets/]ns/name[.git]`` at the start of ``segments`` -> ``({"repo": (type, id)}, parts used)``."""
    if segments[:1] == ["datasets"] and len(segments) >= 3:
        repo_type, ns_at = "dataset", 1
    elif len(segments) >= 2:
        repo_type, ns_at = "model", 0
    else:
        return None
    ns, name = segments[ns_at], segments[ns_at + 1]
    if git:
        if not name.endswith(".git"):
            return None
        name = name[: -len(".git")]
    return {"repo": (repo_type, f"{ns}/{name}")}, ns_at + 2


def _match_api_repo(segments: list[str]) -> tuple[dict[str, Any], int] | None:
    """``models|datasets/ns/name`` (any type is matched; ``RepoRef`` refuses the unknown ones)."""
    if len(segments) < 3:
        return None
    return {"repo": (segments[0].removesuffix("s"), f"{segments[1]}/{segments[2]}")}, 3


_PLACEHOLDERS: dict[str, Callable[[list[str]], tuple[dict[str, Any], int] | None]] = {
    "{repo}": lambda s: _match_repo(s, git=False),
    "{repo.git}": lambda s: _match_repo(s, git=True),
    "{api_repo}": _match_api_repo,
    "{revision*}": lambda s: ({"revision": "/".join(s)}, len(s)),
    "{revision_path*}": lambda s: ({"revision_path": s}, len(s)),
}


@dataclass(frozen=True)
class Route:
    """``methods`` + ``pattern`` -> ``handler(request, **placeholders)``; ``admin`` routes are never faulted."""

    methods: tuple[str, ...]
    pattern: str
    handler: Callable[..., None]
    admin: bool = False

    def match(self, segments: list[str]) -> dict[str, Any] | None:
        """The placeholders' raw values if ``segments`` fit the pattern, else ``None``."""
        params: dict[str, Any] = {}
        rest = segments
        for part in self.pattern.split("/"):
            if part in _PLACEHOLDERS:
                found = _PLACEHOLDERS[part](rest)
                if found is None:
                    return None
                params.update(found[0])
                rest = rest[found[1] :]
            elif part.startswith("{"):  # one part, by name
                if not rest:
                    return None
                params[part.strip("{}")] = rest[0]
                rest = rest[1:]
            elif rest[:1] != [part]:
                return None
            else:
                rest = rest[1:]
        return params if not rest else None


def _handler_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """Raw placeholder values -> the handler's arguments (``RepoRef`` validates the names)."""
    args = dict(params)
    if "repo" in args:
        args["repo"] = RepoRef(*args["repo"])
    if "revision_path" in args:
        args["revision"], args["path"] = _split_revision(args.pop("revision_path"))
    return args


def find_route(
    routes: Iterable[Route], method: str, segments: list[str]
) -> tuple[Route, dict[str, Any]]:
    """The first route for ``method`` whose pattern fits, with its handler's arguments; else 405 or 404."""
    allowed: list[str] = []
    for route in routes:
        params = route.match(segments)
        if params is None:
            continue
        if method in route.methods:
            return route, _handler_arguments(params)
        allowed += route.methods
    path = "/" + "/".join(segments)
    if allowed:
        raise HTTPFailure(
            405, f"{method} not allowed on {path}", None, {"Allow": ", ".join(sorted(set(allowed)))}
        )
    raise HTTPFailure(404, f"no route for {method} {path}")


# -- the request handler ---------------------------------------------------------------------------


class HubHandler(FramedHandler):
    """A request to the local Hub: faults and stats, routing, and the access checks handlers share."""

    server_version = "vindex-hub-local-hub/1"

    @property
    def hub(self) -> LocalHub:
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]  # server.py's server has it
        return hub

    @property
    def storage(self) -> Storage:
        return self.hub.storage

    @property
    def stats(self) -> _StatsRecorder:
        return self.hub._stats

    def respond(self) -> None:
        if self.decoded_path not in ADMIN_PATHS:
            self.fault = self.hub._faults.take(
                self.command, self.decoded_path, "Range" in self.headers
            )
            self.stats.add(requests=1)
        self.body_counters.append(lambda n: self.stats.add(bytes_received=n))
        self.apply_fault_at_start()
        try:
            route, args = find_route(ROUTES, self.command, self.segments)
            route.handler(self, **args)
        except StorageError as e:
            raise HTTPFailure(e.status, str(e), e.error_code) from None

    def web_url(self, repo: RepoRef) -> str:
        return f"{self.base_url()}/{repo.url_prefix}{repo.repo_id}"

    # -- access --

    def require_auth(self) -> None:
        if not self.headers.get("Authorization"):
            raise HTTPFailure(401, WRITE_NEEDS_TOKEN)

    def check_read(self, repo: RepoRef) -> dict[str, Any]:
        meta = self.storage.repo_meta(repo)
        if meta["private"] and not self.headers.get("Authorization"):
            raise HTTPFailure(401, f"Repository {repo.repo_id} is private", "RepoNotFound")
        return meta

    def _bearer_token(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def check_files(self, repo: RepoRef) -> dict[str, Any]:
        """``check_read`` plus the gate: a gated repo's files need a granted token, as on the Hub."""
        meta = self.check_read(repo)
        if not meta["gated"]:
            return meta
        what = f"{repo.repo_type} {repo.repo_id}"
        token = self._bearer_token()
        if token is None:
            raise HTTPFailure(
                401,
                f"Access to {what} is restricted. You must have access to it and be authenticated to access it."
                " Please log in.",
                "GatedRepo",
            )
        digest = token_digest(token)
        if not any(
            hmac.compare_digest(digest, granted) for granted in meta["granted_token_sha256"]
        ):
            raise HTTPFailure(
                403,
                f"Access to {what} is restricted and you are not in the authorized list. Visit"
                f" {self.web_url(repo)} to ask for access.",
                "GatedRepo",
            )
        return meta

    def check_write(self, repo: RepoRef) -> dict[str, Any]:
        self.require_auth()
        return self.storage.repo_meta(repo)


# -- admin -----------------------------------------------------------------------------------------


def admin_stats(req: HubHandler) -> None:
    req.send_json(req.hub.stats().to_json())


def admin_add_fault(req: HubHandler) -> None:
    spec = req.read_json()
    if not isinstance(spec, dict):
        raise HTTPFailure(400, "bad fault spec: expected a JSON object")
    try:
        fault = req.hub.inject_fault(**spec)
    except (TypeError, ValueError) as e:
        raise HTTPFailure(400, f"bad fault spec: {e}") from None
    req.send_json(fault.to_json())


def admin_list_faults(req: HubHandler) -> None:
    req.send_json([f.to_json() for f in req.hub.active_faults()])


def admin_clear_faults(req: HubHandler) -> None:
    req.hub.clear_faults()
    req.send_json({})


def admin_gated(req: HubHandler) -> None:
    spec = req.read_json()
    tokens = spec.get("granted_tokens", [])
    if not isinstance(spec.get("repo_id"), str) or not isinstance(tokens, list):
        raise HTTPFailure(400, "gated needs 'repo_id' (ns/name) and a list 'granted_tokens'")
    req.hub.set_gated(
        spec["repo_id"],
        repo_type=spec.get("repo_type", "model"),
        granted_tokens=tokens,
        gated=spec.get("gated", "auto"),
    )
    req.send_json({})


def admin_reset(req: HubHandler) -> None:
    req.read_body()
    req.hub.clear_faults()
    req.hub.reset_stats()
    req.send_json({})


# -- account and repos -----------------------------------------------------------------------------


def whoami(req: HubHandler) -> None:
    req.require_auth()
    req.send_json(
        {
            "type": "user",
            "name": LOCAL_USER,
            "fullname": "Local Hub user",
            "orgs": [],
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "local", "role": "write"},
            },
        }
    )


def validate_yaml(req: HubHandler) -> None:
    req.read_body()
    req.send_json({"errors": [], "warnings": []})


def create_repo(req: HubHandler) -> None:
    req.require_auth()
    body = req.read_json()
    name, org = body.get("name"), body.get("organization")
    repo_type = body.get("type") or "model"
    if not isinstance(name, str) or not org:
        raise HTTPFailure(
            400, "create needs 'name' and 'organization' (repo ids are 'namespace/name')"
        )
    private = body.get("visibility") == "private" or bool(body.get("private"))
    repo = RepoRef(repo_type, f"{org}/{name}")
    url = req.web_url(repo)
    try:
        req.storage.create_repo(repo, private)
    except StorageError as e:
        if e.status == 409:
            raise HTTPFailure(409, str(e), body={"url": url}) from None  # exist_ok reads the url
        raise
    req.send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})


def delete_repo(req: HubHandler) -> None:
    req.require_auth()
    body = req.read_json()
    repo = RepoRef(body.get("type") or "model", f"{body.get('organization')}/{body.get('name')}")
    req.storage.delete_repo(repo)
    req.send_json({})


def repo_info(req: HubHandler, repo: RepoRef, revision: str = "") -> None:
    meta = req.check_read(repo)
    commit = req.storage.resolve(repo, revision or DEFAULT_BRANCH)
    blobs = bool_param(req.query.get("blobs"))
    siblings = []
    for path in sorted(commit.tree):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            e = commit.tree[path]
            sibling.update(size=e.size, blobId=e.oid)
            if e.lfs:
                sibling["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "sha": commit.sha,
        "lastModified": commit.created_at,
        "createdAt": meta["created_at"],
        "private": meta["private"],
        "gated": meta["gated"],
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if repo.repo_type == "model":
        info["modelId"] = repo.repo_id
    req.send_json(info)


def _card_data(req: HubHandler, commit: Commit) -> dict[str, Any]:
    """The YAML front matter of a commit's README.md (what the Hub returns as ``cardData``)."""
    import yaml

    entry = commit.tree.get("README.md")
    if entry is None:
        return {}
    with req.storage.open_blob(entry.sha256) as f:
        text = f.read().decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def list_datasets(req: HubHandler) -> None:
    """``GET /api/datasets``: the Hub's listing, with its ``author``, ``filter`` (tags, all must
    match), ``search`` (a substring of the id) and ``limit`` parameters; ``cardData`` and ``tags``
    (the card's tags) and ``usedStorage`` in each item. Private repos are listed to no one."""
    q = req.query
    authors = q.get("author")
    author = authors[-1] if authors else None
    wanted = set(q.get("filter") or [])
    search = [s.lower() for s in q.get("search") or []]
    try:
        limit = int((q.get("limit") or ["1000"])[-1])
    except ValueError:
        raise HTTPFailure(400, "limit must be an integer") from None
    out = []
    for repo in req.storage.list_repos("dataset"):
        meta = req.storage.repo_meta(repo)
        if meta["private"] or (author and repo.repo_id.split("/")[0] != author):
            continue
        if search and not all(s in repo.repo_id.lower() for s in search):
            continue
        commit = req.storage.resolve(repo, DEFAULT_BRANCH)
        card = _card_data(req, commit)
        tags = [str(t) for t in card.get("tags") or [] if isinstance(t, (str, int))]
        if not wanted <= set(tags):
            continue
        out.append(
            {
                "_id": hashlib.sha1(f"dataset/{repo.repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.created_at,
                "createdAt": meta["created_at"],
                "private": False,
                "gated": meta["gated"],
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": tags,
                "cardData": card,
                "usedStorage": sum(e.size for e in commit.tree.values()),
            }
        )
        if len(out) >= limit:
            break
    req.send_json(out)


# -- refs and history ------------------------------------------------------------------------------


def refs(req: HubHandler, repo: RepoRef) -> None:
    meta = req.check_read(repo)

    def listed(kind: str, prefix: str) -> list[dict[str, str]]:
        return [
            {
                "name": n if kind != "pulls" else f"refs/pr/{n}",
                "ref": f"{prefix}{n}",
                "targetCommit": sha,
            }
            for n, sha in sorted(meta[kind].items())
        ]

    out = {
        "branches": listed("branches", "refs/heads/"),
        "tags": listed("tags", "refs/tags/"),
        "converts": [],
    }
    if bool_param(req.query.get("include_prs")):
        out["pullRequests"] = listed("pulls", "refs/pr/")
    req.send_json(out)


def _commit_json(c: Commit) -> dict[str, Any]:
    message = f"{c.summary}\n\n{c.description}" if c.description else c.summary
    return {
        "id": c.sha,
        "title": c.summary,
        "message": message,
        "authors": [{"user": LOCAL_USER}],
        "date": c.created_at,
    }


def commits(req: HubHandler, repo: RepoRef, revision: str) -> None:
    req.check_read(repo)
    req.send_json([_commit_json(c) for c in req.storage.history(repo, revision or DEFAULT_BRANCH)])


def branch(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """POST creates branch ``revision`` (body ``{"startingPoint"?}``), DELETE deletes it."""
    req.check_write(repo)
    if req.command == "DELETE":
        req.read_body()
        if revision == DEFAULT_BRANCH:
            raise HTTPFailure(403, f"cannot delete branch {revision!r}")
        if revision not in req.storage.repo_meta(repo)["branches"]:
            raise HTTPFailure(404, f"cannot delete branch {revision!r}", "RevisionNotFound")
        req.storage.set_ref(repo, "branches", revision, None)
    else:
        body = req.read_json()
        req.storage.create_branch(repo, revision, body.get("startingPoint"))
    req.send_json({})


def tag(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """Tags ``revision`` (default ``main``) with the body's ``{"tag"}``."""
    meta = req.check_write(repo)
    body = req.read_json()
    name = body.get("tag")
    if not isinstance(name, str) or not name:
        raise HTTPFailure(400, "tag needs a 'tag' name")
    if name in meta["tags"]:
        raise HTTPFailure(409, f"Tag {name} already exists")
    sha = req.storage.resolve(repo, revision or DEFAULT_BRANCH).sha
    req.storage.set_ref(repo, "tags", name, sha)
    req.send_json({})


# -- listings --------------------------------------------------------------------------------------


def _directories(tree: dict[str, Entry]) -> dict[str, str]:
    """Every folder of a tree -> a stable id (sha1 of its sorted contents' oids)."""
    contents: dict[str, list[str]] = {}
    for path in sorted(tree):
        parts = path.split("/")
        for i in range(1, len(parts)):
            contents.setdefault("/".join(parts[:i]), []).append(f"{path} {tree[path].oid}")
    return {d: hashlib.sha1("\n".join(items).encode()).hexdigest() for d, items in contents.items()}


def _last_commit(history: list[Commit], path: str, oid: str) -> dict[str, str]:
    """The commit that last changed ``path``: the oldest of the newest-first ``history`` run with this ``oid``."""
    last = history[0]
    for older in history[1:]:
        older_oid: str | None
        if path in older.tree:
            older_oid = older.tree[path].oid
        else:
            older_oid = _directories(older.tree).get(path)
        if older_oid != oid:
            break
        last = older
    return {"id": last.sha, "title": last.summary, "date": last.created_at}


def _entries(
    req: HubHandler, repo: RepoRef, commit: Commit, paths: Iterable[str], expand: bool
) -> list[dict]:
    tree = commit.tree
    dirs = _directories(tree)
    history = req.storage.history(repo, commit.sha) if expand else []
    out = []
    for path in paths:
        if path in tree:
            e = tree[path]
            item: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            if e.xet_hash is not None and req.hub.transfer == "xet":
                item["xetHash"] = e.xet_hash
        else:
            item = {"type": "directory", "oid": dirs[path], "size": 0, "path": path}
        if expand:
            item["lastCommit"] = _last_commit(history, path, item["oid"])
        out.append(item)
    return out


def tree(req: HubHandler, repo: RepoRef, revision: str, path: str) -> None:
    """``?recursive=&expand=``: the folder's entries (all below it when recursive)."""
    req.check_files(repo)
    commit = req.storage.resolve(repo, revision)
    path = path.strip("/")
    dirs = _directories(commit.tree)
    if path and path not in dirs:
        raise HTTPFailure(
            404,
            f"{path!r} is not a folder at {revision}",
            "EntryNotFound",
            {"X-Repo-Commit": commit.sha},
        )
    prefix = f"{path}/" if path else ""
    recursive = bool_param(req.query.get("recursive"))
    children = [
        p
        for p in [*dirs, *commit.tree]
        if p and p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
    ]
    # The Hub lists each folder's subfolders before its files; any stable order works for clients.
    children.sort(key=lambda p: (p in commit.tree, p))
    req.send_json(_entries(req, repo, commit, children, bool_param(req.query.get("expand"))))


def paths_info(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """Form body ``paths=..&paths=..&expand=..``: the entries of those that exist."""
    req.check_files(repo)
    form = parse_qs(req.read_body().decode(), keep_blank_values=True)
    commit = req.storage.resolve(repo, revision)
    dirs = _directories(commit.tree)
    wanted = []
    for p in form.get("paths", []):
        p = p.strip("/")
        if p and (p in commit.tree or p in dirs) and p not in wanted:
            wanted.append(p)
    req.send_json(_entries(req, repo, commit, wanted, bool_param(form.get("expand"))))


# -- downloads -------------------------------------------------------------------------------------


def resolve(req: HubHandler, repo: RepoRef, revision: str, path: str) -> None:
    """A file's bytes (HEAD: its metadata headers); one ``Range`` -> 206. Counted per file.

    An LFS or Xet file answers, like the Hub, 302 to its signed URL on the CDN leg (see
    :mod:`.cdn`) with its metadata headers (``X-Linked-Etag``/``X-Linked-Size``, and for a file
    that arrived through Xet on a Xet server ``X-Xet-Hash`` and the ``xet-auth`` link that sends
    hf_xet clients to the CAS); a regular file's bytes come straight from here.
    """
    req.check_files(repo)
    commit = req.storage.resolve(repo, revision)
    entry = commit.tree.get(path)
    if entry is None:
        raise HTTPFailure(
            404,
            f"Entry not found: {path!r} at {revision}",
            "EntryNotFound",
            {"X-Repo-Commit": commit.sha},
        )
    key = (repo.repo_type, repo.repo_id, path)
    req.stats.add(
        key, totals=False, **{"head_requests" if req.command == "HEAD" else "requests": 1}
    )
    etag = f'"{entry.sha256}"' if entry.lfs else f'"{entry.oid}"'
    headers = {
        "X-Repo-Commit": commit.sha,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if entry.lfs:
        headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(entry.size)})
        if entry.xet_hash is not None and req.hub.transfer == "xet":
            token_url = (
                f"{req.base_url()}/api/{repo.repo_type}s/{repo.repo_id}/xet-read-token/{commit.sha}"
            )
            headers.update({"X-Xet-Hash": entry.xet_hash, "Link": f'<{token_url}>; rel="xet-auth"'})
        fault = req.fault
        if fault is not None and fault.kind in ("drop", "slow"):
            # It acts on a body: the CDN leg's, which matches the same path.
            req.hub._faults.give_back(fault)
            req.fault = None
        headers["Location"] = cdn.location(req.hub, repo, revision, path, entry.sha256)
        req.send_bytes(302, b"", headers)
        return
    req.send_file(
        path,
        entry.size,
        headers,
        lambda start, length: req.storage.iter_blob(entry.sha256, start, length, CHUNK),
        lambda n: req.stats.add(key, bytes_sent=n),
    )


# -- uploads ---------------------------------------------------------------------------------------


def preupload(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """``{"files": [{"path", "sample", "size"}]}`` -> each file's upload mode and current oid."""
    req.check_write(repo)
    body = req.read_json()
    current_tree = req.storage.resolve(repo, revision).tree
    files = []
    for f in body.get("files", []):
        path, size = f["path"], int(f["size"])
        is_lfs = is_lfs_upload(path, size, base64.b64decode(f.get("sample", "")))
        item: dict[str, Any] = {
            "path": path,
            "uploadMode": "lfs" if is_lfs else "regular",
            "shouldIgnore": False,
        }
        current = current_tree.get(path)
        if current is not None and current.lfs == is_lfs:
            # The oid the client compares with its own to skip unchanged files.
            item["oid"] = current.sha256 if is_lfs else current.oid
        files.append(item)
    req.send_json({"files": files, "commitOid": None})


def _clean_path(path: Any, *, folder: bool = False) -> str:
    """A client's repo path, checked: relative, ``/``-separated, no ``.``/``..``/empty parts.

    Clients write these paths under their snapshot folders, so anything that could land outside
    one is refused: absolute paths, backslashes (a separator on Windows), control characters.
    A folder may end with ``/`` (the client sends ``deletedFolder`` paths that way).
    """
    if folder and isinstance(path, str):
        path = path.removesuffix("/")
    if (
        not isinstance(path, str)
        or "\\" in path
        or any(ord(c) < 0x20 or c == "\x7f" for c in path)
        or any(p in ("", ".", "..") for p in path.split("/"))  # also "" and "/absolute"
    ):
        raise HTTPFailure(
            400, f"invalid path in repo: {path!r} (relative, '/'-separated, no '.' or '..' parts)"
        )
    return path


@dataclass
class _CommitPayload:
    """A commit request's NDJSON lines, checked; inline files are already stored as blobs."""

    header: dict[str, Any] | None = None
    added: dict[str, Entry] = field(default_factory=dict)
    deleted_files: list[str] = field(default_factory=list)
    deleted_folders: list[str] = field(default_factory=list)
    inline_bytes: dict[str, int] = field(
        default_factory=dict
    )  # path -> bytes of an inline ("file") upload
    lfs_paths: list[tuple[str, str]] = field(default_factory=list)  # (oid, path) of each "lfsFile"

    def add_inline(self, storage: Storage, value: dict[str, Any]) -> None:
        path = _clean_path(value.get("path"))
        if value.get("encoding", "base64") != "base64":
            raise HTTPFailure(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
        try:
            data = base64.b64decode(value.get("content", ""), validate=True)
        except (TypeError, ValueError):
            raise HTTPFailure(400, f"content of {path!r} is not valid base64") from None
        sha = storage.put_blob_bytes(data)
        self.added[path] = Entry(git_blob_sha1(data), len(data), sha, False)
        self.inline_bytes[path] = len(data)

    def add_lfs(self, storage: Storage, value: dict[str, Any]) -> None:
        path, oid = _clean_path(value.get("path")), value.get("oid")
        if value.get("algo", "sha256") != "sha256":
            raise HTTPFailure(400, f"unsupported LFS hash {value.get('algo')!r} for {path}")
        if not isinstance(oid, str) or not SHA256_RE.match(oid):
            raise HTTPFailure(400, f"LFS oid {oid!r} for {path!r} is not 64 lowercase hex digits")
        size = value.get("size")
        if size is None:  # a copy of an existing LFS file: the size is the stored blob's
            try:
                size = storage.blob_path(oid).stat().st_size
            except FileNotFoundError:
                raise HTTPFailure(
                    400, f"LFS object {oid} for {path!r} was never uploaded"
                ) from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HTTPFailure(400, f"LFS size {size!r} for {path!r} is not a non-negative integer")
        self.added[path] = Entry(git_blob_sha1(lfs_pointer(oid, size)), size, oid, True)
        self.lfs_paths.append((oid, path))

    @classmethod
    def parse(cls, storage: Storage, body: bytes) -> _CommitPayload:
        payload = cls()
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HTTPFailure(
                    400, "commit payload lines must be JSON objects with 'key' and 'value'"
                ) from None
            if not isinstance(value, dict):
                raise HTTPFailure(
                    400, f"commit payload line {key!r}: 'value' must be a JSON object"
                )
            if key == "header":
                payload.header = value
            elif key == "file":
                payload.add_inline(storage, value)
            elif key == "lfsFile":
                payload.add_lfs(storage, value)
            elif key == "deletedFile":
                payload.deleted_files.append(_clean_path(value.get("path")))
            elif key == "deletedFolder":
                payload.deleted_folders.append(_clean_path(value.get("path"), folder=True))
            else:
                raise HTTPFailure(400, f"unknown commit operation {key!r}")
        if payload.header is None:
            raise HTTPFailure(400, "commit payload has no header line")
        return payload


def _xet_uploads(req: HubHandler, repo: RepoRef, payload: _CommitPayload) -> dict[str, xet.XetFile]:
    """The payload's LFS files that arrived through Xet: their blobs rebuilt from the CAS, their
    entries given their Xet hash. Path -> Xet file."""
    if req.hub.transfer != "xet" or not payload.lfs_paths:
        return {}
    req.stats.xet_uploaded(req.hub.xet_store.scan())
    found = {}
    for oid, path in payload.lfs_paths:
        entry = payload.added[path]
        f = xet.materialize(req, oid, entry.size, path)
        if f is not None:
            payload.added[path] = Entry(entry.oid, entry.size, entry.sha256, True, f.xet_hash)
            found[path] = f
    return found


def commit(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """NDJSON body (``header``, ``file``, ``lfsFile``, ``deletedFile``, ``deletedFolder``); ``?create_pr=1``."""
    req.check_write(repo)
    payload = _CommitPayload.parse(req.storage, req.read_body())
    header = payload.header or {}
    xet_files = _xet_uploads(req, repo, payload)
    made, pr_num = req.storage.apply_commit(
        repo,
        revision,
        summary=str(header.get("summary") or ""),
        description=str(header.get("description") or ""),
        added=payload.added,
        deleted_files=payload.deleted_files,
        deleted_folders=payload.deleted_folders,
        parent_commit=header.get("parentCommit"),
        create_pr=bool_param(req.query.get("create_pr")),
    )
    for path, n in payload.inline_bytes.items():
        req.stats.add((repo.repo_type, repo.repo_id, path), totals=False, bytes_received=n)
    for oid, path in payload.lfs_paths:
        req.stats.lfs_committed(repo, oid, path)
    for path, f in xet_files.items():
        req.stats.xet_committed(repo, f, path, req.hub.xet_store)
    web = req.web_url(repo)
    out: dict[str, Any] = {
        "success": True,
        "commitOid": made.sha,
        "commitUrl": f"{web}/commit/{made.sha}",
    }
    if pr_num is not None:
        out["pullRequestUrl"] = f"{web}/discussions/{pr_num}"
    req.send_json(out)


# -- the table -------------------------------------------------------------------------------------

ROUTES: tuple[Route, ...] = (
    Route(("GET",), "_local_hub/stats", admin_stats, admin=True),
    Route(("GET",), "_local_hub/faults", admin_list_faults, admin=True),
    Route(
        ("POST",), "_local_hub/faults", admin_add_fault, admin=True
    ),  # JSON: inject_fault's arguments
    Route(("DELETE",), "_local_hub/faults", admin_clear_faults, admin=True),
    Route(("POST",), "_local_hub/reset", admin_reset, admin=True),  # stats and faults
    # {"repo_id", "repo_type"?, "gated"?, "granted_tokens"?}
    Route(("POST",), "_local_hub/gated", admin_gated, admin=True),
    Route(
        ("POST",), "api/repos/create", create_repo
    ),  # {"name","organization","type","private"|"visibility"}
    Route(("DELETE",), "api/repos/delete", delete_repo),  # {"name","organization","type"}
    Route(("POST",), "api/validate-yaml", validate_yaml),  # always valid
    Route(("GET",), "api/whoami-v2", whoami),
    Route(("GET",), "api/datasets", list_datasets),  # ?author=&filter=&search=&limit=
    Route(("GET",), "api/{api_repo}", repo_info),  # ?blobs=1: sizes and LFS in siblings
    Route(("GET",), "api/{api_repo}/revision/{revision*}", repo_info),
    Route(("GET",), "api/{api_repo}/tree/{revision_path*}", tree),
    Route(("GET",), "api/{api_repo}/refs", refs),  # ?include_prs=1
    Route(("GET",), "api/{api_repo}/commits/{revision*}", commits),
    Route(("GET",), "api/{api_repo}/xet-write-token/{revision*}", xet.write_token),
    Route(("GET",), "api/{api_repo}/xet-read-token/{revision*}", xet.read_token),
    Route(("POST",), "api/{api_repo}/paths-info/{revision*}", paths_info),
    Route(("POST",), "api/{api_repo}/preupload/{revision*}", preupload),
    Route(("POST",), "api/{api_repo}/commit/{revision*}", commit),
    Route(("POST", "DELETE"), "api/{api_repo}/branch/{revision*}", branch),
    Route(("POST",), "api/{api_repo}/tag/{revision*}", tag),
    Route(("POST",), "{repo.git}/info/lfs/objects/batch", lfs.batch),
    Route(("PUT",), "_local_hub/lfs/{api_repo}/{oid}", lfs.put),
    Route(("POST",), "_local_hub/lfs-verify/{api_repo}/{oid}", lfs.verify),
    Route(("GET", "HEAD"), "{repo}/resolve/{revision_path*}", resolve),
)
ADMIN_PATHS = frozenset(
    "/" + r.pattern for r in ROUTES if r.admin
)  # requests here are never faulted or counted
