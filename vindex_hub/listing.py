"""``vindex-hub list``: the vindexes on the Hub, from their metadata only.

One listing request (``HfApi.list_datasets(filter="vindex", author=..., expand=[cardData, tags,
usedStorage])``): nothing is downloaded. Per dataset: the base model (the card's ``base_model``),
the layers (its ``layer_NN`` configs), K (the ``var{K}`` feature of ``expert_stats``) and the
repo's stored size; a figure the card does not give is None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .format import mirror
from .format.card_data import BASE_MODEL, BASE_TAGS

VINDEX_TAG = BASE_TAGS[0]  # every vindex card carries it
_VAR_RE = re.compile(r"^var(\d+)$")


@dataclass(frozen=True)
class ListedVindex:
    repo_id: str
    base_model: str | None
    layers: int | None
    num_feats: int | None
    size: int | None  # bytes the repo stores (usedStorage)


def describe(repo_id: str, card_data: dict[str, Any] | None, size: int | None) -> ListedVindex:
    """What a dataset's card metadata says of it as a vindex."""
    data = card_data or {}
    base = data.get(BASE_MODEL)
    configs = data.get(mirror.CONFIGS_KEY) or []
    names = [c.get(mirror.CONFIG_NAME_KEY) for c in configs if isinstance(c, dict)]
    layers = sum(1 for n in names if isinstance(n, str) and mirror.layer_of_name(n) is not None)
    k = None
    infos = data.get("dataset_info") or []
    for info in infos if isinstance(infos, list) else [infos]:
        if isinstance(info, dict) and info.get("config_name") == mirror.CONFIG_EXPERT_STATS:
            for feature in info.get("features") or []:
                m = (
                    _VAR_RE.match(str(feature.get("name", "")))
                    if isinstance(feature, dict)
                    else None
                )
                if m:
                    k = int(m.group(1))
    return ListedVindex(
        repo_id=repo_id,
        base_model=base
        if isinstance(base, str)
        else (base[0] if isinstance(base, list) and base else None),
        layers=layers or None,
        num_feats=k,
        size=size,
    )


def list_vindexes(
    *,
    author: str | None = None,
    model: str | None = None,
    limit: int | None = 100,
    token: str | bool | None = None,
) -> list[ListedVindex]:
    """The datasets tagged ``vindex`` (of ``author``; of base model ``model``), newest listing order."""
    from huggingface_hub import HfApi

    from .hub.http import with_retries

    api = HfApi(token=token)
    url = f"{api.endpoint}/api/datasets"

    def fetch() -> list[Any]:
        return list(
            api.list_datasets(
                filter=VINDEX_TAG,
                author=author,
                expand=["cardData", "tags", "usedStorage"],
                limit=None if model else limit,
            )
        )

    from huggingface_hub.errors import HfHubHTTPError

    from .errors import HubError
    from .hub.errors import first_line

    try:
        listed = with_retries(fetch, url=url)
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"{url}: listing datasets failed ({first_line(exc)})") from None
    found = []
    for info in listed:
        card = info.card_data.to_dict() if info.card_data is not None else {}
        entry = describe(info.id, card, getattr(info, "used_storage", None))
        if model is None or entry.base_model == model:
            found.append(entry)
    return found[:limit] if limit is not None else found
