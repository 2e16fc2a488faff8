from __future__ import annotations

import pytest

from shared.errors import SettingsError
from shared.settings import FIELDS, Settings, load


def test_precedence_flag_over_env_over_file(tmp_path):
    conf = tmp_path / "wgchain.toml"
    conf.write_text('confirmations = 7\npool = "10.9.0.0/16"\nstart-block = 5\n')
    env = {"WGCHAIN_CONFIRMATIONS": "3"}
    cfg = load({"start_block": 11}, config_file=conf, environ=env)
    assert cfg.confirmations == 3  # env beats file
    assert cfg.pool == "10.9.0.0/16"  # file beats default
    assert cfg.start_block == 11  # flag beats file


def test_toml_wgchain_table_and_unknown_key(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[wgchain]\nkeepalive = 0\n")
    assert load(config_file=conf, environ={}).keepalive == 0
    conf.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="colour"):
        load(config_file=conf, environ={})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WGCHAIN_CONFIRMATIONS": "many"}, "WGCHAIN_CONFIRMATIONS"),
        ({"WGCHAIN_CONFIRMATIONS": "-1"}, "WGCHAIN_CONFIRMATIONS"),
        ({"WGCHAIN_POOL": "10.0.0.1/8"}, "WGCHAIN_POOL"),
        ({"WGCHAIN_POOL": "10.0.0.0/31"}, "WGCHAIN_POOL"),
        ({"WGCHAIN_POOL6": "2001:db8::/64"}, "WGCHAIN_POOL6"),
        ({"WGCHAIN_CONTRACT": "0x123"}, "WGCHAIN_CONTRACT"),
        ({"WGCHAIN_REDIS_URL": "http://x"}, "WGCHAIN_REDIS_URL"),
        ({"WGCHAIN_RPC_URL": "ftp://x"}, "WGCHAIN_RPC_URL"),
        ({"WGCHAIN_LOG_LEVEL": "LOUD"}, "WGCHAIN_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_setting(env, named):
    with pytest.raises(SettingsError) as info:
        load(environ=env)
    assert str(info.value).startswith(f"invalid setting {named}:")


def test_keys_need_contract_and_chain_id():
    with pytest.raises(SettingsError, match="WGCHAIN_CONTRACT"):
        Settings().keys()
    cfg = load(
        environ={"WGCHAIN_CONTRACT": "0x" + "Ab" * 20, "WGCHAIN_CHAIN_ID": "8453"},
    )
    keys = cfg.keys()
    assert keys.events == "wgchain:{8453:0x" + "ab" * 20 + "}:events"
    assert {keys.events.split("}")[0], keys.peers.split("}")[0]} == {keys.events.split("}")[0]}


def test_every_field_has_an_env_name():
    assert all(f.islower() for f in FIELDS)
    assert load(environ={f"WGCHAIN_{f.upper()}": "" for f in ("pool6", "endpoint_template")})


def test_expiry_settings_default_and_parse():
    cfg = load(environ={})
    assert (cfg.expiry_grace, cfg.expiry_warning) == (2.0, 86400.0)
    env = {"WGCHAIN_EXPIRY_GRACE": "0.5", "WGCHAIN_EXPIRY_WARNING": "0"}
    cfg = load(environ=env)
    assert (cfg.expiry_grace, cfg.expiry_warning) == (0.5, 0.0)
    assert load({"expiry_grace": 3600}, environ={}).expiry_grace == 3600.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WGCHAIN_EXPIRY_GRACE": "-1"}, "between 0 and 3600"),
        ({"WGCHAIN_EXPIRY_GRACE": "3601"}, "between 0 and 3600"),
        ({"WGCHAIN_EXPIRY_GRACE": "nan"}, "between 0 and 3600"),
        ({"WGCHAIN_EXPIRY_GRACE": "soon"}, "not a number"),
        ({"WGCHAIN_EXPIRY_WARNING": "-5"}, "a year"),
        ({"WGCHAIN_EXPIRY_WARNING": "inf"}, "a year"),
        ({"WGCHAIN_EXPIRY_WARNING": "1d"}, "not a number"),
    ],
)
def test_bad_expiry_settings_name_the_variable(env, message):
    (name,) = env
    with pytest.raises(SettingsError, match=message) as err:
        load(environ=env)
    assert f"invalid setting {name}: " in str(err.value)
