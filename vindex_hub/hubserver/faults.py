"""Fault injection for the local Hub server: HTTP errors, dropped connections, slow bodies.

A fault is ``LocalHub.inject_fault(kind, **fields)`` or, over HTTP, ``POST /_local_hub/faults``
with the same fields as a JSON object (answered with the fault, ``id`` included; ``GET`` lists
the active ones, ``DELETE`` clears them)::

    {"kind": "error", "method": "GET", "path": "*/resolve/*/gate_vectors.bin",
     "ranged": true, "times": 2, "status": 503, "retry_after": 1}

Matching: the fault applies to the next ``times`` requests (``null``/``None``: until cleared)
that match all of

- ``method``: ``GET``, ``HEAD``, ``POST``, ``PUT`` or ``DELETE`` (``None``: any);
- ``path``: matched against the URL path with percent-escapes decoded and without the query
  string, e.g. ``/datasets/ns/name/resolve/main/data/layer_00.parquet``: a pattern with ``*``,
  ``?`` or ``[`` is an ``fnmatch`` glob over the whole path, anything else a substring;
- ``ranged``: ``True`` only requests with a ``Range`` header, ``False`` only those without,
  ``None`` (default) both.

When several match, the first injected is used. The requests of each kind, by path::

    HEAD/GET (whole or ranged)  /{datasets/}ns/name/resolve/{rev}/{file}
    repo info, refs, tree       GET /api/{models|datasets}/ns/name[/revision/{rev}], .../refs, .../tree/{rev}[/{dir}]
    preupload, commit           POST /api/{models|datasets}/ns/name/preupload/{rev}, .../commit/{rev}
    LFS batch                   POST /{datasets/}ns/name.git/info/lfs/objects/batch
    LFS upload, verify          PUT /_local_hub/lfs/{models|datasets}/ns/name/{sha256}, POST /_local_hub/lfs-verify/...
    Xet tokens                  GET /api/{models|datasets}/ns/name/xet-write-token/{rev}, .../xet-read-token/{rev}
    CDN leg (after a 302)       GET/HEAD on the CDN port, same path as the resolve URL

A drop or slow fault met by a resolve GET that is redirected (an LFS/Xet file) acts on the CDN
leg's body instead. hf_xet's own reads and writes of the CAS are file-system work: no request.

The admin API (``/_local_hub/stats``, ``faults``, ``reset``, ``gated``) is never faulted.

Kinds:

- ``"error"``: answer ``status`` (400-599, default 500; the Hub's are 500, 502, 503 and 429)
  with the Hub's JSON error body instead of serving; nothing is stored. With ``status`` 429 or
  503, ``retry_after`` (whole seconds) adds a ``Retry-After`` header, which the hub client's
  backoff waits for.
- ``"drop"``: close the connection after ``after_bytes`` bytes (default 0) of a body, like a
  network failure. ``side``: ``"request"`` (the body the client sends: an upload PUT, a commit
  POST; the server then stores nothing), ``"response"`` (the body the server sends; a commit's
  response is dropped after the commit was made) or ``"auto"`` (default: the request body when
  the server reads one, else the response body). A HEAD is dropped before its headers; a body
  shorter than ``after_bytes`` arrives whole on the response side.
  ``message`` replaces the answer's error text (a hostile server: control characters included).
- ``"slow"``: sleep ``delay_s`` before each ``chunk_size``-byte chunk of the response body.
"""

from __future__ import annotations

import fnmatch
import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("error", "drop", "slow")
DROP_SIDES = ("auto", "request", "response")
RETRY_AFTER_STATUSES = (429, 503)  # the statuses whose answers may carry Retry-After


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
    retry_after: int | None = None
    ranged: bool | None = None
    side: str = "auto"
    message: str | None = None
    id: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.times is not None and self.times < 1:
            raise ValueError(f"fault times must be >= 1 or None, got {self.times}")
        if self.after_bytes < 0 or self.delay_s < 0 or self.chunk_size < 1:
            raise ValueError("fault after_bytes and delay_s must be >= 0 and chunk_size >= 1")
        if not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ValueError(
                f"fault status must be an HTTP error status (400-599), got {self.status!r}"
            )
        if self.retry_after is not None:
            if (
                isinstance(self.retry_after, bool)
                or not isinstance(self.retry_after, int)
                or self.retry_after < 0
            ):
                raise ValueError(
                    f"fault retry_after must be whole seconds >= 0, got {self.retry_after!r}"
                )
            if self.kind != "error" or self.status not in RETRY_AFTER_STATUSES:
                raise ValueError(
                    f"fault retry_after needs kind 'error' with status {RETRY_AFTER_STATUSES}"
                )
        if self.ranged not in (None, True, False):
            raise ValueError(f"fault ranged must be true, false or null, got {self.ranged!r}")
        if self.side not in DROP_SIDES or (self.side != "auto" and self.kind != "drop"):
            raise ValueError(
                f"fault side must be one of {DROP_SIDES}, and only a 'drop' fault takes one"
            )
        if self.message is not None and (self.kind != "error" or not isinstance(self.message, str)):
            raise ValueError("fault message must be a string, and only an 'error' fault takes one")
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, path: str, ranged: bool) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.ranged is not None and self.ranged != ranged:
            return False
        if any(c in self.path for c in "*?["):
            return fnmatch.fnmatchcase(path, self.path)
        return self.path in path

    def answer_headers(self) -> dict[str, str]:
        """Headers of an injected error answer."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

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

    def give_back(self, fault: Fault) -> None:
        """Undo one ``take`` of ``fault`` (a body fault met a request that sends no body)."""
        with self._lock:
            if fault.times is not None:
                fault.times += 1
            if not any(f is fault for f in self._faults):
                self._faults.append(fault)
                self._faults.sort(key=lambda f: f.id)  # the first injected still comes first

    def take(self, method: str, path: str, ranged: bool = False) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, ranged):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None
