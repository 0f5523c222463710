"""Gated repos on the local Hub server, as the real Hub and the real clients see them.

A gated repo's info stays public (with ``gated``); its files and listings need a granted token:
401 without a token, 403 with another one, both ``X-Error-Code: GatedRepo`` so that
``huggingface_hub`` raises ``GatedRepoError``. On top: a build from a gated model repo, a vindex
loaded from a gated dataset repo and ``vindex-hub info`` on one, with a granted and a foreign token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, get_paths_info, hf_hub_download, hf_hub_url, list_repo_tree
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.utils import build_hf_headers, get_session

from vindex_hub.builder import build_vindex
from vindex_hub.errors import HubError
from vindex_hub.format import filenames
from vindex_hub.hubserver import LocalHub
from vindex_hub.load import Vindex
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

from conftest import HUB_TOKEN

OTHER_TOKEN = "hf_other_token"
NUM_FEATS = 8
SYNTH = dict(num_layers=2, num_experts=4, hidden_size=64, moe_intermediate_size=32, num_shards=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_deepseek_v4_checkpoint(tmp_path_factory.mktemp("gated-src") / "ckpt", **SYNTH)


@pytest.fixture(scope="module")
def local_vindex(checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gated-local") / "vindex"
    build_vindex(checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    return out


def _gated_repo(hub: LocalHub, folder: Path, repo_id: str, repo_type: str) -> str:
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type)
    hub.set_gated(repo_id, repo_type=repo_type, granted_tokens=[HUB_TOKEN])
    return repo_id


@pytest.fixture(scope="module")
def gated_model(local_hub: LocalHub, checkpoint: Path) -> str:
    return _gated_repo(local_hub, checkpoint, "tests/gated-checkpoint", "model")


@pytest.fixture(scope="module")
def gated_dataset(local_hub: LocalHub, local_vindex: Path) -> str:
    return _gated_repo(local_hub, local_vindex, "tests/gated-vindex", "dataset")


# ---- the server ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_info_is_public_but_files_and_listings_need_a_granted_token(
    local_hub: LocalHub,
    gated_model: str,
    checkpoint: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("DEBUG", logger="vindex_hub.hubserver"):
        info = HfApi().model_info(gated_model, token=False)
        assert info.gated == "auto"
        assert "config.json" in {s.rfilename for s in info.siblings}

        with pytest.raises(
            GatedRepoError, match=f"Access to model {gated_model} is restricted"
        ) as anon:
            hf_hub_download(gated_model, "config.json", token=False, cache_dir=tmp_path / "anon")
        assert anon.value.response.status_code == 401
        with pytest.raises(GatedRepoError, match="not in the authorized list") as other:
            hf_hub_download(
                gated_model, "config.json", token=OTHER_TOKEN, cache_dir=tmp_path / "other"
            )
        assert other.value.response.status_code == 403
        with pytest.raises(GatedRepoError):
            list(list_repo_tree(gated_model, token=OTHER_TOKEN))
        with pytest.raises(GatedRepoError):
            get_paths_info(gated_model, ["config.json"], token=OTHER_TOKEN)
        url = hf_hub_url(gated_model, "config.json")
        ranged = get_session().get(
            url, headers={**build_hf_headers(token=OTHER_TOKEN), "Range": "bytes=0-9"}
        )
        assert ranged.status_code == 403 and ranged.headers["X-Error-Code"] == "GatedRepo"
        assert local_hub.stats().bytes_sent == 0  # no refused request leaked a byte of a file

        # The granted token reads everything.
        path = hf_hub_download(gated_model, "config.json", cache_dir=tmp_path / "granted")
        assert Path(path).read_bytes() == (checkpoint / "config.json").read_bytes()
        assert "config.json" in {e.path for e in list_repo_tree(gated_model)}
        assert [e.path for e in get_paths_info(gated_model, ["config.json"])] == ["config.json"]
        ranged = get_session().get(url, headers={**build_hf_headers(), "Range": "bytes=0-9"})
        assert (
            ranged.status_code == 206
            and ranged.content == (checkpoint / "config.json").read_bytes()[:10]
        )
    assert "/resolve/main/config.json" in caplog.text  # the server did log these requests
    assert HUB_TOKEN not in caplog.text and OTHER_TOKEN not in caplog.text


@pytest.mark.slow
def test_gating_survives_a_restart_and_the_admin_api_sets_it(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(1000))
    with LocalHub(tmp_path / "root") as first:
        api = HfApi(endpoint=first.url, token=HUB_TOKEN)
        api.create_repo("ns/gated", repo_type="dataset")
        api.upload_folder(folder_path=folder, repo_id="ns/gated", repo_type="dataset")
        admin = f"{first.url}/_local_hub/gated"
        spec = {
            "repo_id": "ns/gated",
            "repo_type": "dataset",
            "gated": "manual",
            "granted_tokens": [HUB_TOKEN],
        }
        assert get_session().post(admin, json=spec).status_code == 200
        assert (
            get_session().post(admin, json={**spec, "granted_tokens": HUB_TOKEN}).status_code == 400
        )
        assert get_session().post(admin, json={**spec, "gated": "yes"}).status_code == 400
        port = int(first.url.rsplit(":", 1)[1])
    repo_json = (
        tmp_path / "root" / "repos" / "datasets" / "ns" / "gated" / "repo.json"
    ).read_text()
    assert HUB_TOKEN not in repo_json  # only digests of granted tokens are stored

    def download(hub: LocalHub, token: str | bool) -> bytes:
        return Path(
            hf_hub_download(
                "ns/gated",
                "weights.bin",
                repo_type="dataset",
                endpoint=hub.url,
                token=token,
                cache_dir=tmp_path / f"cache-{token}",
            )
        ).read_bytes()

    with LocalHub(tmp_path / "root", port=port) as second:
        assert (
            HfApi(endpoint=second.url).repo_info("ns/gated", repo_type="dataset", token=False).gated
            == "manual"
        )
        with pytest.raises(GatedRepoError):
            download(second, OTHER_TOKEN)
        assert download(second, HUB_TOKEN) == (folder / "weights.bin").read_bytes()
        second.set_gated("ns/gated", repo_type="dataset", gated=False)  # open again
        assert (
            HfApi(endpoint=second.url).repo_info("ns/gated", repo_type="dataset", token=False).gated
            is False
        )
        assert download(second, False) == (folder / "weights.bin").read_bytes()


# ---- builds, loads and the CLI on gated repos -----------------------------------------------------
@pytest.mark.slow
def test_build_from_a_gated_model_repo(
    gated_model: str, local_vindex: Path, tmp_path: Path
) -> None:
    out = tmp_path / "granted"
    build_vindex(gated_model, out, num_feats=NUM_FEATS, progress=False)
    built = (out / filenames.GATE_VECTORS_BIN).read_bytes()
    assert built == (local_vindex / filenames.GATE_VECTORS_BIN).read_bytes()

    refused = tmp_path / "refused"
    with pytest.raises(HubError, match=f"{gated_model}.*gated.*access") as e:
        build_vindex(gated_model, refused, num_feats=NUM_FEATS, progress=False, token=OTHER_TOKEN)
    assert OTHER_TOKEN not in str(e.value)
    # config.json may come from the cache the granted build filled (the client skips the network for
    # a file cached at a commit sha), so the build can get as far as its state folder; the shard
    # reads are refused and nothing complete-looking is left behind.
    assert (
        not (refused / filenames.SIDECAR_JSON).exists()
        and not (refused / filenames.GATE_VECTORS_BIN).exists()
    )


@pytest.mark.slow
def test_open_a_gated_dataset_vindex(
    gated_dataset: str, local_vindex: Path, tmp_path: Path
) -> None:
    with pytest.raises(HubError, match=f"{gated_dataset}.*gated.*access") as e:
        Vindex.open(gated_dataset, token=OTHER_TOKEN, cache_dir=tmp_path / "other-cache")
    assert OTHER_TOKEN not in str(e.value)
    with (
        Vindex.open(local_vindex) as local,
        Vindex.open(gated_dataset, cache_dir=tmp_path / "cache") as remote,
    ):
        np.testing.assert_array_equal(remote.layer(0), local.layer(0))


def test_cli_info_on_a_gated_repo_without_access(gated_dataset: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_TOKEN": OTHER_TOKEN, "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-m", "vindex_hub", "info", gated_dataset],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and gated_dataset in lines[0] and "gated" in lines[0]
    assert OTHER_TOKEN not in result.stderr + result.stdout
