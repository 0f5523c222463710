"""compressed-tensors checkpoints: which codecs a ``quantization_config`` of that method asks for.

Releases quantized with compressed-tensors (Kimi-K2-Thinking and Kimi-K2.5's INT4 experts, the
FP8 and W4A16 variants many MoE models get) say in ``config.json`` ``quantization_config``
(``quant_method: compressed-tensors``) how each group of modules is stored: ``config_groups.<g>``
has the weights' ``type``, ``num_bits``, ``strategy``, ``group_size`` and ``symmetric``, and a
``format`` of its own or the config's. Modules a group leaves out (``ignore``) stay float, so the
float codec is still tried after these. A group this package cannot read is refused here, with
the config key at fault, before any tensor is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from ..numerics.quant import PACKED_INT_BITS
from .layouts import (
    CT_SCALE_PART,
    MX_GROUP,
    NV_GROUP,
    FP8BlockCodec,
    FP8ScaledCodec,
    MatrixCodec,
    PackedFP4GroupCodec,
    PackedIntCodec,
)

CT_QUANT_METHOD = "compressed-tensors"
PACKED_FORMAT = "pack-quantized"
FLOAT_FORMATS = ("float-quantized", "naive-quantized")  # both store the FP8 weight as it is
MXFP4_FORMAT = "mxfp4-pack-quantized"
NVFP4_FORMAT = "nvfp4-pack-quantized"
DENSE_FORMAT = "dense"  # not compressed: the weights are float
#: what a build reads, for messages and ``vindex-hub families``
READS = (
    "compressed-tensors pack-quantized symmetric INT4/INT8 (group or channel scales), "
    "float-quantized FP8 E4M3 (channel, tensor or block scales), mxfp4-pack-quantized and "
    "nvfp4-pack-quantized"
)
KEY = "quantization_config"


def _refuse(where: str, key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"{where}: {KEY}.{key} is {value!r}: {why} (vindex-hub reads {READS})")


def _int(weights: Mapping[str, Any], key: str, path: str, where: str) -> int:
    value = weights.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _refuse(where, f"{path}.{key}", value, "not a positive integer")
    return value


def _packed(weights: Mapping[str, Any], path: str, where: str) -> MatrixCodec:
    if weights.get("type") != "int":
        raise _refuse(where, f"{path}.type", weights.get("type"), "pack-quantized weights are int")
    bits = _int(weights, "num_bits", path, where)
    if bits not in PACKED_INT_BITS:
        raise _refuse(where, f"{path}.num_bits", bits, "this bit width is not read")
    if weights.get("symmetric", True) is not True:
        raise _refuse(
            where, f"{path}.symmetric", weights.get("symmetric"), "zero points are not read"
        )
    if weights.get("actorder") == "group":
        raise _refuse(
            where, f"{path}.actorder", "group", "a permuted group order (weight_g_idx) is not read"
        )
    strategy = weights.get("strategy")
    if strategy == "group":
        return PackedIntCodec(bits, _int(weights, "group_size", path, where))
    if strategy == "channel":
        return PackedIntCodec(bits, None)
    raise _refuse(where, f"{path}.strategy", strategy, "INT weights are read per group or channel")


def _float8(weights: Mapping[str, Any], path: str, where: str) -> MatrixCodec:
    if weights.get("type") != "float" or weights.get("num_bits") != 8:
        key = "type" if weights.get("type") != "float" else "num_bits"
        raise _refuse(where, f"{path}.{key}", weights.get(key), "only FP8 (float, 8 bits) is read")
    strategy = weights.get("strategy")
    if strategy in ("channel", "tensor"):
        return FP8ScaledCodec(per_row=strategy == "channel")
    if strategy == "block":
        block = weights.get("block_structure")
        if (
            not isinstance(block, (list, tuple))
            or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
        ):
            raise _refuse(where, f"{path}.block_structure", block, "not two positive integers")
        return FP8BlockCodec(
            CT_SCALE_PART, (block[0], block[1]), scale_dtypes=("F32", "BF16", "F16")
        )
    raise _refuse(
        where, f"{path}.strategy", strategy, "FP8 weights are read per channel, tensor or block"
    )


def _fp4(weights: Mapping[str, Any], path: str, where: str, nvfp4: bool) -> MatrixCodec:
    if weights.get("type") != "float" or weights.get("num_bits") != 4:
        key = "type" if weights.get("type") != "float" else "num_bits"
        raise _refuse(where, f"{path}.{key}", weights.get(key), "FP4 weights are float, 4 bits")
    group = NV_GROUP if nvfp4 else MX_GROUP
    if weights.get("group_size") != group:
        raise _refuse(
            where, f"{path}.group_size", weights.get("group_size"), f"this format has {group}"
        )
    if weights.get("symmetric", True) is not True:
        raise _refuse(
            where, f"{path}.symmetric", weights.get("symmetric"), "zero points are not read"
        )
    return PackedFP4GroupCodec(nvfp4=nvfp4)


def compressed_tensors_codecs(
    quant: Mapping[str, Any], *, where: str = "config.json"
) -> list[MatrixCodec]:
    """The codecs the config's quantized weight groups are stored with (none for another method)."""
    if quant.get("quant_method") != CT_QUANT_METHOD:
        return []
    sparsity = quant.get("sparsity_config")
    if isinstance(sparsity, Mapping) and sparsity.get("format", DENSE_FORMAT) != DENSE_FORMAT:
        raise _refuse(
            where, "sparsity_config.format", sparsity.get("format"), "sparse storage is not read"
        )
    if quant.get("transform_config"):  # rotated weights (SpinQuant, QuIP): not the model's basis
        raise CheckpointError(
            f"{where}: {KEY}.transform_config is set: the weights are stored rotated, and their "
            f"gate vectors would be too (vindex-hub reads {READS})"
        )
    groups = quant.get("config_groups") or {}
    if not isinstance(groups, Mapping):
        raise _refuse(where, "config_groups", groups, "not an object")
    codecs: list[MatrixCodec] = []
    for name, group in groups.items():
        path = f"config_groups.{name}"
        if not isinstance(group, Mapping):
            raise _refuse(where, path, group, "not an object")
        weights = group.get("weights")
        if weights is None:
            continue  # activations only: the weights are float
        if not isinstance(weights, Mapping):
            raise _refuse(where, f"{path}.weights", weights, "not an object")
        fmt_key = f"{path}.format" if group.get("format") else "format"
        fmt = group.get("format") or quant.get("format")
        if fmt == PACKED_FORMAT:
            codec = _packed(weights, f"{path}.weights", where)
        elif fmt in FLOAT_FORMATS:
            codec = _float8(weights, f"{path}.weights", where)
        elif fmt in (MXFP4_FORMAT, NVFP4_FORMAT):
            codec = _fp4(weights, f"{path}.weights", where, nvfp4=fmt == NVFP4_FORMAT)
        elif fmt == DENSE_FORMAT:
            continue
        else:
            raise _refuse(where, fmt_key, fmt, "this storage format is not read")
        if codec not in codecs:
            codecs.append(codec)
    return codecs
