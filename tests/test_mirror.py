"""The Arrow mirror: parquet files equal to the binary, the spectra and the router figures;
``datasets.load_dataset`` reads every config from a folder; converting a seed-style vindex."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vindex_hub.convert import convert_vindex
from vindex_hub.errors import VindexFormatError
from vindex_hub.format import filenames, layout, mirror, sidecar, statistics
from vindex_hub.format.mirror import experts_per_row_group
from vindex_hub.verify import verify_vindex
from vindex_hub.writers.mirror import stats_tables, write_mirror

from vindex_fixtures import (
    HIDDEN,
    NUM_EXPERTS,
    NUM_FEATS,
    NUM_LAYERS,
    SEED_SNIPPET,
    SmallVindex,
    first_python_block,
    read_index,
)


def test_gate_vectors_parquet_is_the_binary_bit_for_bit(small_vindex: SmallVindex):
    folder = small_vindex.folder
    for layer in range(NUM_LAYERS):
        table = pq.read_table(folder / mirror.gate_vectors_parquet(layer, NUM_LAYERS))
        assert table.schema.field(mirror.COL_VECTOR).type == pa.list_(pa.float32(), HIDDEN)
        for col in (mirror.COL_LAYER, mirror.COL_EXPERT, mirror.COL_FEATURE):
            assert table.schema.field(col).type == pa.int16()
        vectors = table.column(mirror.COL_VECTOR).combine_chunks().flatten().to_numpy()
        binary = small_vindex.binary_layer(folder, layer)
        assert vectors.view(np.uint32).tobytes() == binary.view(np.uint32).tobytes()
        rows = np.arange(NUM_EXPERTS * NUM_FEATS)
        assert table.column(mirror.COL_LAYER).to_numpy().tolist() == [layer] * rows.size
        assert table.column(mirror.COL_EXPERT).to_numpy().tolist() == (rows // NUM_FEATS).tolist()
        assert table.column(mirror.COL_FEATURE).to_numpy().tolist() == (rows % NUM_FEATS).tolist()


def test_gate_vectors_encoding_is_byte_stream_split_zstd(small_vindex: SmallVindex):
    meta = pq.read_metadata(small_vindex.folder / mirror.gate_vectors_parquet(0, NUM_LAYERS))
    columns = {
        meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i)
        for i in range(meta.num_columns)
    }
    vector = columns["vector.list.element"]
    assert vector.compression == "ZSTD"
    assert "BYTE_STREAM_SPLIT" in vector.encodings
    assert not any("DICTIONARY" in e for e in vector.encodings)


def test_expert_stats_match_a_float64_lapack_svd_of_the_weights(small_vindex: SmallVindex):
    table = pq.read_table(small_vindex.folder / mirror.EXPERT_STATS_PARQUET).to_pydict()
    assert len(table[mirror.COL_LAYER]) == NUM_LAYERS * NUM_EXPERTS
    for row, (layer, expert) in enumerate(zip(table[mirror.COL_LAYER], table[mirror.COL_EXPERT])):
        w = small_vindex.gate_weight(layer, expert)
        s = np.linalg.svd(w, compute_uv=False)
        fro = np.linalg.norm(w)
        np.testing.assert_allclose(table[statistics.SINGULAR_VALUES][row], s[:NUM_FEATS], rtol=1e-5)
        np.testing.assert_allclose(table[statistics.FROBENIUS_NORM][row], fro, rtol=1e-6)
        np.testing.assert_allclose(
            table[statistics.var_key(NUM_FEATS)][row],
            np.sum(s[:NUM_FEATS] ** 2) / fro**2,
            rtol=1e-5,
        )


def test_router_svd_matches_a_float64_lapack_svd_of_the_router(small_vindex: SmallVindex):
    table = pq.read_table(small_vindex.folder / mirror.ROUTER_SVD_PARQUET).to_pydict()
    assert table[mirror.COL_LAYER] == list(range(NUM_LAYERS))
    for row, layer in enumerate(table[mirror.COL_LAYER]):
        w = small_vindex.router(layer)[0].astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        fro2 = np.sum(w**2)
        np.testing.assert_allclose(table[statistics.SINGULAR_VALUES][row], s, rtol=1e-6)
        np.testing.assert_allclose(
            table[statistics.router_topk_key(1)][row], s[0] ** 2 / fro2, rtol=1e-6
        )
        np.testing.assert_allclose(table["stable_rank"][row], fro2 / s[0] ** 2, rtol=1e-6)
        p = s / s.sum()
        np.testing.assert_allclose(
            table["effective_rank"][row], np.exp(-np.sum(p * np.log(p))), rtol=1e-6
        )


def test_load_dataset_reads_every_config_from_the_folder(small_vindex: SmallVindex, tmp_path: Path):
    from datasets import List, Value, load_dataset

    folder = small_vindex.folder
    ds = load_dataset(str(folder), "layer_01", split="train", cache_dir=str(tmp_path))
    assert ds.features[mirror.COL_VECTOR] == List(Value("float32"), length=HIDDEN)
    vectors = (
        ds.with_format("torch")[mirror.COL_VECTOR][:]
        .reshape(NUM_EXPERTS, NUM_FEATS, HIDDEN)
        .numpy()
    )
    assert vectors.tobytes() == small_vindex.binary_layer(folder, 1).tobytes()

    every = load_dataset(
        str(folder), mirror.CONFIG_GATE_VECTORS, split="train", cache_dir=str(tmp_path)
    )
    assert every[mirror.COL_LAYER] == [
        layer for layer in range(NUM_LAYERS) for _ in range(NUM_EXPERTS * NUM_FEATS)
    ]
    assert (
        np.array(every[mirror.COL_VECTOR], dtype=np.float32).tobytes()
        == (folder / filenames.GATE_VECTORS_BIN).read_bytes()
    )

    # expert_stats is the default config
    stats = load_dataset(str(folder), split=mirror.STATS_SPLIT, cache_dir=str(tmp_path))
    assert stats.num_rows == NUM_LAYERS * NUM_EXPERTS
    assert stats.to_pandas().equals(pq.read_table(folder / mirror.EXPERT_STATS_PARQUET).to_pandas())

    router = load_dataset(
        str(folder), mirror.CONFIG_ROUTER_SVD, split=mirror.STATS_SPLIT, cache_dir=str(tmp_path)
    )
    phase2 = json.loads((folder / filenames.PHASE2_JSON).read_text())["layers"]
    for row in router:
        figures = phase2[str(row[mirror.COL_LAYER])]
        assert row["effective_rank"] == figures["effective_rank"]
        assert row[statistics.SINGULAR_VALUES] == figures[statistics.SINGULAR_VALUES]


def test_row_groups_hold_whole_experts_and_verify_compares_each(
    small_vindex: SmallVindex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Real size: 16 experts (16 MiB) a row group.
    assert experts_per_row_group(64, 4096) == 16
    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "v"))
    expert_bytes = layout.expert_nbytes(NUM_FEATS, HIDDEN)
    monkeypatch.setattr(mirror, "ROW_GROUP_BYTES", 3 * expert_bytes)
    write_mirror(folder, read_index(folder))
    meta = pq.read_metadata(folder / mirror.gate_vectors_parquet(1, NUM_LAYERS))
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        3 * NUM_FEATS,
        NUM_FEATS,
    ]
    assert verify_vindex(folder).ok


def test_mirror_is_deterministic(small_vindex: SmallVindex, tmp_path: Path):
    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "v"))
    before = {
        p: (folder / p).read_bytes()
        for p in [mirror.gate_vectors_parquet(layer, NUM_LAYERS) for layer in range(NUM_LAYERS)]
    }
    written = write_mirror(folder, read_index(folder))
    assert sorted(f.path for f in written) == sorted(before)
    assert all((folder / p).read_bytes() == data for p, data in before.items())


def test_results_must_match_the_index_layers(small_vindex: SmallVindex, tmp_path: Path):
    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "v"))
    with pytest.raises(VindexFormatError, match=r"layer results \[\] do not match"):
        stats_tables(read_index(folder), [])


def _seed_style(folder: Path) -> None:
    """Rewrite the sidecar the way the seed published it: no format version, checksums or builder."""
    data = json.loads((folder / filenames.SIDECAR_JSON).read_text())
    k = data["num_feats"]
    seed = {
        "num_feats": k,
        "model_config": {
            "model_type": data["model_config"]["model_type"],
            "moe": data["model_config"]["moe"],
        },
        "layers": {
            name: {
                key: e[key]
                for key in (
                    "file_offset",
                    "shape",
                    statistics.median_var_key(k),
                    statistics.q25_var_key(k),
                    statistics.q75_var_key(k),
                )
            }
            for name, e in data["layers"].items()
        },
    }
    (folder / filenames.SIDECAR_JSON).write_text(json.dumps(seed))
    for name in (
        filenames.CARD_FILE,
        filenames.LARQL_INDEX_JSON,
        filenames.LARQL_ROUTER_BIN,
        filenames.PHASE1_JSON,
        filenames.PHASE2_JSON,
        filenames.VAR_PLOT_FILE,
    ):
        (folder / name).unlink()
    shutil.rmtree(folder / filenames.DATA_DIR)


def test_convert_a_seed_style_vindex(vindex_copy: Path, small_vindex: SmallVindex, tmp_path: Path):
    from datasets import load_dataset

    _seed_style(vindex_copy)
    written = convert_vindex(vindex_copy)
    assert (
        mirror.gate_vectors_parquet(0, NUM_LAYERS) in written and filenames.SIDECAR_JSON in written
    )
    assert not (vindex_copy / mirror.EXPERT_STATS_PARQUET).exists()

    report = verify_vindex(vindex_copy)
    assert report.ok, report.render()
    index = read_index(vindex_copy)
    original = read_index(small_vindex.folder)
    assert [index.layers[i].sha256 for i in range(NUM_LAYERS)] == [
        original.layers[i].sha256 for i in range(NUM_LAYERS)
    ]

    card = (vindex_copy / filenames.CARD_FILE).read_text()
    assert "singular values *not retained*" in card and "expert_stats" not in card.split("---")[1]
    assert first_python_block(card) == SEED_SNIPPET
    assert (
        "**Method**: unknown" in card
        and "\nCard, mirror and LarQL index written by vindex-hub" in card
    )
    ds = load_dataset(str(vindex_copy), "layer_01", split="train", cache_dir=str(tmp_path))
    assert (
        np.array(ds[mirror.COL_VECTOR], dtype=np.float32).tobytes()
        == small_vindex.binary_layer(vindex_copy, 1).tobytes()
    )


def test_convert_refuses_a_binary_shorter_than_its_index(vindex_copy: Path):
    _seed_style(vindex_copy)
    with open(vindex_copy / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.truncate(100)
    with pytest.raises(VindexFormatError, match="layer 0"):
        convert_vindex(vindex_copy)


def test_convert_names_a_card_whose_front_matter_does_not_parse(vindex_copy: Path):
    _seed_style(vindex_copy)
    (vindex_copy / filenames.CARD_FILE).write_text("---\nbase_model: [unclosed\n---\n# old card\n")
    with pytest.raises(
        VindexFormatError, match=r"README\.md: the card's YAML front matter does not parse"
    ):
        convert_vindex(vindex_copy)


def test_convert_takes_base_model_from_an_existing_card(vindex_copy: Path):
    _seed_style(vindex_copy)
    (vindex_copy / filenames.CARD_FILE).write_text(
        "---\nbase_model: someone/some-model\n---\n# old card\n"
    )
    convert_vindex(vindex_copy)
    index = read_index(vindex_copy)
    assert index.source.repo_id == "someone/some-model"
    assert (index.builder.name, index.builder.method) == (sidecar.UNKNOWN, sidecar.UNKNOWN)
    assert verify_vindex(vindex_copy).ok


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d["model_config"]["moe"].pop("hidden_size"), r"lacking \['hidden_size'\]"),
        (lambda d: d.pop("num_feats"), r"lacking \['num_feats'\]"),
        (
            lambda d: d["layers"]["1"].pop(statistics.q25_var_key(NUM_FEATS)),
            r"layers \[1\] lack the var quartiles",
        ),
        (lambda d: d["layers"]["2"].update(file_offset=0), "layer 2 file_offset 0, expected"),
        (lambda d: d.pop("layers"), "neither a vindex-hub sidecar nor a seed-style one"),
    ],
)
def test_convert_refuses_an_incomplete_seed_sidecar(vindex_copy: Path, damage, message):
    _seed_style(vindex_copy)
    path = vindex_copy / filenames.SIDECAR_JSON
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(VindexFormatError, match=message):
        convert_vindex(vindex_copy)
    assert not (vindex_copy / filenames.CARD_FILE).exists()
