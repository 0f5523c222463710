"""The dataset card: valid front matter the Hub and ``datasets`` accept, the seed's text filled
from the real build, snippets that run, a deterministic plot, and user options from a file."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from vindex_hub.errors import UsageError
from vindex_hub.format import filenames, layout, mirror, selection, sidecar, statistics
from vindex_hub.format.card_data import CardOptions
from vindex_hub.writers.card import format_size, var_plot_png
from vindex_hub.writers.derived import rewrite_card

from vindex_fixtures import (
    CARD_OPTIONS,
    HIDDEN,
    INTER,
    NUM_EXPERTS,
    NUM_FEATS,
    NUM_LAYERS,
    SEED_SNIPPET,
    SmallVindex,
    first_python_block,
)


def _card(folder: Path) -> str:
    return (folder / filenames.CARD_FILE).read_text(encoding="utf-8")


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def test_front_matter_parses_and_round_trips(small_vindex: SmallVindex):
    text = _card(small_vindex.folder)
    front = yaml.safe_load(text.split("---\n")[1])
    card = DatasetCard(text)
    assert DatasetCardData(**card.data.to_dict()).to_yaml() == card.data.to_yaml()
    assert front["license"] == "unknown"  # the synthetic checkpoint has no card to inherit from
    assert "base_model" not in front  # built from a local folder: no Hub model to name
    assert front["tags"][:4] == ["vindex", "moe", "sparse-routing", "mechanistic-interpretability"]
    assert "deepseek" in front["tags"]
    configs = {c["config_name"]: c for c in front["configs"]}
    layer_configs = [f"layer_{layer:02d}" for layer in range(NUM_LAYERS)]
    assert list(configs) == [
        mirror.CONFIG_EXPERT_STATS,
        mirror.CONFIG_ROUTER_SVD,
        *layer_configs,
        mirror.CONFIG_GATE_VECTORS,
    ]
    assert [name for name, c in configs.items() if c.get("default")] == [mirror.CONFIG_EXPERT_STATS]
    for layer, name in enumerate(layer_configs):  # one split, one file
        assert configs[name]["data_files"] == [
            {"split": "train", "path": f"data/gate_vectors/layer_{layer:02d}.parquet"}
        ]
    assert configs[mirror.CONFIG_GATE_VECTORS]["data_files"] == [
        {
            "split": "train",
            "path": [f"data/gate_vectors/layer_{layer:02d}.parquet" for layer in range(NUM_LAYERS)],
        }
    ]
    assert configs[mirror.CONFIG_EXPERT_STATS]["data_files"] == [
        {"split": "train", "path": mirror.EXPERT_STATS_PARQUET}
    ]
    assert all(re.fullmatch(r"\w+", name) for name in configs)


def test_dataset_info_declares_fixed_size_lists_and_true_row_counts(small_vindex: SmallVindex):
    front = DatasetCard(_card(small_vindex.folder)).data.to_dict()
    infos = {i["config_name"]: i for i in front["dataset_info"]}
    gate = infos[mirror.CONFIG_GATE_VECTORS]
    assert {"name": mirror.COL_VECTOR, "list": "float32", "length": HIDDEN} in gate["features"]
    paths = [
        small_vindex.folder / mirror.gate_vectors_parquet(layer, NUM_LAYERS)
        for layer in range(NUM_LAYERS)
    ]
    for layer, path in enumerate(paths):
        one = infos[mirror.layer_config(layer, NUM_LAYERS)]
        assert one["features"] == gate["features"]
        assert [s["name"] for s in one["splits"]] == ["train"]
        assert (
            one["splits"][0]["num_examples"]
            == pq.read_metadata(path).num_rows
            == NUM_EXPERTS * NUM_FEATS
        )
        assert one["download_size"] == path.stat().st_size
    assert [(s["name"], s["num_examples"]) for s in gate["splits"]] == [
        ("train", NUM_LAYERS * NUM_EXPERTS * NUM_FEATS)
    ]
    assert gate["download_size"] == sum(path.stat().st_size for path in paths)
    stats = infos[mirror.CONFIG_EXPERT_STATS]
    assert {"name": statistics.SINGULAR_VALUES, "list": "float32", "length": NUM_FEATS} in stats[
        "features"
    ]
    assert stats["splits"][0]["num_examples"] == NUM_LAYERS * NUM_EXPERTS


def test_text_is_filled_from_the_build(small_vindex: SmallVindex):
    text = _card(small_vindex.folder)
    index = sidecar.VindexIndex.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    assert f"({NUM_LAYERS} layers, {HIDDEN} hidden, {INTER} moe_intermediate)" in text
    assert f"**Experts**: {NUM_EXPERTS} routed + 1 shared, 2 per token" in text
    assert f"**Layers indexed**: {NUM_LAYERS} MoE layers (L00-L02)" in text
    assert f"**Features per expert**: {NUM_FEATS} (top-K" in text
    assert f"**Total size**: {format_size(index.total_bytes)}" in text
    assert index.builder.method in text and layout.SIGN_RULE in text
    assert "singular values *are* retained" in text and "*not retained*" not in text
    assert "built by the [Divinci-AI](https://huggingface.co/Divinci-AI) team" in text
    assert f"![median var{NUM_FEATS} per layer" in text and f"]({filenames.VAR_PLOT_FILE})" in text
    assert str(small_vindex.checkpoint.parent) not in text  # no local paths in a published card
    assert "url = {https://huggingface.co/datasets/Divinci-AI/tiny-v4-vindex}" in text
    assert "year = {2026}" in text


def test_a_hub_source_gives_base_model_and_revision(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    index.source = sidecar.SourceInfo(repo_id="deepseek-ai/DeepSeek-V4-Flash", revision="a" * 40)
    rewrite_card(vindex_copy, index, CardOptions())
    text = _card(vindex_copy)
    assert DatasetCard(text).data.base_model == "deepseek-ai/DeepSeek-V4-Flash"
    assert (
        "- **Source model**: [`deepseek-ai/DeepSeek-V4-Flash`]"
        "(https://huggingface.co/deepseek-ai/DeepSeek-V4-Flash) at revision `"
        + "a" * 40 + "`"
        in text
    )
    assert "# deepseek-v4-flash-vindex\n" in text  # the seed's title, derived from the model


def test_seed_snippet_is_unchanged_and_runs(
    small_vindex: SmallVindex, monkeypatch: pytest.MonkeyPatch
):
    snippet = first_python_block(_card(small_vindex.folder))
    assert snippet == SEED_SNIPPET
    monkeypatch.chdir(small_vindex.folder)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["V_L1"].shape == (NUM_EXPERTS, NUM_FEATS, HIDDEN)
    norm = float(out.getvalue().rsplit(":", 1)[1])
    assert abs(norm - 1.0) < 1e-5


@pytest.mark.slow
def test_snippets_run_against_the_hub(
    small_vindex: SmallVindex, local_hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Push the folder where the card says it lives, then run the card's Hub snippets unchanged."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(CARD_OPTIONS.repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(
        folder_path=str(small_vindex.folder), repo_id=CARD_OPTIONS.repo_id, repo_type="dataset"
    )
    blocks = _python_blocks(_card(small_vindex.folder))
    datasets_block = next(b for b in blocks if "load_dataset" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(datasets_block, "README.md", "exec"), namespace)
    expected = small_vindex.binary_layer(small_vindex.folder, 1)
    assert namespace["V"].numpy().tobytes() == expected.tobytes()
    assert namespace["stats"].num_rows == NUM_LAYERS * NUM_EXPERTS
    vindex_block = next(b for b in blocks if "Vindex.open" in b)
    exec(compile(vindex_block, "README.md", "exec"), namespace)
    assert namespace["V"].tobytes() == expected.tobytes()
    assert namespace["v"].tobytes() == expected[0].tobytes()


def test_plot_is_a_deterministic_png_without_metadata(small_vindex: SmallVindex):
    index = sidecar.VindexIndex.loads((small_vindex.folder / filenames.SIDECAR_JSON).read_text())
    png = (small_vindex.folder / filenames.VAR_PLOT_FILE).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"tEXt" not in png and b"Software" not in png and b"tIME" not in png
    assert var_plot_png(index) == png


def test_rewriting_the_card_is_bit_identical(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    rewrite_card(vindex_copy, index, CARD_OPTIONS)
    first = (_card(vindex_copy), (vindex_copy / filenames.VAR_PLOT_FILE).read_bytes())
    (vindex_copy / filenames.CARD_FILE).unlink()
    (vindex_copy / filenames.VAR_PLOT_FILE).unlink()
    rewrite_card(vindex_copy, index, CARD_OPTIONS)
    assert (_card(vindex_copy), (vindex_copy / filenames.VAR_PLOT_FILE).read_bytes()) == first


def test_the_card_lists_the_configs_whose_files_are_there(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    rewrite_card(vindex_copy, index, CARD_OPTIONS)
    layer_configs = [mirror.layer_config(layer, NUM_LAYERS) for layer in range(NUM_LAYERS)]
    configs = DatasetCard(_card(vindex_copy)).data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == [
        mirror.CONFIG_EXPERT_STATS,
        mirror.CONFIG_ROUTER_SVD,
        *layer_configs,
        mirror.CONFIG_GATE_VECTORS,
    ]
    (vindex_copy / mirror.ROUTER_SVD_PARQUET).unlink()  # without the spectra: the layers only
    rewrite_card(vindex_copy, index, CARD_OPTIONS)
    configs = DatasetCard(_card(vindex_copy)).data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == [*layer_configs, mirror.CONFIG_GATE_VECTORS]
    # the default is then the first layer, never the whole mirror
    assert [c["config_name"] for c in configs if c.get("default")] == [layer_configs[0]]


def test_card_options_from_yaml_and_json(tmp_path: Path):
    path = tmp_path / "card.yaml"
    path.write_text(
        "license: apache-2.0\nauthor: Someone\nextra_tags: [experts, svd]\nyear: 2025\n"
        "citation: |\n  @misc{x,\n    title = {X},\n  }\n"
    )
    options = CardOptions.from_file(path)
    assert options.license == "apache-2.0" and options.author == "Someone" and options.year == 2025
    assert options.extra_tags == ("experts", "svd") and options.citation.startswith("@misc{x,")
    as_json = tmp_path / "card.json"
    as_json.write_text(json.dumps({"repo_id": "ns/name", "pretty_name": "Nice"}))
    assert CardOptions.from_file(as_json) == CardOptions(repo_id="ns/name", pretty_name="Nice")
    # CLI flags override the file; flags left unset (None) do not
    assert options.updated(license=None, author="Other").author == "Other"
    assert options.updated(license=None).license == "apache-2.0"


def test_card_options_file_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("licence: mit\n")
    with pytest.raises(UsageError, match=r"bad\.yaml.*licence"):
        CardOptions.from_file(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: expected a mapping"):
        CardOptions.from_file(bad)
    with pytest.raises(UsageError, match="missing.yaml"):
        CardOptions.from_file(tmp_path / "missing.yaml")


def test_user_citation_is_used_verbatim(vindex_copy: Path):
    index = sidecar.VindexIndex.loads((vindex_copy / filenames.SIDECAR_JSON).read_text())
    bib = "@article{mine2026,\n  title = {Mine},\n}"
    rewrite_card(vindex_copy, index, CARD_OPTIONS.updated(citation=bib, license="cc-by-4.0"))
    text = _card(vindex_copy)
    assert f"```bibtex\n{bib}\n```" in text
    assert DatasetCard(text).data.license == "cc-by-4.0"


def test_formatting_helpers():
    assert format_size(11_542_724_608) == "11.54 GB"
    assert format_size(24_576) == "24.58 kB"
    assert selection.layer_span(list(range(43)), labels=True) == "L00-L42"
    assert selection.layer_span([3, 5], labels=True) == "L03, L05"
    assert selection.layer_span([7], labels=True) == "L07"
    assert selection.layer_span([3, 4, 5]) == "3-5" and selection.layer_span([3, 5]) == "3,5"


@pytest.mark.parametrize("year", ["twenty-twenty-six", "2026.5", "true", "[2026]"])
def test_card_options_file_with_a_bad_year_names_field_and_file(tmp_path: Path, year: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"year: {year}\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: year is .*expected a year"):
        CardOptions.from_file(bad)


def test_card_option_year_may_be_quoted():
    assert CardOptions().updated(year="2026").year == 2026
    with pytest.raises(UsageError, match="card options: year is 'soon'"):
        CardOptions().updated(year="soon")
