"""``audit history`` of time-limited passes (ERC-5643): renewals, cancellations, expiries.

Pure: a log built by hand, folded by :func:`consumers.audit.history.timeline`.
"""

from __future__ import annotations

from factories import wg_key

from consumers.audit.entries import Decoded, utc
from consumers.audit.history import NodeSubject, OwnerSubject, change_of, timeline
from shared.events import (
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessTransferred,
    PublicKeyUpdated,
    Retracted,
    SubscriptionUpdate,
)

ALICE = "0x" + "a" * 40
BOB = "0x" + "b" * 40
T0 = 1_800_000_000


def log(*steps: tuple[int, ChainEvent]) -> list[Decoded]:
    """(block timestamp, event) -> entries ``<n>-0`` in blocks 1, 2, ..."""
    return [
        (
            f"{n}-0",
            LogEntry(
                chain_id=1, contract="0xc", block_number=n, block_hash=f"0x{n:x}",
                tx_hash=f"0xt{n}", log_index=0, block_timestamp=ts, event=event,
            ),
        )
        for n, (ts, event) in enumerate(steps, 1)
    ]  # fmt: skip


def test_change_of() -> None:
    assert change_of(None, 5) == "subscribed"
    assert change_of(5, 9) == "renewed"
    assert change_of(0, 9) == "renewed"
    assert change_of(9, 5) == "shortened"
    assert change_of(9, 9) == "unchanged"
    assert change_of(9, 0) == "cancelled"
    assert change_of(None, 0) == "cancelled"


def test_node_history_shows_subscription_renewal_expiry_and_cancellation() -> None:
    events = log(
        (T0, NodeAccessGranted(1, "node-a", ALICE, wg_key(1))),
        (T0, SubscriptionUpdate(1, T0 + 100)),
        (T0 + 50, SubscriptionUpdate(1, T0 + 200)),  # renewed before it expired
        (T0 + 500, PublicKeyUpdated(ALICE, wg_key(2))),  # the log's clock passes T0 + 200
        (T0 + 600, SubscriptionUpdate(1, T0 + 700)),  # renewed after it expired
        (T0 + 650, SubscriptionUpdate(1, 0)),  # cancelled
        (T0 + 9_000, PublicKeyUpdated(ALICE, wg_key(3))),  # a cancellation is no Expired row
    )
    rows = timeline(events, NodeSubject("node-a"))

    got = [(r.entry_id, r.event, r.fields.get("change"), r.state.get("expires")) for r in rows]
    assert got == [
        ("1-0", "NodeAccessGranted", None, None),
        ("2-0", "SubscriptionUpdate", "subscribed", utc(T0 + 100)),
        ("3-0", "SubscriptionUpdate", "renewed", utc(T0 + 200)),
        ("4-0/expired/1", "Expired", None, utc(T0 + 200)),
        ("4-0", "PublicKeyUpdated", None, utc(T0 + 200)),
        ("5-0", "SubscriptionUpdate", "renewed", utc(T0 + 700)),
        ("6-0", "SubscriptionUpdate", "cancelled", "cancelled"),
        ("7-0", "PublicKeyUpdated", None, "cancelled"),
    ]
    expired = rows[3]
    assert expired.time == utc(T0 + 200)
    assert expired.fields == {"token_id": 1, "expiration": T0 + 200}
    assert rows[1].fields == {
        "token_id": 1, "expiration": T0 + 100, "change": "subscribed", "expires": utc(T0 + 100),
    }  # fmt: skip


def test_a_token_never_named_by_a_subscription_update_shows_no_expiry() -> None:
    events = log(
        (T0, NodeAccessGranted(1, "node-a", ALICE, wg_key(1))),
        (T0 + 10**9, PublicKeyUpdated(ALICE, wg_key(2))),
    )
    rows = timeline(events, NodeSubject("node-a"))
    assert [r.event for r in rows] == ["NodeAccessGranted", "PublicKeyUpdated"]
    assert all("expires" not in r.state for r in rows)


def test_hostile_expirations_never_break_the_history() -> None:
    events = log(
        (T0, NodeAccessGranted(1, "node-a", ALICE, wg_key(1))),
        (T0, SubscriptionUpdate(1, 2**64 - 1)),
        (T0, SubscriptionUpdate(1, 1)),  # long past: expired at once
        (T0 + 1, SubscriptionUpdate(7, 5)),  # a token nobody holds
        (T0 + 2, PublicKeyUpdated(ALICE, wg_key(2))),
    )
    rows = timeline(events, NodeSubject("node-a"))
    assert [(r.event, r.fields.get("change")) for r in rows] == [
        ("NodeAccessGranted", None),
        ("SubscriptionUpdate", "subscribed"),
        ("SubscriptionUpdate", "shortened"),
        ("Expired", None),
        ("PublicKeyUpdated", None),
    ]
    assert rows[1].state["expires"] == str(2**64 - 1)  # beyond datetime: the number


def test_a_retracted_renewal_is_not_applied() -> None:
    events = log(
        (T0, NodeAccessGranted(1, "node-a", ALICE, wg_key(1))),
        (T0, SubscriptionUpdate(1, T0 + 100)),
        (T0 + 10, SubscriptionUpdate(1, T0 + 10_000)),
    )
    events.append(("9-0", Retracted(entry_id="3-0", block_number=3, block_hash="0x3")))
    events += log(
        (T0, PublicKeyUpdated(ALICE, wg_key(5))),
        (T0, PublicKeyUpdated(ALICE, wg_key(6))),
        (T0, PublicKeyUpdated(ALICE, wg_key(7))),
        (T0 + 200, PublicKeyUpdated(ALICE, wg_key(8))),
    )[3:]
    rows = timeline(events, NodeSubject("node-a"))
    assert [(r.entry_id, r.event, r.retracted) for r in rows] == [
        ("1-0", "NodeAccessGranted", False),
        ("2-0", "SubscriptionUpdate", False),
        ("3-0", "SubscriptionUpdate", True),
        ("9-0", "Retracted", False),
        ("4-0/expired/1", "Expired", False),
        ("4-0", "PublicKeyUpdated", False),
    ]


def test_owner_history_follows_the_expiration_through_a_transfer() -> None:
    events = log(
        (T0, NodeAccessGranted(1, "node-a", ALICE, wg_key(1))),
        (T0, SubscriptionUpdate(1, T0 + 100)),
        (T0 + 5, NodeAccessTransferred(1, ALICE, BOB)),
        (T0 + 6, SubscriptionUpdate(1, T0 + 900)),
    )
    bob = timeline(events, OwnerSubject(BOB))
    assert [r.event for r in bob] == ["NodeAccessTransferred", "SubscriptionUpdate"]
    assert bob[0].state["tokens"]["1"]["expires"] == utc(T0 + 100)
    assert bob[1].state["tokens"]["1"]["expires"] == utc(T0 + 900)
