"""``convert``: give a folder holding just ``gate_vectors.bin`` and its sidecar every derived file.

The seed's published vindex is such a folder: its sidecar (no ``format_version``) is upgraded in
place (``format.seed``: layer checksums computed from the binary, the current keys added, every
key the seed's usage snippet reads kept), then the one write sequence (``writers.derived``) writes
the Arrow mirror, LarQL index and card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .format.card_data import CardOptions
from .format.seed import load_or_upgrade_index
from .writers.derived import write_derived_files


def convert_vindex(folder: str | Path, *, config: Mapping[str, Any] | None = None,
                   card_options: CardOptions | None = None) -> list[str]:
    """Write the derived files of ``folder``; return the paths written, relative to it.

    ``config`` is the model's ``config.json`` when at hand (LarQL's vocab_size...).
    """
    folder = Path(folder)
    index, _upgraded = load_or_upgrade_index(folder)
    return write_derived_files(folder, index, model_config=config, card_options=card_options).paths
