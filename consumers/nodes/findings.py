"""What ``wgchain diagnose`` says: findings, carriers, the verdict, and their words. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from consumers.nodes.facts import Facts
from consumers.status.model import HostInfo
from shared.validate import excerpt, is_valid_wg_key

#: Finding severities, in rising order.
OK: Final = "ok"
INFO: Final = "info"
WARNING: Final = "warning"
PROBLEM: Final = "problem"
#: Seconds after which a WireGuard session without a new handshake is dead (REJECT_AFTER_TIME).
HANDSHAKE_FRESH: Final = 180.0
#: Carries: the host applied the node's entry, has not yet, or nobody can tell.
YES: Final = "yes"
NO: Final = "no"
UNKNOWN: Final = "unknown"
#: Finding codes of this module (the others are reasons and health problem codes).
CODES: Final = {
    "live": "a live member",
    "published": "its address is in the peers stream",
    "not-published": "live, but the ipam stage has not published it (or its new key) yet",
    "listener": "the listener is keeping the log up to date",
    "host-absent": "no agent has reported for the node",
    "host-silent": "its agent announced an endpoint but never reported",
    "host-stale": "its agent has not reported for more than 3 reconcile intervals",
    "host-error": "its agent's last apply failed",
    "host-behind": "its agent has not applied the node's own entry (or others) yet",
    "host-held": "its agent holds an older configuration (Redis was reset)",
    "host": "its agent applied everything",
    "carried": "every host that should carry it has applied its entry",
    "partly-carried": "some hosts that should carry it have not applied its entry",
    "not-carried": "no host that should carry it has applied its entry",
    "no-other-hosts": "no other host reported",
    "no-endpoint": "its host announced no endpoint and there is no endpoint template",
    "handshake": "a WireGuard handshake within the last 3 minutes",
    "old-handshake": "no WireGuard handshake within the last 3 minutes",
    "no-handshake": "no WireGuard handshake, ever",
    "no-peer-here": "this host's interface has no peer with the node's key",
    "tunnel-unknown": "nobody reports the tunnel's handshakes",
    "tunnel-unreadable": "wg show failed",
    "ok": "nothing found that keeps the node from connecting",
}
RANK: Final = {OK: 0, INFO: 1, WARNING: 2, PROBLEM: 3}


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One thing ``diagnose`` found, in one line."""

    #: ``membership``, ``pipeline``, ``address``, ``host``, ``peers`` or ``tunnel``.
    area: str
    #: ``ok``, ``info``, ``warning`` or ``problem``.
    severity: str
    code: str
    #: The line shown (chain and host strings in it escaped).
    message: str
    #: The next thing to look at or do ("" when nothing).
    next: str = ""


class Carrier(msgspec.Struct, frozen=True, kw_only=True):
    """Another host, and whether it carries the node as a peer."""

    node: str
    #: ``online``, ``stale`` or ``silent``.
    host_state: str
    #: Whether the topology peers it with the node.
    expected: bool
    #: ``yes`` (it applied the node's newest entry), ``no`` or ``unknown``.
    carries: str
    why: str


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """The answer, in one line, and the next thing to look at."""

    #: The code of the finding that decides it (``ok`` when none is a problem).
    code: str
    message: str
    next: str


class Diagnosis(msgspec.Struct, kw_only=True):
    """What ``wgchain diagnose NODE --json`` prints."""

    node: str
    verdict: Verdict
    findings: list[Finding]
    carriers: list[Carrier]
    facts: Facts


#: How a step reports a finding: ``add(area, severity, code, message, next="")``.
Add = Callable[..., None]


def fresh(handshake: int, now: float) -> bool:
    return bool(handshake) and now - handshake <= HANDSHAKE_FRESH


def lag_text(host: HostInfo) -> str:
    return f"≥{host.lag_entries}" if host.lag_capped else str(host.lag_entries)


def key_text(key: str) -> str:
    """A key as shown: whole when it is a WireGuard key, else an escaped excerpt."""
    if not key:
        return "(none)"
    return key if is_valid_wg_key(key) else repr(excerpt(key))


def byte_text(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


__all__ = [
    "CODES",
    "HANDSHAKE_FRESH",
    "INFO",
    "NO",
    "OK",
    "PROBLEM",
    "RANK",
    "UNKNOWN",
    "WARNING",
    "YES",
    "Add",
    "Carrier",
    "Diagnosis",
    "Finding",
    "Verdict",
    "byte_text",
    "fresh",
    "key_text",
    "lag_text",
]
