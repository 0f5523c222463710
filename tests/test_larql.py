"""LarQL's index.json (version 2) and router_weights.bin over the same gate_vectors.bin."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vindex_hub.checksums import sha256_file
from vindex_hub.errors import UsageError
from vindex_hub.format import filenames, sidecar
from vindex_hub.format.larql import extracted_at
from vindex_hub.writers.larql import write_larql_index

from vindex_fixtures import (
    HIDDEN,
    INTER,
    NUM_EXPERTS,
    NUM_FEATS,
    NUM_LAYERS,
    SmallVindex,
)


def _larql(folder: Path) -> dict:
    return json.loads((folder / filenames.LARQL_INDEX_JSON).read_text())


def test_index_json_fields(small_vindex: SmallVindex):
    doc = _larql(small_vindex.folder)
    config = json.loads((small_vindex.checkpoint / "config.json").read_text())
    assert doc["version"] == 2
    assert doc["family"] == "deepseek_v4"
    assert (doc["num_layers"], doc["hidden_size"], doc["vocab_size"]) == (
        NUM_LAYERS,
        HIDDEN,
        config["vocab_size"],
    )
    assert doc["intermediate_size"] == INTER  # no dense FFN size in the config: the expert's
    assert doc["embed_scale"] == 1.0 and doc["down_top_k"] == 0 and doc["dtype"] == "f32"
    assert doc["model_config"]["moe"] == {
        "num_experts": NUM_EXPERTS,
        "top_k": 2,
        "shared_expert": True,
        "router_type": "top_k_sqrtsoftplus",
        "moe_intermediate_size": INTER,
        "hybrid": False,
    }
    assert doc["source"]["extracted_at"] == "1970-01-01T00:00:00Z"
    assert doc["source"]["larql_version"].startswith("vindex-hub ")


def test_layers_address_the_same_bytes_as_the_sidecar(small_vindex: SmallVindex):
    folder = small_vindex.folder
    doc = _larql(folder)
    index = sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())
    assert [e["layer"] for e in doc["layers"]] == index.layer_ids
    data = (folder / filenames.GATE_VECTORS_BIN).read_bytes()
    for e in doc["layers"]:
        assert (
            e["num_features"]
            == e["num_experts"] * e["num_features_per_expert"]
            == NUM_EXPERTS * NUM_FEATS
        )
        # LarQL reads [num_features, hidden] row-major at offset: the sidecar's layer, expert by expert
        block = np.frombuffer(data[e["offset"] : e["offset"] + e["length"]], dtype="<f4").reshape(
            e["num_features"], HIDDEN
        )
        assert (
            block.tobytes()
            == small_vindex.binary_layer(folder, e["layer"]).reshape(-1, HIDDEN).tobytes()
        )


def test_checksums_are_the_files_sha256(small_vindex: SmallVindex):
    checksums = _larql(small_vindex.folder)["checksums"]
    assert sorted(checksums) == [filenames.GATE_VECTORS_BIN, filenames.LARQL_ROUTER_BIN]
    for name, digest in checksums.items():
        assert hashlib.sha256((small_vindex.folder / name).read_bytes()).hexdigest() == digest


def test_router_weights_bin_holds_the_checkpoint_routers(small_vindex: SmallVindex):
    raw = np.fromfile(small_vindex.folder / filenames.LARQL_ROUTER_BIN, dtype="<f4")
    per_layer = NUM_EXPERTS * HIDDEN + NUM_EXPERTS
    assert raw.size == NUM_LAYERS * per_layer
    for layer in range(NUM_LAYERS):
        chunk = raw[layer * per_layer : (layer + 1) * per_layer]
        weight, bias = small_vindex.router(layer)
        np.testing.assert_array_equal(
            chunk[: NUM_EXPERTS * HIDDEN].reshape(NUM_EXPERTS, HIDDEN), weight
        )
        want_bias = np.zeros(NUM_EXPERTS, np.float32) if bias is None else bias
        np.testing.assert_array_equal(chunk[NUM_EXPERTS * HIDDEN :], want_bias)
    # the synthetic checkpoint's hash layer 0 has no bias, the learned-routing layers have one
    assert small_vindex.router(0)[1] is None and small_vindex.router(1)[1] is not None


def test_extracted_at_is_reproducible(monkeypatch: pytest.MonkeyPatch, vindex_copy: Path):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert extracted_at() == "2026-01-01T00:00:00Z"
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    binary_sha256 = sha256_file(vindex_copy / filenames.GATE_VECTORS_BIN)
    write_larql_index(vindex_copy, index, {}, None, binary_sha256=binary_sha256)
    first = (vindex_copy / filenames.LARQL_INDEX_JSON).read_bytes()
    write_larql_index(vindex_copy, index, {}, None, binary_sha256=binary_sha256)
    assert (vindex_copy / filenames.LARQL_INDEX_JSON).read_bytes() == first
    assert json.loads(first)["source"]["extracted_at"] == "2026-01-01T00:00:00Z"


def test_router_weights_need_the_routers(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    with pytest.raises(UsageError, match=filenames.LARQL_ROUTER_BIN):
        write_larql_index(vindex_copy, index, {}, None, binary_sha256="0" * 64, router=True)
