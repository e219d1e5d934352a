"""Redaction of e-mail addresses, phone numbers and payment card numbers before anything is stored.

Card numbers are digit runs of 13-19 digits (spaces or dashes allowed between groups) that pass the
Luhn check; phone numbers are runs of 7-15 digits with the usual separators and an optional leading
``+``; e-mail addresses are ``local@domain.tld``. Each match becomes ``[card]``, ``[phone]`` or
``[email]``. Cards go first, so a card number is never half-redacted as a phone number.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# one pass over digit runs (7-19 digits with separators); each run is then a card, a phone or kept
_NUMBER = re.compile(r"(?<![\w+])(?<!\d[ -])\+?\(?\d(?:[\s().-]{0,2}\d){6,18}(?![ -]?\d)")
_CARD_SHAPE = re.compile(r"\d(?:[ -]?\d){12,18}")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _number(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = "".join(c for c in run if c.isdigit())
    if 13 <= len(digits) <= 19 and _CARD_SHAPE.fullmatch(run) and luhn_ok(digits):
        return "[card]"
    return "[phone]" if len(digits) <= 15 else run


def redact(text: str) -> str:
    """``text`` with e-mail addresses, card numbers and phone numbers replaced."""
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _NUMBER.sub(_number, text)
