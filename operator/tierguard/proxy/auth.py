"""Optional client authentication: ``Authorization: Bearer KEY`` on the OpenAI endpoints (``/v1/*``).

Keys come from ``settings.clientKeys`` (``spec.proxy.clientKeys``: ``{env: VAR}`` or ``{file: PATH}``,
e.g. a Secret mounted with ``spec.proxy.secretMounts``), one per line (commas also separate), and
follow reloads. Health, readiness and metrics stay open for probes and Prometheus.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..policy import SecretSource


def load_client_keys(source: SecretSource | None) -> tuple[bytes, ...] | None:
    """The accepted keys (None: authentication off); ValueError when the source cannot be read."""
    if source is None:
        return None
    if source.env is not None:
        text = os.environ.get(source.env)
        if not text:
            raise ValueError(f"client keys: environment variable {source.env} is not set")
    else:
        assert source.file is not None
        try:
            text = Path(source.file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"client keys: cannot read {source.file}: {err}") from None
    keys = tuple(k.strip().encode() for k in text.replace(",", "\n").splitlines() if k.strip())
    if not keys:
        raise ValueError("client keys: the source holds no key")
    return keys


def authorized(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """True when ``header`` is ``Bearer <one of keys>`` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode()
    return any(hmac.compare_digest(given, key) for key in keys)  # no early exit on a match
