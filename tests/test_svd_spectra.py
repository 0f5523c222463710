"""The mixed route's choice per matrix (``numerics.svd.choose_route``) on the spectrum families
of ``testing.synth`` at small size with the real structure, against a float64 LAPACK SVD: the
route chosen before any Gram matrix, no attempt thrown away on the families, the same bits
whatever the batch, and the float64 fallback where the float32 stage cannot be certified."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from vindex_hub.numerics import svd
from vindex_hub.testing import synth

ROWS, COLS, K = 256, 512, 16  # n = 256 >= 2 (K + 32): the mixed route is tried
BOUND = 1e-4  # the promise: vectors with a singular value gap >= BOUND x s_0 ...
EXACT_COS = 1e-9  # ... within 1 - |cos| <= 1e-9 of float64 LAPACK
EXACT_S = 1e-9  # singular values within 1e-9 relative
CHOSEN = {
    "flat": svd.ROUTE_MIXED,
    "spiky": svd.ROUTE_DEFLATED,
    "power-law": svd.ROUTE_MIXED,
    "clustered": svd.ROUTE_F64,
    "rank-near-k": svd.ROUTE_MIXED,
}


def _expert(family: str, seed: int) -> np.ndarray:
    return synth.family_expert(np.random.default_rng([seed, 24]), ROWS, COLS, family, k=K)


def _assert_exact(w: np.ndarray, vectors: np.ndarray, values: np.ndarray) -> None:
    _, s_ref, vt_ref = scipy.linalg.svd(
        w.astype(np.float64), full_matrices=False, lapack_driver="gesdd"
    )
    vec = vectors.astype(np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    one_minus_cos = 1 - np.abs(np.sum(vec * vt_ref[:K], axis=1))
    gaps = s_ref[:K] - s_ref[1 : K + 1]
    gaps[1:] = np.minimum(gaps[1:], gaps[:-1])
    defined = gaps >= 0.99 * BOUND * s_ref[0]  # a designed gap at the bound moves by rounding
    assert defined.sum() >= K // 2, defined.sum()
    assert one_minus_cos[defined].max() <= EXACT_COS, one_minus_cos[defined].max()
    assert (np.abs(values - s_ref[:K]) / s_ref[:K]).max() <= EXACT_S


def test_the_families_have_their_structure() -> None:
    """What each family is for (not a free pass: a generator change that loses it fails here)."""
    spectra = {
        f: np.linalg.svd(_expert(f, 0).astype(np.float64), compute_uv=False)
        for f in synth.SPECTRUM_FAMILIES
    }
    energy = {f: (s[:K] ** 2).sum() / (s**2).sum() for f, s in spectra.items()}
    assert energy["flat"] < 0.3 and energy["clustered"] < 0.1
    assert energy["spiky"] > 0.5 and energy["power-law"] > 0.5
    spiky = spectra["spiky"]
    assert spiky[synth.SPIKES - 1] > 6 * spiky[synth.SPIKES]  # strong spikes over the bulk
    gaps = -np.diff(spectra["clustered"][: K + 1]) / spectra["clustered"][0]
    np.testing.assert_allclose(gaps, synth.CLUSTER_GAP, rtol=1e-2)
    rank = spectra["rank-near-k"]
    assert rank[K + 3] > 0.4 * rank[0] and rank[K + 4] < 1e-6 * rank[0]
    with pytest.raises(ValueError, match="family"):
        synth.family_expert(np.random.default_rng(0), 8, 8, "steep")


@pytest.mark.parametrize("family", list(synth.SPECTRUM_FAMILIES))
@pytest.mark.parametrize("tall", [False, True])
@pytest.mark.slow
def test_each_family_takes_its_route_exactly_with_no_attempt_thrown_away(
    family: str, tall: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _expert(family, 1)
    if tall:
        w = np.ascontiguousarray(w.T)  # O > I: the other Gram matrix, deflated on the other side
    assert svd.choose_route(w, K) == CHOSEN[family]
    attempts = []
    real = svd._mixed_route
    monkeypatch.setattr(svd, "_mixed_route", lambda *a: attempts.append(1) or real(*a))
    top = svd.top_k_right_singular(w[None], K)
    assert top.routes == (CHOSEN[family],)  # the route chosen is the route taken
    assert len(attempts) == (CHOSEN[family] != svd.ROUTE_F64)
    _assert_exact(w, top.vectors[0], top.singular_values[0])


def test_the_choice_and_the_bits_do_not_depend_on_the_batch() -> None:
    """One batch of every family, the same in reverse, and each matrix alone: the same routes and
    the same bits (a build's worker count and batch size only regroup matrices)."""
    batch = np.stack([_expert(f, 2) for f in synth.SPECTRUM_FAMILIES])
    together = svd.top_k_right_singular(batch, K)
    reverse = svd.top_k_right_singular(batch[::-1].copy(), K)
    assert together.routes == tuple(CHOSEN.values()) == reverse.routes[::-1]
    assert together.vectors.tobytes() == reverse.vectors[::-1].tobytes()
    assert together.singular_values.tobytes() == reverse.singular_values[::-1].tobytes()
    for b, w in enumerate(batch):
        alone = svd.top_k_right_singular(w[None], K)
        assert alone.routes == (together.routes[b],)
        assert alone.vectors.tobytes() == together.vectors[b].tobytes()
        assert alone.singular_values.tobytes() == together.singular_values[b].tobytes()
        assert svd.choose_route(w, K) == svd.choose_route(w.copy(), K) == together.routes[b]


def test_deflation_is_what_makes_the_spiky_family_certain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without deflating its spikes, the float32 stage of a spiky matrix is refused by the
    certificate (the float64 route follows): deflation is needed, not decoration."""
    w = _expert("spiky", 3)
    real = svd._choose_route
    monkeypatch.setattr(
        svd, "_choose_route", lambda *a: (svd.ROUTE_MIXED, None) if real(*a)[1] is not None else 1
    )
    assert svd.top_k_right_singular(w[None], K).routes == (svd.ROUTE_F64,)


def _spikes_over_a_steep_decay(rng: np.random.Generator) -> np.ndarray:
    """Four strong spikes (deflated) over a rest that decays steeply, by 10x every 5 values:
    after deflation the float32 stage still cannot resolve it, and only the certificate tells."""
    s = np.r_[[16.0, 12.0, 8.0, 6.0], 10.0 ** (-np.arange(ROWS - 4) / 5)]
    u, _ = np.linalg.qr(rng.standard_normal((ROWS, ROWS)))
    v, _ = np.linalg.qr(rng.standard_normal((COLS, ROWS)))
    return ((u * s) @ v.T).astype(np.float32)


@pytest.mark.slow
def test_the_certificate_catches_what_the_deflated_route_cannot_certify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _spikes_over_a_steep_decay(np.random.default_rng(4))
    assert svd.choose_route(w, K) == svd.ROUTE_DEFLATED
    top = svd.top_k_right_singular(w[None], K)
    assert top.routes == (svd.ROUTE_F64,)  # refused, then float64: exact
    _assert_exact(w, top.vectors[0], top.singular_values[0])
    monkeypatch.setattr(svd, "_ritz_pairs_certain", lambda theta, residual_norms, k: True)
    uncertified = svd.top_k_right_singular(w[None], K)
    assert uncertified.routes == (svd.ROUTE_DEFLATED,)
    with pytest.raises(AssertionError):
        _assert_exact(w, uncertified.vectors[0], uncertified.singular_values[0])


@pytest.mark.parametrize("shape", [(256, 256), (128, 1792), (1792, 128)])
@pytest.mark.slow
def test_plain_gaussian_matrices_of_any_aspect_stay_on_the_mixed_route(
    shape: tuple[int, int],
) -> None:
    """A Marchenko-Pastur spectrum is flat-looking, the flatter the more oblong the matrix (all
    of a 128 x 1792's within 0.5-1.6x its mean), yet float32 resolves it: the probe must not send
    it to float64 (its flatness test sits between the two)."""
    w = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    assert svd.choose_route(w, K) == svd.ROUTE_MIXED
    top = svd.top_k_right_singular(w[None], K)
    assert top.routes == (svd.ROUTE_MIXED,)
    _assert_exact(w, top.vectors[0], top.singular_values[0])
