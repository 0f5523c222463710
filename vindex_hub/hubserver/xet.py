"""The Xet side of the local Hub server: token endpoints, and reading what hf_xet stored.

On the Hub, ``huggingface_hub`` (with ``hf_xet`` installed) uploads LFS-mode files through Xet:
it asks ``GET /api/{type}s/{id}/xet-write-token/{rev}`` for ``{"casUrl", "accessToken", "exp"}``
and hf_xet sends content-defined chunks, packed into *xorbs*, plus a *shard* (``.mdb``) that
describes each file as xorb chunk ranges, to the CAS at ``casUrl``. The commit then names the
file by sha256 like an LFS file. Downloads go the other way: a HEAD of ``/resolve/`` answers
``X-Xet-Hash`` and a ``Link: <.../xet-read-token/{rev}>; rel="xet-auth"``, and hf_xet
reconstructs the file from the CAS.

This server hands out ``local://<root>/xet-cas`` as ``casUrl``: hf_xet's own file-system CAS
(xet-core's ``LocalClient``) then writes, under ``<root>/xet-cas/xet/xorbs/``::

    shards/<hash>.mdb          one per upload session: files -> xorb chunk ranges, and their sha256
    xorbs/default.<hash>       chunks, each an 8-byte header + LZ4 / byte-grouped LZ4 / raw data

:class:`XetStore` parses both (the shard layout: a 48-byte header; then per file a 48-byte
header ``file hash, flags u32, entry count u32, u64``, that many 48-byte segments ``xorb hash,
flags u32, bytes u32, first chunk u32, end chunk u32``, as many verification records when flag
bit 31 is set, one metadata record holding the sha256 when bit 30 is set; a record of 0xFF
bytes ends the list. Hashes are four little-endian u64 words, written as hex word by word).
When a commit names a file by sha256, the server finds it in the shards and reconstructs its
bytes from the xorbs into its blob store, checking the sha256: plain ``GET``/``Range`` reads of
``/resolve/`` (the CDN leg) then serve those bytes, while hf_xet clients read the CAS directly.
The server only reads these files; it never opens hf_xet's ``global_dedup_lookup.redb`` (a
client session holds it open).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .http import HTTPFailure

if TYPE_CHECKING:
    from .api import HubHandler
    from .storage import RepoRef

logger = logging.getLogger(__name__)

CAS_FOLDER = "xet-cas"  # under the server root; hf_xet adds xet/xorbs/{shards,xorbs} below it
TOKEN_LIFETIME_S = 3600
_SHARD_TAG = b"HFRepoMetaData\x00"  # the start of the 32-byte tag every shard begins with
_RECORD = 48
_FLAG_VERIFICATION = 1 << 31
_FLAG_METADATA_EXT = 1 << 30
_BOOKEND = b"\xff" * 32
_CHUNK_HEADER = 8
_LZ4_FRAME_MAGIC = 0x184D2204


class XetFormatError(Exception):
    """A shard or xorb that does not parse (names the file)."""


def hash_hex(raw: bytes) -> str:
    """A 32-byte Xet hash as hex: four little-endian u64 words, each as 16 hex digits."""
    return "".join(f"{w:016x}" for w in struct.unpack("<4Q", raw))


@dataclass(frozen=True)
class Segment:
    xorb: str  # xorb hash (hex)
    size: int  # bytes of file content in this chunk range
    chunk_start: int
    chunk_end: int  # exclusive


@dataclass(frozen=True)
class XetFile:
    xet_hash: str
    sha256: str | None
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


def parse_shard(data: bytes, name: str = "shard") -> list[XetFile]:
    """The file records of one ``.mdb`` shard (see the module doc for the layout)."""
    if not data.startswith(_SHARD_TAG) or len(data) < _RECORD:
        raise XetFormatError(f"{name}: not a Xet shard (no HFRepoMetaData tag)")
    files: list[XetFile] = []
    off = _RECORD
    while True:
        record = data[off : off + _RECORD]
        if len(record) < _RECORD:
            raise XetFormatError(f"{name}: file section ends without its closing record")
        if record[:32] == _BOOKEND:
            return files
        flags, count = struct.unpack_from("<II", record, 32)
        off += _RECORD
        segments = []
        for _ in range(count):
            seg = data[off : off + _RECORD]
            if len(seg) < _RECORD:
                raise XetFormatError(f"{name}: truncated segment record")
            _, size, start, end = struct.unpack_from("<IIII", seg, 32)
            segments.append(Segment(hash_hex(seg[:32]), size, start, end))
            off += _RECORD
        if flags & _FLAG_VERIFICATION:
            off += _RECORD * count
        sha256 = None
        if flags & _FLAG_METADATA_EXT:
            sha256 = hash_hex(data[off : off + 32])
            off += _RECORD
        files.append(XetFile(hash_hex(record[:32]), sha256, tuple(segments)))


# -- chunk decoding ----------------------------------------------------------------------------


def lz4_block_decompress(src: bytes | memoryview, out: bytearray) -> None:
    """Append the decoded LZ4 block ``src`` to ``out`` (matches may reach back into ``out``)."""
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        length = token >> 4
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        out += src[i : i + length]
        i += length
        if i >= n:
            return
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        length = token & 15
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        length += 4
        start = len(out) - offset
        if offset == 0 or start < 0:
            raise XetFormatError("LZ4 match offset outside the decoded data")
        if offset >= length:
            out += out[start : start + length]
        else:  # an overlapping match repeats the last `offset` bytes
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]


def lz4_frame_decompress(data: bytes) -> bytes:
    """Decode an LZ4 frame (what xet-core's ``lz4_flex`` frame encoder writes)."""
    view = memoryview(data)
    magic, flg, bd = struct.unpack_from("<IBB", view, 0)
    if magic != _LZ4_FRAME_MAGIC:
        raise XetFormatError("chunk is not an LZ4 frame")
    pos = 6 + (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0) + 1  # + content size, dict id, HC
    block_checksum = bool(flg & 0x10)
    out = bytearray()
    while True:
        (size,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if size == 0:
            break
        raw, size = bool(size & 0x80000000), size & 0x7FFFFFFF
        block = view[pos : pos + size]
        pos += size + (4 if block_checksum else 0)
        if raw:
            out += block
        else:
            lz4_block_decompress(block, out)
    return bytes(out)


def bg4_regroup(data: bytes) -> bytes:
    """Undo xet-core's 4-way byte grouping: the data is byte 0 of every 4, then byte 1, ..."""
    n = len(data)
    split, rem = divmod(n, 4)
    out = bytearray(n)
    pos = 0
    for g in range(4):
        size = split + (1 if g < rem else 0)
        out[g::4] = data[pos : pos + size]
        pos += size
    return bytes(out)


def decode_chunk(scheme: int, payload: bytes, size: int, where: str) -> bytes:
    if scheme == 0:
        data = payload
    elif scheme == 1:
        data = lz4_frame_decompress(payload)
    elif scheme == 2:
        data = bg4_regroup(lz4_frame_decompress(payload))
    else:
        raise XetFormatError(f"{where}: unknown chunk compression scheme {scheme}")
    if len(data) != size:
        raise XetFormatError(f"{where}: chunk decodes to {len(data)} bytes, header says {size}")
    return data


def chunk_table(xorb: bytes, where: str) -> list[tuple[int, int, int, int]]:
    """``(offset of payload, compressed size, scheme, size)`` of each chunk of a xorb."""
    chunks: list[tuple[int, int, int, int]] = []
    off = 0
    while off + _CHUNK_HEADER <= len(xorb):
        version, scheme = xorb[off], xorb[off + 4]
        if version != 0 or scheme > 2:
            break  # the xorb's footer (its chunk hashes and boundaries) follows the chunks
        compressed = int.from_bytes(xorb[off + 1 : off + 4], "little")
        size = int.from_bytes(xorb[off + 5 : off + 8], "little")
        if off + _CHUNK_HEADER + compressed > len(xorb):
            raise XetFormatError(f"{where}: chunk {len(chunks)} runs past the end")
        chunks.append((off + _CHUNK_HEADER, compressed, scheme, size))
        off += _CHUNK_HEADER + compressed
    return chunks


# -- the store ---------------------------------------------------------------------------------


class XetStore:
    """What hf_xet wrote into this server's local CAS: files by sha256, xorb chunk tables."""

    def __init__(self, server_root: Path) -> None:
        self.root = (server_root / CAS_FOLDER).resolve()
        self._lock = threading.Lock()
        self._shards_seen: set[str] = set()
        self._by_sha256: dict[str, XetFile] = {}
        self._known_xorbs: dict[str, int] = {}  # xorb hash -> file size (bytes stored)

    @property
    def cas_url(self) -> str:
        return f"local://{self.root}"

    @property
    def shard_dir(self) -> Path:
        return self.root / "xet" / "xorbs" / "shards"

    @property
    def xorb_dir(self) -> Path:
        return self.root / "xet" / "xorbs" / "xorbs"

    def xorb_path(self, xorb: str) -> Path:
        return self.xorb_dir / f"default.{xorb}"

    def scan(self) -> dict[str, int]:
        """Read the shards not read yet; returns the xorbs that appeared since the last scan
        (hash -> stored bytes): what clients uploaded meanwhile."""
        with self._lock:
            if self.shard_dir.is_dir():
                for path in sorted(self.shard_dir.glob("*.mdb")):
                    if path.name in self._shards_seen:
                        continue
                    try:
                        files = parse_shard(path.read_bytes(), path.name)
                    except (OSError, XetFormatError, struct.error) as e:
                        logger.warning("local hub: skipping Xet shard %s: %s", path.name, e)
                        continue
                    self._shards_seen.add(path.name)
                    for f in files:
                        if f.sha256 is not None:
                            self._by_sha256[f.sha256] = f
            new: dict[str, int] = {}
            if self.xorb_dir.is_dir():
                for path in self.xorb_dir.glob("default.*"):
                    xorb = path.name.removeprefix("default.")
                    if len(xorb) == 64 and xorb not in self._known_xorbs:
                        self._known_xorbs[xorb] = new[xorb] = path.stat().st_size
            return new

    def file(self, sha256: str) -> XetFile | None:
        """The Xet file with this sha256, from the shards (rescanned if not known yet)."""
        with self._lock:
            found = self._by_sha256.get(sha256)
        if found is None:
            self.scan()
            with self._lock:
                found = self._by_sha256.get(sha256)
        return found

    def chunk_sizes(self, xorb: str) -> list[int]:
        """Stored bytes (header + payload) of each chunk of a xorb."""
        data = self.xorb_path(xorb).read_bytes()
        return [c[1] + _CHUNK_HEADER for c in chunk_table(data, f"xorb {xorb}")]

    def reconstruct(self, f: XetFile) -> Iterator[bytes]:
        """The file's bytes, segment by segment, decoded from the xorbs."""
        for seg in f.segments:
            where = f"xorb {seg.xorb}"
            data = self.xorb_path(seg.xorb).read_bytes()
            table = chunk_table(data, where)
            if seg.chunk_end > len(table) or seg.chunk_start >= seg.chunk_end:
                raise XetFormatError(f"{where}: chunks {seg.chunk_start}-{seg.chunk_end} missing")
            out = []
            for off, compressed, scheme, size in table[seg.chunk_start : seg.chunk_end]:
                out.append(decode_chunk(scheme, data[off : off + compressed], size, where))
            piece = b"".join(out)
            if len(piece) != seg.size:
                raise XetFormatError(
                    f"{where}: segment has {len(piece)} bytes, shard says {seg.size}"
                )
            yield piece


def materialize(req: HubHandler, sha256: str, size: int, path: str) -> XetFile | None:
    """Store the blob of an ``lfsFile`` that arrived through Xet; returns its Xet file, or None
    when no shard names this sha256 (the commit then needs an LFS upload of it)."""
    store = req.hub.xet_store
    f = store.file(sha256)
    if f is None or f.size != size:
        return None
    if not req.storage.has_blob(sha256, size):
        try:
            req.storage.put_blob_stream(store.reconstruct(f), sha256, size)
        except (OSError, XetFormatError, struct.error) as e:
            raise HTTPFailure(
                400, f"Xet file {f.xet_hash} for {path!r} cannot be reconstructed: {e}"
            ) from None
    return f


# -- token endpoints ---------------------------------------------------------------------------


def _token_answer(req: HubHandler, kind: str) -> None:
    if req.hub.transfer != "xet":
        raise HTTPFailure(
            404,
            f"Xet storage is off on this server (transfer={req.hub.transfer!r}): upload through "
            "the LFS batch API (HF_HUB_DISABLE_XET=1)",
        )
    exp = int(time.time()) + TOKEN_LIFETIME_S
    # Not checked by hf_xet's local CAS; random per answer like the Hub's short-lived JWTs.
    token = hashlib.sha256(f"{kind}{exp}{id(req)}{time.time_ns()}".encode()).hexdigest()
    url = req.hub.xet_store.cas_url
    req.send_json(
        {"casUrl": url, "accessToken": token, "exp": exp},
        headers={
            "X-Xet-Cas-Url": url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(exp),
        },
    )


def write_token(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """``GET /api/{type}s/{id}/xet-write-token/{rev}[?create_pr=1]``: a writer's CAS access."""
    req.check_write(repo)
    _token_answer(req, "write")


def read_token(req: HubHandler, repo: RepoRef, revision: str) -> None:
    """``GET /api/{type}s/{id}/xet-read-token/{rev}``: a reader's CAS access (gates apply)."""
    req.check_files(repo)
    _token_answer(req, "read")
