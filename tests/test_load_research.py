"""``research.project`` against a float64 numpy computation."""

import numpy as np
import pytest
import torch

from vindex_hub.errors import UsageError
from vindex_hub.projection import project


def _orthonormal(rng, e, k, h):
    return np.stack([np.linalg.qr(rng.standard_normal((h, k)))[0].T for _ in range(e)])


def test_project_matches_numpy_float64():
    rng = np.random.default_rng(0)
    e, k, h, t = 5, 4, 32, 37
    vectors = _orthonormal(rng, e, k, h).astype(np.float32)
    hidden = rng.standard_normal((t, h)).astype(np.float32)
    hidden[3] = 0.0  # an all-zero state: fraction 0, not NaN
    hidden[4] = vectors[2, 1] * 3.0  # lies inside expert 2's subspace

    want_act = np.einsum("th,ekh->tek", hidden.astype(np.float64), vectors.astype(np.float64))
    want_energy = (want_act**2).sum(-1)
    norms = (hidden.astype(np.float64) ** 2).sum(-1)

    got = project(
        torch.from_numpy(hidden), torch.from_numpy(vectors), token_batch=8
    )  # several batches
    assert got.activations.shape == (t, e, k) and got.energy.shape == (t, e)
    np.testing.assert_allclose(got.activations.numpy(), want_act, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.energy.numpy(), want_energy, rtol=1e-5, atol=1e-5)
    frac = got.energy_fraction.numpy()
    np.testing.assert_allclose(
        frac[norms > 0], (want_energy / norms[:, None].clip(1e-300))[norms > 0], rtol=1e-4
    )
    assert np.all(frac[3] == 0) and np.all(np.isfinite(frac))
    assert frac[4].argmax() == 2 and frac[4, 2] == pytest.approx(1.0, abs=1e-5)
    assert np.all(frac <= 1 + 1e-5)  # orthonormal rows: a projection never exceeds the whole

    f64 = project(
        torch.from_numpy(hidden).double(),
        torch.from_numpy(vectors).double(),
        keep_activations=False,
    )
    assert f64.activations is None and f64.energy.dtype == torch.float64
    np.testing.assert_allclose(f64.energy.numpy(), want_energy, rtol=1e-12, atol=1e-12)


def test_project_rejects_mismatched_shapes():
    with pytest.raises(UsageError, match="must be"):
        project(torch.zeros(3, 8), torch.zeros(2, 4, 16))
