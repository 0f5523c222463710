"""Projecting hidden states onto a layer's gate vectors.

Each expert's gate vectors span the top-K input subspace of its ``gate_proj``. Projecting a
hidden state ``h`` onto expert ``e``'s vectors gives its feature activations ``a[e] = V_e h``
(K numbers), and ``||a[e]||^2`` is the energy of ``h`` inside that subspace; divided by
``||h||^2`` (rows are orthonormal, so it lies in [0, 1]) it is the fraction of the hidden state
that expert's top-K features can see::

    vx = Vindex.open("ns/deepseek-v4-flash-vindex")
    acts = project(hidden_states, vx.layer_torch(3, device="cuda"))
    acts.energy_fraction.argmax(-1)    # per token, the expert whose subspace holds most of h
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UsageError

TOKEN_BATCH = 4096  # tokens per matmul: bounds the (batch, E*K) intermediate


@dataclass
class FeatureActivations:
    """Projections of ``tokens`` hidden states onto every expert's top-K gate vectors."""

    activations: torch.Tensor | None  # (tokens, E, K); None when not kept
    energy: torch.Tensor  # (tokens, E): sum over K of activations^2
    hidden_energy: torch.Tensor  # (tokens,): ||h||^2

    @property
    def energy_fraction(self) -> torch.Tensor:
        """``energy / ||h||^2`` per (token, expert); 0 for an all-zero hidden state."""
        denom = self.hidden_energy.unsqueeze(-1)
        return torch.where(
            denom > 0,
            self.energy / denom.clamp_min(torch.finfo(denom.dtype).tiny),
            torch.zeros_like(self.energy),
        )


def project(
    hidden_states: torch.Tensor,
    gate_vectors: torch.Tensor,
    *,
    keep_activations: bool = True,
    token_batch: int = TOKEN_BATCH,
) -> FeatureActivations:
    """Project ``(tokens, H)`` hidden states onto ``(E, K, H)`` gate vectors, ``token_batch`` tokens at a time.

    Computed on ``gate_vectors``' device in the promoted dtype of both inputs (float32 for
    float32 vectors; pass float64 tensors for a float64 result). ``keep_activations=False``
    keeps only the energies, so memory stays ``O(tokens * E)``.
    """
    if (
        hidden_states.ndim != 2
        or gate_vectors.ndim != 3
        or hidden_states.shape[1] != gate_vectors.shape[2]
    ):
        raise UsageError(
            f"project: hidden_states {tuple(hidden_states.shape)} and gate_vectors {tuple(gate_vectors.shape)} "
            "must be (tokens, H) and (E, K, H)"
        )
    if token_batch < 1:
        raise UsageError(f"project: token_batch must be >= 1, got {token_batch}")
    dtype = torch.promote_types(hidden_states.dtype, gate_vectors.dtype)
    device = gate_vectors.device
    num_experts, num_feats, hidden = gate_vectors.shape
    tokens = hidden_states.shape[0]
    basis = gate_vectors.to(dtype).reshape(num_experts * num_feats, hidden).T  # (H, E*K)
    activations = (
        torch.empty(tokens, num_experts, num_feats, dtype=dtype, device=device)
        if keep_activations
        else None
    )
    energy = torch.empty(tokens, num_experts, dtype=dtype, device=device)
    hidden_energy = torch.empty(tokens, dtype=dtype, device=device)
    for lo in range(0, tokens, token_batch):
        h = hidden_states[lo : lo + token_batch].to(device=device, dtype=dtype)
        a = (h @ basis).reshape(-1, num_experts, num_feats)
        energy[lo : lo + token_batch] = a.square().sum(-1)
        hidden_energy[lo : lo + token_batch] = h.square().sum(-1)
        if activations is not None:
            activations[lo : lo + token_batch] = a
    return FeatureActivations(activations, energy, hidden_energy)
