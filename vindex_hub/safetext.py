"""Text from files and servers made safe to print, and secrets kept out of messages.

``printable`` is the one gate between text we did not write (a sidecar's model name, a card, a
server's error body, a file name in a repo) and a terminal: every control character (C0, DEL,
C1, and the Unicode bidi overrides that reorder what a line shows) is written as its Python
escape (``\\x1b``, ``\\u202e``), so an OSC title-set, a clear-screen or a colour sequence is
shown, never obeyed. It is idempotent: escapes are plain printable characters.

``scrub_secret`` removes a token from a message as a whole token only (never a substring of a
longer word), and a short token (below ``MIN_SCRUB_LEN``) only where it stands as a credential
(``Bearer``, ``token=``, ``Authorization:``), so a token that is also a word (``dataset``,
``local``) neither garbles the message nor shows where it was.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: one line stays one line), DEL, C1 controls, and the
# bidi embeddings/overrides/isolates (U+202A-202E, U+2066-2069), the line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
SECRET = "<token>"
# Below this length a token is too likely a plain word to scrub everywhere (real Hub tokens
# are ``hf_`` + 34 letters); it is still scrubbed wherever it stands as a credential.
MIN_SCRUB_LEN = 8
_CREDENTIAL_PREFIX = r"(?:bearer\s+|token\s*[=:]\s*|authorization\s*[=:]\s*(?:bearer\s+)?)"


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: object, *, multiline: bool = False) -> str:
    """``str(text)`` with every control character escaped; ``multiline`` keeps ``\\n`` as is
    (a multi-line report), otherwise the result is one line."""
    pattern = _CONTROL_KEEP_LINES if multiline else _CONTROL
    return pattern.sub(_escape, str(text))


def scrub_secret(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced by ``<token>`` wherever it stands as a whole token (see
    the module doc); ``text`` unchanged when there is no secret or it does not occur."""
    if not secret or secret not in text:
        return text
    # Whole token: not inside a longer run of word characters (Unicode-aware: a non-ASCII token
    # is bounded the same way).
    whole = rf"(?<![\w\-]){re.escape(secret)}(?![\w\-])"
    if len(secret) >= MIN_SCRUB_LEN:
        return re.sub(whole, SECRET, text)
    return re.sub(rf"({_CREDENTIAL_PREFIX}){whole}", rf"\g<1>{SECRET}", text, flags=re.IGNORECASE)


def header_safe(secret: str) -> bool:
    """Whether ``secret`` can travel in an HTTP header (printable ASCII, no spaces): the client
    would otherwise fail with an encoding error that quotes one of its characters."""
    return secret.isascii() and secret.isprintable() and " " not in secret and bool(secret)
