"""What the dashboard draws of the network's topology: live members, hubs, tunnels. Pure.

The agents decide who peers with whom (``consumers.agent.desired``); this module
only counts it for the picture: in a mesh every live member has a tunnel to every
other, in a hub topology hubs have one to everyone and spokes only to the hubs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

#: Most live members the dashboard draws; beyond it shows a summary (no hairball).
DRAW_LIMIT: Final = 200


def live_hubs(topology: str, hubs: Sequence[str], live: Sequence[str]) -> list[str]:
    """The configured hubs that are live members, in order of preference."""
    if topology != "hub":
        return []
    members = set(live)
    return [h for h in hubs if h in members]


def tunnels(topology: str, hubs: Sequence[str], live: Sequence[str]) -> int:
    """How many WireGuard tunnels (pairs of peers) the topology makes among ``live``."""
    n = len(set(live))
    if topology != "hub":
        return n * (n - 1) // 2
    h = len(live_hubs(topology, hubs, live))
    return h * (h - 1) // 2 + h * (n - h)


__all__ = ["DRAW_LIMIT", "live_hubs", "tunnels"]
