"""The one write sequence: every file of a vindex derived from its binary and its results.

``build``, ``convert`` and ``pull --layers`` all end here, with ``gate_vectors.bin`` in place:

1. the phase documents (from the layers' results, or carried over from a source vindex);
2. the Arrow mirror: the binary is streamed once, layer by layer, each block becoming its parquet
   file and feeding the whole file's sha256 (which LarQL's index records), then the stats tables;
3. LarQL's ``index.json`` (and ``router_weights.bin`` when asked);
4. the card and its plot, handed the list of what was written (it probes nothing);
5. the sidecar, last: a folder holding a sidecar is a finished vindex.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..format import filenames, sidecar
from ..format.mirror import MirrorFile
from ..format.card_data import CardOptions
from ..fsutil import atomic_write_json
from ..results import LayerResult
from .card import write_card
from .larql import write_larql_index
from .mirror import stats_tables, written_mirror, write_mirror
from .phases import phase1_json, phase2_json


@dataclass(frozen=True)
class CarriedStats:
    """A source vindex's published statistics, already cut to the layers of a vindex made from it."""

    phase1: dict[str, Any] | None = None
    phase2: dict[str, Any] | None = None
    tables: Mapping[str, Any] = field(default_factory=dict)  # pyarrow Tables by mirror path


@dataclass
class WrittenFiles:
    """What the write sequence wrote, relative to the folder: the card is made from this."""

    files: list[str] = field(default_factory=list)
    mirror: list[MirrorFile] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [*(f.path for f in self.mirror), *self.files]


def write_derived_files(
    folder: str | Path,
    index: sidecar.VindexIndex,
    *,
    results: Sequence[LayerResult] | None = None,
    carried: CarriedStats | None = None,
    model_config: Mapping[str, Any] | None = None,
    card_options: CardOptions | None = None,
    larql_router: bool = False,
) -> WrittenFiles:
    """Write every derived file of the vindex in ``folder`` (see the module docstring).

    ``results`` are a build's per-layer results; without them (convert) ``carried`` may give a
    source vindex's statistics, else only the gate vectors are mirrored. ``model_config`` is the
    checkpoint's ``config.json`` when at hand (LarQL's vocab size and attention geometry).
    """
    folder = Path(folder)
    index.check_layout(where=str(folder / filenames.INDEX_JSON),
                       file_size=(folder / filenames.GATE_VECTORS_BIN).stat().st_size)
    written = WrittenFiles()
    if results is not None:
        phases = (phase1_json(results, index), phase2_json(results, index))
        tables: Mapping[str, Any] = stats_tables(index, results)
    else:
        carried = carried or CarriedStats()
        phases, tables = (carried.phase1, carried.phase2), carried.tables
    for name, document in zip((filenames.PHASE1_JSON, filenames.PHASE2_JSON), phases):
        if document is not None:
            atomic_write_json(folder / name, document)
            written.files.append(name)

    binary_sha256 = hashlib.sha256()
    written.mirror = write_mirror(folder, index, tables, binary_hash=binary_sha256)
    written.files += write_larql_index(folder, index, model_config or {}, results,
                                       binary_sha256=binary_sha256.hexdigest(), router=larql_router)
    written.files += write_card(folder, index, card_options or CardOptions(), files=written.files,
                                mirror_files=written.mirror)
    atomic_write_json(folder / filenames.INDEX_JSON, index.to_json())
    written.files.append(filenames.INDEX_JSON)
    return written


def rewrite_card(folder: str | Path, index: sidecar.VindexIndex, card_options: CardOptions | None = None) -> list[str]:
    """Render the card of a finished vindex folder again (other card options, a newer template),
    describing the files the folder holds; nothing else is rewritten."""
    folder = Path(folder)
    files = [name for name in (filenames.PHASE1_JSON, filenames.PHASE2_JSON, filenames.LARQL_INDEX_JSON,
                               filenames.LARQL_ROUTER_BIN) if (folder / name).is_file()]
    return write_card(folder, index, card_options or CardOptions(), files=files,
                      mirror_files=written_mirror(folder, index))
