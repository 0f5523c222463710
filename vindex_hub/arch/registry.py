"""The registry of model families: ``model_type`` -> adapter class."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from ..errors import UnsupportedArchitectureError
from .base import MoEArchitecture

# An adapter class is constructed as ``cls(config, tensor_names=...)``; ``tensor_names`` (the
# checkpoint's tensor names, when known) lets it pick among its family's layouts.
_REGISTRY: dict[str, Callable[..., MoEArchitecture]] = {}
# MoE model types refused on purpose: model_type -> why (one line).
_REFUSED: dict[str, str] = {}
A = TypeVar("A")


def register_architecture(*model_types: str) -> Callable[[A], A]:
    """Class decorator: the adapter for ``model_types`` (the first is its ``model_type`` default)."""

    def deco(cls: A) -> A:
        for model_type in model_types:
            if model_type in _REGISTRY:
                raise ValueError(f"model_type {model_type!r} is registered twice")
            _REGISTRY[model_type] = cls  # type: ignore[assignment]
        return cls

    return deco


def register_refusal(model_type: str, reason: str) -> None:
    """A model type a build refuses with ``reason`` (its experts have no gate projection)."""
    _REFUSED[model_type] = reason


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def refused_architectures() -> dict[str, str]:
    """model_type -> why it is refused."""
    return dict(sorted(_REFUSED.items()))


def architecture_class(model_type: str) -> Callable[..., MoEArchitecture]:
    """The adapter class registered for ``model_type`` (KeyError when none)."""
    return _REGISTRY[model_type]


def get_architecture(
    config: Mapping[str, Any],
    *,
    tensor_names: Collection[str] | None = None,
    where: str = "config.json",
) -> MoEArchitecture:
    """The adapter for ``config['model_type']``, checking the config (and, given them, the names)."""
    model_type = config.get("model_type")
    cls = _REGISTRY.get(model_type) if isinstance(model_type, str) else None
    if cls is None and model_type in _REFUSED:
        raise UnsupportedArchitectureError(
            f"{where}: model_type {model_type!r} is not supported: {_REFUSED[model_type]}"
        )
    if cls is None:
        nearest = difflib.get_close_matches(str(model_type), _REGISTRY, n=1, cutoff=0.5)
        hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
        raise UnsupportedArchitectureError(
            f"{where}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(supported_architectures())}){hint}"
        )
    return cls(config, tensor_names=tensor_names, where=where)
