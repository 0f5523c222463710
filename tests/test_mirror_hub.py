"""The mirror on the (local) Hub: a config per layer that ``load_dataset`` fetches alone, a small
default, streaming, ``hf://`` reads, the viewer's limits, and upgrading the old layout.

Byte counts come from the bundled server's counters (``local_hub.stats()``); the vindex is built
by the real builder from a DeepSeek-V4-format checkpoint (8 layers, so one layer is an eighth).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard

from vindex_hub.builder import build_vindex
from vindex_hub.convert import convert_vindex
from vindex_hub.format import filenames, mirror, sidecar
from vindex_hub.format.card_data import CardOptions
from vindex_hub.load import Vindex
from vindex_hub.pull import pull_vindex
from vindex_hub.push import push_vindex
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint
from vindex_hub.verify import verify_vindex
from vindex_hub.writers.mirror import write_gate_vectors_layer

from vindex_fixtures import binary_layer, read_index, upload

NUM_LAYERS, NUM_EXPERTS, HIDDEN, NUM_FEATS = 8, 8, 128, 8
LAYER = 1


@pytest.fixture(scope="module")
def vindex(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror-hub")
    checkpoint = make_deepseek_v4_checkpoint(
        root / "checkpoint",
        num_layers=NUM_LAYERS,
        num_experts=NUM_EXPERTS,
        hidden_size=HIDDEN,
        moe_intermediate_size=32,
    )
    build_vindex(checkpoint, root / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False)
    return root / "vindex"


def _parquet_sent(hub, repo_id: str, cached_before: frozenset[str] = frozenset()) -> dict[str, int]:
    """Parquet bytes the clients fetched, by path: the server's counters (plain and ranged GETs,
    the CDN leg), plus each parquet file that reached a Hub cache whole: the default client
    (hf_xet) reads Xet-backed files from the CAS, past the server's counters."""
    sent = {
        path: f.bytes_sent
        for (_, repo, path), f in hub.stats().files.items()
        if repo == repo_id and path.endswith(".parquet") and f.bytes_sent
    }
    for path, size in _cached_parquets(repo_id).items():
        if path not in cached_before:
            sent.setdefault(path, size)
    return sent


def _cached_parquets(repo_id: str) -> dict[str, int]:
    """The parquet files of ``repo_id``'s head commit in the session's Hub cache, with sizes."""
    from huggingface_hub import HfApi

    head = HfApi().repo_info(repo_id, repo_type="dataset").sha
    repo_folder = f"datasets--{repo_id.replace('/', '--')}"
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / repo_folder / "snapshots" / head
    if not snapshot.is_dir():
        return {}
    return {
        f.relative_to(snapshot).as_posix(): f.stat().st_size for f in snapshot.rglob("*.parquet")
    }


def _card_data(folder: Path) -> dict:
    return DatasetCard((folder / filenames.CARD_FILE).read_text()).data.to_dict()


def _vector_bytes(ds) -> bytes:
    return np.array(ds[mirror.COL_VECTOR], dtype=np.float32).tobytes()


# ---- load_dataset against the Hub ------------------------------------------------------------------
@pytest.mark.parametrize("split", [None, "train"])
@pytest.mark.slow
def test_load_dataset_of_one_layer_fetches_that_file_only(
    local_hub, hub_repo_id, vindex, tmp_path, split
):
    from datasets import DatasetDict, load_dataset

    repo = upload(vindex, hub_repo_id)
    config = mirror.layer_config(LAYER, NUM_LAYERS)
    local_hub.reset_stats()
    ds = load_dataset(repo, config, split=split, cache_dir=str(tmp_path / "ds"))
    if split is None:
        assert isinstance(ds, DatasetDict) and list(ds) == ["train"]
        ds = ds["train"]
    assert _vector_bytes(ds) == binary_layer(vindex, LAYER).tobytes()
    path = mirror.gate_vectors_parquet(LAYER, NUM_LAYERS)
    sent = _parquet_sent(local_hub, repo)
    assert set(sent) == {path}
    assert sum(sent.values()) <= 1.05 * (vindex / path).stat().st_size


@pytest.mark.slow
def test_a_bare_load_dataset_opens_the_small_default(local_hub, hub_repo_id, vindex, tmp_path):
    from datasets import load_dataset

    repo = upload(vindex, hub_repo_id)
    local_hub.reset_stats()
    ds = load_dataset(repo, cache_dir=str(tmp_path / "ds"))
    assert (
        list(ds) == ["train"] and ds["train"].num_rows == NUM_LAYERS * NUM_EXPERTS
    )  # expert_stats
    assert set(_parquet_sent(local_hub, repo)) == {
        mirror.EXPERT_STATS_PARQUET
    }  # no gate-vector parquet


def test_streaming_every_layer_reads_lazily(local_hub, hub_repo_id, vindex):
    from datasets import load_dataset

    repo = upload(vindex, hub_repo_id)
    local_hub.reset_stats()
    stream = load_dataset(repo, mirror.CONFIG_GATE_VECTORS, split="train", streaming=True)
    rows = list(stream.take(5))
    first = binary_layer(vindex, 0)
    assert [(r[mirror.COL_LAYER], r[mirror.COL_EXPERT], r[mirror.COL_FEATURE]) for r in rows] == [
        (0, 0, f) for f in range(5)
    ]
    assert (
        np.array([r[mirror.COL_VECTOR] for r in rows], dtype=np.float32).tobytes()
        == first[0, :5].tobytes()
    )
    files = [mirror.gate_vectors_parquet(layer, NUM_LAYERS) for layer in range(NUM_LAYERS)]
    sent = _parquet_sent(local_hub, repo)
    # the first file, and at most the next one read ahead: not the other six layers
    assert set(sent) <= set(files[:2])
    assert sum(sent.values()) <= 1.05 * sum((vindex / p).stat().st_size for p in files[:2])


def test_pyarrow_reads_one_layer_through_hf_filesystem(local_hub, hub_repo_id, vindex):
    from huggingface_hub import HfFileSystem

    repo = upload(vindex, hub_repo_id)
    path = mirror.gate_vectors_parquet(LAYER, NUM_LAYERS)
    local_hub.reset_stats()
    table = pq.read_table(
        f"datasets/{repo}/{path}", filesystem=HfFileSystem()
    )  # hf://datasets/<repo>/<path>
    vectors = table.column(mirror.COL_VECTOR).combine_chunks().flatten().to_numpy()
    assert vectors.tobytes() == binary_layer(vindex, LAYER).tobytes()
    assert set(_parquet_sent(local_hub, repo)) == {path}
    import pandas as pd

    df = pd.read_parquet(f"hf://datasets/{repo}/{path}")  # the README's pandas line
    assert (
        np.stack(df[mirror.COL_VECTOR].to_numpy()).astype(np.float32).tobytes() == vectors.tobytes()
    )


# ---- what the card declares ----------------------------------------------------------------------------
def test_dataset_info_sizes_are_what_datasets_computes(vindex, tmp_path):
    from datasets import load_dataset

    front = _card_data(vindex)
    paths = {c["config_name"]: [p for _, p in mirror.config_paths(c)] for c in front["configs"]}
    for info in front["dataset_info"]:
        files = [str(vindex / p) for p in paths[info["config_name"]]]
        # the plain parquet builder, without the card: datasets' own figures for these files
        built = load_dataset(
            "parquet",
            data_files={"train": files},
            split="train",
            cache_dir=str(tmp_path / info["config_name"]),
        )
        assert info["splits"] == [
            {
                "name": "train",
                "num_bytes": built.info.splits["train"].num_bytes,
                "num_examples": built.num_rows,
            }
        ], info["config_name"]
        assert info["dataset_size"] == built.info.splits["train"].num_bytes
        assert info["download_size"] == sum(Path(f).stat().st_size for f in files)


@pytest.mark.slow
def test_a_layer_subset_lists_only_its_layers(vindex, tmp_path):
    sub = tmp_path / "sub"
    build_vindex(
        vindex.parent / "checkpoint",
        sub,
        num_feats=NUM_FEATS,
        layers="2,5",
        device="cpu",
        progress=False,
    )
    names = [c["config_name"] for c in _card_data(sub)["configs"]]
    assert names == [
        mirror.CONFIG_EXPERT_STATS,
        mirror.CONFIG_ROUTER_SVD,
        "layer_02",
        "layer_05",
        mirror.CONFIG_GATE_VECTORS,
    ]
    assert verify_vindex(sub).ok


def test_the_viewers_first_rows_step(local_hub, hub_repo_id, vindex):
    """As the viewer: list configs and splits, then read the first row group of the default config
    and of ``layer_00`` from the repo, within its limits."""
    from datasets import Features
    from huggingface_hub import HfFileSystem

    repo = upload(vindex, hub_repo_id)
    front = _card_data(vindex)
    configs = mirror.configs_by_name(front)
    assert len(configs) <= 4000
    for name, config in configs.items():
        splits = {split for split, _ in mirror.config_paths(config)}
        assert len(splits) <= mirror.MAX_SPLITS_PER_CONFIG and all(
            re.fullmatch(r"\w+", n) for n in [name, *splits]
        )
    default = [name for name, c in configs.items() if c.get("default")]
    assert default == [mirror.CONFIG_EXPERT_STATS]
    features = {
        i["config_name"]: Features._from_yaml_list(i["features"]) for i in front["dataset_info"]
    }
    fs = HfFileSystem()
    for name in (default[0], "layer_00"):
        _, path = mirror.config_paths(configs[name])[0]
        with fs.open(f"datasets/{repo}/{path}", "rb") as f:
            pf = pq.ParquetFile(f)
            group = pf.metadata.row_group(0)
            columns = [group.column(i) for i in range(group.num_columns)]
            assert all(c.has_offset_index for c in columns), f"{path}: no page index"
            # min/max pages of the (layer, expert, feature) columns: readers can seek to an expert
            assert all(
                c.has_column_index for c in columns if c.path_in_schema in mirror.INDEX_COLUMNS
            )
            first = pf.read_row_group(0)
        assert (
            first.nbytes < mirror.VIEWER_MAX_ROW_GROUP_BYTES
            and first.num_rows <= mirror.ROW_GROUP_ROWS
        )
        rows = first.slice(0, 100)
        # the declared features read the rows, and reading them so changes no value
        assert rows.cast(features[name].arrow_schema).to_pylist() == rows.to_pylist(), name


@pytest.mark.parametrize("hidden", [4096, 7168])
@pytest.mark.slow
def test_row_groups_at_real_sizes_stay_far_below_the_viewer_limit(tmp_path, hidden):
    """K = 64 at DeepSeek-V4-Flash (4096) and Kimi-K2 / V4-Pro (7168) width: a layer file with two
    row groups, the first full."""
    k, step = 64, mirror.experts_per_row_group(64, hidden)
    experts = step + 1
    index = sidecar.VindexIndex(
        num_feats=k,
        model_config=sidecar.ModelConfig(
            "deepseek_v4", 61, sidecar.MoEConfig(experts, 1, 8, hidden, 2048)
        ),
        source=sidecar.SourceInfo(repo_id="tests/wide-moe", revision="a" * 40),
        builder=sidecar.BuilderInfo(name="vindex-hub", version="test", method="test"),
    )
    rng = np.random.default_rng(0)
    block = rng.standard_normal((experts, k, hidden), dtype=np.float32)
    written = write_gate_vectors_layer(tmp_path, index, 3, block)
    pf = pq.ParquetFile(tmp_path / written.path)
    first = pf.read_row_group(0)
    assert pf.metadata.num_row_groups == 2 and first.num_rows == step * k <= mirror.ROW_GROUP_ROWS
    assert (
        first.nbytes <= mirror.ROW_GROUP_BYTES + (1 << 20) < mirror.VIEWER_MAX_ROW_GROUP_BYTES / 10
    )
    assert written.num_bytes == first.nbytes + pf.read_row_group(1).nbytes


# ---- verify and the old layout -----------------------------------------------------------------------
def _old_layout(folder: Path) -> list[str]:
    """Give ``folder`` the old mirror layout: layer files named ``layer_NN`` (two digits, whatever the
    model) listed as splits of one default ``gate_vectors`` config. Returns the layer files."""
    index = read_index(folder)
    n = index.model_config.num_hidden_layers
    old = {}
    for layer in index.layer_ids:
        path = f"{mirror.GATE_VECTORS_DIR}{mirror.old_layout_split(layer)}.parquet"
        current = folder / mirror.gate_vectors_parquet(layer, n)
        if current.exists() and current != folder / path:
            current.rename(folder / path)
        old[layer] = path
    card = folder / filenames.CARD_FILE
    front = yaml.safe_load(card.read_text().split("---\n")[1])
    front["configs"] = mirror.split_per_layer_configs(old, mirror.STATS_PARQUET_OF)
    front.pop("dataset_info")
    card.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n# an old card\n")
    return list(old.values())


def test_verify_accepts_the_old_layout_and_says_so(vindex, tmp_path):
    folder = Path(shutil.copytree(vindex, tmp_path / "old"))
    _old_layout(folder)
    report = verify_vindex(folder)
    assert report.ok, report.render()
    assert any(f"mirror layout: {mirror.SCHEME_SPLIT_PER_LAYER}" in c for c in report.checks)
    assert any("vindex-hub convert" in w for w in report.warnings)


def test_verify_names_a_config_of_too_many_splits(vindex, tmp_path):
    folder = Path(shutil.copytree(vindex, tmp_path / "v"))
    card = folder / filenames.CARD_FILE
    front, body = card.read_text().split("---\n")[1:3]
    data = yaml.safe_load(front)
    path = mirror.gate_vectors_parquet(0, NUM_LAYERS)
    data["configs"].append(
        {
            "config_name": "by_expert",
            "data_files": [{"split": f"part_{i}", "path": path} for i in range(31)],
        }
    )
    card.write_text("---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n" + body)
    assert verify_vindex(folder).problems == [
        "README.md: config 'by_expert' has 31 splits; the Hub's dataset viewer refuses more than 30"
    ]
    # the same number of layers as splits of the old layout: a warning naming it, not a failure
    data["configs"] = [
        {
            "config_name": mirror.CONFIG_GATE_VECTORS,
            "default": True,
            "data_files": [
                {
                    "split": f"layer_{i:02d}",
                    "path": mirror.gate_vectors_parquet(i % NUM_LAYERS, NUM_LAYERS),
                }
                for i in range(31)
            ],
        }
    ]
    data.pop("dataset_info")
    card.write_text("---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n" + body)
    report = verify_vindex(folder)
    assert report.ok, report.render()
    assert any(
        w.startswith("README.md: config 'gate_vectors' has 31 splits") for w in report.warnings
    )


@pytest.mark.parametrize(
    "config, path, message",
    [
        (
            "layer_01",
            "data/gate_vectors/layer_02.parquet",
            "README.md: config 'layer_01' points at ['data/gate_vectors/layer_02.parquet'], which is not its file(s) of the mirror",
        ),
        (
            "expert_stats",
            "README.md",
            "README.md: config 'expert_stats' points at ['README.md'], which is not its file(s) of the mirror",
        ),
        (
            "layer_03",
            "data/gate_vectors/layer_33.parquet",
            "README.md: config 'layer_03' split 'train' points at 'data/gate_vectors/layer_33.parquet', which does not exist",
        ),
    ],
)
def test_verify_names_a_config_pointing_at_a_foreign_or_missing_file(
    vindex, tmp_path, config, path, message
):
    folder = Path(shutil.copytree(vindex, tmp_path / "v"))
    card = folder / filenames.CARD_FILE
    front, body = card.read_text().split("---\n")[1:3]
    data = yaml.safe_load(front)
    for c in data["configs"]:
        if c["config_name"] == config:
            c["data_files"] = [{"split": "train", "path": path}]
    card.write_text("---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n" + body)
    assert verify_vindex(folder).problems == [message]


@pytest.mark.slow
def test_convert_upgrades_the_old_layout_and_push_deletes_what_the_card_no_longer_names(
    local_hub, hub_repo_id, vindex, tmp_path
):
    """A 128-layer model's old-layout vindex (layer files ``layer_00``...) becomes ``layer_000`` configs."""
    from datasets import load_dataset

    folder = Path(shutil.copytree(vindex, tmp_path / "old"))
    data = json.loads((folder / filenames.SIDECAR_JSON).read_text())
    data["model_config"]["num_hidden_layers"] = 128  # layers 0-7 of a 128-layer model
    (folder / filenames.SIDECAR_JSON).write_text(json.dumps(data))
    old_files = _old_layout(folder)
    assert verify_vindex(folder).ok, verify_vindex(folder).render()
    push_vindex(folder, hub_repo_id, progress=False)

    # the old layout reads as before: one layer by its file, through Vindex.open and pull
    local_hub.reset_stats()
    with Vindex.open(hub_repo_id, mode="arrow", cache_dir=tmp_path / "hub") as vx:
        assert vx.layer(LAYER).tobytes() == binary_layer(vindex, LAYER).tobytes()
    assert set(_parquet_sent(local_hub, hub_repo_id)) == {"data/gate_vectors/layer_01.parquet"}
    pulled = pull_vindex(
        hub_repo_id,
        tmp_path / "pulled-old",
        layers=[LAYER],
        format="arrow",
        cache_dir=tmp_path / "hub",
    )
    assert sorted(p.name for p in (pulled / mirror.GATE_VECTORS_DIR).iterdir()) == [
        "layer_01.parquet"
    ]

    written = convert_vindex(folder, card_options=CardOptions(license="mit"))
    new_files = [mirror.gate_vectors_parquet(layer, 128) for layer in range(NUM_LAYERS)]
    assert (
        set(new_files) <= set(written) and new_files[LAYER] == "data/gate_vectors/layer_001.parquet"
    )
    assert not any((folder / p).exists() for p in old_files)
    report = verify_vindex(folder)
    assert report.ok and not report.warnings, report.render()
    assert any(f"mirror layout: {mirror.SCHEME_CONFIG_PER_LAYER}" in c for c in report.checks)
    assert (folder / filenames.LARQL_INDEX_JSON).exists() and (
        folder / filenames.PHASE1_JSON
    ).exists()

    result = push_vindex(folder, hub_repo_id, progress=False)
    assert sorted(result.deleted) == sorted(old_files)
    local_hub.reset_stats()  # layer 4: never fetched before (the Hub cache keeps blobs by content)
    ds = load_dataset(hub_repo_id, "layer_004", split="train", cache_dir=str(tmp_path / "ds"))
    assert _vector_bytes(ds) == binary_layer(vindex, 4).tobytes()
    assert set(_parquet_sent(local_hub, hub_repo_id)) == {new_files[4]}
    with Vindex.open(hub_repo_id, mode="arrow", cache_dir=tmp_path / "hub2") as vx:
        local_hub.reset_stats()
        before = frozenset(_cached_parquets(hub_repo_id))
        assert vx.layer(2).tobytes() == binary_layer(vindex, 2).tobytes()
    assert set(_parquet_sent(local_hub, hub_repo_id, before)) == {new_files[2]}
    pulled = pull_vindex(
        hub_repo_id, tmp_path / "pulled", layers="2-3", format="arrow", cache_dir=tmp_path / "hub3"
    )
    assert sorted(p.name for p in (pulled / mirror.GATE_VECTORS_DIR).iterdir()) == [
        "layer_002.parquet",
        "layer_003.parquet",
    ]
    with Vindex.open(pulled, mode="arrow") as vx:
        assert vx.layer(3).tobytes() == binary_layer(vindex, 3).tobytes()


def test_cli_convert_and_verify_say_what_they_did(vindex, tmp_path, capsys):
    from vindex_hub.cli import main

    folder = Path(shutil.copytree(vindex, tmp_path / "old"))
    _old_layout(folder)
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"mirror layout: {mirror.SCHEME_SPLIT_PER_LAYER}" in out and "WARN" in out
    assert main(["convert", str(folder)]) == 0
    assert f"converted {folder}: " in capsys.readouterr().out
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"mirror layout: {mirror.SCHEME_CONFIG_PER_LAYER}" in out and "WARN" not in out


def test_card_configs_order_and_default():
    import pyarrow as pa

    def f(config: str) -> mirror.MirrorFile:
        return mirror.MirrorFile(config, "train", f"data/{config}.parquet", 1, 1, 1, pa.schema([]))

    layers = [f("layer_10"), f("layer_02")]
    names = lambda configs: [(c.name, c.default) for c in configs]  # noqa: E731
    assert names(
        mirror.card_configs([*layers, f("router_svd"), f("feature_tokens"), f("expert_stats")])
    ) == [
        ("expert_stats", True),
        ("router_svd", False),
        ("feature_tokens", False),
        ("layer_02", False),
        ("layer_10", False),
        ("gate_vectors", False),
    ]
    # without the stats: the first layer is the default (small), listed first
    assert names(mirror.card_configs(layers)) == [
        ("layer_02", True),
        ("layer_10", False),
        ("gate_vectors", False),
    ]
    assert [p.path for p in mirror.card_configs(layers)[-1].files] == [
        "data/layer_02.parquet",
        "data/layer_10.parquet",
    ]
