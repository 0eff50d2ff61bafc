"""Salesforce record ids: making them, and reading 15- or 18-character ids back.

An id is a three-character key prefix (``003`` Contact, ``00Q`` Lead, ``00D`` org, ...), a pod
and reserved characters, a base-62 sequence, and (in the 18-character form) three checksum
characters that encode the case of the first fifteen, so 18-character ids survive systems that
ignore case.
"""

from __future__ import annotations

import string

__all__ = ["IdFactory", "normalize_id"]

_ID_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _id_suffix(id15: str) -> str:
    """The three checksum characters that make a 15-character id case-insensitive."""
    out = []
    for chunk_start in (0, 5, 10):
        flags = 0
        for bit, ch in enumerate(id15[chunk_start : chunk_start + 5]):
            if "A" <= ch <= "Z":
                flags |= 1 << bit
        out.append(_ID_SUFFIX_ALPHABET[flags])
    return "".join(out)


def normalize_id(value: object) -> str | None:
    """Canonical 18-character form of a 15- or 18-character id, or None if malformed.

    An 18-character id's suffix encodes the case of the first 15 characters, so (as in
    Salesforce) 18-character ids match whatever their case; 15-character ids are case-sensitive.
    """
    if not isinstance(value, str) or not value.isascii() or not value.isalnum():
        return None
    if len(value) == 15:
        return value + _id_suffix(value)
    if len(value) != 18:
        return None
    chars = list(value[:15])
    for chunk, suffix_char in enumerate(value[15:].upper()):
        flags = _ID_SUFFIX_ALPHABET.find(suffix_char)
        if flags < 0:
            return None
        for bit in range(5):
            i = chunk * 5 + bit
            chars[i] = chars[i].upper() if flags & (1 << bit) else chars[i].lower()
    id15 = "".join(chars)
    return id15 + _id_suffix(id15)


class IdFactory:
    """Makes Salesforce-shaped ids: key prefix, pod, reserved digit, sequence, checksum.

    One factory serves the whole org (records, cursors, the org and user ids), so every id it
    hands out is distinct whatever its prefix.
    """

    def __init__(self) -> None:
        self._next = 1

    def make(self, prefix: str) -> str:
        """A new 18-character id starting with ``prefix``."""
        n = self._next
        self._next += 1
        digits = []
        for _ in range(9):
            n, rem = divmod(n, 62)
            digits.append(_BASE62[rem])
        id15 = f"{prefix}Dn0{''.join(reversed(digits))}"
        return id15 + _id_suffix(id15)
