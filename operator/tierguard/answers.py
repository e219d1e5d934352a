"""When two answers count as the same: one definition for shadow scoring in the proxy and in replay."""

from __future__ import annotations


def normalize(answer: str) -> str:
    """Fold case and white space."""
    return " ".join(answer.split()).casefold()


def answers_agree(a: str, b: str) -> bool:
    """Equal after :func:`normalize`: exact for labels, choices and numbers; a lower bound on
    agreement for free text."""
    return normalize(a) == normalize(b)
