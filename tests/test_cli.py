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
        (["info", "{tmp}/not/a/repo/id"], 2, "neither an existing folder nor a Hub repo id"),
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
    assert vindex_hub("verify", hub_repo_id).returncode == 0


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
