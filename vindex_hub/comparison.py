"""``compare(a, b)``: the expert subspaces of two vindexes of one hidden size, layer by layer.

Both sides are opened with ``Vindex.open`` (a folder is memory-mapped; a repo is read lazily, so
only the compared layers' bytes are fetched) and compared one layer at a time, so memory holds
about one layer of each side. Per layer (``numerics.geometry.compare_layers``): the full
``E_a x E_b`` overlap matrix, the overlap of A's expert e with B's expert e, and the one-to-one
matching of largest total overlap. With ``out`` the result is written as a small dataset
(``writers.compare``) that ``verify`` checks and ``push`` publishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputConflictError, UsageError
from .format import geometry, selection
from .hub.refs import DEFAULT_REPO_TYPE
from .numerics import geometry as geo
from .safetext import printable


@dataclass
class Comparison:
    document: dict[str, Any]  # what compare.json holds: both sources, per-layer summaries
    layers: dict[int, geo.LayerComparison]
    out: Path | None = None

    def summary(self) -> dict[int, dict[str, float]]:
        return {layer: c.summary() for layer, c in sorted(self.layers.items())}

    def render(self) -> str:
        a, b = self.document[geometry.COMPARE_A], self.document[geometry.COMPARE_B]
        lines = [
            f"A = {printable(a['name'])} ({printable(a['model'])}), "
            f"B = {printable(b['name'])} ({printable(b['model'])}); "
            f"random baseline K/hidden = {self.document['random_baseline']:.4f}",
            f"  {'layer':>5}  {'same index':>10}  {'matched':>8}  {'to itself':>9}",
        ]
        for layer, s in self.summary().items():
            lines.append(
                f"  {layer:>5}  {s['mean_same_index']:>10.4f}  {s['mean_matched']:>8.4f}  "
                f"{s['matched_to_itself']:>9.2f}"
            )
        if self.out is not None:
            lines.append(f"written to {self.out}")
        return "\n".join(lines)


def _side(vx: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """How the comparison names one side: a repo by id and commit, a folder by its name only
    (never a local path)."""
    is_folder = os.path.isdir(path)
    return {
        "name": Path(path).name if is_folder else str(vx.location).split("@")[0],
        "repo_id": None if is_folder else str(vx.location).split("@")[0],
        "commit": vx.commit,
        "model": vx.index.display_name,
        "model_revision": vx.index.source.revision,
        "num_experts": vx.num_experts,
        "num_feats": vx.num_feats,
    }


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    layers: str | list[int] | None = None,
    revision_a: str | None = None,
    revision_b: str | None = None,
    repo_type: str = DEFAULT_REPO_TYPE,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Comparison:
    """Compare vindex ``a`` with vindex ``b`` (folders or repo ids), on ``layers`` (default: the
    layers both hold); with ``out``, write the comparison dataset there. ``cache_dir``: the Hub
    cache for repos (``Vindex.open``'s)."""
    from .load import Vindex

    target = Path(out) if out is not None else None
    if target is not None and target.exists() and any(target.iterdir()):
        raise OutputConflictError(f"{target}: exists and is not empty; choose another -o")
    with (
        Vindex.open(a, revision_a, repo_type, cache_dir=cache_dir, token=token) as va,
        Vindex.open(b, revision_b, repo_type, cache_dir=cache_dir, token=token) as vb,
    ):
        if va.hidden_size != vb.hidden_size:
            raise UsageError(
                f"hidden sizes differ: {va.hidden_size} ({a}) and {vb.hidden_size} ({b}); "
                "subspaces of different spaces cannot be compared"
            )
        common = sorted(set(va.layers) & set(vb.layers))
        chosen = (
            selection.parse_layers(layers, va.index.model_config.num_hidden_layers)
            if layers is not None
            else common
        )
        missing = [layer for layer in chosen if layer not in common]
        if missing or not chosen:
            raise UsageError(
                f"layers {missing or chosen} are not held by both vindexes "
                f"(A holds {selection.layer_span(va.layers)}, B {selection.layer_span(vb.layers)})"
            )
        results = {layer: geo.compare_layers(va.layer(layer), vb.layer(layer)) for layer in chosen}
        k = min(va.num_feats, vb.num_feats)
        document: dict[str, Any] = {
            "format_version": geometry.COMPARE_FORMAT_VERSION,
            geometry.COMPARE_A: _side(va, a),
            geometry.COMPARE_B: _side(vb, b),
            "hidden_size": va.hidden_size,
            "random_baseline": geo.random_overlap(k, va.hidden_size),
            geometry.COMPARE_LAYERS: {str(layer): c.summary() for layer, c in results.items()},
        }
    comparison = Comparison(document, results)
    if target is not None:
        from .writers.compare import write_comparison

        write_comparison(target, document, results)
        comparison.out = target
    return comparison
