"""Signed response ids: the routing decision travels with the answer, so feedback on any
replica joins it without a shared store.

``chatcmpl-tg1.<payload>.<mac>``: payload is base64url("revision|tier|bucket|issued|nonce")
(``issued``: the Unix second the id was issued, so an outcome arriving later can be checked against
a maximum age), mac the first 16 bytes of HMAC-SHA256(key, payload) in base64url. Ids issued before
the time was added ("revision|tier|bucket|nonce") still verify, with ``issued`` None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..policy import SecretSource
from ..review.outcome_events import IdRejected

PREFIX = "chatcmpl-tg1."
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
KEY_ENV = "TIERGUARD_FEEDBACK_KEY"


class InvalidId(IdRejected, ValueError):
    """The id was not issued by a proxy holding this key (``reason``: malformed or bad_signature).

    An :class:`IdRejected`, so the outcome endpoint takes the signer's verify as it is."""


@dataclass(frozen=True, slots=True)
class Decision:
    revision: str
    tier: str
    bucket: int
    issued: float | None = None  # Unix time the id was issued (None: an id from before it was recorded)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(source: SecretSource | None) -> tuple[bytes, str]:
    """The signing key and where it came from. Without a configured source: the
    ``TIERGUARD_FEEDBACK_KEY`` environment variable, else a random per-process key."""
    if source is not None:
        if source.env is not None:
            value = os.environ.get(source.env)
            if not value:
                raise ValueError(f"feedback key: environment variable {source.env} is not set")
            return value.encode(), f"env:{source.env}"
        assert source.file is not None
        try:
            return Path(source.file).read_bytes().strip(), f"file:{source.file}"
        except OSError as err:
            raise ValueError(f"feedback key: cannot read {source.file}: {err.strerror}") from None
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode(), f"env:{KEY_ENV}"
    return secrets.token_bytes(32), "random (feedback verifies on this replica only)"


class IdSigner:
    def __init__(self, key: bytes, previous_key: bytes | None = None) -> None:
        """Sign with ``key``; also accept ids signed with ``previous_key`` (a key rotation)."""
        self._key = key
        self._previous = previous_key

    @property
    def key(self) -> bytes:
        return self._key

    def _mac(self, payload: str, key: bytes | None = None) -> str:
        return _b64(hmac.new(key or self._key, payload.encode(), hashlib.sha256).digest()[:16])

    def _valid(self, payload: str, mac: str) -> bool:
        if hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return True
        return self._previous is not None and hmac.compare_digest(
            mac.encode(), self._mac(payload, self._previous).encode()
        )

    def issue(self, revision: str, tier: str, bucket: int, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        payload = _b64(f"{revision}|{tier}|{bucket}|{issued}|{secrets.token_hex(6)}".encode())
        return f"{PREFIX}{payload}.{self._mac(payload)}"

    def verify(self, response_id: object) -> Decision:
        if not isinstance(response_id, str) or not response_id.startswith(PREFIX) or len(response_id) > 512:
            raise InvalidId("malformed")
        body = response_id[len(PREFIX) :]
        payload, _, mac = body.partition(".")
        if not payload or not mac or not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(mac):
            raise InvalidId("malformed")
        if not self._valid(payload, mac):
            raise InvalidId("bad_signature")
        try:
            parts = _unb64(payload).decode().split("|")
            if len(parts) == 4:
                revision, tier, bucket, _nonce = parts
                return Decision(revision, tier, int(bucket))
            revision, tier, bucket, issued, _nonce = parts
            return Decision(revision, tier, int(bucket), float(int(issued)))
        except (ValueError, UnicodeDecodeError):
            raise InvalidId("malformed") from None
