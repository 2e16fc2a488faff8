"""Small builders shared by the tests: valid WireGuard keys and fresh network keys.

Only values a test would otherwise spell out by hand live here; fixtures that start
services (Redis, anvil, wireguard-go) stay in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

from shared.keys import Keys

__all__ = ["CHAIN_ID", "network_keys", "wg_key"]

CHAIN_ID = 31337


def wg_key(seed: int | str) -> str:
    """A valid WireGuard public key (base64 of 32 bytes), distinct per ``seed``.

    Small integers (0..255) give the easy-to-read key of 32 equal bytes; anything else
    (larger numbers, node names) is hashed, so every seed has its own key.
    """
    if isinstance(seed, int) and 0 <= seed < 256:
        raw = bytes([seed]) * 32
    else:
        raw = hashlib.sha256(repr(seed).encode()).digest()
    return base64.b64encode(raw).decode()


def network_keys(chain_id: int = CHAIN_ID) -> Keys:
    """The Redis keys of a fresh network (a random contract address): tests never collide."""
    return Keys(chain_id, "0x" + secrets.token_hex(20))
