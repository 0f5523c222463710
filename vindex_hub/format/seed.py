"""Reading a vindex folder's sidecar, upgrading the seed's published one on the way.

The seed vindex (its card: ``tests/data/deepseek-v4-flash-vindex.card.md``) was published before this format had a version: its sidecar
lacks ``format_version``, the layer checksums and the builder fields. ``load_or_upgrade_index``
returns the typed sidecar of either kind; ``convert`` writes the upgraded one back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..checksums import sha256_file_range
from ..errors import VindexFormatError
from . import sidecar, statistics
from .card_data import BASE_MODEL, read_card_data
from .filenames import CARD_FILE, GATE_VECTORS_BIN, SIDECAR_JSON

_UNSET = -1  # placeholder for a count the seed must give: no real one is negative


def load_or_upgrade_index(folder: Path) -> tuple[sidecar.VindexIndex, bool]:
    """The folder's sidecar; a seed-style one (no ``format_version``) upgraded. (index, upgraded)."""
    path = folder / SIDECAR_JSON
    try:
        data = json.loads(sidecar.read_sidecar_text(path))
    except FileNotFoundError:
        raise VindexFormatError(f"{path}: missing; a vindex folder needs its sidecar") from None
    except json.JSONDecodeError as exc:
        raise VindexFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise VindexFormatError(f"{path}: expected a JSON object")
    if sidecar.FORMAT_VERSION_KEY in data:
        return sidecar.VindexIndex.from_json(data, where=str(path)), False
    return _upgrade_seed_index(folder, data, where=str(path)), True


def _upgrade_seed_index(folder: Path, seed: dict[str, Any], *, where: str) -> sidecar.VindexIndex:
    """The seed's sidecar (num_feats, model_config, layers{file_offset, shape, var quartiles}), typed.

    What the seed did not record comes from typed defaults that ``format.sidecar`` serializes, with the
    seed's own values laid over them, so no sidecar key is spelled here: an unknown builder and
    model type, the card's ``base_model`` as the source, and per layer the ``nbytes`` and
    ``sha256`` of the block the layout rule places it in. ``from_json`` then checks the seed's
    offsets and shapes against that same rule, so the checksums cover the blocks it names.
    What the seed must give itself starts as a placeholder (-1, NaN) and is refused if still one.
    """
    seed_layers = seed.get(sidecar.LAYERS_KEY)
    if not isinstance(seed_layers, dict) or not seed_layers:
        raise VindexFormatError(
            f"{where}: no {sidecar.FORMAT_VERSION_KEY} and no {sidecar.LAYERS_KEY} "
            "mapping: neither a vindex-hub sidecar nor a seed-style one"
        )
    unset_moe = sidecar.MoEConfig(**{f.name: _UNSET for f in dataclasses.fields(sidecar.MoEConfig)})
    defaults = sidecar.VindexIndex(
        num_feats=_UNSET,
        model_config=sidecar.ModelConfig(
            model_type=sidecar.UNKNOWN, num_hidden_layers=len(seed_layers), moe=unset_moe
        ),
        source=sidecar.SourceInfo(repo_id=_card_base_model(folder)),
        builder=sidecar.BuilderInfo(
            name=sidecar.UNKNOWN,
            version=sidecar.UNKNOWN,
            method=sidecar.UNKNOWN,
            sign_rule=sidecar.UNKNOWN,
        ),
    )
    # First without layers: the geometry, which fixes each layer's block.
    index = sidecar.VindexIndex.from_json(
        _overlay(defaults.to_json(), {**seed, sidecar.LAYERS_KEY: {}}),
        where=where,
        check_dimensions=False,  # the placeholders are negative: named just below when unset
    )
    unset = [
        name
        for name, value in dataclasses.asdict(index.model_config.moe).items()
        if value == _UNSET
    ]
    if index.num_feats == _UNSET:
        unset.insert(0, sidecar.NUM_FEATS_KEY)
    if unset:
        raise VindexFormatError(
            f"{where}: a seed-style sidecar (no {sidecar.FORMAT_VERSION_KEY}) lacking {unset}"
        )
    try:
        layer_ids = sorted(int(name) for name in seed_layers)
    except ValueError as exc:
        raise VindexFormatError(f"{where}: a layer id is not a number ({exc})") from None
    for slot, layer in enumerate(layer_ids):
        offset = index.layer_offset(slot)
        try:
            digest = sha256_file_range(folder / GATE_VECTORS_BIN, offset, index.layer_nbytes)
        except (EOFError, FileNotFoundError) as exc:
            raise VindexFormatError(f"{where}: layer {layer}: {exc}") from None
        index.layers[layer] = sidecar.LayerEntry(
            file_offset=offset,
            shape=index.layer_shape,
            nbytes=index.layer_nbytes,
            sha256=digest,
            median_var=math.nan,
            q25_var=math.nan,
            q75_var=math.nan,
        )
    index = sidecar.VindexIndex.from_json(_overlay(index.to_json(), seed), where=where)
    lacking = [
        layer
        for layer, e in index.layers.items()
        if any(math.isnan(v) for v in (e.median_var, e.q25_var, e.q75_var))
    ]
    if lacking:
        raise VindexFormatError(
            f"{where}: layers {lacking} lack the var quartiles "
            f"({statistics.median_var_key(index.num_feats)}, ...)"
        )
    return index


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values laid on top, mappings merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def _card_base_model(folder: Path) -> str | None:
    """``base_model`` from the folder's existing card, if it has one."""
    card = folder / CARD_FILE
    if not card.exists():
        return None
    value = read_card_data(card).get(BASE_MODEL)
    return value if isinstance(value, str) else None
