"""Token ids -> readable strings, with the model's ``tokenizer.json`` (the ``tokenizers`` library).

A token is shown as the text it decodes to (``" the"``, not byte-level BPE's ``"Ġthe"``). A piece
that is not whole UTF-8 on its own (one byte of a multi-byte character) is shown as its bytes,
``\\xe4\\xb8``, rather than U+FFFD; control characters are escaped (``\\n``), so every label is one
printable line. Ids the tokenizer does not know (embedding rows padded beyond the vocabulary)
are shown as ``<id N>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from ..errors import CheckpointError


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _escape(text: str) -> str:
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


class TokenDecoder:
    """Readable strings for token ids of one ``tokenizer.json``."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise CheckpointError(
                f"{self.path}: not a tokenizer.json the tokenizers library reads ({exc})"
            ) from None
        self._byte_level = _byte_level_decoder()

    def piece(self, token_id: int) -> str:
        raw = self._tokenizer.id_to_token(int(token_id))
        if raw is None:
            return f"<id {int(token_id)}>"
        text = self._tokenizer.decode([int(token_id)], skip_special_tokens=False)
        if "\ufffd" in text and all(ch in self._byte_level for ch in raw):
            data = bytes(self._byte_level[ch] for ch in raw)
            text = data.decode("utf-8", errors="backslashreplace")
        return _escape(text)

    def pieces(self, token_ids: Iterable[int]) -> list[str]:
        return [self.piece(t) for t in token_ids]
