"""Small (or real-size) checkpoints in the exact DeepSeek-V4-Flash format, for tests, the demo
and benchmarks.

``make_deepseek_v4_checkpoint`` writes ``config.json``, safetensors shards split by a byte budget
(layers straddle shards, as in the real checkpoint) and ``model.safetensors.index.json``, with
every tensor family the real one has: routed experts (w1/w2/w3, packed FP4 + E8M0 scales, or
FP8 + F32 block scales for Flash-Base), the FP8 shared expert, BF16 routers, F32 router biases
on learned-routing layers, ``tid2eid`` tables on hash layers, an ``mtp.0`` block with its own
experts, and a few attention/norm/embedding tensors a reader must skip.

Gate weights are ``U diag(s) V^T``-like matrices plus a Gaussian bulk, so their spectra are
realistically flat (``spectrum="flat"``) or have clear gaps (``"decaying"``), and they go
through a real quantizer: FP4 E2M1 round-to-nearest with per-32 E8M0 power-of-two scales, FP8
E4M3 (torch's ``float8_e4m3fn`` cast) with 128x128 block scales. The dequantized values are the
exact float32 weights; pass ``reference={}`` to receive them, keyed by tensor name.

Every tensor is drawn from its own seed (``seed`` and the tensor's name), so contents do not
depend on sharding or on which tensors are included.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from ..arch import deepseek_v4 as ds
from ..arch.layouts import E8M0_DTYPE, FP8_WEIGHT_DTYPE, MXFP4_GROUP
from ..format.filenames import TOKENIZER_JSON
from ..numerics.quant import E2M1_VALUES, FP8_BLOCK_SIZE, fp8_scale_grid
from ..source.local import CONFIG_FILE, SINGLE_FILE, WEIGHT_MAP_FILE
from ..source.safetensors_format import DTYPE_ITEMSIZE

E4M3_MAX = 448.0
E2M1_MAX = 6.0
E8M0_BIAS = 127
# Magnitude of the real experts' weights (std ~0.02), so scales sit where real ones do.
WEIGHT_STD = 0.02

_TORCH_DTYPES = {
    "I8": torch.int8,
    "I64": torch.int64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E8M0": torch.float8_e8m0fnu,
}
_E2M1_POSITIVE = E2M1_VALUES[:8]
_E2M1_MIDPOINTS = (_E2M1_POSITIVE[1:] + _E2M1_POSITIVE[:-1]) / 2


# ---- quantizers (the inverse of vindex_hub.numerics.quant, for generating test data) --------------------
def _e8m0_exponent(amax: np.ndarray, max_code: float) -> np.ndarray:
    """Smallest power-of-two exponent e with amax / 2^e <= max_code, clipped to E8M0's range."""
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(amax.astype(np.float64) / max_code))
    return np.clip(np.where(amax > 0, e, -E8M0_BIAS), -E8M0_BIAS, E8M0_BIAS).astype(np.int32)


def quantize_fp4(
    weight: np.ndarray, block: int = ds.FP4_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float ``(O, I)`` -> (packed uint8 ``(O, I/2)``, E8M0 bytes ``(O, I/block)``, exact float32 values).

    MXFP4: per block of ``block`` inputs the scale is the smallest power of two that brings the
    block's max |w| within E2M1's 6; each weight rounds to the nearest E2M1 value.
    """
    rows, cols = weight.shape
    blocks = weight.reshape(rows, cols // block, block).astype(np.float32)
    exponent = _e8m0_exponent(np.abs(blocks).max(axis=-1), E2M1_MAX)
    scale = np.ldexp(np.float32(1.0), exponent).astype(np.float32)[..., None]
    q = blocks / scale
    magnitude = np.abs(q)
    idx = np.zeros(q.shape, dtype=np.uint8)  # nearest E2M1 code: how many midpoints lie below
    for midpoint in _E2M1_MIDPOINTS:
        idx += magnitude > midpoint  # ties round down; beyond 6 saturates at 6
    negative = np.signbit(q)
    values = (np.where(negative, -_E2M1_POSITIVE[idx], _E2M1_POSITIVE[idx]) * scale).reshape(
        rows, cols
    )
    codes = (idx | (negative.astype(np.uint8) << 3)).reshape(rows, cols)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)  # low nibble = even (first) element
    return packed, (exponent + E8M0_BIAS).astype(np.uint8), values


def quantize_mxfp4(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float ``(..., O, I)`` -> gpt-oss's MXFP4 tensors: ``_blocks`` uint8 ``(..., O, I/32, 16)``
    and ``_scales`` uint8 ``(..., O, I/32)`` (the same E2M1 + E8M0 rule as ``quantize_fp4``)."""
    *lead, rows, cols = weight.shape
    packed, scales, _ = quantize_fp4(weight.reshape(-1, cols), MXFP4_GROUP)
    groups = cols // MXFP4_GROUP
    return (
        packed.reshape(*lead, rows, groups, MXFP4_GROUP // 2),
        scales.reshape(*lead, rows, groups),
    )


def quantize_fp8(
    weight: np.ndarray, *, scale_dtype: str, block: tuple[int, int] = FP8_BLOCK_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float ``(O, I)`` -> (E4M3 bytes ``(O, I)``, scale bytes, exact float32 values).

    Scales per ``block`` (ragged edges allowed): ``scale_dtype`` "F8_E8M0" (power of two, as in
    Flash; scale bytes ``(R, C)``) or "F32" (amax/448, as in Flash-Base; bytes ``(R, 4*C)``).
    """
    rows, cols = weight.shape
    grid = fp8_scale_grid((rows, cols), block)
    padded = np.zeros((grid[0] * block[0], grid[1] * block[1]), dtype=np.float32)
    padded[:rows, :cols] = weight
    amax = np.abs(padded.reshape(grid[0], block[0], grid[1], block[1])).max(axis=(1, 3))
    if scale_dtype == E8M0_DTYPE:
        exponent = _e8m0_exponent(amax, E4M3_MAX)
        scale = np.ldexp(np.float32(1.0), exponent).astype(np.float32)
        scale_bytes = (exponent + E8M0_BIAS).astype(np.uint8)
    elif scale_dtype == "F32":
        scale = np.where(amax > 0, amax / np.float32(E4M3_MAX), np.float32(1.0)).astype(np.float32)
        scale_bytes = scale.view(np.uint8)
    else:
        raise ValueError(f"scale_dtype {scale_dtype!r}: use 'F8_E8M0' or 'F32'")
    full_scale = np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)[:rows, :cols]
    q = np.clip(weight / full_scale, -E4M3_MAX, E4M3_MAX).astype(np.float32)
    fp8 = torch.from_numpy(q).to(torch.float8_e4m3fn)
    values = fp8.to(torch.float32).numpy() * full_scale  # the one float32 multiply a decoder does
    return fp8.view(torch.uint8).numpy(), scale_bytes, values


def round_bf16(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float -> (BF16 bytes as uint8 ``(..., 2n)``, exact float32 values); round to nearest even."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.uint8).numpy(), t.to(torch.float32).numpy()


# A byte-level BPE tokenizer is trained on this text: words, punctuation, newlines and multi-byte
# characters, so decoded labels meet every kind of piece a real tokenizer has.
TOKENIZER_CORPUS = [
    "The cat sat on the mat. The dog ran after the cat!\n",
    "def main():\n    return 42  # the answer\n",
    "Paris is the capital of France; Berlin is the capital of Germany.\n",
    "ünïcødé tèxt, 中文文本, русский текст, and emoji \U0001f600 too.\n",
    "numbers 0 1 2 3 10 100 1000 and symbols <>[]{}()=+-*/\n",
]
SPECIAL_TOKENS = ["<|begin_of_sentence|>", "<|end_of_sentence|>"]


def write_tokenizer(path: str | Path, vocab_size: int) -> Path:
    """A ``tokenizer.json`` made by the ``tokenizers`` library: byte-level BPE (as DeepSeek's),
    trained on ``TOKENIZER_CORPUS`` up to ``vocab_size`` tokens (a small corpus stops earlier:
    the embedding's rows beyond the tokenizer's vocabulary are padding, as in real models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    tokenizer.save(str(path))
    return Path(path)


def gate_matrix(
    rng: np.random.Generator, rows: int, cols: int, spectrum: str = "flat", *, k: int = 64
) -> np.ndarray:
    """A float32 ``(rows, cols)`` weight with the singular value spectrum ``spectrum``.

    "flat" puts 64 spikes just above a Gaussian bulk's edge (top-64 energy ~0.11 at 2048 x 4096,
    like DeepSeek-V4-Flash); "decaying" makes geometric spikes well above a weak bulk (clear
    gaps). The families the SVD routes are measured on (``SPECTRUM_FAMILIES``) follow;
    ``k`` is the top-K they are built around.
    """
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum {spectrum!r}: use one of {SPECTRA}")
    if spectrum in SPECTRUM_FAMILIES and spectrum != "flat":
        return _family_matrix(rng, rows, cols, spectrum, k) * np.float32(WEIGHT_STD)
    rank = min(64, rows, cols)
    if spectrum == "flat":
        bulk, strengths = 1.0, np.asarray(np.linspace(1.8, 1.1, rank), dtype=np.float64)
    else:
        bulk, strengths = 0.05, np.asarray(4.0 * 0.95 ** np.arange(rank), dtype=np.float64)
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= np.float32(bulk / math.sqrt(cols))
    left = rng.standard_normal((rows, rank), dtype=np.float32) * (
        strengths / math.sqrt(rows)
    ).astype(np.float32)
    right = rng.standard_normal((rank, cols), dtype=np.float32) * np.float32(1 / math.sqrt(cols))
    w += left @ right
    w *= np.float32(WEIGHT_STD)
    return w


# ---- spectrum families: what the SVD routes are measured and tested on ----------------------------
# family: whether its benchmark experts hold FP4 values (quantize_fp4). FP4's rounding noise
# (~10% of each weight) would fill the gaps of "clustered" and the null space of "rank-near-k",
# so those two keep their exact float32 values.
SPECTRUM_FAMILIES = {
    "flat": True,  # V4-like: 64 weak spikes just above a Marchenko-Pastur bulk (top-64 ~0.11)
    "spiky": True,  # the bulk + 4 spikes of 0.3-1.5 x its Frobenius norm, column scales 0.5-1.5
    "power-law": True,  # s_i ~ (i+1)^-0.66: top-64 energy ~0.85 at 2048 x 4096
    "clustered": False,  # every singular value gap exactly 1e-4 x s_0, the promise's bound
    "rank-near-k": False,  # rank k + 4, singular values 1 .. 0.5 linearly, zero beyond
}
SPECTRA = ("flat", "decaying", *(f for f in SPECTRUM_FAMILIES if f != "flat"))
SPIKES = 4
SPIKE_SCALE = math.sqrt(2048) / (1.0 + math.sqrt(0.5))  # bulk Frobenius norm / edge at 2048 x 4096
POWER_LAW_EXPONENT = 0.66
CLUSTER_GAP = 1e-4


def family_expert(
    rng: np.random.Generator, rows: int, cols: int, family: str, *, k: int = 64
) -> np.ndarray:
    """An expert's exact float32 gate_proj values of a spectrum family: ``gate_matrix`` through
    the FP4 quantizer where ``SPECTRUM_FAMILIES`` says so."""
    if family not in SPECTRUM_FAMILIES:
        raise ValueError(f"family {family!r}: use one of {tuple(SPECTRUM_FAMILIES)}")
    w = gate_matrix(rng, rows, cols, family, k=k)
    return quantize_fp4(w)[2] if SPECTRUM_FAMILIES[family] else w


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def _family_matrix(
    rng: np.random.Generator, rows: int, cols: int, family: str, k: int
) -> np.ndarray:
    """The unit-scale float32 matrix of a family other than "flat" (``SPECTRUM_FAMILIES``)."""
    n = min(rows, cols)
    if family == "spiky":
        w = rng.standard_normal((rows, cols)) / math.sqrt(cols)  # bulk: ||.||_F ~ sqrt(rows)
        # 0.3-1.5 x the bulk's Frobenius norm at 2048 x 4096, i.e. 8-40 x its largest singular
        # value (1 + sqrt(rows / cols)): kept a multiple of that edge at any size.
        edge = 1.0 + math.sqrt(rows / cols)
        strengths = rng.uniform(0.3, 1.5, SPIKES) * SPIKE_SCALE * edge
        u = rng.standard_normal((rows, SPIKES))
        v = rng.standard_normal((cols, SPIKES))
        w += (u / np.linalg.norm(u, axis=0) * strengths) @ (v / np.linalg.norm(v, axis=0)).T
        w *= rng.uniform(0.5, 1.5, cols)  # per-input scales (e.g. a fine-tune's)
        return (w / math.sqrt(rows)).astype(np.float32)
    if family == "power-law":
        s = (1.0 + np.arange(n)) ** -POWER_LAW_EXPONENT
        left = rng.standard_normal((rows, n), dtype=np.float32) / np.float32(math.sqrt(rows))
        right = rng.standard_normal((n, cols), dtype=np.float32) / np.float32(math.sqrt(cols))
        return (left * s.astype(np.float32)) @ right
    if family == "clustered":
        s = 1.0 - CLUSTER_GAP * np.arange(n)
        return ((_orthonormal(rng, rows, n) * s) @ _orthonormal(rng, cols, n).T).astype(np.float32)
    if family == "rank-near-k":
        rank = min(k + 4, n)
        s = np.linspace(1.0, 0.5, rank)
        return ((_orthonormal(rng, rows, rank) * s) @ _orthonormal(rng, cols, rank).T).astype(
            np.float32
        )
    raise AssertionError(family)


# ---- the checkpoint ------------------------------------------------------------------------------
@dataclass
class _Group:
    """Tensors generated together (a weight and its scales) and always stored in one shard."""

    tensors: list[tuple[str, str, tuple[int, ...]]]  # (name, safetensors dtype, shape)
    make: Callable[[np.random.Generator], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * DTYPE_ITEMSIZE[dtype] for _, dtype, shape in self.tensors)


def _random_fp8_bytes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    b = rng.integers(0, 256, shape, dtype=np.uint8)
    return np.where((b & 0x7F) == 0x7F, b ^ 1, b)  # no NaN codes


def _fp4_group(name_w: str, name_s: str, rows: int, cols: int, matrix: Callable | None) -> _Group:
    shapes: list[tuple[str, str, tuple[int, ...]]] = [
        (name_w, ds.FP4_WEIGHT_DTYPE, (rows, cols // 2)),
        (name_s, E8M0_DTYPE, (rows, cols // ds.FP4_BLOCK)),
    ]

    def make(rng: np.random.Generator):
        if matrix is None:  # a tensor no vindex reads: valid bytes, no structure
            packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
            scales = rng.integers(118, 123, (rows, cols // ds.FP4_BLOCK), dtype=np.uint8)
            return {name_w: packed, name_s: scales}, {}
        packed, scales, values = quantize_fp4(matrix(rng))
        return {name_w: packed, name_s: scales}, {name_w: values}

    return _Group(shapes, make)


def _fp8_group(
    name_w: str, name_s: str, rows: int, cols: int, scale_dtype: str, matrix: Callable | None
) -> _Group:
    grid = fp8_scale_grid((rows, cols))
    shapes: list[tuple[str, str, tuple[int, ...]]] = [
        (name_w, FP8_WEIGHT_DTYPE, (rows, cols)),
        (name_s, scale_dtype, grid),
    ]

    def make(rng: np.random.Generator):
        if matrix is None:
            w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(WEIGHT_STD)
        else:
            w = matrix(rng)
        q, scales, values = quantize_fp8(w, scale_dtype=scale_dtype)
        return {name_w: q, name_s: scales}, ({name_w: values} if matrix is not None else {})

    return _Group(shapes, make)


def _bf16_group(name: str, shape: tuple[int, ...], std: float, keep: bool) -> _Group:
    def make(rng: np.random.Generator):
        raw, values = round_bf16(rng.standard_normal(shape, dtype=np.float32) * np.float32(std))
        return {name: raw}, ({name: values} if keep else {})

    return _Group([(name, ds.ROUTER_DTYPE, shape)], make)


def _bias_group(name: str, num_experts: int) -> _Group:
    def make(rng: np.random.Generator):
        bias = (rng.standard_normal(num_experts) * 0.01).astype(np.float32)
        return {name: bias.view(np.uint8)}, {name: bias}

    return _Group([(name, ds.ROUTER_BIAS_DTYPE, (num_experts,))], make)


def _hash_table_group(name: str, vocab_size: int, num_experts: int, top_k: int) -> _Group:
    def make(rng: np.random.Generator):
        table = np.argsort(rng.random((vocab_size, num_experts)), axis=1)[:, :top_k].astype("<i8")
        return {name: table.view(np.uint8)}, {}

    return _Group([(name, ds.HASH_TABLE_DTYPE, (vocab_size, top_k))], make)


def _block_groups(
    block: str,
    *,
    hash_routed: bool,
    num_experts: int,
    hidden: int,
    inter: int,
    top_k: int,
    vocab_size: int,
    expert_dtype: str,
    spectrum: str,
    include_attention: bool,
) -> list[_Group]:
    def structured(rows: int, cols: int) -> Callable[[np.random.Generator], np.ndarray]:
        return lambda rng: gate_matrix(rng, rows, cols, spectrum)

    groups: list[_Group] = []
    if include_attention:
        groups.append(_bf16_group(f"{block}.attn_norm.weight", (hidden,), 1.0, keep=False))
        groups.append(
            _fp8_group(
                f"{block}.attn.wq_a.weight",
                f"{block}.attn.wq_a.scale",
                64,
                hidden,
                ds.SHARED_SCALE_DTYPE,
                None,
            )
        )
        groups.append(_bf16_group(f"{block}.ffn_norm.weight", (hidden,), 1.0, keep=False))
    groups.append(
        _bf16_group(ds.gate_tensor(block, ds.WEIGHT), (num_experts, hidden), WEIGHT_STD, keep=True)
    )
    if hash_routed:
        groups.append(
            _hash_table_group(
                ds.gate_tensor(block, ds.ROUTER_HASH_TABLE), vocab_size, num_experts, top_k
            )
        )
    else:
        groups.append(_bias_group(ds.gate_tensor(block, ds.ROUTER_BIAS), num_experts))
    for proj, (rows, cols) in (
        (ds.GATE_PROJ, (inter, hidden)),
        (ds.UP_PROJ, (inter, hidden)),
        (ds.DOWN_PROJ, (hidden, inter)),
    ):
        matrix = structured(rows, cols) if proj == ds.GATE_PROJ else None
        w, s = ds.shared_tensor(block, proj, ds.WEIGHT), ds.shared_tensor(block, proj, ds.SCALE)
        groups.append(_fp8_group(w, s, rows, cols, ds.SHARED_SCALE_DTYPE, matrix))
    for e in range(num_experts):
        for proj, (rows, cols) in (
            (ds.GATE_PROJ, (inter, hidden)),
            (ds.UP_PROJ, (inter, hidden)),
            (ds.DOWN_PROJ, (hidden, inter)),
        ):
            matrix = structured(rows, cols) if proj == ds.GATE_PROJ else None
            w, s = (
                ds.expert_tensor(block, e, proj, ds.WEIGHT),
                ds.expert_tensor(block, e, proj, ds.SCALE),
            )
            if expert_dtype == ds.EXPERT_DTYPE_FP8:
                groups.append(_fp8_group(w, s, rows, cols, ds.ROUTED_FP8_SCALE_DTYPE, matrix))
            else:
                groups.append(_fp4_group(w, s, rows, cols, matrix))
    return groups


def _seed_for(seed: int, group: _Group) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(group.tensors[0][0].encode())])


def _to_torch(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    raw = torch.from_numpy(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return raw.view(_TORCH_DTYPES[dtype]).reshape(shape)


def make_deepseek_v4_checkpoint(
    path: str | Path,
    *,
    num_layers: int = 4,
    num_experts: int = 8,
    hidden_size: int = 256,
    moe_intermediate_size: int = 128,
    num_experts_per_tok: int = 2,
    num_hash_layers: int = 1,
    expert_dtype: str | None = "fp4",
    num_shards: int = 3,
    seed: int = 0,
    vocab_size: int = 512,
    include_mtp: bool = True,
    include_attention: bool = True,
    include_tokenizer: bool = True,
    spectrum: str = "flat",
    reference: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a DeepSeek-V4-format checkpoint into folder ``path`` (created) and return it.

    ``expert_dtype``: "fp4" (Flash), "fp8" (Flash-Base) or None (an older Flash revision whose
    config has no ``expert_dtype``; experts are FP4). ``num_shards`` is an upper bound (a shard
    never splits a weight from its scales); ``1`` writes a single ``model.safetensors`` and no
    index. ``hidden_size`` and ``moe_intermediate_size`` must be multiples of 32.

    ``reference``, when given, is filled with the exact float32 value of every routed and shared
    gate_proj (``...w1.weight``), router weight and router bias written, and of the input embedding
    (``embed.weight``, written with ``include_attention``), keyed by tensor name.
    ``include_tokenizer`` writes ``tokenizer.json`` (``write_tokenizer``).
    """
    if expert_dtype not in (ds.EXPERT_DTYPE_FP4, ds.EXPERT_DTYPE_FP8, None):
        raise ValueError(f"expert_dtype {expert_dtype!r}: use 'fp4', 'fp8' or None")
    if hidden_size % ds.FP4_BLOCK or moe_intermediate_size % ds.FP4_BLOCK:
        raise ValueError(
            f"hidden_size and moe_intermediate_size must be multiples of {ds.FP4_BLOCK}"
        )
    if num_shards < 1:
        raise ValueError("num_shards must be >= 1")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)

    config = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": ds.MODEL_TYPE,
        "num_hidden_layers": num_layers,
        "num_hash_layers": num_hash_layers,
        "hidden_size": hidden_size,
        "moe_intermediate_size": moe_intermediate_size,
        "n_routed_experts": num_experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": num_experts_per_tok,
        "scoring_func": "sqrtsoftplus",
        "topk_method": "noaux_tc",
        "routed_scaling_factor": 1.5,
        "vocab_size": vocab_size,
        "num_nextn_predict_layers": 1 if include_mtp else 0,
        "torch_dtype": "bfloat16",
        "quantization_config": dict(ds.QUANTIZATION_CONFIG),
    }
    if expert_dtype is not None:
        config["expert_dtype"] = expert_dtype

    common: dict[str, Any] = dict(
        num_experts=num_experts,
        hidden=hidden_size,
        inter=moe_intermediate_size,
        top_k=num_experts_per_tok,
        vocab_size=vocab_size,
        expert_dtype=expert_dtype or ds.EXPERT_DTYPE_FP4,
        spectrum=spectrum,
        include_attention=include_attention,
    )
    groups: list[_Group] = []
    if include_attention:
        groups.append(_bf16_group(ds.EMBED_TENSOR, (vocab_size, hidden_size), 1.0, keep=True))
    for layer in range(num_layers):
        groups += _block_groups(
            ds.layer_block(layer), hash_routed=layer < num_hash_layers, **common
        )
    if include_mtp:
        mtp = ds.mtp_block(0)
        if include_attention:
            groups.append(_bf16_group(f"{mtp}.enorm.weight", (hidden_size,), 1.0, keep=False))
            groups.append(_bf16_group(f"{mtp}.hnorm.weight", (hidden_size,), 1.0, keep=False))
        groups += _block_groups(mtp, hash_routed=False, **common)
    if include_attention:
        groups.append(_bf16_group("norm.weight", (hidden_size,), 1.0, keep=False))
        groups.append(_bf16_group("head.weight", (vocab_size, hidden_size), WEIGHT_STD, keep=False))

    # Split by a byte budget, in order: a group goes to the shard its first byte falls in.
    total = sum(g.nbytes for g in groups)
    budget = -(-total // num_shards)
    slots, offset = [], 0
    for g in groups:
        slots.append(min(num_shards - 1, offset // budget))
        offset += g.nbytes
    used = sorted(set(slots))
    if num_shards == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(used):05d}.safetensors" for i in range(len(used))]
    shard_of_slot = dict(zip(used, names, strict=True))

    weight_map: dict[str, str] = {}
    for slot in used:
        shard = shard_of_slot[slot]
        tensors: dict[str, torch.Tensor] = {}
        for g, s in zip(groups, slots, strict=True):
            if s != slot:
                continue
            data, values = g.make(_seed_for(seed, g))
            for name, dtype, shape in g.tensors:
                tensors[name] = _to_torch(data[name], dtype, shape)
                weight_map[name] = shard
            if reference is not None:
                reference.update(values)
        save_file(tensors, str(root / shard), metadata={"format": "pt"})
        del tensors

    (root / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if include_tokenizer:
        write_tokenizer(root / TOKENIZER_JSON, vocab_size)
    if num_shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (root / WEIGHT_MAP_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return root
