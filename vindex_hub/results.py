"""What the build computes for one layer, beyond the gate vectors themselves.

``LayerResult`` holds the raw spectra; every statistic in the JSON files, the index, the card and
the mirror is derived from it (``stats`` holds the formulas). An unfinished build keeps one
``LayerResult`` per completed layer in its state folder (safetensors + JSON metadata: no pickle),
so a resumed build ends with exactly the figures an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .fsutil import atomic_path


@dataclass
class LayerResult:
    layer: int
    sha256: str  # of the layer's block in gate_vectors.bin
    singular_values: np.ndarray  # float32 (num_experts, num_feats), descending per expert
    frobenius_norm: np.ndarray  # float64 (num_experts,): ||W_e||_F of the dequantized gate_proj
    # float64 (min(E, H),): all singular values of the router; None (and the norm None) where
    # the model's router is not a matrix (``MoEArchitecture.has_router_matrix``)
    router_singular_values: np.ndarray | None
    router_frobenius_norm: float | None
    shared_singular_values: np.ndarray | None = None  # float32 (num_feats,)
    shared_frobenius_norm: float | None = None
    # Kept only when LarQL's router_weights.bin is asked for (build option larql_router).
    router_weight: np.ndarray | None = None  # float32 (num_experts, hidden_size)
    router_bias: np.ndarray | None = None  # float32 (num_experts,), None where the layer has none

    @property
    def num_experts(self) -> int:
        return int(self.singular_values.shape[0])

    @property
    def num_feats(self) -> int:
        return int(self.singular_values.shape[1])

    # ---- persistence (an unfinished build's state) ------------------------------------------
    # The fields spell the file: arrays as safetensors tensors of the same names, the rest (and
    # an absent optional array, as null) as JSON metadata.
    def save(self, path: str | os.PathLike[str]) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in values.items() if k not in arrays}
        with atomic_path(path) as tmp:
            save_file(
                {k: np.ascontiguousarray(v) for k, v in arrays.items()},
                str(tmp),
                metadata={"layer_result": json.dumps(meta)},
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerResult:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["layer_result"])
        arrays = load_file(str(path))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**meta, **arrays}.items() if k in names})


def layer_result_path(state_dir: str | os.PathLike[str], layer: int) -> Path:
    return Path(state_dir) / f"layer_{layer:03d}.safetensors"
