"""The crash harness in CI: a shorter workload, the same number of SIGKILLs.

``test_pipeline_survives_sigkills_anywhere`` runs the whole pipeline (listener,
registry, ipam, two file-only agents and one agent on a real wireguard-go
interface) as subprocesses under a seeded workload of 350 contract operations
and at least 20 SIGKILLs, then checks it against the chain and a clean fold
(see :mod:`harness`). The seed is random and printed; ``CRASH_SEED=S`` replays one.
``make soak`` runs the long version.

``test_the_checks_see_tampering`` proves the checks are not vacuous: the same
harness, with a lost events entry, a foreign ipam state field and a stopped agent
whose config file was edited, must fail naming each of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal

import pytest
from conftest import IN_CI, require
from harness import CrashFailure, Harness, Options

from shared.devnet.anvil import anvil_binary
from shared.devnet.netns import available
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import redis_server_binary
from shared.errors import ServiceUnavailable

#: Contract operations of the CI run (``make soak`` runs 2,000).
CI_OPS = 350
#: SIGKILLs of the CI run, at least (as many as the soak).
CI_KILLS = 20


def seed() -> int:
    return int(os.environ.get("CRASH_SEED") or secrets.randbelow(2**31))


@pytest.fixture
def services() -> None:
    """anvil and redis-server are installed (skip locally, fail in CI)."""
    try:
        anvil_binary()
        redis_server_binary()
    except ServiceUnavailable as exc:
        require(False, str(exc))


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("services")
def test_pipeline_survives_sigkills_anywhere() -> None:
    ok, reason = available()
    require(ok or not IN_CI, f"network-namespace lab unavailable: {reason}")
    options = Options(seed(), ops=CI_OPS, kills=CI_KILLS, wg=ok)
    report = Harness(options).run()  # raises CrashFailure, with the seed, on any difference
    assert sum(report.kills.values()) >= CI_KILLS
    kinds = ("grant", "revoke", "transfer", "renew", "cancel", "set_key")
    assert all(report.ops[kind] for kind in kinds)
    assert all(report.kinds[kind] for kind in ("PeerUpsert", "PeerRemove", "Conflict"))
    assert report.kinds["Anomaly"], "hostile strings are recorded as anomalies"


class Tampered(Harness):
    """Damages the outcome after the run, where each check must notice it."""

    def before_checks(self) -> None:
        assert self.client is not None
        raw = self.client.xrange(self.keys.events, count=20)
        self.client.xdel(self.keys.events, raw[10][0])  # type: ignore[index]
        self.client.hset(self.keys.state("ipam"), "tampered", "1")
        agent = next(s for s in self.services if s.name == "crash-a")
        assert agent.proc is not None
        path = self.agents[0].config_path
        # an agent killed early in the run and restarted may not have written its file yet
        # (it writes it within a second of an apply, docs/design.md 11.4): wait for one
        wait_for(path.exists, timeout=30, what=f"{path} written by crash-a")
        os.kill(agent.proc.pid, signal.SIGKILL)  # stopped for good: nothing repairs the file
        agent.proc.wait()
        agent.proc = None
        path.write_text(path.read_text() + "\n[Peer]\nAllowedIPs = 0.0.0.0/0\n")


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("services")
def test_the_checks_see_tampering() -> None:
    tampered = Tampered(Options(seed(), ops=40, kills=2, wg=False, settle_timeout=5))
    try:
        with pytest.raises(CrashFailure) as failure:
            tampered.run()
    finally:
        shutil.rmtree(tampered.workdir, ignore_errors=True)
    message = str(failure.value)
    assert "events vs eth_getLogs" in message
    assert "digest chain broken" in message
    assert "ipam state differs from the clean fold" in message
    assert "crash-a: config file differs from the desired state" in message
