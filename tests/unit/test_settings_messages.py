"""Settings errors name the value where the user gave it, in words; unknown variables are
warned about by name; every setting flag's help says what it means and its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cmdline import field_docs, setting_help
from shared.errors import SettingsError
from shared.settings import FIELDS, OTHER_VARIABLES, env_name, load, unknown_variables


def _error(**kwargs: object) -> str:
    with pytest.raises(SettingsError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WGCHAIN_CHAIN_ID", "abc", "invalid setting WGCHAIN_CHAIN_ID: 'abc' is not a whole number"),
        ("WGCHAIN_POLL_INTERVAL", "soon", "invalid setting WGCHAIN_POLL_INTERVAL: 'soon' is not a number"),
        ("WGCHAIN_LOG_JSON", "maybe", "invalid setting WGCHAIN_LOG_JSON: 'maybe' is not true or false"),
        ("WGCHAIN_KEEPALIVE", "100000", "invalid setting WGCHAIN_KEEPALIVE: 100000 is over WireGuard's 65535"),
        ("WGCHAIN_REDIS_URL", "redis://127.0.0.1:6379/abc", "invalid setting WGCHAIN_REDIS_URL: database 'abc' is not a number"),
        ("WGCHAIN_REDIS_URL", "unix:///run/redis.sock?db=x", "invalid setting WGCHAIN_REDIS_URL: database 'x' is not a number"),
        ("WGCHAIN_REDIS_URL", "redis://127.0.0.1:port/0", "invalid setting WGCHAIN_REDIS_URL: Port could not be cast"),
        ("WGCHAIN_REDIS_URL", "redis+cluster://h:6379/2", "invalid setting WGCHAIN_REDIS_URL: a Redis Cluster has only database 0"),
        ("WGCHAIN_RECONCILE_INTERVAL", "0", "invalid setting WGCHAIN_RECONCILE_INTERVAL: must be a positive"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_one_human_line_naming_it(
    variable: str, value: str, message: str
) -> None:
    assert _error(environ={variable: value}).startswith(message)


@pytest.mark.parametrize(
    "env",
    [
        {"WGCHAIN_KEEPALIVE": "65535"},
        {"WGCHAIN_KEEPALIVE": "0"},
        {"WGCHAIN_REDIS_URL": "redis://127.0.0.1:6379/3"},
        {"WGCHAIN_REDIS_URL": "redis://127.0.0.1:6379"},
        {"WGCHAIN_REDIS_URL": "unix:///run/redis.sock?db=2"},
        {"WGCHAIN_REDIS_URL": "rediss://u:p@h:6380/0?ssl_ca_certs=/ca.pem"},
        {"WGCHAIN_CHAIN_ID": "8453"},
    ],
)
def test_good_values_still_load(env: dict[str, str]) -> None:
    load(environ=env)


def test_a_toml_value_is_named_by_its_key_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "wgchain.toml"
    conf.write_text("reconcile-interval = -5\n")
    assert _error(config_file=conf, environ={}) == (
        f"invalid setting reconcile-interval in {conf}: must be a positive number of seconds"
    )
    conf.write_text('chain_id = "abc"\n')
    assert _error(config_file=conf, environ={}).startswith(f"invalid setting chain_id in {conf}:")
    conf.write_text("confirmation = 5\n")
    assert _error(config_file=conf, environ={}) == (
        f"invalid setting confirmation in {conf}: unknown setting (did you mean confirmations?)"
    )


def test_a_flag_value_is_named_by_its_flag() -> None:
    assert _error(overrides={"pool": "10.0.0.0/33"}, environ={}).startswith("--pool: ")
    assert _error(overrides={"keepalive": 70000}, environ={}).startswith("--keepalive: ")
    # the variable is overridden by the flag: the flag is what is wrong
    message = _error(overrides={"chain_id": "x"}, environ={"WGCHAIN_CHAIN_ID": "1"})
    assert message == "--chain-id: 'x' is not a whole number"


def test_unknown_variables_are_named_with_the_closest_setting() -> None:
    warnings = unknown_variables(
        {"WGCHAIN_CONFIRMATION": "5", "WGCHAIN_REDISURL": "x", "WGCHAIN_ZQXJ": "1", "PATH": "/bin"}
    )
    assert warnings == [
        "WGCHAIN_CONFIRMATION is not a wgchain setting (did you mean WGCHAIN_CONFIRMATIONS?); ignored",
        "WGCHAIN_REDISURL is not a wgchain setting (did you mean WGCHAIN_REDIS_URL?); ignored",
        "WGCHAIN_ZQXJ is not a wgchain setting; ignored",
    ]
    known = {env_name(f): "" for f in FIELDS} | dict.fromkeys(OTHER_VARIABLES, "")
    assert unknown_variables(known) == []


def test_every_setting_flag_says_what_it_means_and_its_default() -> None:
    docs = field_docs()
    assert set(docs) == set(FIELDS), "give every Settings field a #: comment"
    for field in FIELDS:
        text = setting_help(field, docs)
        assert text.startswith(docs[field]), field
        assert f"[env {env_name(field)}; default: " in text, field
    assert setting_help("keepalive").endswith("[env WGCHAIN_KEEPALIVE; default: 25]")
    assert "default: embedded for run and demo" in setting_help("redis_url")
