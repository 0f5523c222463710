"""numerics.geometry against float64 references and constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vindex_hub.errors import UsageError
from vindex_hub.numerics import geometry as geo


def _subspaces(rng: np.random.Generator, e: int, k: int, h: int) -> np.ndarray:
    """``e`` random K-dimensional subspaces of R^h as orthonormal float32 rows."""
    q = np.linalg.qr(rng.standard_normal((e, h, k)))[0]
    return np.ascontiguousarray(q.transpose(0, 2, 1), dtype=np.float32)


def _reference(v: np.ndarray, w: np.ndarray | None = None, u: np.ndarray | None = None):
    """float64 ||V_a V_b^T||^2 / K (and the energy-weighted overlap with weights ``s``)."""
    a = v.astype(np.float64)
    b = a if u is None else u.astype(np.float64)
    ea, ka, h = a.shape
    eb, kb, _ = b.shape
    c2 = (
        ((a.reshape(-1, h) @ b.reshape(-1, h).T) ** 2).reshape(ea, ka, eb, kb).transpose(0, 2, 1, 3)
    )
    plain = c2.sum(axis=(2, 3)) / min(a.shape[1], b.shape[1])
    if w is None:
        return plain, None
    g = w.astype(np.float64) ** 2
    g = g / np.sqrt((g**2).sum(axis=1, keepdims=True))
    return plain, np.einsum("abij,ai,bj->ab", c2, g, g)


@pytest.mark.parametrize("block_rows", [1, 24, 100, geo.BLOCK_ROWS])
def test_overlaps_agree_with_a_float64_reference_within_1e_6(block_rows):
    rng = np.random.default_rng(0)
    v = _subspaces(rng, 24, 8, 512)
    v[5] = v[17]  # a duplicated expert: overlap 1
    s = np.sort(rng.uniform(0.5, 4.0, (24, 8)), axis=1)[:, ::-1]
    got = geo.overlaps(v, s, block_rows=block_rows)
    plain, weighted = _reference(v, s)
    assert np.max(np.abs(got.plain - plain)) < 1e-6
    assert np.max(np.abs(got.weighted - weighted)) < 1e-6
    assert np.array_equal(got.plain, got.plain.T)  # symmetric by construction
    assert got.plain[5, 17] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_a_real_size_layer_within_1e_6_of_float64():
    """hidden 4096, K 64: the shape of DeepSeek-V4-Flash's experts (a few of them)."""
    rng = np.random.default_rng(1)
    v = _subspaces(rng, 6, 64, 4096)
    got = geo.overlaps(v).plain
    plain, _ = _reference(v)
    assert np.max(np.abs(got - plain)) < 1e-6


def test_identical_orthogonal_permuted_and_rotated_subspaces():
    rng = np.random.default_rng(2)
    h, k = 64, 4
    basis = np.linalg.qr(rng.standard_normal((h, h)))[0].T  # orthonormal rows
    a = basis[0:4]
    orthogonal = basis[4:8]
    # the same subspace, its basis rotated inside it and its rows permuted
    inside = np.linalg.qr(rng.standard_normal((k, k)))[0]
    same_span = (inside @ a)[[2, 0, 3, 1]]
    # half rotated away: two rows kept, two turned by theta towards orthogonal directions
    theta = 0.6
    partial = np.vstack([a[:2], math.cos(theta) * a[2:] + math.sin(theta) * orthogonal[:2]])
    v = np.stack([a, orthogonal, same_span, partial]).astype(np.float32)
    got = geo.overlaps(v).plain
    assert got[0, 0] == pytest.approx(1, abs=1e-6)
    assert got[0, 1] == pytest.approx(0, abs=1e-6)
    assert got[0, 2] == pytest.approx(1, abs=1e-6)
    # principal angles 0, 0, theta, theta: mean squared cosine (2 + 2 cos^2) / 4
    assert got[0, 3] == pytest.approx((2 + 2 * math.cos(theta) ** 2) / 4, abs=1e-6)
    assert got[1, 3] == pytest.approx(2 * math.sin(theta) ** 2 / 4, abs=1e-6)


def test_permuting_experts_permutes_the_matrix_and_the_matching_finds_it():
    rng = np.random.default_rng(3)
    a = _subspaces(rng, 16, 4, 128)
    perm = rng.permutation(16)
    b = a[perm]
    cmp = geo.compare_layers(a, b)
    inverse = np.argsort(perm)
    assert np.array_equal(cmp.match, inverse)  # B's expert holding A's e
    assert np.allclose(cmp.matched, 1, atol=1e-6)
    plain, _ = _reference(a, u=b)
    assert np.max(np.abs(cmp.cross - plain)) < 1e-6
    assert np.allclose(cmp.same_index, plain[np.arange(16), np.arange(16)], atol=1e-6)
    s = cmp.summary()
    assert s["mean_matched"] == pytest.approx(1, abs=1e-6)
    assert s["matched_to_itself"] == pytest.approx(np.mean(perm == np.arange(16)))


def test_the_energy_weighted_overlap():
    rng = np.random.default_rng(4)
    v = _subspaces(rng, 2, 4, 32)
    v[1] = v[0]
    flat = np.ones((2, 4))
    got = geo.overlaps(v, flat)
    assert np.allclose(got.weighted, got.plain, atol=1e-6)  # a flat spectrum: the plain overlap
    # the same subspace with proportional spectra: 1; with different spectra: below 1
    assert geo.overlaps(v, np.array([[4, 3, 2, 1], [8, 6, 4, 2]])).weighted[0, 1] == pytest.approx(
        1, abs=1e-6
    )
    uneven = geo.overlaps(v, np.array([[4, 3, 2, 1], [1, 2, 3, 4]])).weighted[0, 1]
    w = np.array([16, 9, 4, 1.0])
    assert uneven == pytest.approx(np.dot(w, w[::-1]) / np.dot(w, w), abs=1e-6)


def test_random_subspaces_overlap_about_k_over_h():
    rng = np.random.default_rng(5)
    k, h = 8, 256
    v = _subspaces(rng, 60, k, h)
    s = geo.summarize_overlaps(geo.overlaps(v).plain)
    assert s.mean == pytest.approx(geo.random_overlap(k, h), rel=0.05)
    spectra = rng.uniform(1, 3, (60, k))
    weighted = geo.overlaps(v, spectra).weighted
    expect = np.mean(
        [
            geo.random_weighted_overlap(spectra[a], spectra[b], h)
            for a in range(60)
            for b in range(a)
        ]
    )
    assert geo.summarize_overlaps(weighted).mean == pytest.approx(expect, rel=0.05)


def test_summary_names_the_closest_pair():
    m = np.eye(4)
    m[1, 3] = m[3, 1] = 0.7
    m[0, 2] = m[2, 0] = 0.2
    s = geo.summarize_overlaps(m)
    assert s.closest_pair == (1, 3)
    assert s.max == 0.7
    assert s.mean == pytest.approx(0.9 / 6)


def test_router_alignment():
    rng = np.random.default_rng(6)
    e, k, h = 5, 3, 40
    v = _subspaces(rng, e, k, h)
    r = rng.standard_normal((e, h))
    r[0] = 2 * v[0, 1]  # inside its own span
    r[1] = v[3, 0] + v[3, 2]  # inside expert 3's span
    got = geo.router_alignment(v, r, block_rows=4)
    v64 = v.astype(np.float64)
    ref = np.array(
        [[np.sum((v64[j] @ r[i]) ** 2) / np.sum(r[i] ** 2) for j in range(e)] for i in range(e)]
    )
    assert np.allclose(got.own, np.diag(ref), atol=1e-9)
    assert got.own[0] == pytest.approx(1, abs=1e-6)
    assert got.other_expert[1] == 3 and got.other_max[1] == pytest.approx(1, abs=1e-6)
    off = ref + np.diag([-np.inf] * e)
    assert np.array_equal(got.other_expert, np.argmax(off, axis=1))
    assert np.allclose(got.other_max, off.max(axis=1), atol=1e-9)


@pytest.mark.parametrize("rows,cols,k", [(128, 512, 16), (256, 256, 32), (512, 128, 8)])
def test_the_marchenko_pastur_baseline_matches_a_simulation(rows, cols, k):
    rng = np.random.default_rng(7)
    fractions = []
    for _ in range(12):
        x = rng.standard_normal((rows, cols))
        eig = np.linalg.eigvalsh(x @ x.T if rows <= cols else x.T @ x)[::-1]  # s^2, descending
        fractions.append(np.sum(eig[:k]) / np.sum(eig))
    # the MP limit is within a few thousandths of finite matrices of these sizes
    assert geo.mp_energy_fraction(rows, cols, k) == pytest.approx(np.mean(fractions), abs=0.006)


def test_the_marchenko_pastur_cdf_is_the_law_integrated():
    from scipy import integrate

    y = 0.37
    a, b = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2

    def density(x: float) -> float:
        return math.sqrt((b - x) * (x - a)) / (2 * math.pi * y * x)

    for x in (a + 0.01, 0.8, 1.5, b - 0.01):
        theta = math.acos((1 + y - x) / (2 * math.sqrt(y)))
        assert float(geo.mp_cdf_theta(theta, y)) == pytest.approx(
            integrate.quad(density, a, x)[0], abs=1e-9
        )
    assert float(geo.mp_cdf_theta(math.pi, 1.0)) == pytest.approx(1)
    assert geo.mp_energy_fraction(64, 4096, 64) == 1.0  # K = rank: all the energy
    assert geo.mp_energy_fraction(2048, 4096, 64) > 64 / 2048  # the top directions carry more


def test_bad_input_is_a_one_line_usage_error():
    v = np.zeros((2, 3, 8), dtype=np.float32)
    with pytest.raises(UsageError, match="hidden sizes differ"):
        geo.cross_overlaps(v, np.zeros((2, 3, 9)))
    with pytest.raises(UsageError, match=r"expected \(experts, K, hidden\)"):
        geo.overlaps(np.zeros((3, 8)))
    with pytest.raises(UsageError, match="singular values of shape"):
        geo.overlaps(v, np.ones((2, 2)))
    with pytest.raises(UsageError, match="router of shape"):
        geo.router_alignment(v, np.ones((3, 8)))
    with pytest.raises(UsageError, match="a row is zero"):
        geo.router_alignment(v, np.zeros((2, 8)))
    with pytest.raises(UsageError, match="must be positive"):
        geo.mp_energy_fraction(0, 8, 1)


def test_comparing_layers_of_different_expert_counts_and_k():
    rng = np.random.default_rng(8)
    a = _subspaces(rng, 6, 4, 64)
    b = np.concatenate([a[[4, 1]], _subspaces(rng, 2, 4, 64)])  # 4 experts, two of them A's
    cmp = geo.compare_layers(a, b)
    assert cmp.cross.shape == (6, 4) and cmp.same_index.shape == (4,)
    assert (cmp.match >= 0).sum() == 4 and np.isnan(cmp.matched[cmp.match < 0]).all()
    assert cmp.match[4] == 0 and cmp.match[1] == 1
    # K differs: divided by the smaller K, so a subspace inside a larger one has overlap 1
    wide = np.concatenate([a[:, :4], _subspaces(rng, 6, 4, 64)], axis=1)
    wide = np.linalg.qr(wide.transpose(0, 2, 1).astype(np.float64))[0].transpose(0, 2, 1)
    inside = geo.cross_overlaps(a, wide.astype(np.float32)).plain
    assert np.allclose(np.diag(inside), 1, atol=1e-6)
