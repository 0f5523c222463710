"""``convert``: bring a vindex folder to the current layout.

* A folder holding just ``gate_vectors.bin`` and its sidecar gets every derived file. The seed's
  published vindex is such a folder: its sidecar (no ``format_version``) is upgraded in place
  (``format.seed``: layer checksums computed from the binary, the current keys added, every key
  the seed's usage snippet reads kept), then the one write sequence (``writers.derived``) writes
  the Arrow mirror, LarQL index and card.
* A finished folder (current sidecar and a card), e.g. one whose mirror is in the old layout (one
  ``gate_vectors`` split per layer), gets its mirror and card rewritten (``rewrite_mirror``),
  keeping its statistics, phase JSON and LarQL index; ``push`` then deletes from the repo the
  files the new card no longer names.

Given the source checkpoint (``source``), its ``config.json`` fills LarQL's fields and
``browse`` can ask for feature tokens and LarQL's browse tier, made from the checkpoint's
embedding and tokenizer (the whole write sequence then runs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UsageError, VindexFormatError
from .folderlock import FolderLock
from .format.card_data import CardOptions, read_card_data
from .format.filenames import CARD_FILE, SIDECAR_JSON
from .format.seed import load_or_upgrade_index
from .writers.browse import BrowseOptions
from .writers.derived import rewrite_mirror, write_derived_files


def convert_vindex(
    folder: str | Path,
    *,
    config: Mapping[str, Any] | None = None,
    card_options: CardOptions | None = None,
    source: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    browse: BrowseOptions | None = None,
    device: str = "auto",
    token: str | None = None,
) -> list[str]:
    """Write the derived files of ``folder``; return the paths written, relative to it.

    ``config`` is the model's ``config.json`` when at hand (LarQL's vocab_size...); ``source`` (a
    checkpoint folder or Hub model repo) gives it, and the inputs ``browse`` needs. ``folder`` is
    locked meanwhile (``folderlock``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VindexFormatError(f"{folder / SIDECAR_JSON}: missing; {folder} is not a folder")
    card_options = _keep_card_license(folder, card_options or CardOptions())
    with FolderLock(folder, "convert"):  # no build, pull or other convert writes it meanwhile
        return _convert(folder, config, card_options, source, revision, browse, device, token)


def _convert(
    folder: Path,
    config: Mapping[str, Any] | None,
    card_options: CardOptions | None,
    source: str | os.PathLike[str] | None,
    revision: str | None,
    browse: BrowseOptions | None,
    device: str,
    token: str | None,
) -> list[str]:
    index, upgraded = load_or_upgrade_index(folder)
    if browse is None or not browse.wanted:
        if source is None:
            if not upgraded and (folder / CARD_FILE).is_file():
                return rewrite_mirror(folder, index, card_options)
            return write_derived_files(
                folder, index, model_config=config, card_options=card_options
            ).paths
    elif source is None:
        raise UsageError(
            "feature_tokens / larql_browse on convert need source=, the checkpoint the vindex was built from"
        )
    from .arch import get_architecture
    from .builder.browse import read_browse_inputs
    from .builder.plan import open_source
    from .numerics.svd import resolve_device

    src = open_source(source, revision=revision, token=token)
    try:
        inputs = None
        if browse is not None and browse.wanted:
            arch = get_architecture(
                src.config, tensor_names=src.tensor_names(), where=f"{src.describe()}/config.json"
            )
            inputs = read_browse_inputs(src, arch)
            browse = dataclasses.replace(browse, device=resolve_device(device))
        return write_derived_files(
            folder,
            index,
            model_config=config or src.config,
            card_options=card_options,
            browse=browse,
            browse_inputs=inputs,
        ).paths
    finally:
        src.close()


def _keep_card_license(folder: Path, options: CardOptions) -> CardOptions:
    """Without ``--license``, a rewritten card keeps the license the folder's card already has."""
    if options.license or not (folder / CARD_FILE).is_file():
        return options
    license = read_card_data(folder / CARD_FILE).get("license")
    return options.updated(license=license) if isinstance(license, str) else options
