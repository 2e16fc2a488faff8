"""Writing whole files (I/O): atomically, spaced out, off the loop that applies changes.

A file is written through a temp file in the same directory (mode 0600, fsync,
rename, directory fsync), so a reader or a crash sees the old file or the new one,
with :data:`CONFIG_BACKUPS` rotated backups for the config file.

A whole file of 10,000 peers takes some 17 ms to render and write (about 2 ms where
a process of several agents keeps each file's ``[Peer]`` blocks between writes,
:class:`consumers.agent.render.PeerBlocks`): too long for the loop that applies
changes. :class:`Debounce` spaces the writes (one a second under a
burst), and :class:`Writer`, one thread per process, does them from a snapshot of
the applied state (immutable peers), so a change that arrives meanwhile is applied
at once. Its rendering gives way at every 64 KiB it writes (``os.write`` releases the
interpreter lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

#: Rotated backups kept of the config file (``IF.conf.1`` newest .. ``IF.conf.5``).
CONFIG_BACKUPS: Final = 5
#: Seconds between two writes of a whole file while changes keep coming.
WRITE_INTERVAL: Final = 1.0
#: Bytes gathered before one ``os.write`` of a whole file.
WRITE_CHUNK: Final = 1 << 16
#: Seconds without a new job before the writer thread starts one (:class:`Writer`)...
QUIET_SECONDS: Final = 0.2
#: ...or since the queue holds one.
MOST_WAIT_SECONDS: Final = 1.0


def write_atomic(
    path: Path, pieces: Iterable[bytes], backups: int = 0, *, make_dir: bool = True
) -> None:
    """Replace ``path`` with the concatenated ``pieces`` (mode 0600), keeping ``backups``;
    ``make_dir``: create its folder first if it is missing.

    Plain ``os`` calls on string paths: a fleet of agents in one process writes a small
    file per agent per change, and ``tempfile.mkstemp`` and ``pathlib`` cost more Python
    than the writing (the temp name is random all the same, the file created exclusively)."""
    folder, name = os.path.split(os.fspath(path))
    if make_dir:
        os.makedirs(folder or ".", mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            pending: list[bytes] = []
            size = 0
            for piece in pieces:  # a small file in one write (each one lets other threads in)
                pending.append(piece)
                size += len(piece)
                if size >= WRITE_CHUNK:
                    write_all(fd, b"".join(pending))
                    pending, size = [], 0
            write_all(fd, b"".join(pending))
            os.fsync(fd)
        finally:
            os.close(fd)
        if backups:
            _rotate(os.path.join(folder, name), backups)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rotate(path: str, backups: int) -> None:
    """``path.1`` .. ``path.N-1`` move up one (the oldest drops off), ``path`` becomes
    ``path.1`` (a hard link: ``path`` itself stays until it is replaced)."""
    for i in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    newest = f"{path}.1"
    if backups == 1:  # (otherwise it has just moved up)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(newest)
    try:
        os.link(path, newest)
    except FileNotFoundError:
        return  # no file yet: nothing to back up
    except OSError:  # no hard links on this filesystem
        with contextlib.suppress(FileNotFoundError):
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


def holds(path: Path, pieces: Iterable[bytes]) -> bool:
    """Whether ``path`` holds exactly the concatenated ``pieces`` (read piece by piece)."""
    try:
        with open(path, "rb") as fh:
            for piece in pieces:
                if fh.read(len(piece)) != piece:
                    return False
            return fh.read(1) == b""
    except (FileNotFoundError, IsADirectoryError):
        return False


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

    def hurry(self) -> None:
        """Due at once, however recent the last write."""
        self.last = float("-inf")

    def due_in(self, now: float) -> float | None:
        """Seconds until a write is due (0: now), or None when nothing changed."""
        if not self.dirty:
            return None
        return max(0.0, self.last + self.interval - now)

    def done(self, now: float) -> None:
        self.dirty = False
        self.last = now


def release_memory() -> None:
    """Give back to the system the memory that a bootstrap, a full read or a whole-file
    write freed (glibc's ``malloc_trim``: free blocks inside the heap stay the
    process's otherwise). A no-op where there is no such call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None where there is none), looked up once."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


class Writer:
    """The process's file-writing thread: jobs keyed by file, a newer job for a file
    replacing one still queued.

    A job starts once no other was submitted for :data:`QUIET_SECONDS` (or once the
    queue has been waiting :data:`MOST_WAIT_SECONDS`): a process that runs many agents
    (the fleet benchmark) then writes their files after a change has reached all of them,
    rather than taking turns with them while it is being applied (every system call of
    a write lets another thread in)."""

    _instance: Writer | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._jobs: dict[object, Callable[[], None]] = {}
        self._busy: object | None = None
        self._cond = threading.Condition()
        #: When the last job was submitted, and since when the queue holds any (monotonic).
        self._last_submit = self._queued_since = 0.0
        self._thread = threading.Thread(target=self._run, name="wgchain-file-writer", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> Writer:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def submit(self, key: object, job: Callable[[], None]) -> None:
        """Run ``job`` soon (it must catch its own errors)."""
        with self._cond:
            now = time.monotonic()
            if not self._jobs:
                self._queued_since = now
            self._last_submit = now
            self._jobs[key] = job
            self._cond.notify_all()

    def busy(self, key: object) -> bool:
        with self._cond:
            return key in self._jobs or self._busy == key

    def wait(self, key: object) -> None:
        """Until no job for ``key`` is queued or running (a queued one runs now, here)."""
        with self._cond:
            job = self._jobs.pop(key, None)
            while self._busy == key:
                self._cond.wait()
        if job is not None:
            job()

    def _next(self) -> tuple[object, Callable[[], None]]:
        """The next job once one may start (the class docstring), marked busy."""
        with self._cond:
            while True:
                if not self._jobs:
                    self._cond.wait()
                    continue
                start = min(
                    self._last_submit + QUIET_SECONDS, self._queued_since + MOST_WAIT_SECONDS
                )
                wait = start - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            key = next(iter(self._jobs))
            self._busy = key
            return key, self._jobs.pop(key)

    def _run(self) -> None:
        while True:
            _, job = self._next()
            try:
                job()
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()
                    drained = not self._jobs
            if drained:  # whole files' texts were just built and dropped (once per burst:
                release_memory()  # a process of many agents writes one file per agent)


class NotPrivate(Exception):
    """A file that must be private is not; the text completes a sentence naming the file,
    and ``about_mode`` says whether its mode (or owner) is what is wrong."""

    def __init__(self, what: str, *, about_mode: bool = False) -> None:
        super().__init__(what)
        self.about_mode = about_mode


def read_private(path: Path, limit: int, *, ours: bool = False) -> bytes | None:
    """The bytes of ``path`` (None: it does not exist), read only if it is a regular file
    (a symlink is not followed) with mode 0600 or stricter, owned by this user when
    ``ours``, and of at most ``limit`` bytes; else :class:`NotPrivate`. Another error
    opening it (``OSError``) is the caller's to word."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotPrivate("is not a regular file")
        if info.st_mode & 0o077 or (ours and info.st_uid != os.geteuid()):
            owner = f" and owner {info.st_uid}" if ours else ""
            raise NotPrivate(f"has mode {stat.S_IMODE(info.st_mode):04o}{owner}", about_mode=True)
        if info.st_size > limit:
            raise NotPrivate(f"is larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:  # grew while being read
            raise NotPrivate(f"is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)
