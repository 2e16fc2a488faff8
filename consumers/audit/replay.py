"""``audit replay``: rebuild the projections from the log and compare them with the live ones.

The log's entries up to the bound are read (``consumers/audit/rawpages.py``: raw
pages, each folded as it arrives while the next is read) and folded in this process
by the same pure folds the stages run (``consumers/audit/inprocess.py``: registry,
then ipam over the registry's outputs), with the stages' rules for dead letters and
retractions; nothing is written to Redis. A log whose retractions do not void the
end of the log (never written by wgchain) is replayed by the real stages in a
scratch namespace instead (``consumers/audit/scratch.py``). Then four projections
are compared by sha256 digest, with a field-level diff when they differ:

* ``registry state`` and ``ipam state`` (the allocations): the state hashes. The live
  side only keeps its *current* state, so they are compared when the live stage's
  position is exactly the replay's (always without ``--until``, see below);
  otherwise the line says SKIP and why.
* ``registry stream`` and ``peers stream``: effective content (``compare.content``)
  of the live streams' prefixes caused by events up to the bound — every registry
  entry names its ``events`` cause and every peers entry its ``registry`` cause, so
  these prefixes are exactly what the stages wrote for the entries the replay
  covers, whatever they did afterwards.

Without ``--until`` the bound is the live registry stage's position, taken from a
snapshot in which the ipam stage has consumed the whole ``registry`` stream; the
audit waits (``--wait``) for the registry stage to reach the end of the log first
and says so when it did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Final, get_args

import msgspec
import redis

from consumers.audit import compare, rawpages
from consumers.audit.entries import Decoded, decode, id_key
from consumers.audit.inprocess import run_fold, run_fold_chunks
from consumers.audit.live import LiveJob, Worker
from consumers.audit.outcome import (
    Outcome,
    Report,
    Snapshot,
    peers_prefix,
    registry_prefix,
    snapshot,
)
from consumers.audit.progress import bar
from consumers.audit.streams import read_stream
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import RegistryFold
from shared.collector import collector_paused
from shared.errors import WgchainError
from shared.events import SCHEMA_VERSION, PeersChange, RegistryChange, encode
from shared.keys import Keys
from shared.redis_log import START

#: Seconds between two snapshots while waiting for the live stages.
POLL: Final = 0.2
#: The ``v`` of a current envelope, and the entry types a stage writes besides retractions.
_VERSION: Final = str(SCHEMA_VERSION).encode()
_PLAIN: Final = frozenset(t.__name__ for t in (*get_args(RegistryChange), *get_args(PeersChange)))


@dataclass(eq=False)
class Replay:
    """One audit replay against the live namespace ``keys``."""

    client: redis.Redis
    keys: Keys
    ipam: IpamFold
    _: KW_ONLY
    wait: float = 30.0
    max_diff: int = 20
    show: bool = False
    #: The registry fold of a parallel attempt that did not match (reused, not redone).
    _registry_done: tuple[int, dict[str, bytes], list[Decoded] | None] | None = None

    # --- the live side ------------------------------------------------------------

    def _settle(self, bound: str | None, notes: list[str]) -> tuple[str, Snapshot]:
        """The bound and a live snapshot in which the stages have reached it (or an error)."""
        deadline = time.monotonic() + self.wait
        while True:
            snap = snapshot(self.client, self.keys)
            ready, why = self._ready(snap, bound)
            if ready and (bound is not None or snap.positions["registry"] == snap.events_last):
                break
            if time.monotonic() >= deadline:
                if not ready:
                    raise WgchainError(f"the live stages have not reached the bound: {why}")
                notes.append(
                    f"the registry stage is at {snap.positions['registry']}, behind the end of "
                    f"the log ({snap.events_last}): entries after it are not compared"
                )
                break
            time.sleep(POLL)
        return (snap.positions["registry"] if bound is None else bound), snap

    def _ready(self, snap: Snapshot, bound: str | None) -> tuple[bool, str]:
        registry_at, ipam_at = snap.positions["registry"], snap.positions["ipam"]
        if bound is None:
            ok = ipam_at == snap.registry_last
            return ok, f"ipam is at {ipam_at}, the registry stream ends at {snap.registry_last}"
        if id_key(registry_at) < id_key(bound):
            return False, f"registry is at {registry_at}, before {bound}"
        prefix = registry_prefix(decode(read_stream(self.client, self.keys.registry)), bound)
        last = prefix[-1][0] if prefix else START
        if id_key(ipam_at) < id_key(last):
            return False, f"ipam is at {ipam_at}, before {last}"
        return True, ""

    # --- the comparison -----------------------------------------------------------

    def run(self, bound: str | None) -> Report:
        """Replay the log up to ``bound`` (None: the live registry position) and compare."""
        notes: list[str] = []
        bound, snap = self._settle(bound, notes)
        # every decoded entry and output stays alive to the end: a full collection would
        # walk all of them again (about 40% of a replay's CPU); the folds make no cycles
        with collector_paused():
            return self._compare(bound, snap, notes)

    def _compare(self, bound: str, snap: Snapshot, notes: list[str]) -> Report:
        """Fold the log up to ``bound`` in process and compare with the live ``snap``.

        Without ``--until``, a second process checks the live side meanwhile
        (``consumers/audit/live.py``); when the registry outputs are the live ones, its
        ipam fold is the replay's and the replay is done.
        """
        worker = None
        if bound == snap.positions["registry"] and bound != START:
            job = LiveJob(
                self.client,
                self.keys,
                self.ipam,
                snap.registry_last,
                snap.peers_last,
                # the worker digests the live ipam state next to its own fold's (forked:
                # nothing is copied)
                states={"ipam": snap.states["ipam"]},
            )
            worker = Worker(job)
        try:
            return self._compare_with(bound, snap, notes, worker)
        finally:
            if worker is not None:
                worker.close()

    def _compare_with(
        self, bound: str, snap: Snapshot, notes: list[str], worker: Worker | None
    ) -> Report:
        if worker is not None:
            report = self._parallel(bound, snap, notes, worker)
            if report is not None:
                return report
        replayed = self._fold(bound)
        if replayed is None:  # retractions wgchain never writes: run the real stages
            return self._run_scratch(bound, snap, notes)
        entries, states, registry_out, peers_out = replayed
        ours = (
            compare.content(registry_out),
            compare.content(peers_out, compare.ordinals(registry_out)),
        )
        report = Report(bound, entries, "", notes)
        streams = self._plain_streams(snap, bound, registry_out, peers_out, ours)
        if streams is None:  # compared entry by entry, decoded
            live = self._streams(self.keys, bound)
            streams = (
                self._stream("registry stream", live[0], ours[0]),
                self._stream("peers stream", live[1], ours[1]),
                live[2],
            )
        report.outcomes = [
            self._state("registry", snap, states["registry"], bound),
            self._state("ipam", snap, states["ipam"], streams[2]),
            streams[0],
            streams[1],
        ]
        return report

    def _parallel(
        self, bound: str, snap: Snapshot, notes: list[str], worker: Worker
    ) -> Report | None:
        """The report when the worker's live side matches the replay's registry fold
        (None: the caller folds ipam here and compares the old way)."""
        events, registry_state, registry_out = self._fold_registry(bound)
        if registry_out is None:
            self._registry_done = (events, registry_state, None)
            return None
        digest = compare.outputs_digest(registry_out)
        # the registry state digests here while the worker folds ipam, the ipam ones in
        # the worker; a live state equal to the replay's is not digested again
        # (docs/design.md §12.3)
        live_registry, replay_registry = compare.state_digests(
            snap.states["registry"], registry_state
        )
        live = worker.result()
        if (
            live is None
            or not live.plain
            or live.ipam_state is None
            or not live.peers_equal
            or live.registry_digest != digest
        ):
            self._registry_done = (events, registry_state, registry_out)
            return None
        digests = {"registry": live_registry, "ipam": live.live_states.get("ipam", "")}
        report = Report(bound, events, "", notes)
        report.outcomes = [
            self._state(
                "registry",
                snap,
                registry_state,
                bound,
                live_digests=digests,
                replay_digest=replay_registry,
            ),
            self._state(
                "ipam",
                snap,
                live.ipam_state,
                live.registry_last,
                live_digests=digests,
                replay_digest=live.ipam_digest,
            ),
            self._same("registry stream", digest, len(registry_out)),
            self._same("peers stream", live.peers_digest, live.peers_count),
        ]
        return report

    def _same(self, name: str, digest: str, size: int) -> Outcome:
        """The outcome of a stream whose live and replayed contents have the same digest."""
        return self._outcome(name, live=digest, replay=digest, size=size, diff=list, unit="entries")

    def _plain_streams(
        self,
        snap: Snapshot,
        bound: str,
        registry_out: list[Decoded],
        peers_out: list[Decoded],
        ours: tuple[list[bytes], list[bytes]],
    ) -> tuple[Outcome, Outcome, str] | None:
        """Both stream outcomes when the live streams hold exactly the replay's entries.

        Without ``--until`` the snapshot's ends of ``registry`` and ``peers`` are what
        the stages wrote up to the bound. When every live entry is a current envelope
        (no retraction, nothing undecodable), its ``data`` is the canonical encoding of
        the entry, so the live content is equal to the replay's when the raw payloads
        equal the replay's entries encoded (the peers' with their live registry cause):
        nothing is decoded. Otherwise (or on any difference: the diff needs the decoded
        entries) None, and the streams are compared entry by entry.
        """
        if bound != snap.positions["registry"]:
            return None
        registry = self._payloads(self.keys.registry, snap.registry_last)
        if registry is None or registry[1] != ours[0]:
            return None
        live_ids = registry[0]
        position = {replay_id: n for n, (replay_id, _) in enumerate(registry_out)}
        mapped: list[bytes] = []
        for _, entry in peers_out:
            n = position.get(getattr(entry, "cause", ""))
            if n is None or not isinstance(entry, msgspec.Struct):
                return None
            mapped.append(encode(msgspec.structs.replace(entry, cause=live_ids[n])))
        peers = self._payloads(self.keys.peers, snap.peers_last)
        if peers is None or peers[1] != mapped:
            return None
        last = live_ids[-1] if live_ids else START
        return (
            self._stream("registry stream", ours[0], ours[0]),
            self._stream("peers stream", ours[1], ours[1]),
            last,
        )

    def _payloads(self, key: str, last: str) -> tuple[list[str], list[bytes]] | None:
        """(ids, ``data`` payloads) of ``key`` up to ``last``; None unless every entry is a
        current envelope of a type that is not a retraction."""
        if last == START:
            return [], []
        ids: list[str] = []
        payloads: list[bytes] = []
        for entry_id, fields in read_stream(self.client, key, high=last):
            kind = fields.get(b"type")
            if fields.get(b"v") != _VERSION or kind is None or kind == b"Retracted":
                return None
            if kind.decode("ascii", "replace") not in _PLAIN:
                return None
            ids.append(entry_id)
            payloads.append(fields[b"data"])
        return ids, payloads

    def _fold(
        self, bound: str
    ) -> tuple[int, dict[str, dict[str, bytes]], list[Decoded], list[Decoded]] | None:
        """Fold the log up to ``bound`` in process: (entries, state hashes, registry outputs,
        peers outputs)."""
        done, self._registry_done = self._registry_done, None
        events, registry_state, registry_out = done or self._fold_registry(bound)
        if registry_out is None:
            return None
        with bar("replaying ipam", len(registry_out), self.show) as progress:
            allocated = run_fold(self.ipam, registry_out, progress.advance)
        if allocated is None:
            return None
        ipam_state, peers_out = allocated
        states = {"registry": registry_state, "ipam": self.ipam.dump(ipam_state)}
        return events, states, registry_out, peers_out

    def _fold_registry(self, bound: str) -> tuple[int, dict[str, bytes], list[Decoded] | None]:
        """Fold the log up to ``bound`` through the registry fold: (entries, state hash,
        outputs); outputs None when a retraction voids an entry before the end."""
        count = 0

        def chunks() -> Iterator[list[Decoded]]:
            nonlocal count
            for page in rawpages.pages(self.client, self.keys.events, bound):
                decoded = rawpages.decode_page(page)
                count += len(decoded)
                yield decoded

        registry = RegistryFold()
        total = int(self.client.xlen(self.keys.events)) if self.show else 0
        with bar("replaying registry", total, self.show) as progress:
            folded = run_fold_chunks(registry, chunks(), progress.advance)
        if folded is None:
            return count, {}, None
        registry_state, registry_out = folded
        return count, registry.dump(registry_state), registry_out

    def _run_scratch(self, bound: str, snap: Snapshot, notes: list[str]) -> Report:
        """The replay through the real stages in a scratch namespace."""
        from consumers.audit.scratch import Scratch  # the stages: imported when needed

        scratch = Scratch(self.client, self.keys, self.show)
        try:
            copied = scratch.replay(bound, self.ipam)
            replay = snapshot(self.client, scratch.keys)
            ours = self._streams(scratch.keys, bound)
        finally:
            scratch.cleanup()
        live = self._streams(self.keys, bound)
        report = Report(bound, copied, scratch.keys.prefix, notes)
        report.outcomes = [
            self._state("registry", snap, replay.states["registry"], bound),
            self._state("ipam", snap, replay.states["ipam"], live[2]),
            self._stream("registry stream", live[0], ours[0]),
            self._stream("peers stream", live[1], ours[1]),
        ]
        return report

    def _streams(self, keys: Keys, bound: str) -> tuple[list[bytes], list[bytes], str]:
        """Effective contents of the registry and peers prefixes, and the registry prefix end."""
        registry = registry_prefix(decode(read_stream(self.client, keys.registry)), bound)
        peers = peers_prefix(decode(read_stream(self.client, keys.peers)), registry, bound)
        causes = compare.ordinals(registry)
        last = registry[-1][0] if registry else START
        return compare.content(registry), compare.content(peers, causes), last

    def _state(
        self,
        stage: str,
        live: Snapshot,
        replay: dict[str, bytes],
        upto: str,
        *,
        live_digests: dict[str, str] | None = None,
        replay_digest: str = "",
    ) -> Outcome:
        """Compare ``stage``'s state hashes when the live one is at the replay's point (the
        digests when already computed)."""
        name = f"{stage} state"
        at = live.positions[stage]
        if at != upto:
            return Outcome(name, "SKIP", f"the live stage is at {at}, the replay at {upto}")
        fields = live.states[stage]
        live_digest = (live_digests or {}).get(stage)
        if live_digest:
            replay_digest = replay_digest or compare.state_digest(replay)
        else:
            live_digest, replay_digest = compare.state_digests(fields, replay, replay_digest)
        return self._outcome(
            name,
            live=live_digest,
            replay=replay_digest,
            size=len(fields),
            diff=lambda: compare.diff_state(fields, replay),
            unit="fields",
        )

    def _stream(self, name: str, live: list[bytes], replay: list[bytes]) -> Outcome:
        digest = compare.content_digest(live)
        return self._outcome(
            name,
            live=digest,
            replay=digest if replay is live else compare.content_digest(replay),
            size=len(live),
            diff=lambda: compare.diff_content(live, replay),
            unit="entries",
        )

    def _outcome(
        self,
        name: str,
        *,
        live: str,
        replay: str,
        size: int,
        diff: Callable[[], list[str]],
        unit: str,
    ) -> Outcome:
        if live == replay:
            return Outcome(name, "OK", f"sha256 {live[:16]} ({size} {unit})")
        lines = diff()
        shown = lines[: self.max_diff]
        if len(lines) > len(shown):
            shown.append(f"... and {len(lines) - len(shown)} more differences")
        return Outcome(name, "DIFF", f"live sha256 {live[:16]}, replay sha256 {replay[:16]}", shown)


def render(report: Report) -> list[str]:
    """The report as text lines."""
    bound = "nothing (empty log)" if report.bound == START else report.bound
    where = f"in scratch namespace {report.scratch} (deleted)" if report.scratch else "in process"
    lines = [f"replayed {report.entries} events entries up to {bound} {where}"]
    lines += [f"note: {n}" for n in report.notes]
    for outcome in report.outcomes:
        lines.append(f"{outcome.status:<5} {outcome.name:<16} {outcome.detail}")
        lines += [f"      {d}" for d in outcome.diff]
    return lines


__all__ = ["Outcome", "Replay", "Report", "peers_prefix", "registry_prefix", "render", "snapshot"]
