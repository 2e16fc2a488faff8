"""Validation of strings that come from the chain: hostile until proven otherwise.

Pure functions, no I/O. A string that fails here never reaches a config file,
a file name, a command line or an unescaped log line.
"""

from __future__ import annotations

import re

#: Characters of a node id, and its length (1..64).
NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: A valid node id whole (:func:`is_valid_node_id` in one match: it runs per stream entry).
_NODE_ID_FULL = re.compile(r"(?!-)(?!\.\.?\Z)[A-Za-z0-9._-]{1,64}")
#: Characters of a WireGuard public key in standard base64 (44 characters, one ``=``).
WG_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
#: The base64 of 32 zero bytes (matches the pattern, is no key).
_ZERO_KEY = "A" * 43 + "="
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
    return _NODE_ID_FULL.fullmatch(node_id) is not None


def is_valid_wg_key(key: str) -> bool:
    """True when ``key`` is a WireGuard public key: 44 chars of standard base64, 32 bytes, not zero."""
    # The pattern admits exactly the canonical base64 of 32 bytes (the last character
    # leaves the two spare bits zero), so no decoding is needed: only all-zero is left.
    return WG_KEY_RE.fullmatch(key) is not None and key != _ZERO_KEY


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be used as a peer key, or None when it can."""
    if key == "":
        return "no-key"
    if not is_valid_wg_key(key):
        return "invalid-key"
    return None


def node_id_problem(node_id: str) -> str | None:
    """Why ``node_id`` is not a valid node id, in words (None when it is one)."""
    if is_valid_node_id(node_id):
        return None
    shown = repr(excerpt(node_id))
    if not node_id:
        return "a node id must not be empty"
    if len(node_id) > 64:
        return f"{shown} is {len(node_id)} characters long; a node id has at most 64"
    if node_id in {".", ".."} or node_id.startswith("-"):
        return f"{shown} is not a node id (no '.', '..' or leading '-')"
    return f"{shown} is not a node id (letters, digits, '.', '_' and '-' only)"


def wg_key_problem(key: str) -> str | None:
    """Why ``key`` is not a WireGuard public key, in words (None when it is one)."""
    if is_valid_wg_key(key):
        return None
    shown = repr(excerpt(key))
    if not key:
        return "a WireGuard public key must not be empty"
    if len(key) != 44 or not WG_KEY_RE.fullmatch(key):
        return (
            f"{shown} is not a WireGuard public key "
            "(44 characters of standard base64 ending in '=', as `wg pubkey` prints)"
        )
    return f"{shown} is the all-zero key, which WireGuard never accepts as a peer"


def printable(text: str) -> str:
    """``text`` on one line: every unprintable character escaped (``\\n``, ``\\x7f``), none cut."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def excerpt(value: str) -> str:
    """A short, escaped, single-line rendering of a possibly hostile string, safe for logs."""
    shown = value[:EXCERPT_CHARS]
    text = shown.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    if len(value) > EXCERPT_CHARS:
        text += f"...(+{len(value) - EXCERPT_CHARS} chars)"
    return text
