"""Redaction of e-mail addresses, phone numbers and payment card numbers before anything is stored.

Card numbers are digit runs of 13-19 digits (spaces or dashes allowed between groups) that pass the
Luhn check; phone numbers are runs of 7-15 digits with the usual separators and an optional leading
``+``; e-mail addresses are ``local@domain.tld``. Each match becomes ``[card]``, ``[phone]`` or
``[email]``. Cards go first, so a card number is never half-redacted as a phone number.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ -])\+?\(?\d(?:[\s().-]{0,2}\d){6,14}(?![ -]?\d)")


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


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def redact(text: str) -> str:
    """``text`` with e-mail addresses, card numbers and phone numbers replaced."""
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[phone]", text)
