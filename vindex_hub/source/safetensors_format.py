"""The checked safetensors header parser both sources share (local files and ranged Hub reads).

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + the data; the header
maps each tensor name to ``{dtype, shape, data_offsets: [begin, end]}``, offsets relative to the
start of the data. A remote reader fetches the first ``PREFIX_BYTES``, asks ``header_length`` how
many header bytes follow, fetches those, then calls ``parse_header``.

Every check names the file: a Git-LFS pointer where a shard should be, a header that is too big
or not JSON, a tensor whose bytes lie past the end of the file (a truncated download), an
unknown dtype, a byte count that does not match the shape.
"""

from __future__ import annotations

import json
import math
import struct

from ..errors import CheckpointError
from .base import TensorInfo

PREFIX_BYTES = 8  # the u64 header length that starts every file
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
METADATA_KEY = "__metadata__"
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"

DTYPE_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def header_length(prefix: bytes, file_size: int, *, file: str) -> int:
    """The header's byte length from a file's first ``PREFIX_BYTES`` bytes (and its total size).

    Raises ``CheckpointError`` for a file too short to be safetensors, a Git-LFS pointer, or a
    header length that is absurd or runs past the end of the file.
    """
    # b"version " read as a u64 is an absurd length anyway; say what the file really is.
    if prefix.startswith(LFS_POINTER_PREFIX[:PREFIX_BYTES]):
        raise CheckpointError(
            f"{file} is a Git-LFS pointer file ({file_size} bytes of text), not safetensors data: "
            "the weights were never downloaded; run `git lfs pull` in the checkpoint's clone"
        )
    if file_size < PREFIX_BYTES or len(prefix) < PREFIX_BYTES:
        raise CheckpointError(
            f"{file}: {file_size} bytes is too short to be a safetensors file (truncated?)"
        )
    (n,) = struct.unpack("<Q", prefix[:PREFIX_BYTES])
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{file}: oversized header ({n} bytes claimed, limit {MAX_HEADER_BYTES}): not a safetensors file"
        )
    if PREFIX_BYTES + n > file_size:
        raise CheckpointError(
            f"{file}: oversized header ({n} bytes claimed but the file holds {file_size}): "
            "truncated or not a safetensors file"
        )
    return n


def parse_header(
    prefix: bytes, header: bytes, file_size: int, *, shard: str, file: str | None = None
) -> dict[str, TensorInfo]:
    """Parse and check one shard's header -> ``{name: TensorInfo}`` with absolute byte offsets.

    ``shard`` is the file's name relative to the checkpoint root (stored in each TensorInfo);
    ``file`` is what messages call it (a path or URL; defaults to ``shard``).
    """
    file = file or shard
    n = header_length(prefix, file_size, file=file)
    if len(header) != n:
        raise CheckpointError(
            f"{file}: got {len(header)} header bytes, the file says {n} (truncated?)"
        )
    try:
        entries = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{file}: safetensors header is not valid JSON ({exc}): garbage or corrupt file"
        ) from None
    if not isinstance(entries, dict):
        raise CheckpointError(
            f"{file}: safetensors header is a JSON {type(entries).__name__}, expected an object"
        )

    data_start = PREFIX_BYTES + n
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in entries.items():
        if name == METADATA_KEY:
            continue
        tensors[name] = _tensor_info(
            name, entry, shard=shard, file=file, data_start=data_start, data_size=data_size
        )
    return tensors


def _tensor_info(
    name: str, entry: object, *, shard: str, file: str, data_start: int, data_size: int
) -> TensorInfo:
    where = f"{file}: tensor {name}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if dtype not in DTYPE_ITEMSIZE:
        raise CheckpointError(
            f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPE_ITEMSIZE)})"
        )
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CheckpointError(f"{where}: bad shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise CheckpointError(
            f"{where}: data ends at byte {data_start + end} but the file holds {data_start + data_size}: "
            "the shard is truncated (incomplete download?)"
        )
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if end - begin != expected:
        raise CheckpointError(
            f"{where}: {end - begin} bytes for a {dtype} tensor of shape {shape} (expected {expected})"
        )
    return TensorInfo(
        name=name,
        dtype=dtype,
        shape=tuple(shape),
        shard=shard,
        start=data_start + begin,
        end=data_start + end,
    )
