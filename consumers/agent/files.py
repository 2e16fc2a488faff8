"""The agent's files on its host (I/O): the wg-quick config file and the state file.

Both are written whole through a temp file in the same directory (mode 0600, fsync,
rename, directory fsync), so a reader or a crash sees the old file or the new one.
The config file keeps :data:`CONFIG_BACKUPS` rotated backups. The state file's
format and why it has a journal are in :mod:`consumers.agent.state`; here are its
reading (mode, owner and file type checked before a byte is trusted), the journal
appends and the compaction. :class:`Debounce` spaces whole-file writes: a burst of
changes costs one write a second, not one per change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from consumers.agent.desired import DesiredPeer
from consumers.agent.state import AppliedState, Ident, StateProblem, decode, encode_line
from consumers.agent.state import encode_snapshot as encode_state

#: Rotated backups kept of the config file (``IF.conf.1`` newest .. ``IF.conf.5``).
CONFIG_BACKUPS: Final = 5
#: Largest state file (snapshot or journal) read (bytes): 100,000 peers take about 12 MiB.
MAX_STATE_BYTES: Final = 64 << 20
#: Seconds between two writes of a whole file while changes keep coming.
WRITE_INTERVAL: Final = 1.0


def write_atomic(path: Path, pieces: Iterable[bytes], backups: int = 0) -> None:
    """Replace ``path`` with the concatenated ``pieces`` (mode 0600), keeping ``backups``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o600)
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if backups:
            _rotate(path, backups)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _rotate(path: Path, backups: int) -> None:
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if path.exists():
        newest = path.with_name(f"{path.name}.1")
        with contextlib.suppress(FileNotFoundError):
            newest.unlink()
        try:
            os.link(path, newest)
        except OSError:  # no hard links on this filesystem
            shutil.copy2(path, newest)


def write_config(path: Path, text: str, backups: int = CONFIG_BACKUPS) -> bool:
    """Atomically replace ``path`` with ``text`` (0600), keeping rotated backups.

    Returns False (and writes nothing) when the file already holds ``text``.
    """
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_atomic(path, [text.encode()], backups)
    return True


def remove_stale_temp_files(directory: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files of :func:`write_atomic` for ``names`` that a kill left behind."""
    removed = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            for stale in directory.glob(f".{name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
                    removed.append(stale)
    return removed


class Debounce:
    """When to write a file that changed: at once after a quiet spell, then at most
    once every ``interval`` seconds while changes keep coming."""

    def __init__(self, interval: float = WRITE_INTERVAL) -> None:
        self.interval = interval
        self.dirty = False
        self.last = -interval

    def mark(self) -> None:
        self.dirty = True

    def due_in(self, now: float) -> float | None:
        """Seconds until a write is due (0: now), or None when nothing changed."""
        if not self.dirty:
            return None
        return max(0.0, self.last + self.interval - now)

    def done(self, now: float) -> None:
        self.dirty = False
        self.last = now


def _read_private(path: Path) -> bytes | None:
    """The bytes of a file only this user can read, None when it does not exist;
    :class:`StateProblem` when it is not a regular file of ours with mode 0600 (or
    stricter), or too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateProblem(f"{path.name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateProblem(f"{path.name} is not a regular file")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise StateProblem(
                f"{path.name} has mode {stat.S_IMODE(info.st_mode):04o} and owner "
                f"{info.st_uid}: it must be this user's and 0600"
            )
        if info.st_size > MAX_STATE_BYTES:
            raise StateProblem(f"{path.name} is larger than {MAX_STATE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)


class StateFile:
    """``IF.state`` and ``IF.state.journal``: load once, append changes, compact."""

    def __init__(self, directory: Path, ident: Ident) -> None:
        self.path = directory / f"{ident.interface}.state"
        self.journal_path = directory / f"{ident.interface}.state.journal"
        self.ident = ident
        self.seq = 0
        self._fd: int | None = None

    def load(self) -> AppliedState | None:
        """The saved state (None: there is none); :class:`StateProblem` when unusable."""
        snapshot = _read_private(self.path)
        journal = _read_private(self.journal_path)
        if snapshot is None and not journal:
            return None
        state = decode(snapshot, journal or b"", self.ident)
        self.seq = state.seq
        return state

    def append(
        self, state: AppliedState, changed: Mapping[str, DesiredPeer | None], sync: bool
    ) -> None:
        """Note ``changed`` (and ``state``'s position, block, addresses) before applying
        it; ``sync`` (a peer is removed): on the disk before this returns."""
        self.seq += 1
        state.seq = self.seq
        line = encode_line(self.seq, state, changed)
        if self._fd is None:
            self.journal_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            self._fd = os.open(self.journal_path, flags, 0o600)
            os.fchmod(self._fd, 0o600)
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        if sync:
            os.fdatasync(self._fd)

    def compact(self, state: AppliedState) -> None:
        """Write ``state`` as the new snapshot and empty the journal."""
        state.seq = self.seq
        write_atomic(self.path, encode_state(state, self.ident))
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.journal_path, 0)

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
