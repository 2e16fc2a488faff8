"""Holding the applied configuration, and passes that expire meanwhile (I/O, through the agent).

After a restart (the state file) or once the ``peers`` stream was found trimmed past
the agent or reset, the agent keeps the configuration it applied until its table is
past that block again (:func:`held`; when, in ``hold.py``). Passes keep expiring by
the host's own clock meanwhile: :func:`held_target` is the held configuration without
them, and a Redis retry is cut short when one is due (:class:`ExpiryDue`,
:class:`UntilExpiry`), so that the loop removes it on time (docs/design.md §11.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from consumers.agent.desired import EXPIRED, DesiredPeer
from consumers.agent.hold import FREE, HELD, REACHED

if TYPE_CHECKING:
    from consumers.agent.agent import Agent


class ExpiryDue(stop_base):
    """Stops a Redis retry when a pass expires: the loop removes it, then retries."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.agent.expiry_due()


class UntilExpiry(wait_base):
    """A Redis retry's wait, cut short when a pass expires sooner (then :class:`ExpiryDue`
    ends the retry)."""

    def __init__(self, wait: Callable[[RetryCallState], float], agent: Agent) -> None:
        self.wait = wait
        self.agent = agent

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.wait(retry_state)
        deadline = self.agent.next_expiry()
        return wait if deadline is None else max(0.0, min(wait, deadline - time.time()))


def held_target(agent: Agent) -> tuple[dict[str, DesiredPeer], tuple[str, ...], str | None]:
    """The applied configuration without what has expired by now (peers, addresses,
    fail-closed reason); notes when the next of its passes expires."""
    iface, policy, now = agent.iface, agent.cfg.policy, time.time()
    target = {n: p for n, p in iface.applied.items() if not policy.expired(p.expires, now)}
    addresses, fail_closed = iface.addresses, iface.fail_closed
    if policy.expired(agent.own_expires, now):
        target, addresses, fail_closed = {}, (), EXPIRED
    deadlines = [policy.deadline(p.expires) for p in target.values()]
    deadlines.append(policy.deadline(agent.own_expires) if not fail_closed else None)
    agent.held_deadline = min((d for d in deadlines if d is not None), default=None)
    return target, addresses, fail_closed


def on_reset(agent: Agent) -> None:
    """The stream was trimmed past us or reset: hold the applied configuration until
    the rebuilt table reaches its block (the pipeline refills the stream)."""
    if agent.hold.begin(agent.applied_block, agent.follower.block):
        held_target(agent)  # when the held configuration's next pass expires
        agent.log.warning(
            "keeping the configuration applied at block {} until the peers stream "
            "reaches that block again",
            agent.hold.block,
        )


def held(agent: Agent) -> bool:
    """True while the table is behind the applied configuration (hold.py)."""
    follower = agent.follower
    state, why = agent.hold.check(follower.block, follower.last_entries, ready=agent.bootstrapped)
    if state == HELD or (state == FREE and not why):
        return state == HELD
    if state == REACHED:
        agent.recompute = True
        agent.update_model()
        changed = agent.iface.changes_to(agent.model.peers)
        removes = any(
            peer is None or peer.public_key != agent.iface.applied[node].public_key
            for node, peer in changed.items()
            if node in agent.iface.applied
        )
        if removes and not agent.hold.settled(follower.last_entries):
            return True  # maybe not all of that block yet: removals wait for quiet
        agent.hold.end()
    agent.log.info("{}", why)
    agent.recompute = True
    agent.status.mark()
    return False
