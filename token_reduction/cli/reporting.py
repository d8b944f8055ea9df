"""How every command reports a mistake: one line, ``error: <file>: <field>: <what to do>``, exit code 2.

Anticipated failures (a bad option, a malformed cache, an unreadable checkpoint, a missing optional
dependency) are printed in one line; ``--traceback`` anywhere on the command line, or
``TOKEN_REDUCTION_TRACEBACK=1``, shows the whole trace instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, NoReturn

from token_reduction.errors import EXIT_USER_ERROR, UserError, wants_traceback

# ValueError covers UserError and CacheError; OSError covers missing and unreadable files;
# argparse.ArgumentError is what jsonargparse (LightningCLI) raises with exit_on_error=False.
ANTICIPATED: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, argparse.ArgumentError)

Main = Callable[[list[str]], int]


class UsageError(UserError):
    """A command line that does not parse: unknown option, missing or malformed value."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, None, f"{message} (see --help)")


def one_line(message: object) -> str:
    """Collapse a multi-line message (jsonargparse, torch) into one line."""
    parts = [line.strip() for line in str(message).splitlines() if line.strip()]
    return " ".join(parts)


def parser_message(message: str) -> str:
    """Shorten jsonargparse's ``Parser key "a.b": ... Expected a <class 'int'> ... Given value: x`` to one clause."""
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"Given value: (.+?)(?: - |$)", message)
    if not key:
        return message
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    wanted = f"expected {' or '.join(dict.fromkeys(expected))}" if expected else "not valid here"
    got = f", got {given.group(1).strip()!r}" if given else ""
    return f"{key.group(1)}: {wanted}{got}"


def report(err: BaseException, prog: str) -> int:
    """Print ``err`` as the single ``error:`` line and return the exit code."""
    message = one_line(err) or type(err).__name__
    if isinstance(err, argparse.ArgumentError):  # jsonargparse does not say which command
        message = f"{prog}: {parser_message(message)} (see --help)"
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def reports_errors(prog: str) -> Callable[[Main], Callable[[list[str] | None], int]]:
    """Decorate a command's ``main(argv)`` so that its anticipated errors end in one line and exit code 2."""

    def decorate(main: Main) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            show_traceback, argv = wants_traceback(list(sys.argv[1:] if argv is None else argv))
            try:
                return int(main(argv) or 0)
            except ANTICIPATED as err:
                if show_traceback:
                    raise
                return report(err, prog)

        return run

    return decorate
