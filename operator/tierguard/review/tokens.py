"""Reviewer tokens: who may write labels. Nothing is anonymous: every label names its reviewer.

A tokens file (e.g. a mounted Secret) has one ``reviewer:token`` per line; blank lines and lines
starting with ``#`` are ignored. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_TOKEN = 16


class Reviewers:
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens  # reviewer -> token

    @classmethod
    def parse(cls, text: str, source: str = "tokens") -> Reviewers:
        tokens: dict[str, str] = {}
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, token = line.partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not _NAME.match(name):
                raise ValueError(f"{source}:{n}: expected 'reviewer:token' (reviewer: letters, digits, ._@-)")
            if len(token) < MIN_TOKEN:
                raise ValueError(
                    f"{source}:{n}: the token of {name!r} is shorter than {MIN_TOKEN} characters"
                )
            if name in tokens:
                raise ValueError(f"{source}:{n}: reviewer {name!r} appears twice")
            tokens[name] = token
        if not tokens:
            raise ValueError(f"{source}: no reviewer tokens")
        return cls(tokens)

    @classmethod
    def load(cls, path: str | Path) -> Reviewers:
        p = Path(path)
        try:
            return cls.parse(p.read_text(), str(p))
        except OSError as err:
            raise ValueError(f"{p}: cannot read: {err.strerror}") from None

    def reviewer(self, token: str | None) -> str | None:
        """The reviewer holding ``token``, or None."""
        if not token:
            return None
        found = None
        for name, known in self._tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                found = name
        return found
