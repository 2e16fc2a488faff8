"""Agents on wireguard-go hosts in network namespaces, started as an operator would (the
``wgchain agent`` command), for the e2e tests that run a whole fleet."""

from __future__ import annotations

import subprocess
from pathlib import Path

from consumers.agent.keys import generate_private_key_file
from shared.devnet.netns import Host, Lab, wgchain_command


def start_agents(
    lab: Lab,
    nodes: list[str] | tuple[str, ...],
    tmp_path: Path,
    env: dict[str, str],
    port: int,
) -> tuple[dict[str, str], dict[str, Host], dict[str, subprocess.Popen[bytes]]]:
    """One host per node (wireguard-go up, a private key in ``tmp_path``) and its agent;
    the public keys, the hosts and the agents' processes, by node."""
    keys: dict[str, str] = {}
    hosts: dict[str, Host] = {}
    agents: dict[str, subprocess.Popen[bytes]] = {}
    for node in nodes:
        host = lab.add_host(node)
        host.start_wireguard()
        key_file = tmp_path / f"{node}.key"
        keys[node] = generate_private_key_file(key_file)
        hosts[node] = host
        argv = [*wgchain_command(), "agent", "--node", node, "--interface", host.ifname]
        argv += ["--private-key-file", str(key_file), "--config-dir", str(tmp_path / node)]
        argv += ["--listen-port", str(port), "--endpoint", f"{host.underlay_ip}:{port}"]
        agents[node] = host.spawn(argv, env=env, log_path=tmp_path / f"{node}.log")
    return keys, hosts, agents
