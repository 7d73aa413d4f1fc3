"""The error tree every user-facing failure goes through, with its exit code.

Anything that is not a MeshctlError is a bug and may print a traceback; a
MeshctlError prints one line (plus an optional hint) and exits with its code.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # runtime failure: network down, wireguard-go missing, ...
EXIT_USAGE: Final = 2  # usage or bad input
EXIT_REFUSED: Final = 3  # verification refused: forged, rolled back, expired
EXIT_DENIED: Final = 4  # `meshctl acl check`: the policy was evaluated, and the answer is no


class MeshctlError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MeshctlError):
    """Bad arguments or bad input files given by the user."""

    exit_code = EXIT_USAGE


class VerificationError(MeshctlError):
    """The coordination state was refused: bad signature, rollback, expiry, ..."""

    exit_code = EXIT_REFUSED


class ParseError(UsageError):
    """A document or packet could not be parsed; the message names where and why."""


class GitError(MeshctlError):
    """The repository could not be fetched, cloned or pushed."""
