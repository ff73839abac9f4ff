"""Layout of the hint store: writes a fallback holds for a primary that was down.

A hint key is `len(owner) (1 byte) | owner | stored key`, so that all hints for one owner form one
contiguous range (delivery scans it in order) and the hint for a given key and owner is a point lookup.
The value is the encoded object. Hints live in their own storage area, apart from the node's data.
"""

from __future__ import annotations

OWNER_BYTES_MAX = 255


class HintKeyError(ValueError):
    """A hint key does not have the layout this module writes."""


def owner_prefix(owner: str) -> bytes:
    raw = owner.encode()
    assert 0 < len(raw) <= OWNER_BYTES_MAX, owner
    return bytes([len(raw)]) + raw


def hint_key(owner: str, storage_key: bytes) -> bytes:
    return owner_prefix(owner) + storage_key


def parse(raw: bytes) -> tuple[str, bytes]:
    if not raw:
        raise HintKeyError("empty hint key")
    length = raw[0]
    if len(raw) < 1 + length:
        raise HintKeyError("hint key shorter than its owner")
    try:
        owner = raw[1 : 1 + length].decode()
    except UnicodeDecodeError:
        raise HintKeyError("hint owner is not UTF-8") from None
    return owner, raw[1 + length :]
