"""Adaptive eth_getLogs ranges: the pure sizer, and how providers' refusals are read."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.chain.answers import is_range_refusal, suggested_range
from shared.chain.answers import result as _result
from shared.chain.decode import LogRef
from shared.chain.ranges import INITIAL_RANGE, PROBE_AFTER, RangeSizer
from shared.chain.read import Read
from shared.errors import ChainError, LogRangeError

# --- the sizer ----------------------------------------------------------------------------


def test_starts_moderate_and_grows_by_doubling_up_to_the_maximum() -> None:
    sizer = RangeSizer(5000)
    assert sizer.size == INITIAL_RANGE < 5000
    sizes = []
    lo = 0
    for _ in range(6):
        hi = sizer.span(lo, 10**9)
        sizer.on_success(lo, hi)
        sizes.append(hi - lo + 1)
        lo = hi + 1
    assert sizes == [500, 1000, 2000, 4000, 5000, 5000]
    assert RangeSizer(3).size == 3  # a small maximum caps the start too


def test_a_range_cut_short_by_the_target_does_not_grow_the_size() -> None:
    sizer = RangeSizer(2000, initial=10)
    sizer.on_success(100, 102)  # 3 blocks: the tip, not a full range
    assert sizer.size == 10
    sizer.on_success(103, 112)
    assert sizer.size == 20


def test_a_smaller_suggestion_that_starts_at_lo_is_taken() -> None:
    sizer = RangeSizer(2000, initial=1000)
    sizer.on_refused(100, 1099, (100, 149))
    assert sizer.span(100, 10**9) == 149


@pytest.mark.parametrize(
    "suggestion",
    [
        (100, 1099),  # the same range back
        (100, 5000),  # larger than asked
        (90, 120),  # does not start at lo: would re-read (or skip) blocks
        (101, 120),
        None,
    ],
)
def test_other_suggestions_halve_the_range(suggestion: tuple[int, int] | None) -> None:
    sizer = RangeSizer(2000, initial=1000)
    sizer.on_refused(100, 1099, suggestion)
    assert sizer.span(100, 10**9) == 100 + 500 - 1


def test_never_below_one_block_and_a_refused_single_block_is_a_hard_error() -> None:
    sizer = RangeSizer(2000, initial=2)
    sizer.on_refused(7, 8, None)
    assert sizer.span(7, 100) == 7
    with pytest.raises(LogRangeError, match="blocks 7-7") as info:
        sizer.on_refused(7, 7, (7, 7))
    assert isinstance(info.value, ChainError)


def test_after_a_refusal_it_holds_its_size_for_a_while_then_probes() -> None:
    sizer = RangeSizer(2000, initial=1000)
    sizer.on_refused(0, 999, (0, 399))
    lo = 400
    for _ in range(PROBE_AFTER):
        hi = sizer.span(lo, 10**9)
        assert hi - lo + 1 == 400  # the provider's limit, not asked past it again...
        sizer.on_success(lo, hi)
        lo = hi + 1
    assert sizer.span(lo, 10**9) - lo + 1 == 800  # ...until enough successes: probe again


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        RangeSizer(0)
    with pytest.raises(ValueError):
        RangeSizer(5, minimum=6)


# --- property: contiguous, no overlap, terminates ----------------------------------------


@dataclass(frozen=True)
class Refuse:
    """Refuse the asked range; suggest one relative to it (``kind``)."""

    kind: str
    shift: int


ANSWERS = st.one_of(
    st.just("ok"),
    st.builds(
        Refuse,
        st.sampled_from(["none", "same", "larger", "smaller", "off_start", "inverted", "far"]),
        st.integers(0, 50),
    ),
)


def suggestion_for(answer: Refuse, lo: int, hi: int) -> tuple[int, int] | None:
    return {
        "none": None,
        "same": (lo, hi),
        "larger": (lo, hi + 1 + answer.shift),
        "smaller": (lo, lo + min(answer.shift, hi - lo - 1)) if hi > lo else (lo, lo),
        "off_start": (lo + 1 + answer.shift, hi + answer.shift),
        "inverted": (hi, lo),
        "far": (10**12, 10**12 + answer.shift),
    }[answer.kind]


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 10**6),
    length=st.integers(1, 3000),
    maximum=st.integers(1, 2500),
    initial=st.integers(1, 3000),
    answers=st.lists(ANSWERS, max_size=200),
)
def test_ranges_cover_start_to_target_contiguously_and_terminate(
    start: int, length: int, maximum: int, initial: int, answers: list[object]
) -> None:
    target = start + length - 1
    sizer = RangeSizer(maximum, initial=initial)
    covered: list[tuple[int, int]] = []
    script = iter(answers)
    lo = start
    calls = 0
    failed = False
    while lo <= target:
        calls += 1
        assert calls <= len(answers) + length  # each call either advances or uses a scripted answer
        hi = sizer.span(lo, target)
        assert lo <= hi <= target
        assert hi - lo + 1 <= maximum
        answer = next(script, "ok")
        if isinstance(answer, Refuse):
            try:
                sizer.on_refused(lo, hi, suggestion_for(answer, lo, hi))
            except LogRangeError:
                assert hi == lo  # only a single refused block is fatal
                failed = True
                break
            assert 1 <= sizer.size <= hi - lo  # strictly smaller than what was refused
            continue
        sizer.on_success(lo, hi)
        covered.append((lo, hi))
        lo = hi + 1
    # Contiguous from start, no gap, no overlap; complete unless a single block was refused.
    expected_lo = start
    for a, b in covered:
        assert a == expected_lo
        assert a <= b
        expected_lo = b + 1
    assert failed or expected_lo == target + 1


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 300),
    length=st.integers(1, 5000),
    maximum=st.integers(1, 2000),
    style=st.sampled_from(["none", "exact", "same", "larger"]),
)
def test_a_provider_with_a_fixed_limit_is_served_with_few_refusals(
    limit: int, length: int, maximum: int, style: str
) -> None:
    sizer = RangeSizer(maximum)
    lo, target, refusals, covered = 0, length - 1, 0, 0
    while lo <= target:
        hi = sizer.span(lo, target)
        if hi - lo + 1 > limit:
            refusals += 1
            suggestion = {
                "none": None,
                "exact": (lo, lo + limit - 1),
                "same": (lo, hi),
                "larger": (lo, hi + limit),
            }[style]
            sizer.on_refused(lo, hi, suggestion)
            continue
        sizer.on_success(lo, hi)
        covered += hi - lo + 1
        lo = hi + 1
    assert covered == length
    # Halving to the limit, then a probe past it once per PROBE_AFTER full reads at most.
    reads = length // max(1, min(limit, maximum) // 2) + 1
    assert refusals <= 12 + 2 * (reads // PROBE_AFTER + 1)


# --- how refusals are recognised ---------------------------------------------------------

ALCHEMY = (
    "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range "
    "and no limit on the response size, or you can request any block range with a cap of 10K "
    "logs in the response. Based on your parameters, this block range should work: [0x1, 0x2]"
)
INFURA = "query returned more than 10000 results. Try with this block range [0x1e8480, 0x1e84ff]."


@pytest.mark.parametrize(
    ("code", "message", "suggestion"),
    [
        (-32602, ALCHEMY, (1, 2)),
        (-32005, INFURA, (0x1E8480, 0x1E84FF)),
        (-32005, "limit exceeded", None),
        (-32602, "eth_getLogs is limited to a 10,000 range", None),
        (-32000, "block range too large", None),
        (-32000, "exceed maximum block range: 5000", None),
        (-32000, "range exceeds limit", None),
        (-32000, "response size exceeded", None),
        (-32000, "query returned more than 10,000 results; retry with [100, 199]", (100, 199)),
        (-32600, "eth_getLogs and eth_newFilter are limited to a 10000 blocks range", None),
        (-32000, "Query timeout exceeded. Consider reducing your block range.", None),
    ],
)
def test_provider_refusals_are_log_range_errors_with_their_suggestion(
    code: int, message: str, suggestion: tuple[int, int] | None
) -> None:
    assert is_range_refusal(code, message)
    reply = {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}
    with pytest.raises(LogRangeError) as info:
        _result(reply, "eth_getLogs")
    assert info.value.suggestion == suggestion


def test_other_errors_are_not_range_refusals() -> None:
    reply = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "invalid address"}}
    with pytest.raises(ChainError) as info:
        _result(reply, "eth_getLogs")
    assert not isinstance(info.value, LogRangeError)
    reply["error"] = {"code": -32000, "message": "block range too large"}
    with pytest.raises(ChainError) as again:
        _result(reply, "eth_call")  # only eth_getLogs refuses ranges
    assert not isinstance(again.value, LogRangeError)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("try [0x10, 0x20]", (16, 32)),
        ("try [16,32]", (16, 32)),
        ("try (16, 32)", (16, 32)),
        ("try [0x20, 0x10]", None),  # inverted: no suggestion
        ("try [0x" + "f" * 40 + ", 0x1]", None),  # absurd numbers are not read
        ("up to a 2K block range", None),
    ],
)
def test_suggested_range_parsing(message: str, expected: tuple[int, int] | None) -> None:
    assert suggested_range(message) == expected


def test_ranges_module_is_pure() -> None:
    probe = "import sys, shared.chain.ranges\nprint([m for m in sys.argv[1:] if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", probe, "redis", "web3", "subprocess", "requests"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def _log(block: int, index: int) -> tuple[LogRef, dict[str, str]]:
    return LogRef(block, index, "0x" + "ab" * 32, "0x" + "cd" * 32, "0x" + "01" * 20), {}


def test_parts_of_a_read_never_split_a_block() -> None:
    logs = [_log(b, i) for b, n in ((1, 3), (2, 1), (3, 2), (4, 1)) for i in range(n)]
    parts = Read(logs, {}).parts(2)
    assert [[ref.block_number for ref, _ in part] for part in parts] == [
        [1, 1, 1],
        [2, 3, 3],
        [4],
    ]
    assert Read([], {}).parts(2) == [[]]
    assert Read(logs, {}).parts(100) == [logs]
