"""The on-disk schema: layer selections, the sidecar's JSON round trip and its layout checks."""

import json

import pytest

from vindex_hub.errors import UsageError, VindexFormatError
from vindex_hub.format import layout, mirror, selection, sidecar


def make_index(layers=(0, 1, 2), num_experts=4, num_feats=8, hidden=32) -> sidecar.VindexIndex:
    index = sidecar.VindexIndex(
        num_feats=num_feats,
        model_config=sidecar.ModelConfig(
            model_type="deepseek_v4",
            num_hidden_layers=max(layers) + 1,
            moe=sidecar.MoEConfig(num_experts, 1, 2, hidden, 16),
        ),
        source=sidecar.SourceInfo(repo_id="ns/model", revision="a" * 40),
        builder=sidecar.BuilderInfo(name="vindex-hub", version="0", method="m"),
    )
    for slot, layer in enumerate(layers):
        index.layers[layer] = sidecar.LayerEntry(
            file_offset=layout.layer_offset(slot, num_experts, num_feats, hidden),
            shape=[num_experts, num_feats, hidden],
            nbytes=index.layer_nbytes,
            sha256="0" * 64,
            median_var=0.5,
            q25_var=0.4,
            q75_var=0.6,
        )
    return index


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("0-3", [0, 1, 2, 3]),
        ("3,5,7-9", [3, 5, 7, 8, 9]),
        ("5,5,1", [1, 5]),
        ([2, 0], [0, 2]),
        (None, list(range(10))),
    ],
)
def test_parse_layers(spec, expected):
    assert selection.parse_layers(spec, 10) == expected


@pytest.mark.parametrize("spec", ["", "a-b", "5-3", "0-10", "-1"])
def test_parse_layers_rejects(spec):
    with pytest.raises(UsageError):
        selection.parse_layers(spec, 10)


def test_layer_config_names_round_trip():
    assert mirror.layer_config(1, 43) == "layer_01"
    assert mirror.layer_config(42, 43) == "layer_42"
    assert mirror.layer_config(7, 99) == "layer_07"
    assert mirror.layer_config(7, 100) == "layer_007"  # three digits from 100 layers
    assert mirror.layer_config(120, 128) == "layer_120"
    assert mirror.layer_of_name(mirror.layer_config(7, 128)) == 7
    assert mirror.layer_of_name("gate_vectors") is None
    assert mirror.gate_vectors_parquet(3, 43) == "data/gate_vectors/layer_03.parquet"
    assert mirror.gate_vectors_parquet(3, 128) == "data/gate_vectors/layer_003.parquet"


def test_index_round_trip_and_seed_keys():
    index = make_index(layers=(3, 4, 5))
    data = json.loads(index.dumps())
    # The keys the seed card's usage snippet reads.
    assert data["model_config"]["moe"]["n_routed_experts"] == 4
    assert data["model_config"]["moe"]["hidden_size"] == 32
    assert data["num_feats"] == 8
    assert data["layers"]["4"]["file_offset"] == index.layer_nbytes
    assert data["layers"]["3"]["median_var8"] == 0.5
    back = sidecar.VindexIndex.from_json(data)
    assert back == index
    assert back.layer_ids == [3, 4, 5]
    assert back.total_bytes == 3 * 4 * 8 * 32 * 4


def test_index_refuses_unknown_format_version():
    data = make_index().to_json()
    data["format_version"] = 99
    with pytest.raises(VindexFormatError, match="format_version 99"):
        sidecar.VindexIndex.from_json(data)


def test_index_rejects_overlapping_offsets():
    data = make_index().to_json()
    data["layers"]["1"]["file_offset"] = 0
    with pytest.raises(VindexFormatError, match="layer 1 file_offset 0"):
        sidecar.VindexIndex.from_json(data)


def test_index_rejects_file_too_short():
    index = make_index()
    with pytest.raises(VindexFormatError, match="layer 2 spans"):
        index.check_layout(file_size=index.total_bytes - 4)
    with pytest.raises(VindexFormatError, match="holds"):
        index.check_layout(file_size=index.total_bytes + 4)
    index.check_layout(file_size=index.total_bytes)


def test_malformed_sidecar_names_the_file():
    with pytest.raises(VindexFormatError, match="where.json: malformed"):
        sidecar.VindexIndex.from_json({"format_version": 1, "dtype": "float32"}, where="where.json")
    with pytest.raises(VindexFormatError, match="not valid JSON"):
        sidecar.VindexIndex.loads("{", where="x")
