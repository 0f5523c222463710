"""The Hub's own transfer path against the bundled server: Xet (the default) and plain LFS.

A real user's client has hf_xet installed and on: uploads go through ``xet-write-token`` to the
server's Xet CAS, downloads of Xet-backed files through hf_xet, ranged reads through the 302 to
the CDN leg. The same steps run with Xet off (``lfs_transfer``: the LFS batch API). Nothing of
either client is patched.
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
import time
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session

from vindex_hub.builder import build_vindex
from vindex_hub.errors import HubError
from vindex_hub.format import filenames
from vindex_hub.hubserver import LocalHub
from vindex_hub.hubserver.xet import bg4_regroup, lz4_frame_decompress, parse_shard
from vindex_hub.load import Vindex
from vindex_hub.pull import pull
from vindex_hub.push import publishable_files, push_vindex

from vindex_fixtures import FRESH_CHECKPOINT, NUM_FEATS, REPO_ROOT, cli

TRANSFERS = ("xet", "lfs")


def _rebuilt_with_layer_1_changed(tmp_path: Path) -> Path:
    """``fresh_vindex``'s checkpoint with every other block scale of layer 1's expert gate_proj
    doubled (E8M0 scales: +1 on the exponent byte), built again."""
    import torch
    from safetensors.torch import load_file, save_file

    source = tmp_path / FRESH_CHECKPOINT
    checkpoint = Path(shutil.copytree(source, tmp_path / "changed-checkpoint"))
    changed = 0
    for shard in sorted(checkpoint.glob("*.safetensors")):
        tensors = load_file(shard)
        keys = [k for k in tensors if re.fullmatch(r"layers\.1\.ffn\.experts\.\d+\.w1\.scale", k)]
        for key in keys:
            raw = tensors[key].view(torch.uint8).clone()
            raw.view(-1)[::2] += 1
            tensors[key] = raw.view(tensors[key].dtype)
            changed += 1
        if keys:
            save_file(tensors, shard, metadata={"format": "pt"})
    assert changed
    return build_vindex(
        checkpoint, tmp_path / "changed", num_feats=NUM_FEATS, device="cpu", progress=False
    ).out


@pytest.fixture(params=TRANSFERS)
def transfer(request: pytest.FixtureRequest, local_hub: LocalHub) -> str:
    """Each test twice: the default client (Xet), then Xet off against an LFS-only server."""
    if request.param == "lfs":
        request.getfixturevalue("lfs_transfer")
    return request.param


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _received(hub: LocalHub, transfer: str) -> int:
    stats = hub.stats()
    return stats.xet_bytes_received if transfer == "xet" else stats.lfs_bytes_received


@pytest.mark.slow
def test_push_pull_and_load_through_each_transfer(
    transfer: str, local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, tmp_path: Path
) -> None:
    vindex_copy = fresh_vindex
    files = publishable_files(vindex_copy)
    lfs_bytes = sum(
        f.size for f in files if f.path.endswith((".bin", ".parquet", ".npy", ".safetensors"))
    )
    first = push_vindex(vindex_copy, hub_repo_id, progress=False)
    assert first.commit_oid and len(first.uploaded) == len(files)
    received = _received(local_hub, transfer)
    assert 0 < received <= lfs_bytes + 4096 * len(files)
    other = "lfs" if transfer == "xet" else "xet"
    assert _received(local_hub, other) == 0  # nothing went the other way
    tree = {
        e.path: e
        for e in HfApi().list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True)
        if hasattr(e, "lfs")
    }
    binary = tree[filenames.GATE_VECTORS_BIN]
    assert (binary.xet_hash is not None) == (transfer == "xet")

    # An unchanged re-push sends nothing and makes no commit.
    local_hub.reset_stats()
    again = push_vindex(vindex_copy, hub_repo_id, progress=False)
    assert not again.uploaded and again.commit_oid == first.commit_oid
    assert local_hub.stats().bytes_received == 0

    # A pull request leaves main alone.
    card = vindex_copy / filenames.CARD_FILE
    card.write_text(card.read_text(encoding="utf-8") + "\nproposed\n", encoding="utf-8")
    pr = push_vindex(vindex_copy, hub_repo_id, create_pr=True, progress=False)
    assert pr.pr_url and HfApi().repo_info(hub_repo_id, repo_type="dataset").sha == first.commit_oid

    # A pull materializes the same bytes; every loader mode reads the same layer.
    out = pull(hub_repo_id, tmp_path / "pulled", cache_dir=tmp_path / "cache")
    for f in files:
        if f.path != filenames.CARD_FILE:
            assert _sha256(out / f.path) == _sha256(vindex_copy / f.path), f.path
    with Vindex.open(vindex_copy) as local:
        expected = np.array(local.layer(1))
    for mode in ("snapshot", "lazy", "arrow"):
        with Vindex.open(hub_repo_id, mode=mode, cache_dir=tmp_path / f"cache-{mode}") as vx:
            np.testing.assert_array_equal(np.asarray(vx.layer(1)), expected, err_msg=mode)

    # One layer re-built (layer 1 of a checkpoint whose layer-1 gate_proj changed): the push
    # sends that layer's files and the files describing them, never layer 0's split.
    rebuilt = _rebuilt_with_layer_1_changed(tmp_path)
    local_hub.reset_stats()
    changed = push_vindex(rebuilt, hub_repo_id, progress=False)
    sent = {f.path for f in changed.uploaded}
    assert filenames.GATE_VECTORS_BIN in sent and not any("layer_00" in p for p in sent)
    assert any("layer_01" in p for p in sent)
    lfs_sent = sum(
        f.size for f in changed.uploaded if f.path.endswith((".bin", ".parquet", ".npy"))
    )
    assert 0 < _received(local_hub, transfer) <= lfs_sent + 4096 * len(sent)
    with Vindex.open(hub_repo_id, mode="lazy", cache_dir=tmp_path / "cache-after") as vx:
        with Vindex.open(rebuilt) as local:
            np.testing.assert_array_equal(np.asarray(vx.layer(1)), np.asarray(local.layer(1)))

    # info / verify of the repo, as a user runs them (a subprocess with our environment).
    for command in ("info", "verify"):
        done = cli(command, hub_repo_id)
        assert done.returncode == 0, (command, done.stderr)


def test_xet_dedup_sends_about_the_changed_part(
    local_hub: LocalHub, hub_repo_id: str, tmp_path: Path
) -> None:
    """A file with 8 KiB of its 4 MiB rewritten: hf_xet re-sends only the chunks around them
    (content-defined chunks of ~64 KiB), and the server's counters say so."""
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    path = tmp_path / "w.bin"
    data = bytearray(os.urandom(4 * 2**20))
    path.write_bytes(bytes(data))
    api.upload_file(
        path_or_fileobj=str(path), path_in_repo="w.bin", repo_id=hub_repo_id, repo_type="dataset"
    )
    first = local_hub.stats().xet_bytes_received
    assert len(data) <= first < len(data) + 64 * 1024  # random bytes: stored as they are
    data[2**21 : 2**21 + 8192] = os.urandom(8192)
    path.write_bytes(bytes(data))
    local_hub.reset_stats()
    api.upload_file(
        path_or_fileobj=str(path), path_in_repo="w.bin", repo_id=hub_repo_id, repo_type="dataset"
    )
    stats = local_hub.stats()
    assert 8192 < stats.xet_bytes_received < 512 * 1024 and stats.lfs_bytes_received == 0
    assert stats.file(hub_repo_id, "w.bin").bytes_received <= stats.xet_bytes_received
    assert local_hub.storage.blob_path(hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_xet_headers_tree_and_tokens(local_hub: LocalHub, hub_repo_id: str, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    # Compressible data, so hf_xet's LZ4 and byte-grouped LZ4 chunks are both decoded back.
    data = np.linspace(0, 1, 400_000, dtype=np.float32).tobytes() + b"text " * 50_000
    (tmp_path / "w.bin").write_bytes(data)
    info = api.upload_file(
        path_or_fileobj=str(tmp_path / "w.bin"),
        path_in_repo="w.bin",
        repo_id=hub_repo_id,
        repo_type="dataset",
    )
    sha = hashlib.sha256(data).hexdigest()
    assert local_hub.storage.blob_path(sha).read_bytes() == data  # rebuilt from the xorbs
    stats = local_hub.stats()
    assert (
        0 < stats.file(hub_repo_id, "w.bin").bytes_received <= stats.xet_bytes_received < len(data)
    )
    url = hf_hub_url(hub_repo_id, "w.bin", repo_type="dataset")
    head = get_session().head(url, headers=build_hf_headers(), follow_redirects=False)
    assert head.status_code == 302
    xet_hash = head.headers["X-Xet-Hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", xet_hash)
    assert head.headers["X-Repo-Commit"] == info.oid
    assert head.headers["X-Linked-Etag"] == f'"{sha}"' and head.headers["X-Linked-Size"] == str(
        len(data)
    )
    token_url = head.links["xet-auth"]["url"]
    assert token_url.endswith(f"/xet-read-token/{info.oid}")
    answer = get_session().get(token_url, headers=build_hf_headers())
    body = answer.json()
    assert answer.headers["X-Xet-Cas-Url"] == body["casUrl"] == local_hub.xet_store.cas_url
    assert answer.headers["X-Xet-Access-Token"] == body["accessToken"]
    assert int(answer.headers["X-Xet-Token-Expiration"]) == body["exp"] > time.time()
    tree = get_session().get(f"{local_hub.url}/api/datasets/{hub_repo_id}/tree/main").json()
    assert {e["path"]: e.get("xetHash") for e in tree}["w.bin"] == xet_hash
    # What the server parsed is what hf_xet wrote: its shards name this file and its sha256.
    shards = [
        parse_shard(p.read_bytes(), p.name) for p in local_hub.xet_store.shard_dir.glob("*.mdb")
    ]
    assert any(f.xet_hash == xet_hash and f.sha256 == sha for fs in shards for f in fs)
    # An LFS-only server hands out no Xet token and no Xet headers.
    local_hub.transfer = "lfs"
    try:
        assert get_session().get(token_url, headers=build_hf_headers()).status_code == 404
        head = get_session().head(url, headers=build_hf_headers(), follow_redirects=False)
        assert "X-Xet-Hash" not in head.headers and "xet-auth" not in head.links
    finally:
        local_hub.transfer = "xet"


def test_chunk_codecs() -> None:
    # An LZ4 frame by hand: one block, literals "abcd" then a 12-byte overlapping match.
    block = bytes([0x48]) + b"abcd" + (4).to_bytes(2, "little")
    frame = (0x184D2204).to_bytes(4, "little") + bytes([0x60, 0x40, 0x82])
    frame += len(block).to_bytes(4, "little") + block + (0).to_bytes(4, "little")
    assert lz4_frame_decompress(frame) == b"abcd" * 4
    assert bg4_regroup(b"aebfcd") == b"abcdef"  # bytes 0 of each 4 (a, e), bytes 1 (b, f), ...


@pytest.mark.slow  # the client's own back-off on a 500 runs minutes
@pytest.mark.parametrize("status", [500, 403])
def test_a_refused_xet_token_fails_push_in_one_line_and_the_next_push_resumes(
    local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, status: int
) -> None:
    from conftest import HUB_TOKEN

    vindex_copy = fresh_vindex
    local_hub.inject_fault(
        "error", status=status, method="GET", path="*/xet-write-token/*", times=None
    )
    with pytest.raises(HubError) as caught:
        push_vindex(vindex_copy, hub_repo_id, progress=False)
    message = str(caught.value)
    assert "\n" not in message and hub_repo_id in message and "Xet transfer" in message
    assert "nothing was committed" in message and "ConnectionError" in message  # hf_xet's own
    assert HUB_TOKEN not in message
    assert [c.title for c in HfApi().list_repo_commits(hub_repo_id, repo_type="dataset")] == [
        "initial commit"
    ]
    local_hub.clear_faults()
    done = push_vindex(vindex_copy, hub_repo_id, progress=False)
    assert done.commit_oid and len(done.uploaded) == len(publishable_files(vindex_copy))


@pytest.mark.parametrize("failure", ["read token refused", "xorbs missing from the CAS"])
@pytest.mark.slow
def test_a_failed_xet_download_fails_loads_in_one_line_and_the_next_run_resumes(
    local_hub: LocalHub, hub_repo_id: str, fresh_vindex: Path, tmp_path: Path, failure: str
) -> None:
    from huggingface_hub.utils import _xet

    push_vindex(fresh_vindex, hub_repo_id, progress=False)
    xorbs = local_hub.xet_store.xorb_dir
    hidden = xorbs.with_name("xorbs-hidden-by-test")
    _xet.XET_CONNECTION_INFO_CACHE.clear()
    if failure == "read token refused":
        local_hub.inject_fault(
            "error", status=403, method="GET", path="*/xet-read-token/*", times=None
        )
    else:  # hf_xet itself fails: the chunks it must read are gone
        xorbs.rename(hidden)
    try:
        for name, load in (
            ("pull", lambda: pull(hub_repo_id, tmp_path / "out", cache_dir=tmp_path / "c1")),
            (
                "snapshot",
                lambda: Vindex.open(hub_repo_id, mode="snapshot", cache_dir=tmp_path / "c2"),
            ),
            ("arrow", lambda: Vindex.open(hub_repo_id, mode="arrow").layer(1)),
        ):
            with pytest.raises(HubError) as caught:
                load()
            message = str(caught.value)
            assert "\n" not in message and hub_repo_id in message, (name, message)
    finally:
        local_hub.clear_faults()
        if hidden.exists():
            hidden.rename(xorbs)
    out = pull(hub_repo_id, tmp_path / "out", cache_dir=tmp_path / "c1")  # the next run resumes
    binary = filenames.GATE_VECTORS_BIN
    assert _sha256(out / binary) == _sha256(fresh_vindex / binary)


@pytest.mark.slow
def test_local_hub_prints_what_a_client_needs_and_a_push_with_it_works(
    tmp_path: Path, small_vindex
) -> None:
    """A new user: start ``vindex-hub local-hub``, export the lines it prints, push (Xet on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    env["PYTHONPATH"] = str(REPO_ROOT)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vindex_hub",
            "local-hub",
            "--root",
            str(tmp_path / "root"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        lines = []
        while len(lines) < 3:
            line = server.stdout.readline()
            assert line, server.stderr.read()
            lines.append(line.strip())
        exports = dict(
            ln.removeprefix("export ").split("=", 1) for ln in lines if ln.startswith("export ")
        )
        assert set(exports) == {"HF_ENDPOINT", "HF_TOKEN"}  # Xet on: nothing else needed
        push = subprocess.run(
            [sys.executable, "-m", "vindex_hub", "push", str(small_vindex.folder), "me/tiny-vx"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**env, **exports},
            timeout=300,
        )
        assert push.returncode == 0, push.stderr
        assert "pushed to dataset repo me/tiny-vx" in push.stdout
        stats = json.loads(get_session().get(f"{exports['HF_ENDPOINT']}/_local_hub/stats").content)
        assert stats["xet_bytes_received"] > 0 and stats["lfs_bytes_received"] == 0
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
