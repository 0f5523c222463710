"""The one list of file and folder names in a vindex (and of our own bookkeeping files).

Every writer, reader, check and the push/pull verbs name files through this module only.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from ..errors import VindexFormatError

GATE_VECTORS_BIN = "gate_vectors.bin"
SIDECAR_JSON = "gate_vectors_index.json"  # the sidecar
PHASE1_JSON = "phase1_moe_svd.json"
PHASE2_JSON = "phase2_router_svd.json"
CARD_FILE = "README.md"
VAR_PLOT_FILE = "images/var_per_layer.png"
GEOMETRY_PLOT_FILE = "images/expert_overlap.png"  # with --geometry (writers.geometry)
LARQL_INDEX_JSON = "index.json"
LARQL_ROUTER_BIN = "router_weights.bin"
# LarQL's browse tier: the input embedding (raw LE [vocab, hidden], f16 or f32) and the tokenizer.
LARQL_EMBEDDINGS_BIN = "embeddings.bin"
TOKENIZER_JSON = "tokenizer.json"
DATA_DIR = "data"  # the Arrow mirror lives below it (``format.mirror`` names its files)

# Remote paths a vindex owns: a push deletes those a folder no longer has, a re-pull replaces them.
VINDEX_FILES = frozenset(
    {
        GATE_VECTORS_BIN,
        SIDECAR_JSON,
        PHASE1_JSON,
        PHASE2_JSON,
        CARD_FILE,
        VAR_PLOT_FILE,
        GEOMETRY_PLOT_FILE,
        LARQL_INDEX_JSON,
        LARQL_ROUTER_BIN,
        LARQL_EMBEDDINGS_BIN,
        TOKENIZER_JSON,
    }
)
VINDEX_DIRS = (f"{DATA_DIR}/",)
# What a snapshot-mode open downloads: the binary and the small files beside it, not the mirror.
SNAPSHOT_FILES = (SIDECAR_JSON, GATE_VECTORS_BIN, PHASE1_JSON, PHASE2_JSON, CARD_FILE)

# ---- our bookkeeping: never part of a published vindex ---------------------------------------
BUILD_STATE_DIR = ".vindex-build"  # work files of an unfinished build (or pull)
BUILD_STATE_FILE = "build.json"  # in BUILD_STATE_DIR: the fingerprint of the build it holds
PULL_MARKER = ".vindex-pull.json"  # marks a folder made by ``pull`` (repo, commit, format, layers)
# ``folderlock``: the exclusive lock a build / convert / pull holds on its output folder, and who
# holds it (pid, host, command). Hidden, so never pushed nor taken from a repo.
OUTPUT_LOCK = ".vindex.lock"
OUTPUT_LOCK_INFO = ".vindex.lock.json"
PARTIAL_SUFFIX = ".partial"  # a file still being written in place
PARTIAL_BIN = GATE_VECTORS_BIN + PARTIAL_SUFFIX
# Names of unfinished files: never uploaded, never counted as part of a vindex.
UNFINISHED_SUFFIXES = (".tmp", PARTIAL_SUFFIX, ".incomplete", ".lock")


def is_vindex_path(path: str) -> bool:
    """A repo path that belongs to the vindex (so a push may delete it when the folder lacks it)."""
    return path in VINDEX_FILES or path.startswith(VINDEX_DIRS)


def is_published_path(path: str, include: Sequence[str] = ()) -> bool:
    """What ``push`` uploads: a path the vindex owns, or one the user named (an ``fnmatch``
    pattern of ``include``, e.g. ``LICENSE`` or ``notes/*.md``); never our bookkeeping."""
    if is_bookkeeping_path(path):
        return False
    return is_vindex_path(path) or any(fnmatchcase(path, pattern) for pattern in include)


def is_bookkeeping_path(path: str) -> bool:
    """Hidden or unfinished: our work files, atomic-write temporaries, markers. Never published."""
    parts = path.split("/")
    return any(p.startswith(".") for p in parts) or parts[-1].endswith(UNFINISHED_SUFFIXES)


def inside_vindex(name: object, where: str) -> str:
    """``name`` if it is a relative path that stays inside the vindex folder or repo; else
    ``VindexFormatError`` naming it (a card, sidecar or repo listing is remote data: a path such as
    ``../../../../etc/passwd`` or ``/etc/passwd`` in it is refused by name, never opened)."""
    if not isinstance(name, str) or not name:
        raise VindexFormatError(f"{where}: file name {name!r} is not a path")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise VindexFormatError(f"{where}: path {name!r} leaves the vindex; refusing to read it")
    return name
