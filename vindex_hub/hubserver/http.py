"""HTTP framing of the local Hub server: request bodies in; JSON, bytes and ranged file bodies out.

Standard library only: ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, every response with a
``Content-Length`` (no chunked bodies); request bodies may be chunked. Error answers use the
Hub's format: a JSON body ``{"error": message, ...}`` plus the ``X-Error-Message`` header and,
where the error is typed, ``X-Error-Code`` (the client picks its exception by that header).

The transport side of fault injection lives here too, because it acts on the bytes: an injected
error answer, a connection dropped part-way through a body, a slow response body. Which fault a
request gets is the subclass's decision (:meth:`FramedHandler.respond` sets ``self.fault``).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Fault

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # bodies are read and sent in chunks of this size
_TOKEN_IN_URL_RE = re.compile(r"([?&]token=)[^&\s\"]+")


class HTTPFailure(Exception):
    """An error answer: status, message, the Hub's ``X-Error-Code``, extra headers and body keys."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.headers = headers or {}
        self.body = body or {}


class Dropped(Exception):
    """A drop fault closed the connection: nothing more is sent."""


class Unsatisfiable(Exception):
    """A ``Range`` header that cannot be served (416)."""


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive ``(start, end)``; raises if unsatisfiable.

    Multiple ranges are refused (416) rather than ignored: a 200 to a ranged request makes
    ``HfFileSystem`` return wrong bytes silently.
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (m[1] == "" and m[2] == ""):
        raise Unsatisfiable
    if m[1] == "":
        n = int(m[2])
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if start >= size or end < start:
        raise Unsatisfiable
    return start, min(end, size - 1)


def bool_param(values: list[str] | None) -> bool:
    """A query or form flag: its last value is ``1``/``true``/``yes``."""
    return bool(values and values[-1].lower() in ("1", "true", "yes"))


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    for chunk in chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


class TrackingHTTPServer(ThreadingHTTPServer):
    """A threading server that knows its open connections, so ``close_connections`` can end them."""

    daemon_threads = True
    block_on_close = False  # stopping closes live connections itself instead of waiting on them

    def __init__(self, address: tuple[str, int], handler: type[FramedHandler]) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class FramedHandler(BaseHTTPRequestHandler):
    """One connection's requests: parses the URL, frames bodies, sends answers; ``respond`` serves.

    Per request: ``segments`` (the URL path's ``/``-separated parts, each percent-decoded),
    ``decoded_path``, ``query`` (``parse_qs``), ``fault`` (set by ``respond``) and
    ``body_counters`` (callables given each count of request body bytes read).
    """

    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections and stalled uploads give up after this
    server: TrackingHTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        # The request line of an LFS upload carries its upload token: keep it out of the log.
        logger.debug(
            "%s %s", self.address_string(), _TOKEN_IN_URL_RE.sub(r"\1<redacted>", format % args)
        )

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def respond(self) -> None:
        """Serve the parsed request (the subclass's routing); raise :class:`HTTPFailure` to refuse."""
        raise NotImplementedError

    def _serve(self) -> None:
        split = urlsplit(self.path)
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        self.decoded_path = unquote(split.path)
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.fault: Fault | None = None
        self.body_counters: list[Callable[[int], None]] = []
        self._body_left: int | None = 0
        self._headers_sent = False
        try:
            self._body_left = self._parse_body_length()
            self.respond()
        except HTTPFailure as e:
            self.send_failure(e)
        except Dropped:
            pass
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception:
            logger.exception("local hub: %s %s failed", self.command, self.decoded_path)
            self.send_failure(HTTPFailure(500, "internal error in the local Hub server"))
        if self._body_left != 0:
            self.close_connection = True  # an unread request body would corrupt the next request

    # -- faults --

    def apply_fault_at_start(self) -> None:
        """The parts of ``self.fault`` that act before serving: an error answer, a dropped HEAD."""
        fault = self.fault
        if fault is None:
            return
        if fault.kind == "error":
            self.drain_body()
            raise HTTPFailure(
                fault.status,
                fault.message or f"injected fault #{fault.id}",
                None,
                fault.answer_headers(),
            )
        if fault.kind == "drop" and self.command == "HEAD":
            self.abort()
            raise Dropped

    def _drop_point(self, side: str) -> int | None:
        """Bytes of the request or response body after which a drop fault closes the connection."""
        fault = self.fault
        if fault is not None and fault.kind == "drop" and fault.side in ("auto", side):
            return fault.after_bytes
        return None

    def abort(self) -> None:
        """Drop the connection now, like a network failure."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- request bodies --

    def _parse_body_length(self) -> int | None:
        """Bytes of request body still to read; ``None`` for a chunked body."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HTTPFailure(400, "invalid Content-Length") from None

    def unread_body_length(self) -> int | None:
        """Bytes of request body not read yet (``None``: chunked, unknown until read)."""
        return self._body_left

    def iter_body(self) -> Iterator[bytes]:
        """The request body in chunks (Content-Length or chunked), honouring a drop fault."""
        limit = self._drop_point("request")
        received = 0
        for chunk in self._raw_body_chunks():
            if limit is not None and received + len(chunk) >= limit:
                self._count_received(limit - received)
                self.abort()
                raise Dropped
            received += len(chunk)
            self._count_received(len(chunk))
            yield chunk
        if limit is not None:  # the whole body arrived before the drop point: drop before answering
            self.abort()
            raise Dropped

    def _count_received(self, n: int) -> None:
        if n:
            for count in self.body_counters:
                count(n)

    def _raw_body_chunks(self) -> Iterator[bytes]:
        if self._body_left is None:
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537).strip():
                        pass  # trailers
                    self._body_left = 0
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()  # CRLF after the chunk
        else:
            yield from self._read_exactly(self._body_left, track_left=True)

    def _read_exactly(self, n: int, track_left: bool = False) -> Iterator[bytes]:
        while n > 0:
            data = self.rfile.read(min(CHUNK, n))
            if not data:
                raise ConnectionAbortedError("client closed the connection mid-body")
            n -= len(data)
            if track_left:
                self._body_left = n
            yield data

    def read_body(self) -> bytes:
        return b"".join(self.iter_body())

    def drain_body(self) -> None:
        """Read and discard the request body (uncounted, no faults), so an error answer reaches the client."""
        for _ in self._raw_body_chunks():
            pass

    def read_json(self) -> Any:
        try:
            return json.loads(self.read_body() or b"{}")
        except ValueError:
            raise HTTPFailure(400, "request body is not valid JSON") from None

    # -- answers --

    def base_url(self) -> str:
        """``http://host:port`` as the client addressed this server."""
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def start(self, status: int, headers: dict[str, str], length: int) -> None:
        self._headers_sent = True
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        if self.close_connection or self._body_left != 0:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def write_body(
        self, chunks: Iterable[bytes], on_sent: Callable[[int], None] | None = None
    ) -> None:
        """Send a response body, applying a drop or slow fault; ``on_sent`` gets each count sent."""
        fault = self.fault
        slow = fault if fault is not None and fault.kind == "slow" else None
        if slow is not None:
            chunks = _rechunk(chunks, slow.chunk_size)
        limit = self._drop_point("response")
        sent = 0
        for chunk in chunks:
            if slow is not None:
                time.sleep(slow.delay_s)
            if limit is not None and sent + len(chunk) >= limit:
                self._send_counted(chunk[: limit - sent], on_sent)
                self.abort()
                raise Dropped
            self._send_counted(chunk, on_sent)
            sent += len(chunk)

    def _send_counted(self, data: bytes, on_sent: Callable[[int], None] | None) -> None:
        # Bytes are counted before they go out and uncounted if they did not, so once a client
        # has read a body the counters already hold it (counting after the send would race
        # with a client that looks at the stats as soon as it has read the body); socket.send,
        # not sendall, so a connection that breaks mid-chunk keeps the count of what left.
        view = memoryview(data)
        while view:
            if on_sent is not None:
                on_sent(len(view))
            try:
                n = self.connection.send(view)
            except OSError:
                if on_sent is not None:
                    on_sent(-len(view))
                raise
            if on_sent is not None and n < len(view):
                on_sent(n - len(view))  # the rest is counted again by the next round
            view = view[n:]

    def send_bytes(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.start(status, headers or {}, len(body))
        if self.command != "HEAD":
            self.write_body([body])

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(
            status,
            json.dumps(obj).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def send_file(
        self,
        name: str,
        size: int,
        headers: dict[str, str],
        read: Callable[[int, int], Iterable[bytes]],
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        """Answer with a file: whole (200) or the one range of a ``Range`` header (206, else 416).

        ``read(start, length)`` gives the body's chunks; a HEAD gets the headers only.
        ``on_sent`` gets each count of body bytes written to the socket.
        """
        start, end, status = 0, size - 1, 200
        range_header = self.headers.get("Range")
        if range_header is not None:
            try:
                start, end = parse_range(range_header, size)
            except Unsatisfiable:
                raise HTTPFailure(
                    416,
                    f"Range {range_header!r} not satisfiable for {name!r} ({size} bytes)",
                    None,
                    {"Content-Range": f"bytes */{size}", **headers},
                ) from None
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        length = end - start + 1
        self.start(status, headers, length)
        if self.command != "HEAD":
            self.write_body(read(start, length), on_sent)

    def send_failure(self, failure: HTTPFailure) -> None:
        """The error answer in the Hub's format (or, once a body has started, a dropped connection)."""
        message = str(failure)
        if (
            self._headers_sent
        ):  # failed mid-body: the client must see a broken response, not a second one
            logger.warning(
                "local hub: %s %s failed mid-body: %s", self.command, self.decoded_path, message
            )
            self.abort()
            return
        # Header values must be latin-1: escape anything else (a non-ASCII path in the message).
        header_message = message.replace("\n", " ").encode("ascii", "backslashreplace").decode()
        h = {"Content-Type": "application/json", "X-Error-Message": header_message}
        if failure.error_code:
            h["X-Error-Code"] = failure.error_code
        h.update(failure.headers)
        try:
            self.send_bytes(
                failure.status, json.dumps({"error": message, **failure.body}).encode(), h
            )
        except (Dropped, OSError):
            self.close_connection = True
