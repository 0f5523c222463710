"""Integrity and safety at the edges, by fault injection: concurrent writers of one folder, bit flips
in the block cache, a Hub that refuses after main moved, symbolic links out of a pushed folder, and
hostile sizes in a sidecar or card. Each test fails without the guard it names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, constants

from vindex_hub.builder import build_vindex
from vindex_hub.convert import convert_vindex
from vindex_hub.errors import (
    CachedCopyWarning,
    HubError,
    IntegrityError,
    OutputConflictError,
    VindexError,
    VindexFormatError,
)
from vindex_hub.folderlock import FolderLock
from vindex_hub.format import card_data, filenames, layout, sidecar
from vindex_hub.hub.blockcache import BlockCache, default_cache_root
from vindex_hub.hubserver import LocalHub
from vindex_hub.load import Vindex
from vindex_hub.pull import pull
from vindex_hub.push import publishable_files, push_vindex
from vindex_hub.verify import verify_source, verify_vindex

from vindex_fixtures import NUM_FEATS, REPO_ROOT, SmallVindex, binary_layer, cli, upload


def one_error_line(run: subprocess.CompletedProcess, status: int = 1) -> str:
    assert run.returncode == status, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


@pytest.fixture
def repo(local_hub: LocalHub, small_vindex: SmallVindex, hub_repo_id: str) -> str:
    return upload(small_vindex.folder, hub_repo_id)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hub-cache"


def _consistent(folder: Path) -> None:
    """The folder is one vindex: every file agrees with the others (what racing writers broke)."""
    report = verify_vindex(folder)
    assert report.ok, report.problems


# ---- 1. one writer per output folder ---------------------------------------------------------------
_HOLD = """
import sys, time
from vindex_hub.folderlock import FolderLock
with FolderLock(sys.argv[1], "build"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder), str(seconds)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_build_convert_and_pull_are_refused_while_another_process_holds_the_folder(
    small_vindex: SmallVindex, repo: str, tmp_path: Path
) -> None:
    out = tmp_path / "vindex"
    holder = _holder(out)
    try:
        for args in (
            (
                "build",
                str(small_vindex.checkpoint),
                "-o",
                str(out),
                "--num-feats",
                str(NUM_FEATS),
                "--device",
                "cpu",
                "--quiet",
            ),
            ("convert", str(out)),
            ("pull", repo, "-o", str(out)),
        ):
            line = one_error_line(cli(*args, HF_HUB_CACHE=str(tmp_path / "hub")))
            assert f"{out} is in use by another vindex-hub process" in line, line
            assert f"pid {holder.pid}" in line and "a build" in line, line
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [filenames.OUTPUT_LOCK, filenames.OUTPUT_LOCK_INFO]
        )  # nothing written by the refused commands
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the folder is free again, no cleanup needed.
    with FolderLock(out, "build"):
        info = json.loads((out / filenames.OUTPUT_LOCK_INFO).read_text())
        assert info["pid"] == os.getpid() and info["verb"] == "build"
    assert not (out / filenames.OUTPUT_LOCK_INFO).exists()


def test_the_lock_is_refused_within_one_process_too(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "out", "pull"):
        with pytest.raises(OutputConflictError, match=r"in use by .*a pull by pid"):
            FolderLock(tmp_path / "out", "build")
    FolderLock(tmp_path / "out", "build").release()  # free once released


@pytest.mark.slow
def test_racing_cli_builds_with_different_layers_never_leave_disagreeing_files(
    small_vindex: SmallVindex, tmp_path: Path
) -> None:
    for round_ in range(2):
        out = tmp_path / f"race-{round_}"
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vindex_hub",
                    "build",
                    str(small_vindex.checkpoint),
                    "-o",
                    str(out),
                    "--layers",
                    layers,
                    "--num-feats",
                    str(NUM_FEATS),
                    "--device",
                    "cpu",
                    "--workers",
                    "1",
                    "--quiet",
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for layers in ("0-1", "2")
        ]
        results = [(p.wait(timeout=300), *p.communicate()) for p in runs]
        assert any(rc == 0 for rc, _, _ in results), results
        for rc, _, err in results:
            if rc != 0:  # the loser: one line, the lock or the other build's state named
                assert rc == 1 and len(err.strip().splitlines()) == 1, err
                assert "Traceback" not in err and str(out) in err, err
        _consistent(out)


@pytest.mark.slow
def test_racing_api_builds_and_pulls_in_threads_never_leave_disagreeing_files(
    small_vindex: SmallVindex, repo: str, tmp_path: Path, cache: Path
) -> None:
    def race(jobs) -> list[BaseException | None]:
        outcome: list[BaseException | None] = [None] * len(jobs)
        gate = threading.Barrier(len(jobs))

        def run(i: int) -> None:
            gate.wait()
            try:
                jobs[i]()
            except BaseException as exc:
                outcome[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        return outcome

    out = tmp_path / "built"
    errors = race(
        [
            lambda layers=layers: build_vindex(
                small_vindex.checkpoint,
                out,
                num_feats=NUM_FEATS,
                layers=layers,
                device="cpu",
                workers=1,
                progress=False,
            )
            for layers in ("0-1", "2")
        ]
    )
    assert errors.count(None) >= 1 and all(
        isinstance(e, OutputConflictError) for e in errors if e
    ), errors
    _consistent(out)

    pulled = tmp_path / "pulled"
    errors = race([lambda: pull(repo, pulled, cache_dir=cache) for _ in range(2)])
    assert errors.count(None) >= 1 and all(
        isinstance(e, OutputConflictError) for e in errors if e
    ), errors
    _consistent(pulled)


def test_the_lock_files_are_bookkeeping_never_published(vindex_copy: Path) -> None:
    with FolderLock(vindex_copy, "convert"):
        for name in (filenames.OUTPUT_LOCK, filenames.OUTPUT_LOCK_INFO):
            assert (vindex_copy / name).exists() and filenames.is_bookkeeping_path(name)
        assert not {filenames.OUTPUT_LOCK, filenames.OUTPUT_LOCK_INFO} & {
            f.path for f in publishable_files(vindex_copy)
        }
    convert_vindex(vindex_copy)  # takes and frees the lock itself
    _consistent(vindex_copy)


# ---- 2. the block cache: every cached range checked against its digest ---------------------------
def _flip_sign(path: Path, float_index: int) -> None:
    data = bytearray(path.read_bytes())
    data[4 * float_index + 3] ^= 0x80  # the sign bit of a little-endian float32: the norm is kept
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["expert", "layer", "layer, verify=False"])
def test_a_flipped_sign_bit_in_the_block_cache_is_caught(
    local_hub: LocalHub,
    small_vindex: SmallVindex,
    repo: str,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    layer, expert = 1, 2
    want = binary_layer(small_vindex.folder, layer)
    expected = want[expert] if what == "expert" else want
    verify = what != "layer, verify=False"  # no sha256 check: the digest alone stands guard

    def read(vx: Vindex) -> np.ndarray:
        return vx.expert(layer, expert) if what == "expert" else vx.layer(layer)

    with Vindex.open(repo, cache_dir=cache, verify=verify) as vx:
        np.testing.assert_array_equal(read(vx), expected)
        e, etag = vx.index.layer(layer), vx.remote.etag
    k, h = NUM_FEATS, want.shape[-1]
    start = e.file_offset + (expert * layout.expert_nbytes(k, h) if what == "expert" else 0)
    end = start + (layout.expert_nbytes(k, h) if what == "expert" else e.nbytes)
    block = BlockCache(default_cache_root(cache)).get(etag, start, end)
    assert block is not None
    _flip_sign(block, 5)
    # Offline, nothing to heal from: refused, naming the block; never the flipped value.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with Vindex.open(repo, cache_dir=cache, verify=verify) as vx:
        with pytest.raises(IntegrityError, match=f"differs from the sha256 recorded|layer {layer}"):
            read(vx)
    # The bad block was dropped; online it is fetched again and the true value comes back.
    _flip_sign_if_present = BlockCache(default_cache_root(cache)).get(etag, start, end)
    assert _flip_sign_if_present is None
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    local_hub.reset_stats()
    with Vindex.open(repo, cache_dir=cache, verify=verify) as vx:
        np.testing.assert_array_equal(read(vx), expected)
    assert local_hub.stats().bytes_sent >= end - start  # refetched


def test_a_flipped_block_is_refetched_online_without_an_error(
    local_hub: LocalHub, small_vindex: SmallVindex, repo: str, cache: Path
) -> None:
    with Vindex.open(repo, cache_dir=cache) as vx:
        vx.expert(0, 1)
        e, etag = vx.index.layer(0), vx.remote.etag
    k, h = NUM_FEATS, vx.hidden_size
    start = e.file_offset + layout.expert_nbytes(k, h)
    blocks = BlockCache(default_cache_root(cache))
    block = blocks.get(etag, start, start + layout.expert_nbytes(k, h))
    _flip_sign(block, 0)
    with Vindex.open(repo, cache_dir=cache) as vx:
        got = vx.expert(0, 1)
        assert vx._reader.cache.corrupt_found  # seen, and said where
    np.testing.assert_array_equal(got, binary_layer(small_vindex.folder, 0)[1])
    assert got[0, 0] == binary_layer(small_vindex.folder, 0)[1][0, 0]


def test_a_block_without_its_digest_counts_as_absent(tmp_path: Path) -> None:
    blocks = BlockCache(tmp_path / "c")
    path, wrote = blocks.obtain("e" * 64, 0, 4, lambda f: f.write(b"abcd"))
    assert wrote and blocks.digest_path("e" * 64, 0, 4).is_file()
    assert blocks.usage() == (1, 4)  # the digest is not a block
    blocks.digest_path("e" * 64, 0, 4).unlink()
    assert blocks.get("e" * 64, 0, 4) is None
    assert BlockCache(tmp_path / "c").obtain("e" * 64, 0, 4, lambda f: f.write(b"abcd"))[1]


# ---- 3. a Hub that refuses after main moved ---------------------------------------------------------
def _move_main(repo_id: str) -> str:
    """A new commit on main (the card changes); returns it."""
    api = HfApi()
    api.upload_file(
        path_or_fileobj=b"# moved on\n",
        path_in_repo="CHANGELOG.md",
        repo_id=repo_id,
        repo_type="dataset",
    )
    return api.list_repo_refs(repo_id, repo_type="dataset").branches[0].target_commit


@pytest.mark.slow
@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_refusing_hub_is_said_and_fails_verify(
    local_hub: LocalHub, repo: str, cache: Path, status: int
) -> None:
    first = verify_source(repo, cache_dir=cache)
    assert first.ok, first.problems
    with Vindex.open(repo, cache_dir=cache) as vx:  # online: confirmed, nothing to say
        old = vx.commit
        assert vx.unconfirmed is None
        vx.layer(0)
    with Vindex.open(repo, mode="snapshot", cache_dir=cache) as vx:
        vx.layer(0)
    new = _move_main(repo)
    assert new != old
    local_hub.inject_fault("error", status=status, times=None)
    with pytest.warns(CachedCopyWarning, match=f"the Hub refused.*{old}"):
        report = verify_source(repo, cache_dir=cache)
    assert not report.ok and "vindex OK" not in report.render()
    assert any(
        "could not confirm revision 'main'" in p and str(status) in p and old in p
        for p in report.problems
    ), report.problems
    for mode in ("lazy", "snapshot"):
        with pytest.warns(CachedCopyWarning, match=f"the Hub refused.*{old}"):
            vx = Vindex.open(repo, mode=mode, cache_dir=cache)
        with vx:
            assert vx.commit == old and "refused" in vx.unconfirmed
            vx.layer(0)  # the cached commit's bytes, still checked
    local_hub.clear_faults()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CachedCopyWarning)  # confirmed again: no warning
        with Vindex.open(repo, cache_dir=cache) as vx:
            assert vx.commit == new and vx.unconfirmed is None


@pytest.mark.slow
def test_cli_verify_and_pull_say_the_hub_refused(
    local_hub: LocalHub, repo: str, tmp_path: Path
) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    assert cli("verify", repo, **env).returncode == 0
    assert cli("info", repo, **env).returncode == 0
    old = HfApi().list_repo_refs(repo, repo_type="dataset").branches[0].target_commit
    _move_main(repo)
    local_hub.inject_fault("error", status=403, times=None)
    run = cli("verify", repo, **env)
    assert run.returncode == 1 and "vindex OK" not in run.stdout, run.stdout + run.stderr
    assert "could not confirm revision 'main'" in run.stdout and "403" in run.stdout
    assert "warning: " in run.stderr and old in run.stderr  # one line, no warnings.warn source
    said = [ln for ln in run.stderr.splitlines() if "the Hub refused" in ln]
    assert len(said) == 1 and said[0].startswith("vindex-hub: warning: "), run.stderr
    assert "Traceback" not in run.stderr and "warnings.warn" not in run.stderr, run.stderr
    info = cli("info", repo, **env)
    assert "the Hub refused" in info.stderr and old in info.stderr
    pulled = cli("pull", repo, "-o", str(tmp_path / "pulled"), **env)
    assert "the Hub refused" in pulled.stderr, pulled.stderr


@pytest.mark.slow
def test_an_unreachable_hub_is_said_too(repo: str, tmp_path: Path, local_hub: LocalHub) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    assert cli("verify", repo, **env).returncode == 0
    run = cli("verify", repo, HF_ENDPOINT="http://127.0.0.1:9", **env)
    assert run.returncode == 1 and "could not confirm revision" in run.stdout, run.stdout


def test_offline_verify_warns_but_passes(
    repo: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert verify_source(repo, cache_dir=cache).ok
    commit = HfApi().list_repo_refs(repo, repo_type="dataset").branches[0].target_commit
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    report = verify_source(repo, cache_dir=cache)
    assert report.ok and any("HF_HUB_OFFLINE is set" in w for w in report.warnings)
    # A commit sha needs no confirmation.
    assert not verify_source(repo, commit, cache_dir=cache).warnings


# ---- 4. push: owned files only, no link out ----------------------------------------------------------
@pytest.mark.parametrize("name", ["notes.txt", filenames.VAR_PLOT_FILE])
def test_a_link_out_is_refused_by_verify_and_push(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str, tmp_path: Path, name: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    link = vindex_copy / name
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    report = verify_vindex(vindex_copy)
    assert not report.ok and any(name in p and "outside the folder" in p for p in report.problems)
    with pytest.raises(VindexFormatError, match="outside the folder"):
        push_vindex(vindex_copy, hub_repo_id, progress=False, include=["notes.txt"])
    assert not HfApi().repo_exists(hub_repo_id, repo_type="dataset")
    line = one_error_line(cli("push", str(vindex_copy), hub_repo_id))
    assert "outside the folder" in line and "root:x" not in line


def test_a_folder_linked_out_is_refused(vindex_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.move(str(vindex_copy / "images"), outside)
    (vindex_copy / "images").symlink_to(outside, target_is_directory=True)
    report = verify_vindex(vindex_copy)
    assert not report.ok and any("images" in p for p in report.problems)


def test_a_link_inside_the_folder_is_published_with_its_content(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str
) -> None:
    plot = vindex_copy / filenames.VAR_PLOT_FILE
    real = vindex_copy / "images" / "plot-original.png"
    plot.rename(real)
    plot.symlink_to(real.name)
    assert verify_vindex(vindex_copy).ok
    result = push_vindex(vindex_copy, hub_repo_id, progress=False)
    assert filenames.VAR_PLOT_FILE in {f.path for f in result.uploaded}
    assert "images/plot-original.png" not in {f.path for f in result.uploaded}  # not owned
    got = HfApi().hf_hub_download(hub_repo_id, filenames.VAR_PLOT_FILE, repo_type="dataset")
    assert Path(got).read_bytes() == real.read_bytes()


@pytest.mark.slow
def test_push_publishes_only_owned_files_plus_those_named(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str
) -> None:
    (vindex_copy / "notes.txt").write_text("my private notes\n")
    (vindex_copy / "LICENSE").write_text("MIT\n")
    owned = {f.path for f in publishable_files(vindex_copy)}
    assert owned and all(filenames.is_vindex_path(p) for p in owned)
    result = push_vindex(vindex_copy, hub_repo_id, progress=False)
    tree = set(HfApi().list_repo_files(hub_repo_id, repo_type="dataset"))
    assert "notes.txt" not in tree and "LICENSE" not in tree and owned <= tree
    assert any("notes.txt" in n and "--include" in n for n in result.notes), result.notes
    again = push_vindex(vindex_copy, hub_repo_id, progress=False, include=["LICENSE"])
    assert [f.path for f in again.uploaded] == ["LICENSE"]
    run = cli("push", str(vindex_copy), hub_repo_id, "--include", "notes.*", "--dry-run")
    assert run.returncode == 0 and "upload     notes.txt" in run.stdout, run.stdout + run.stderr


# ---- 7. sizes and dimensions bounded before parsing or allocating ------------------------------------
def _edit_sidecar(folder: Path, edit) -> None:
    path = folder / filenames.SIDECAR_JSON
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_routed_experts", -8),
        ("hidden_size", 0),
        ("hidden_size", 2**40),
        ("n_routed_experts", 4.5),
        ("num_feats", -16),
        ("num_hidden_layers", 10**6),
    ],
)
def test_a_sidecar_with_negative_or_absurd_dimensions_is_refused_in_one_line(
    vindex_copy: Path, key: str, value: object
) -> None:
    def edit(data: dict) -> None:
        if key == "num_feats":
            data[key] = value
        elif key == "num_hidden_layers":
            data["model_config"][key] = value
        else:
            data["model_config"]["moe"][key] = value

    _edit_sidecar(vindex_copy, edit)
    with pytest.raises(VindexFormatError, match=f"{key} is {value!r}, expected an integer"):
        Vindex.open(vindex_copy)
    line = one_error_line(cli("info", str(vindex_copy)))
    assert key in line and "expected an integer" in line
    assert not verify_vindex(vindex_copy).ok


def test_negative_experts_and_feats_together_never_reach_a_layer_read(vindex_copy: Path) -> None:
    """-8 x -16 multiplies to a positive size: the layout check alone passed it."""

    def edit(data: dict) -> None:
        data["model_config"]["moe"]["n_routed_experts"] *= -1
        data["num_feats"] *= -1
        for e in data["layers"].values():
            e["shape"] = [-e["shape"][0], -e["shape"][1], e["shape"][2]]

    _edit_sidecar(vindex_copy, edit)
    with pytest.raises(VindexFormatError, match="num_feats is -8"):
        Vindex.open(vindex_copy)


def test_a_huge_sidecar_is_refused_by_size_before_parsing(vindex_copy: Path) -> None:
    path = vindex_copy / filenames.SIDECAR_JSON
    data = json.loads(path.read_text())
    data["padding"] = "x" * (sidecar.MAX_SIDECAR_BYTES + 1)
    path.write_text(json.dumps(data))
    started = time.monotonic()
    with pytest.raises(VindexFormatError, match="refusing to parse it"):
        Vindex.open(vindex_copy)
    line = one_error_line(cli("info", str(vindex_copy)))
    assert "above the 8,388,608 a sidecar may hold" in line
    assert time.monotonic() - started < 30


def test_a_huge_remote_sidecar_is_refused_before_it_is_downloaded(
    local_hub: LocalHub, vindex_copy: Path, hub_repo_id: str, cache: Path
) -> None:
    path = vindex_copy / filenames.SIDECAR_JSON
    data = json.loads(path.read_text())
    data["padding"] = "x" * (sidecar.MAX_SIDECAR_BYTES + 1)
    path.write_text(json.dumps(data))
    repo_id = upload(vindex_copy, hub_repo_id)
    local_hub.reset_stats()
    with pytest.raises(VindexFormatError, match="refusing to download it"):
        Vindex.open(repo_id, cache_dir=cache)
    assert local_hub.stats().bytes_sent < 2**20


@pytest.mark.parametrize("part", ["card", "front matter"])
def test_a_huge_card_is_refused_before_its_yaml_is_parsed(vindex_copy: Path, part: str) -> None:
    card = vindex_copy / filenames.CARD_FILE
    text = card.read_text()
    if part == "card":  # a small front matter, a body above the card limit
        text += "x" * (card_data.MAX_CARD_BYTES + 1)
    else:  # a front matter above its limit, in a card below the card limit
        filler = "".join(
            f"k{i}: {'v' * 60}\n" for i in range(card_data.MAX_FRONT_MATTER_BYTES // 60)
        )
        text = text.replace("---\n", "---\n" + filler, 1)
    card.write_text(text)
    started = time.monotonic()
    with (
        Vindex.open(vindex_copy) as vx,
        pytest.raises(VindexFormatError, match="refusing to parse"),
    ):
        vx.card_data
    assert time.monotonic() - started < 5  # parsing 2 MB of YAML takes far longer
    assert not verify_vindex(vindex_copy).ok


def test_a_real_card_and_sidecar_stay_far_below_the_limits(small_vindex: SmallVindex) -> None:
    """Per layer, a card's front matter and a sidecar grow by well under 1 KiB: at MAX_LAYERS layers
    both still fit (so the limits refuse nothing real)."""
    index = sidecar.VindexIndex.load(small_vindex.folder / filenames.SIDECAR_JSON)
    n = len(index.layers)
    side = (small_vindex.folder / filenames.SIDECAR_JSON).stat().st_size
    front = card_data._FRONT_MATTER.match(
        (small_vindex.folder / filenames.CARD_FILE).read_text()
    ).group(1)
    assert side / n * sidecar.MAX_LAYERS < sidecar.MAX_SIDECAR_BYTES
    assert len(front) / n * 1024 < card_data.MAX_FRONT_MATTER_BYTES  # 1024 layers


def test_hub_errors_are_vindex_errors() -> None:
    assert issubclass(HubError, VindexError) and issubclass(CachedCopyWarning, UserWarning)
