"""One vocabulary: every component names decisions and reasons with ``shared/reasons.py``."""

from __future__ import annotations

from consumers.access import decide
from consumers.agent import desired
from consumers.api.schemas import NodeSummary, openapi
from consumers.nodes.findings import CODES
from shared import reasons, validate


def test_decisions_use_the_vocabulary() -> None:
    assert set(decide.REASONS) <= set(reasons.MEANINGS)
    assert "key-invalid" not in decide.REASONS  # the old names are gone
    assert "conflict" not in decide.REASONS


def test_the_agent_fails_closed_with_the_vocabulary() -> None:
    fail_closed = {
        desired.NOT_LIVE,
        desired.KEY_MISMATCH,
        desired.NO_OWN_KEY,
        desired.ADDRESS_OUTSIDE_POOL,
        desired.BAD_NODE_ID,
        desired.EXPIRED,
    }
    assert fail_closed == set(reasons.FAIL_CLOSED_REASONS)
    assert desired.NOT_LIVE == "not-live"


def test_the_registrys_reasons_are_in_it() -> None:
    assert validate.key_problem("") == reasons.NO_KEY
    assert validate.key_problem("nope") == reasons.INVALID_KEY
    for code in (*reasons.NOT_LIVE_REASONS, *reasons.LEFT_REASONS, *reasons.ISSUE_REASONS):
        assert reasons.meaning(code), code


def test_the_api_documents_every_code() -> None:
    text = openapi("0", auth=False)["info"]["description"]
    for code, meaning in reasons.MEANINGS.items():
        assert f"{code}: {meaning}" in text
    assert NodeSummary.__struct_fields__  # the struct whose ``reason`` they name


def test_diagnose_codes_do_not_shadow_the_vocabulary() -> None:
    assert not set(CODES) & set(reasons.MEANINGS)
