"""The host's WireGuard key pair: X25519, base64, the private half in a 0600 file.

The private key is written once to a file created with mode 0600 and only ever
handed to ``wg`` as that file's path (``wg set IF private-key FILE``): it never
appears in argv, a log line, a config file, Redis, or a return value other than
:func:`read_private_key`'s (used to derive the public key in-process).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from consumers.agent import files
from shared.errors import KeyFileError
from shared.validate import is_valid_wg_key

#: Mode of a private key file (owner read/write only).
KEY_FILE_MODE: Final = 0o600
#: Largest private key file read (bytes); a key is 44 characters plus a newline.
MAX_KEY_FILE_BYTES: Final = 256

_RAW = serialization.Encoding.Raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key_of(private_b64: str) -> str:
    """The base64 public key of a base64 private key (raises :class:`KeyFileError`)."""
    try:
        raw = base64.b64decode(private_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("private key is not base64") from None
    if len(raw) != 32:
        raise KeyFileError("private key does not decode to 32 bytes")
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return _b64(public.public_bytes(_RAW, serialization.PublicFormat.Raw))


def generate_private_key_file(path: str | Path, *, overwrite: bool = False) -> str:
    """Create ``path`` (mode 0600) holding a new base64 private key; returns the public key.

    Refuses an existing file unless ``overwrite``; an overwrite goes through a temp
    file in the same directory and a rename, so the old key stays whole until then.
    """
    path = Path(path)
    key = X25519PrivateKey.generate()
    private = _b64(
        key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    )
    public = _b64(key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))
    target = path.with_name(f".{path.name}.new") if overwrite else path
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already (refusing to overwrite a private key)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # the umask may have removed bits; never added any
        os.write(fd, (private + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        os.replace(target, path)
    return public


def read_private_key(path: str | Path) -> str:
    """The base64 private key in ``path``, after checking the file is private (0600 or stricter)."""
    path = Path(path)
    try:
        data = files.read_private(path, MAX_KEY_FILE_BYTES)
    except files.NotPrivate as exc:
        hint = "; it must not be readable by group or others (chmod 600)" if exc.about_mode else ""
        raise KeyFileError(f"private key file {path} {exc}{hint}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open private key file {path}: {exc.strerror}") from None
    if data is None:
        raise KeyFileError(f"private key file {path} does not exist")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"private key file {path} is not base64 text") from None
    public_key_of(text)  # validates the format without echoing the content
    return text


def public_key_from_file(path: str | Path) -> str:
    """The public key of the private key in ``path`` (checks the file's mode first)."""
    public = public_key_of(read_private_key(path))
    if not is_valid_wg_key(public):  # an all-zero key would be a broken private key
        raise KeyFileError(f"private key file {path} holds an unusable key")
    return public
