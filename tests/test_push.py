"""``push_vindex`` / ``vindex-hub push`` with the real ``huggingface_hub`` client against ``local_hub``.

Byte counts come from the server's own counters: what a push sends is measured, not assumed.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.lfs
import pytest
import tqdm
import yaml
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from vindex_hub import compat
from vindex_hub.builder import build_vindex
from vindex_hub.checksums import sha256_file
from vindex_hub.errors import HubError, IntegrityError, RemoteNotFoundError, UsageError
from vindex_hub.format import filenames, mirror
from vindex_hub.hubserver import LocalHub
from vindex_hub.push import publishable_files, push_vindex
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

from conftest import HUB_TOKEN
from vindex_fixtures import (
    CARD_OPTIONS,
    NUM_FEATS,
    NUM_LAYERS,
    REPO_ROOT,
    SmallVindex,
    cli,
    upload,
)

_seeds = itertools.count(1000)


def _tree(repo_id: str, revision: str = "main") -> dict[str, RepoFile]:
    entries = HfApi().list_repo_tree(
        repo_id, recursive=True, revision=revision, repo_type="dataset"
    )
    return {e.path: e for e in entries if isinstance(e, RepoFile)}


def _head(repo_id: str, revision: str = "main") -> str:
    return HfApi().repo_info(repo_id, repo_type="dataset", revision=revision).sha


def _received(hub: LocalHub, repo_id: str) -> dict[str, int]:
    """Bytes of file content the server received for each path of ``repo_id`` (LFS PUT or inline)."""
    return {
        k[2]: v.bytes_received
        for k, v in hub.stats().files.items()
        if k[1] == repo_id and v.bytes_received
    }


def _assert_server_holds(repo_id: str, folder: Path, revision: str, cache: Path) -> None:
    """Every published file of ``folder`` is on the server at ``revision``, byte for byte, and nothing else."""
    local = {f.path for f in publishable_files(folder)}
    assert set(_tree(repo_id, revision)) == local | {".gitattributes"}
    snap = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache))
    for path in sorted(local):
        assert sha256_file(snap / path) == sha256_file(folder / path), path


def _edit_card(folder: Path, line: str) -> None:
    card = folder / filenames.CARD_FILE
    card.write_text(card.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


@pytest.fixture
def fast_lfs_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's own LFS retry loop, with waits of 10 ms instead of 1-8 s (same logic, same count)."""
    real = huggingface_hub.lfs.http_backoff
    monkeypatch.setattr(
        huggingface_hub.lfs,
        "http_backoff",
        functools.partial(real, base_wait_time=0.01, max_wait_time=0.02),
    )


# ---- the happy paths ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_push_creates_repo_and_uploads_the_folder_in_one_commit(
    local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, tmp_path: Path
) -> None:
    vindex_copy = fresh_vindex
    # Work files of a build and temporary files must never be published.
    (vindex_copy / filenames.BUILD_STATE_DIR).mkdir()
    (vindex_copy / filenames.BUILD_STATE_DIR / "build.json").write_text("{}")
    (vindex_copy / "data" / ".layer_00.parquet.x1y2.tmp").write_bytes(b"half")
    (vindex_copy / "gate_vectors.bin.partial").write_bytes(b"half")

    result = push_vindex(vindex_copy, hub_repo_id, progress=False)

    assert result.created_repo and result.commit_oid == _head(hub_repo_id)
    assert result.commit_url.endswith(f"/commit/{result.commit_oid}") and result.pr_url is None
    _assert_server_holds(hub_repo_id, vindex_copy, result.commit_oid, tmp_path / "cache")
    files = publishable_files(vindex_copy)
    assert {f.path for f in result.uploaded} == {f.path for f in files} and not result.unchanged
    # Each file's content arrived once: inline files byte for byte; the others through Xet
    # (the default client), as the stored bytes of their chunks: at most their size plus
    # 8-byte chunk headers (compression may make them smaller), never twice.
    received = _received(local_hub, hub_repo_id)
    assert set(received) == {f.path for f in files}
    tree = _tree(hub_repo_id)
    for f in files:
        if tree[f.path].lfs is None:
            assert received[f.path] == f.size, f.path
        else:
            assert tree[f.path].xet_hash is not None, f.path
            assert 0 < received[f.path] <= f.size + 8 * (f.size // 4096 + 1), f.path
    assert local_hub.stats().lfs_bytes_received == 0
    commits = HfApi().list_repo_commits(hub_repo_id, repo_type="dataset")
    assert len(commits) == 2  # the repo's initial commit + one push
    assert commits[0].title.startswith("Upload vindex of fresh-checkpoint (vindex-hub ")
    assert (
        "builder: vindex-hub" in commits[0].message and str(vindex_copy) not in commits[0].message
    )
    assert "pushed to dataset repo" in result.render() and result.commit_url in result.render()


@pytest.mark.slow
def test_repush_of_an_unchanged_folder_sends_nothing(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path
) -> None:
    first = push_vindex(vindex_copy, hub_repo_id, progress=False)
    local_hub.reset_stats()
    again = push_vindex(vindex_copy, hub_repo_id, progress=False)
    stats = local_hub.stats()
    assert stats.lfs_bytes_received == 0 and _received(local_hub, hub_repo_id) == {}
    assert not again.uploaded and not again.deleted and len(again.unchanged) == len(first.uploaded)
    assert again.commit_oid == first.commit_oid == _head(hub_repo_id)  # no empty commit
    assert "is up to date" in again.render()


@pytest.mark.slow
def test_push_after_a_card_edit_sends_only_the_card(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path
) -> None:
    first = push_vindex(vindex_copy, hub_repo_id, progress=False)
    _edit_card(vindex_copy, "Edited after the first push.")
    local_hub.reset_stats()
    second = push_vindex(vindex_copy, hub_repo_id, commit_message="Fix the card", progress=False)
    card = vindex_copy / filenames.CARD_FILE
    assert [f.path for f in second.uploaded] == [filenames.CARD_FILE]
    assert _received(local_hub, hub_repo_id) == {filenames.CARD_FILE: card.stat().st_size}
    assert local_hub.stats().lfs_bytes_received == 0
    commits = HfApi().list_repo_commits(hub_repo_id, repo_type="dataset")
    assert [c.commit_id for c in commits[:2]] == [second.commit_oid, first.commit_oid]
    assert commits[0].title == "Fix the card"
    assert _tree(hub_repo_id)[filenames.CARD_FILE].size == card.stat().st_size


@pytest.mark.slow
def test_push_of_fewer_layers_deletes_stale_splits_only(
    local_hub: LocalHub, hub_repo_id: str, small_vindex: SmallVindex, tmp_path: Path
) -> None:
    push_vindex(small_vindex.folder, hub_repo_id, progress=False)
    HfApi().upload_file(
        path_or_fileobj=b"all rights reversed\n",
        path_in_repo="LICENSE",
        repo_id=hub_repo_id,
        repo_type="dataset",
    )  # added on the Hub: not the vindex's to delete
    fewer = tmp_path / "two-layers"
    build_vindex(
        small_vindex.checkpoint,
        fewer,
        num_feats=NUM_FEATS,
        layers="0-1",
        device="cpu",
        progress=False,
        card_options=CARD_OPTIONS,
        larql_router=True,
    )

    dry = push_vindex(fewer, hub_repo_id, dry_run=True, progress=False)
    assert dry.deleted == [mirror.gate_vectors_parquet(2, NUM_LAYERS)]
    result = push_vindex(fewer, hub_repo_id, progress=False)

    assert result.deleted == [mirror.gate_vectors_parquet(2, NUM_LAYERS)]
    tree = _tree(hub_repo_id)
    assert (
        mirror.gate_vectors_parquet(2, NUM_LAYERS) not in tree
        and "LICENSE" in tree
        and ".gitattributes" in tree
    )
    assert set(tree) == {f.path for f in publishable_files(fewer)} | {"LICENSE", ".gitattributes"}
    # Layers 0 and 1 are computed from the same weights: their parquet files were not sent again.
    assert mirror.gate_vectors_parquet(0, NUM_LAYERS) in {f.path for f in result.unchanged}


# ---- branches and pull requests -----------------------------------------------------------------------
@pytest.mark.slow
def test_create_pr_leaves_main_alone(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path, tmp_path: Path
) -> None:
    result = push_vindex(vindex_copy, hub_repo_id, create_pr=True, progress=False)
    assert result.pr_url is not None and result.pr_url.endswith("/discussions/1")
    assert set(_tree(hub_repo_id)) == {".gitattributes"}  # main: only the repo's initial commit
    _assert_server_holds(hub_repo_id, vindex_copy, "refs/pr/1", tmp_path / "cache")
    assert "pull request: " + result.pr_url in result.render()


@pytest.mark.slow
def test_missing_branch_is_an_error_unless_create_branch(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path, tmp_path: Path
) -> None:
    main = push_vindex(vindex_copy, hub_repo_id, progress=False).commit_oid
    _edit_card(vindex_copy, "Only on dev.")
    with pytest.raises(
        RemoteNotFoundError,
        match=r"branch 'dev' does not exist in dataset repo .*create_branch=True",
    ):
        push_vindex(vindex_copy, hub_repo_id, revision="dev", progress=False)
    refs = HfApi().list_repo_refs(hub_repo_id, repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"]

    result = push_vindex(
        vindex_copy, hub_repo_id, revision="dev", create_branch=True, progress=False
    )
    assert result.created_branch and [f.path for f in result.uploaded] == [filenames.CARD_FILE]
    assert _head(hub_repo_id) == main and _head(hub_repo_id, "dev") == result.commit_oid
    _assert_server_holds(hub_repo_id, vindex_copy, "dev", tmp_path / "cache")
    # The branch exists now: a second push to it needs no create_branch and finds nothing to do.
    assert not push_vindex(vindex_copy, hub_repo_id, revision="dev", progress=False).changed


def test_create_branch_needs_a_revision(vindex_copy: Path) -> None:
    with pytest.raises(UsageError, match="create_branch needs a revision"):
        push_vindex(vindex_copy, "tests/x", create_branch=True, progress=False)


# ---- dry run, refusals, bad arguments -------------------------------------------------------------------
@pytest.mark.slow
def test_dry_run_sends_nothing(local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path) -> None:
    new = push_vindex(vindex_copy, hub_repo_id, dry_run=True, progress=False)
    assert new.created_repo and new.commit_oid is None
    assert new.uploaded == publishable_files(vindex_copy) and not new.unchanged
    with pytest.raises(RepositoryNotFoundError):
        HfApi().repo_info(hub_repo_id, repo_type="dataset")  # not created

    push_vindex(vindex_copy, hub_repo_id, progress=False)
    head = _head(hub_repo_id)
    _edit_card(vindex_copy, "Not pushed.")
    local_hub.reset_stats()
    dry = push_vindex(vindex_copy, hub_repo_id, dry_run=True, progress=False)
    assert [f.path for f in dry.uploaded] == [filenames.CARD_FILE] and len(dry.unchanged) == len(
        new.uploaded
    ) - 1
    assert local_hub.stats().bytes_received == 0 and _head(hub_repo_id) == head
    text = dry.render()
    assert text.startswith("dry run: would push") and f"upload     {filenames.CARD_FILE}" in text


def test_a_folder_that_fails_verify_is_refused(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path
) -> None:
    with open(vindex_copy / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x00\x80\x7f")  # one float becomes +inf: the layer's sha256 no longer matches
    with pytest.raises(IntegrityError, match="layer 0: gate_vectors.bin bytes 0..8192 hash to"):
        push_vindex(vindex_copy, hub_repo_id, progress=False)
    assert local_hub.stats().requests == 0  # nothing was asked of the server, let alone uploaded
    with pytest.raises(RepositoryNotFoundError):
        HfApi().repo_info(hub_repo_id, repo_type="dataset")


@pytest.mark.parametrize(
    "repo_id", ["no-namespace", "a/b/c", "ns/bad--name", "ns/with space", "ns/.hidden", ""]
)
def test_malformed_repo_id(vindex_copy: Path, repo_id: str) -> None:
    with pytest.raises(UsageError, match="invalid repo id"):
        push_vindex(vindex_copy, repo_id, progress=False)


@pytest.mark.slow
def test_private_repo(local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path) -> None:
    push_vindex(vindex_copy, hub_repo_id, private=True, progress=False)
    assert HfApi().repo_info(hub_repo_id, repo_type="dataset").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info(hub_repo_id, repo_type="dataset")
    public = hub_repo_id + "-public"
    push_vindex(vindex_copy, public, progress=False)
    _edit_card(vindex_copy, "x")
    note = push_vindex(vindex_copy, public, private=True, progress=False)
    assert HfApi().repo_info(public, repo_type="dataset").private is False  # never flipped silently
    assert "already exists and is public" in note.render()


# ---- network faults ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_500_on_the_first_lfs_put_is_retried(
    lfs_transfer: LocalHub,
    local_hub: LocalHub,
    hub_repo_id: str,
    fresh_vindex: Path,
    tmp_path: Path,
) -> None:
    local_hub.inject_fault("error", method="PUT", path="/_local_hub/lfs/", times=1)
    result = push_vindex(fresh_vindex, hub_repo_id, progress=False)
    assert not local_hub.active_faults()  # the fault was hit
    _assert_server_holds(hub_repo_id, fresh_vindex, result.commit_oid, tmp_path / "cache")


@pytest.mark.slow
def test_a_dropped_upload_is_retried(
    lfs_transfer: LocalHub,
    local_hub: LocalHub,
    hub_repo_id: str,
    fresh_vindex: Path,
    tmp_path: Path,
) -> None:
    binary = fresh_vindex / filenames.GATE_VECTORS_BIN
    size, sha = binary.stat().st_size, sha256_file(binary)
    local_hub.inject_fault("drop", method="PUT", path=f"*/{sha}", after_bytes=size // 2, times=1)
    result = push_vindex(fresh_vindex, hub_repo_id, progress=False)
    # The broken attempt's bytes arrived too: the retry sent the file once more, whole.
    assert local_hub.stats().file(hub_repo_id, filenames.GATE_VECTORS_BIN).bytes_received > size
    _assert_server_holds(hub_repo_id, fresh_vindex, result.commit_oid, tmp_path / "cache")


@pytest.mark.slow
def test_upload_progress_counts_each_byte_once_when_a_put_is_retried(
    lfs_transfer: LocalHub, local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, monkeypatch
) -> None:
    binary = fresh_vindex / filenames.GATE_VECTORS_BIN
    bars: dict[str, object] = {}

    class RecordingBar(
        tqdm.tqdm
    ):  # a live bar (the test environment disables the client's), printing nowhere
        def __init__(self, *args, **kwargs):
            super().__init__(*args, file=io.StringIO(), **kwargs)
            bars[kwargs.get("desc")] = self

    monkeypatch.setattr(compat, "upload_progress_bar", RecordingBar)
    sha = sha256_file(binary)
    local_hub.inject_fault(
        "drop", method="PUT", path=f"*/{sha}", after_bytes=binary.stat().st_size // 2, times=1
    )
    push_vindex(fresh_vindex, hub_repo_id, progress=True)
    assert not local_hub.active_faults()
    bar = bars[binary.name]
    assert bar.n == bar.total == binary.stat().st_size


@pytest.mark.slow
def test_xet_upload_progress_counts_each_byte_once(
    local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, monkeypatch
) -> None:
    """On the Xet path the client's own reporter shows the bytes: each file's once."""
    import huggingface_hub.utils._xet_progress_reporting as xet_progress

    hub_tqdm = sys.modules["huggingface_hub.utils.tqdm"]  # the module (the package exports a class)

    bars: dict[str, object] = {}

    class RecordingBar(tqdm.tqdm):  # a live bar printing nowhere, recorded by its description
        def __init__(self, *args, **kwargs):
            kwargs.pop("file", None)
            super().__init__(*args, file=io.StringIO(), **kwargs)
            bars[str(kwargs.get("desc")).split("(")[0].strip()] = self

    # The test environment turns the client's bars off (HF_HUB_DISABLE_PROGRESS_BARS): on here.
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(xet_progress, "tqdm", RecordingBar)
    result = push_vindex(fresh_vindex, hub_repo_id, progress=True)
    tree = _tree(hub_repo_id)
    through_xet = sum(f.size for f in result.uploaded if tree[f.path].xet_hash is not None)
    processed = bars["Processing Files"]
    assert processed.n == processed.total == through_xet > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["error", "drop"])
def test_a_failed_upload_commits_nothing_and_the_next_push_resumes(
    lfs_transfer: LocalHub,
    local_hub: LocalHub,
    hub_repo_id: str,
    fresh_vindex: Path,
    tmp_path: Path,
    fast_lfs_retries,
    kind: str,
) -> None:
    binary = fresh_vindex / filenames.GATE_VECTORS_BIN
    size, sha = binary.stat().st_size, sha256_file(binary)
    local_hub.inject_fault(kind, method="PUT", path=f"*/{sha}", after_bytes=size // 3, times=None)
    with pytest.raises(HubError) as err:
        push_vindex(fresh_vindex, hub_repo_id, progress=False)
    message = str(err.value)
    assert (
        hub_repo_id in message
        and filenames.GATE_VECTORS_BIN in message
        and "nothing was committed" in message
    )
    assert HUB_TOKEN not in message
    # The branch is as it was (the repo's initial commit) and no partial object was kept.
    assert set(_tree(hub_repo_id)) == {".gitattributes"}
    assert not local_hub.storage.has_blob(sha) and not any((local_hub.root / "tmp").iterdir())

    local_hub.clear_faults()
    local_hub.reset_stats()
    result = push_vindex(fresh_vindex, hub_repo_id, progress=False)
    _assert_server_holds(hub_repo_id, fresh_vindex, result.commit_oid, tmp_path / "cache")
    # The parquet files and the plot arrived during the failed push: only the binary is sent now.
    lfs = {p: n for p, n in _received(local_hub, hub_repo_id).items() if _tree(hub_repo_id)[p].lfs}
    assert lfs == {filenames.GATE_VECTORS_BIN: size}


@pytest.mark.slow
def test_a_failed_commit_request_changes_nothing(
    local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path
) -> None:
    push_vindex(fresh_vindex, hub_repo_id, progress=False)
    head = _head(hub_repo_id)
    _edit_card(fresh_vindex, "second version")
    (fresh_vindex / "extra.parquet").write_bytes(os.urandom(4096))
    # A persistent fault (a single one is retried, see test_failure_modes.py).
    local_hub.inject_fault("error", method="POST", path="*/commit/*", times=None)
    with pytest.raises(HubError, match=hub_repo_id):
        push_vindex(fresh_vindex, hub_repo_id, progress=False, include=["extra.parquet"])
    assert _head(hub_repo_id) == head and "extra.parquet" not in _tree(hub_repo_id)
    local_hub.clear_faults()
    local_hub.reset_stats()
    push_vindex(fresh_vindex, hub_repo_id, progress=False, include=["extra.parquet"])
    assert (
        local_hub.stats().lfs_bytes_received == 0
    )  # extra.parquet arrived before the failed commit
    assert "extra.parquet" in _tree(hub_repo_id)


# ---- the command line and the token -----------------------------------------------------------------------
@pytest.mark.slow
def test_cli_push_never_shows_the_token(
    local_hub: LocalHub, hub_repo_id: str, vindex_copy: Path
) -> None:
    assert os.environ["HF_TOKEN"] == HUB_TOKEN  # set by conftest: the CLI's only credential
    runs = {
        "push": cli("push", str(vindex_copy), hub_repo_id),
        "dry run": cli("push", str(vindex_copy), hub_repo_id, "--dry-run"),
        "bad id": cli("push", str(vindex_copy), "not/a/repo"),
        "no branch": cli(
            "push", str(vindex_copy), hub_repo_id, "--revision", "dev", HF_HUB_VERBOSITY="debug"
        ),
    }
    _edit_card(vindex_copy, "changed")
    local_hub.inject_fault(
        "error", method="POST", path="*/commit/*", status=500, times=None
    )  # persistent
    runs["server error"] = cli("push", str(vindex_copy), hub_repo_id, HF_HUB_VERBOSITY="debug")
    for name, run in runs.items():
        assert HUB_TOKEN not in run.stdout + run.stderr, name
    assert runs["push"].returncode == 0 and "pushed to dataset repo" in runs["push"].stdout
    assert runs["dry run"].returncode == 0 and "is up to date" not in runs["dry run"].stdout
    assert (
        runs["bad id"].returncode == 2 and "invalid repo id 'not/a/repo'" in runs["bad id"].stderr
    )
    assert (
        runs["no branch"].returncode == 1
        and "branch 'dev' does not exist" in runs["no branch"].stderr
    )
    assert runs["server error"].returncode == 1 and hub_repo_id in runs["server error"].stderr
    assert (
        runs["server error"].stderr.strip().splitlines()[-1].startswith("vindex-hub push: error:")
    )


def test_token_is_scrubbed_from_error_messages(local_hub: LocalHub, vindex_copy: Path) -> None:
    # A token that is also the repo's name ends up in the server's answer; the message must not show it.
    secret = "hf_secretvalue123"
    with pytest.raises(RemoteNotFoundError) as err:
        push_vindex(
            vindex_copy, f"tests/{secret}", revision="no-such", token=secret, progress=False
        )
    assert secret not in str(err.value) and "<token>" in str(err.value)
    with pytest.raises(RepositoryNotFoundError):  # refused before the repo was created
        HfApi().repo_info(f"tests/{secret}", repo_type="dataset")


# ---- the GitHub Actions workflow --------------------------------------------------------------------------
WORKFLOW = REPO_ROOT / "scripts" / "github-actions" / "build-and-push-vindex.yml"
_EXPR = re.compile(r"\$\{\{\s*(inputs|secrets)\.(\w+)\s*\}\}")
# Parses its arguments with the real CLI parser and records them; runs nothing.
_PARSE_ONLY = """#!{python}
import json, os, sys
from vindex_hub.cli import parser
args = parser().parse_args(sys.argv[1:])  # exits 2 on an unknown option
with open(os.environ["CLI_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


# The real CLI, as the install step's venv puts it on PATH.
_REAL_CLI = """#!/bin/sh
exec {python} -m vindex_hub "$@"
"""


def _run_workflow_commands(
    tmp_path: Path, inputs: dict[str, str], *, real: bool = False
) -> list[list[str]]:
    """Run the workflow's vindex-hub steps in bash, as Actions would, with a parse-only vindex-hub
    (``real``: the real one, against the bundled Hub of this session as endpoint)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["build-and-push"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "vindex-hub"
    shim.write_text((_REAL_CLI if real else _PARSE_ONLY).format(python=sys.executable))
    shim.chmod(0o755)
    log = tmp_path / "cli.log"
    log.unlink(missing_ok=True)
    for step in job["steps"]:
        if "vindex-hub" not in step.get("run", "") or "setup.sh" in step["run"]:
            continue
        assert "${{" not in step["run"], (
            f"{step['name']}: inputs must reach the shell through env only"
        )
        values = {"inputs": inputs, "secrets": {"HF_TOKEN": HUB_TOKEN}}
        env = {
            k: _EXPR.sub(lambda m: values[m.group(1)][m.group(2)], str(v))
            for k, v in {**job.get("env", {}), **step.get("env", {})}.items()
        }
        if real:  # a runner's environment: ours points the clients at the bundled Hub
            hub_env = {k: v for k, v in os.environ.items() if k.startswith("HF_")}
            hub_env.pop("HF_TOKEN", None)  # only the workflow's secret may give it
            env = {**hub_env, **env}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            CLI_LOG=str(log),
            GITHUB_RUN_ID="42",
            PYTHONPATH=str(REPO_ROOT),
        )
        run = subprocess.run(
            ["bash", "-e", "-c", step["run"]], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert run.returncode == 0, f"{step['name']}: {run.stderr}"
    return [] if real else [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_workflow_builds_and_pushes_end_to_end(
    local_hub: LocalHub, hub_repo_id: str, tmp_path: Path
) -> None:
    """The workflow's steps with the real CLI: build from a Hub model repo, verify, open a pull
    request, all through the bundled Hub on the default (Xet) transfer path."""
    workflow = WORKFLOW.read_text()
    assert "HF_HUB_DISABLE_XET" not in workflow  # a runner keeps the Hub's default transfer
    model_repo = f"{hub_repo_id}-model"
    checkpoint = make_deepseek_v4_checkpoint(
        tmp_path / "model",
        num_layers=2,
        num_experts=4,
        hidden_size=64,
        moe_intermediate_size=32,
        seed=next(_seeds),
        include_mtp=False,
    )
    upload(checkpoint, model_repo, repo_type="model")
    inputs = {
        "model": model_repo,
        "revision": "main",
        "dataset_repo": hub_repo_id,
        "layers": "all",
        "num_feats": str(NUM_FEATS),
        "runner": "ubuntu-latest",
    }
    local_hub.reset_stats()
    _run_workflow_commands(tmp_path, inputs, real=True)
    refs = HfApi().list_repo_refs(hub_repo_id, repo_type="dataset", include_pull_requests=True)
    (pr,) = refs.pull_requests
    out = tmp_path / "vindex-out"
    assert set(_tree(hub_repo_id, pr.ref)) == {f.path for f in publishable_files(out)} | {
        ".gitattributes"
    }
    binary = _tree(hub_repo_id, pr.ref)[filenames.GATE_VECTORS_BIN]
    assert binary.lfs.sha256 == sha256_file(out / filenames.GATE_VECTORS_BIN)
    assert binary.xet_hash is not None and local_hub.stats().xet_bytes_received > 0
    assert local_hub.stats().lfs_bytes_received == 0


@pytest.mark.slow
def test_workflow_runs_real_cli_commands(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert set(on["workflow_dispatch"]["inputs"]) >= {
        "model",
        "revision",
        "dataset_repo",
        "layers",
        "num_feats",
    }
    inputs = {
        "model": "deepseek-ai/DeepSeek-V4-Flash",
        "revision": "main",
        "dataset_repo": "me/v4-vindex",
        "layers": "3,5",
        "num_feats": "64",
        "runner": "ubuntu-latest",
    }

    build, verify, push = _run_workflow_commands(tmp_path, inputs)
    assert build[:4] == ["build", inputs["model"], "-o", "vindex-out"]
    assert (
        build[build.index("--layers") + 1] == "3,5"
        and build[build.index("--revision") + 1] == "main"
    )
    assert verify == ["verify", "vindex-out"]
    assert push[:4] == ["push", "vindex-out", "me/v4-vindex", "--create-pr"]
    steps = {s.get("name"): s for s in workflow["jobs"]["build-and-push"]["steps"]}
    assert (
        steps["Open a pull request on the dataset repo"]["env"]["HF_TOKEN"]
        == "${{ secrets.HF_TOKEN }}"
    )

    build_all = _run_workflow_commands(tmp_path, {**inputs, "layers": "all"})[0]
    assert "--layers" not in build_all  # 'all' leaves the CLI's default: every layer
