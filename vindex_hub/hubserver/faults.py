"""Fault injection for the local Hub server: HTTP errors, dropped connections, slow bodies.

A fault matches a request by method and path and applies to the next ``times`` matching
requests (``times=None``: until cleared). Kinds:

- ``"error"``: answer ``status`` (default 500) with a JSON error body instead of serving; with
  ``retry_after_s``, a ``Retry-After`` header of that many seconds (for 429 / 503).
- ``"drop"``: close the connection after ``after_bytes`` bytes of the body: of the request body
  when the request has one (an upload PUT, a commit POST: nothing is stored), else of the
  response body (the client sees a short read).
- ``"slow"``: sleep ``delay_s`` before each ``chunk_size``-byte chunk of the response body.

``path`` is matched against the URL path with percent-escapes decoded and without the query
string, e.g. ``/datasets/ns/name/resolve/main/data/layer_00.parquet``: a pattern with ``*``,
``?`` or ``[`` is an ``fnmatch`` glob over the whole path, anything else a substring. Upload
bodies go to ``/_local_hub/lfs/<type>s/<ns>/<name>/<sha256>`` (PUT).
"""

from __future__ import annotations

import fnmatch
import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("error", "drop", "slow")


@dataclass
class Fault:
    kind: str
    method: str | None = None
    path: str = "*"
    times: int | None = 1
    status: int = 500
    after_bytes: int = 0
    delay_s: float = 0.0
    chunk_size: int = 64 * 1024
    retry_after_s: int | None = None
    id: int = field(default=0)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"fault times must be >= 1 or None, got {self.times}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"fault retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.after_bytes < 0 or self.delay_s < 0 or self.chunk_size < 1:
            raise ValueError("fault after_bytes and delay_s must be >= 0 and chunk_size >= 1")
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if any(c in self.path for c in "*?["):
            return fnmatch.fnmatchcase(path, self.path)
        return self.path in path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultSet:
    """Thread-safe list of active faults; ``take`` consumes one use of the first match."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = next(self._ids)
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None
