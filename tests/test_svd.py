"""``vindex_hub.numerics.svd`` against a float64 LAPACK SVD reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import threadpoolctl
import torch

from vindex_hub.errors import CheckpointError, UsageError
from vindex_hub.numerics import svd
from vindex_hub.testing import synth

# A vector is well defined (and compared) only when its singular value is separated from its
# neighbours: relative gap min(|s_i - s_{i-1}|, |s_i - s_{i+1}|) / s_0 above this.
GAP = 1e-3


def _matrix_with_spectrum(
    rng: np.random.Generator, rows: int, cols: int, s: np.ndarray
) -> np.ndarray:
    u, _ = np.linalg.qr(rng.standard_normal((rows, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, len(s))))
    return ((u * s) @ v.T).astype(np.float32)


def _reference(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 LAPACK SVD of the float32 matrix (exactly widened)."""
    _, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return s, vt


def _gap_allowed(s: np.ndarray, k: int) -> np.ndarray:
    """Which of the top-k vectors the spectrum's gaps determine (see GAP)."""
    gaps = np.full(k, np.inf)
    diffs = np.abs(np.diff(s[: k + 1]))
    gaps = np.minimum(gaps, diffs[:k])  # to the next value (s_k exists since k < len(s) here)
    gaps[1:] = np.minimum(gaps[1:], diffs[: k - 1])  # to the previous value
    return gaps / s[0] > GAP


def _check_against_reference(w: np.ndarray, top: svd.TopK, b: int, k: int) -> None:
    s_ref, vt_ref = _reference(w)
    np.testing.assert_allclose(top.singular_values[b], s_ref[:k], rtol=1e-5)
    np.testing.assert_allclose(
        top.frobenius_norm[b], np.linalg.norm(w.astype(np.float64)), rtol=1e-12
    )
    vec = top.vectors[b].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-6)
    cos = np.abs(np.sum(vec * vt_ref[:k], axis=1))
    allowed = _gap_allowed(s_ref, k)
    assert allowed.sum() >= k // 2, "test matrix should have mostly well-separated singular values"
    assert cos[allowed].min() >= 0.9999, cos


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Flat, slowly decaying spectra like real experts, plus a plain Gaussian matrix.
    mats = [
        _matrix_with_spectrum(rng, 64, 128, np.linspace(3.0, 0.5, 64) ** 1.5),
        _matrix_with_spectrum(rng, 64, 128, 1.0 / np.sqrt(np.arange(1, 65))),
        rng.standard_normal((64, 128)).astype(np.float32),
    ]
    return np.stack(mats)


@pytest.mark.parametrize("device_path", ["lapack", "torch"])
@pytest.mark.slow
def test_top_k_matches_float64_svd(batch: np.ndarray, device_path: str) -> None:
    k = 8
    if device_path == "lapack":
        top = svd.top_k_right_singular(batch, k)
    else:
        top = _via_torch(batch, k)
    assert top.vectors.shape == (3, k, 128) and top.vectors.dtype == np.float32
    assert top.singular_values.shape == (3, k) and top.singular_values.dtype == np.float64
    assert top.frobenius_norm.shape == (3,) and top.frobenius_norm.dtype == np.float64
    assert np.all(np.diff(top.singular_values, axis=1) <= 0)
    for b in range(3):
        _check_against_reference(batch[b], top, b, k)


def _via_torch(weights: np.ndarray, k: int) -> svd.TopK:
    """The CUDA code path run on CPU: same torch ops, same post-processing as the public call."""
    s, v, fro = svd._top_k_torch(weights, k, [f"m{b}" for b in range(len(weights))], device="cpu")
    return svd._finish(s, v, fro, [svd.ROUTE_CUDA] * len(weights))


@pytest.mark.filterwarnings("error")
def test_torch_path_matches_lapack_path(batch: np.ndarray) -> None:
    read_only = batch.copy()
    read_only.flags.writeable = False  # like an mmap of the checkpoint
    a = svd.top_k_right_singular(read_only, 8)
    b = _via_torch(read_only, 8)
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-6)
    np.testing.assert_allclose(a.frobenius_norm, b.frobenius_norm, rtol=1e-12)
    # Both apply the same sign rule, so vectors agree entrywise, not just up to sign.
    np.testing.assert_allclose(a.vectors, b.vectors, atol=2e-5)


def test_cuda_device_runs_the_torch_path(
    batch: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_torch(weights, k, labels, *, device):
        calls.append(device)
        return svd._top_k_lapack(weights, k, labels, mixed=False)[:3]

    monkeypatch.setattr(svd, "_top_k_torch", fake_torch)
    top = svd.top_k_right_singular(batch, 4, device="cuda")
    assert calls == ["cuda"] and top.routes == (svd.ROUTE_CUDA,) * 3


@pytest.mark.slow
def test_tall_matrix_uses_the_other_gram(batch: np.ndarray) -> None:
    tall = np.ascontiguousarray(batch.transpose(0, 2, 1))  # (3, 128, 64): O > I
    top = svd.top_k_right_singular(tall, 8)
    assert top.vectors.shape == (3, 8, 64)
    for b in range(3):
        _check_against_reference(tall[b], top, b, 8)
    torch_top = _via_torch(tall, 8)
    np.testing.assert_allclose(top.vectors, torch_top.vectors, atol=2e-5)


def test_sign_rule_and_determinism(batch: np.ndarray) -> None:
    a = svd.top_k_right_singular(batch, 8)
    b = svd.top_k_right_singular(batch.copy(), 8)
    assert a.vectors.tobytes() == b.vectors.tobytes()
    assert a.singular_values.tobytes() == b.singular_values.tobytes()
    flat = a.vectors.reshape(-1, a.vectors.shape[-1])
    pivot = np.argmax(np.abs(flat), axis=1)
    assert np.all(flat[np.arange(len(flat)), pivot] > 0)


def test_canonicalize_signs_first_on_ties() -> None:
    v = np.array([[0.5, -0.5, 0.1], [-0.2, -0.6, 0.6], [-0.1, -0.9, 0.3]], dtype=np.float32)
    out = svd.canonicalize_signs(v.copy())
    np.testing.assert_array_equal(out[0], v[0])  # tie: the first entry decides
    np.testing.assert_array_equal(out[1], -v[1])  # tie: -0.6 comes first, so the row flips
    np.testing.assert_array_equal(out[2], -v[2])
    batched = svd.canonicalize_signs(np.stack([v, -v]))  # any leading shape
    np.testing.assert_array_equal(batched[0], out)
    np.testing.assert_array_equal(batched[1], out)
    strided = np.asfortranarray(-v)  # any memory layout, still in place
    assert svd.canonicalize_signs(strided) is strided
    np.testing.assert_array_equal(strided, out)


def test_k_above_rank_bound_is_a_usage_error(batch: np.ndarray) -> None:
    with pytest.raises(
        UsageError, match=r"num_feats=65 is larger than the rank bound min\(O, I\) .*64 x 128: 64"
    ):
        svd.top_k_right_singular(batch, 65)
    with pytest.raises(UsageError, match="e.g. layer 2 expert 0 gate_proj"):
        svd.top_k_right_singular(batch, 65, names=["layer 2 expert 0 gate_proj", "b", "c"])
    with pytest.raises(UsageError, match="positive"):
        svd.top_k_right_singular(batch, 0)


@pytest.mark.parametrize("device_path", ["lapack", "torch"])
def test_rank_deficient_matrix_is_a_usage_error(device_path: str) -> None:
    rng = np.random.default_rng(1)
    w = _matrix_with_spectrum(rng, 64, 128, np.array([3.0, 2.0, 1.0, 0.5, 0.25]))[None]  # rank 5
    ok = svd.top_k_right_singular(w, 5)
    np.testing.assert_allclose(ok.singular_values[0], [3.0, 2.0, 1.0, 0.5, 0.25], rtol=1e-5)
    with pytest.raises(UsageError, match=r"layer 3 expert 7 gate_proj: the numerical rank \(5\)"):
        if device_path == "lapack":
            svd.top_k_right_singular(w, 6, names=["layer 3 expert 7 gate_proj"])
        else:
            svd._top_k_torch(w, 6, ["layer 3 expert 7 gate_proj"], device="cpu")
    with pytest.raises(UsageError, match="numerical rank"):
        svd.top_k_right_singular(np.zeros((1, 8, 16), np.float32), 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("device_path", ["lapack", "torch"])
def test_non_finite_input_is_a_checkpoint_error(
    batch: np.ndarray, bad: float, device_path: str
) -> None:
    w = batch.copy()
    w[1, 5, 7] = bad
    names = ["e0", "e1", "e2"]
    with pytest.raises(CheckpointError, match="e1 contains NaN or Inf"):
        if device_path == "lapack":
            svd.top_k_right_singular(w, 4, names=names)
        else:
            svd._top_k_torch(w, 4, names, device="cpu")


def test_shape_and_names_checks(batch: np.ndarray) -> None:
    with pytest.raises(UsageError, match="batch, out, in"):
        svd.top_k_right_singular(batch[0], 4)
    with pytest.raises(UsageError, match="2 names given for a batch of 3"):
        svd.top_k_right_singular(batch, 4, names=["a", "b"])
    with pytest.raises(UsageError, match="resolve 'auto' first"):
        svd.top_k_right_singular(batch, 4, device="auto")


def test_singular_values_of_a_router() -> None:
    rng = np.random.default_rng(2)
    router = rng.standard_normal((16, 96)).astype(np.float32)
    s = svd.singular_values(router, name="layer 0 router")
    assert s.dtype == np.float64 and s.shape == (16,)
    np.testing.assert_allclose(
        s, np.linalg.svd(router.astype(np.float64), compute_uv=False), rtol=1e-12
    )
    router[3, 3] = np.nan
    with pytest.raises(CheckpointError, match="layer 0 router contains NaN"):
        svd.singular_values(router, name="layer 0 router")


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert svd.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert svd.resolve_device("auto") == "cpu"
    assert svd.resolve_device() == "cpu"
    with pytest.raises(UsageError, match="no CUDA device"):
        svd.resolve_device("cuda")
    with pytest.raises(UsageError, match="auto, cpu or cuda"):
        svd.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert svd.resolve_device("auto") == "cuda"
    assert svd.resolve_device("cuda") == "cuda"


# ---- exactness of the CPU routes on adversarial spectra ------------------------------------------
# The promise (issue 11): every vector whose singular value gap to both neighbours is at least
# BOUND x s_0 within 1 - |cos| <= 1e-9 of a float64 LAPACK SVD, and every singular value within
# 1e-9 relative, whichever route the guard picks.
BOUND = 1e-4
EXACT_COS = 1e-9
EXACT_S = 1e-9
K = 64
ROWS, COLS = 256, 512  # p = K + 32 = 96: big enough (>= 2p) for the mixed route to be tried


def _assert_exact(w: np.ndarray, top: svd.TopK, *, min_defined: int) -> None:
    _, s_ref, vt_ref = scipy.linalg.svd(
        w.astype(np.float64), full_matrices=False, lapack_driver="gesdd"
    )
    k = top.vectors.shape[1]
    vec = top.vectors[0].astype(np.float64)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)  # the angle only, not float32 norm rounding
    one_minus_cos = 1 - np.abs(np.sum(vec * vt_ref[:k], axis=1))
    gaps = s_ref[:k] - s_ref[1 : k + 1]
    gaps[1:] = np.minimum(gaps[1:], gaps[:-1])
    # A designed gap of exactly BOUND moves by float32 rounding of W (~1e-7 s_0): 1% slack.
    defined = gaps >= 0.99 * BOUND * s_ref[0]
    assert defined.sum() >= min_defined, defined.sum()
    assert one_minus_cos[defined].max() <= EXACT_COS, (
        one_minus_cos.max(),
        np.argmax(one_minus_cos),
    )
    rel = np.abs(top.singular_values[0] - s_ref[:k]) / s_ref[:k]
    assert rel.max() <= EXACT_S, rel.max()
    np.testing.assert_allclose(
        top.frobenius_norm[0], np.linalg.norm(w.astype(np.float64)), rtol=1e-13
    )


def _spectrum(name: str) -> np.ndarray:
    n = ROWS
    i = np.arange(n)
    if name == "gaps at the bound, all of them":
        return 1.0 - BOUND * i
    if name == "gaps at the bound, a cluster right below the top K":
        # Crowded, not equal: 1e-7 apart (an exactly repeated value is the next case).
        return np.r_[
            1.0 - BOUND * np.arange(K + 1), 1.0 - BOUND * (K + 1) - 1e-7 * np.arange(n - K - 1)
        ]
    if name == "gaps at the bound over a repeated singular value":
        return np.r_[1.0 - BOUND * np.arange(K + 1), np.full(n - K - 1, 1.0 - BOUND * (K + 1))]
    if name == "steep decay":
        return 10.0 ** (-i / 32)
    if name == "geometric decay, guard passes":
        return 0.3 ** (i / (K + svd.OVERSAMPLE - 1))
    if name == "rank exactly K":
        return np.linspace(1.0, 0.5, K)
    raise AssertionError(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "chosen", "route"),
    [
        # The probe sees a spectrum flat to its end: float64 from the start.
        ("gaps at the bound, all of them", svd.ROUTE_F64, svd.ROUTE_F64),
        ("gaps at the bound, a cluster right below the top K", svd.ROUTE_F64, svd.ROUTE_F64),
        ("gaps at the bound over a repeated singular value", svd.ROUTE_F64, svd.ROUTE_F64),
        # Nothing in the probe's block tells this decay from a power law: the certificate refuses
        # the float32 subspace (the one attempt thrown away) and the float64 route is exact.
        ("steep decay", svd.ROUTE_MIXED, svd.ROUTE_F64),
        # Eigenvalues K..p-1 are zero: the float32 subspace holds the top K, certified.
        ("rank exactly K", svd.ROUTE_MIXED, svd.ROUTE_MIXED),
        ("geometric decay, guard passes", svd.ROUTE_MIXED, svd.ROUTE_MIXED),
    ],
)
@pytest.mark.parametrize("tall", [False, True])
def test_adversarial_spectra_are_exact(name: str, chosen: str, route: str, tall: bool) -> None:
    rng = np.random.default_rng(11)
    w = _matrix_with_spectrum(rng, ROWS, COLS, _spectrum(name))
    if tall:
        w = np.ascontiguousarray(w.T)  # O > I: the other Gram matrix
    assert svd.choose_route(w, K) == chosen
    top = svd.top_k_right_singular(w[None], K)
    assert top.routes == (route,)
    _assert_exact(w, top, min_defined=K if "bound" in name or "geometric" in name else K // 2)


def _fp4_like(rng: np.random.Generator, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A gate_proj-like matrix holding exact MXFP4 values (E2M1 x a power of two per 32 inputs)."""
    return synth.quantize_fp4(synth.gate_matrix(rng, rows, cols))[2]


@pytest.mark.slow
def test_fp4_like_and_zero_rows_take_the_mixed_route_exactly() -> None:
    rng = np.random.default_rng(12)
    fp4 = _fp4_like(rng)
    zero_rows = fp4.copy()
    zero_rows[::3] = 0.0  # e.g. dead channels: rank 170, still far above p
    fp8 = synth.quantize_fp8(synth.gate_matrix(rng, ROWS, COLS), scale_dtype="F32")[2]
    batch = np.stack([fp4, zero_rows, fp8])
    top = svd.top_k_right_singular(batch, K)
    assert top.routes == (svd.ROUTE_MIXED,) * 3
    for b in range(3):
        one = svd.TopK(
            top.vectors[b : b + 1], top.singular_values[b : b + 1], top.frobenius_norm[b : b + 1]
        )
        _assert_exact(batch[b], one, min_defined=K // 2)
    f64 = svd.top_k_right_singular(batch, K, precision="f64")
    assert f64.routes == (svd.ROUTE_F64,) * 3
    np.testing.assert_allclose(top.singular_values, f64.singular_values, rtol=1e-10)


@pytest.mark.slow
def test_the_certificate_is_what_keeps_a_steep_decay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the certificate, the float32 subspace of a steeply decaying spectrum (which the
    probe cannot tell from a power law) gives vectors outside the promise: the certificate is
    needed, not decoration."""
    rng = np.random.default_rng(11)
    w = _matrix_with_spectrum(rng, ROWS, COLS, _spectrum("steep decay"))
    monkeypatch.setattr(svd, "_ritz_pairs_certain", lambda theta, residual_norms, k: True)
    top = svd.top_k_right_singular(w[None], K)
    assert top.routes == (svd.ROUTE_MIXED,)
    with pytest.raises(AssertionError):
        _assert_exact(w, top, min_defined=K // 2)


@pytest.mark.slow
def test_tiny_and_out_of_range_matrices_take_the_f64_route(batch: np.ndarray) -> None:
    assert svd.top_k_right_singular(batch, 8).routes == (svd.ROUTE_F64,) * 3  # 64 < 2 (8 + 32)
    rng = np.random.default_rng(13)
    w = _fp4_like(rng)
    for scale in (2.0**-80, 2.0**70):  # exact scalings whose float32 Gram would under/overflow
        scaled = (w * np.float32(scale))[None]
        top = svd.top_k_right_singular(scaled, K)
        assert top.routes == (svd.ROUTE_F64,)
        _assert_exact(scaled[0], top, min_defined=K // 2)


def test_precision_choices() -> None:
    assert svd.route_for("cpu") == svd.ROUTE_MIXED
    assert svd.route_for("cpu", "f64") == svd.ROUTE_F64
    assert svd.route_for("cuda", "mixed") == svd.ROUTE_CUDA
    with pytest.raises(UsageError, match="precision='f16': must be one of mixed, f64"):
        svd.top_k_right_singular(np.ones((1, 4, 4), np.float32), 1, precision="f16")


# ---- bits: independent of the caller's BLAS threads, the same run to run ---------------------------
@pytest.mark.parametrize("precision", svd.PRECISIONS)
def test_bits_do_not_depend_on_the_callers_blas_threads(precision: str) -> None:
    rng = np.random.default_rng(14)
    w = np.stack([_fp4_like(rng, 384, 768), _fp4_like(rng, 384, 768)])
    results = []
    for threads in (1, 2, 1):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            results.append(svd.top_k_right_singular(w, K, precision=precision))
            # The caller's setting is restored afterwards.
            assert {
                i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
            } == {threads}
    for other in results[1:]:
        assert other.vectors.tobytes() == results[0].vectors.tobytes()
        assert other.singular_values.tobytes() == results[0].singular_values.tobytes()
        assert other.frobenius_norm.tobytes() == results[0].frobenius_norm.tobytes()


@pytest.mark.slow
def test_the_decomposition_runs_with_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = svd._gram

    def spy(syrk, w, buffer):
        seen.append(
            {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
        )
        return real(syrk, w, buffer)

    monkeypatch.setattr(svd, "_gram", spy)
    w = _fp4_like(np.random.default_rng(15))[None]
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        svd.top_k_right_singular(w, K)
        svd.top_k_right_singular(w, K, blas_threads=2)
    assert seen == [{svd.BLAS_THREADS}, {2}]
    with pytest.raises(UsageError, match="blas_threads must be at least 1"):
        svd.top_k_right_singular(w, K, blas_threads=0)


def test_f64_route_solves_the_whole_spectrum_when_the_index_range_falls_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = _fp4_like(np.random.default_rng(16))[None]
    expected = svd.top_k_right_singular(w, K, precision="f64")
    real = svd._top_eigenpairs
    calls = []

    def short_index_range(gram, count, *, everything=False):
        calls.append(everything)
        return None if not everything else real(gram, count, everything=True)

    monkeypatch.setattr(svd, "_top_eigenpairs", short_index_range)
    top = svd.top_k_right_singular(w, K, precision="f64")
    assert calls == [False, True]
    np.testing.assert_allclose(top.singular_values, expected.singular_values, rtol=1e-12)
    np.testing.assert_allclose(top.vectors, expected.vectors, atol=1e-6)
