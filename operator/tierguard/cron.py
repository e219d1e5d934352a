"""A run interval as a cron schedule (pure): what a Kubernetes CronJob can express exactly.

Cron fields restart every hour, day and week, so only intervals that divide them run evenly:
5, 6, 10, 12, 15, 20 or 30 minutes; 1, 2, 3, 4, 6, 8, 12 or 24 hours; 168 hours (a week).
``seed`` spreads the runs of different objects over the interval (like Jenkins' ``H``), so a
namespace full of policies does not tune them all in the same minute.
"""

from __future__ import annotations

MIN_MINUTES = 5
SUPPORTED = "5m..30m dividing an hour, 1h..24h dividing a day, or 168h"


def interval_minutes(interval: str) -> int:
    """``'30m'`` -> 30, ``'6h'`` -> 360 (minutes and hours only)."""
    unit = interval[-1:]
    digits = interval[:-1]
    if unit not in ("m", "h") or not digits.isdigit():
        raise ValueError(f"bad interval {interval!r} (expected minutes or hours, e.g. 30m, 6h)")
    return int(digits) * (60 if unit == "h" else 1)


def cron_schedule(interval: str, seed: int = 0) -> str:
    """The cron expression running every ``interval``, offset by ``seed`` within it.

    Raises ValueError for an interval cron cannot express evenly (the message says which can)."""
    minutes = interval_minutes(interval)
    if minutes < 60:
        if minutes < MIN_MINUTES or 60 % minutes:
            raise ValueError(
                f"interval {interval!r} is not a schedule a CronJob runs evenly: use {SUPPORTED}"
            )
        return f"{seed % minutes}/{minutes} * * * *"
    minute = seed % 60
    hours, rest = divmod(minutes, 60)
    if rest == 0 and hours < 24 and 24 % hours == 0:
        return f"{minute} {(seed // 60) % hours}/{hours} * * *"
    if minutes == 24 * 60:
        return f"{minute} {(seed // 60) % 24} * * *"
    if minutes == 7 * 24 * 60:
        return f"{minute} {(seed // 60) % 24} * * {(seed // 1440) % 7}"
    raise ValueError(f"interval {interval!r} is not a schedule a CronJob runs evenly: use {SUPPORTED}")
