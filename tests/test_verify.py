"""``verify_vindex``: a good vindex passes; each kind of damage is found and named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vindex_hub.errors import IntegrityError, VindexFormatError
from vindex_hub.format import filenames, layout, mirror, sidecar, statistics
from vindex_hub.verify import verify_vindex
from vindex_hub.writers.mirror import gate_vectors_table

from vindex_fixtures import (
    HIDDEN,
    NUM_EXPERTS,
    NUM_FEATS,
    NUM_LAYERS,
    SmallVindex,
)


def _problems(folder: Path) -> list[str]:
    return verify_vindex(folder).problems


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_built_vindex_passes(small_vindex: SmallVindex):
    report = verify_vindex(small_vindex.folder)
    assert report.ok, report.render()
    assert report.problems == []
    # every part was looked at
    text = "\n".join(report.checks)
    assert report.warnings == []
    assert f"mirror layout: {mirror.SCHEME_CONFIG_PER_LAYER}" in "\n".join(
        report.checks
    )  # says which it saw
    for name in (
        filenames.SIDECAR_JSON,
        filenames.GATE_VECTORS_BIN,
        mirror.gate_vectors_parquet(2, NUM_LAYERS),
        mirror.EXPERT_STATS_PARQUET,
        mirror.ROUTER_SVD_PARQUET,
        filenames.CARD_FILE,
        filenames.LARQL_INDEX_JSON,
        filenames.PHASE1_JSON,
        filenames.PHASE2_JSON,
    ):
        assert name in text
    report.raise_if_failed()


def test_a_flipped_byte_in_the_binary_is_named_by_layer(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    offset = index.layers[1].file_offset + 5 * 4 * HIDDEN + 7  # layer 1, expert 0, feature 5
    with open(vindex_copy / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    report = verify_vindex(vindex_copy)
    assert not report.ok
    assert any(p.startswith("layer 1: gate_vectors.bin") and "hash" in p for p in report.problems)
    assert any(
        p.startswith("layer 1: data/gate_vectors/layer_01.parquet row 5 (expert 0, feature 5)")
        for p in report.problems
    )
    assert any(p.startswith("index.json: gate_vectors.bin hashes") for p in report.problems)
    assert not any(p.startswith(("layer 0", "layer 2")) for p in report.problems)
    with pytest.raises(IntegrityError, match="layer 1"):
        report.raise_if_failed()


def test_a_mirror_that_disagrees_with_the_binary_is_named(
    vindex_copy: Path, small_vindex: SmallVindex
):
    vectors = small_vindex.binary_layer(vindex_copy, 2).copy()
    vectors[3, 6, 10] = np.nextafter(
        vectors[3, 6, 10], np.float32(1)
    )  # one ulp, expert 3 feature 6
    pq.write_table(
        gate_vectors_table(2, 0, vectors), vindex_copy / mirror.gate_vectors_parquet(2, NUM_LAYERS)
    )
    problems = _problems(vindex_copy)
    row = 3 * NUM_FEATS + 6
    assert problems == [
        f"layer 2: data/gate_vectors/layer_02.parquet row {row} (expert 3, feature 6) "
        "differs from gate_vectors.bin (1 differing row(s) in row group 0)"
    ]


def test_a_missing_parquet_file_is_named(vindex_copy: Path):
    (vindex_copy / mirror.gate_vectors_parquet(0, NUM_LAYERS)).unlink()
    problems = _problems(vindex_copy)
    assert (
        "layer 0: data/gate_vectors/layer_00.parquet is missing (the Arrow mirror of this layer)"
        in problems
    )
    # the card still points at it, from both configs that name it
    assert any(
        p.startswith("README.md: config 'layer_00' split 'train' points at") for p in problems
    )
    assert any(
        p.startswith(
            "README.md: config 'gate_vectors' split 'train' points at "
            "'data/gate_vectors/layer_00.parquet'"
        )
        for p in problems
    )


def test_card_configs_pointing_at_missing_files(vindex_copy: Path):
    card = vindex_copy / filenames.CARD_FILE
    card.write_text(
        card.read_text().replace(
            "path: data/router_svd/train.parquet", "path: data/router_svd/nowhere.parquet"
        )
    )
    assert _problems(vindex_copy) == [
        "README.md: config 'router_svd' split 'train' points at 'data/router_svd/nowhere.parquet', "
        "which does not exist"
    ]


def test_card_row_counts_that_disagree_with_the_parquet(vindex_copy: Path):
    card = vindex_copy / filenames.CARD_FILE
    text = card.read_text()
    rows = NUM_EXPERTS * NUM_FEATS
    head, rest = text.split("- config_name: layer_01\n  features:", 1)
    rest = rest.replace(f"num_examples: {rows}", "num_examples: 999", 1)
    card.write_text(head + "- config_name: layer_01\n  features:" + rest)
    assert _problems(vindex_copy) == [
        f"README.md: dataset_info says layer_01/train has 999 rows, "
        f"data/gate_vectors/layer_01.parquet has {rows}"
    ]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: d["layers"]["1"].update(file_offset=d["layers"]["0"]["file_offset"]),
            "layer 1 file_offset 0, expected",
        ),
        (
            lambda d: d["layers"]["2"].update(file_offset=d["layers"]["2"]["file_offset"] + 8),
            "layer 2 file_offset",
        ),
    ],
)
def test_an_index_whose_offsets_overlap_is_refused(vindex_copy: Path, damage, message):
    _edit_json(vindex_copy / filenames.SIDECAR_JSON, damage)
    report = verify_vindex(vindex_copy)
    assert len(report.problems) == 1 and message in report.problems[0]
    with pytest.raises(VindexFormatError, match=message) as info:
        report.raise_if_failed()
    assert not isinstance(info.value, IntegrityError)


def test_a_binary_shorter_than_its_index(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    with open(vindex_copy / filenames.GATE_VECTORS_BIN, "r+b") as f:
        f.truncate(index.total_bytes - 4)
    problems = _problems(vindex_copy)
    assert any(
        "layer 2 spans bytes" in p and f"holds {index.total_bytes - 4} bytes" in p for p in problems
    )


def test_a_larql_index_that_disagrees_with_the_sidecar(vindex_copy: Path):
    def damage(doc):
        doc["layers"][1]["offset"] += 4
        doc["checksums"][filenames.LARQL_ROUTER_BIN] = "0" * 64

    _edit_json(vindex_copy / filenames.LARQL_INDEX_JSON, damage)
    problems = _problems(vindex_copy)
    assert len(problems) == 2
    assert problems[0].startswith("layer 1: index.json says {'offset': ")
    assert problems[1].startswith("index.json: router_weights.bin hashes to")


def test_phase_json_and_stats_that_disagree_with_the_index(vindex_copy: Path):
    _edit_json(vindex_copy / filenames.PHASE2_JSON, lambda d: d["layers"].pop("2"))
    key = statistics.median_var_key(NUM_FEATS)
    _edit_json(
        vindex_copy / filenames.PHASE1_JSON, lambda d: d["layers"]["0"]["routed"].update({key: 0.5})
    )
    problems = _problems(vindex_copy)
    assert f"layer 0: phase1_moe_svd.json {key} = 0.5, gate_vectors_index.json has" in " ".join(
        problems
    )
    assert (
        "phase2_router_svd.json: layers [0, 1], gate_vectors_index.json has [0, 1, 2]" in problems
    )


def test_index_var_stats_that_disagree_with_expert_stats(vindex_copy: Path):
    key = statistics.q75_var_key(NUM_FEATS)
    _edit_json(vindex_copy / filenames.SIDECAR_JSON, lambda d: d["layers"]["1"].update({key: 0.99}))
    problems = _problems(vindex_copy)
    assert any(
        p.startswith(f"layer 1: data/expert_stats/train.parquet var{NUM_FEATS} gives")
        for p in problems
    )
    assert any(p.startswith(f"layer 1: phase1_moe_svd.json {key}") for p in problems)


def test_an_unreadable_sidecar_stops_early_with_its_name(vindex_copy: Path):
    (vindex_copy / filenames.SIDECAR_JSON).write_text("{not json")
    report = verify_vindex(vindex_copy)
    assert len(report.problems) == 1 and "gate_vectors_index.json" in report.problems[0]
    assert "not valid JSON" in report.render()


@pytest.mark.parametrize(
    "front_matter, message",
    [
        ("license: [mit\n", "does not parse"),  # not YAML
        ("- a list\n", "does not parse"),  # YAML, but not a mapping
    ],
)
def test_a_card_whose_front_matter_does_not_parse_is_a_problem_not_a_crash(
    vindex_copy: Path, front_matter, message
):
    (vindex_copy / filenames.CARD_FILE).write_text(f"---\n{front_matter}---\n# a card\n")
    report = verify_vindex(vindex_copy)
    assert len(report.problems) == 1
    assert (
        report.problems[0].startswith("README.md: VindexFormatError: ")
        and message in report.problems[0]
    )
    assert str(vindex_copy / filenames.CARD_FILE) in report.problems[0]


def test_card_configs_of_the_wrong_shape_are_a_problem_not_a_crash(vindex_copy: Path):
    (vindex_copy / filenames.CARD_FILE).write_text("---\nconfigs:\n- gate_vectors\n---\n# a card\n")
    problems = _problems(vindex_copy)
    assert problems == [
        "README.md: VindexFormatError: configs entry 'gate_vectors' is a str, "
        "expected a mapping with config_name"
    ]


def test_a_binary_that_shrinks_while_being_hashed_is_a_problem_not_a_hang(
    vindex_copy: Path, monkeypatch: pytest.MonkeyPatch
):
    import threading

    from vindex_hub import verify

    layout_ok = verify._check_layout
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    cut = index.layers[1].file_offset + 100

    def layout_then_shrink(
        c, index
    ):  # another process truncates the file just after the size check
        result = layout_ok(c, index)
        with open(vindex_copy / filenames.GATE_VECTORS_BIN, "r+b") as f:
            f.truncate(cut)
        return result

    monkeypatch.setattr(verify, "_check_layout", layout_then_shrink)
    reports: list = []
    worker = threading.Thread(
        target=lambda: reports.append(verify_vindex(vindex_copy)), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "verify_vindex loops on a file that ended early"
    problems = reports[0].problems
    short = index.layers[1].nbytes - 100
    assert (
        f"layer 1: gate_vectors.bin: ends {short} bytes early (the file shrank while being read)"
        in problems
    )
    assert reports[0].integrity_failed
    assert not any(p.startswith("layer 0: gate_vectors.bin") for p in problems)


def test_each_larql_layer_field_is_checked(vindex_copy: Path):
    layer_bytes = layout.layer_nbytes(NUM_EXPERTS, NUM_FEATS, HIDDEN)
    want = {
        "num_features": NUM_EXPERTS * NUM_FEATS,
        "offset": 2 * layer_bytes,
        "length": layer_bytes,
        "num_experts": NUM_EXPERTS,
        "num_features_per_expert": NUM_FEATS,
    }
    original = (vindex_copy / filenames.LARQL_INDEX_JSON).read_text()
    for key, value in want.items():
        (vindex_copy / filenames.LARQL_INDEX_JSON).write_text(original)
        _edit_json(
            vindex_copy / filenames.LARQL_INDEX_JSON, lambda doc: doc["layers"][2].update({key: 1})
        )
        assert _problems(vindex_copy) == [
            f"layer 2: index.json says {{'{key}': 1}}, gate_vectors_index.json implies {{'{key}': {value}}}"
        ]
