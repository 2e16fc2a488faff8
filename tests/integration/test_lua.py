"""The Lua scripts in ``shared/lua/``: each used, each documented, each accepted by Redis."""

from __future__ import annotations

import re
from pathlib import Path

import redis

from shared import lua

ROOT = Path(__file__).resolve().parents[2]
USED = re.compile(r'lua\.source\("([a-z0-9_]+)"\)')


def _used() -> set[str]:
    found: set[str] = set()
    for package in ("shared", "producers", "consumers"):
        for path in (ROOT / package).rglob("*.py"):
            found.update(USED.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_script_is_used_and_every_name_exists() -> None:
    on_disk = set(lua.names())
    assert on_disk, "no scripts found in shared/lua"
    used = _used()
    assert used - on_disk == set(), "lua.source() of a script that does not exist"
    assert on_disk - used == set(), "a script in shared/lua that no code loads"


def test_no_inline_scripts_left() -> None:
    inline = [
        str(path.relative_to(ROOT))
        for package in ("shared", "producers", "consumers")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"redis\.call\(", path.read_text(encoding="utf-8"))
    ]
    assert inline == [], "Lua written inline instead of in shared/lua/"


def test_each_script_names_its_keys_and_argv() -> None:
    for name in lua.names():
        first = lua.source(name).lstrip().splitlines()[0]
        assert first.startswith("-- KEYS"), f"{name}.lua does not start with its KEYS comment"


def test_redis_accepts_every_script(redis_client: redis.Redis) -> None:
    for name in lua.names():
        sha = redis_client.script_load(lua.source(name))
        assert redis_client.script_exists(sha) == [True], name
