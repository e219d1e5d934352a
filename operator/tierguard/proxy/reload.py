"""Watch the policy file, and the secret files it names, and apply changes atomically.

Polls the files' content (a Kubernetes ConfigMap or Secret volume updates by swapping a symlink,
which inotify on the file itself would miss). A rotated secret file (a tier's API key, the
feedback key, the client keys) applies the current config again, so the new value is read
without a config change. An invalid new config is reported and ignored: the proxy keeps serving
the last good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from ..policy import PolicyError, ProxyConfig, parse_yaml, proxy_config_from_data

log = logging.getLogger("tierguard.proxy.reload")


def secret_files(config: ProxyConfig) -> list[Path]:
    """The files ``config`` reads secrets from: tier API keys, the feedback key, the client keys."""
    sources = [config.settings.feedback_key, config.settings.client_keys]
    for rev in (config.stable, config.canary):
        if rev is not None:
            sources += [t.api_key for t in rev.cascade.tiers]
    return sorted({Path(s.file) for s in sources if s is not None and s.file is not None})


def files_digest(paths: list[Path]) -> str:
    """One digest of the files' paths and contents (an unreadable file counts as its own state)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        try:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        except OSError as err:
            h.update(f"unreadable:{err.errno}".encode())
    return h.hexdigest()


def read_config(path: Path) -> tuple[str, ProxyConfig]:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    return digest, proxy_config_from_data(parse_yaml(raw, str(path)), str(path))


async def watch(
    path: Path,
    initial_digest: str,
    apply: Callable[[ProxyConfig], object],
    on_invalid: Callable[[str], None],
    interval: float = 1.0,
    initial_config: ProxyConfig | None = None,
) -> None:
    last = initial_digest
    current = initial_config
    secrets = files_digest(secret_files(current)) if current is not None else ""
    while True:
        await asyncio.sleep(interval)
        try:
            raw = path.read_bytes()
        except OSError:
            continue  # a ConfigMap update in progress; try again
        digest = hashlib.sha256(raw).hexdigest()
        if digest == last:
            if current is None:
                continue
            now = files_digest(secret_files(current))
            if now == secrets:
                continue
            secrets = now
            log.info("a secret file changed: applying the config again to read it")
            _apply(current, apply, on_invalid)
            continue
        last = digest
        try:
            _, config = read_config(path)
        except (PolicyError, OSError) as err:
            log.error("config reload rejected, keeping the previous config: %s", err)
            on_invalid(str(err))
            continue
        if _apply(config, apply, on_invalid):
            current = config
            secrets = files_digest(secret_files(config))
            log.info("config reloaded: %s", config.config_hash())


def _apply(
    config: ProxyConfig, apply: Callable[[ProxyConfig], object], on_invalid: Callable[[str], None]
) -> bool:
    try:
        apply(config)
    except ValueError as err:  # e.g. an API key variable missing, a key file unreadable
        log.error("config reload rejected, keeping the previous config: %s", err)
        on_invalid(str(err))
        return False
    return True
