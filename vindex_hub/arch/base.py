"""The architecture interface the builder calls, and the helpers adapters share.

An adapter turns one model family's tensor names and storage formats into plain float32 arrays.
The builder only talks to :class:`MoEArchitecture`, so adding a family means adding one module
that registers itself with ``@register_architecture("model_type")`` (``arch.registry``).

The helpers here are the checked primitives every adapter needs: reading a config int, finding
a tensor that was read with the expected dtype and shape, decoding BF16/F16/F32 (into a
caller's buffer, from a strided view, so a fused tensor's slice is never copied whole).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import CheckpointError
from ..format.sidecar import MoEConfig
from ..numerics.quant import output_buffer, widen_to_float32
from ..source.base import RawTensor

#: The unquantized safetensors dtypes a float tensor may have, and their numpy storage dtype
#: (BF16 has none in numpy: its 16 bits are kept as uint16 and widened by ``widen_to_float32``).
FLOAT_STORAGE: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
}
FLOAT_DTYPES = tuple(FLOAT_STORAGE)


@runtime_checkable
class MoEArchitecture(Protocol):
    """What the builder asks of a model family (``config`` is the checkpoint's ``config.json``).

    Tensor arguments ``raw`` map tensor name -> :class:`RawTensor` (undecoded bytes), as a
    source's ``read(layer_tensors(layer))`` returns them. Decoders raise ``CheckpointError``
    (a tensor missing, of the wrong dtype or shape) or ``QuantizationError`` (E8M0 255, NaN/Inf),
    naming the tensor.
    """

    model_type: str
    #: whether each MoE layer's router is one ``[num_experts, hidden]`` matrix. False (ZAYA: its
    #: router is an MLP) means the vindex holds no router: ``layer_tensors`` lists none, and the
    #: ``router_*`` methods raise ``UnsupportedArchitectureError`` naming why.
    has_router_matrix: bool

    @property
    def num_hidden_layers(self) -> int:
        """Number of model layers (a vindex's layer ids are the model's ids, 0..n-1)."""
        ...

    def moe_layers(self) -> list[int]:
        """Ids of the MoE layers (those a vindex indexes), ascending; dense layers are absent."""
        ...

    def moe_config(self) -> MoEConfig: ...

    @property
    def gate_shape(self) -> tuple[int, int]:
        """(out, in) = (moe_intermediate_size, hidden_size) of one routed expert's gate_proj."""
        ...

    def embedding_tensor(self) -> str:
        """Name of the input embedding ``[vocab, hidden]`` (feature tokens, LarQL's embeddings.bin):
        ``model.embed_tokens.weight`` in the transformers layout."""
        ...

    def layer_tensors(self, layer: int) -> list[str]:
        """Every tensor the builder reads for one layer, each once (a fused tensor is one name)."""
        ...

    def expert_gate_name(self, layer: int, expert: int) -> str:
        """The tensor holding one routed expert's gate_proj (for messages; may be a fused tensor)."""
        ...

    def shared_gate_name(self, layer: int) -> str | None:
        """The shared expert's gate_proj tensor, or None when the model has none."""
        ...

    def router_name(self, layer: int) -> str:
        """The router weight tensor ``[num_experts, hidden]``."""
        ...

    def expert_gate_weights(
        self,
        layer: int,
        experts: Sequence[int],
        raw: Mapping[str, RawTensor],
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Dequantized gate_proj of several experts: float32 ``(len(experts), out, in)``.

        ``out`` (C-contiguous float32 of that shape) lets the caller reuse one buffer.
        """
        ...

    def shared_gate_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        """float32 ``(out, in)`` of the shared expert's gate_proj, or None."""
        ...

    def router_weight(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray:
        """float32 ``(num_experts, hidden)``."""
        ...

    def router_bias(self, layer: int, raw: Mapping[str, RawTensor]) -> np.ndarray | None:
        """float32 ``(num_experts,)`` router (score-correction) bias, or None where there is none."""
        ...


# ---- config.json -------------------------------------------------------------------------------
def config_int(
    config: Mapping[str, Any],
    key: str,
    *,
    minimum: int = 1,
    default: Any = None,
    where: str = "config.json",
) -> int:
    """``config[key]`` as an int >= ``minimum`` (``default`` when absent), refused naming the key."""
    value = config.get(key, default)
    # bool is an int subclass and a float like 2.5 would truncate: neither is a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise CheckpointError(f"{where}: {key} must be {kind}, got {value!r}")
    return value


def first_config_int(
    config: Mapping[str, Any], keys: Sequence[str], what: str, *, where: str = "config.json"
) -> int:
    """The first of ``keys`` present in ``config`` (checked as a positive int); none present is an error."""
    for key in keys:
        if config.get(key) is not None:
            return config_int(config, key, where=where)
    raise CheckpointError(f"{where}: no {what} (looked for {', '.join(keys)})")


def config_object(
    config: Mapping[str, Any], key: str, *, where: str = "config.json"
) -> Mapping[str, Any]:
    """``config[key]`` as an object (``{}`` when absent or null)."""
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{where}: {key} must be an object, got {value!r}")
    return value


def config_block_size(
    quant: Mapping[str, Any], default: tuple[int, int], *, where: str = "config.json"
) -> tuple[int, int]:
    """``quantization_config.weight_block_size`` as two positive ints."""
    block = quant.get("weight_block_size", default)
    key = "quantization_config.weight_block_size"
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        raise CheckpointError(
            f"{where}: {key} must be a list of 2 positive integers, got {block!r}"
        )
    return (
        config_int({key: block[0]}, key, where=where),
        config_int({key: block[1]}, key, where=where),
    )


def check_moe_layer_list(
    layers: Any, key: str, num_layers: int, *, where: str = "config.json"
) -> list[int]:
    """A config's explicit list of layer ids (``moe_layers``, ``mlp_only_layers``), checked."""
    if not isinstance(layers, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in layers
    ):
        raise CheckpointError(
            f"{where}: {key} must be a list of layer ids in 0..{num_layers - 1}, got {layers!r}"
        )
    return sorted(set(layers))


# ---- tensors -----------------------------------------------------------------------------------
def checked_tensor(
    raw: Mapping[str, RawTensor],
    name: str,
    dtypes: Collection[str],
    shape: tuple[int, ...] | None = None,
) -> RawTensor:
    """The raw tensor ``name``, after checking it was read and has an expected dtype (and shape)."""
    t = raw.get(name)
    if t is None:
        raise CheckpointError(f"tensor {name} was not read")
    if t.info.dtype not in dtypes:
        raise CheckpointError(
            f"tensor {name}: dtype {t.info.dtype}, expected {' or '.join(dtypes)}"
        )
    if shape is not None and tuple(t.info.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name}: shape {list(t.info.shape)}, expected {list(shape)}")
    return t


def float_view(t: RawTensor) -> np.ndarray:
    """An unquantized tensor's bytes viewed (no copy) in its storage dtype and shape."""
    return t.data.view(FLOAT_STORAGE[t.info.dtype]).reshape(t.info.shape)


def decode_float(
    raw: Mapping[str, RawTensor],
    name: str,
    shape: tuple[int, ...] | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """An unquantized (BF16/F16/F32) tensor as float32, its shape checked when given."""
    t = checked_tensor(raw, name, FLOAT_DTYPES, shape)
    view = float_view(t)
    return widen_to_float32(view, t.info.dtype, out=output_buffer(out, view.shape, name))


def first_present(candidates: Sequence[str], names: Collection[str] | None) -> str | None:
    """The first candidate name the checkpoint holds (the first one when its names are unknown)."""
    if names is None:
        return candidates[0] if candidates else None
    return next((c for c in candidates if c in names), None)
