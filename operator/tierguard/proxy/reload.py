"""Watch the policy file and apply changes atomically.

Polls the file's content (a Kubernetes ConfigMap volume updates by swapping a symlink, which
inotify on the file itself would miss). An invalid new config is reported and ignored: the proxy
keeps serving the last good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from ..policy import PolicyError, ProxyConfig, parse_yaml, proxy_config_from_data

log = logging.getLogger("tierguard.proxy.reload")


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
) -> None:
    last = initial_digest
    while True:
        await asyncio.sleep(interval)
        try:
            raw = path.read_bytes()
        except OSError:
            continue  # a ConfigMap update in progress; try again
        digest = hashlib.sha256(raw).hexdigest()
        if digest == last:
            continue
        last = digest
        try:
            _, config = read_config(path)
        except (PolicyError, OSError) as err:
            log.error("config reload rejected, keeping the previous config: %s", err)
            on_invalid(str(err))
            continue
        try:
            apply(config)
        except ValueError as err:  # e.g. an API key variable missing
            log.error("config reload rejected, keeping the previous config: %s", err)
            on_invalid(str(err))
            continue
        log.info("config reloaded: %s", config.config_hash())
