"""The pull marker ``filenames.PULL_MARKER``: what ``pull`` made a folder from.

A JSON object ``{repo_id, repo_type, commit, format, layers}``: ``pull`` writes it first and reads
it back to tell an earlier pull of the same repo (which it may replace) from a folder of the
user's; the read side reads it to explain why a data-only pull has no binary. It is bookkeeping
(hidden): never published, never taken from a repo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import VindexFormatError
from ..fsutil import atomic_write_json, read_json_object
from .filenames import PULL_MARKER

# What ``pull`` materializes: a whole vindex folder, or a data-only download of its parquet files.
Format = Literal["binary", "arrow"]
FORMATS: tuple[Format, ...] = get_args(Format)
BINARY, ARROW = FORMATS
DEFAULT_FORMAT: Format = BINARY

REPO_ID = "repo_id"
REPO_TYPE = "repo_type"
COMMIT = "commit"
FORMAT = "format"
LAYERS = "layers"


def write_pull_marker(
    folder: Path,
    *,
    repo_id: str,
    repo_type: str,
    commit: str | None,
    format: Format,
    layers: list[int],
) -> None:
    atomic_write_json(
        folder / PULL_MARKER,
        {REPO_ID: repo_id, REPO_TYPE: repo_type, COMMIT: commit, FORMAT: format, LAYERS: layers},
    )


def read_pull_marker(folder: Path) -> dict[str, Any]:
    """What ``pull`` recorded about the folder it made ({} when there is no readable marker)."""
    try:
        return read_json_object(folder / PULL_MARKER, what="pull marker")
    except VindexFormatError:
        return {}
