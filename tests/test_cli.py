"""The command line: a thin layer whose errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vindex_hub.cli import main, parser
from vindex_hub.compat import subcommands
from vindex_hub.format import filenames, sidecar
from vindex_hub.format.layout import format_size

from vindex_fixtures import NUM_FEATS, SmallVindex


def vindex_hub(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vindex_hub", *args], capture_output=True, text=True, cwd=cwd
    )


def test_every_command_in_the_design_has_a_subcommand():
    commands = subcommands(parser())
    assert {"build", "push", "pull", "info", "verify", "demo", "convert", "local-hub"} <= set(
        commands
    )


def test_info_shows_the_layer_table(small_vindex: SmallVindex, capsys):
    assert main(["info", str(small_vindex.folder)]) == 0
    out = capsys.readouterr().out
    index = sidecar.VindexIndex.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    assert f"{len(index.layers)} layers x {index.num_experts} experts x {NUM_FEATS} feats" in out
    for layer in index.layer_ids:
        assert index.layer(layer).sha256[:16] in out
    assert main(["info", str(small_vindex.folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [e["layer"] for e in info["layers"]] == index.layer_ids
    assert info["num_feats"] == NUM_FEATS


@pytest.mark.slow
def test_verify_exits_non_zero_and_names_the_damaged_layer(
    small_vindex: SmallVindex, tmp_path: Path
):
    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "vindex"))
    ok = vindex_hub("verify", str(folder))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    index = sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())
    with open(folder / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.seek(index.layer(2).file_offset + 12)
        b = f.read(1)
        f.seek(index.layer(2).file_offset + 12)
        f.write(bytes([b[0] ^ 1]))
    bad = vindex_hub("verify", str(folder))
    assert bad.returncode == 1
    assert "layer 2" in bad.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,status,message",
    [
        (["build", "{ckpt}", "-o", "{out}", "--layers", "0-99"], 2, "out of range"),
        (["build", "{ckpt}", "-o", "{out}", "--num-feats", "0"], 2, "--num-feats 0"),
        (
            ["build", "{ckpt}", "-o", "{out}", "--batch-size", "0"],
            2,
            "--batch-size must be at least 1",  # the library's batch_size, as the flag
        ),
        (["build", "{ckpt}", "-o", "{out}", "--citation", "{tmp}/missing.bib"], 2, "--citation"),
        (
            ["build", "{tmp}/no-such-folder", "-o", "{out}"],
            2,
            "not a checkpoint folder",
        ),  # a bad argument (issue 13)
        (["info", "{tmp}/not/a/repo/id"], 2, "/not/a/repo/id: no such folder"),
        (["info", "./does-not-exist"], 2, "./does-not-exist: no such folder"),
        (["verify", "~/does-not-exist"], 2, "~/does-not-exist: no such folder"),
    ],
)
def test_bad_arguments_are_one_line_with_the_right_status(
    args, status, message, small_vindex: SmallVindex, tmp_path: Path
):
    """Bad usage exits 2, bad data 1; either way one line on stderr and no vindex."""
    fill = {
        "ckpt": str(small_vindex.checkpoint),
        "out": str(tmp_path / "out"),
        "tmp": str(tmp_path),
    }
    result = vindex_hub(*[a.format(**fill) for a in args])
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out" / filenames.SIDECAR_JSON).exists()


@pytest.mark.slow
def test_pull_and_info_of_a_hub_repo(
    small_vindex: SmallVindex, local_hub, hub_repo_id: str, tmp_path: Path
):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_folder(folder_path=small_vindex.folder, repo_id=hub_repo_id, repo_type="dataset")
    info = vindex_hub("info", hub_repo_id, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["num_feats"] == NUM_FEATS
    assert local_hub.stats().file(hub_repo_id, filenames.GATE_VECTORS_BIN).bytes_sent == 0

    pulled = vindex_hub("pull", hub_repo_id, "-o", str(tmp_path / "one"), "--layers", "1")
    assert pulled.returncode == 0, pulled.stderr
    index = sidecar.VindexIndex.loads((tmp_path / "one" / filenames.SIDECAR_JSON).read_text())
    assert index.layer_ids == [1]
    # pull says what arrived: the commit it was read at, and the folder's size.
    commit = HfApi().repo_info(hub_repo_id, repo_type="dataset").sha
    one = tmp_path / "one"
    size = sum(  # the vindex's files; not pull's hidden marker
        f.stat().st_size
        for f in one.rglob("*")
        if f.is_file() and not f.relative_to(one).parts[0].startswith(".")
    )
    assert pulled.stdout.strip() == (
        f"pulled {hub_repo_id} at commit {commit} into {one}: {format_size(size)}"
    )
    # verify of a repo downloads it, and says first how much that is.
    tree = [
        e
        for e in api.list_repo_tree(hub_repo_id, repo_type="dataset", recursive=True)
        if isinstance(e, RepoFile)
    ]
    verified = vindex_hub("verify", hub_repo_id)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.splitlines()[0] == (
        f"downloading dataset repo {hub_repo_id}@main: {len(tree)} files, "
        f"{format_size(sum(e.size for e in tree))} (files already in the Hub cache are not fetched again)"
    )
    assert json.loads(vindex_hub("verify", hub_repo_id, "--json").stdout)["ok"] is True


@pytest.mark.slow
def test_card_fields_come_from_options_and_a_config_file(small_vindex: SmallVindex, tmp_path: Path):
    from huggingface_hub import DatasetCard

    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "vindex"))
    (tmp_path / "card.yaml").write_text("author: Example Lab\nyear: 2026\nextra_tags: [deepseek]\n")
    (tmp_path / "cite.bib").write_text("@misc{example_vindex, title = {An example}}\n")
    result = vindex_hub(
        "convert",
        str(folder),
        "--card-config",
        str(tmp_path / "card.yaml"),
        "--license",
        "apache-2.0",
        "--citation",
        str(tmp_path / "cite.bib"),
        "--card-repo-id",
        "example/tiny-vindex",
    )
    assert result.returncode == 0, result.stderr
    card = DatasetCard.load(folder / filenames.CARD_FILE)
    assert card.data.license == "apache-2.0"
    assert "deepseek" in card.data.tags
    assert "@misc{example_vindex" in card.text
    assert "example/tiny-vindex" in card.text
    assert vindex_hub("verify", str(folder)).returncode == 0


# ---- messages a new user meets ---------------------------------------------------------------------
@pytest.mark.slow
def test_verify_on_a_checkpoint_says_it_is_one_and_what_to_run(
    small_vindex: SmallVindex, tmp_path: Path
):
    result = vindex_hub("verify", str(small_vindex.checkpoint))
    assert result.returncode == 1
    assert (
        f"FAIL  {small_vindex.checkpoint} is a model checkpoint, not a vindex (no " in result.stdout
    )
    assert f"build one with: vindex-hub build {small_vindex.checkpoint} -o OUT" in result.stdout
    assert "Errno" not in result.stdout and "FileNotFoundError" not in result.stdout
    (tmp_path / "empty").mkdir()
    result = vindex_hub("verify", str(tmp_path / "empty"))
    assert result.returncode == 1 and "has no gate_vectors_index.json: not a vindex folder" in (
        result.stdout
    )


@pytest.mark.parametrize(
    "command,resumes", [("build", True), ("pull", True), ("push", True), ("info", False)]
)
def test_the_interrupted_message_says_when_rerunning_resumes(
    command: str, resumes: bool, monkeypatch: pytest.MonkeyPatch, capsys
):
    import vindex_hub.cli as cli

    def interrupt(args):
        raise KeyboardInterrupt

    argv = {
        "build": ["build", "ckpt", "-o", "out"],
        "pull": ["pull", "ns/name"],
        "push": ["push", "folder", "ns/name"],
        "info": ["info", "folder"],
    }[command]
    monkeypatch.setattr(cli, f"cmd_{command}", interrupt)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vindex-hub {command}: interrupted")
    assert ("run the same command again to resume where it stopped" in err) == resumes


def test_build_help_documents_every_browse_and_engine_option():
    text = " ".join(vindex_hub("build", "--help").stdout.split())  # argparse wraps lines
    assert "--embeddings-dtype {f16,f32}" in text
    assert "element type of LarQL's embeddings.bin" in text and "(default: f16)" in text
    assert "0 (the default) writes no labels" in text
    assert "--engine {local,ray}" in text and "(default: local)" in text
    assert "--author-kind {org,user,name}" in text
    demo = " ".join(vindex_hub("demo", "--help").stdout.split())
    assert "a small checkpoint to build from" in demo and "deleted at the end" in demo


def test_render_features_escapes_once_and_shows_padding_rows_unquoted():
    from vindex_hub.cli import _render_features

    out = _render_features(
        [2, 3], [[("\\x07", 5, 0.5), ("<id 451>", 451, -0.25), (" the", 9, 0.125)]]
    )
    assert '"\\x07" +0.500' in out  # the label's one backslash, not repr's two
    assert "\\\\" not in out
    assert " <id 451> -0.250 " in out and '" the" +0.125' in out
