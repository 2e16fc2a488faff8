"""Least privilege on a real redis-server: TLS (``rediss://``), user and password in the URL,
and the agent's ACL (``wgchain agent acl``): the agent runs, and can write nothing else."""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import require
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.keys import generate_private_key_file
from shared import cli
from shared.devnet.proc import free_port, stop_process, wait_for
from shared.devnet.redis_server import redis_server_binary
from shared.errors import ServiceUnavailable, SettingsError
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys
from shared.redis_log import connect
from shared.settings import load

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


@dataclass
class TlsRedis:
    port: int
    ca: Path
    other_ca: Path

    def url(self, user: str = "", password: str = ADMIN_PASSWORD, ca: Path | None = None) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?ssl_ca_certs={ca or self.ca}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else name
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write_pki(folder: Path) -> None:
    """ca.pem, server.pem, server.key (signed by ca), and other-ca.pem (an unrelated CA)."""
    ca_key, server_key, other_key = _key(), _key(), _key()
    ca = _certificate("wgchain test CA", ca_key, None)
    server = _certificate("127.0.0.1", server_key, ("wgchain test CA", ca_key))
    other = _certificate("someone else's CA", other_key, None)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "other-ca.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_pem(server_key))
    (folder / "server.key").chmod(0o600)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """redis-server with TLS only (no plain port) and an admin password on the default user."""
    try:
        binary = redis_server_binary()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    _write_pki(tmp_path)
    port = free_port()
    args = [
        binary,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(tmp_path / "server.pem"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
        "--tls-auth-clients", "no",
        "--requirepass", ADMIN_PASSWORD,
        "--dir", str(tmp_path),
        "--save", "",
    ]  # fmt: skip
    with open(tmp_path / "redis.log", "ab") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
    server = TlsRedis(port, tmp_path / "ca.pem", tmp_path / "other-ca.pem")
    try:
        wait_for(lambda: connect(server.url()).ping(), timeout=10, what="redis-server with TLS")
        yield server
    finally:
        stop_process(proc)
        shutil.rmtree(tmp_path / "appendonlydir", ignore_errors=True)


def test_rediss_with_a_password_connects_and_failures_are_one_clear_error(
    tls_redis: TlsRedis,
) -> None:
    client = connect(tls_redis.url())
    try:
        assert client.set("wgchain-tls-probe", "1")
        assert client.connection_pool.connection_class is redis.SSLConnection
    finally:
        client.close()
    assert load({"redis_url": tls_redis.url()}, environ={}).redis_url == tls_redis.url()

    failures = {
        "unknown CA": tls_redis.url(ca=tls_redis.other_ca),
        "wrong password": tls_redis.url(password="hunter2-wrong"),
        "plain text on a TLS port": f"redis://:hunter2-plain@127.0.0.1:{tls_redis.port}/0",
    }
    for what, url in failures.items():
        with pytest.raises(ServiceUnavailable) as info:
            connect(url)
        assert "hunter2" not in str(info.value), what
        assert ADMIN_PASSWORD not in str(info.value), what
        assert str(info.value).startswith("cannot reach Redis at "), what
    with pytest.raises(SettingsError):
        connect("rediss://127.0.0.1:notaport/0")


def _acl_line(
    capsys: pytest.CaptureFixture[str], keys: Keys, node: str, password_file: Path
) -> list[str]:
    cli.main(["agent", "acl", "--node", node, "--password-file", str(password_file),
              "--chain-id", str(keys.chain_id), "--contract", keys.contract])  # fmt: skip
    out, err = capsys.readouterr()
    assert "<password in" in err
    assert password_file.read_text().strip() not in out + err  # only its hash is printed
    return out.split()


def test_the_agent_acl_lets_the_agent_run_and_write_nothing_else(
    tls_redis: TlsRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = network_keys()
    other_network = network_keys()
    password_file = tmp_path / "agent-a.password"
    admin = connect(tls_redis.url())
    command = _acl_line(capsys, keys, "node-a", password_file)
    assert command[:3] == ["ACL", "SETUSER", "wgchain-agent-node-a"]
    assert admin.execute_command(*command) in (b"OK", "OK", True)
    password = password_file.read_text().strip()

    key_file = tmp_path / "a.key"
    public_a = generate_private_key_file(key_file)
    public_b = generate_private_key_file(tmp_path / "b.key")
    for node, key, ip in (("node-a", public_a, "10.88.0.1"), ("node-b", public_b, "10.88.0.2")):
        admin.xadd(keys.peers, to_fields(PeerUpsert(node, key, ip, "1-0", "1-0", 1)))  # type: ignore[arg-type]
    admin.set(keys.host_announce("node-b"), json.dumps({"endpoint": "192.0.2.2:51820"}))

    agent_client = connect(tls_redis.url(user="wgchain-agent-node-a", password=password))
    config = AgentConfig(
        node_id="node-a",
        interface="wgacl0",
        private_key_file=key_file,
        keys=keys,
        endpoint="192.0.2.1:51820",
        config_dir=tmp_path / "conf",
        file_only=True,
        reconcile_interval=0.2,
    )
    agent = Agent(config, agent_client, None)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: "Endpoint = 192.0.2.2:51820" in config.config_path.read_text(),
            timeout=20,
            what="node-b (with its announced endpoint) in node-a's config",
        )
        wait_for(
            lambda: admin.hget(keys.host_status("node-a"), "peer_count") == b"1",
            timeout=20,
            what="node-a's status written",
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert agent.last_error == ""
    # It told the others that its announcement changed (the ACL lets it append there).
    assert [f[b"node"] for _, f in admin.xrange(keys.announcements)] == [b"node-a"]
    announced = admin.get(keys.host_announce("node-a"))
    assert json.loads(announced)["endpoint"] == "192.0.2.1:51820"  # type: ignore[arg-type]

    forbidden = {
        "another host's announcement": ("SET", keys.host_announce("node-b"), "{}"),
        "another host's status": ("HSET", keys.host_status("node-b"), "x", "1"),
        "the events stream": ("XADD", keys.events, "*", "v", "1"),
        "the registry stream": ("XADD", keys.registry, "*", "v", "1"),
        "the peers stream": ("XADD", keys.peers, "*", "v", "1"),
        "trimming the announcements stream": ("XTRIM", keys.announcements, "MAXLEN", "0"),
        "a stage's state": ("HSET", keys.state("ipam"), "x", "1"),
        "the peers snapshot": ("HSET", keys.snapshot, "id", "9-9"),
        "deleting peers": ("DEL", keys.peers),
        "reading events": ("XRANGE", keys.events, "-", "+"),
        "its own key in another network": ("SET", other_network.host_announce("node-a"), "{}"),
        "a scan of the keyspace": ("SCAN", "0"),
        "a script": ("EVAL", "return 1", "0"),
        "an admin command": ("CONFIG", "SET", "maxmemory", "1"),
        "granting itself more": ("ACL", "SETUSER", "wgchain-agent-node-a", "+@all"),
        "flushing": ("FLUSHALL",),
    }
    allowed = []
    for what, args in forbidden.items():
        try:
            agent_client.execute_command(*args)
        except redis.exceptions.NoPermissionError:
            continue
        allowed.append(what)
    assert allowed == []
    assert admin.get(keys.host_announce("node-b")) == b'{"endpoint": "192.0.2.2:51820"}'
    assert admin.xlen(keys.events) == 0
    agent_client.close()
    admin.close()
