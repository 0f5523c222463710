"""Layer selections: ``"0-42"``, ``"3,5,7-9"`` -> layer ids, and layer ids -> a short span."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import UsageError


def parse_layers(spec: str | Iterable[int] | None, num_layers: int) -> list[int]:
    """``"0-42"``, ``"3,5,7-9"``, an iterable of ints, or None (all) -> sorted unique layer ids."""
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, str):
        ids: set[int] = set()
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise UsageError(f"bad layer selection {spec!r}: use forms like 0-42 or 3,5,7-9")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UsageError(f"bad layer range {part!r} in {spec!r}: end before start")
            if hi >= num_layers:  # checked before expanding: "0-99999999" must not build 10^8 ints
                raise UsageError(
                    f"layers {part} out of range: the model has layers 0-{num_layers - 1}"
                )
            ids.update(range(lo, hi + 1))
    else:
        ids = {int(x) for x in spec}
    if not ids:
        raise UsageError(f"layer selection {spec!r} selects no layer")
    bad = sorted(i for i in ids if not 0 <= i < num_layers)
    if bad:
        raise UsageError(f"layers {bad} out of range: the model has layers 0-{num_layers - 1}")
    return sorted(ids)


def layer_span(layers: Sequence[int], *, labels: bool = False) -> str:
    """``0-42`` for a contiguous run, else ``3,5``; with ``labels``: ``L00-L42`` / ``L03, L05``."""
    layers = list(layers)
    if not layers:
        return "none"
    name = (lambda layer: f"L{layer:02d}") if labels else str
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{name(layers[0])}-{name(layers[-1])}"
    return (", " if labels else ",").join(map(name, layers))
