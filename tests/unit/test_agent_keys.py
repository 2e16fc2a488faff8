"""The host key pair: a 0600 private key file, never overwritten by accident."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from consumers.agent.keys import (
    generate_private_key_file,
    public_key_from_file,
    public_key_of,
    read_private_key,
)
from shared.errors import KeyFileError
from shared.validate import is_valid_wg_key


def test_generate_writes_a_0600_file_and_returns_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "wg.key"
    old_umask = os.umask(0)
    try:
        public = generate_private_key_file(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert is_valid_wg_key(public)
    assert public_key_from_file(path) == public
    assert public_key_of(read_private_key(path)) == public


def test_generate_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "wg.key"
    first = generate_private_key_file(path)
    with pytest.raises(KeyFileError, match="exists"):
        generate_private_key_file(path)
    assert public_key_from_file(path) == first
    second = generate_private_key_file(path, overwrite=True)
    assert second != first
    assert public_key_from_file(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wg.key"
    generate_private_key_file(path)
    private = read_private_key(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600") as err:
        public_key_from_file(path)
    assert private not in str(err.value)


def test_malformed_key_file_error_does_not_echo_content(tmp_path: Path) -> None:
    path = tmp_path / "wg.key"
    path.write_text("secret-but-not-a-key\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as err:
        public_key_from_file(path)
    assert "secret-but-not-a-key" not in str(err.value)
