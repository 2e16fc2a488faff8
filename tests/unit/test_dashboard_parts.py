"""The dashboard's pure parts: tunnel counting, the chain-head cache, the packaged files."""

from __future__ import annotations

import re
import threading
from importlib import resources

import pytest

from consumers.api.head import ChainHead
from consumers.dashboard import assets
from consumers.dashboard.topology import live_hubs, tunnels

LIVE = ["a", "b", "c", "d", "e"]


def test_a_mesh_has_a_tunnel_per_pair() -> None:
    assert tunnels("mesh", [], LIVE) == 10
    assert tunnels("mesh", [], []) == 0
    assert tunnels("mesh", [], ["a"]) == 0
    assert tunnels("mesh", ["a"], LIVE) == 10, "hubs mean nothing in a mesh"


def test_hubs_peer_with_everyone_and_spokes_only_with_hubs() -> None:
    assert tunnels("hub", ["a"], LIVE) == 4
    assert tunnels("hub", ["a", "b"], LIVE) == 1 + 2 * 3
    assert tunnels("hub", ["a", "zz"], LIVE) == 4, "a hub that is not live carries nothing"
    assert tunnels("hub", ["zz"], LIVE) == 0, "no live hub: spokes have no peers"
    assert live_hubs("hub", ["zz", "b", "a"], LIVE) == ["b", "a"], "in order of preference"
    assert live_hubs("mesh", ["a"], LIVE) == []


def test_the_chain_head_is_asked_once_per_ttl_in_the_background() -> None:
    asked: list[list[str]] = []
    release = threading.Event()

    def ask(urls: list[str]) -> int | None:
        asked.append(urls)
        release.wait(5)
        return 42

    head = ChainHead(["http://rpc"], ttl=3600, ask=ask)
    release.set()
    assert head.latest() == 42
    assert head.latest() == 42
    assert asked == [["http://rpc"]], "a second request within the ttl asks nobody"
    assert ChainHead([], ask=ask).latest() is None


def test_an_unreachable_node_reads_as_unknown_not_as_an_old_head() -> None:
    answers = iter([7])
    head = ChainHead(["http://rpc"], ttl=0, ask=lambda urls: next(answers, None))
    assert head.latest() == 7
    for _ in range(200):
        if head.latest() is None:
            break
        threading.Event().wait(0.01)
    assert head.latest() is None


def test_every_packaged_file_is_served_and_every_import_resolves() -> None:
    static = resources.files("consumers.dashboard") / "static"
    names = {p.name for p in static.iterdir()}
    assert names == {*assets.MEDIA_TYPES, assets.INDEX}
    for name in names:
        text = (static / name).read_text("utf-8")
        for target in re.findall(r"from '\./([\w.-]+)'", text):
            assert target in assets.MEDIA_TYPES, f"{name} imports {target}, which is not served"
        assert "http://" not in text.replace("http://www.w3.org/", ""), f"{name} names an origin"
        assert "https://" not in text, f"{name} loads from another origin"


@pytest.mark.parametrize(("auth", "mark"), [(True, "bearer"), (False, "none")])
def test_the_page_says_whether_to_ask_for_a_token(auth: bool, mark: str) -> None:
    page, media = assets.load(auth)[assets.INDEX]
    assert media.startswith("text/html")
    assert f'<meta name="wgchain-auth" content="{mark}">' in page.decode()
    assert assets.AUTH_MARK not in page.decode()


def test_a_node_that_answers_at_once_gives_the_head_of_now() -> None:
    heads = iter(range(1, 100))
    head = ChainHead(["http://rpc"], ttl=0, ask=lambda urls: next(heads))
    assert [head.latest() for _ in range(3)] == [1, 2, 3], "not the answer of the last request"
