"""Whole-file writes of the agent (consumers/agent/files.py): atomic, with backups, few
system calls, and a writer thread whose queued job runs at once when waited for."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from consumers.agent import files


def test_write_atomic_keeps_five_backups_mode_0600_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "wg0.conf"
    for n in range(8):
        files.write_atomic(path, [f"version {n}\n".encode()], files.CONFIG_BACKUPS)
    assert path.read_text() == "version 7\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    backups = {p.name: p.read_text() for p in path.parent.glob("wg0.conf.*")}
    assert backups == {f"wg0.conf.{i}": f"version {7 - i}\n" for i in range(1, 6)}
    assert not list(path.parent.glob(".wg0.conf.*.tmp"))
    # a stale temp file of a killed write is recognised as one
    files.write_atomic(path, [b"x"])
    stale = path.parent / ".wg0.conf.0123456789ab.tmp"
    stale.write_bytes(b"half")
    assert files.remove_stale_temp_files(path.parent, ["wg0.conf"]) == [stale]


def test_a_small_file_is_written_in_one_system_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``os.write`` lets another thread in; a process of many agents writes many small
    files, so their pieces go out together."""
    writes: list[int] = []
    real = os.write

    def counted(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", counted)
    pieces = [b"[Interface]\n", b"\n[Peer]\nPublicKey = k\n" * 10, b"\n"]
    files.write_atomic(tmp_path / "wg0.conf", pieces)
    assert writes == [sum(map(len, pieces))]
    assert (tmp_path / "wg0.conf").read_bytes() == b"".join(pieces)


def test_a_queued_job_runs_at_once_in_the_thread_that_waits_for_it() -> None:
    writer = files.Writer()
    ran: list[str] = []
    key = object()
    writer.submit(key, lambda: ran.append(threading.current_thread().name))
    writer.wait(key)  # (the writer thread holds queued jobs back for a quiet spell)
    assert ran == [threading.current_thread().name]
    assert not writer.busy(key)


def test_the_writer_thread_runs_what_nobody_waits_for() -> None:
    writer = files.Writer()
    done = threading.Event()
    names: list[str] = []

    def job() -> None:
        names.append(threading.current_thread().name)
        done.set()

    writer.submit("k", job)
    assert done.wait(30)
    assert names == ["wgchain-file-writer"]
