"""Property: whatever the chain says, rendered configs hold only validated values.

Random logs with hostile strings go through every pure stage — registry fold, ipam fold,
the agent's peer table, desired state and rendering — and every line of every rendered
config must match a strict grammar.
"""

from __future__ import annotations

import base64
import re

from factories import wg_key as key
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.agent.desired import PeerTable, Policy, desired_state
from consumers.agent.render import render_config
from consumers.ipam import allocate
from consumers.registry import fold as registry_fold
from shared.events import (
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PeerUpsert,
    PublicKeyUpdated,
)

HOSTILE = [
    "x\n[Peer]\nPublicKey = " + key(9),
    "AllowedIPs = 0.0.0.0/0",
    key(1) + "\nAllowedIPs = 0.0.0.0/0",
    "../../etc/passwd",
    "/etc/shadow",
    "node\x00a",
    "-h",
    "--private-key=/etc/shadow",
    "n\u043ede-a",  # a look-alike: Cyrillic o
    "A" * 100_000,
    base64.b64encode(bytes(32)).decode(),  # the all-zero key
    "\udcff",
]
OWNERS = ["0x" + c * 40 for c in "abc"]
NODES = st.sampled_from(["n1", "n2", "n3", *HOSTILE[:10]])
KEYS = st.sampled_from([key(1), key(2), key(3), key(4), "", *HOSTILE])
OWNER = st.sampled_from(OWNERS)
TOKEN = st.integers(1, 5)
EVENTS = st.lists(
    st.one_of(
        st.builds(NodeAccessGranted, TOKEN, NODES, OWNER, KEYS),
        st.builds(NodeAccessRevoked, TOKEN, NODES),
        st.builds(NodeAccessTransferred, TOKEN, OWNER, OWNER),
        st.builds(PublicKeyUpdated, OWNER, KEYS),
    ),
    max_size=30,
)

LINE = re.compile(
    r"(#.*"
    r"|\[Interface\]|\[Peer\]"
    r"|Address = [0-9a-f.:/, ]+"
    r"|ListenPort = \d+"
    r"|PostUp = wg set %i private-key \S+"
    r"|PublicKey = [A-Za-z0-9+/]{43}="
    r"|AllowedIPs = [0-9a-f.:/, ]+"
    r"|Endpoint = [A-Za-z0-9.:\[\]-]+"
    r"|PersistentKeepalive = \d+"
    r"|)"
)


def _log(events: list[object]) -> list[tuple[str, LogEntry]]:
    return [
        (
            f"{i + 1}-0",
            LogEntry(
                chain_id=1, contract="0x" + "c" * 40, block_number=i + 1, block_hash="0x",
                tx_hash="0x", log_index=0, block_timestamp=0, event=e,  # type: ignore[arg-type]
            ),
        )
        for i, e in enumerate(events)
    ]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(EVENTS)
def test_hostile_strings_never_reach_a_rendered_config(events: list[object]) -> None:
    _, changes = registry_fold.fold(_log(events))
    ipam = allocate.IpamFold("10.88.0.0/24", None, 10)
    _, peers = allocate.fold(((f"{i}-0", c) for i, c in enumerate(changes, 1)), ipam=ipam)
    table = PeerTable()
    for entry in peers:
        table.apply(entry)
    upserts = {p.node_id: p for p in peers if isinstance(p, PeerUpsert)}
    policy = Policy(pool="10.88.0.0/24", endpoint_template="{node}.vpn.example:51820")
    for node, upsert in upserts.items():
        desired = desired_state(table.records, node, upsert.public_key, {}, policy)
        text = render_config(desired, listen_port=51820, private_key_file="/etc/wg/k")
        for line in text.splitlines():
            assert LINE.fullmatch(line), f"unexpected config line {line!r}"
        for bad in HOSTILE:
            assert bad not in text
