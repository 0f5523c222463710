"""Writing LarQL's ``index.json`` (the document is ``format.larql``) and ``router_weights.bin``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..format import filenames, larql, layout, sidecar
from ..format.larql import larql_index
from ..fsutil import atomic_path, atomic_write_json
from ..results import LayerResult
from .browse import BrowseFiles

WRITER = f"vindex-hub {__version__}"


def write_router_weights(
    path: Path, index: sidecar.VindexIndex, results: Sequence[LayerResult]
) -> str:
    """Per model layer ``0 .. num_layers-1``: ``[E, H]`` router weight then ``E`` bias values (zeros
    without a bias), f32 LE. LarQL reads layer L's block at ``L * (E*H + E)`` values, so a layer
    not built (or dense) gets a zero-filled block; ``index.json`` lists the real ones
    (``format.larql.ROUTER_LAYERS``). Returns the file's sha256."""
    digest = hashlib.sha256()
    by_layer = {r.layer: r for r in results}
    shape = (index.num_experts, index.hidden_size)
    zeros = np.zeros(larql.router_block_values(*shape), dtype=layout.NUMPY_DTYPE).tobytes()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for layer in range(index.model_config.num_hidden_layers):
            r = by_layer.get(layer)
            if r is None:
                blocks = [zeros]
            elif r.router_weight is None:
                raise UsageError(
                    f"{filenames.LARQL_ROUTER_BIN}: layer {layer} has no router weight kept "
                    "(build with larql_router=True)"
                )
            else:
                blocks = _router_block(r, shape, layer)
            for block in blocks:
                f.write(block)
                digest.update(block)
    return digest.hexdigest()


def _router_block(r: LayerResult, shape: tuple[int, int], layer: int) -> list[bytes]:
    weight = np.asarray(r.router_weight, dtype=layout.NUMPY_DTYPE)
    if weight.shape != shape:
        raise UsageError(
            f"{filenames.LARQL_ROUTER_BIN}: layer {layer} router weight "
            f"{list(weight.shape)}, expected {list(shape)}"
        )
    bias = (
        np.zeros(shape[0], dtype=layout.NUMPY_DTYPE)
        if r.router_bias is None
        else np.asarray(r.router_bias, dtype=layout.NUMPY_DTYPE).reshape(shape[0])
    )
    return [np.ascontiguousarray(weight).tobytes(), bias.tobytes()]


def write_larql_index(
    folder: str | Path,
    index: sidecar.VindexIndex,
    config: Mapping[str, Any],
    results: Sequence[LayerResult] | None,
    *,
    binary_sha256: str,
    router: bool = False,
    browse: BrowseFiles | None = None,
) -> list[str]:
    """Write ``index.json`` (and ``router_weights.bin`` with ``router=True``); return their paths.

    ``binary_sha256`` is the whole ``gate_vectors.bin``'s digest, computed by the caller while it
    streamed the binary for the mirror, so the binary is not read again here. ``browse``: the
    browse-tier files already written (their checksums and the embedding's real vocab size).
    """
    folder = Path(folder)
    checksums = {filenames.GATE_VECTORS_BIN: binary_sha256, **(browse.checksums if browse else {})}
    written: list[str] = []
    router_layers = None
    if router:
        if results is None:
            raise UsageError(
                f"{filenames.LARQL_ROUTER_BIN} needs the layers' router weights; "
                "a converted vindex has none"
            )
        checksums[filenames.LARQL_ROUTER_BIN] = write_router_weights(
            folder / filenames.LARQL_ROUTER_BIN, index, results
        )
        written.append(filenames.LARQL_ROUTER_BIN)
        router_layers = sorted(set(index.layer_ids) & {r.layer for r in results})
    atomic_write_json(
        folder / filenames.LARQL_INDEX_JSON,
        larql_index(
            index,
            config,
            checksums,
            writer=WRITER,
            router_layers=router_layers,
            vocab_size=browse.vocab_size if browse else None,
        ),
    )
    return [filenames.LARQL_INDEX_JSON, *written]
