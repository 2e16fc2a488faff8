"""The files an agent keeps on its host (I/O): ``IF.conf`` and ``IF.state`` (+ journal).

:class:`StateFile` reads the state file (mode, owner and file type are checked before
a byte is trusted; the format and the reasons for a journal are in
:mod:`consumers.agent.state`), appends journal lines and writes new snapshots.
:class:`HostFiles` is what the agent uses: a change goes to the journal before it is
applied (:meth:`HostFiles.write_ahead`); from a snapshot of the applied state, by the
process's file writer thread (:class:`consumers.agent.files.Writer`), the config file is
rewritten at most once a second and the state file's snapshot at most every
:data:`COMPACT_SECONDS` (sooner when the journal passes :data:`COMPACT_BYTES`), both
also at stop.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from consumers.agent import files
from consumers.agent.desired import Desired, DesiredPeer
from consumers.agent.render import PeerBlocks, blocks_kept, render_chunks, render_head
from consumers.agent.state import AppliedState, Ident, StateProblem, decode, encode_line
from consumers.agent.state import encode_snapshot as encode_state

#: Largest state file (snapshot or journal) read (bytes): 100,000 peers take about 12 MiB.
MAX_STATE_BYTES: Final = 64 << 20
#: Seconds before looking again at a file whose previous write the writer thread still has.
BUSY_RECHECK_SECONDS: Final = 0.25
#: Seconds between two state snapshots while changes keep coming (the journal has them).
COMPACT_SECONDS: Final = 30.0
#: Journal bytes after which a snapshot is due at once.
COMPACT_BYTES: Final = 4 << 20


def _read_private(path: Path) -> bytes | None:
    """The bytes of a file only this user can read, None when it does not exist;
    :class:`StateProblem` when it is not a regular file of ours with mode 0600 (or
    stricter), or too large."""
    try:
        return files.read_private(path, MAX_STATE_BYTES, ours=True)
    except files.NotPrivate as exc:
        hint = ": it must be this user's and 0600" if exc.about_mode else ""
        raise StateProblem(f"{path.name} {exc}{hint}") from None
    except OSError as exc:
        raise StateProblem(f"{path.name}: {exc.strerror}") from None


class StateFile:
    """``IF.state`` and ``IF.state.journal``: load once, append changes, compact."""

    def __init__(self, directory: Path, ident: Ident) -> None:
        self.path = directory / f"{ident.interface}.state"
        self.journal_path = directory / f"{ident.interface}.state.journal"
        self.ident = ident
        self.seq = 0
        #: Bytes appended to the journal since the last snapshot.
        self.journal_bytes = 0
        self._fd: int | None = None
        self._opened = False
        #: Journal lines appended since the last :meth:`capture` (kept past a compaction).
        self._since: list[bytes] = []

    def load(self) -> AppliedState | None:
        """The saved state (None: there is none); :class:`StateProblem` when unusable."""
        snapshot = _read_private(self.path)
        journal = _read_private(self.journal_path)
        if snapshot is None and not journal:
            return None
        state = decode(snapshot, journal or b"", self.ident)
        self.seq = state.seq
        return state

    def append(self, state: AppliedState, changed: Mapping[str, DesiredPeer | None]) -> None:
        """Note ``changed`` (and ``state``'s position, block, addresses) before applying it."""
        self.seq += 1
        line = encode_line(self.seq, state, changed)
        if self._fd is None:
            self._open()
        assert self._fd is not None
        files.write_all(self._fd, line)
        self._since.append(line)
        self.journal_bytes += len(line)

    def sync(self) -> None:
        """The journal on the disk (``fdatasync``)."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def _open(self) -> None:
        if not self._opened:  # later, a folder that is gone stays gone (the host is taken apart)
            self.journal_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._opened = True
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        self._fd = os.open(self.journal_path, flags, 0o600)
        os.fchmod(self._fd, 0o600)

    def capture(self) -> int:
        """A snapshot of the state as of now is about to be written: its sequence number."""
        self._since = []
        self.journal_bytes = 0
        return self.seq

    def write_snapshot(self, state: AppliedState, seq: int) -> None:
        """Write ``state`` (as of journal line ``seq``) as the snapshot (any thread)."""
        state.seq = seq
        files.write_atomic(self.path, encode_state(state, self.ident), make_dir=not self._opened)

    def compacted(self) -> None:
        """The snapshot of the last :meth:`capture` is on disk: keep only later lines."""
        if self._fd is None:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.journal_path, 0)
        elif not self._since:
            os.ftruncate(self._fd, 0)
        else:  # lines appended while the snapshot was written: they stay
            files.write_atomic(self.journal_path, self._since, make_dir=False)
            self.close()

    def remove(self) -> None:
        """Forget the state (it could not be kept up to date: better none than a stale one)."""
        self.close()
        for path in (self.path, self.journal_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HostFiles:
    """The config file and the state file of one agent."""

    def __init__(
        self,
        config_path: Path,
        ident: Ident,
        *,
        listen_port: int | None,
        key_file: Path,
        log: Any,
        error: Callable[[str], None],
    ) -> None:
        self.config_path = config_path
        self.state = StateFile(config_path.parent, ident)
        self.node_id = ident.node
        self.listen_port = listen_port
        self.key_file = str(key_file.absolute())
        self.log = log
        self.error = error
        #: False after the state file could not be written: it was removed, no journal.
        self.kept = True
        self.config_due = files.Debounce()
        self.state_due = files.Debounce(COMPACT_SECONDS)
        self._compare = True  # the first write: skipped when the file holds it already
        self._unsynced = False
        self._results: list[tuple[str, Any]] = []
        self._writer = files.Writer.shared()
        #: The config file's ``[Peer]`` blocks as last written, once a process of several
        #: agents keeps them (``render.keep_blocks``; only this file's jobs touch it, in turn).
        self._blocks = PeerBlocks()

    def remove_stale_temp_files(self) -> list[Path]:
        names = (self.config_path.name, self.state.path.name, self.state.journal_path.name)
        return files.remove_stale_temp_files(self.config_path.parent, names)

    def load(self) -> AppliedState | None:
        """The state file's applied state (None: none, or unusable: said in one line)."""
        try:
            return self.state.load()
        except StateProblem as exc:
            self.log.warning("state file ignored: {}", exc)
            return None

    # --- the journal -------------------------------------------------------------------

    def write_ahead(
        self,
        changed: Mapping[str, DesiredPeer | None],
        header: AppliedState,
        applied: Mapping[str, DesiredPeer],
    ) -> None:
        """Note a change before it is applied; one that removes a peer is flushed to the
        disk by :meth:`flush` once applied (module docstring of consumers/agent/state.py)."""
        if not self.kept:
            return
        removes = any(
            (old := applied.get(node)) is not None
            and (peer is None or peer.public_key != old.public_key)
            for node, peer in changed.items()
        )
        try:
            self.state.append(header, changed)
        except OSError as exc:
            self._drop(exc)
        self._unsynced = self._unsynced or removes
        self.state_due.mark()
        if self.state.journal_bytes > COMPACT_BYTES:
            self.state_due.hurry()  # a long journal: a snapshot now

    def flush(self) -> None:
        """Put on the disk a journal line that removed a peer (right after it was applied)."""
        if self._unsynced and self.kept:
            self._unsynced = False
            try:
                self.state.sync()
            except OSError as exc:
                self._drop(exc)

    def _drop(self, exc: OSError) -> None:
        self.log.error(
            "cannot keep the state file {} ({}): removed; a restart then starts without it",
            self.state.path,
            exc.strerror or exc,
        )
        self.kept = False
        try:
            self.state.remove()
        except OSError as again:
            self.log.error("cannot remove {}: {}", self.state.path, again.strerror)

    # --- whole files -------------------------------------------------------------------

    def waits(self, now: float) -> list[float]:
        """Seconds until each pending whole-file write is due (while the writer thread still
        has this file's previous write: a while, not at once)."""
        waits = []
        for due, key in ((self.config_due, "config"), (self.state_due, "state")):
            wait = due.due_in(now)
            if wait is not None:
                busy = self._writer.busy((self, key))
                waits.append(max(wait, BUSY_RECHECK_SECONDS) if busy else wait)
        return waits

    def write(self, snapshot: Callable[[], AppliedState], *, force: bool = False) -> None:
        """Write the files that are due (``force``: every changed one, before returning)."""
        self._collect()
        now = time.monotonic()
        for due, key, start in (
            (self.config_due, "config", self._config_job),
            (self.state_due, "state", self._state_job),
        ):
            if force:  # a write still queued or running finishes first, even if none is due
                self._writer.wait((self, key))
            wait = due.due_in(now)
            if wait is None or (wait > 0 and not force):
                continue
            if not force and self._writer.busy((self, key)):
                continue
            due.done(now)
            job = start(snapshot())
            if force:
                job()
            else:
                self._writer.submit((self, key), job)
        self._collect()

    def _config_job(self, state: AppliedState) -> Callable[[], None]:
        compare, self._compare = self._compare, False

        def job() -> None:
            # the file's text is render_config's of the snapshot
            kept: list[bytes] | None = None
            if blocks_kept():  # the blocks of the peers that did not change are kept ones
                self._blocks.update(state.peers)
                kept = self._blocks.pieces(
                    render_head(
                        state.addresses,
                        state.fail_closed,
                        listen_port=self.listen_port,
                        private_key_file=self.key_file,
                    )
                )

            def pieces() -> Iterable[bytes]:
                if kept is not None:
                    return kept
                # one agent in this process: rendered whole, piece by piece as it is written
                peers = tuple(state.peers[n] for n in sorted(state.peers))
                desired = Desired(self.node_id, state.addresses, peers, state.fail_closed)
                chunks = render_chunks(
                    desired, listen_port=self.listen_port, private_key_file=self.key_file
                )
                return (chunk.encode() for chunk in chunks)

            try:
                if not (compare and files.holds(self.config_path, pieces())):
                    files.write_atomic(
                        self.config_path, pieces(), files.CONFIG_BACKUPS, make_dir=compare
                    )
                    self._results.append(("config", len(state.peers)))
            except OSError as exc:
                self._results.append(("config-error", exc.strerror or str(exc)))

        return job

    def _state_job(self, state: AppliedState) -> Callable[[], None]:
        if not self.kept:
            self.kept = True  # a whole snapshot: the journal can start again after it
        seq = self.state.capture()

        def job() -> None:
            try:
                self.state.write_snapshot(state, seq)
                self._results.append(("state", seq))
            except OSError as exc:
                self._results.append(("state-error", exc))

        return job

    def _collect(self) -> None:
        while self._results:
            what, value = self._results.pop(0)
            if what == "config":
                self.log.info("wrote {} ({} peers)", self.config_path, value)
            elif what == "config-error":
                self.error(f"cannot write {self.config_path}: {value}")
                self.config_due.mark()
            elif what == "state":
                try:
                    self.state.compacted()
                except OSError as exc:
                    self._drop(exc)
            else:
                self._drop(value)

    def close(self, snapshot: Callable[[], AppliedState]) -> None:
        """Write what changed, and let go of the journal (unless the folder is gone: a
        host being taken apart is not given its folder back)."""
        if self.config_path.parent.is_dir():
            self.write(snapshot, force=True)
        self.state.close()
