"""``vindex-hub demo``: the README's first command, run for real (build, verify, push, load back)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from vindex_hub.demo import DEMO_REPO_ID, LAZY_LAYER, MODEL_DIMS, NUM_FEATS, run_demo
from vindex_hub.format import layout, mirror
from vindex_hub.push import publishable_files

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYER_BYTES = layout.layer_nbytes(MODEL_DIMS["num_experts"], NUM_FEATS, MODEL_DIMS["hidden_size"])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("demo") / "work"
    run = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ),
        timeout=300,
    )
    return workdir, run


@pytest.mark.slow
def test_demo_command_runs_the_whole_loop(demo_run, local_hub) -> None:
    workdir, run = demo_run
    assert run.returncode == 0, run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()[1:]}
    n_files = len(publishable_files(workdir / "vindex"))
    dims = f"{MODEL_DIMS['num_layers']} layers x {MODEL_DIMS['num_experts']} experts x {NUM_FEATS} feats"
    assert dims in lines["build"]
    assert "binary, sidecar, mirror and card agree" in lines["verify"]
    assert f"{n_files} files" in lines["push"]
    assert f"dataset repo {DEMO_REPO_ID} on the local Hub at http://127.0.0.1:" in lines["push"]
    # The default client's path, as a real user's: the binary and parquet went through Xet.
    assert re.search(r"through Xet: [1-9][0-9.]* [kMG]?B of chunks stored", lines["push"])
    # One lazy layer costs exactly that layer's bytes (the server's byte counter).
    assert (
        f"fetched {LAYER_BYTES:,} B for a {LAYER_BYTES:,} B layer (1.00x)" in lines["Vindex.open"]
    )
    assert (
        f'(repo, "{mirror.layer_config(LAZY_LAYER, MODEL_DIMS["num_layers"])}", split="train"): equals gate_vectors.bin'
        in lines["load_dataset"]
    )
    assert f"{n_files} files, byte-identical to the folder" in lines["snapshot"]
    assert f"kept in {workdir}" in lines["files"]
    # The demo's server kept its repos in the work folder, not in this test session's server.
    assert (workdir / "hub" / "repos" / "datasets" / DEMO_REPO_ID / "repo.json").is_file()
    with pytest.raises(RepositoryNotFoundError):
        HfApi().repo_info(DEMO_REPO_ID, repo_type="dataset")


@pytest.mark.slow
def test_run_demo_in_a_process_that_imported_the_clients(
    demo_run, capsys: pytest.CaptureFixture
) -> None:
    # This process imported huggingface_hub pointed at another server (conftest): the demo's client
    # steps still reach the demo's own server. The second run in the same work folder reuses the build,
    # finds the repo up to date and the lazy layer in the block cache.
    workdir, _ = demo_run
    summary = run_demo(workdir=workdir)
    assert summary.kept and summary.pushed_files == 0 and summary.commit_url is None
    assert summary.lazy_bytes_fetched == 0 and summary.lazy_layer_bytes == LAYER_BYTES
    assert summary.layers == list(range(MODEL_DIMS["num_layers"]))
    out = capsys.readouterr().out
    assert "nothing sent" in out and "cached by an earlier run" in out
