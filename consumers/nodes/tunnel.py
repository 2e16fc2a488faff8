"""The local WireGuard interface as ``wg show`` prints it, for ``diagnose --interface`` (I/O).

Four read-only commands: ``wg show IF public-key``, ``latest-handshakes``,
``transfer`` and ``endpoints``; never ``dump``, which prints the private key. Keys
that are not WireGuard keys are dropped; nothing here writes anything.
"""

from __future__ import annotations

import subprocess
from typing import Final

from consumers.nodes.facts import Tunnel, TunnelPeer
from shared.validate import excerpt, is_valid_wg_key

#: Seconds one ``wg show`` may take.
WG_TIMEOUT: Final = 10.0
#: Parts of ``wg show IF ...`` read, in order.
_PARTS: Final = ("public-key", "latest-handshakes", "transfer", "endpoints")


def read_tunnel(interface: str, keys: set[str]) -> Tunnel:
    """``interface`` with its peers: those with one of ``keys`` (another host), or all of them
    when its own key is one of ``keys`` (the node's host). A failure is the ``error``."""
    outputs: dict[str, str] = {}
    for part in _PARTS:
        argv = ["wg", "show", interface, part]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=WG_TIMEOUT, check=False
            )
        except FileNotFoundError:
            return Tunnel(interface=interface, error="wg is not installed")
        except subprocess.TimeoutExpired:
            return Tunnel(interface=interface, error=f"wg show took longer than {WG_TIMEOUT:g}s")
        if proc.returncode != 0:
            why = excerpt(proc.stderr.strip() or f"exit code {proc.returncode}")
            return Tunnel(interface=interface, error=f"wg show {interface} {part}: {why}")
        outputs[part] = proc.stdout
    return parse(interface, outputs, keys)


def parse(interface: str, outputs: dict[str, str], keys: set[str]) -> Tunnel:
    """The :class:`Tunnel` of the four ``wg show`` outputs (see :func:`read_tunnel`)."""
    own = outputs.get("public-key", "").strip()
    public = own if is_valid_wg_key(own) else None
    peers: dict[str, TunnelPeer] = {}

    def peer(key: str) -> TunnelPeer | None:
        if not is_valid_wg_key(key):
            return None
        return peers.setdefault(key, TunnelPeer(public_key=key))

    for cols in _rows(outputs.get("latest-handshakes", "")):
        found = peer(cols[0])
        if found is not None and len(cols) > 1 and cols[1].isdigit():
            found.handshake = int(cols[1])
    for cols in _rows(outputs.get("transfer", "")):
        found = peer(cols[0])
        if found is not None and len(cols) > 2 and cols[1].isdigit() and cols[2].isdigit():
            found.rx, found.tx = int(cols[1]), int(cols[2])
    for cols in _rows(outputs.get("endpoints", "")):
        found = peer(cols[0])
        if found is not None and len(cols) > 1 and cols[1] != "(none)":
            found.endpoint = cols[1]
    listed = sorted(peers.values(), key=lambda p: p.public_key)
    if public not in keys:
        listed = [p for p in listed if p.public_key in keys]
    return Tunnel(interface=interface, public_key=public, peers=listed)


def _rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


__all__ = ["parse", "read_tunnel"]
