"""The dataset card's typed data: the user's card options and the YAML front matter.

``CardOptions`` are the fields a user chooses (license, author, repo id, citation, tags, name),
from CLI options or a small YAML/JSON file. ``card_front_matter`` builds the front matter
(``huggingface_hub.DatasetCardData``: license, tags, ``base_model``, ``configs`` and
``dataset_info``) from the sidecar and the mirror files that were written; ``read_card`` (as
``DatasetCardData``) and ``read_card_data`` (as a dict) parse it back. Every front-matter key is
spelled here; the text is rendered by ``writers.card``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..compat import features_to_yaml_list
from ..errors import UsageError, VindexFormatError
from . import mirror, sidecar

if TYPE_CHECKING:
    from huggingface_hub import DatasetCardData

BASE_TAGS = ("vindex", "moe", "sparse-routing", "mechanistic-interpretability")
# Front-matter keys (the Hub's dataset card metadata spec); those of ``configs`` are in ``mirror``.
DATASET_INFO = "dataset_info"
FEATURES = "features"
SPLITS = "splits"
SPLIT_NAME = "name"
NUM_EXAMPLES = "num_examples"
NUM_BYTES = "num_bytes"
BASE_MODEL = "base_model"
HUB_URL = "https://huggingface.co"
# The Hub's license identifier for "not known" (one of the ids its metadata accepts).
UNKNOWN_LICENSE = "unknown"
AUTHOR_KINDS = ("org", "user", "name")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class CardOptions:
    """Card fields the user sets. In a file, the keys are these field names."""

    # None: the source model's license (from its card), else "unknown" (see ``card_license``).
    license: str | None = None
    author: str | None = None  # a person ("Jane Doe"), a Hub user or an organisation ("Divinci-AI")
    # How the card names the author: "org" (a Hub organisation: "the [X](...) team"), "user" (a
    # Hub username: a link), "name" (plain text). None: a link when ``author`` is a Hub name,
    # plain text otherwise (a name with spaces is never a link).
    author_kind: str | None = None
    repo_id: str | None = (
        None  # where the vindex will live, for links: "Divinci-AI/deepseek-v4-flash-vindex"
    )
    citation: str | None = None  # a BibTeX entry; None writes one from the fields here
    extra_tags: tuple[str, ...] = ()
    pretty_name: str | None = None
    year: int | None = None  # for the automatic citation (left out when None)

    @classmethod
    def from_file(cls, path: str | Path) -> CardOptions:
        """Read a YAML (or JSON, a subset of YAML) mapping of the fields above."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read card options ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UsageError(
                f"{path}: expected a mapping of card fields, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{path}: unknown card option(s) {unknown}; known: {sorted(known)}")
        return cls().updated(where=str(path), **data)

    def updated(self, *, where: str = "card options", **changes: Any) -> CardOptions:
        """A copy with the given fields replaced; ``None`` values leave a field as it is.

        ``where`` (the options file, or the CLI) names the source in error messages.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "extra_tags" in changes:
            tags = changes["extra_tags"]
            changes["extra_tags"] = (
                (tags,) if isinstance(tags, str) else tuple(str(t) for t in tags)
            )
        if "year" in changes:
            changes["year"] = _year(changes["year"], where)
        if changes.get("author_kind") not in (None, *AUTHOR_KINDS):
            raise UsageError(
                f"{where}: author_kind is {changes['author_kind']!r}; expected one of {AUTHOR_KINDS}"
            )
        return dataclasses.replace(self, **changes)


def default_year() -> int:
    """This year (UTC), or that of ``SOURCE_DATE_EPOCH`` when set (reproducible builds): the
    citation year the CLI puts on a card when none is given."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return time.gmtime(int(epoch) if epoch.isdecimal() else None).tm_year


def is_hub_name(name: str) -> bool:
    """Whether ``name`` can be a Hub user or organisation name (so a link to it can resolve)."""
    return bool(_HUB_NAME.fullmatch(name)) and "--" not in name and ".." not in name


def author_markdown(options: CardOptions) -> str | None:
    """How the card's first line names the author: ``the [Org](https://huggingface.co/Org) team``,
    ``[user](https://huggingface.co/user)``, or the plain name; None without an author."""
    author = (options.author or "").strip()
    if not author:
        return None
    kind = options.author_kind or ("user" if is_hub_name(author) else "name")
    if kind == "name" or not is_hub_name(author):
        return author
    link = f"[{author}]({HUB_URL}/{author})"
    return f"the {link} team" if kind == "org" else link


def card_license(index: sidecar.VindexIndex, options: CardOptions) -> str:
    """The card's license: the one chosen, else the source model's, else ``unknown`` (a vindex is
    derived from the model's weights, so no other license can be assumed for it)."""
    return options.license or index.source.license or UNKNOWN_LICENSE


def _year(value: Any, where: str) -> int:
    # YAML gives 2026 as an int; a CLI or a quoted value gives "2026". Nothing else is a year.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise UsageError(f"{where}: year is {value!r}; expected a year such as 2026")


# Bounds checked before a card is read / its YAML parsed (a card is remote data; YAML parsing is
# slow: tens of seconds for tens of MB). A vindex card's front matter grows by well under 1 KiB
# per layer, so real ones stay far below these.
MAX_CARD_BYTES = 16 * 2**20
MAX_FRONT_MATTER_BYTES = 2 * 2**20
_FRONT_MATTER = re.compile(r"^\s*---[\r\n]+([\S\s]*?)[\r\n]+---(\r\n|\n|$)")


def read_card(path: Path, *, where: str | None = None) -> DatasetCardData:
    """The front matter of the card at ``path`` (``huggingface_hub.DatasetCardData``, empty without one).

    Raises ``VindexFormatError`` naming ``where`` (default: the path) when the front matter is not
    YAML or not a mapping, or when the card (``MAX_CARD_BYTES``) or its front matter
    (``MAX_FRONT_MATTER_BYTES``) is too large, before parsing it.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    size = path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise VindexFormatError(
            f"{where or path}: the card is {size:,} bytes, above the {MAX_CARD_BYTES:,} a card "
            "may hold; refusing to parse it"
        )
    text = path.read_text(encoding="utf-8")
    front = _FRONT_MATTER.match(text)
    if front is not None and len(front.group(1)) > MAX_FRONT_MATTER_BYTES:
        raise VindexFormatError(
            f"{where or path}: the card's YAML front matter is {len(front.group(1)):,} characters, "
            f"above the {MAX_FRONT_MATTER_BYTES:,} allowed; refusing to parse it"
        )
    try:
        card = DatasetCard(text)
        assert isinstance(card.data, DatasetCardData)  # a DatasetCard's data
        return card.data
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a front matter that is not a mapping
        detail = " ".join(str(exc).split())  # one line: a YAML error spans several
        raise VindexFormatError(
            f"{where or path}: the card's YAML front matter does not parse "
            f"({type(exc).__name__}: {detail})"
        ) from None


def read_card_data(path: Path) -> dict[str, Any]:
    """``read_card`` as a dict."""
    data: dict[str, Any] = read_card(path).to_dict()  # type: ignore[no-untyped-call]
    return data


def title_of(index: sidecar.VindexIndex, options: CardOptions) -> str:
    if options.pretty_name:
        return options.pretty_name
    if options.repo_id:
        return options.repo_id.split("/")[-1]
    return f"{index.display_name.split('/')[-1].lower()}-vindex"


def dataset_info(files: Sequence[mirror.MirrorFile]) -> list[dict[str, Any]]:
    """``dataset_info`` entries, one per config (``mirror.card_configs``), from the files as written.

    ``num_bytes`` is the decoded size of the split's data as ``datasets`` computes it,
    ``download_size`` the files' size. Features use ``datasets``' own YAML spelling (``{name,
    list: float32, length: H}`` for a fixed-size list), the inverse of what ``load_dataset`` parses.
    """
    from datasets import Features

    infos = []
    for config in mirror.card_configs(files):
        num_bytes = sum(f.num_bytes for f in config.files)
        infos.append(
            {
                mirror.CONFIG_NAME_KEY: config.name,
                FEATURES: features_to_yaml_list(
                    Features.from_arrow_schema(config.files[0].arrow_schema)
                ),
                SPLITS: [
                    {
                        SPLIT_NAME: mirror.SPLIT,
                        NUM_BYTES: num_bytes,
                        NUM_EXAMPLES: sum(f.num_rows for f in config.files),
                    }
                ],
                "download_size": sum(f.size for f in config.files),
                "dataset_size": num_bytes,
            }
        )
    return infos


def card_front_matter(
    index: sidecar.VindexIndex, files: Sequence[mirror.MirrorFile], options: CardOptions
) -> DatasetCardData:
    """The card's ``DatasetCardData`` for a vindex whose mirror holds ``files``."""
    from huggingface_hub import DatasetCardData

    base_model = index.source.model_repo_id
    extra: dict[str, Any] = {BASE_MODEL: base_model} if base_model else {}
    return DatasetCardData(
        license=card_license(index, options),
        pretty_name=title_of(index, options),
        tags=list(dict.fromkeys([*BASE_TAGS, *options.extra_tags])),
        **extra,
        configs=[
            {
                mirror.CONFIG_NAME_KEY: config.name,
                **({mirror.DEFAULT_KEY: True} if config.default else {}),
                mirror.DATA_FILES_KEY: [
                    {
                        mirror.SPLIT_KEY: mirror.SPLIT,
                        mirror.PATH_KEY: [f.path for f in config.files]
                        if len(config.files) > 1
                        else config.files[0].path,
                    }
                ],
            }
            for config in mirror.card_configs(files)
        ],
        dataset_info=dataset_info(files),
    )
