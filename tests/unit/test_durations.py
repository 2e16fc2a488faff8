"""Durations typed by people (``wgchain contract mint|renew --duration``), and as shown."""

from __future__ import annotations

import pytest

from shared.durations import duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 1),
        ("3600", 3600),
        ("45s", 45),
        ("90m", 5400),
        ("12h", 43_200),
        ("30d", 2_592_000),
        ("2w", 1_209_600),
        ("1d12h", 129_600),
        ("1w2d3h4m5s", 604_800 + 2 * 86_400 + 3 * 3600 + 4 * 60 + 5),
        (" 30D ", 2_592_000),
        ("18446744073709551615", 2**64 - 1),
    ],
)
def test_parses(text: str, seconds: int) -> None:
    assert parse_duration(text, 2**64 - 1) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0", "zero"),
        ("0d", "zero"),
        ("-5", "not a duration"),
        ("5x", "not a duration"),
        ("d", "not a duration"),
        ("1.5d", "not a duration"),
        ("1d 2h", "not a duration"),
        ("30d;rm", "not a duration"),
        ("1" * 70, "too long"),
        ("18446744073709551616", "over the largest"),
        ("99999999999999w", "over the largest"),
        ("\x1b[2J", "not a duration"),
    ],
)
def test_refuses_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_duration(text, 2**64 - 1)
    assert "\x1b" not in str(err.value)


def test_shows() -> None:
    assert [duration(s) for s in (-1, 42, 185, 7440)] == ["0s", "42s", "3m05s", "2h04m"]
