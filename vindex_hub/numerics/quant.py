"""Raw checkpoint bytes -> float32: FP4 E2M1 with E8M0 scales, FP8 E4M3 with block or row scales,
packed INT4/INT8 with group scales (compressed-tensors), BF16.

Pure functions on numpy arrays, no I/O. numpy has no 8-bit float dtypes, so every 8-bit format
decodes through a 256-entry lookup table built once from the format's definition; packed FP4
decodes through a 256-entry table of value *pairs* (one byte holds two weights, low nibble
first), so a 2048 x 4096 expert is one gather plus one broadcast multiply.

Every function takes a ``name`` (the tensor's name) that goes into error messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import QuantizationError

# ---- format tables --------------------------------------------------------------------------
# FP4 E2M1 code -> value: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0.
E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)

E8M0_NAN = 255  # the one E8M0 byte that is not a power of two


def _e8m0_table() -> np.ndarray:
    # Byte b is 2^(b-127); byte 0 is 2^-127 (a float32 subnormal), not zero.
    powers = np.ldexp(1.0, np.arange(E8M0_NAN) - 127).astype(np.float32)
    return np.append(powers, np.float32(np.nan))


def _e4m3_table() -> np.ndarray:
    # OCP E4M3 ("fn"): bias 7, subnormals at exponent 0, no infinities, S.1111.111 is NaN.
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = b & 0x7
    value = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * np.ldexp(1.0, exp - 7))
    value = (sign * value).astype(np.float32)
    value[(b & 0x7F) == 0x7F] = np.nan
    return value


_E8M0 = _e8m0_table()
_E4M3 = _e4m3_table()
# byte -> (value of low nibble, value of high nibble), viewed as one 8-byte item so a single
# 1-D take decodes a whole byte.
_FP4_PAIRS = np.stack([E2M1_VALUES[np.arange(256) & 0xF], E2M1_VALUES[np.arange(256) >> 4]], axis=1)
_FP4_PAIRS_U64 = np.ascontiguousarray(_FP4_PAIRS).view(np.uint64).reshape(256)

FP8_BLOCK_SIZE = (128, 128)  # DeepSeek's quantization_config.weight_block_size


def fp8_scale_grid(
    shape: tuple[int, int], block: tuple[int, int] = FP8_BLOCK_SIZE
) -> tuple[int, int]:
    """Scale grid of a block-quantized FP8 matrix: ``ceil(rows/bo) x ceil(cols/bi)``."""
    return (-(-shape[0] // block[0]), -(-shape[1] // block[1]))


# ---- element decoders -----------------------------------------------------------------------
def _as_bytes(data: np.ndarray, name: str) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8:
        if data.dtype.itemsize != 1:
            raise QuantizationError(f"tensor {name}: expected raw bytes, got dtype {data.dtype}")
        data = data.view(np.uint8)  # int8 packed FP4 etc.: reinterpret, never convert
    return data


def decode_e8m0(data: np.ndarray, *, name: str = "?") -> np.ndarray:
    """E8M0 bytes -> float32 ``2^(b-127)``, same shape. Byte 255 (NaN) raises ``QuantizationError``."""
    data = _as_bytes(data, name)
    bad = np.flatnonzero(data == E8M0_NAN)
    if bad.size:
        where = np.unravel_index(bad[0], data.shape)
        raise QuantizationError(
            f"tensor {name}: E8M0 scale byte 255 (NaN) at index {tuple(int(i) for i in where)} "
            f"({bad.size} such bytes)"
        )
    return np.asarray(_E8M0[data])


def decode_e4m3(data: np.ndarray, *, name: str = "?") -> np.ndarray:
    """FP8 E4M3 (torch ``float8_e4m3fn``) bytes -> float32, same shape; 0x7F/0xFF decode to NaN."""
    return np.asarray(_E4M3[_as_bytes(data, name)])


def decode_bf16(data: np.ndarray, *, name: str = "?") -> np.ndarray:
    """Little-endian BF16 bytes -> float32; the last axis halves (2 bytes a value)."""
    data = _as_bytes(data, name)
    if data.shape[-1] % 2:
        raise QuantizationError(
            f"tensor {name}: BF16 data of {data.shape[-1]} bytes is not whole values"
        )
    halves = np.ascontiguousarray(data).view("<u2")
    return (halves.astype(np.uint32) << 16).view(np.float32)


_PLAIN_FLOATS: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
}


def decode_tensor(
    data: np.ndarray, dtype: str, shape: tuple[int, ...], *, name: str = "?"
) -> np.ndarray:
    """Bytes of one unpacked float tensor (safetensors ``dtype``) -> float32 array of ``shape``."""
    data = _as_bytes(data, name).reshape(-1)
    if dtype == "BF16":
        out = decode_bf16(data, name=name)
    elif dtype == "F8_E4M3":
        out = decode_e4m3(data, name=name)
    elif dtype == "F8_E8M0":
        out = decode_e8m0(data, name=name)
    elif dtype in _PLAIN_FLOATS:
        out = np.ascontiguousarray(data).view(_PLAIN_FLOATS[dtype]).astype(np.float32)
    else:
        raise QuantizationError(f"tensor {name}: cannot decode dtype {dtype} as floats")
    if out.size != int(np.prod(shape)):
        raise QuantizationError(f"tensor {name}: {out.size} values do not fill shape {list(shape)}")
    return out.reshape(shape)


def widen_to_float32(values: np.ndarray, dtype: str, *, out: np.ndarray) -> np.ndarray:
    """An unquantized tensor, as a (possibly strided) view in its storage dtype, -> float32 ``out``.

    ``dtype`` is the safetensors dtype: BF16 values are uint16 bit patterns (the high half of a
    float32), F16/F32 are numpy floats. Only the viewed elements are touched, so a slice of a
    fused tensor converts without copying the whole tensor.
    """
    if dtype == "BF16":
        bits = out.view(np.uint32)
        bits[...] = values  # uint16 -> uint32, then shift into the high half
        np.left_shift(bits, 16, out=bits)
    elif dtype in ("F16", "F32"):
        out[...] = values
    else:
        raise QuantizationError(f"cannot widen dtype {dtype} to float32")
    return out


# ---- checks -----------------------------------------------------------------------------------
def check_finite(values: np.ndarray, *, name: str) -> np.ndarray:
    """Raise ``QuantizationError`` naming the tensor if ``values`` holds NaN or Inf; else return it."""
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values))
        where = tuple(int(i) for i in np.unravel_index(bad[0], values.shape))
        raise QuantizationError(
            f"tensor {name}: dequantized weights hold {bad.size} NaN/Inf values "
            f"(first at index {where}: {values[where]})"
        )
    return values


def output_buffer(out: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Where a decoder writes: ``out`` checked to be C-contiguous float32 of ``shape``, or a new
    such array when ``out`` is None."""
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"tensor {name}: out must be C-contiguous float32 {shape}, got {out.dtype} {out.shape}"
        )
    return out


# ---- block-scaled formats -----------------------------------------------------------------------
def dequantize_fp4(
    weight_bytes: np.ndarray,
    scale_bytes: np.ndarray,
    *,
    name: str = "?",
    scale_name: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Packed FP4 E2M1 + E8M0 block scales (MXFP4) -> float32.

    ``weight_bytes``: uint8 ``(..., O, I/2)``, two weights a byte, low nibble first.
    ``scale_bytes``: uint8 ``(..., O, I/block)``; the block size is ``I / scale_cols`` and must
    divide ``I``. Returns float32 ``(..., O, I)`` (written into ``out`` when given).
    ``W[o, i] = E2M1[nibble(o, i)] * 2^(S[o, i // block] - 127)``.
    """
    w = _as_bytes(weight_bytes, name)
    scale_name = scale_name or name
    s = _as_bytes(scale_bytes, scale_name)
    if w.ndim < 2 or s.ndim != w.ndim or w.shape[:-1] != s.shape[:-1]:
        raise QuantizationError(
            f"tensor {name}: packed FP4 weight {list(w.shape)} and scale {list(s.shape)} disagree "
            "(expected weight (..., O, I/2) and scale (..., O, I/block))"
        )
    return _fp4_times(w, decode_e8m0(s, name=scale_name), name=name, out=out)


def dequantize_fp4_scaled(
    weight_bytes: np.ndarray,
    scales: np.ndarray,
    *,
    name: str = "?",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Packed FP4 E2M1 (two a byte, low nibble first) ``(..., O, I/2)`` times float32 block scales
    ``(..., O, I/block)`` -> float32 ``(..., O, I)`` (NVFP4: E4M3 scales over a global scale)."""
    w = _as_bytes(weight_bytes, name)
    scales = np.asarray(scales, dtype=np.float32)
    if w.ndim < 2 or scales.ndim != w.ndim or w.shape[:-1] != scales.shape[:-1]:
        raise QuantizationError(
            f"tensor {name}: packed FP4 weight {list(w.shape)} and scales {list(scales.shape)} "
            "disagree (expected weight (..., O, I/2) and scales (..., O, I/block))"
        )
    return _fp4_times(w, scales, name=name, out=out)


def _fp4_times(
    w: np.ndarray, scales: np.ndarray, *, name: str, out: np.ndarray | None
) -> np.ndarray:
    in_features = 2 * w.shape[-1]
    num_blocks = scales.shape[-1]
    if num_blocks == 0 or in_features % num_blocks:
        raise QuantizationError(
            f"tensor {name}: {num_blocks} scale columns do not divide {in_features} input features"
        )
    block = in_features // num_blocks
    result = output_buffer(out, (*w.shape[:-1], in_features), name)
    pairs = result.view(np.uint64).reshape(w.shape)  # each uint64 slot = two float32 outputs
    np.take(_FP4_PAIRS_U64, w, out=pairs)
    blocked = result.reshape(*scales.shape, block)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
        np.multiply(blocked, scales[..., None], out=blocked)
    return check_finite(result, name=name)


def dequantize_fp8(
    weight_bytes: np.ndarray,
    scales: np.ndarray,
    *,
    name: str = "?",
    block_size: tuple[int, int] = FP8_BLOCK_SIZE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """FP8 E4M3 + 2-D block scales -> float32 ``W[i, j] = e4m3(Q[i, j]) * S[i // bo, j // bi]``.

    ``weight_bytes``: uint8 ``(..., O, I)``. ``scales``: float32 grid ``(..., ceil(O/bo), ceil(I/bi))``
    (decode E8M0 scales with ``decode_e8m0`` first); the last row/column of blocks may be ragged.
    The block size cannot be read off ragged shapes, so it is passed (the checkpoint's
    ``weight_block_size``) and the grid is checked against it.
    """
    w = _as_bytes(weight_bytes, name)
    scales = np.asarray(scales, dtype=np.float32)
    bo, bi = block_size
    if w.ndim < 2 or scales.ndim != w.ndim:
        raise QuantizationError(
            f"tensor {name}: FP8 weight {list(w.shape)} and scale grid {list(scales.shape)} disagree"
        )
    rows, cols = w.shape[-2:]
    grid = fp8_scale_grid((rows, cols), block_size)
    if scales.shape != (*w.shape[:-2], *grid):
        raise QuantizationError(
            f"tensor {name}: scale grid {list(scales.shape)} does not fit weight {list(w.shape)} "
            f"with {bo}x{bi} blocks (expected {[*w.shape[:-2], *grid]})"
        )
    result = output_buffer(out, w.shape, name)
    np.take(_E4M3, w, out=result)
    # One broadcast multiply per row of blocks: a column-scale vector of length I (ragged-safe).
    for r in range(grid[0]):
        col_scale = np.repeat(scales[..., r, :], bi, axis=-1)[..., :cols]
        rows_r = result[..., r * bo : (r + 1) * bo, :]
        with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
            np.multiply(rows_r, col_scale[..., None, :], out=rows_r)
    return check_finite(result, name=name)


# ---- compressed-tensors: packed integers, FP8 with per-row scales ----------------------------
#: INT bit widths read from compressed-tensors' ``pack-quantized`` int32 words: 32/b values a word,
#: element i at bits b*i.., so a little-endian word's bytes hold the elements in order (4 bits: low
#: nibble first). Every compressed-tensors release packs 4 and 8 bits this way; other widths
#: changed layout between releases (padded words, then dense packing) and are not read.
PACKED_INT_BITS = (4, 8)


def _packed_int_tables() -> dict[int, np.ndarray]:
    # A stored field is the value plus 2^(b-1) (unsigned): byte -> its value(s), as float32.
    b = np.arange(256)
    int4 = np.stack([(b & 0xF) - 8, (b >> 4) - 8], axis=1).astype(np.float32)
    return {
        4: np.ascontiguousarray(int4).view(np.uint64).reshape(256),  # one 8-byte item: a pair
        8: (b - 128).astype(np.float32),
    }


_PACKED_INT = _packed_int_tables()


def dequantize_packed_int(
    packed_bytes: np.ndarray,
    scales: np.ndarray,
    num_bits: int,
    cols: int,
    *,
    name: str = "?",
    scale_name: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """compressed-tensors ``pack-quantized`` symmetric INT weights -> float32 ``(O, cols)``.

    ``packed_bytes``: uint8 ``(O, 4 * words)``, the little-endian int32 words of each row (``words
    = ceil(cols * b / 32)``; the last word may be padded). ``scales``: float32 ``(O or 1, G)``, one
    scale per group of ``cols / G`` inputs (``G = 1``: per row). ``W[o, i] = (field(o, i) - 2^(b-1))
    * S[o, i // (cols / G)]``.
    """
    scale_name = scale_name or name
    if num_bits not in PACKED_INT_BITS:
        raise QuantizationError(
            f"tensor {name}: {num_bits}-bit packed integers are not read (only {PACKED_INT_BITS})"
        )
    w = _as_bytes(packed_bytes, name)
    scales = np.asarray(scales, dtype=np.float32)
    per_byte = 8 // num_bits
    if w.ndim != 2 or w.shape[1] * per_byte < cols or w.shape[1] % 4:
        raise QuantizationError(
            f"tensor {name}: packed bytes {list(w.shape)} do not hold {cols} {num_bits}-bit values a row"
        )
    rows = w.shape[0]
    groups = scales.shape[-1] if scales.ndim == 2 else 0
    if scales.ndim != 2 or scales.shape[0] not in (1, rows) or groups == 0 or cols % groups:
        raise QuantizationError(
            f"tensor {scale_name}: scales {list(scales.shape)} do not give a group size dividing "
            f"{cols} inputs of {rows} rows"
        )
    result = output_buffer(out, (rows, cols), name)
    whole = w.shape[1] * per_byte == cols  # no padding: decode straight into the result
    values = result if whole else np.empty((rows, w.shape[1] * per_byte), np.float32)
    if num_bits == 4:
        np.take(_PACKED_INT[4], w, out=values.view(np.uint64).reshape(w.shape))
    else:
        np.take(_PACKED_INT[8], w, out=values)
    if not whole:
        result[...] = values[:, :cols]
    blocked = result.reshape(rows, groups, cols // groups)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
        np.multiply(blocked, scales[..., None], out=blocked)
    return check_finite(result, name=name)


def dequantize_fp8_scaled(
    weight_bytes: np.ndarray,
    scales: np.ndarray,
    *,
    name: str = "?",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """FP8 E4M3 ``(O, I)`` times one scale per row (``scales`` ``(O, 1)``) or one for all (``(1, 1)``)
    -> float32 ``W[o, i] = e4m3(Q[o, i]) * S[o]`` (compressed-tensors channel / tensor strategy)."""
    w = _as_bytes(weight_bytes, name)
    scales = np.asarray(scales, dtype=np.float32)
    if w.ndim != 2 or scales.shape not in ((w.shape[0], 1), (1, 1)):
        raise QuantizationError(
            f"tensor {name}: scales {list(scales.shape)} are neither one a row nor one in all for "
            f"weight {list(w.shape)}"
        )
    result = output_buffer(out, w.shape, name)
    np.take(_E4M3, w, out=result)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
        np.multiply(result, scales, out=result)
    return check_finite(result, name=name)


# ---- NVFP4 and MXFP8 (the original Inkling 2 loop releases' experts) ---------------------------
NVFP4_BLOCK = 16  # E2M1 inputs per E4M3 block scale
MXFP8_BLOCK = 32  # E4M3 inputs per E8M0 block scale (OCP Microscaling)


def nvfp4_global_scales(
    amax: np.ndarray, denominator: np.ndarray, *, name: str = "?"
) -> np.ndarray:
    """NVFP4's per-tensor (here per-expert) factor ``amax / outer_scale_denominator``, float32.

    Both are float arrays that broadcast (a denominator may be one value for all experts); the
    division is done in float32, as the loaders of these checkpoints do. A zero or non-finite
    denominator raises ``QuantizationError`` naming ``name``.
    """
    a = np.asarray(amax, dtype=np.float32)
    d = np.asarray(denominator, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        factors = np.asarray(a / d, dtype=np.float32)
    if not np.isfinite(factors).all():
        bad = int(np.flatnonzero(~np.isfinite(factors))[0])
        raise QuantizationError(
            f"tensor {name}: amax / outer_scale_denominator is not finite at expert {bad} "
            f"({float(a.reshape(-1)[bad % a.size])} / {float(d.reshape(-1)[bad % d.size])})"
        )
    return factors


def dequantize_nvfp4(
    weight_bytes: np.ndarray,
    scale_bytes: np.ndarray,
    global_scale: float,
    *,
    name: str = "?",
    scale_name: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Packed FP4 E2M1 + E4M3 block scales + one float32 factor (NVFP4) -> float32.

    ``weight_bytes``: uint8 ``(..., O, I/2)``, two weights a byte, low nibble first.
    ``scale_bytes``: E4M3 bytes ``(..., O, I/16)``. ``global_scale``: the tensor's factor
    (``nvfp4_global_scales``). ``W[o, i] = (E2M1[nibble(o, i)] * e4m3(S[o, i // 16])) * g``,
    multiplied in float32 in that order. Returns float32 ``(..., O, I)`` (into ``out`` when given).
    """
    w = _as_bytes(weight_bytes, name)
    scale_name = scale_name or name
    s = _as_bytes(scale_bytes, scale_name)
    if w.ndim < 2 or s.shape != (*w.shape[:-1], 2 * w.shape[-1] // NVFP4_BLOCK) or w.shape[-1] % 8:
        raise QuantizationError(
            f"tensor {scale_name}: NVFP4 scale {list(s.shape)} does not fit packed weight "
            f"{name} {list(w.shape)} (one scale per {NVFP4_BLOCK} inputs)"
        )
    result = _fp4_times(w, decode_e4m3(s, name=scale_name), name=name, out=out)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
        np.multiply(result, np.float32(global_scale), out=result)
    return check_finite(result, name=name)


def dequantize_mxfp8(
    weight_bytes: np.ndarray,
    scale_bytes: np.ndarray,
    *,
    name: str = "?",
    scale_name: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """FP8 E4M3 + one E8M0 scale per 32 inputs (MXFP8) -> float32.

    ``weight_bytes``: E4M3 bytes ``(..., O, I)``; ``scale_bytes``: E8M0 bytes ``(..., O, I/32)``.
    ``W[o, i] = e4m3(Q[o, i]) * 2^(S[o, i // 32] - 127)``; byte 255 raises ``QuantizationError``.
    """
    w = _as_bytes(weight_bytes, name)
    scale_name = scale_name or name
    s = _as_bytes(scale_bytes, scale_name)
    if (
        w.ndim < 2
        or w.shape[-1] % MXFP8_BLOCK
        or s.shape != (*w.shape[:-1], w.shape[-1] // MXFP8_BLOCK)
    ):
        raise QuantizationError(
            f"tensor {scale_name}: MXFP8 scale {list(s.shape)} does not fit weight {name} "
            f"{list(w.shape)} (one scale per {MXFP8_BLOCK} inputs)"
        )
    result = output_buffer(out, w.shape, name)
    np.take(_E4M3, w, out=result)
    blocked = result.reshape(*s.shape, MXFP8_BLOCK)
    with np.errstate(over="ignore", invalid="ignore"):  # reported by check_finite
        np.multiply(blocked, decode_e8m0(s, name=scale_name)[..., None], out=blocked)
    return check_finite(result, name=name)
