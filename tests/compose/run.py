"""``make compose-test``: the production topology (compose/docker-compose.yml), run for real.

Installs what is missing (tests/compose/machine.py), builds the image once, brings the whole
topology up with the local chain, and checks it from outside, as an operator would:

1. secrets: the Redis password (hostile characters on purpose) is on no command line and in no
   container's configuration; the API refuses requests without the generated token;
2. three hosts minted from the public keys they generated -> a mesh with handshakes, and traffic
   through the tunnel;
3. a revoke -> that node gone from every host;
4. the listener holding the lease SIGKILLed -> the other takes over, events still flow, the
   killed one comes back by itself;
5. anvil restarted -> the chain goes on (no rewind); Redis restarted -> recovered, hosts kept
   their tunnels meanwhile, events still flow; `up` again -> no second deployment;
6. ``down -v`` -> nothing of the project is left; then the engine (if ours) is stopped and the
   machine's network state is put back and compared with what it was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.devnet.anvil import ACCOUNTS
from shared.devnet.proc import free_port
from tests.compose import machine
from tests.compose.machine import ROOT, log

T = TypeVar("T")

COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
#: The test's own project name and image tag (a user's `wgchain` project is never touched).
PROJECT = "wgchain-compose-test"
IMAGE = "wgchain-compose-test/wgchain:test"
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
#: A password that breaks an unescaped URL and a naive command line.
PASSWORD = "p@ss:w/rd#%?&= x'\"$HOME\\"
HOSTS = {"node-a": "host-a", "node-b": "host-b", "node-c": "host-c"}
KEY_FILE = "/var/lib/wgchain/private.key"
#: Seconds allowed for the topology to become healthy / for one convergence.
UP_TIMEOUT = 300
CONVERGE_TIMEOUT = 180


def wait(what: str, check: Callable[[], T | None], timeout: float = CONVERGE_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
            last = value
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Topology:
    def __init__(self, eng: machine.Engine, images: dict[str, str], work: Path) -> None:
        self.eng = eng
        self.anvil_port, self.api_port = free_port(), free_port()
        override = work / "override.yml"
        override.write_text(
            json.dumps(
                {
                    "services": {
                        "setup": {"build": {"args": {"BASE_IMAGE": images["python"]}}},
                        "redis": {"image": images["redis"]},
                        "anvil": {"image": images["foundry"]},
                    }
                }
            )
        )
        keep = {k: v for k, v in eng.env.items() if not k.startswith(("WGCHAIN_", "COMPOSE_"))}
        self.env = {
            **keep,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_FILE": f"{COMPOSE_FILE}{os.pathsep}{override}",
            "COMPOSE_PROFILES": "local",
            "WGCHAIN_IMAGE": IMAGE,
            "WGCHAIN_ANVIL_PORT": str(self.anvil_port),
            "WGCHAIN_API_PORT": str(self.api_port),
            "REDIS_PASSWORD": PASSWORD,
        }
        self.rpc = f"http://127.0.0.1:{self.anvil_port}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return machine.run(["docker", "compose", *args], check=check, env=self.env)

    def exec(self, service: str, *argv: str) -> str:
        return self.compose("exec", "-T", service, *argv).stdout

    def wgchain(self, *argv: str) -> dict[str, Any]:
        """A host-side ``wgchain contract ...`` against the published anvil port."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
        env |= {
            "WGCHAIN_RPC_URL": self.rpc,
            "WGCHAIN_CONTRACT": CONTRACT,
            "WGCHAIN_PRIVATE_KEY": ACCOUNTS[0][1],
        }
        wgchain = Path(sys.executable).parent / "wgchain"
        out = machine.run([str(wgchain), "contract", *argv, "--json"], env=env)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def up(self) -> None:
        self.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT))

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.exec("worker", "wgchain", "status", "--json")))

    def peers(self, service: str) -> dict[str, dict[str, Any]]:
        """``wg show wg0 dump`` of a host: public key -> handshake, transfer."""
        lines = self.exec(service, "wg", "show", "wg0", "dump").strip().splitlines()[1:]
        peers = {}
        for line in lines:
            key, _psk, endpoint, allowed, handshake, rx, tx, _ka = line.split("\t")
            peers[key] = {
                "endpoint": endpoint,
                "allowed": allowed,
                "handshake": int(handshake),
                "rx": int(rx),
                "tx": int(tx),
            }
        return peers

    def tunnel_ip(self, service: str) -> str:
        out = self.exec(service, "ip", "-4", "-o", "addr", "show", "dev", "wg0")
        return out.split(" inet ")[1].split("/")[0]


def check_secrets(top: Topology) -> None:
    ids = top.compose("ps", "-a", "-q").stdout.split()
    inspect = top.eng.docker("inspect", *ids).stdout
    assert PASSWORD not in inspect
    assert json.dumps(PASSWORD)[1:-1] not in inspect
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert PASSWORD.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue
    token = top.exec("api", "cat", "/run/wgchain/api-token").strip()
    url = f"http://127.0.0.1:{top.api_port}/v1/nodes"
    code = 200
    try:
        urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as exc:
        code = exc.code
    assert code == 401, f"the API answered {code} without its token"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    log("secrets: password on no command line, in no container config; API needs its token")


def mesh(top: Topology, members: dict[str, str]) -> None:
    """Every member host has exactly the other members as peers, with a handshake."""

    state: list[str] = []

    def converged() -> bool:
        state.clear()
        for node in members:
            peers = top.peers(HOSTS[node])
            names = {k: n for n, k in members.items()}
            state.append(
                f"{node}: "
                + ", ".join(
                    f"{names.get(k, k[:8])}{'' if p['handshake'] else ' (no handshake)'}"
                    for k, p in peers.items()
                )
            )
            others = {k for n, k in members.items() if n != node}
            if set(peers) != others or any(peers[k]["handshake"] == 0 for k in others):
                return False
        return True

    try:
        wait(f"a mesh of {', '.join(sorted(members))} with handshakes", converged)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; hosts: {'; '.join(state)}") from None


def scenario(top: Topology) -> None:
    started = time.monotonic()
    config = json.loads(top.compose("config", "--format", "json").stdout)
    built = [n for n, s in config["services"].items() if s.get("build")]
    assert built == ["setup"], f"one service builds the image, not {built}"
    top.compose("build")
    log(f"built {IMAGE} once ({time.monotonic() - started:.0f}s)")
    t = time.monotonic()
    top.up()
    log(f"every service healthy ({time.monotonic() - t:.0f}s)")
    check_secrets(top)

    keys = {
        node: top.exec(svc, "wgchain", "agent", "pubkey", "--private-key-file", KEY_FILE).strip()
        for node, svc in HOSTS.items()
    }
    tokens = {}
    for i, node in enumerate(HOSTS, start=1):
        minted = top.wgchain("mint", "--to", ACCOUNTS[i][0], "--node", node, "--key", keys[node])
        tokens[node] = int(minted["token_id"])
    t = time.monotonic()
    mesh(top, keys)
    log(f"three hosts minted -> mesh with handshakes ({time.monotonic() - t:.0f}s)")

    ip_b = top.tunnel_ip("host-b")
    before = top.peers("host-b")[keys["node-a"]]["rx"]
    out = top.exec("host-a", "wgchain-compose", "healthcheck", f"http://{ip_b}:9100/metrics")
    after = top.peers("host-b")[keys["node-a"]]["rx"]
    assert after > before, (before, after, out)
    log(f"traffic through the tunnel: host-a -> {ip_b} (host-b received {after - before} bytes)")

    t = time.monotonic()
    top.wgchain("revoke", str(tokens["node-c"]))
    mesh(top, {n: k for n, k in keys.items() if n != "node-c"})
    wait("node-c's own host without peers", lambda: not top.peers("host-c"))
    log(f"revoke node-c -> gone from every host ({time.monotonic() - t:.0f}s)")

    holder = wait("a lease holder", lambda: top.status()["listener"]["lease_holder"])
    other = {"listener-1": "listener-2", "listener-2": "listener-1"}[holder]
    t = time.monotonic()
    top.compose("kill", "-s", "SIGKILL", holder)  # killed: it stays down (docker kill)
    wait(
        f"{other} to take the lease over", lambda: top.status()["listener"]["lease_holder"] == other
    )
    log(f"{holder} SIGKILLed -> {other} took the lease over ({time.monotonic() - t:.0f}s)")
    t = time.monotonic()
    top.wgchain("mint", "--to", ACCOUNTS[3][0], "--node", "node-c", "--key", keys["node-c"])
    mesh(top, keys)
    log(f"node-c re-minted -> back in the mesh through {other} ({time.monotonic() - t:.0f}s)")
    top.compose("start", holder)

    head = int(top.exec("anvil", "cast", "block-number").strip())
    top.compose("restart", "anvil")
    after_head = wait(
        f"anvil back and mining past block {head}",
        lambda: (n := int(top.exec("anvil", "cast", "block-number"))) > head and n,
    )
    log(f"anvil restarted -> chain goes on (block {head} -> {after_head})")

    t = time.monotonic()
    top.compose("restart", "redis")
    still = top.peers("host-a")
    assert len(still) == 2, "host-a lost peers while Redis restarted"
    top.wgchain("revoke", str(tokens["node-b"]))
    mesh(top, {n: k for n, k in keys.items() if n != "node-b"})
    top.up()  # every service healthy again; setup and deploy run again
    deploy_log = top.compose("logs", "--no-log-prefix", "deploy").stdout
    assert "already deployed" in deploy_log, deploy_log[-500:]
    log(
        f"Redis restarted -> recovered: hosts kept tunnels, revoke of node-b applied, all "
        f"healthy, `up` again deployed nothing ({time.monotonic() - t:.0f}s)"
    )


def leftovers(top: Topology) -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = top.eng.docker("ps", "-a", "-q", "--filter", label).stdout.split()
    for kind in ("network", "volume"):
        found += top.eng.docker(kind, "ls", "-q", "--filter", label).stdout.split()
    return found


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    started = time.monotonic()
    before = machine.Snapshot.take()
    machine.ensure_compose()
    failed: BaseException | None = None
    with machine.engine() as eng, tempfile.TemporaryDirectory(prefix="wgc-compose-") as work:
        had_images = set(eng.docker("images", "-q", "--no-trunc").stdout.split())
        images = machine.images(eng)
        log(f"set-up ready ({time.monotonic() - started:.0f}s)")
        top = Topology(eng, images, Path(work))
        try:
            scenario(top)
        except BaseException as exc:
            failed = exc
            logs = top.compose("logs", "--no-color", "--tail", "30", check=False).stdout
            print(logs[-6000:], file=sys.stderr)
        finally:
            top.compose("down", "-v", "--remove-orphans", check=False)
            left = leftovers(top)
            if left and failed is None:
                failed = AssertionError(f"down -v left {left}")
            made = set(eng.docker("images", "-q", "--no-trunc").stdout.split()) - had_images
            if eng.own:
                eng.docker("image", "prune", "-f", check=False)  # cache: keep tagged images
            elif made:
                eng.docker("rmi", "-f", *sorted(made), check=False)
    if eng.own:
        machine.restore_network(before)
        diffs = before.differences(machine.Snapshot.take())
        survivors = [p for p in (eng.dockerd, eng.containerd) if p and p.poll() is None]
        if diffs or survivors:
            failed = failed or AssertionError(f"machine not restored: {diffs} {survivors}")
        log("machine restored: links, firewall rules and sysctls as before, engine stopped")
    if failed is not None:
        log(f"FAILED: {failed}")
        if not isinstance(failed, AssertionError | RuntimeError):
            raise failed
        return 1
    log(f"passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
