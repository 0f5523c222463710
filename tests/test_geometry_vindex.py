"""Expert geometry in a real vindex: built with ``--geometry``, added later (to a finished or a
seed-format folder), verified, drawn in the card; ``compare`` of two vindexes (folders and lazily
read Hub repos) and its publishable dataset; ``list`` against the local Hub's listing API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_mirror import _seed_style

from vindex_hub import Vindex, add_geometry, compare
from vindex_hub.builder import build_vindex
from vindex_hub.errors import VindexFormatError
from vindex_hub.format import filenames, geometry, mirror, phases, statistics
from vindex_hub.listing import list_vindexes
from vindex_hub.numerics import geometry as geo
from vindex_hub.push import push_vindex
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint
from vindex_hub.verify import verify_vindex

from vindex_fixtures import (
    CARD_OPTIONS,
    HIDDEN,
    NUM_EXPERTS,
    NUM_FEATS,
    NUM_LAYERS,
    SmallVindex,
    binary_layer,
    cli,
    upload,
)


@pytest.fixture(scope="module")
def geometry_vindex(small_vindex: SmallVindex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small vindex's checkpoint built again with ``geometry=True``."""
    out = tmp_path_factory.mktemp("geometry") / "vindex"
    build_vindex(
        small_vindex.checkpoint,
        out,
        num_feats=NUM_FEATS,
        device="cpu",
        progress=False,
        card_options=CARD_OPTIONS,
        geometry=True,
    )
    return out


def _matrices(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column).combine_chunks()
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, NUM_EXPERTS, NUM_EXPERTS)


def _reference_subspaces(small_vindex: SmallVindex, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 LAPACK: each expert's top-K right singular vectors and values."""
    vs, ss = [], []
    for e in range(NUM_EXPERTS):
        _, s, vt = np.linalg.svd(small_vindex.gate_weight(layer, e), full_matrices=False)
        vs.append(vt[:NUM_FEATS])
        ss.append(s[:NUM_FEATS])
    return np.stack(vs), np.stack(ss)


@pytest.mark.slow
def test_build_with_geometry_publishes_the_figures_of_the_model(
    geometry_vindex: Path, small_vindex: SmallVindex, tmp_path: Path
):
    from datasets import load_dataset

    table = pq.read_table(geometry_vindex / geometry.EXPERT_OVERLAP_PARQUET)
    assert table.num_rows == NUM_LAYERS * NUM_EXPERTS
    plain, weighted = (
        _matrices(table, geometry.COL_OVERLAP),
        _matrices(table, geometry.COL_WEIGHTED_OVERLAP),
    )
    stats = pq.read_table(geometry_vindex / mirror.EXPERT_STATS_PARQUET)
    doc = json.loads((geometry_vindex / filenames.PHASE1_JSON).read_text())
    for layer in range(NUM_LAYERS):
        # overlaps depend on the subspaces only: the model's own float64 SVD gives the same
        v, s = _reference_subspaces(small_vindex, layer)
        c2 = np.einsum("aih,bjh->abij", v, v) ** 2
        w = s**2 / np.sqrt(np.sum(s**4, axis=1, keepdims=True))
        assert np.max(np.abs(plain[layer] - c2.sum(axis=(2, 3)) / NUM_FEATS)) < 1e-5
        assert np.max(np.abs(weighted[layer] - np.einsum("abij,ai,bj->ab", c2, w, w))) < 1e-5
        # router alignment against the model's router rows
        router, _ = small_vindex.router(layer)
        r = router.astype(np.float64)
        shares = np.array(
            [
                [np.sum((v[j] @ r[i]) ** 2) / np.sum(r[i] ** 2) for j in range(NUM_EXPERTS)]
                for i in range(NUM_EXPERTS)
            ]
        )
        rows = stats.filter(pa.compute.equal(stats[mirror.COL_LAYER], layer))
        own = rows.column(geometry.COL_ROUTER_ALIGNMENT).to_numpy()
        assert np.allclose(own, np.diag(shares), atol=1e-5)
        other = shares + np.diag([-np.inf] * NUM_EXPERTS)
        assert np.allclose(
            rows.column(geometry.COL_ROUTER_ALIGNMENT_OTHER_MAX).to_numpy(),
            other.max(axis=1),
            atol=1e-5,
        )
        section = doc[phases.LAYERS][str(layer)][geometry.GEOMETRY]
        summary = geo.summarize_overlaps(plain[layer])
        assert section[geometry.OVERLAP][geometry.MEAN] == pytest.approx(summary.mean, abs=1e-6)
        assert section[geometry.OVERLAP][geometry.CLOSEST_PAIR] == list(summary.closest_pair)
        assert section[geometry.RANDOM_BASELINE] == NUM_FEATS / HIDDEN
        routed = doc[phases.LAYERS][str(layer)][phases.ROUTED]
        assert routed[statistics.mp_var_key(NUM_FEATS)] == geo.mp_energy_fraction(32, HIDDEN, 8)

    report = verify_vindex(geometry_vindex)
    assert report.ok, report.render()
    assert any(geometry.EXPERT_OVERLAP_PARQUET in c for c in report.checks)
    card = (geometry_vindex / filenames.CARD_FILE).read_text()
    assert "## Expert geometry" in card and f"]({filenames.GEOMETRY_PLOT_FILE})" in card
    assert f"`{geometry.COL_ROUTER_ALIGNMENT}`" in card
    assert (geometry_vindex / filenames.GEOMETRY_PLOT_FILE).read_bytes().startswith(b"\x89PNG")
    assert "Marchenko-Pastur" in card
    # the real datasets client reads the new config through the card
    ds = load_dataset(
        str(geometry_vindex), geometry.CONFIG_EXPERT_OVERLAP, split="train", cache_dir=str(tmp_path)
    )
    assert np.allclose(np.array(ds[geometry.COL_OVERLAP][:NUM_EXPERTS]), plain[0])
    with Vindex.open(geometry_vindex) as vx:
        assert np.max(np.abs(vx.overlap(2) - plain[2])) < 1e-6
        assert np.max(np.abs(vx.overlap(2, weighted=True) - weighted[2])) < 1e-6


@pytest.mark.slow
def test_build_with_geometry_over_a_complete_build_adds_it(
    small_vindex: SmallVindex, geometry_vindex: Path, tmp_path: Path
):
    folder = Path(shutil.copytree(small_vindex.folder, tmp_path / "v"))
    summary = build_vindex(
        small_vindex.checkpoint,
        folder,
        num_feats=NUM_FEATS,
        device="cpu",
        progress=False,
        card_options=CARD_OPTIONS,
        larql_router=True,
        geometry=True,
    )
    assert summary.already_complete
    assert pq.read_table(folder / geometry.EXPERT_OVERLAP_PARQUET).equals(
        pq.read_table(geometry_vindex / geometry.EXPERT_OVERLAP_PARQUET)
    )
    assert verify_vindex(folder).ok


def test_a_vindex_without_geometry_has_no_section_but_the_baseline(small_vindex: SmallVindex):
    card = (small_vindex.folder / filenames.CARD_FILE).read_text()
    assert "## Expert geometry" not in card and "Marchenko-Pastur" in card
    assert not (small_vindex.folder / geometry.EXPERT_OVERLAP_PARQUET).exists()


def test_the_var_plot_shows_the_marchenko_pastur_line_on_a_0_to_1_axis(small_vindex: SmallVindex):
    from vindex_hub.writers.card import var_plot_figure

    from vindex_fixtures import INTER, read_index

    ax = var_plot_figure(read_index(small_vindex.folder)).axes[0]
    assert ax.get_ylim() == (0, 1)
    mp = geo.mp_energy_fraction(INTER, HIDDEN, NUM_FEATS)
    assert any(list(line.get_ydata()) == [mp, mp] for line in ax.lines)


def test_geometry_added_later_equals_the_build_time_geometry(
    small_vindex: SmallVindex, geometry_vindex: Path, tmp_path: Path
):
    out = add_geometry(small_vindex.folder, tmp_path / "later", card_options=CARD_OPTIONS)
    assert out == tmp_path / "later"
    assert not (small_vindex.folder / geometry.EXPERT_OVERLAP_PARQUET).exists()  # a copy
    for rel in (geometry.EXPERT_OVERLAP_PARQUET, mirror.EXPERT_STATS_PARQUET):
        assert pq.read_table(out / rel).equals(pq.read_table(geometry_vindex / rel)), rel
    later = json.loads((out / filenames.PHASE1_JSON).read_text())[phases.LAYERS]
    built = json.loads((geometry_vindex / filenames.PHASE1_JSON).read_text())[phases.LAYERS]
    assert later == built
    report = verify_vindex(out)
    assert report.ok, report.render()
    assert "## Expert geometry" in (out / filenames.CARD_FILE).read_text()


@pytest.mark.slow
def test_geometry_of_a_seed_format_vindex(vindex_copy: Path, small_vindex: SmallVindex):
    _seed_style(vindex_copy)
    result = cli("geometry", str(vindex_copy))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(vindex_copy / geometry.EXPERT_OVERLAP_PARQUET)
    assert table.column_names == [geometry.COL_LAYER, geometry.COL_EXPERT, geometry.COL_OVERLAP]
    v = binary_layer(vindex_copy, 1).astype(np.float64)
    c2 = np.einsum("aih,bjh->abij", v, v) ** 2
    assert (
        np.max(np.abs(_matrices(table, geometry.COL_OVERLAP)[1] - c2.sum((2, 3)) / NUM_FEATS))
        < 1e-6
    )
    report = verify_vindex(vindex_copy)
    assert report.ok, report.render()
    with Vindex.open(vindex_copy) as vx, pytest.raises(VindexFormatError, match="energy-weighted"):
        vx.overlap(1, weighted=True)
    section = json.loads((vindex_copy / filenames.PHASE1_JSON).read_text())[phases.LAYERS]["1"]
    assert geometry.WEIGHTED_OVERLAP not in section[geometry.GEOMETRY]  # no singular values
    assert geometry.ROUTER_ALIGNMENT not in section[geometry.GEOMETRY]  # no router
    card = (vindex_copy / filenames.CARD_FILE).read_text()
    assert "## Expert geometry" in card and f"`{geometry.COL_ROUTER_ALIGNMENT}`" not in card


@pytest.mark.slow
def test_geometry_of_a_seed_format_repo_on_the_hub(
    local_hub, hub_repo_id: str, vindex_copy: Path, tmp_path: Path
):
    _seed_style(vindex_copy)
    repo = upload(vindex_copy, hub_repo_id)
    folder = add_geometry(repo, tmp_path / "pulled")
    report = verify_vindex(folder)
    assert report.ok, report.render()
    assert (folder / geometry.EXPERT_OVERLAP_PARQUET).is_file()
    assert (folder / filenames.GATE_VECTORS_BIN).read_bytes() == (
        vindex_copy / filenames.GATE_VECTORS_BIN
    ).read_bytes()


@pytest.mark.slow
def test_geometry_of_a_current_repo_is_pulled_then_added(
    local_hub, hub_repo_id: str, small_vindex: SmallVindex, tmp_path: Path
):
    repo = upload(small_vindex.folder, hub_repo_id)
    result = cli("geometry", repo, "-o", str(tmp_path / "pulled"))
    assert result.returncode == 0, result.stderr
    assert verify_vindex(tmp_path / "pulled").ok
    assert "## Expert geometry" in (tmp_path / "pulled" / filenames.CARD_FILE).read_text()
    again = cli("geometry", str(small_vindex.folder), "-o", str(tmp_path / "pulled"))
    assert again.returncode == 1 and "exists and is not empty" in again.stderr
    assert again.stderr.count("\n") == 1


def test_a_data_only_pull_brings_the_overlap_config(
    local_hub, hub_repo_id: str, geometry_vindex: Path, tmp_path: Path
):
    from vindex_hub import pull_vindex

    repo = upload(geometry_vindex, hub_repo_id)
    out = pull_vindex(repo, tmp_path / "data", format="arrow")
    assert pq.read_table(out / geometry.EXPERT_OVERLAP_PARQUET).equals(
        pq.read_table(geometry_vindex / geometry.EXPERT_OVERLAP_PARQUET)
    )


@pytest.mark.slow
def test_a_pull_of_some_layers_keeps_their_geometry(
    local_hub, hub_repo_id: str, geometry_vindex: Path, tmp_path: Path
):
    from vindex_hub import pull_vindex

    repo = upload(geometry_vindex, hub_repo_id)
    out = pull_vindex(repo, tmp_path / "some", layers="1-2")  # verified by pull
    table = pq.read_table(out / geometry.EXPERT_OVERLAP_PARQUET)
    full = pq.read_table(geometry_vindex / geometry.EXPERT_OVERLAP_PARQUET)
    assert table.equals(full.slice(NUM_EXPERTS, 2 * NUM_EXPERTS))
    assert "## Expert geometry" in (out / filenames.CARD_FILE).read_text()
    assert geometry.COL_ROUTER_ALIGNMENT in pq.read_schema(out / mirror.EXPERT_STATS_PARQUET).names


def test_verify_finds_a_changed_overlap(geometry_vindex: Path, tmp_path: Path):
    folder = Path(shutil.copytree(geometry_vindex, tmp_path / "v"))
    path = folder / geometry.EXPERT_OVERLAP_PARQUET
    table = pq.read_table(path)
    values = _matrices(table, geometry.COL_OVERLAP).copy()
    values[0, 1, 2] += 1e-3
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1), type=pa.float32()), NUM_EXPERTS
    )
    table = table.set_column(
        table.column_names.index(geometry.COL_OVERLAP), geometry.COL_OVERLAP, column
    )
    pq.write_table(table, path)
    report = verify_vindex(folder)
    assert not report.ok
    assert any(
        "layer 0" in p and geometry.EXPERT_OVERLAP_PARQUET in p and "differs" in p
        for p in report.problems
    ), report.problems


def _other_vindex(root: Path, hidden: int = HIDDEN) -> Path:
    """A second model of the same shape (other random weights)."""
    checkpoint = make_deepseek_v4_checkpoint(
        root / "checkpoint",
        num_layers=NUM_LAYERS,
        num_experts=NUM_EXPERTS,
        hidden_size=hidden,
        moe_intermediate_size=32,
        seed=11,
    )
    build_vindex(checkpoint, root / "vindex", num_feats=NUM_FEATS, device="cpu", progress=False)
    return root / "vindex"


@pytest.mark.slow
def test_compare_a_hub_vindex_with_a_folder_reads_only_the_compared_layer(
    local_hub, hub_repo_id: str, small_vindex: SmallVindex, tmp_path: Path
):
    other = _other_vindex(tmp_path / "other")
    repo = upload(small_vindex.folder, hub_repo_id)
    local_hub.reset_stats()
    out = tmp_path / "comparison"
    # a cache of its own: other tests of the session may have cached this binary's layers
    result = compare(repo, other, out=out, layers="1", cache_dir=tmp_path / "hub-cache")
    layer_bytes = NUM_EXPERTS * NUM_FEATS * HIDDEN * 4
    assert local_hub.stats().file(repo, filenames.GATE_VECTORS_BIN).bytes_sent == layer_bytes
    a = binary_layer(small_vindex.folder, 1).astype(np.float64)
    b = binary_layer(other, 1).astype(np.float64)
    cross = (np.einsum("aih,bjh->abij", a, b) ** 2).sum((2, 3)) / NUM_FEATS
    got = result.layers[1]
    assert np.max(np.abs(got.cross - cross)) < 1e-6
    assert np.allclose(got.same_index, np.diag(cross), atol=1e-6)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cross, maximize=True)
    assert got.matched[rows].sum() == pytest.approx(cross[rows, cols].sum(), abs=1e-6)

    doc = json.loads((out / geometry.COMPARE_JSON).read_text())
    assert doc["a"]["repo_id"] == repo and doc["a"]["commit"] == result.document["a"]["commit"]
    assert len(doc["a"]["commit"]) == 40
    assert doc["b"]["name"] == "vindex" and str(tmp_path) not in json.dumps(doc)  # no local path
    report = verify_vindex(out)
    assert report.ok, report.render()
    pushed = push_vindex(out, f"{hub_repo_id}-cmp", progress=False)
    assert pushed.commit_oid
    from datasets import load_dataset

    ds = load_dataset(f"{hub_repo_id}-cmp", split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[0][geometry.COL_LAYER] == 1  # the default config: layer_summary


def test_compare_of_a_vindex_with_itself_matches_every_expert_to_itself(
    small_vindex: SmallVindex,
):
    result = compare(small_vindex.folder, small_vindex.folder)
    for comparison in result.layers.values():
        assert np.array_equal(comparison.match, np.arange(NUM_EXPERTS))
        assert np.allclose(comparison.same_index, 1, atol=1e-6)


def test_verify_finds_a_changed_comparison(small_vindex: SmallVindex, tmp_path: Path):
    out = tmp_path / "c"
    compare(small_vindex.folder, small_vindex.folder, out=out)
    doc = json.loads((out / geometry.COMPARE_JSON).read_text())
    doc[geometry.COMPARE_LAYERS]["2"]["mean_matched"] = 0.5
    (out / geometry.COMPARE_JSON).write_text(json.dumps(doc))
    report = verify_vindex(out)
    assert any("layer 2" in p and "mean_matched" in p for p in report.problems), report.problems


@pytest.mark.slow
def test_compare_refuses_different_hidden_sizes_in_one_line(
    small_vindex: SmallVindex, tmp_path: Path
):
    other = _other_vindex(tmp_path / "wide", hidden=2 * HIDDEN)
    result = cli("compare", str(small_vindex.folder), str(other), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "hidden sizes differ: 64" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_list_finds_vindexes_by_author_and_model(
    local_hub, hub_repo_id: str, small_vindex: SmallVindex, geometry_vindex: Path, tmp_path: Path
):
    author = hub_repo_id.split("/")[1][:20] + "-ns"
    upload(small_vindex.folder, f"{author}/first")
    upload(geometry_vindex, f"{author}/second")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("---\ntags:\n- text\n---\n# not a vindex\n")
    upload(plain, f"{author}/not-a-vindex")
    tagged = tmp_path / "tagged"
    tagged.mkdir()
    (tagged / "README.md").write_text(
        "---\nbase_model: org/base-moe\ntags:\n- vindex\n---\n# a vindex of org/base-moe\n"
    )
    upload(tagged, f"{author}/third")
    found = list_vindexes(author=author)
    assert [v.repo_id for v in found] == [f"{author}/first", f"{author}/second", f"{author}/third"]
    first = found[0]
    assert (first.layers, first.num_feats, first.base_model) == (NUM_LAYERS, NUM_FEATS, None)
    assert first.size > (small_vindex.folder / filenames.GATE_VECTORS_BIN).stat().st_size
    assert [v.repo_id for v in list_vindexes(author=author, model="org/base-moe")] == [
        f"{author}/third"
    ]
    assert list_vindexes(author=author, model="someone/else") == []
    result = cli("list", "--author", author, "--model", "org/base-moe", "--json")
    assert result.returncode == 0, result.stderr
    assert [v["repo_id"] for v in json.loads(result.stdout)] == [f"{author}/third"]
    text = cli("list", "--author", author).stdout
    assert f"{author}/second" in text and "org/base-moe" in text


def test_names_from_remote_data_are_shown_without_control_characters():
    from vindex_hub.comparison import printable  # the one helper, safetext's

    assert printable("org/\x1b[2Jmodel\n") == "org/\\x1b[2Jmodel\\x0a"


def test_a_comparison_of_unequal_expert_counts_is_written_and_verified(tmp_path: Path):
    from vindex_hub.writers.compare import write_comparison

    rng = np.random.default_rng(0)
    a = np.linalg.qr(rng.standard_normal((6, 32, 4)))[0].transpose(0, 2, 1).astype(np.float32)
    b = a[[3, 0, 5, 1]]
    layers = {2: geo.compare_layers(a, b), 5: geo.compare_layers(a, b[::-1].copy())}
    side = {"name": "x", "repo_id": None, "commit": None, "model": "m", "model_revision": None}
    document = {
        "format_version": geometry.COMPARE_FORMAT_VERSION,
        "a": {**side, "num_experts": 6, "num_feats": 4},
        "b": {**side, "num_experts": 4, "num_feats": 4},
        "hidden_size": 32,
        "random_baseline": 4 / 32,
        "layers": {str(layer): c.summary() for layer, c in layers.items()},
    }
    write_comparison(tmp_path / "c", document, layers)
    report = verify_vindex(tmp_path / "c")
    assert report.ok, report.render()
    matching = pq.read_table(tmp_path / "c" / geometry.MATCHING_PARQUET).to_pylist()
    assert [r[geometry.COL_MATCH] for r in matching[:6]] == [1, 3, -1, 0, -1, 2]
    assert matching[5][geometry.COL_SAME_INDEX] is None  # B has no expert 5
