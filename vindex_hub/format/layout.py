"""The binary's layout: element type and the offset rule (the prose is in ``format/__init__``)."""

from __future__ import annotations

DTYPE = "float32"
NUMPY_DTYPE = "<f4"
ITEMSIZE = 4
BYTEORDER = "little"
LAYOUT = "[layers, experts, num_feats, hidden]"
SIGN_RULE = "largest-magnitude entry positive (first on ties)"


def expert_nbytes(num_feats: int, hidden_size: int) -> int:
    return num_feats * hidden_size * ITEMSIZE


def layer_nbytes(num_experts: int, num_feats: int, hidden_size: int) -> int:
    return num_experts * expert_nbytes(num_feats, hidden_size)


def layer_offset(slot: int, num_experts: int, num_feats: int, hidden_size: int) -> int:
    """Byte offset of the ``slot``-th stored layer (slot = position in ascending layer order)."""
    return slot * layer_nbytes(num_experts, num_feats, hidden_size)
