"""Issue 13: transient faults retried, hostile repos refused by name, no tracebacks, nothing left behind.

Faults come from the bundled server's fault injection; hostile repos are written to it with the
real ``HfApi`` or, for what the client refuses to send (a ``..`` file name, a 2.2 TB file), with
the server's own storage API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from huggingface_hub import HfApi
from huggingface_hub.utils.sha import git_hash

from vindex_hub.builder import DEFAULT_BATCH, DEFAULT_NUM_FEATS, build_vindex
from vindex_hub.cli import parser
from vindex_hub.errors import UsageError, VindexFormatError
from vindex_hub.format import filenames, layout, mirror, selection, sidecar
from vindex_hub.hub import http as hub_http
from vindex_hub.hub.blockcache import BlockCache
from vindex_hub.hubserver import LocalHub
from vindex_hub.hubserver.storage import Entry
from vindex_hub.hubserver.storage import RepoRef as StoredRepo
from vindex_hub.load import Vindex
from vindex_hub.pull import pull_vindex
from vindex_hub.push import push_vindex
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.verify import verify_vindex

from vindex_fixtures import (
    NUM_FEATS,
    REPO_ROOT,
    SmallVindex,
    cli,
    upload,
)


def one_error_line(run: subprocess.CompletedProcess, status: int = 1) -> str:
    """The run failed with ``status`` and exactly one line on stderr, no traceback."""
    assert run.returncode == status, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def commit_raw(hub: LocalHub, repo_id: str, files: dict[str, bytes | tuple[str, int]]) -> None:
    """Commit files as the server stores them, for names and sizes the client would refuse to send:
    bytes become a regular file, ``(sha256, size)`` an LFS file whose blob is a sparse file."""
    added = {}
    for path, content in files.items():
        if isinstance(content, bytes):
            sha = hub.storage.put_blob_bytes(content)
            added[path] = Entry(git_hash(content), len(content), sha, False)
        else:
            sha, size = content
            blob = hub.storage.blob_path(sha)
            blob.parent.mkdir(parents=True, exist_ok=True)
            with open(blob, "wb") as f:
                f.truncate(size)  # sparse: claims the size, holds nothing
            added[path] = Entry("0" * 40, size, sha, True)
    hub.storage.apply_commit(
        StoredRepo("dataset", repo_id),
        "main",
        summary="hostile",
        description="",
        added=added,
        deleted_files=[],
        deleted_folders=[],
        parent_commit=None,
        create_pr=False,
    )


@pytest.fixture
def repo(local_hub: LocalHub, small_vindex: SmallVindex, hub_repo_id: str) -> str:
    return upload(small_vindex.folder, hub_repo_id)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hub"


# ---- 1. every request survives a transient fault ------------------------------------------------------
@pytest.mark.slow
def test_one_5xx_on_the_sidecar_the_head_and_the_binary_is_retried(
    local_hub: LocalHub, repo: str, cache: Path, small_vindex: SmallVindex, tmp_path: Path
):
    for method, path in (
        ("GET", f"*/{filenames.SIDECAR_JSON}"),
        ("HEAD", f"*/{filenames.GATE_VECTORS_BIN}"),
    ):
        local_hub.inject_fault("error", method=method, path=path, status=503, times=1)
    with Vindex.open(repo, cache_dir=cache) as vx:
        np.testing.assert_array_equal(
            vx.layer(1), small_vindex.binary_layer(small_vindex.folder, 1)
        )
    assert not local_hub.active_faults()  # both faults were met, and survived

    # A full download of the binary: on the default (Xet) path its one request to the Hub is the
    # Xet read token (hf_xet then reads the CAS), which the client fetches once per revision.
    from huggingface_hub.utils import _xet

    _xet.XET_CONNECTION_INFO_CACHE.clear()
    local_hub.inject_fault("error", method="GET", path="*/xet-read-token/*", status=500, times=1)
    out = pull_vindex(repo, tmp_path / "full", cache_dir=tmp_path / "other-cache")
    assert not local_hub.active_faults()
    assert verify_vindex(out).ok


@pytest.mark.slow
def test_a_dropped_sidecar_download_is_retried(local_hub: LocalHub, repo: str, cache: Path):
    local_hub.inject_fault(
        "drop", method="GET", path=f"*/{filenames.SIDECAR_JSON}", after_bytes=20, times=2
    )
    with Vindex.open(repo, cache_dir=cache) as vx:
        assert vx.num_feats == NUM_FEATS
    assert not local_hub.active_faults()


def test_a_429_waits_what_retry_after_asks(
    local_hub: LocalHub, repo: str, cache: Path, monkeypatch
):
    waits: list[float] = []
    monkeypatch.setattr(hub_http.time, "sleep", waits.append)
    local_hub.inject_fault(
        "error",
        method="GET",
        path=f"*/{filenames.SIDECAR_JSON}",
        status=429,
        retry_after=7,
        times=1,
    )
    with Vindex.open(repo, cache_dir=cache) as vx:
        assert vx.layers
    assert waits and all(w >= 7 for w in waits)  # the client's loop adds a second of margin


@pytest.mark.slow
def test_config_json_of_a_hub_build_and_the_commit_of_a_push_are_retried(
    local_hub: LocalHub, small_vindex: SmallVindex, hub_repo_id: str, tmp_path: Path
):
    model = upload(small_vindex.checkpoint, f"{hub_repo_id}-model", repo_type="model")
    local_hub.inject_fault("error", method="GET", path="*/config.json", status=502, times=1)
    local_hub.inject_fault("error", method="GET", path=f"/api/models/{model}*", status=503, times=1)
    summary = build_vindex(
        model, tmp_path / "from-hub", num_feats=NUM_FEATS, layers="1", device="cpu", progress=False
    )
    assert not local_hub.active_faults() and summary.layers == [1]

    local_hub.inject_fault("error", method="POST", path="*/commit/*", status=500, times=1)
    local_hub.inject_fault("error", method="GET", path="*/refs", status=503, times=1)
    result = push_vindex(summary.out, hub_repo_id, progress=False)
    assert not local_hub.active_faults()
    assert result.commit_oid and filenames.SIDECAR_JSON in {f.path for f in result.uploaded}


@pytest.mark.slow
def test_a_persistent_fault_ends_in_one_line_naming_the_url_and_the_attempts(
    local_hub: LocalHub, repo: str, tmp_path: Path
):
    local_hub.inject_fault(
        "error", method="GET", path=f"*/{filenames.SIDECAR_JSON}", status=500, times=None
    )
    line = one_error_line(cli("info", repo, HF_HUB_CACHE=str(tmp_path / "hub")))
    # (the GET goes to the commit the HEAD resolved main to)
    assert re.search(f"/resolve/[0-9a-f]{{40}}/{filenames.SIDECAR_JSON}", line) and repo in line
    assert f"{hub_http.MAX_RETRIES + 1} attempts" in line and "HTTP 500" in line


# ---- 2, 3. hostile repos: one line, typed errors, nothing requested ---------------------------------------
@pytest.mark.slow
def test_dot_dot_file_names_are_refused_in_one_line(local_hub: LocalHub, repo: str, tmp_path: Path):
    commit_raw(
        local_hub, repo, {"../escape.txt": b"outside\n", "data/../../escape2.txt": b"outside\n"}
    )
    # pull never takes such a name (nor any hidden one): the vindex arrives, nothing lands outside it.
    pulled = cli("pull", repo, "-o", str(tmp_path / "out"), HF_HUB_CACHE=str(tmp_path / "hub"))
    assert pulled.returncode == 0, pulled.stderr
    assert not list(tmp_path.glob("**/escape*.txt")) and verify_vindex(tmp_path / "out").ok
    # verify reads the whole repo, so it refuses it, naming the file.
    line = one_error_line(cli("verify", repo, HF_HUB_CACHE=str(tmp_path / "hub2")))
    assert repo in line and "escape" in line
    assert not list(tmp_path.glob("**/escape*.txt"))


@pytest.mark.slow
def test_garbage_card_yaml_is_a_format_error(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str, tmp_path: Path, cache: Path
):
    (vindex_copy / filenames.CARD_FILE).write_text(
        "---\nconfigs: [unclosed\n  - : :\n---\n# card\n"
    )
    repo = upload(vindex_copy, hub_repo_id)
    line = one_error_line(
        cli(
            "pull",
            repo,
            "--layers",
            "1",
            "-o",
            str(tmp_path / "one"),
            HF_HUB_CACHE=str(tmp_path / "cli-hub"),
        )
    )
    assert filenames.CARD_FILE in line and "does not parse" in line
    with Vindex.open(repo, cache_dir=cache) as vx:
        with pytest.raises(VindexFormatError, match="front matter does not parse"):
            vx.card_data
    with Vindex.open(repo, mode="arrow", cache_dir=cache) as vx:
        with pytest.raises(VindexFormatError, match="front matter does not parse"):
            vx.layer(1)


TB_LAYER = (256, 64, 8 * 2**20)  # experts, feats, hidden: 549,755,813,888 bytes a layer


def _terabyte_sidecar(num_layers: int = 4) -> sidecar.VindexIndex:
    e, k, h = TB_LAYER
    nbytes = layout.layer_nbytes(e, k, h)
    return sidecar.VindexIndex(
        num_feats=k,
        model_config=sidecar.ModelConfig(
            "deepseek_v4", num_layers, sidecar.MoEConfig(e, 1, 8, h, 2048)
        ),
        source=sidecar.SourceInfo(repo_id="evil/model", revision="b" * 40),
        builder=sidecar.BuilderInfo(name="vindex-hub", version="x", method="x"),
        layers={
            i: sidecar.LayerEntry(i * nbytes, [e, k, h], nbytes, "0" * 64, 0.5, 0.4, 0.6)
            for i in range(num_layers)
        },
    )


@pytest.mark.slow
def test_a_repo_claiming_terabytes_is_refused_before_any_byte(
    local_hub: LocalHub, hub_repo_id: str, tmp_path: Path, cache: Path
):
    index = _terabyte_sidecar()
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    text = json.dumps(index.to_json(), indent=2)  # written raw: loading it is what must fail
    commit_raw(
        local_hub,
        hub_repo_id,
        {
            filenames.SIDECAR_JSON: text.encode(),
            filenames.GATE_VECTORS_BIN: ("c" * 64, index.total_bytes),
        },
    )
    assert index.total_bytes > 2.19e12
    with pytest.raises(VindexFormatError, match=r"549,755,813,888 bytes \(549\.76 GB\)"):
        Vindex.open(hub_repo_id, cache_dir=cache)
    for args in (
        ("pull", hub_repo_id, "--layers", "0", "-o", str(tmp_path / "one")),
        ("pull", hub_repo_id, "-o", str(tmp_path / "all")),
    ):
        assert "549.76 GB" in one_error_line(cli(*args, HF_HUB_CACHE=str(tmp_path / "cli-hub")))
    assert local_hub.stats().file(hub_repo_id, filenames.GATE_VECTORS_BIN).bytes_sent == 0
    assert not list(tmp_path.glob(f"**/*{filenames.PARTIAL_SUFFIX}"))


# ---- 4. paths from a card stay inside the vindex -------------------------------------------------------
@pytest.mark.slow
def test_a_card_path_leaving_the_folder_is_refused_by_name(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str, tmp_path: Path
):
    card = vindex_copy / filenames.CARD_FILE
    evil = "../../../../etc/passwd"
    card.write_text(
        card.read_text().replace(f"path: {mirror.EXPERT_STATS_PARQUET}", f"path: {evil}", 1)
    )
    assert evil in card.read_text()
    report = verify_vindex(vindex_copy)
    assert not report.ok and any(evil in p and "leaves the vindex" in p for p in report.problems)
    upload(vindex_copy, hub_repo_id)
    run = cli("verify", hub_repo_id, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert run.returncode == 1 and "leaves the vindex" in run.stdout and evil in run.stdout


# ---- 5. our markers are never taken from a repo, never pushed -----------------------------------------
@pytest.mark.slow
def test_a_planted_pull_marker_is_neither_pulled_nor_pushed(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str, tmp_path: Path
):
    planted = {
        "repo_id": "someone/else",
        "repo_type": "dataset",
        "commit": "f" * 40,
        "format": "binary",
    }
    (vindex_copy / filenames.PULL_MARKER).write_text(json.dumps(planted))
    upload(vindex_copy, hub_repo_id)  # the client sends it
    api = HfApi()
    assert filenames.PULL_MARKER in api.list_repo_files(hub_repo_id, repo_type="dataset")

    out = tmp_path / "pulled"
    pull_vindex(hub_repo_id, out, cache_dir=tmp_path / "hub")
    marker = json.loads((out / filenames.PULL_MARKER).read_text())
    assert marker["repo_id"] == hub_repo_id
    assert not (out / ".gitattributes").exists() and not (out / ".cache").exists()
    pull_vindex(
        hub_repo_id, out, layers="1", cache_dir=tmp_path / "hub"
    )  # the folder is still ours to re-pull

    push_vindex(out, f"{hub_repo_id}-again", progress=False)
    assert filenames.PULL_MARKER not in api.list_repo_files(
        f"{hub_repo_id}-again", repo_type="dataset"
    )


# ---- 6. stray temp files in the block cache ----------------------------------------------------------
_LAZY_READ = textwrap.dedent("""
    import sys
    from vindex_hub.load import Vindex
    with Vindex.open(sys.argv[1], cache_dir=sys.argv[2]) as vx:
        vx.layer(0)
    print("read")
""")


@pytest.mark.slow
def test_temp_files_of_a_killed_fetch_are_cleaned_and_never_counted(
    local_hub: LocalHub, repo: str, cache: Path
):
    local_hub.inject_fault(
        "slow",
        method="GET",
        path=f"*/{filenames.GATE_VECTORS_BIN}",
        delay_s=0.3,
        chunk_size=256,
        times=None,
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", _LAZY_READ, repo, str(cache)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    blocks = BlockCache.beside(cache).root / "blocks"
    try:
        for _ in range(600):  # until the fetch has written part of its temporary file
            tmps = (
                [t for t in blocks.glob("*/.*.tmp") if t.stat().st_size > 0]
                if blocks.exists()
                else []
            )
            if tmps or reader.poll() is not None:
                break
            time.sleep(0.05)
        assert tmps, "the fetch never started"
    finally:
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait()
    local_hub.clear_faults()
    assert BlockCache.beside(cache).usage() == (0, 0)  # the killed fetch's bytes are not counted
    # A temp file whose lock a live fetch holds stays; the killed one's goes.
    held = tmps[0].with_name(".999-1000.live.tmp")
    held.write_bytes(b"x")
    os.utime(held, (0, 0))
    lock = FileLock(
        str(
            BlockCache.beside(cache).root / ".locks" / f"blocks-{tmps[0].parent.name}-999-1000.lock"
        )
    )
    with lock:
        again = subprocess.run(
            [sys.executable, "-c", _LAZY_READ, repo, str(cache)],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
        )
    assert again.returncode == 0, again.stderr
    assert not tmps[0].exists() and held.exists()
    count, size = BlockCache.beside(cache).usage()
    assert count == 1 and size > 0


# ---- 7, 8. layer selections and layer keys -------------------------------------------------------------
@pytest.mark.slow
def test_huge_layer_ranges_are_refused_before_expansion(
    small_vindex: SmallVindex, repo: str, tmp_path: Path
):
    with pytest.raises(UsageError, match="0-99999999 out of range"):
        selection.parse_layers("0-99999999", 3)
    line = one_error_line(
        cli(
            "build",
            str(small_vindex.checkpoint),
            "-o",
            str(tmp_path / "b"),
            "--layers",
            "0-99999999",
            timeout=60,
        ),
        status=2,
    )
    assert "out of range" in line
    line = one_error_line(
        cli(
            "pull",
            repo,
            "--layers",
            "0-999999999999",
            "-o",
            str(tmp_path / "p"),
            HF_HUB_CACHE=str(tmp_path / "hub"),
            timeout=60,
        ),
        status=2,
    )
    assert "out of range" in line


@pytest.mark.parametrize("key", ["-1", "01", "+1", "99"])
def test_a_sidecar_layer_key_must_be_a_layer_of_the_model(vindex_copy: Path, key: str):
    data = json.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    data[sidecar.LAYERS_KEY][key] = data[sidecar.LAYERS_KEY].pop("0")
    (vindex_copy / filenames.SIDECAR_JSON).write_text(json.dumps(data))
    with pytest.raises(
        VindexFormatError, match=f"layer key '{re.escape(key)}' is not a layer of the model"
    ):
        Vindex.open(vindex_copy)


# ---- 9. no local path is published ---------------------------------------------------------------------
def test_a_local_source_is_recorded_by_name_and_fingerprint(
    local_hub: LocalHub, small_vindex: SmallVindex, hub_repo_id: str
):
    index = sidecar.VindexIndex.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    ckpt = Path(small_vindex.checkpoint)
    assert index.source.name == ckpt.name and index.source.path is None
    assert (
        index.source.fingerprint
        == hashlib.sha256((ckpt / "model.safetensors.index.json").read_bytes()).hexdigest()
    )
    parent = str(ckpt.parent)
    for name in (filenames.SIDECAR_JSON, filenames.CARD_FILE, filenames.LARQL_INDEX_JSON):
        assert parent not in (small_vindex.folder / name).read_text(), name
    result = push_vindex(small_vindex.folder, hub_repo_id, dry_run=True, progress=False)
    assert result.repo_id == hub_repo_id
    from vindex_hub.push import commit_text

    assert all(parent not in text for text in commit_text(index))


def test_an_older_sidecar_with_a_path_is_still_read(vindex_copy: Path):
    data = json.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    data["source"] = {"repo_id": None, "revision": None, "path": "/home/me/ckpt/tiny-v4"}
    (vindex_copy / filenames.SIDECAR_JSON).write_text(json.dumps(data))
    with Vindex.open(vindex_copy) as vx:
        assert (
            vx.index.source.path == "/home/me/ckpt/tiny-v4" and vx.index.display_name == "tiny-v4"
        )


def test_a_single_file_checkpoint_fingerprint_covers_config_and_header(tmp_path: Path):
    from safetensors.numpy import save_file

    folder = tmp_path / "single"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "x"}')
    save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / "model.safetensors"))
    raw = (folder / "model.safetensors").read_bytes()
    header = raw[: 8 + int.from_bytes(raw[:8], "little")]
    want = hashlib.sha256((folder / "config.json").read_bytes() + header).hexdigest()
    assert LocalCheckpoint(folder).content_fingerprint() == want


# ---- friction ------------------------------------------------------------------------------------------
def test_cli_defaults_are_the_librarys_and_shown_in_help():
    import inspect

    args = parser().parse_args(["build", "ckpt", "-o", "out"])
    params = inspect.signature(build_vindex).parameters
    assert (args.num_feats, args.batch_size) == (DEFAULT_NUM_FEATS, DEFAULT_BATCH)
    assert (params["num_feats"].default, params["batch_size"].default) == (
        DEFAULT_NUM_FEATS,
        DEFAULT_BATCH,
    )
    build_help = cli("build", "--help").stdout
    assert (
        f"(default: {DEFAULT_NUM_FEATS})" in build_help
        and "where the decomposition runs" in build_help
    )
    pull_help = cli("pull", "--help").stdout
    assert (
        "binary: a complete vindex folder" in pull_help
        and "kind of Hub repo (default: dataset)" in pull_help
    )
    assert "seed-style sidecars" in cli("convert", "--help").stdout


@pytest.mark.slow
def test_info_shows_human_sizes_and_the_commit_once(
    repo: str, small_vindex: SmallVindex, tmp_path: Path
):
    run = cli("info", repo, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert run.returncode == 0, run.stderr
    commit = json.loads(cli("info", repo, "--json", HF_HUB_CACHE=str(tmp_path / "hub")).stdout)[
        "commit"
    ]
    assert run.stdout.count(commit) == 1
    assert "0.00 GB" not in run.stdout and " kB" in run.stdout


@pytest.mark.slow
def test_every_command_renders_json(repo: str, small_vindex: SmallVindex, tmp_path: Path):
    verified = json.loads(cli("verify", str(small_vindex.folder), "--json").stdout)
    assert verified["ok"] is True and verified["problems"] == []
    pulled = json.loads(
        cli(
            "pull",
            repo,
            "--layers",
            "1",
            "-o",
            str(tmp_path / "one"),
            "--json",
            HF_HUB_CACHE=str(tmp_path / "hub"),
        ).stdout
    )
    assert pulled["folder"] == str(tmp_path / "one") and len(pulled["commit"]) == 40
    assert pulled["bytes"] == sum(
        f.stat().st_size
        for f in (tmp_path / "one").rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(tmp_path / "one").parts)
    )


@pytest.mark.slow
def test_a_401_from_the_bundled_server_says_any_token_works(
    local_hub: LocalHub, small_vindex: SmallVindex, hub_repo_id: str, tmp_path: Path
):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    run = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "push", str(small_vindex.folder), hub_repo_id],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert "HF_TOKEN to any value" in one_error_line(run)


def test_setup_script_skips_an_up_to_date_venv(tmp_path: Path):
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    digest = hashlib.sha256(
        (root / "pyproject.toml").read_bytes() + (root / "scripts" / "setup.sh").read_bytes()
    ).hexdigest()
    (root / ".venv" / ".vindex-hub-setup").write_text(digest + "\n")
    run = subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "up to date" in run.stdout, run.stdout + run.stderr
