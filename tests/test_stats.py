"""``vindex_hub.numerics.stats`` against closed forms and float64 numpy computations of the definitions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vindex_hub.errors import UsageError
from vindex_hub.format import statistics
from vindex_hub.numerics import stats, svd


def _diag(values: list[float], rows: int, cols: int) -> np.ndarray:
    w = np.zeros((rows, cols))
    w[np.arange(len(values)), np.arange(len(values))] = values
    return w


def test_energy_fraction_closed_form() -> None:
    # diag(3, 2, 1): ||W||_F^2 = 14, so var1 = 9/14, var2 = 13/14.
    w = _diag([3.0, 2.0, 1.0], 3, 5)
    fro = np.linalg.norm(w)
    np.testing.assert_allclose(stats.energy_fraction([[3.0]], [fro]), [9 / 14], rtol=1e-15)
    np.testing.assert_allclose(
        stats.energy_fraction([[3.0, 2.0], [3.0, 1.0]], [fro, fro]), [13 / 14, 10 / 14]
    )


def test_energy_fraction_of_svd_output_matches_full_spectrum() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 32, 48)) * np.linspace(2, 0.2, 32)[:, None]).astype(np.float32)
    top = svd.top_k_right_singular(w, 6)
    var = stats.energy_fraction(top.singular_values, top.frobenius_norm)
    for b in range(4):
        s = np.linalg.svd(w[b].astype(np.float64), compute_uv=False)
        assert var[b] == pytest.approx(np.sum(s[:6] ** 2) / np.sum(s**2), rel=1e-6)


def test_energy_fraction_checks_its_input() -> None:
    with pytest.raises(UsageError, match=r"\(n, K\)"):
        stats.energy_fraction([1.0, 2.0], [1.0])
    with pytest.raises(UsageError, match="zero matrix"):
        stats.energy_fraction([[0.0]], [0.0])


def test_summarize() -> None:
    assert dataclasses.asdict(stats.summarize([5, 1, 4, 2, 3])) == {
        "median": 3.0,
        "q25": 2.0,
        "q75": 4.0,
        "mean": 3.0,
        "min": 1.0,
        "max": 5.0,
    }
    sample = np.random.default_rng(1).random(101)
    got = stats.summarize(sample)
    assert got.q25 == np.percentile(sample, 25) and got.q75 == np.percentile(sample, 75)
    assert got.median == np.median(sample)
    assert all(type(v) is float for v in dataclasses.asdict(got).values())
    # The names are the ones statistics.summary_var_key turns into sidecar keys.
    assert set(got.by_key(64)) >= {
        statistics.median_var_key(64),
        statistics.q25_var_key(64),
        statistics.q75_var_key(64),
    }
    with pytest.raises(UsageError):
        stats.summarize([])


def test_effective_rank_closed_forms() -> None:
    assert stats.effective_rank(np.full(7, 0.3)) == pytest.approx(7.0, rel=1e-14)  # flat: n
    assert stats.effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0, rel=1e-15)  # rank one: 1
    # s = (2, 1, 1): p = (1/2, 1/4, 1/4), H = 1.5 ln 2, exp(H) = 2^1.5.
    assert stats.effective_rank([2.0, 1.0, 1.0]) == pytest.approx(2**1.5, rel=1e-14)
    with pytest.raises(UsageError):
        stats.effective_rank([0.0, 0.0])


def test_router_stats_of_a_known_router() -> None:
    values = [4.0, 2.0, 2.0, 1.0] + [0.5] * 12  # 16 experts, hidden 40
    router = _diag(values, 16, 40)
    s = np.linalg.svd(router, compute_uv=False)
    fro = float(np.linalg.norm(router))
    got = stats.router_stats(s, fro)

    total = sum(v * v for v in values)  # 16 + 4 + 4 + 1 + 12 * 0.25 = 28
    assert got[statistics.router_topk_key(1)] == pytest.approx(16 / total, rel=1e-14)
    assert got[statistics.router_topk_key(8)] == pytest.approx((25 + 4 * 0.25) / total, rel=1e-14)
    # k >= len(s): the sum runs over the whole spectrum.
    assert got[statistics.router_topk_key(16)] == pytest.approx(1.0, rel=1e-14)
    assert got[statistics.router_topk_key(64)] == pytest.approx(1.0, rel=1e-14)
    p = np.array(values) / sum(values)
    assert got[statistics.ROUTER_EFFECTIVE_RANK] == pytest.approx(
        math.exp(-np.sum(p * np.log(p))), rel=1e-14
    )
    assert got[statistics.ROUTER_STABLE_RANK] == pytest.approx(total / 16, rel=1e-14)
    assert got[statistics.ROUTER_S0_S1] == pytest.approx(2.0, rel=1e-14)
    assert got[statistics.SINGULAR_VALUES] == pytest.approx(values, rel=1e-14)
    assert set(got) == {statistics.router_topk_key(k) for k in statistics.ROUTER_TOPK} | {
        statistics.ROUTER_EFFECTIVE_RANK,
        statistics.ROUTER_STABLE_RANK,
        statistics.ROUTER_S0_S1,
        statistics.SINGULAR_VALUES,
    }


def test_router_stats_of_a_random_router_match_numpy() -> None:
    router = np.random.default_rng(2).standard_normal((96, 128)).astype(np.float32)
    s = svd.singular_values(router, name="router")
    got = stats.router_stats(s, float(np.linalg.norm(router.astype(np.float64))))
    ref = np.linalg.svd(router.astype(np.float64), compute_uv=False)
    for k in statistics.ROUTER_TOPK:
        assert got[statistics.router_topk_key(k)] == pytest.approx(
            np.sum(ref[:k] ** 2) / np.sum(ref**2), rel=1e-12
        )
    assert got[statistics.ROUTER_STABLE_RANK] == pytest.approx(
        np.sum(ref**2) / ref[0] ** 2, rel=1e-12
    )
    assert got[statistics.ROUTER_S0_S1] == pytest.approx(ref[0] / ref[1], rel=1e-12)
    assert 1.0 < got[statistics.ROUTER_EFFECTIVE_RANK] < 96.0


def test_router_stats_rank_one_and_bad_input() -> None:
    got = stats.router_stats([3.0, 0.0], 3.0)
    assert got[statistics.ROUTER_S0_S1] is None  # JSON has no infinity
    assert got[statistics.ROUTER_EFFECTIVE_RANK] == pytest.approx(1.0)
    assert stats.router_stats([3.0], 3.0)[statistics.ROUTER_S0_S1] is None
    with pytest.raises(UsageError, match="descending"):
        stats.router_stats([1.0, 2.0], 3.0)
    with pytest.raises(UsageError, match="zero router"):
        stats.router_stats([0.0, 0.0], 0.0)


def test_the_recorded_statistics_are_summary_fields() -> None:
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0])
    for name in (statistics.MEDIAN, statistics.Q25, statistics.Q75):
        assert statistics.summary_var_key(name, 8) in summary.by_key(8)
    assert list(summary.by_key(8)) == [
        "median_var8",
        "q25_var8",
        "q75_var8",
        "mean_var8",
        "min_var8",
        "max_var8",
    ]
