"""``vindex-hub geometry``: add the expert geometry to an existing vindex (folder or Hub repo).

* A finished folder gets the geometry in place, or in a copy at ``out``
  (``writers.derived.add_geometry``: phase 1, ``expert_stats``, ``expert_overlap``, the card).
* A folder in the seed's published format (its sidecar has no format version) is upgraded and
  gets every derived file, as ``convert`` writes them, with the geometry.
* A Hub repo is pulled first (``pull``, into ``out`` or ``./<repo name>``), then as a folder.

The energy-weighted overlap needs the experts' singular values (``expert_stats``) and the router
alignment the routers (LarQL's ``router_weights.bin``, written with ``--larql-router``): what a
vindex lacks is left out (a seed-format vindex has plain overlaps only; ``build --geometry``
computes everything from the checkpoint).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import OutputConflictError
from .format.card_data import CardOptions, read_card_data
from .format.filenames import CARD_FILE
from .format.seed import load_or_upgrade_index
from .hub.refs import DEFAULT_REPO_TYPE


def add_geometry(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    repo_type: str = DEFAULT_REPO_TYPE,
    card_options: CardOptions | None = None,
    token: str | bool | None = None,
) -> Path:
    """Add the expert geometry to the vindex at ``path`` (see the module docstring); returns the
    folder that holds the result."""
    from .writers.derived import add_geometry as add_to_folder
    from .writers.derived import write_derived_files

    if os.path.isdir(path):
        folder = Path(path)
        if out is not None and Path(out).resolve() != folder.resolve():
            target = Path(out)
            if target.exists() and any(target.iterdir()):
                raise OutputConflictError(f"{target}: exists and is not empty; choose another -o")
            shutil.copytree(folder, target, dirs_exist_ok=True)
            folder = target
    else:
        folder = _fetch(str(path), out, revision=revision, repo_type=repo_type, token=token)
    index, upgraded = load_or_upgrade_index(folder)
    options = card_options or _card_license(folder)
    if upgraded or not (folder / CARD_FILE).is_file():
        write_derived_files(folder, index, card_options=options, geometry=True)
    else:
        add_to_folder(folder, index, options)
    return folder


def _fetch(
    repo: str,
    out: str | os.PathLike[str] | None,
    *,
    revision: str | None,
    repo_type: str,
    token: str | bool | None,
) -> Path:
    """A repo's vindex in a local folder: ``pull`` (verified), or for a seed-format repo (a
    sidecar without a format version, which ``Vindex.open`` refuses) its files as they are."""
    import json

    from .format import sidecar
    from .format.filenames import SIDECAR_JSON
    from .hub.http import download_file
    from .hub.refs import parse_repo
    from .pull import _snapshot_to, pull

    ref = parse_repo(repo, revision=revision, repo_type=repo_type)
    data = json.loads(download_file(ref, SIDECAR_JSON, token=token).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or sidecar.FORMAT_VERSION_KEY in data:
        return pull(repo, out, revision=revision, repo_type=repo_type, token=token)
    target = Path(out) if out is not None else Path(ref.repo_id.split("/")[-1])
    if target.exists() and any(target.iterdir()):
        raise OutputConflictError(f"{target}: exists and is not empty; choose another -o")
    _snapshot_to(ref, target, cache_dir=None, token=token)
    return target


def _card_license(folder: Path) -> CardOptions:
    """The folder's card license carried over (as ``pull`` does); defaults otherwise."""
    path = folder / CARD_FILE
    if not path.is_file():
        return CardOptions()
    license = read_card_data(path).get("license")
    return CardOptions(license=license) if isinstance(license, str) else CardOptions()
