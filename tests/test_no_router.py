"""A vindex without a router: ZAYA, whose router is an MLP rather than an [E, H] matrix.

Its tiny random model is written by transformers' own ``save_pretrained`` and built by the real
builder. The vindex must say in every file that it has no router (sidecar ``router_matrix``
false, null phase figures, a ``router_svd`` table of layers alone, one sentence in the card), and
``verify``, ``Vindex``, ``geometry``, ``compare``, push and pull must take it as it is; asking for
router output (LarQL's router file) is one line naming the reason. A vindex of a model with a
router matrix keeps the sidecar it always had (no ``router_matrix`` key).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers")

from family_registry import build_model, reference

from vindex_hub.arch import get_architecture
from vindex_hub.builder import build_vindex
from vindex_hub.comparison import compare
from vindex_hub.errors import UnsupportedArchitectureError, UsageError, VindexFormatError
from vindex_hub.format import filenames, geometry, mirror, phases, sidecar
from vindex_hub.geometry import add_geometry
from vindex_hub.load import Vindex
from vindex_hub.pull import pull_vindex
from vindex_hub.push import push_vindex
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.verify import verify_vindex

from vindex_fixtures import cli

NUM_FEATS = 4
NO_ROUTER_SENTENCE = "this model's router is not a matrix"


@pytest.fixture(scope="module")
def zaya(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, vindex with the geometry) of a tiny ZAYA model."""
    root = tmp_path_factory.mktemp("zaya")
    build_model("zaya").save_pretrained(root / "checkpoint")
    out = root / "vindex"
    build_vindex(
        root / "checkpoint", out, num_feats=NUM_FEATS, device="cpu", progress=False, geometry=True
    )
    return root / "checkpoint", out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_the_adapter_has_no_router_and_says_why(zaya):
    checkpoint, _ = zaya
    model = build_model("zaya")
    with LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert arch.has_router_matrix is False
        e = arch.moe_config().n_routed_experts
        for layer, ref in reference(model, arch.moe_config().hidden_size, e).items():
            # the block holds no matrix over the router's classes (experts + skip) that reads the
            # hidden state: its router reads it through down_proj [router width, H]
            assert not [r.shape for r in ref.routers if r.shape[0] in (e, e + 1)], layer
            assert not [n for n in arch.layer_tensors(layer) if ".gate." in n], layer
            with pytest.raises(UnsupportedArchitectureError, match="router is an MLP") as info:
                arch.router_weight(layer, {})
            assert "\n" not in str(info.value)


def test_the_gate_rows_are_what_the_experts_forward_gates_with(zaya):
    """The fused gate_up_proj split, against transformers' own forward: the input of the experts'
    activation (``act_fn(gate) * up``) is x times the gate rows the adapter decodes."""
    import torch

    checkpoint, _ = zaya
    model = build_model("zaya")  # the same seed, so the same weights as the saved checkpoint
    with LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        e = arch.moe_config().n_routed_experts
        for layer in arch.moe_layers():
            experts = model.model.layers[layer].mlp.experts
            seen: list[torch.Tensor] = []
            hook = experts.act_fn.register_forward_hook(lambda m, i, o: seen.append(i[0]))
            x = torch.randn(
                3, arch.moe_config().hidden_size, generator=torch.Generator().manual_seed(0)
            )
            gates = arch.expert_gate_weights(layer, range(e), src.read(arch.layer_tensors(layer)))
            for expert in range(e):
                seen.clear()
                with torch.no_grad():
                    experts(x, torch.full((3, 1), expert), torch.ones(3, 1))
                assert len(seen) == 1, (layer, expert)
                np.testing.assert_allclose(
                    seen[0].numpy(), x.numpy() @ gates[expert].T, rtol=1e-5, atol=1e-6
                )
            hook.remove()


def test_every_file_states_the_absence(zaya):
    _, out = zaya
    data = json.loads((out / filenames.SIDECAR_JSON).read_text())
    assert data[sidecar.ROUTER_MATRIX_KEY] is False
    index = sidecar.VindexIndex.from_json(data)
    assert index.router_matrix is False
    phase1 = json.loads((out / filenames.PHASE1_JSON).read_text())[phases.LAYERS]
    phase2 = json.loads((out / filenames.PHASE2_JSON).read_text())[phases.LAYERS]
    assert sorted(map(int, phase1)) == sorted(map(int, phase2)) == index.layer_ids
    assert all(entry[phases.ROUTER] is None for entry in phase1.values())
    assert all(entry[phases.ROUTED] for entry in phase1.values())  # the experts' figures stay
    assert all(entry is None for entry in phase2.values())
    table = pq.read_table(out / mirror.ROUTER_SVD_PARQUET)
    assert table.column_names == [mirror.COL_LAYER]
    assert table.column(mirror.COL_LAYER).to_pylist() == index.layer_ids
    stats = pq.read_schema(out / mirror.EXPERT_STATS_PARQUET).names
    assert geometry.COL_ROUTER_ALIGNMENT not in stats  # no router: no alignment
    assert (out / geometry.EXPERT_OVERLAP_PARQUET).is_file()  # the experts' geometry is there
    assert not (out / filenames.LARQL_ROUTER_BIN).exists()
    card = (out / filenames.CARD_FILE).read_text()
    assert card.count(NO_ROUTER_SENTENCE) == 1


def test_it_verifies_loads_and_compares(zaya):
    checkpoint, out = zaya
    report = verify_vindex(out)
    assert report.ok, report.render()
    assert any("no router figures anywhere" in check for check in report.checks)
    with Vindex.open(out) as vx, LocalCheckpoint(checkpoint) as src:
        arch = get_architecture(src.config, tensor_names=src.tensor_names())
        assert vx.layers == arch.moe_layers()
        assert vx.index.router_matrix is False
        layer = vx.layers[-1]
        block = vx.layer(layer)
        assert block.shape == (vx.num_experts, NUM_FEATS, vx.hidden_size)
        np.testing.assert_allclose(np.linalg.norm(block, axis=-1), 1.0, rtol=1e-5)
        assert vx.phase2[phases.LAYERS][str(layer)] is None
        assert vx.overlap(layer).shape == (vx.num_experts, vx.num_experts)
        layers = vx.layers
        assert vx.info()[sidecar.ROUTER_MATRIX_KEY] is False
    info = cli("info", str(out))
    assert info.returncode == 0 and "router     not a matrix: no router figures" in info.stdout
    same = compare(out, out)
    assert sorted(same.layers) == layers


def test_verify_finds_a_router_figure_the_sidecar_denies(zaya, tmp_path):
    _, out = zaya
    folder = _copy(out, tmp_path)
    path = folder / filenames.PHASE2_JSON
    doc = json.loads(path.read_text())
    layer = next(iter(doc[phases.LAYERS]))
    doc[phases.LAYERS][layer] = {"effective_rank": 2.0}
    path.write_text(json.dumps(doc))
    report = verify_vindex(folder)
    assert not report.ok
    assert any(
        f"router figures for layers ['{layer}']" in p and "router_matrix false" in p
        for p in report.problems
    ), report.problems


def test_asking_for_the_router_file_is_one_line_naming_why(zaya, tmp_path):
    checkpoint, _ = zaya
    with pytest.raises(UsageError, match=r"router is an MLP, not an \[E, H\] matrix") as info:
        build_vindex(
            checkpoint, tmp_path / "out", num_feats=NUM_FEATS, device="cpu", larql_router=True
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / filenames.GATE_VECTORS_BIN).exists()
    result = cli(
        "build", str(checkpoint), "-o", str(tmp_path / "cli"), "--num-feats", "4", "--larql-router"
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--larql-router" in lines[0] and "router is an MLP" in lines[0]
    assert not (tmp_path / "cli" / filenames.GATE_VECTORS_BIN).exists()


@pytest.mark.slow
def test_geometry_added_later_keeps_the_absence(zaya, tmp_path):
    checkpoint, _ = zaya
    out = tmp_path / "plain"
    build_vindex(checkpoint, out, num_feats=NUM_FEATS, device="cpu", progress=False)
    assert not (out / geometry.EXPERT_OVERLAP_PARQUET).exists()
    add_geometry(out)
    assert (out / geometry.EXPERT_OVERLAP_PARQUET).is_file()
    report = verify_vindex(out)
    assert report.ok, report.render()
    assert (
        json.loads((out / filenames.SIDECAR_JSON).read_text())[sidecar.ROUTER_MATRIX_KEY] is False
    )


@pytest.mark.slow
def test_push_and_pull_keep_the_absence(zaya, local_hub, hub_repo_id, tmp_path):
    _, out = zaya
    push_vindex(out, hub_repo_id, progress=False)
    pulled = pull_vindex(hub_repo_id, tmp_path / "sub", layers="1-2", cache_dir=tmp_path / "hub")
    report = verify_vindex(pulled)
    assert report.ok, report.render()
    with Vindex.open(pulled) as vx:
        assert vx.layers == [1, 2] and vx.index.router_matrix is False
        assert vx.phase2[phases.LAYERS] == {"1": None, "2": None}
    assert NO_ROUTER_SENTENCE in (pulled / filenames.CARD_FILE).read_text()


def test_a_sidecar_without_the_key_has_a_router_and_a_bad_value_is_refused(zaya, small_vindex):
    _, out = zaya
    normal = json.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    assert sidecar.ROUTER_MATRIX_KEY not in normal  # a vindex with a router: the sidecar as before
    assert sidecar.VindexIndex.from_json(normal).router_matrix is True
    assert NO_ROUTER_SENTENCE not in (small_vindex.folder / filenames.CARD_FILE).read_text()
    data = json.loads((out / filenames.SIDECAR_JSON).read_text())
    data[sidecar.ROUTER_MATRIX_KEY] = "no"
    with pytest.raises(VindexFormatError, match="router_matrix is 'no', expected true or false"):
        sidecar.VindexIndex.from_json(data)


def test_an_unfinished_builds_layer_result_keeps_no_router(tmp_path):
    """A resumed build reads back the layers it finished: no router stays no router."""
    from vindex_hub.results import LayerResult

    result = LayerResult(
        layer=3,
        sha256="0" * 64,
        singular_values=np.ones((4, 2), np.float32),
        frobenius_norm=np.ones(4),
        router_singular_values=None,
        router_frobenius_norm=None,
    )
    result.save(tmp_path / "layer.safetensors")
    back = LayerResult.load(tmp_path / "layer.safetensors")
    assert back.router_singular_values is None and back.router_frobenius_norm is None
    np.testing.assert_array_equal(back.singular_values, result.singular_values)
