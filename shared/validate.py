"""Validation of strings that come from the chain: hostile until proven otherwise.

Pure functions, no I/O. A string that fails here never reaches a config file,
a file name, a command line or an unescaped log line.
"""

from __future__ import annotations

import base64
import binascii
import re

#: Characters of a node id, and its length (1..64).
NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Characters of a WireGuard public key in standard base64 (44 characters, one ``=``).
WG_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
#: An Ethereum address: ``0x`` and 40 hex digits (any case).
ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
#: Longest excerpt of a hostile string that is ever shown (characters).
EXCERPT_CHARS = 48


def is_valid_address(address: str) -> bool:
    """True when ``address`` is ``0x`` followed by exactly 40 hex digits."""
    return bool(ADDRESS_RE.fullmatch(address))


def is_valid_node_id(node_id: str) -> bool:
    """True when ``node_id`` is ``[A-Za-z0-9._-]{1,64}``, not ``.`` or ``..``, and no leading ``-``.

    A leading ``-`` would read as an option wherever the id reaches a command line.
    """
    return (
        bool(NODE_ID_RE.fullmatch(node_id))
        and node_id not in {".", ".."}
        and not node_id.startswith("-")
    )


def is_valid_wg_key(key: str) -> bool:
    """True when ``key`` is a WireGuard public key: 44 chars of standard base64, 32 bytes, not zero."""
    if not WG_KEY_RE.fullmatch(key):
        return False
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and any(raw)


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be used as a peer key, or None when it can."""
    if key == "":
        return "no-key"
    if not is_valid_wg_key(key):
        return "invalid-key"
    return None


def excerpt(value: str) -> str:
    """A short, escaped, single-line rendering of a possibly hostile string, safe for logs."""
    shown = value[:EXCERPT_CHARS]
    text = shown.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    if len(value) > EXCERPT_CHARS:
        text += f"...(+{len(value) - EXCERPT_CHARS} chars)"
    return text
