"""``vindex_hub.numerics.svd`` against a float64 LAPACK SVD reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vindex_hub.numerics import svd
from vindex_hub.errors import CheckpointError, UsageError

# A vector is well defined (and compared) only when its singular value is separated from its
# neighbours: relative gap min(|s_i - s_{i-1}|, |s_i - s_{i+1}|) / s_0 above this.
GAP = 1e-3


def _matrix_with_spectrum(rng: np.random.Generator, rows: int, cols: int, s: np.ndarray) -> np.ndarray:
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
    np.testing.assert_allclose(top.frobenius_norm[b], np.linalg.norm(w.astype(np.float64)), rtol=1e-12)
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
def test_top_k_matches_float64_svd(batch: np.ndarray, device_path: str) -> None:
    k = 8
    if device_path == "lapack":
        top = svd.top_k_right_singular(batch, k)
    else:
        top = _via_torch(batch, k)
    assert top.vectors.shape == (3, k, 128) and top.vectors.dtype == np.float32
    assert top.singular_values.shape == (3, k) and top.singular_values.dtype == np.float32
    assert top.frobenius_norm.shape == (3,) and top.frobenius_norm.dtype == np.float64
    assert np.all(np.diff(top.singular_values, axis=1) <= 0)
    for b in range(3):
        _check_against_reference(batch[b], top, b, k)


def _via_torch(weights: np.ndarray, k: int) -> svd.TopK:
    """The CUDA code path run on CPU: same torch ops, same post-processing as the public call."""
    s, v, fro = svd._top_k_torch(weights, k, [f"m{b}" for b in range(len(weights))], device="cpu")
    vectors = np.ascontiguousarray(v / np.linalg.norm(v, axis=-1, keepdims=True), dtype=np.float32)
    return svd.TopK(svd.canonicalize_signs(vectors), s.astype(np.float32), fro)


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


def test_cuda_device_runs_the_torch_path(batch: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_torch(weights, k, labels, *, device):
        calls.append(device)
        return svd._top_k_lapack(weights, k, labels)

    monkeypatch.setattr(svd, "_top_k_torch", fake_torch)
    svd.top_k_right_singular(batch, 4, device="cuda")
    assert calls == ["cuda"]


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
    with pytest.raises(UsageError, match=r"--num-feats 65 is larger than the rank bound min\(O, I\) .*64 x 128: 64"):
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
def test_non_finite_input_is_a_checkpoint_error(batch: np.ndarray, bad: float, device_path: str) -> None:
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
    np.testing.assert_allclose(s, np.linalg.svd(router.astype(np.float64), compute_uv=False), rtol=1e-12)
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
