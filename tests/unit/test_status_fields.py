"""A host's status hash as ``wgchain status`` reads it: what the agent writes, old and new."""

from __future__ import annotations

import pytest

from consumers.status.snapshot import _host


@pytest.mark.parametrize(
    ("written", "held", "reason"),
    [
        (None, None, ""),  # an agent that does not say
        ("", False, ""),  # the agent holds nothing
        ("the peers stream is at block 3, the applied configuration at block 5", True,
         "the peers stream is at block 3, the applied configuration at block 5"),
        ("1", True, ""),  # older agents
        ("true", True, ""),
        ("0", False, ""),
    ],
)  # fmt: skip
def test_held_is_the_agents_reason(written: str | None, held: bool | None, reason: str) -> None:
    fields = {"updated_at": "1700000000", "public_key": "k"}
    if written is not None:
        fields["held"] = written
    host = _host("node-a", fields, 0, 1000, "0-0")
    assert (host.held, host.held_reason, host.public_key) == (held, reason, "k")
