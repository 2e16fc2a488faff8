"""Every error wgchain raises on purpose derives from :class:`WgchainError`."""

from __future__ import annotations


class WgchainError(Exception):
    """Raised when wgchain refuses to go on; the root of every deliberate error."""

    #: The exit code of a command that ends with it (one line on stderr, ``wgchain: …``).
    exit_code: int = 1


class SettingsError(WgchainError):
    """Raised when a setting (flag, ``WGCHAIN_*`` variable or TOML key) or an argument is bad.

    ``setting`` names it as the user gave it: an option (``--to``: the message reads
    ``--to: <problem>``), a variable (``invalid setting WGCHAIN_POOL: <problem>``) or a
    key of the TOML file.
    """

    exit_code = 2

    def __init__(self, setting: str, message: str) -> None:
        if setting.startswith("-"):
            super().__init__(f"{setting}: {message}")
        else:
            super().__init__(f"invalid setting {setting}: {message}")
        self.setting = setting
        self.problem = message

    @property
    def is_argument(self) -> bool:
        """True when it names a command-line option or argument (the user typed it)."""
        return self.setting.startswith("-")


class BadArgument(SettingsError):
    """Raised when a command-line argument is malformed: ``<name>: <problem>``, exit 2.

    ``name`` is the argument as the help shows it (``IDENT``, ``--until``).
    """

    def __init__(self, name: str, message: str) -> None:
        WgchainError.__init__(self, f"{name}: {message}")
        self.setting = name
        self.problem = message

    @property
    def is_argument(self) -> bool:
        return True


class DecodeError(WgchainError):
    """Raised when a stream entry or a chain log cannot be decoded."""


class CommitConflict(WgchainError):
    """Raised when a stage's atomic commit finds that its stored position moved under it."""


class Fenced(CommitConflict):
    """Raised when a listener's append is refused because its lease is no longer held.

    Unlike a plain :class:`CommitConflict` (reload the cursor and go on), this ends the
    listener's term: another listener holds the lease now.
    """


class ChainError(WgchainError):
    """Raised when the chain (JSON-RPC) answers with an error that retrying will not fix."""


class ServiceUnavailable(WgchainError):
    """Raised when a service wgchain needs (Redis, an RPC node, ``wg``) cannot be reached."""


class NoAnswer(ServiceUnavailable):
    """Raised when a read cannot be answered (Redis unreachable, no data for this network).

    A read command then exits 3, the "unknown" of ``check`` and ``status --check``: not an
    answer, and not a bad argument either.
    """

    exit_code = 3


class WireGuardError(WgchainError):
    """Raised when a ``wg`` or ``ip`` command fails or the interface disagrees after an apply."""


class BuildError(WgchainError):
    """Raised when the bundled contract does not compile (solc reports an error)."""


class LogRangeError(ChainError):
    """Raised when a provider refuses an ``eth_getLogs`` block range (too wide, too many results).

    ``suggestion`` is the ``(from, to)`` range the provider proposed instead, if any.
    """

    def __init__(self, message: str, suggestion: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.suggestion = suggestion


class KeyFileError(WgchainError):
    """Raised when a private key file is missing, malformed, readable by others, or exists already."""


class UnsupportedRedis(WgchainError):
    """Raised when the Redis server lacks a feature a command needs (e.g. ACL ``%R~`` needs 7.0)."""
