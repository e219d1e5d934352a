"""Errors meant for the person at the command line: the message is the whole story.

The ground floor of the package: every module may raise these, and ``tierguard`` (``cli.py``)
prints any of :data:`USER_ERRORS` as ``tierguard COMMAND: error: MESSAGE`` and exits 2, without
a traceback. Library code never imports ``cli``.
"""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is the whole story: printed without a traceback, exit 2."""


class PolicyError(ValueError):
    """A policy file that cannot be used; the message says what to fix."""


class OutcomeFormatError(ValueError):
    """A malformed line of a recorded-outcomes file (docs/outcomes-format.md)."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


# What the command line reports as a plain error (a missing input file included).
USER_ERRORS: tuple[type[Exception], ...] = (UserError, PolicyError, OutcomeFormatError, FileNotFoundError)
