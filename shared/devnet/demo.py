"""``wgchain demo``: the whole pipeline on one machine, told as a story.

Real parts everywhere: a redis-server (embedded unless WGCHAIN_REDIS_URL is set),
anvil, the contract, ``wgchain run`` (listener + registry + ipam) and three hosts,
each a network namespace running wireguard-go and ``wgchain agent`` (or, without
root or wireguard-go, agents in file-only mode that write configs under a folder).
Everything it starts it stops again, by pid, unless ``--keep``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click

from shared import logs, settings
from shared.cmdline import warn_unknown_variables
from shared.contract.client import AccessNFT
from shared.devnet import netns
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import WgchainError
from shared.redis_log import connect

#: Seconds a story step may take before the demo gives up.
STEP_TIMEOUT = 60.0
#: UDP port every demo host listens on.
LISTEN_PORT = 51820
NODES = ("node-a", "node-b", "node-c")


@dataclass
class DemoHost:
    node: str
    key_file: Path
    config_dir: Path
    ifname: str
    lab_host: netns.Host | None = None
    agent: subprocess.Popen[bytes] | None = None
    public_key: str = ""

    def peers(self) -> dict[str, str]:
        """Public key -> allowed IPs of the peers this host has right now."""
        if self.lab_host is not None:
            out = self.lab_host.exec(["wg", "show", self.ifname, "dump"]).stdout
            lines = out.splitlines()[1:]
            return {ln.split("\t")[0]: ln.split("\t")[3] for ln in lines if ln.strip()}
        conf = self.config_dir / f"{self.ifname}.conf"
        peers: dict[str, str] = {}
        if conf.exists():
            key = ""
            for line in conf.read_text().splitlines():
                name, _, value = (part.strip() for part in line.partition("="))
                if name == "PublicKey":
                    key = value
                elif name == "AllowedIPs" and key:
                    peers[key] = value
        return peers


def _wgchain() -> str:
    found = shutil.which("wgchain", path=str(Path(sys.executable).parent)) or shutil.which(
        "wgchain"
    )
    if not found:
        raise WgchainError("the wgchain command is not on PATH (run `make setup`)")
    return found


class Demo:
    def __init__(
        self, workdir: Path, keep: bool, echo: Callable[[str], None], file_only: bool = False
    ) -> None:
        self.workdir = workdir
        self.file_only = file_only
        self.keep = keep
        self.say = echo
        self.stack = contextlib.ExitStack()
        self.hosts: dict[str, DemoHost] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.services: list[subprocess.Popen[bytes]] = []
        self.lab: netns.Lab | None = None
        self.env: dict[str, str] = {}

    # --- set-up ---------------------------------------------------------------------
    def start_services(self) -> None:
        redis_url = os.environ.get("WGCHAIN_REDIS_URL", "")
        agent_redis_url = redis_url
        if not redis_url:
            server = RedisServer(workdir=self.workdir / "redis").start()
            self.stack.callback(server.stop)
            self.services += [server.proc] if server.proc else []
            redis_url, agent_redis_url = server.url, server.unix_url
            self.say(
                f"redis    embedded redis-server on {server.url} (pid {server.proc.pid if server.proc else '?'})"
            )
        (self.workdir / "anvil").mkdir()
        anvil = Anvil(workdir=self.workdir / "anvil").start()  # inside workdir: one rm -rf
        self.stack.callback(anvil.cleanup)
        self.services += [anvil.proc] if anvil.proc else []
        self.say(f"chain    anvil on {anvil.url}, chain id {anvil.chain_id}")
        self.nft = AccessNFT.deploy(anvil.url, ACCOUNTS[0][1])
        self.say(f"contract DstackAccessNFT deployed at {self.nft.address}")
        self.env = {
            **os.environ,
            "WGCHAIN_REDIS_URL": redis_url,
            "WGCHAIN_RPC_URL": anvil.url,
            "WGCHAIN_CONTRACT": self.nft.address,
            "WGCHAIN_CHAIN_ID": str(anvil.chain_id),
            "WGCHAIN_CONFIRMATIONS": "0",
            "WGCHAIN_POLL_INTERVAL": "0.2",
            "WGCHAIN_RECONCILE_INTERVAL": "2",
        }
        self.agent_env = {**self.env, "WGCHAIN_REDIS_URL": agent_redis_url}
        log = open(self.workdir / "pipeline.log", "ab")  # noqa: SIM115
        self.stack.callback(log.close)
        pipeline = subprocess.Popen([_wgchain(), "run"], env=self.env, stdout=log, stderr=log)
        self._own(pipeline)
        self.say(f"pipeline wgchain run (listener + registry + ipam), pid {pipeline.pid}")

    def _own(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append(proc)
        self.stack.callback(stop_process, proc)

    def start_hosts(self) -> None:
        ok, why = (False, "--file-only was given") if self.file_only else netns.available()
        if ok:
            self.lab = netns.Lab(workdir=self.workdir / "lab")  # inside workdir: one rm -rf
            self.lab.workdir.mkdir()
            self.stack.callback(self.lab.cleanup)
        else:
            self.say(
                f"hosts    file-only mode ({why}): configs are written under {self.workdir}/hosts"
            )
        for node in NODES:
            host_dir = self.workdir / "hosts" / node
            host_dir.mkdir(parents=True)
            key_file = host_dir / "private.key"
            pub = self._run([_wgchain(), "agent", "init", "--private-key-file", str(key_file)])
            lab_host = self.lab.add_host(node) if self.lab else None
            ifname = lab_host.ifname if lab_host else f"wg-{node}"
            host = DemoHost(node, key_file, host_dir, ifname, lab_host, public_key=pub)
            argv = [
                _wgchain(), "agent", "--node", node, "--interface", ifname,
                "--private-key-file", str(key_file), "--config-dir", str(host_dir),
            ]  # fmt: skip
            log_path = host_dir / "agent.log"
            if lab_host is not None:
                lab_host.start_wireguard()
                argv += [
                    "--listen-port", str(LISTEN_PORT),
                    "--endpoint", f"{lab_host.underlay_ip}:{LISTEN_PORT}",
                ]  # fmt: skip
                host.agent = lab_host.spawn(argv, env=self.agent_env, log_path=log_path)
            else:
                with open(log_path, "ab") as log:
                    host.agent = subprocess.Popen(
                        [*argv, "--file-only"], env=self.agent_env, stdout=log, stderr=log
                    )
            self._own(host.agent)
            self.hosts[node] = host
            where = f"namespace {lab_host.ns}, interface {ifname}" if lab_host else "file-only"
            self.say(f"host     {node}: {where}, public key {pub}")

    def _run(self, argv: list[str]) -> str:
        res = subprocess.run(argv, env=self.env, capture_output=True, check=False)
        if res.returncode != 0:
            raise WgchainError(f"{' '.join(argv[:3])} failed: {res.stderr.decode().strip()}")
        return res.stdout.decode().strip().splitlines()[-1]

    # --- observation ----------------------------------------------------------------
    def names_of(self, peers: dict[str, str]) -> dict[str, str]:
        by_key = {h.public_key: n for n, h in self.hosts.items()}
        return {by_key.get(k, k[:8] + "…"): ips for k, ips in peers.items()}

    def expect(self, what: str, condition: Callable[[], bool]) -> None:
        try:
            wait_for(condition, timeout=STEP_TIMEOUT, interval=0.1, what=what)
        except TimeoutError:
            self.show_hosts()
            raise WgchainError(f"demo step failed: {what} (logs in {self.workdir})") from None

    def has_exactly(self, node: str, others: set[str]) -> bool:
        host = self.hosts[node]
        peers = host.peers()
        expected = {self.hosts[o].public_key for o in others}
        return set(peers) == expected

    def rekeyed(self, node: str, old: str, new: str) -> bool:
        peers = self.hosts[node].peers()
        return new in peers and old not in peers

    def show_hosts(self) -> None:
        for node, host in self.hosts.items():
            peers = self.names_of(host.peers())
            text = ", ".join(f"{n} ({ips})" for n, ips in sorted(peers.items())) or "no peers"
            self.say(f"           {node} has {text}")

    def address_of(self, node: str) -> str:
        peers = self.names_of(self.hosts["node-a" if node != "node-a" else "node-b"].peers())
        return peers[node].split(",")[0].split("/")[0]

    def ping(self, src: str, dst_ip: str) -> bool | None:
        host = self.hosts[src].lab_host
        return None if host is None else host.ping(dst_ip, count=1, timeout_s=2)

    # --- the story --------------------------------------------------------------------
    def story(self) -> None:
        owner = {node: ACCOUNTS[i + 1] for i, node in enumerate(NODES)}
        tokens: dict[str, int] = {}
        for node in NODES:
            res = self.nft.mint(owner[node][0], node, self.hosts[node].public_key)
            tokens[node] = res.token_id or 0
            self.say(
                f"grant    {node} -> token {tokens[node]} for {owner[node][0]} (block {res.block_number})"
            )
        for node in NODES:
            others = set(NODES) - {node}
            self.expect(f"{node} has the two others", partial(self.has_exactly, node, others))
        self.say("mesh     every host has the two others as peers:")
        self.show_hosts()

        b_ip = self.address_of("node-b")
        self._ping_step("node-a", b_ip, expect=True, label="ping     node-a -> node-b")

        new_key_file = self.hosts["node-b"].key_file.with_name("private.key.new")
        new_pub = self._run([_wgchain(), "agent", "init", "--private-key-file", str(new_key_file)])
        self.nft.with_signer(owner["node-b"][1]).set_key(new_pub)
        os.replace(new_key_file, self.hosts["node-b"].key_file)
        old_pub, self.hosts["node-b"].public_key = self.hosts["node-b"].public_key, new_pub
        self.say(
            f"rekey    node-b's owner set key {new_pub} on chain; host node-b swapped its private key"
        )
        for node in ("node-a", "node-c"):
            self.expect(
                f"{node} uses node-b's new key", partial(self.rekeyed, node, old_pub, new_pub)
            )
        self.show_hosts()
        self._ping_step(
            "node-a", b_ip, expect=True, label="ping     node-a -> node-b through the new key"
        )

        keyless = ACCOUNTS[9][0]
        self.nft.with_signer(owner["node-c"][1]).transfer(tokens["node-c"], keyless)
        self.say(
            f"transfer node-c's token {tokens['node-c']} -> {keyless} (an address with no key)"
        )
        self.expect("node-c gone from node-a", lambda: self.has_exactly("node-a", {"node-b"}))
        self.expect("node-c gone from node-b", lambda: self.has_exactly("node-b", {"node-a"}))
        self.expect("node-c fails closed", lambda: self.has_exactly("node-c", set()))
        self.say(
            "         node-c disappeared from every host; node-c's own host dropped all peers (fail closed)"
        )
        self.show_hosts()

        self.nft.revoke(tokens["node-b"])
        self.say(f"revoke   node-b (token {tokens['node-b']})")
        self.expect("node-b gone from node-a", lambda: self.has_exactly("node-a", set()))
        self.show_hosts()
        self._ping_step(
            "node-a", b_ip, expect=False, label="ping     node-a -> node-b after revoke"
        )
        if self.keep:
            self.rejoin(owner["node-b"][0])

    def rejoin(self, b_owner: str) -> None:
        """Bring node-b and node-c back, so that ``--keep`` leaves a live network to look at."""
        token = self.nft.mint(b_owner, "node-b", "").token_id  # its owner's key: the new one
        keyless = self.nft.with_signer(ACCOUNTS[9][1])
        keyless.set_key(self.hosts["node-c"].public_key)  # node-c's new owner keys its host
        self.say(
            f"rejoin   node-b granted again (token {token}); node-c's new owner set node-c's key"
        )
        for node in NODES:
            others = set(NODES) - {node}
            self.expect(f"{node} has the two others again", partial(self.has_exactly, node, others))
        self.show_hosts()

    def _ping_step(self, src: str, dst_ip: str, expect: bool, label: str) -> None:
        if self.lab is None:
            self.say(f"{label}: skipped (file-only mode, no tunnel)")
            return
        if expect:
            self.expect(f"{label} succeeds", lambda: bool(self.ping(src, dst_ip)))
            self.say(f"{label} ({dst_ip}): reply received")
        else:
            if self.ping(src, dst_ip):
                raise WgchainError(f"demo step failed: {label} still gets replies")
            self.say(f"{label} ({dst_ip}): no reply, as it should be")

    def keep_running(self) -> None:
        self.stack.pop_all()
        self.say("kept     the network runs on. In another shell:")
        for line in self.exports():
            self.say(f"  {line}")
        self.say("inspect:")
        for host in self.hosts.values():
            if host.lab_host is not None:
                self.say(f"  ip netns exec {host.lab_host.ns} wg show {host.ifname}")
            else:
                self.say(f"  cat {host.config_dir}/{host.ifname}.conf")
        self.say(f"  logs and keys: {self.workdir}")
        self.say(f"  stop: {self.stop_command()}")

    def exports(self) -> list[str]:
        """The settings that reach this network, and a command that works once they are set."""
        if not self.env:
            return []
        names = ("WGCHAIN_REDIS_URL", "WGCHAIN_RPC_URL", "WGCHAIN_CONTRACT", "WGCHAIN_CHAIN_ID")
        lines = [f"export {name}={shlex.quote(self.env[name])}" for name in names]
        lines.append(
            f"export WGCHAIN_PRIVATE_KEY={ACCOUNTS[0][1]}  # anvil's public test key: the"
            " contract owner, for `wgchain contract`"
        )
        ours = _wgchain()
        command = "wgchain" if shutil.which("wgchain") == ours else shlex.quote(ours)
        return [*lines, f"{command} status"]

    def stop_command(self) -> str:
        """One shell line that stops every process and removes everything the demo made."""
        procs = [*self.services, *self.procs, *(self.lab.procs if self.lab else [])]
        pids = " ".join(sorted({str(p.pid) for p in procs if p.poll() is None}))
        parts = []
        if pids:  # wait (bounded) for them to exit: an agent writes its files while it stops
            listed = pids.replace(" ", ",")
            parts += [
                f"kill {pids}",
                f"timeout 20 sh -c 'while ps -p {listed} >/dev/null; do sleep 0.2; done'",
            ]
        if self.lab is not None:
            parts += [f"ip netns del {ns}" for ns in self.lab.namespaces]
            sockets = [str(netns.WG_SOCKET_DIR / f"{h.ifname}.sock") for h in self.lab.hosts]
            parts.append("rm -f " + " ".join(sockets))
        parts.append(f"rm -rf {self.workdir}")
        return "; ".join(parts)


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wgchain-demo-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@click.command()
@click.option("--keep", is_flag=True, help="Leave the network running and print how to inspect it.")
@click.option(
    "--file-only", is_flag=True, help="Hosts write config files only (no namespaces, no root)."
)
def demo(keep: bool, file_only: bool) -> None:
    """Run the whole pipeline locally and tell what happens, step by step."""
    logs.setup("WARNING", stage="demo")  # the story is the output; components log to files
    cfg = settings.load()  # a bad WGCHAIN_* setting: one line, before anything starts
    warn_unknown_variables()
    if cfg.redis_url:
        connect(cfg.redis_url).close()  # an unreachable Redis: one line, nothing started
    with _workdir(keep) as workdir:
        d = Demo(workdir, keep, click.echo, file_only=file_only)
        try:
            d.start_services()
            d.start_hosts()
            d.story()
            click.echo("done     every step behaved as the chain says.")
        finally:
            if keep:
                d.keep_running()
            else:
                d.stack.close()
