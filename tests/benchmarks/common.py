"""Shared pieces of the benchmarks: results, percentiles, RSS, machine facts, child processes.

Every benchmark returns :class:`Result` rows, each with a stable ``id`` (``B4.agent_change``):
the same row has the same id in every run and every version, whatever the sizes, so
results can be compared over time (the README's Performance table lists them). ``ratio`` reads "how many times better
than the baseline": ``value / baseline_value`` when higher is better,
``baseline_value / value`` when lower is better. A row whose baseline is a ceiling
(the fastest anything could go) therefore has a ratio of at most about 1. Memory
rows measured against an empty process are the exception: their ratio is
``value / baseline_value``, "times the empty process".
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Folder of the benchmark scripts.
HERE = Path(__file__).resolve().parent
#: Root of the repository.
ROOT = HERE.parents[1]
#: The script that runs one benchmark part in a separate process.
CHILD = HERE / "child.py"
#: What a row id looks like: the benchmark, a dot, a fixed snake_case name (never a size).
ID_RE = re.compile(r"^B[1-6]\.[a-z0-9_]+$")


class Unavailable(Exception):
    """A real part a benchmark needs (root, wireguard-go, anvil, a module) is missing."""


@dataclass
class Result:
    """One measured row: a value against its baseline, measured in the same run."""

    #: Stable id (:data:`ID_RE`): a literal in the benchmark's code, never built from sizes.
    id: str
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    #: "higher" (throughput) or "lower" (latency, memory) is better; "reference": the
    #: baseline is a reference point (an empty process) and ratio is value / baseline.
    better: str
    #: What the ratio means, for the table ("x faster", "of the ceiling").
    ratio_meaning: str
    params: dict[str, Any] = field(default_factory=dict)
    #: Extra figures (p50/p95/p99, peak RSS, ...), written next to the required keys.
    extra: dict[str, Any] = field(default_factory=dict)
    #: The target this row is judged by, in words ("p50 <= 2x B4.wg_set"), and whether
    #: this run met it (None: no target).
    target: str = ""
    met: bool | None = None

    def __post_init__(self) -> None:
        if not ID_RE.fullmatch(self.id):
            raise ValueError(f"result id {self.id!r} does not match {ID_RE.pattern}")

    @property
    def ratio(self) -> float:
        """How many times better than the baseline (see the module docstring)."""
        if self.value <= 0 or self.baseline_value <= 0:
            return 0.0
        if self.better in {"higher", "reference"}:
            return self.value / self.baseline_value
        return self.baseline_value / self.value

    def as_json(self) -> dict[str, Any]:
        """The row as written to the JSON file: required keys, then the extra figures."""
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "value": round_sig(self.value),
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": round_sig(self.baseline_value),
            "ratio": round_sig(self.ratio),
            "better": self.better,
            "ratio_meaning": self.ratio_meaning,
            "params": self.params,
        }
        if self.target:
            doc["target"] = self.target
            doc["target_met"] = self.met
        for key, value in self.extra.items():
            doc[key] = round_sig(value) if isinstance(value, float) else value
        return doc


def round_sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (keeps the JSON readable)."""
    if value == 0 or not isinstance(value, float):
        return value
    return float(f"{value:.{digits}g}")


def percentiles(samples: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[int, float]:
    """The given percentiles of ``samples`` (inclusive method: exact at small sizes)."""
    if not samples:
        return {p: 0.0 for p in points}
    if len(samples) == 1:
        return {p: float(samples[0]) for p in points}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {p: cuts[p - 1] for p in points}


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            out[name] = int(rest.split()[0]) * 1024
    return out


def mib(n_bytes: float) -> float:
    """Bytes as MiB."""
    return n_bytes / (1024 * 1024)


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t:`` ... then ``t[0]`` holds the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def _first(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    return match.group(1).strip() if match else "?"


def _version(argv: list[str]) -> str:
    """First line of a tool's version output ("missing" when it is not installed)."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "missing"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0][:80] if lines else "?"


def machine() -> dict[str, Any]:
    """Facts about the machine and the tools that the numbers depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = _first(r"^MemTotal:\s+(\d+)", meminfo)
    from shared.devnet.redis_server import redis_server_binary
    from shared.errors import ServiceUnavailable

    try:
        redis_bin = redis_server_binary()
    except ServiceUnavailable:
        redis_bin = "redis-server"
    return {
        "cpu": _first(r"^model name\s*:\s*(.*)$", cpuinfo),
        "cores": os.cpu_count() or 0,
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else 0,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "redis": _first(r"(v=\S+)", _version([redis_bin, "--version"])).replace("v=", "Redis "),
        "wireguard_go": _version(["wireguard-go", "--version"]),
    }


def _child_argv(what: str, netns: str | None) -> list[str]:
    argv = [sys.executable, str(CHILD), what]
    return ["ip", "netns", "exec", netns, *argv] if netns is not None else argv


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}


def _answer(what: str, returncode: int, stdout: str, stderr: str) -> Any:
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {what} failed ({returncode}):\n{tail}")
    return json.loads(lines[-1])


def child(
    what: str, params: dict[str, Any], *, netns: str | None = None, timeout: float = 600
) -> Any:
    """Run ``child.py what`` (in network namespace ``netns`` if given); its JSON answer.

    The child reads ``params`` as JSON on stdin and prints one JSON document last.
    """
    proc = subprocess.run(
        _child_argv(what, netns),
        input=json.dumps(params),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_child_env(),
        cwd=ROOT,
    )
    return _answer(what, proc.returncode, proc.stdout, proc.stderr)


class Background:
    """A child part running until asked to stop (SIGTERM); :meth:`finish` returns its answer."""

    def __init__(self, what: str, params: dict[str, Any], *, netns: str | None = None) -> None:
        self.what = what
        #: The child's log (a file, so that a chatty child never blocks on a full pipe).
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed when it stops
        self.proc = subprocess.Popen(
            _child_argv(what, netns),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=_child_env(),
            cwd=ROOT,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(params))
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not flush it again
        self.terminated = False

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM, once: a second one could end it mid-answer)."""
        if not self.terminated and self.proc.poll() is None:
            self.proc.terminate()
        self.terminated = True

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc.poll() is None

    def finish(self, timeout: float = 60) -> Any:
        """Stop the child (by its pid) and return the JSON it printed."""
        self.terminate()
        try:
            stdout, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, _ = self.proc.communicate()
        return _answer(self.what, self.proc.returncode, stdout, self._log())

    def kill(self, timeout: float = 0) -> None:
        """Stop the child without an answer: SIGTERM for ``timeout`` seconds, then SIGKILL."""
        if self.proc.poll() is None and timeout > 0:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        self.stderr.close()

    def _log(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read()
        self.stderr.close()
        return text


def quiet_logs() -> None:
    """Only warnings from the project's logger (the listener logs every range at INFO)."""
    from shared.logs import setup

    setup(level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
