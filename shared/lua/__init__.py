"""Every Lua script wgchain runs inside Redis, one ``.lua`` file each, in this folder.

A script is what makes a multi-key step atomic (a stage's commit, the listener's fenced
append, a lease take-over) or one round trip (status, probes); each file starts with a
comment naming its KEYS and ARGV. Code loads them by name::

    _APPEND: Final = lua.source("listener_append")
    self._append = client.register_script(_APPEND)

``tests/unit/test_lua.py`` checks that every file here is used and every name used exists.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["names", "source"]


@functools.cache
def source(name: str) -> str:
    """The text of ``<name>.lua`` (read once per process)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def names() -> list[str]:
    """The names of every script in this folder, sorted."""
    return sorted(
        p.name.removesuffix(".lua")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".lua")
    )
