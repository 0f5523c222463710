"""The card's people and provenance: how the author is named and linked, the source model (a Hub
id, or the model a local checkpoint's config names), the license inherited from the source
model's card, and the citation's year."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard

from vindex_hub.builder import build_vindex
from vindex_hub.builder.plan import local_model_id
from vindex_hub.cli import main
from vindex_hub.errors import UsageError
from vindex_hub.format import filenames, sidecar
from vindex_hub.format.card_data import CardOptions, author_markdown, default_year
from vindex_hub.source.local import LocalCheckpoint
from vindex_hub.writers.derived import rewrite_card

from vindex_fixtures import NUM_FEATS, SmallVindex

LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")


def _card(folder: Path) -> str:
    return (folder / filenames.CARD_FILE).read_text(encoding="utf-8")


def _first_line(card: str) -> str:
    return next(
        line for line in card.split("---", 2)[2].splitlines() if line.startswith("Per-expert")
    )


def _index(folder: Path) -> sidecar.VindexIndex:
    return sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())


@pytest.mark.parametrize(
    "options,want,links",
    [
        # a person's name with spaces: plain text, no link, no "team"
        (CardOptions(author="Jane Doe"), "built by Jane Doe for use", []),
        # a Hub username: a link to the user, no "team"
        (
            CardOptions(author="janedoe"),
            "built by [janedoe](https://huggingface.co/janedoe) for use",
            [("janedoe", "https://huggingface.co/janedoe")],
        ),
        # an organisation: "the [Org](link) team" (the seed card's wording)
        (
            CardOptions(author="Divinci-AI", author_kind="org"),
            "built by the [Divinci-AI](https://huggingface.co/Divinci-AI) team for use",
            [("Divinci-AI", "https://huggingface.co/Divinci-AI")],
        ),
        # a Hub-like name the user says is a person's name: plain text
        (CardOptions(author="janedoe", author_kind="name"), "built by janedoe for use", []),
        # an org kind cannot make a link out of a name the Hub cannot have
        (
            CardOptions(author="Jane Doe Lab", author_kind="org"),
            "built by Jane Doe Lab for use",
            [],
        ),
    ],
)
def test_the_author_is_named_and_linked_by_kind(
    vindex_copy: Path, options: CardOptions, want: str, links: list
):
    rewrite_card(vindex_copy, _index(vindex_copy), options)
    line = _first_line(_card(vindex_copy))
    assert want in line, line
    # Links on the line: exactly the expected ones (LarQL's is always there), none with a space.
    found = [m for m in LINK.findall(line) if "larql" not in m[1]]
    assert found == links
    assert all(" " not in url for _, url in LINK.findall(line))
    assert "team" not in line or options.author_kind == "org"


def test_an_author_with_spaces_is_never_a_namespace_in_examples(vindex_copy: Path):
    rewrite_card(vindex_copy, _index(vindex_copy), CardOptions(author="Jane Doe"))
    card = _card(vindex_copy)
    assert 'Vindex.open("your-namespace/' in card and "Jane Doe/" not in card


def test_author_kind_is_checked():
    with pytest.raises(UsageError, match="author_kind is 'team'"):
        CardOptions().updated(author_kind="team")
    assert author_markdown(CardOptions()) is None


def test_license_comes_from_the_source_model_or_says_unknown(vindex_copy: Path):
    index = _index(vindex_copy)
    index.source = sidecar.SourceInfo(repo_id="deepseek-ai/DeepSeek-V4-Flash", license="mit")
    rewrite_card(vindex_copy, index, CardOptions())
    card = _card(vindex_copy)
    assert DatasetCard(card).data.license == "mit"
    assert "- **License**: `mit`, the source model's license" in card

    rewrite_card(vindex_copy, index, CardOptions(license="apache-2.0"))  # --license wins
    assert DatasetCard(_card(vindex_copy)).data.license == "apache-2.0"

    index.source = sidecar.SourceInfo(repo_id="deepseek-ai/DeepSeek-V4-Flash")
    rewrite_card(vindex_copy, index, CardOptions())
    card = _card(vindex_copy)
    assert DatasetCard(card).data.license == "unknown"  # never MIT by default
    assert "the source model's card names none" in card


def _local_checkpoint(small_vindex: SmallVindex, tmp_path: Path, **config_extra) -> Path:
    ckpt = Path(shutil.copytree(small_vindex.checkpoint, tmp_path / "my-ckpt"))
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, **config_extra}))
    return ckpt


@pytest.mark.slow
def test_a_local_build_links_the_model_its_config_names_and_inherits_its_license(
    small_vindex: SmallVindex, tmp_path: Path, capsys
):
    ckpt = _local_checkpoint(small_vindex, tmp_path, _name_or_path="deepseek-ai/DeepSeek-V4-Flash")
    (ckpt / filenames.CARD_FILE).write_text("---\nlicense: apache-2.0\n---\n# the model\n")
    out = build_vindex(
        ckpt, tmp_path / "v", num_feats=NUM_FEATS, device="cpu", progress=False, layers="1"
    ).out
    index = _index(out)
    assert (index.source.model_id, index.source.license) == (
        "deepseek-ai/DeepSeek-V4-Flash",
        "apache-2.0",
    )
    assert index.source.repo_id is None and index.source.name == "my-ckpt"  # still a local build
    card = _card(out)
    assert (
        "- **Source model**: [`deepseek-ai/DeepSeek-V4-Flash`]"
        "(https://huggingface.co/deepseek-ai/DeepSeek-V4-Flash) (built from a local copy, "
        "folder `my-ckpt`)" in card
    )
    data = DatasetCard(card).data
    assert (data.base_model, data.license) == ("deepseek-ai/DeepSeek-V4-Flash", "apache-2.0")
    assert str(tmp_path) not in card
    assert main(["info", str(out)]) == 0
    assert "my-ckpt (deepseek_v4), a local copy of deepseek-ai/DeepSeek-V4-Flash" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_local_build_that_names_no_model_says_so(small_vindex: SmallVindex, tmp_path: Path):
    ckpt = _local_checkpoint(small_vindex, tmp_path, _name_or_path="/home/me/checkpoints/v4")
    out = build_vindex(
        ckpt, tmp_path / "v", num_feats=NUM_FEATS, device="cpu", progress=False, layers="1"
    ).out
    index = _index(out)
    assert index.source.model_id is None and index.source.license is None
    card = _card(out)
    assert (
        "- **Source model**: `my-ckpt` (a local checkpoint; its config names no Hub model)" in card
    )
    assert DatasetCard(card).data.license == "unknown"
    assert "base_model" not in DatasetCard(card).data.to_dict()
    # Fields that are not known are not written: the sidecar keeps its old shape.
    source = json.loads((out / filenames.SIDECAR_JSON).read_text())["source"]
    assert "model_id" not in source and "license" not in source


def test_a_checkpoint_in_the_hub_cache_names_its_repo(small_vindex: SmallVindex, tmp_path: Path):
    snapshot = tmp_path / "models--Org--Tiny-MoE" / "snapshots" / ("c" * 40)
    shutil.copytree(small_vindex.checkpoint, snapshot)
    with LocalCheckpoint(snapshot) as src:
        assert local_model_id(src) == "Org/Tiny-MoE"


def test_the_cli_gives_the_citation_a_year(vindex_copy: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01T00:00:00Z
    assert default_year() == 2026
    assert main(["convert", str(vindex_copy), "--author", "Jane Doe"]) == 0
    card = _card(vindex_copy)
    assert "  year = {2026}," in card and "  author = {Jane Doe}," in card
    assert main(["convert", str(vindex_copy), "--year", "2031"]) == 0
    assert "  year = {2031}," in _card(vindex_copy)


@pytest.mark.slow
def test_a_hub_build_inherits_the_model_cards_license(
    local_hub, small_vindex: SmallVindex, hub_repo_id: str, tmp_path: Path
):
    from huggingface_hub import HfApi

    ckpt = Path(shutil.copytree(small_vindex.checkpoint, tmp_path / "upload"))
    (ckpt / filenames.CARD_FILE).write_text("---\nlicense: apache-2.0\n---\n# a model\n")
    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="model")
    api.upload_folder(folder_path=ckpt, repo_id=hub_repo_id, repo_type="model")
    out = build_vindex(
        hub_repo_id, tmp_path / "v", num_feats=NUM_FEATS, device="cpu", progress=False, layers="1"
    ).out
    index = _index(out)
    assert (index.source.repo_id, index.source.license) == (hub_repo_id, "apache-2.0")
    assert index.source.model_id is None  # a Hub build names its repo_id already
    card = _card(out)
    assert (
        f"- **Source model**: [`{hub_repo_id}`](https://huggingface.co/{hub_repo_id}) at " in card
    )
    assert DatasetCard(card).data.license == "apache-2.0"
