#!/usr/bin/env python3
"""The compose topology's helpers, installed in the image as ``wgchain-compose``.

``wgchain-compose secrets``: the one-shot ``setup`` service. It fills the ``secrets`` volume
(mounted read-only at /run/wgchain by every other service) once, and keeps it on later runs:

- ``redis-password``: the Redis password (the ``redis-password`` compose secret, i.e.
  ``REDIS_PASSWORD`` from compose/.env, or else a random one made on the first run);
- ``redis.acl``: Redis's ACL file, the default user with the password's SHA-256 only;
- ``api-token``: the API's bearer token (``WGCHAIN_API_TOKEN``, or a random one);
- ``wgchain.toml``: the settings file every wgchain process reads (``WGCHAIN_CONFIG``):
  ``redis_url`` with the password percent-escaped, and ``api_token``.

No secret ever goes on a command line or into a container's environment (``docker inspect``).

``wgchain-compose deploy``: the local profile's one-shot deploy, idempotent: when the
contract already has code at ``WGCHAIN_CONTRACT`` (anvil keeps its state in a volume) it
does nothing; otherwise it deploys and checks that the contract landed at that address.

``wgchain-compose healthcheck URL``: exits 0 when ``URL`` answers 200; otherwise prints the
reason (the body of a 503) for ``docker inspect`` and exits 1.

``wgchain-compose healthcheck-worker``: exits 0 when this container's rq worker is registered
in Redis (its registration expires when its heartbeats stop); otherwise prints why, exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

#: Where the ``secrets`` volume is mounted.
SECRETS = Path("/run/wgchain")
#: Where compose mounts the ``secrets:`` of a service.
COMPOSE_SECRETS = Path("/run/secrets")
#: uid of the image's unprivileged ``wgchain`` user (compose/Dockerfile).
WGCHAIN_UID = 10001
#: uid redis-server runs as in the official redis image (root elsewhere reads it anyway).
REDIS_UID = 999
#: Redis as the other services reach it.
REDIS_HOST = "redis:6379"


def _given(name: str) -> str:
    """A compose secret's value ("" when absent or empty)."""
    try:
        return (COMPOSE_SECRETS / name).read_text().strip()
    except OSError:
        return ""


def _kept(name: str) -> str:
    try:
        return (SECRETS / name).read_text().strip()
    except OSError:
        return ""


def _write(name: str, text: str, uid: int) -> None:
    path = SECRETS / name
    tmp = path.with_name(f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chown(tmp, uid, -1)
    os.replace(tmp, path)


def _secret(name: str) -> tuple[str, str]:
    """(value, where it came from): the compose secret, else the kept one, else a new one."""
    if value := _given(name):
        return value, "from the compose secret"
    if value := _kept(name):
        return value, "kept"
    return secrets.token_urlsafe(32), "generated"


def cmd_secrets() -> int:
    password, password_from = _secret("redis-password")
    token, token_from = _secret("api-token")
    if any(c in password for c in "\r\n") or any(c in token for c in "\r\n"):
        print("wgchain-compose: secrets must be one line", file=sys.stderr)
        return 2
    digest = hashlib.sha256(password.encode()).hexdigest()
    _write("redis-password", password + "\n", REDIS_UID)
    _write("redis.acl", f"user default on #{digest} ~* &* +@all\n", REDIS_UID)
    _write("api-token", token + "\n", WGCHAIN_UID)
    url = f"redis://:{quote(password, safe='')}@{REDIS_HOST}/0"
    # json.dumps makes a valid TOML basic string (same escapes).
    toml = f"redis_url = {json.dumps(url)}\napi_token = {json.dumps(token)}\n"
    _write("wgchain.toml", toml, WGCHAIN_UID)
    print(f"secrets ready: Redis password {password_from}, API token {token_from}")
    return 0


def _has_code(rpc_url: str, address: str) -> bool:
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getCode", "params": [address, "latest"]}
    request = urllib.request.Request(  # noqa: S310 (our own setting)
        rpc_url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (our own setting)
        code = json.load(response).get("result") or "0x"
    return code not in ("0x", "0x0")


def cmd_deploy() -> int:
    rpc_url = os.environ.get("WGCHAIN_RPC_URL", "http://anvil:8545").split(",")[0]
    address = os.environ.get("WGCHAIN_CONTRACT", "")
    if address and _has_code(rpc_url, address):
        print(f"contract already deployed at {address}; nothing to do")
        return 0
    out = subprocess.run(
        ["wgchain", "--log-json", "contract", "deploy", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        return out.returncode
    print(out.stdout.strip())
    deployed = str(json.loads(out.stdout).get("address", ""))
    if address and deployed.lower() != address.lower():
        print(
            f"wgchain-compose: deployed at {deployed}, but WGCHAIN_CONTRACT is {address}: "
            "nothing watches the new contract (anvil's first deployment lands at "
            "0x5FbDB2315678afecb367f032d93F642f64180aa3 on a fresh chain)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_healthcheck(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (fixed URL)
            response.read()
            return 0
    except urllib.error.HTTPError as exc:
        reason = exc.read().decode(errors="replace").strip()[:500]
        print(f"{url}: {exc.code} {reason}")
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
    return 1


def cmd_healthcheck_worker() -> int:
    import socket

    import redis
    from rq import Worker

    from shared.settings import load

    try:
        client = redis.Redis.from_url(load().redis_url, socket_timeout=5)
        names = [w.name for w in Worker.all(connection=client)]
    except Exception as exc:  # any failure is the answer: unhealthy, with the reason
        print(f"cannot list the rq workers: {type(exc).__name__}: {exc}")
        return 1
    mine = [n for n in names if n.startswith(f"{socket.gethostname()}-")]
    if not mine:
        print(f"no rq worker of this container is registered ({len(names)} others are)")
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["secrets"]:
        return cmd_secrets()
    if argv[:1] == ["deploy"]:
        return cmd_deploy()
    if argv[:1] == ["healthcheck"] and len(argv) == 2:
        return cmd_healthcheck(argv[1])
    if argv == ["healthcheck-worker"]:
        return cmd_healthcheck_worker()
    print(
        "usage: wgchain-compose secrets | deploy | healthcheck URL | healthcheck-worker",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
