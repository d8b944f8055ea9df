"""Errors a user can fix, and how the command line reports them.

Every anticipated failure (a malformed cache, a checkpoint that does not fit, a bad option) raises a
:class:`UserError` subclass whose message reads ``<file>: <field>: <what to do>``. The
command line prints it as the single line ``error: <message>`` and exits with :data:`EXIT_USER_ERROR`;
``--traceback`` (or ``TOKEN_REDUCTION_TRACEBACK=1``) shows the whole trace instead.
"""

from __future__ import annotations

import os

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "TOKEN_REDUCTION_TRACEBACK"


class UserError(ValueError):
    """Something the user gave us is wrong in a way they can fix; the message says where and how."""

    def __init__(self, where: object, field: str | None, fix: str) -> None:
        self.where, self.field, self.fix = str(where), field, fix
        super().__init__(": ".join(part for part in (self.where, field, fix) if part))


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, or was trained for other features than the ones given."""


def wants_traceback(argv: list[str]) -> tuple[bool, list[str]]:
    """Strip ``--traceback`` from ``argv``; also on when the environment variable is set."""
    rest = [arg for arg in argv if arg != "--traceback"]
    return len(rest) != len(argv) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"), rest
