"""Starting an agent (I/O): what needs no Redis, then catching up with the stream.

:func:`prepare` loads the key, makes sure the interface exists and reads the state file
(restoring the interface from it when it lost its peers: the applied configuration is
held until the stream is past it, ``hold.py``). :func:`bootstrap` catches up with the
``peers`` stream from the latest snapshot; on a first start onto a fresh wireguard-go
interface it fills the interface batch by batch while it reads (the docstring of
:func:`bootstrap`). The agent's loop (``loop.py``) calls both through
:class:`~consumers.agent.agent.Agent`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from consumers.agent.follow import CATCH_UP_SIZE
from consumers.agent.keys import public_key_from_file
from shared.errors import WireGuardError

if TYPE_CHECKING:
    from consumers.agent.agent import Agent

#: Entries of a fill's first catch-up read (see :func:`bootstrap`); each next read is
#: :data:`FILL_GROWTH` times larger, up to ``CATCH_UP_SIZE``.
FIRST_FILL_SIZE: Final = 200
FILL_GROWTH: Final = 4


def prepare(agent: Agent) -> None:
    """Everything that needs no Redis: the key, the interface, the state file (and the
    interface restored from it, when it lost its peers)."""
    if agent.prepared:
        return
    agent.own_public_key = public_key_from_file(agent.cfg.private_key_file)
    agent.check_key_file()
    agent.log.info("own public key {}", agent.own_public_key)
    policy = agent.cfg.policy
    agent.log.info("topology {} {}", policy.topology, ",".join(policy.hubs))
    for stale in agent.files.remove_stale_temp_files():
        agent.log.info("removed the stale temp file {}", stale)
    if agent.wg is None:
        agent.log.warning("file-only mode: writing {} only, no wg/ip", agent.cfg.config_path)
    else:
        agent.log.info("interface ready ({})", agent.wg.ensure(agent.cfg.interface))
    agent.iface.own_public_key = agent.own_public_key
    state = agent.files.load()
    if state is not None:
        agent.iface.applied = dict(state.peers)
        agent.iface.addresses, agent.iface.fail_closed = state.addresses, state.fail_closed
        agent.own_expires = state.expires
        agent.applied_position, agent.applied_block = state.position, state.block
        agent.hold.block = state.block
        agent.applied_known = True
        agent.log.info(
            "state file: {} peer(s) applied up to {} (block {}); held until the peers "
            "stream reaches that block",
            len(state.peers), state.position, state.block,
        )  # fmt: skip
        agent.files.config_due.mark()
        agent.repair_held()
    agent.prepared = True


def bootstrap(agent: Agent) -> None:
    """Catch up before the first reconcile: the latest snapshot, then the stream after it.

    A first start (no state file) on a fresh wireguard-go interface (no peers) fills
    it while catching up: each batch's new peers are sent on the control socket and
    wireguard-go applies them while the next batch is read and folded (the answer is
    read before the next request; a failure rolls that batch back, and the reconcile
    after the bootstrap reads the interface whole). Every batch is a prefix of the
    stream, applied as an agent following it live would have. The addresses (the
    link going up) come once caught up, and so does ``applied_position``. The first
    batch of a fill is small, so that wireguard-go starts at once; each next one is
    larger, as wireguard-go takes several times longer per peer than the agent does.
    """
    follower = agent.follower
    follower.load_snapshot(newer_than=follower.position)
    agent.announcements.watch()
    fill = _can_fill(agent)
    count = FIRST_FILL_SIZE if fill else CATCH_UP_SIZE
    while True:
        entries, _ = agent.retry(follower.read, None, count)
        follower.fold(entries)
        if fill:
            fill = _fill(agent)
        if follower.caught_up:
            break
        count = min(CATCH_UP_SIZE, count * FILL_GROWTH)
    follower.last_entries = time.monotonic()
    if not fill:  # (a fill read them batch by batch)
        agent.read_announcements(set(follower.table.records))
    agent.settle_fill()
    agent.bootstrapped = True


def _can_fill(agent: Agent) -> bool:
    if agent.wg is None or agent.applied_known or not hasattr(agent.wg, "start_apply"):
        return False
    try:
        return agent.iface.take_empty()
    except WireGuardError as exc:
        agent.error(str(exc))
        return False


def _fill(agent: Agent) -> bool:
    """Send the peers the last batch changed (see :func:`bootstrap`); False: stop
    filling (it failed)."""
    if agent.follower.replaced:  # the first batch: the announcements of its nodes
        agent.read_announcements(set(agent.follower.table.records))
    return agent.apply_changes(full=False, fill=True)
