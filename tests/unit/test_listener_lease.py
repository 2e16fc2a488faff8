"""The pure parts of horizontal listeners and newHeads: shares, names, URLs, ``--network``."""

from __future__ import annotations

import os
import socket

import pytest

from producers.listener.commands import parse_network
from producers.listener.lease import fair_share, listener_id, registry_key
from shared.chain.answers import split_urls
from shared.cli import main
from shared.errors import SettingsError
from shared.keys import Keys

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(autouse=True)
def _no_wgchain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WGCHAIN_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("networks", "live", "share"),
    [(1, 1, 1), (1, 3, 1), (2, 1, 2), (2, 2, 1), (3, 2, 2), (5, 2, 3), (2, 3, 1), (4, 0, 4)],
)
def test_fair_share_covers_every_network_and_never_more_than_needed(
    networks: int, live: int, share: int
) -> None:
    assert fair_share(networks, live) == share
    assert share * max(1, live) >= networks  # all shares together cover every network
    assert (share - 1) * max(1, live) < networks


def test_registry_key_depends_on_the_set_of_networks_only() -> None:
    a, b = Keys(8453, "0x" + "a" * 40), Keys(8453, "0x" + "b" * 40)
    assert registry_key([a, b]) == registry_key([b, a]) == registry_key([a, b, a])
    assert registry_key([a]) != registry_key([a, b])
    assert registry_key([a]).startswith("wgchain:listeners:{")
    assert registry_key([Keys(8453, a.contract, prefix="audit")]).startswith("audit:")


def test_listener_id_defaults_to_host_and_pid() -> None:
    assert listener_id("") == f"{socket.gethostname()}:{os.getpid()}"
    assert listener_id("eu-1") == "eu-1"


def test_parse_network() -> None:
    assert parse_network(f" 8453:{CONTRACT} ") == (8453, CONTRACT.lower())
    for bad in ("8453", f"0:{CONTRACT}", f"x:{CONTRACT}", "8453:0x12", f"8453:{CONTRACT}:1"):
        with pytest.raises(SettingsError, match="--network"):
            parse_network(bad)


def test_split_urls_keeps_calls_on_http_and_heads_on_ws() -> None:
    urls = ["ws://a:1", "https://b/key", "wss://c/key", "http://d:2"]
    assert split_urls(urls) == (["https://b/key", "http://d:2"], ["ws://a:1", "wss://c/key"])
    with pytest.raises(SettingsError, match=r"WGCHAIN_RPC_URL.*http\(s\)"):
        split_urls(["ws://a:1"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--network", "8453"], "--network"),
        (["--contract", CONTRACT, "--rpc-url", "ws://127.0.0.1:1"], "WGCHAIN_RPC_URL"),
    ],
)
def test_listen_rejects_bad_networks_and_ws_only_urls_in_one_line(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["listen", "--redis-url", "redis://127.0.0.1:1/0", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
