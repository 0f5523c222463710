"""A small real vindex shared by the mirror, card, LarQL and verify tests.

It is built once per session by the real builder from a DeepSeek-V4-format checkpoint written by
``vindex_hub.testing.synth`` (3 layers x 4 experts x hidden 64, K = 8, router weights kept for
LarQL), with the exact float32 weights of every gate_proj and router kept as ``reference`` for
float64 LAPACK comparisons. Tests that damage files work on a copy (``vindex_copy``).

Helpers for any vindex folder: ``read_index`` (its sidecar), ``binary_layer`` (one layer of its
binary), ``upload`` (to a new Hub repo) and ``cli`` (a ``vindex-hub`` command in a subprocess).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi

from vindex_hub.arch import deepseek_v4 as ds
from vindex_hub.builder import build_vindex
from vindex_hub.format import filenames, layout, sidecar
from vindex_hub.format.card_data import CardOptions
from vindex_hub.testing.synth import make_deepseek_v4_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_LAYERS, NUM_EXPERTS, HIDDEN, INTER, NUM_FEATS = 3, 4, 64, 32, 8
CARD_OPTIONS = CardOptions(
    author="Divinci-AI",
    author_kind="org",
    repo_id="Divinci-AI/tiny-v4-vindex",
    year=2026,
    extra_tags=("deepseek",),
)

# The seed card's usage snippet, verbatim (tests/data/deepseek-v4-flash-vindex.card.md).
SEED_SNIPPET = """import numpy as np

# Memory-map the binary
arr = np.memmap("gate_vectors.bin", dtype=np.float32, mode="r")

import json
idx = json.load(open("gate_vectors_index.json"))
moe = idx["model_config"]["moe"]
n_experts = moe["n_routed_experts"]
n_feats = idx["num_feats"]
hidden = moe["hidden_size"]

# Get layer L's experts
def get_layer(L):
    meta = idx["layers"][str(L)]
    offset = meta["file_offset"] // 4  # bytes → float32 elements
    n = n_experts * n_feats * hidden
    return arr[offset:offset+n].reshape(n_experts, n_feats, hidden)

V_L1 = get_layer(1)  # shape (n_experts, n_feats, hidden)
print("L1 expert 0 top vector L2 norm:", np.linalg.norm(V_L1[0, 0]))  # ≈ 1.0
"""


@dataclass
class SmallVindex:
    folder: Path
    checkpoint: Path
    reference: dict[str, np.ndarray]  # exact float32 weights by tensor name

    def gate_weight(self, layer: int, expert: int) -> np.ndarray:
        name = ds.expert_tensor(ds.layer_block(layer), expert, ds.GATE_PROJ, ds.WEIGHT)
        return self.reference[name].astype(np.float64)

    def router(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        block = ds.layer_block(layer)
        bias = self.reference.get(ds.gate_tensor(block, ds.ROUTER_BIAS))
        return self.reference[ds.gate_tensor(block, ds.WEIGHT)], bias

    def binary_layer(self, folder: Path, layer: int) -> np.ndarray:
        return binary_layer(folder, layer)


def read_index(folder: Path) -> sidecar.VindexIndex:
    return sidecar.VindexIndex.loads((folder / filenames.SIDECAR_JSON).read_text())


def binary_layer(folder: Path, layer: int) -> np.ndarray:
    """Layer ``layer`` of ``folder``'s binary as the sidecar places it: an (E, K, H) block."""
    e = read_index(folder).layer(layer)
    return np.fromfile(
        folder / filenames.GATE_VECTORS_BIN,
        dtype=layout.NUMPY_DTYPE,
        count=e.nbytes // 4,
        offset=e.file_offset,
    ).reshape(e.shape)


def upload(folder: Path, repo_id: str, repo_type: str = "dataset") -> str:
    """Create ``repo_id`` and upload ``folder`` to it with the real client; returns the repo id."""
    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type)
    return repo_id


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """``python -m vindex_hub *args`` from the repo root (so on ``sys.path``), ``env`` over ours."""
    return subprocess.run(
        [sys.executable, "-m", "vindex_hub", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def small_vindex(tmp_path_factory: pytest.TempPathFactory) -> SmallVindex:
    root = tmp_path_factory.mktemp("small-vindex")
    reference: dict[str, np.ndarray] = {}
    checkpoint = make_deepseek_v4_checkpoint(
        root / "checkpoint",
        num_layers=NUM_LAYERS,
        num_experts=NUM_EXPERTS,
        hidden_size=HIDDEN,
        moe_intermediate_size=INTER,
        reference=reference,
    )
    build_vindex(
        checkpoint,
        root / "vindex",
        num_feats=NUM_FEATS,
        device="cpu",
        progress=False,
        card_options=CARD_OPTIONS,
        larql_router=True,
    )
    return SmallVindex(root / "vindex", checkpoint, reference)


# Weights no other fixture or test uses: the server stores by content, so a fresh vindex's files
# are new to it (the shared small vindex's would upload nothing).
_fresh_seeds = itertools.count(7000)
FRESH_CHECKPOINT = "fresh-checkpoint"  # under the test's tmp_path, for tests that derive from it


@pytest.fixture
def fresh_vindex(tmp_path: Path) -> Path:
    """A vindex (2 layers x 4 experts, K = NUM_FEATS) of weights no other test pushed, built from
    ``tmp_path / FRESH_CHECKPOINT``."""
    checkpoint = make_deepseek_v4_checkpoint(
        tmp_path / FRESH_CHECKPOINT,
        num_layers=2,
        num_experts=4,
        hidden_size=64,
        moe_intermediate_size=32,
        seed=next(_fresh_seeds),
        include_mtp=False,
    )
    return build_vindex(
        checkpoint, tmp_path / "fresh", num_feats=NUM_FEATS, device="cpu", progress=False
    ).out


@pytest.fixture
def vindex_copy(small_vindex: SmallVindex, tmp_path: Path) -> Path:
    """A private copy of the small vindex, free to damage."""
    return Path(shutil.copytree(small_vindex.folder, tmp_path / "vindex"))


def first_python_block(markdown: str) -> str:
    return re.search(r"```python\n(.*?)```", markdown, re.S).group(1)
