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

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Final

from consumers.agent.follow import CATCH_UP_SIZE
from consumers.agent.keys import public_key_from_file
from shared.collector import collector_paused
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
    stream, applied as an agent following it live would have. The addresses come
    once caught up, while wireguard-go still applies the last request; the link goes
    up after its answer (:meth:`Interface.give_addresses` says why), and
    ``applied_position`` right after that. Whether the interface is empty is
    found while the first batch is read and folded and its announcements read
    (:class:`_EmptyCheck`; on wireguard-go one ``get=1`` on its control socket, no
    process). The cyclic collector is paused while catching up. The first
    batch of a fill is small, so that wireguard-go starts at once; each next one is
    larger, as wireguard-go takes several times longer per peer than the agent does.
    """
    follower = agent.follower
    check = _EmptyCheck(agent) if _may_fill(agent) else None
    # (the catch-up builds an object or more per entry and makes no cycles: the cyclic
    # collector would only walk them again and again, on the cores wireguard-go fills on)
    with collector_paused():
        fill = _catch_up(agent, check)
    follower.last_entries = time.monotonic()
    if not fill:  # (a fill read them batch by batch)
        agent.read_announcements(set(follower.table.records))
    else:
        _early_addresses(agent)
    agent.settle_fill()
    agent.bootstrapped = True


def _catch_up(agent: Agent, check: _EmptyCheck | None) -> bool:
    """The loop of :func:`bootstrap`; whether the interface is being filled."""
    follower = agent.follower
    try:
        follower.load_snapshot(newer_than=follower.position)
        agent.announcements.watch()
        fill = False
        count = FIRST_FILL_SIZE if check is not None else CATCH_UP_SIZE
        while True:
            entries, _ = agent.retry(follower.read, None, count)
            follower.fold(entries)
            if check is not None:
                # the first batch folded and its announcements read while the check runs
                # (neither touches the interface); then whether to fill
                agent.read_announcements(set(follower.table.records))
                fill, check = check.result(), None
                count = count if fill else CATCH_UP_SIZE
            if fill:
                fill = _fill(agent)
            if follower.caught_up:
                break
            count = min(CATCH_UP_SIZE, count * FILL_GROWTH)
    finally:
        if check is not None:  # (Redis failed before the first read: the next try checks again)
            check.thread.join()
    return fill


def _may_fill(agent: Agent) -> bool:
    """Whether a fill is possible, the interface not looked at yet (:class:`_EmptyCheck`
    looks: it must have no peers)."""
    return agent.wg is not None and not agent.applied_known and hasattr(agent.wg, "start_apply")


class _EmptyCheck:
    """Whether the interface is empty, found in a thread of its own started at once: the
    look at the interface (:meth:`Interface.take_empty`) and loading the private key into
    a fresh interface run while the first reads of the stream do, so that the first
    request of a fill goes out sooner. Nothing else
    touches the interface until :meth:`result` (no request in flight yet, no state file:
    nothing to hold)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.fill = False
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="wgchain-empty-check", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.fill = self.agent.iface.take_empty()
        except BaseException as exc:  # handed to the agent's thread (result())
            self.failure = exc

    def result(self) -> bool:
        """Whether the interface is empty (then a fill may only add); an error of the
        interface is reported (and means no fill)."""
        self.thread.join()
        failure, self.failure = self.failure, None
        if isinstance(failure, WireGuardError):
            self.agent.error(str(failure))
            return False
        if failure is not None:
            raise failure
        return self.fill


def _early_addresses(agent: Agent) -> None:
    """Caught up: give the interface its addresses while wireguard-go still applies the
    fill's last request, the link still down. The reconcile that follows the bootstrap
    reads that answer, brings the link up and declares the position applied; a failure
    here is left to it (it sets them again and reports it)."""
    with contextlib.suppress(WireGuardError):
        agent.iface.give_addresses(agent.model.addresses)


def _fill(agent: Agent) -> bool:
    """Send the peers the last batch changed (see :func:`bootstrap`; the first batch's
    announcements were read before); False: stop filling (it failed)."""
    return agent.apply_changes(full=False, fill=True)
