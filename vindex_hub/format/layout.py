"""The binary's layout: element type and the offset rule (the prose is in ``format/__init__``)."""

from __future__ import annotations

DTYPE = "float32"
NUMPY_DTYPE = "<f4"
ITEMSIZE = 4
BYTEORDER = "little"
LAYOUT = "[layers, experts, num_feats, hidden]"
SIGN_RULE = "largest-magnitude entry positive (first on ties)"
# Sanity ceiling on what one layer may claim (a sidecar or a Hub listing is remote data): the
# largest MoE layers known (DeepSeek-V4-Pro class, 384 experts x 64 x 7168) are ~0.7 GB, so a claim
# above this is a hostile or corrupt repo, refused before any byte is requested.
MAX_LAYER_NBYTES = 16 * 10**9


def expert_nbytes(num_feats: int, hidden_size: int) -> int:
    return num_feats * hidden_size * ITEMSIZE


def layer_nbytes(num_experts: int, num_feats: int, hidden_size: int) -> int:
    return num_experts * expert_nbytes(num_feats, hidden_size)


def layer_offset(slot: int, num_experts: int, num_feats: int, hidden_size: int) -> int:
    """Byte offset of the ``slot``-th stored layer (slot = position in ascending layer order)."""
    return slot * layer_nbytes(num_experts, num_feats, hidden_size)


def format_size(nbytes: int) -> str:
    """A byte count for people, in decimal units as the seed card: 11,542,724,608 -> ``11.54 GB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"
