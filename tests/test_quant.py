"""quant: every decoder against a per-element reference written from the format definitions,
and against torch's float8 dtypes where torch has them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vindex_hub.errors import QuantizationError
from vindex_hub.numerics.quant import (
    check_finite,
    decode_bf16,
    decode_e4m3,
    decode_e8m0,
    decode_tensor,
    dequantize_fp4,
    dequantize_fp8,
    dequantize_fp8_scaled,
    dequantize_packed_int,
)

ALL_BYTES = np.arange(256, dtype=np.uint8)
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def ref_e2m1(code: int) -> float:
    sign = -1.0 if code & 0x8 else 1.0
    exp, man = (code >> 1) & 0x3, code & 0x1
    mag = man * 0.5 if exp == 0 else (1 + man / 2) * 2.0 ** (exp - 1)
    return sign * mag


def ref_e8m0(b: int) -> float:
    return math.nan if b == 255 else 2.0 ** (b - 127)


def ref_e4m3(b: int) -> float:
    sign = -1.0 if b & 0x80 else 1.0
    exp, man = (b >> 3) & 0xF, b & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    if exp == 0:
        return sign * man / 8 * 2.0**-6
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)


def ref_fp4(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows, half = weight.shape
    block = 2 * half // scale.shape[1]
    out = np.zeros((rows, 2 * half))
    for o in range(rows):
        for j in range(half):
            byte = int(weight[o, j])
            for k, code in enumerate((byte & 0xF, byte >> 4)):
                i = 2 * j + k
                out[o, i] = ref_e2m1(code) * ref_e8m0(int(scale[o, i // block]))
    return out


def ref_fp8(weight: np.ndarray, scales: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    out = np.zeros(weight.shape)
    for i in range(weight.shape[0]):
        for j in range(weight.shape[1]):
            out[i, j] = ref_e4m3(int(weight[i, j])) * float(scales[i // block[0], j // block[1]])
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal as float32 (signs of zeros included), NaNs in the same places."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a32.shape != b32.shape:
        return False
    nan = np.isnan(a32)
    return np.array_equal(nan, np.isnan(b32)) and np.array_equal(
        a32[~nan].view(np.uint32), b32[~nan].view(np.uint32)
    )


# ---- element decoders -----------------------------------------------------------------------
def test_e2m1_table_matches_the_bit_layout():
    from vindex_hub.numerics.quant import E2M1_VALUES

    assert same(E2M1_VALUES, [ref_e2m1(c) for c in range(16)])
    assert [abs(v) for v in E2M1_VALUES[:8]] == E2M1


def test_e8m0_every_valid_byte():
    got = decode_e8m0(ALL_BYTES[:255])
    assert got.dtype == np.float32
    assert same(got, [ref_e8m0(b) for b in range(255)])
    assert got[0] == np.float32(2.0**-127) and got[0] != 0  # not flushed to zero
    assert got[127] == 1.0 and got[254] == np.float32(2.0**127)


def test_e8m0_matches_torch_float8_e8m0fnu():
    expect = (
        torch.from_numpy(ALL_BYTES[:255].copy())
        .view(torch.float8_e8m0fnu)
        .to(torch.float32)
        .numpy()
    )
    assert same(decode_e8m0(ALL_BYTES[:255]), expect)


def test_e8m0_byte_255_raises_naming_tensor():
    data = np.full((3, 4), 127, dtype=np.uint8)
    data[1, 2] = 255
    with pytest.raises(
        QuantizationError, match=r"layers\.7\.ffn\.experts\.3\.w1\.scale.*255.*\(1, 2\)"
    ):
        decode_e8m0(data, name="layers.7.ffn.experts.3.w1.scale")


def test_e4m3_every_byte():
    got = decode_e4m3(ALL_BYTES)
    assert same(got, [ref_e4m3(b) for b in range(256)])
    assert got[0x01] == np.float32(2.0**-9)  # smallest subnormal
    assert got[0x07] == np.float32(7 / 8 * 2.0**-6)  # largest subnormal
    assert got[0x08] == np.float32(2.0**-6)  # smallest normal
    assert got[0x7E] == 448.0 and got[0xFE] == -448.0
    assert np.isnan(got[0x7F]) and np.isnan(got[0xFF])
    assert np.flatnonzero(np.isnan(got)).tolist() == [0x7F, 0xFF]
    assert got[0x80] == 0 and np.signbit(got[0x80])


def test_e4m3_matches_torch_float8_e4m3fn():
    expect = torch.from_numpy(ALL_BYTES.copy()).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    assert same(decode_e4m3(ALL_BYTES), expect)


def test_bf16_matches_torch_and_bits():
    values = np.array(
        [0.0, -0.0, 1.0, -2.5, 3.140625, 1e-40, np.inf, 65504.0, 1.5e38], dtype=np.float32
    )
    t = torch.from_numpy(values).to(torch.bfloat16)
    raw = t.view(torch.uint8).numpy()
    assert same(decode_bf16(raw), t.to(torch.float32).numpy())
    # bf16 is the top half of a float32: 1.0 is 0x3F80
    assert decode_bf16(np.array([0x80, 0x3F], np.uint8))[0] == 1.0
    with pytest.raises(QuantizationError, match="router"):
        decode_bf16(np.zeros(3, np.uint8), name="router")


def test_decode_tensor_plain_floats_and_shapes():
    v = np.arange(6, dtype="<f4").reshape(2, 3)
    assert same(decode_tensor(v.view(np.uint8).reshape(-1), "F32", (2, 3)), v)
    h = v.astype("<f2")
    assert same(decode_tensor(h.view(np.uint8).reshape(-1), "F16", (2, 3)), v)
    with pytest.raises(QuantizationError, match=r"bias.*I64"):
        decode_tensor(np.zeros(8, np.uint8), "I64", (1,), name="bias")
    with pytest.raises(QuantizationError, match="does not fill|fill shape"):
        decode_tensor(v.view(np.uint8).reshape(-1), "F32", (7,), name="x")


# ---- FP4 ----------------------------------------------------------------------------------------
def test_fp4_low_nibble_is_the_first_element():
    weight = np.array([[0x21, 0xF8]], dtype=np.uint8)  # codes (1, 2), (8, 15)
    scale = np.array([[127]], dtype=np.uint8)  # 2^0, one block of 4
    got = dequantize_fp4(weight, scale)
    assert got.tolist() == [[0.5, 1.0, -0.0, -6.0]]
    assert np.signbit(got[0, 2])  # negative zero kept


@pytest.mark.parametrize("block", [32, 16, 4])
def test_fp4_matches_elementwise_reference(block):
    rng = np.random.default_rng(block)
    rows, cols = 5, 64
    weight = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scale = rng.integers(0, 255, (rows, cols // block), dtype=np.uint8)
    scale[0, 0] = 0  # 2^-127: a subnormal scale, still exact
    got = dequantize_fp4(weight, scale, name="w")
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    assert same(got, ref_fp4(weight, scale))


def test_fp4_accepts_int8_bytes_without_converting():
    rng = np.random.default_rng(1)
    weight = rng.integers(0, 256, (3, 16), dtype=np.uint8)
    scale = np.full((3, 1), 120, np.uint8)
    assert same(dequantize_fp4(weight.view(np.int8), scale), dequantize_fp4(weight, scale))


def test_fp4_batched_and_out():
    rng = np.random.default_rng(2)
    weight = rng.integers(0, 256, (3, 4, 16), dtype=np.uint8)
    scale = rng.integers(100, 140, (3, 4, 2), dtype=np.uint8)
    out = np.empty((3, 4, 32), np.float32)
    got = dequantize_fp4(weight, scale, out=out)
    assert got is out
    for i in range(3):
        assert same(got[i], ref_fp4(weight[i], scale[i]))


def test_fp4_scale_255_raises_naming_tensor():
    weight = np.zeros((2, 16), np.uint8)
    scale = np.array([[127], [255]], np.uint8)
    with pytest.raises(QuantizationError, match=r"layers\.0\.ffn\.experts\.5\.w1.*255"):
        dequantize_fp4(weight, scale, name="layers.0.ffn.experts.5.w1.weight")


def test_fp4_overflow_to_inf_raises():
    weight = np.full((1, 16), 0x77, np.uint8)  # 6.0 everywhere
    scale = np.array([[254]], np.uint8)  # 6 * 2^127 > float32 max
    with pytest.raises(QuantizationError, match=r"expert_x.*NaN/Inf"):
        dequantize_fp4(weight, scale, name="expert_x")


def test_fp4_shape_errors():
    with pytest.raises(QuantizationError, match="do not divide"):
        dequantize_fp4(np.zeros((2, 16), np.uint8), np.zeros((2, 5), np.uint8), name="w")
    with pytest.raises(QuantizationError, match="disagree"):
        dequantize_fp4(np.zeros((2, 16), np.uint8), np.zeros((3, 1), np.uint8), name="w")


# ---- FP8 ----------------------------------------------------------------------------------------
def test_fp8_ragged_edges_match_reference():
    rng = np.random.default_rng(3)
    rows, cols, block = 200, 300, (128, 128)
    weight = rng.integers(0, 256, (rows, cols), dtype=np.uint8)
    weight[(weight & 0x7F) == 0x7F] = 0x11  # no NaN codes
    scales = rng.uniform(0.5, 4, (2, 3)).astype(np.float32)
    got = dequantize_fp8(weight, scales, name="shared", block_size=block)
    assert got.shape == (rows, cols)
    assert same(got, ref_fp8(weight, scales, block))
    # the ragged last blocks use their own scales
    assert got[199, 299] == np.float32(ref_e4m3(int(weight[199, 299])) * scales[1, 2])


def test_fp8_small_blocks_batched_and_torch_reference():
    rng = np.random.default_rng(4)
    weight = rng.integers(0, 0x7F, (2, 10, 7), dtype=np.uint8)
    scales = rng.uniform(0.1, 2, (2, 3, 2)).astype(np.float32)
    got = dequantize_fp8(weight, scales, block_size=(4, 4))
    for i in range(2):
        e4m3 = (
            torch.from_numpy(weight[i].copy()).view(torch.float8_e4m3fn).to(torch.float32).numpy()
        )
        full = np.repeat(np.repeat(scales[i], 4, 0), 4, 1)[:10, :7]
        assert same(got[i], e4m3 * full)


def test_fp8_e8m0_scales_via_decode():
    weight = np.array([[0x38, 0xB8]], np.uint8)  # +1.0, -1.0
    scales = decode_e8m0(np.array([[130]], np.uint8))  # 8.0
    assert dequantize_fp8(weight, scales).tolist() == [[8.0, -8.0]]


def test_fp8_nan_weight_raises_naming_tensor():
    weight = np.zeros((4, 4), np.uint8)
    weight[2, 3] = 0x7F
    with pytest.raises(
        QuantizationError, match=r"layers\.1\.ffn\.shared_experts\.w1\.weight.*\(2, 3\)"
    ):
        dequantize_fp8(
            weight, np.ones((1, 1), np.float32), name="layers.1.ffn.shared_experts.w1.weight"
        )


def test_fp8_inf_scale_raises():
    with pytest.raises(QuantizationError, match="NaN/Inf"):
        dequantize_fp8(np.full((2, 2), 0x38, np.uint8), np.array([[np.inf]], np.float32), name="w")


def test_fp8_grid_mismatch_raises():
    with pytest.raises(QuantizationError, match=r"scale grid \[2, 2\].*expected \[2, 3\]"):
        dequantize_fp8(np.zeros((200, 300), np.uint8), np.ones((2, 2), np.float32), name="w")


def test_check_finite():
    ok = np.ones((2, 2), np.float32)
    assert check_finite(ok, name="t") is ok
    bad = ok.copy()
    bad[1, 0] = np.nan
    with pytest.raises(QuantizationError, match=r"tensor t: .*1 NaN/Inf.*\(1, 0\)"):
        check_finite(bad, name="t")


# ---- compressed-tensors: packed integers and FP8 with row scales --------------------------------
def _pack_words(q: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors' pack-quantized layout from its definition: each row's values plus
    2^(bits-1), 32/bits to a little-endian int32 word, element i at bits (i % (32/bits)) * bits,
    the last word zero-padded. Returns the words' bytes (uint8 [rows, 4 * words])."""
    rows, cols = q.shape
    per_word = 32 // bits
    words = -(-cols // per_word)
    fields = np.zeros((rows, words * per_word), dtype=np.uint64)
    fields[:, :cols] = q.astype(np.int64) + (1 << (bits - 1))
    shifts = (np.arange(per_word, dtype=np.uint64) * bits)[None, None, :]
    packed = (fields.reshape(rows, words, per_word) << shifts).sum(axis=-1).astype("<u4")
    return packed.view(np.uint8).reshape(rows, 4 * words)


@pytest.mark.parametrize(
    "bits, cols, groups", [(4, 64, 2), (4, 36, 3), (8, 64, 1), (8, 10, 2), (4, 8, 1)]
)
def test_packed_int_matches_the_layout_elementwise(bits, cols, groups):
    rng = np.random.default_rng(bits * 100 + cols)
    rows = 5
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, (rows, cols))
    q[0, :2] = [lo, hi]  # both ends of the range
    scales = rng.uniform(0.01, 0.1, (rows, groups)).astype(np.float32)
    ours = dequantize_packed_int(_pack_words(q, bits), scales, bits, cols, name="w")
    expected = q * np.repeat(scales.astype(np.float64), cols // groups, axis=1)
    np.testing.assert_array_equal(ours, expected.astype(np.float32))


def test_packed_int4_reads_the_low_nibble_first_and_broadcasts_one_scale_row():
    word = np.array([[0x76543210]], dtype="<u4").view(np.uint8)  # fields 0..7 -> values -8..-1
    ours = dequantize_packed_int(word, np.ones((1, 1), np.float32), 4, 8, name="w")
    np.testing.assert_array_equal(ours, [np.arange(-8, 0)])
    two_rows = np.concatenate([word, word])
    ours = dequantize_packed_int(two_rows, np.full((1, 1), 0.5, np.float32), 4, 8, name="w")
    np.testing.assert_array_equal(ours, np.tile(np.arange(-8, 0) * 0.5, (2, 1)))


def test_packed_int_errors_name_the_tensor():
    words = np.zeros((2, 8), np.uint8)  # two rows of two words
    with pytest.raises(QuantizationError, match=r"tensor w: 3-bit packed integers are not read"):
        dequantize_packed_int(words, np.ones((2, 1), np.float32), 3, 16, name="w")
    with pytest.raises(QuantizationError, match=r"tensor w: packed bytes \[2, 8\] do not hold 17"):
        dequantize_packed_int(words, np.ones((2, 1), np.float32), 4, 17, name="w")
    with pytest.raises(QuantizationError, match=r"tensor s: scales \[2, 3\] do not give a group"):
        dequantize_packed_int(words, np.ones((2, 3), np.float32), 4, 16, name="w", scale_name="s")
    with pytest.raises(QuantizationError, match=r"tensor w: dequantized weights hold 16 NaN"):
        dequantize_packed_int(words, np.array([[np.nan], [1]], np.float32), 4, 16, name="w")


def test_fp8_with_row_or_tensor_scales_matches_torch():
    rng = np.random.default_rng(7)
    w = rng.integers(0, 256, (6, 20), dtype=np.uint8)
    w[(w & 0x7F) == 0x7F] = 0
    values = torch.from_numpy(w).view(torch.float8_e4m3fn).to(torch.float64).numpy()
    rows = rng.uniform(0.5, 2, (6, 1)).astype(np.float32)
    ours = dequantize_fp8_scaled(w, rows, name="w")
    np.testing.assert_array_equal(ours, (values * rows).astype(np.float32))
    one = np.array([[0.25]], np.float32)
    np.testing.assert_array_equal(dequantize_fp8_scaled(w, one, name="w"), values * 0.25)
    with pytest.raises(QuantizationError, match=r"tensor w: scales \[1, 6\] are neither"):
        dequantize_fp8_scaled(w, rows.T, name="w")
