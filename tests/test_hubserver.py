"""The local Hub server against the real, unmodified huggingface_hub and datasets clients."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session

from vindex_hub.hubserver import LocalHub
from vindex_hub.hubserver import lfs as hub_lfs
from vindex_hub.hubserver.http import Unsatisfiable, parse_range
from vindex_hub.hubserver.storage import (
    RepoRef,
    Storage,
    StorageError,
    git_blob_sha1,
    is_lfs_upload,
)

README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.parquet
---
# A tiny dataset
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A dataset folder: a parquet and a .bin (LFS), a README with configs YAML (regular)."""
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    table = pa.table({"layer": list(range(50)), "name": [f"row-{i}" for i in range(50)]})
    pq.write_table(table, src / "data" / "train.parquet")
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "README.md").write_text(README)
    return src


@pytest.fixture
def pushed(local_hub: LocalHub, hub_repo_id: str, folder: Path) -> tuple[str, str, Path]:
    """``folder`` uploaded to a new dataset repo: ``(repo_id, commit sha, folder)``."""
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    info = api.upload_folder(folder_path=folder, repo_id=hub_repo_id, repo_type="dataset")
    local_hub.reset_stats()
    return hub_repo_id, info.oid, folder


@pytest.mark.slow
def test_create_repo_new_existing_and_conflict(local_hub: LocalHub, hub_repo_id: str) -> None:
    api = HfApi()
    url = api.create_repo(hub_repo_id, repo_type="dataset")
    assert url == f"{local_hub.url}/datasets/{hub_repo_id}"
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(hub_repo_id, repo_type="dataset")
    assert e.value.response.status_code == 409
    assert e.value.response.json()["url"] == url
    assert api.create_repo(hub_repo_id, repo_type="dataset", exist_ok=True) == url
    info = api.repo_info(hub_repo_id, repo_type="dataset")
    assert len(info.sha) == 40 and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit

    model_url = api.create_repo(hub_repo_id)  # same name, other repo type: a different repo
    assert model_url == f"{local_hub.url}/{hub_repo_id}"
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=hub_repo_id)
    assert "config.json" in api.list_repo_files(hub_repo_id)
    assert Path(hf_hub_download(hub_repo_id, "config.json")).read_bytes() == b"{}"
    assert "config.json" not in api.list_repo_files(hub_repo_id, repo_type="dataset")
    assert api.repo_exists(hub_repo_id) and api.repo_exists(hub_repo_id, repo_type="dataset")
    assert not api.repo_exists(hub_repo_id + "-missing", repo_type="dataset")
    api.delete_repo(hub_repo_id)
    assert not api.repo_exists(hub_repo_id) and api.repo_exists(hub_repo_id, repo_type="dataset")


@pytest.mark.slow
def test_upload_folder_lfs_and_regular(
    lfs_transfer: LocalHub, local_hub: LocalHub, hub_repo_id: str, folder: Path
) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    info = api.upload_folder(folder_path=folder, repo_id=hub_repo_id, repo_type="dataset")
    assert len(info.oid) == 40 and "/commit/" in info.commit_url

    entries = {
        e.path: e for e in api.list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True)
    }
    assert set(entries) == {
        ".gitattributes",
        "README.md",
        "data",
        "data/train.parquet",
        "weights.bin",
    }
    for path in ("data/train.parquet", "weights.bin"):
        data = (folder / path).read_bytes()
        assert entries[path].lfs is not None, path
        assert entries[path].lfs.sha256 == _sha256(data) and entries[path].size == len(data)
        assert entries[path].xet_hash is None
    readme = (folder / "README.md").read_bytes()
    assert entries["README.md"].lfs is None and entries["README.md"].blob_id == git_blob_sha1(
        readme
    )
    assert type(entries["data"]).__name__ == "RepoFolder"

    stats = local_hub.stats()
    lfs_sizes = sum((folder / p).stat().st_size for p in ("data/train.parquet", "weights.bin"))
    assert stats.lfs_bytes_received == lfs_sizes
    assert stats.file(hub_repo_id, "weights.bin").bytes_received == 300_000
    assert stats.file(hub_repo_id, "README.md").bytes_received == len(readme)

    raw = get_session().get(f"{local_hub.url}/api/datasets/{hub_repo_id}/tree/main?recursive=true")
    assert "xetHash" not in raw.text and raw.headers["Content-Length"] == str(len(raw.content))


@pytest.mark.slow
def test_second_upload_of_unchanged_files_sends_no_lfs_bytes(
    lfs_transfer: LocalHub, local_hub: LocalHub, pushed
) -> None:
    repo_id, sha, folder = pushed
    api = HfApi()
    again = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")
    assert again.oid == sha  # nothing changed: no new commit
    stats = local_hub.stats()
    assert stats.lfs_bytes_received == 0
    assert not any(f.bytes_received for f in stats.files.values())

    (folder / "weights.bin").write_bytes(os.urandom(1000))
    local_hub.reset_stats()
    third = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")
    assert third.oid != sha
    assert local_hub.stats().lfs_bytes_received == 1000  # only the changed file


@pytest.mark.slow
def test_create_pr_leaves_main_unchanged(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, _ = pushed
    api = HfApi()
    op = CommitOperationAdd(path_in_repo="extra.txt", path_or_fileobj=b"proposed\n")
    pr = api.create_commit(
        repo_id, [op], commit_message="propose", repo_type="dataset", create_pr=True
    )
    assert pr.pr_url.endswith("/discussions/1") and pr.pr_revision == "refs/pr/1"
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha
    assert api.repo_info(repo_id, repo_type="dataset", revision="refs/pr/1").sha == pr.oid
    path = hf_hub_download(repo_id, "extra.txt", repo_type="dataset", revision="refs/pr/1")
    assert Path(path).read_bytes() == b"proposed\n"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "extra.txt", repo_type="dataset", revision="main")
    op2 = CommitOperationAdd(path_in_repo="other.txt", path_or_fileobj=b"2\n")
    pr2 = api.create_commit(
        repo_id, [op2], commit_message="second", repo_type="dataset", create_pr=True
    )
    assert pr2.pr_revision == "refs/pr/2"
    refs = api.list_repo_refs(repo_id, repo_type="dataset", include_pull_requests=True)
    assert {r.ref: r.target_commit for r in refs.pull_requests} == {
        "refs/pr/1": pr.oid,
        "refs/pr/2": pr2.oid,
    }
    assert [b.target_commit for b in refs.branches] == [sha]


def test_hf_hub_download_by_branch_and_sha(pushed) -> None:
    repo_id, sha, folder = pushed
    expected = (folder / "weights.bin").read_bytes()
    by_branch = hf_hub_download(repo_id, "weights.bin", repo_type="dataset")
    by_sha = hf_hub_download(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    assert Path(by_branch).read_bytes() == expected == Path(by_sha).read_bytes()
    assert f"/snapshots/{sha}/" in by_branch
    # The cache names the blob by its Xet hash when hf_xet fetched it, else by its etag (the
    # sha256 for LFS files).
    (entry,) = HfApi().get_paths_info(repo_id, ["weights.bin"], repo_type="dataset")
    assert entry.xet_hash is not None  # the default client uploaded it through Xet
    assert os.path.basename(os.path.realpath(by_branch)) == entry.xet_hash


@pytest.mark.slow
def test_branches_and_missing_revision(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, _ = pushed
    api = HfApi()
    api.create_branch(repo_id, branch="dev", repo_type="dataset")
    api.create_branch(repo_id, branch="dev", repo_type="dataset", exist_ok=True)
    op = CommitOperationAdd(path_in_repo="dev.txt", path_or_fileobj=b"dev\n")
    dev = api.create_commit(
        repo_id, [op], commit_message="on dev", repo_type="dataset", revision="dev"
    )
    assert api.repo_info(repo_id, repo_type="dataset", revision="dev").sha == dev.oid
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha
    assert api.file_exists(repo_id, "dev.txt", repo_type="dataset", revision="dev")
    assert not api.file_exists(repo_id, "dev.txt", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo="x.txt", path_or_fileobj=b"x")],
            commit_message="nowhere",
            repo_type="dataset",
            revision="no-such-branch",
        )
    commits = api.list_repo_commits(repo_id, repo_type="dataset", revision="dev")
    assert [c.commit_id for c in commits[:2]] == [dev.oid, sha]
    api.create_tag(repo_id, tag="v1", revision="dev", repo_type="dataset")
    assert api.repo_info(repo_id, repo_type="dataset", revision="v1").sha == dev.oid
    api.delete_branch(repo_id, branch="dev", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, repo_type="dataset", revision="dev")


def test_snapshot_download(pushed) -> None:
    repo_id, sha, folder = pushed
    snap = Path(snapshot_download(repo_id, repo_type="dataset"))
    assert snap.name == sha
    for path in ("README.md", "data/train.parquet", "weights.bin"):
        assert (snap / path).read_bytes() == (folder / path).read_bytes()
    assert (snap.parent.parent / "refs" / "main").read_text() == sha


def test_hf_file_system_ls_info_and_ranged_read(local_hub: LocalHub, pushed) -> None:
    repo_id, _, folder = pushed
    fs = HfFileSystem()
    root = f"datasets/{repo_id}"
    names = {e["name"]: e["type"] for e in fs.ls(root)}
    assert names == {
        f"{root}/.gitattributes": "file",
        f"{root}/README.md": "file",
        f"{root}/weights.bin": "file",
        f"{root}/data": "directory",
    }
    assert fs.glob(f"{root}/data/*.parquet") == [f"{root}/data/train.parquet"]
    info = fs.info(f"{root}/weights.bin", refresh=True)
    assert info["size"] == 300_000 and info["type"] == "file"
    expected = (folder / "weights.bin").read_bytes()
    with fs.open(
        f"{root}/weights.bin", "rb", cache_type="none"
    ) as f:  # no read-ahead: one ranged GET a read
        f.seek(1000)
        assert f.read(500) == expected[1000:1500]
    assert local_hub.stats().file(repo_id, "weights.bin").bytes_sent == 500
    with pytest.raises(FileNotFoundError):
        fs.info(f"{root}/nope.bin")


def test_manual_ranged_get_is_exact(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, folder = pushed
    expected = (folder / "weights.bin").read_bytes()
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    headers = build_hf_headers()
    session = get_session()

    r = session.get(url, headers={**headers, "Range": "bytes=100-4195"})
    assert r.status_code == 206 and r.content == expected[100:4196]
    assert r.headers["Content-Range"] == "bytes 100-4195/300000"
    # Through the CDN leg, like the Hub: a 302 from the resolve URL to another origin.
    (redirect,) = r.history
    assert redirect.status_code == 302 and redirect.headers["X-Repo-Commit"] == sha
    assert not redirect.headers["Location"].startswith(local_hub.url)
    assert r.url.netloc.decode() == local_hub.cdn_url.removeprefix("http://")
    assert local_hub.stats().file(repo_id, "weights.bin").bytes_sent == 4096

    assert session.get(url, headers={**headers, "Range": "bytes=-10"}).content == expected[-10:]
    assert session.get(url, headers={**headers, "Range": "bytes=299990-"}).content == expected[-10:]
    r = session.get(url, headers={**headers, "Range": "bytes=300000-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */300000"

    head = session.head(url, headers=headers, follow_redirects=False)
    assert head.status_code == 302 and head.headers["X-Linked-Size"] == "300000"
    assert (
        head.headers["X-Linked-Etag"] == f'"{_sha256(expected)}"'
        and head.headers["Accept-Ranges"] == "bytes"
    )
    stats = local_hub.stats().file(repo_id, "weights.bin")
    assert (stats.requests, stats.head_requests, stats.bytes_sent) == (4, 1, 4096 + 20)
    assert (stats.cdn_requests, stats.cdn_bytes_sent) == (4, 4096 + 20)
    assert stats.cdn_requests_with_authorization == 0  # the token stays with the Hub's origin


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-100", 10) == (5, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    for bad in ("bytes=10-", "bytes=5-4", "bytes=-0", "bytes=0-1,3-4", "items=0-1", "bytes=-"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 10)


def test_lfs_decision() -> None:
    assert is_lfs_upload("a/b.parquet", 10, b"PAR1")
    assert is_lfs_upload("x.png", 3, b"abc")
    assert is_lfs_upload("blob", 4, b"\x00\x01\x02\x03")
    assert is_lfs_upload("big.txt", 20 * 2**20, b"text")
    assert not is_lfs_upload("README.md", 5, b"hello")
    assert not is_lfs_upload("x.bin", 0, b"")
    euro = "\u20ac".encode() * 200
    assert not is_lfs_upload(
        "t.txt", len(euro), euro[:512]
    )  # a character cut by the sample is still text


def test_load_dataset_with_configs_yaml(local_hub: LocalHub, pushed) -> None:
    import datasets

    repo_id, _, folder = pushed
    expected = pq.read_table(folder / "data" / "train.parquet").to_pydict()
    ds = datasets.load_dataset(repo_id)
    assert list(ds) == ["train"]
    assert ds["train"].to_dict() == expected
    streamed = datasets.load_dataset(repo_id, split="train", streaming=True)  # ranged reads
    assert [row["name"] for row in streamed] == expected["name"]
    assert (
        local_hub.stats().file(repo_id, "weights.bin", "dataset").bytes_sent == 0
    )  # not a data file


def test_typed_errors(local_hub: LocalHub, pushed) -> None:
    repo_id, _, _ = pushed
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("tests/does-not-exist", repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tests/does-not-exist", "README.md", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "README.md", repo_type="dataset", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, repo_type="dataset", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", repo_type="dataset")
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(repo_id, "missing-dir", repo_type="dataset"))
    # Repo ids become folder names on the server: nothing outside its root is reachable.
    r = get_session().get(f"{local_hub.url}/api/datasets/..%2F..%2Fhub-root/repos")
    assert r.status_code == 400 and "invalid repo id" in r.json()["error"]


def test_private_repo_needs_a_token(local_hub: LocalHub, hub_repo_id: str) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset", private=True)
    assert api.repo_info(hub_repo_id, repo_type="dataset").private is True
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(hub_repo_id, repo_type="dataset", token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", repo_type="dataset", token=False)
    with pytest.raises(HfHubHTTPError) as e:  # writes need a token even on public repos
        HfApi(token=False).create_repo(hub_repo_id + "-anon", repo_type="dataset")
    assert e.value.response.status_code == 401


def test_storage_survives_restart(tmp_path: Path, folder: Path) -> None:
    with LocalHub(tmp_path / "root") as first:
        api = HfApi(endpoint=first.url)
        api.create_repo("ns/persist", repo_type="dataset")
        sha = api.upload_folder(folder_path=folder, repo_id="ns/persist", repo_type="dataset").oid
        port = int(first.url.rsplit(":", 1)[1])
    with LocalHub(tmp_path / "root", port=port) as second:
        api = HfApi(endpoint=second.url)
        assert api.repo_info("ns/persist", repo_type="dataset").sha == sha
        path = hf_hub_download(
            "ns/persist",
            "weights.bin",
            repo_type="dataset",
            endpoint=second.url,
            cache_dir=tmp_path / "cache",
        )
        assert Path(path).read_bytes() == (folder / "weights.bin").read_bytes()
    assert not any((tmp_path / "root" / "tmp").iterdir())


def _lfs_hrefs(
    hub: LocalHub, repo_id: str, oid: str, size: int, *, headers: dict | None = None
) -> tuple[str, str]:
    """The upload and verify URLs of an LFS batch answer for one object of a dataset repo."""
    r = get_session().post(
        f"{hub.url}/datasets/{repo_id}.git/info/lfs/objects/batch",
        json={
            "operation": "upload",
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}],
        },
        headers=build_hf_headers() if headers is None else headers,
    )
    r.raise_for_status()
    actions = r.json()["objects"][0]["actions"]
    return actions["upload"]["href"], actions["verify"]["href"]


@pytest.mark.slow
def test_broken_put_leaves_nothing_and_retry_succeeds(
    lfs_transfer: LocalHub, local_hub: LocalHub, hub_repo_id: str
) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    data = os.urandom(200_000)
    oid = _sha256(data)
    tmp_dir = local_hub.root / "tmp"
    # The session's server is shared: only this test's partial writes are its business.
    earlier = set(tmp_dir.iterdir())
    upload_url, _ = _lfs_hrefs(local_hub, hub_repo_id, oid, len(data))

    # The server drops the connection mid-body.
    local_hub.inject_fault("drop", method="PUT", path=oid, after_bytes=50_000)
    with pytest.raises(httpx2.TransportError):
        get_session().put(upload_url, content=data)
    # The client goes away mid-body.
    with socket.create_connection(("127.0.0.1", int(local_hub.url.rsplit(":", 1)[1]))) as s:
        target = upload_url.removeprefix(local_hub.url)
        s.sendall(
            f"PUT {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[:70_000]
        )
    # A complete body with the wrong content.
    bad = get_session().put(upload_url, content=data[:-1] + b"!")
    assert bad.status_code == 400

    def left() -> set[Path]:
        return set(tmp_dir.iterdir()) - earlier

    deadline = (
        time.monotonic() + 30
    )  # the aborted handler may still be cleaning (slow on a loaded machine)
    while left() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not local_hub.storage.has_blob(oid) and not left()

    # The real client: the first PUT is dropped, http_backoff retries it, the push succeeds.
    local_hub.reset_stats()
    local_hub.inject_fault("drop", method="PUT", path="/_local_hub/lfs/", after_bytes=10_000)
    api.upload_file(
        path_or_fileobj=data, path_in_repo="blob.bin", repo_id=hub_repo_id, repo_type="dataset"
    )
    assert local_hub.storage.has_blob(oid, len(data))
    stats = local_hub.stats()
    assert stats.lfs_bytes_received == 10_000 + len(data)  # the broken attempt, then the whole body
    assert stats.file(hub_repo_id, "blob.bin").bytes_received == 10_000 + len(data)
    path = hf_hub_download(hub_repo_id, "blob.bin", repo_type="dataset")
    assert Path(path).read_bytes() == data


@pytest.mark.slow
def test_http_500_seen_by_client_and_retried(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, _ = pushed
    api = HfApi()
    local_hub.inject_fault("error", method="GET", path=f"/api/datasets/{repo_id}", times=1)
    with pytest.raises(HfHubHTTPError) as e:
        api.repo_info(repo_id, repo_type="dataset")
    assert e.value.response.status_code == 500
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha  # the fault was used up

    # preupload goes through http_backoff: the 500 is retried and the commit goes through.
    local_hub.inject_fault("error", method="POST", path="*/preupload/*", times=1)
    info = api.upload_file(
        path_or_fileobj=b"after a 500\n",
        path_in_repo="retry.txt",
        repo_id=repo_id,
        repo_type="dataset",
    )
    assert info.oid != sha and local_hub.active_faults() == []


@pytest.mark.slow
def test_dropped_download_resumes_with_a_range(
    lfs_transfer: LocalHub, local_hub: LocalHub, pushed
) -> None:
    repo_id, _, folder = pushed
    local_hub.inject_fault(
        "drop", method="GET", path="*/resolve/*/weights.bin", after_bytes=100_000
    )
    path = hf_hub_download(repo_id, "weights.bin", repo_type="dataset", force_download=True)
    assert Path(path).read_bytes() == (folder / "weights.bin").read_bytes()
    stats = local_hub.stats().file(repo_id, "weights.bin")
    # The client buffers DOWNLOAD_CHUNK_SIZE (10 MB) before writing, so the 100 kB that arrived
    # before the drop are lost and its retry ("resume" from byte 0) fetches the whole file again.
    # Both GETs went to the CDN URL of the HEAD's 302, as on the Hub.
    assert (stats.requests, stats.cdn_requests) == (0, 2)
    assert stats.bytes_sent == stats.cdn_bytes_sent == 100_000 + 300_000


def test_slow_body(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, folder = pushed
    url = hf_hub_url(repo_id, "README.md", repo_type="dataset", revision=sha)
    local_hub.inject_fault("slow", method="GET", path="README.md", delay_s=0.05, chunk_size=32)
    start = time.monotonic()
    r = get_session().get(url, headers=build_hf_headers())
    elapsed = time.monotonic() - start
    size = len(README.encode())
    assert r.content == (folder / "README.md").read_bytes()
    assert elapsed >= 0.05 * (size // 32)


@pytest.mark.slow
def test_admin_http_api(local_hub: LocalHub, pushed) -> None:
    repo_id, _, _ = pushed
    session = get_session()
    r = session.post(
        f"{local_hub.url}/_local_hub/faults",
        json={"kind": "error", "method": "GET", "path": "weights.bin", "status": 503},
    )
    assert r.status_code == 200 and r.json()["status"] == 503
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset")
    assert session.get(url, headers={"Range": "bytes=0-9"}).status_code == 503
    assert session.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    stats = session.get(f"{local_hub.url}/_local_hub/stats").json()
    (entry,) = [f for f in stats["files"] if f["path"] == "weights.bin" and f["repo_id"] == repo_id]
    assert entry["bytes_sent"] == 10
    assert (
        session.post(f"{local_hub.url}/_local_hub/faults", json={"kind": "nope"}).status_code == 400
    )
    session.post(f"{local_hub.url}/_local_hub/faults", json={"kind": "error", "times": None})
    assert session.post(f"{local_hub.url}/_local_hub/reset").status_code == 200
    assert local_hub.active_faults() == [] and local_hub.stats().files == {}


@pytest.mark.slow
def test_tree_and_paths_info_shapes(lfs_transfer: LocalHub, local_hub: LocalHub, pushed) -> None:
    repo_id, sha, folder = pushed
    session, headers = get_session(), build_hf_headers()
    base = f"{local_hub.url}/api/datasets/{repo_id}"
    top = session.get(
        f"{base}/tree/{sha}?recursive=false&expand=false&limit=10&cursor=abc", headers=headers
    ).json()
    assert {(e["type"], e["path"]) for e in top} == {
        ("directory", "data"),
        ("file", ".gitattributes"),
        ("file", "README.md"),
        ("file", "weights.bin"),
    }
    sub = session.get(f"{base}/tree/main/data", headers=headers).json()
    data = (folder / "data" / "train.parquet").read_bytes()
    assert sub == [
        {
            "type": "file",
            "oid": sub[0]["oid"],
            "size": len(data),
            "path": "data/train.parquet",
            "lfs": {
                "oid": _sha256(data),
                "size": len(data),
                "pointerSize": sub[0]["lfs"]["pointerSize"],
            },
        }
    ]
    infos = HfApi().get_paths_info(
        repo_id, ["weights.bin", "data", "missing"], repo_type="dataset", expand=True
    )
    assert [i.path for i in infos] == ["weights.bin", "data"]
    assert infos[0].last_commit.oid == sha


def test_concurrent_downloads(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, folder = pushed
    expected = (folder / "weights.bin").read_bytes()
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    results: list[bytes] = [b""] * 8

    def fetch(i: int) -> None:
        start = i * 1000
        r = get_session().get(url, headers={"Range": f"bytes={start}-{start + 999}"})
        results[i] = r.content

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected[i * 1000 : i * 1000 + 1000] for i in range(8)]
    assert local_hub.stats().file(repo_id, "weights.bin").bytes_sent == 8000


def test_parent_commit_and_deletions(local_hub: LocalHub, pushed) -> None:
    from huggingface_hub import CommitOperationDelete

    repo_id, sha, _ = pushed
    api = HfApi()
    delete = [
        CommitOperationDelete(path_in_repo="weights.bin"),
        CommitOperationDelete(path_in_repo="data/"),
    ]
    new = api.create_commit(
        repo_id, delete, commit_message="prune", repo_type="dataset", parent_commit=sha
    )
    assert api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes", "README.md"]
    stale = [CommitOperationAdd(path_in_repo="late.txt", path_or_fileobj=b"late")]
    with pytest.raises(HfHubHTTPError) as e:  # the branch moved on since `sha`
        api.create_commit(
            repo_id, stale, commit_message="late", repo_type="dataset", parent_commit=sha
        )
    assert e.value.response.status_code == 412
    assert api.repo_info(repo_id, repo_type="dataset").sha == new.oid
    # Old commits stay readable by sha.
    assert api.file_exists(repo_id, "weights.bin", repo_type="dataset", revision=sha)


def test_chunked_upload_body(local_hub: LocalHub, hub_repo_id: str) -> None:
    HfApi().create_repo(hub_repo_id, repo_type="dataset")
    parts = [os.urandom(40_000) for _ in range(3)]
    oid = _sha256(b"".join(parts))
    upload_url, _ = _lfs_hrefs(local_hub, hub_repo_id, oid, 120_000)
    r = get_session().put(upload_url, content=iter(parts))  # no Content-Length
    assert r.status_code == 200 and local_hub.storage.has_blob(oid, 120_000)
    assert local_hub.stats().lfs_bytes_received == 120_000


def test_token_never_logged(local_hub: LocalHub, pushed, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import HUB_TOKEN

    repo_id, _, _ = pushed
    with caplog.at_level("DEBUG", logger="vindex_hub.hubserver"):
        HfApi().repo_info(repo_id, repo_type="dataset")
        hf_hub_download(repo_id, "README.md", repo_type="dataset", force_download=True)
    assert "GET /api/datasets/" in caplog.text  # the server did log these requests
    assert HUB_TOKEN not in caplog.text


@pytest.mark.slow
def test_serve_in_a_separate_process(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    code = "import sys; from vindex_hub.hubserver import serve; serve(sys.argv[1], port=0)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "root")], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        api = HfApi(endpoint=url)
        api.create_repo("ns/remote", repo_type="dataset")
        api.upload_file(
            path_or_fileobj=b"x" * 1000,
            path_in_repo="a.bin",
            repo_id="ns/remote",
            repo_type="dataset",
        )
        session = get_session()
        fault = {"kind": "error", "method": "GET", "path": "/api/datasets/ns/remote", "status": 503}
        assert session.post(f"{url}/_local_hub/faults", json=fault).status_code == 200
        assert session.get(f"{url}/api/datasets/ns/remote").status_code == 503
        session.get(f"{url}/datasets/ns/remote/resolve/main/a.bin", headers={"Range": "bytes=0-99"})
        stats = session.get(f"{url}/_local_hub/stats").json()
        assert [(f["path"], f["bytes_sent"]) for f in stats["files"] if f["bytes_sent"]] == [
            ("a.bin", 100)
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)  # generous: a loaded machine is slow to stop the server's threads
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave the server behind, even when the test fails
            proc.wait()
            raise
    assert proc.returncode == 0


def test_totals_count_each_request_and_byte_once(lfs_transfer, local_hub, hub_repo_id, tmp_path):
    """Per-file attribution must not add to the totals a second time."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    payload = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(payload)
    local_hub.reset_stats()
    api.upload_file(
        path_or_fileobj=str(tmp_path / "blob.bin"),
        path_in_repo="blob.bin",
        repo_id=hub_repo_id,
        repo_type="dataset",
    )
    stats = local_hub.stats()
    assert stats.file(hub_repo_id, "blob.bin").bytes_received == len(payload)
    assert len(payload) <= stats.bytes_received < len(payload) + 20_000  # + JSON request bodies
    local_hub.reset_stats()
    hf_hub_download(hub_repo_id, "blob.bin", repo_type="dataset", cache_dir=str(tmp_path / "cache"))
    stats = local_hub.stats()
    assert stats.file(hub_repo_id, "blob.bin").bytes_sent == len(payload)
    assert stats.bytes_sent == len(payload)
    assert stats.requests == 1  # the HEAD; the GET goes to its 302's CDN URL (not counted here)
    assert stats.file(hub_repo_id, "blob.bin").cdn_requests == 1


@pytest.mark.slow
def test_lfs_upload_urls_need_the_token_of_a_batch_answer(
    local_hub: LocalHub,
    hub_repo_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.create_repo(f"{hub_repo_id}-other", repo_type="dataset")
    data, small = os.urandom(50_000), os.urandom(10)
    oid, small_oid = _sha256(data), _sha256(small)
    session = get_session()

    with pytest.raises(httpx2.HTTPStatusError) as e:  # the batch answer itself needs Authorization
        _lfs_hrefs(local_hub, hub_repo_id, oid, len(data), headers={})
    assert e.value.response.status_code == 401
    upload_url, verify_url = _lfs_hrefs(local_hub, hub_repo_id, oid, len(data))
    small_url, _ = _lfs_hrefs(local_hub, hub_repo_id, small_oid, len(small))
    other_repo_url, _ = _lfs_hrefs(local_hub, f"{hub_repo_id}-other", oid, len(data))
    with monkeypatch.context() as m:
        m.setattr(hub_lfs, "UPLOAD_URL_LIFETIME_S", -1)
        expired_url, _ = _lfs_hrefs(local_hub, hub_repo_id, oid, len(data))
    bare = upload_url.split("?")[0]
    forged = {
        "no token": bare,
        "empty token": bare + "?token=",
        "altered token": upload_url[:-1] + ("1" if upload_url.endswith("0") else "0"),
        "token of another object": bare + "?" + small_url.split("?")[1],
        "token of another repo": bare + "?" + other_repo_url.split("?")[1],
        "expired token": expired_url,
    }
    local_hub.reset_stats()
    for what, url in forged.items():
        r = session.put(url, content=data)
        assert r.status_code == 403 and "no valid token" in r.json()["error"], what
    assert not local_hub.storage.has_blob(oid) and local_hub.stats().lfs_bytes_received == 0
    verify = {"oid": oid, "size": len(data)}
    assert (
        session.post(verify_url.split("?")[0], json=verify, headers=build_hf_headers()).status_code
        == 403
    )
    assert (
        session.post(verify_url, json=verify).status_code == 401
    )  # the real client sends Authorization

    with caplog.at_level("DEBUG", logger="vindex_hub.hubserver"):
        assert (
            session.put(upload_url, content=data).status_code == 200
        )  # no Authorization, as the client does
    assert local_hub.storage.has_blob(oid, len(data))
    assert session.post(verify_url, json=verify, headers=build_hf_headers()).status_code == 200
    token = upload_url.split("token=")[1]
    assert "token=<redacted>" in caplog.text and token not in caplog.text

    # The real client gets its URLs from the batch answer and uploads without Authorization.
    api.upload_file(
        path_or_fileobj=small, path_in_repo="small.bin", repo_id=hub_repo_id, repo_type="dataset"
    )
    assert local_hub.storage.has_blob(small_oid, len(small))
    assert (
        Path(hf_hub_download(hub_repo_id, "small.bin", repo_type="dataset")).read_bytes() == small
    )


def _raw_commit(
    hub: LocalHub, repo_id: str, *operations: dict, parent: object = None
) -> httpx2.Response:
    """An NDJSON commit sent as is (the real client would refuse to send these values)."""
    header = {"summary": "crafted", "description": ""}
    if parent is not None:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header}, *operations]
    return get_session().post(
        f"{hub.url}/api/datasets/{repo_id}/commit/main",
        content="\n".join(json.dumps(line) for line in lines).encode(),
        headers={**build_hf_headers(), "Content-Type": "application/x-ndjson"},
    )


def _inline_file(path: object, content: bytes = b"x") -> dict:
    return {
        "key": "file",
        "value": {
            "path": path,
            "content": base64.b64encode(content).decode(),
            "encoding": "base64",
        },
    }


@pytest.mark.slow
def test_parent_commit_must_be_hex_digits_of_a_sha(local_hub: LocalHub, hub_repo_id: str) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")  # one commit: "*" would glob exactly it
    head = api.repo_info(hub_repo_id, repo_type="dataset").sha
    for parent in (
        "*",
        "?" * 40,
        "../../../../*",
        f"../commits/{head}",
        head[:6],
        head + "0",
        1234567,
    ):
        r = _raw_commit(local_hub, hub_repo_id, _inline_file("a.txt"), parent=parent)
        assert r.status_code == 400 and "invalid parent commit" in r.json()["error"], parent
    assert api.repo_info(hub_repo_id, repo_type="dataset").sha == head
    assert (
        _raw_commit(
            local_hub, hub_repo_id, _inline_file("a.txt"), parent=head[:7].upper()
        ).status_code
        == 200
    )


@pytest.mark.slow
def test_crafted_paths_in_a_commit_are_refused(local_hub: LocalHub, hub_repo_id: str) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"keep",
        path_in_repo="dir/keep.txt",
        repo_id=hub_repo_id,
        repo_type="dataset",
    )
    head = api.repo_info(hub_repo_id, repo_type="dataset").sha
    for path in (
        "../evil.txt",
        "a/../../evil.txt",
        "/etc/evil.txt",
        "a\\..\\evil.txt",
        "C:\\evil.txt",
        "a//b.txt",
        "./a.txt",
        "a/",
        "",
        "bad\nname.txt",
        None,
        ["a.txt"],
    ):
        r = _raw_commit(local_hub, hub_repo_id, _inline_file(path))
        assert r.status_code == 400 and "invalid path in repo" in r.json()["error"], path
    for op in (
        {"key": "deletedFile", "value": {"path": "../dir/keep.txt"}},
        {"key": "deletedFolder", "value": {"path": "/dir/"}},
    ):
        assert _raw_commit(local_hub, hub_repo_id, op).status_code == 400, op
    for oid in ("../../../../etc/passwd", "A" * 64, 5):
        lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid}}
        r = _raw_commit(local_hub, hub_repo_id, lfs)
        assert r.status_code == 400 and "is not 64 lowercase hex digits" in r.json()["error"], oid
    assert api.repo_info(hub_repo_id, repo_type="dataset").sha == head
    # A folder deletion may end with "/" (the client sends it that way).
    assert (
        _raw_commit(
            local_hub, hub_repo_id, {"key": "deletedFolder", "value": {"path": "dir/"}}
        ).status_code
        == 200
    )


def test_crafted_repo_ids_and_revisions_never_become_paths(
    tmp_path: Path, local_hub: LocalHub, pushed
) -> None:
    for repo_id in ("ns/..", "../ns", "ns/a\\b", "ns/abc\n", "ns/a/b", "ns/.hidden", "ns/-x", "ns"):
        with pytest.raises(StorageError) as e:
            RepoRef("dataset", repo_id)
        assert e.value.status == 400, repo_id
    storage = Storage(tmp_path / "root")
    repo = RepoRef("dataset", "ns/name")
    storage.create_repo(repo, private=False)
    sha = storage.resolve(repo, "main").sha
    for revision in (f"../name/commits/{sha}", f"{sha}\n", "*", "refs/pr/1\n", "../../repo"):
        with pytest.raises(StorageError) as e:
            storage.resolve(repo, revision)
        assert e.value.error_code == "RevisionNotFound", revision
    # Over HTTP: an encoded "../" revision is a plain unknown revision.
    repo_id, _, _ = pushed
    r = get_session().get(f"{local_hub.url}/api/datasets/{repo_id}/revision/..%2F..%2Fmain")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"


# -- fault injection reaches every kind of request the package makes --------------------------------


def _request_kinds(hub: LocalHub, repo_id: str, sha: str) -> dict[str, tuple[str, str, object]]:
    """name -> (method, path glob of the fault, a callable sending that request once)."""
    session, headers = get_session(), build_hf_headers()
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    api = f"{hub.url}/api/datasets/{repo_id}"
    blob = os.urandom(20_000)
    upload_url, _ = _lfs_hrefs(hub, repo_id, _sha256(blob), len(blob))
    batch = {
        "operation": "upload",
        "transfers": ["basic"],
        "objects": [{"oid": _sha256(blob), "size": len(blob)}],
    }
    return {
        "HEAD": ("HEAD", "*/resolve/*/weights.bin", lambda: session.head(url, headers=headers)),
        "whole GET": ("GET", "*/resolve/*/weights.bin", lambda: session.get(url, headers=headers)),
        "ranged GET": (
            "GET",
            "*/resolve/*/weights.bin",
            lambda: session.get(url, headers={**headers, "Range": "bytes=10-99"}),
        ),
        "repo info": ("GET", f"/api/datasets/{repo_id}", lambda: session.get(api, headers=headers)),
        "refs": ("GET", "*/refs", lambda: session.get(f"{api}/refs", headers=headers)),
        "tree": (
            "GET",
            "*/tree/*",
            lambda: session.get(f"{api}/tree/main?recursive=true", headers=headers),
        ),
        "commit POST": (
            "POST",
            "*/commit/*",
            lambda: _raw_commit(hub, repo_id, _inline_file("f.txt", os.urandom(8))),
        ),
        "LFS batch POST": (
            "POST",
            "*.git/info/lfs/objects/batch",
            lambda: session.post(
                f"{hub.url}/datasets/{repo_id}.git/info/lfs/objects/batch",
                json=batch,
                headers=headers,
            ),
        ),
        "LFS PUT": ("PUT", "/_local_hub/lfs/*", lambda: session.put(upload_url, content=blob)),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "HEAD",
        "whole GET",
        "ranged GET",
        "repo info",
        "refs",
        "tree",
        "commit POST",
        "LFS batch POST",
        "LFS PUT",
    ],
)
@pytest.mark.slow
def test_faults_hit_each_kind_of_request(local_hub: LocalHub, pushed, kind: str) -> None:
    repo_id, sha, _ = pushed
    method, path, send = _request_kinds(local_hub, repo_id, sha)[kind]
    for status, retry_after in ((503, 2), (429, 0), (500, None), (502, None)):
        spec = {} if retry_after is None else {"retry_after": retry_after}
        local_hub.inject_fault("error", method=method, path=path, status=status, **spec)
        r = send()
        assert r.status_code == status, (kind, status)
        assert r.headers.get("Retry-After") == (None if retry_after is None else str(retry_after))
        assert r.headers["X-Error-Message"].startswith("injected fault #")
        assert local_hub.active_faults() == []  # used up by exactly this request
    local_hub.inject_fault("drop", method=method, path=path)
    with pytest.raises(httpx2.TransportError):
        send()
    assert local_hub.active_faults() == []
    assert send().status_code in (200, 206)  # the next one is served
    # Only that served request sent file bytes: the faulted ones sent none.
    expected = {"whole GET": 300_000, "ranged GET": 90}.get(kind, 0)
    assert local_hub.stats().file(repo_id, "weights.bin").bytes_sent == expected


def test_ranged_faults_tell_ranged_from_whole_gets(
    local_hub: LocalHub, pushed, tmp_path: Path
) -> None:
    repo_id, sha, folder = pushed
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    session = get_session()
    ranged_only = local_hub.inject_fault(
        "drop", method="GET", path="*/weights.bin", ranged=True, after_bytes=10
    )
    # hf_hub_download sends a HEAD and a whole GET: neither is ranged.
    path = hf_hub_download(
        repo_id, "weights.bin", repo_type="dataset", cache_dir=tmp_path / "cache"
    )
    assert Path(path).read_bytes() == (folder / "weights.bin").read_bytes()
    assert local_hub.active_faults() == [ranged_only]
    with pytest.raises(httpx2.TransportError):
        session.get(url, headers={"Range": "bytes=0-99"})
    assert local_hub.active_faults() == []

    whole_only = local_hub.inject_fault("error", method="GET", path="*/weights.bin", ranged=False)
    assert session.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
    assert local_hub.active_faults() == [whole_only]
    assert session.get(url).status_code == 500


@pytest.mark.slow
def test_retry_after_reaches_the_hub_clients_backoff(
    local_hub: LocalHub, pushed, caplog: pytest.LogCaptureFixture
) -> None:
    repo_id, sha, _ = pushed
    local_hub.inject_fault("error", method="POST", path="*/preupload/*", status=429, retry_after=0)
    with caplog.at_level("WARNING", logger="huggingface_hub"):
        info = HfApi().upload_file(
            path_or_fileobj=b"after a 429\n",
            path_in_repo="limited.txt",
            repo_id=repo_id,
            repo_type="dataset",
        )
    assert info.oid != sha and local_hub.active_faults() == []
    # The backoff waits Retry-After + 1 s when it read the header, its own base wait otherwise.
    assert "HTTP Error 429" in caplog.text and "Rate limited. Waiting 1.0s" in caplog.text


def test_dropped_commit_request_and_response(local_hub: LocalHub, pushed) -> None:
    repo_id, sha, _ = pushed
    api = HfApi()

    def add(name: str) -> CommitOperationAdd:
        return CommitOperationAdd(path_in_repo=name, path_or_fileobj=name.encode())

    # Dropped while the server reads the commit: nothing is committed.
    local_hub.inject_fault("drop", method="POST", path="*/commit/*", side="request", after_bytes=20)
    with pytest.raises(httpx2.TransportError):
        api.create_commit(repo_id, [add("lost.txt")], commit_message="lost", repo_type="dataset")
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha
    # Dropped while the server answers: the commit was made, the client never hears of it.
    local_hub.inject_fault("drop", method="POST", path="*/commit/*", side="response")
    with pytest.raises(httpx2.TransportError):
        api.create_commit(repo_id, [add("made.txt")], commit_message="made", repo_type="dataset")
    head = api.repo_info(repo_id, repo_type="dataset")
    assert head.sha != sha and "made.txt" in [s.rfilename for s in head.siblings]
    assert "lost.txt" not in [s.rfilename for s in head.siblings]


@pytest.mark.slow
def test_bad_fault_specs_are_refused(local_hub: LocalHub) -> None:
    bad = [
        {"kind": "error", "status": 500, "retry_after": 1},  # Retry-After only on 429 and 503
        {"kind": "drop", "retry_after": 1},
        {"kind": "error", "status": 503, "retry_after": -1},
        {"kind": "error", "status": 503, "retry_after": 1.5},
        {"kind": "error", "status": 200},
        {"kind": "error", "side": "response"},  # only drops have a side
        {"kind": "drop", "side": "both"},
        {"kind": "drop", "ranged": "yes"},
        {"kind": "drop", "id": 7},
        {"kind": "drop", "unknown": 1},
    ]
    session = get_session()
    for spec in bad:
        r = session.post(f"{local_hub.url}/_local_hub/faults", json=spec)
        assert r.status_code == 400 and r.json()["error"].startswith("bad fault spec"), spec
    with pytest.raises(ValueError, match="retry_after"):
        local_hub.inject_fault("error", status=500, retry_after=1)
    ok = session.post(
        f"{local_hub.url}/_local_hub/faults",
        json={"kind": "error", "status": 429, "retry_after": 3, "ranged": True, "times": None},
    )
    assert ok.status_code == 200
    assert {k: ok.json()[k] for k in ("status", "retry_after", "ranged", "times")} == {
        "status": 429,
        "retry_after": 3,
        "ranged": True,
        "times": None,
    }
    assert [f.to_json() for f in local_hub.active_faults()] == [ok.json()]
    assert session.get(f"{local_hub.url}/_local_hub/faults").json() == [ok.json()]


# -- writes without a token; routing -----------------------------------------------------------------


def test_writes_without_a_token_say_that_any_hf_token_will_do(local_hub: LocalHub, pushed) -> None:
    repo_id, _, _ = pushed
    anonymous = HfApi(token=False)
    with pytest.raises(HfHubHTTPError) as e:
        anonymous.create_repo(repo_id + "-anon", repo_type="dataset")
    assert (
        e.value.response.status_code == 401
        and "any non-empty" in str(e.value)
        and "HF_TOKEN" in str(e.value)
    )
    with pytest.raises(HfHubHTTPError) as e:
        anonymous.upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, repo_type="dataset"
        )
    assert e.value.response.status_code == 401 and "HF_TOKEN" in str(e.value)
    with pytest.raises(httpx2.HTTPStatusError) as e:
        _lfs_hrefs(local_hub, repo_id, "0" * 64, 1, headers={})
    assert (
        "HF_TOKEN" in e.value.response.json()["error"]
        and "HF_TOKEN" in e.value.response.headers["X-Error-Message"]
    )


def test_unknown_routes_and_methods(local_hub: LocalHub, pushed) -> None:
    repo_id, _, _ = pushed
    session = get_session()
    r = session.put(f"{local_hub.url}/api/repos/create")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = session.delete(f"{local_hub.url}/datasets/{repo_id}/resolve/main/README.md")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    assert session.put(f"{local_hub.url}/_local_hub/stats").status_code == 405
    r = session.get(f"{local_hub.url}/api/nothing-here")
    assert r.status_code == 404 and "no route for GET /api/nothing-here" in r.json()["error"]


@pytest.mark.slow
def test_branch_names_with_slashes(local_hub: LocalHub, pushed) -> None:
    """The client percent-encodes revisions: ``feature/x`` arrives as one path part, ``feature%2Fx``."""
    repo_id, sha, _ = pushed
    api = HfApi()
    api.create_branch(repo_id, branch="feature/x", repo_type="dataset")
    op = CommitOperationAdd(path_in_repo="data/feature.txt", path_or_fileobj=b"on feature/x\n")
    new = api.create_commit(
        repo_id, [op], commit_message="f", repo_type="dataset", revision="feature/x"
    )
    assert api.repo_info(repo_id, repo_type="dataset", revision="feature/x").sha == new.oid
    path = hf_hub_download(repo_id, "data/feature.txt", repo_type="dataset", revision="feature/x")
    assert Path(path).read_bytes() == b"on feature/x\n"
    listed = api.list_repo_tree(repo_id, "data", repo_type="dataset", revision="feature/x")
    assert sorted(e.path for e in listed) == ["data/feature.txt", "data/train.parquet"]
    assert api.repo_info(repo_id, repo_type="dataset").sha == sha


# -- byte counters ---------------------------------------------------------------------------------


def test_byte_counters_count_bytes_sent(
    lfs_transfer: LocalHub, local_hub: LocalHub, pushed, tmp_path: Path
) -> None:
    repo_id, sha, folder = pushed
    size = (folder / "weights.bin").stat().st_size
    url = hf_hub_url(repo_id, "weights.bin", repo_type="dataset", revision=sha)
    session, headers = get_session(), build_hf_headers()

    def counted() -> tuple[int, int, int]:
        f = local_hub.stats().file(repo_id, "weights.bin")
        return f.requests, f.head_requests, f.bytes_sent

    assert session.head(url, headers=headers).headers["Content-Length"] == str(size)
    assert counted() == (0, 1, 0)  # a HEAD sends no body
    hf_hub_download(
        repo_id, "weights.bin", repo_type="dataset", cache_dir=tmp_path / "cache"
    )  # HEAD, then a whole GET of the CDN URL it redirects to
    assert counted() == (0, 2, size)
    assert len(session.get(url, headers={**headers, "Range": "bytes=1000-1999"}).content) == 1000
    assert counted() == (1, 2, size + 1000)
    assert session.get(url, headers={**headers, "Range": f"bytes={size}-"}).status_code == 416
    local_hub.inject_fault("error", method="GET", path="*/weights.bin")
    assert session.get(url, headers=headers).status_code == 500
    assert counted()[2] == size + 1000  # refused answers send none of the file
    local_hub.inject_fault("drop", method="GET", path="*/weights.bin", after_bytes=1234)
    with pytest.raises(httpx2.TransportError):
        session.get(url, headers=headers)
    assert counted()[2] == size + 1000 + 1234
    assert local_hub.stats().bytes_sent == size + 1000 + 1234
