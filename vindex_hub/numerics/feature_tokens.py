"""Feature tokens: for each gate vector, the K tokens whose input-embedding rows have the largest
|cosine| with it (pure math, no I/O).

Cost and memory: the cosines of ``N`` vectors against a ``V x H`` embedding are ``N * V * H``
multiply-adds (3.7e14 for DeepSeek-V4-Flash: 43 x 256 x 64 vectors, 129280 x 4096 embedding).
They are computed a ``vector_block x vocab_block`` tile at a time in float32 on the device, and
only a small candidate pool per vector (``pool_size``) survives each tile, so no ``N x V`` matrix
is ever held. The pool is then re-scored in float64 from the embedding's own values and the top
K kept by (|cosine| descending, token id ascending): exact, ties broken by token id, whenever
fewer than ``pool_size - K`` tokens sit within float32 rounding (~1e-6) of the K-th score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_VOCAB_BLOCK = 16384  # columns of a float32 score tile (with 1024 vectors: 64 MiB)
DEFAULT_VECTOR_BLOCK = 1024
NORM_BLOCK = 8192  # embedding rows normalized at once
RESCORE_CHUNK = 64  # vectors re-scored in float64 at once (64 x pool x H float64)


@dataclass(frozen=True)
class UnitEmbedding:
    """An input embedding ready for cosines: the float32 rows, their float64 norms and the rows
    scaled to unit length (float32; zero rows stay zero, so their cosine is 0)."""

    rows: np.ndarray  # float32 (V, H), the checkpoint's values
    norms: np.ndarray  # float64 (V,)
    unit: np.ndarray  # float32 (V, H)

    @classmethod
    def of(cls, embedding: np.ndarray) -> UnitEmbedding:
        rows = np.ascontiguousarray(embedding, dtype=np.float32)
        norms = np.empty(len(rows), dtype=np.float64)
        unit = np.empty_like(rows)
        for start in range(0, len(rows), NORM_BLOCK):  # float64 a block at a time, not a 2x copy
            block = rows[start : start + NORM_BLOCK].astype(np.float64)
            norms[start : start + len(block)] = n = np.linalg.norm(block, axis=1)
            np.divide(block, n[:, None], out=block, where=n[:, None] > 0)
            unit[start : start + len(block)] = np.where(n[:, None] > 0, block, 0)
        return cls(rows, norms, unit)

    @property
    def vocab_size(self) -> int:
        return int(self.rows.shape[0])


def pool_size(k: int, vocab_size: int) -> int:
    """Candidates kept per vector through the float32 pass: 2K + 8, at most the vocabulary."""
    return min(vocab_size, 2 * k + 8)


def top_abs_cosine(
    vectors: np.ndarray,
    embedding: UnitEmbedding,
    k: int,
    *,
    device: str = "cpu",
    vector_block: int = DEFAULT_VECTOR_BLOCK,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """``vectors`` float ``(N, H)`` -> (token ids int32 ``(N, k)``, signed cosines float32 ``(N, k)``),
    each row ordered by |cosine| descending then token id ascending."""
    import torch

    n, hidden = vectors.shape
    if embedding.unit.shape[1] != hidden:
        raise ValueError(f"vectors have {hidden} columns, the embedding {embedding.unit.shape[1]}")
    if not 1 <= k <= embedding.vocab_size:
        raise ValueError(f"k={k} must be between 1 and the vocabulary size {embedding.vocab_size}")
    m = pool_size(k, embedding.vocab_size)
    unit = torch.from_numpy(embedding.unit).to(device)
    ids = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, vector_block):
        block = np.array(
            vectors[start : start + vector_block], dtype=np.float32
        )  # a writable copy for torch
        pool = _candidate_pool(torch.from_numpy(block).to(device), unit, m, vocab_block)
        ids[start : start + len(block)], scores[start : start + len(block)] = _rescore(
            block, pool, embedding, k
        )
    return ids, scores


def _candidate_pool(
    vectors: torch.Tensor, unit: torch.Tensor, m: int, vocab_block: int
) -> np.ndarray:
    """Token ids ``(n, m)`` of the m largest float32 |v . e_hat| per vector, tile by tile."""
    import torch

    best_val: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, unit.shape[0], vocab_block):
        tile = (vectors @ unit[start : start + vocab_block].T).abs_()
        val, idx = torch.topk(tile, min(m, tile.shape[1]), dim=1)
        idx += start
        if best_val is not None and best_idx is not None:
            val, pick = torch.topk(torch.cat([best_val, val], dim=1), m, dim=1)
            idx = torch.gather(torch.cat([best_idx, idx], dim=1), 1, pick)
        best_val, best_idx = val, idx
    assert best_idx is not None  # a vocabulary of at least one token
    return np.asarray(best_idx.cpu().numpy())


def _rescore(
    vectors: np.ndarray, pool: np.ndarray, embedding: UnitEmbedding, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the pooled tokens in float64; the top k by (|cos| desc, id asc)."""
    v = vectors.astype(np.float64)
    v_norm = np.linalg.norm(v, axis=1)
    cos = np.empty(pool.shape, dtype=np.float64)
    for start in range(0, len(v), RESCORE_CHUNK):
        rows = embedding.rows[pool[start : start + RESCORE_CHUNK]].astype(np.float64)  # (c, m, H)
        dots = (rows * v[start : start + RESCORE_CHUNK, None, :]).sum(axis=-1)
        denom = (
            embedding.norms[pool[start : start + RESCORE_CHUNK]]
            * v_norm[start : start + RESCORE_CHUNK, None]
        )
        cos[start : start + RESCORE_CHUNK] = np.divide(
            dots, denom, out=np.zeros_like(dots), where=denom > 0
        )
    order = np.lexsort((pool, -np.abs(cos)), axis=-1)[:, :k]
    return (
        np.take_along_axis(pool, order, axis=1).astype(np.int32),
        np.take_along_axis(cos, order, axis=1).astype(np.float32),
    )


def reference_top_abs_cosine(
    vectors: np.ndarray, embedding: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The float64 definition, the whole ``N x V`` matrix at once (for tests on small inputs)."""
    v = np.asarray(vectors, dtype=np.float64)
    e = np.asarray(embedding, dtype=np.float64)
    denom = np.linalg.norm(v, axis=1)[:, None] * np.linalg.norm(e, axis=1)[None, :]
    dots = v @ e.T
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    token = np.broadcast_to(np.arange(e.shape[0]), cos.shape)
    order = np.lexsort((token, -np.abs(cos)), axis=-1)[:, :k]
    return order.astype(np.int32), np.take_along_axis(cos, order, axis=1)
