"""Ground truth for the demo's traffic: which answers were right, per revision and tier.

The load generator knows which workload row it sent; the proxy's response headers say which
revision and tier answered; the row says whether that tier's model was right. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .story import CAPABLE_TIER, CHEAP_TIER
from .workload import CAPABLE_MODEL, CHEAP_MODEL

MODEL_OF_TIER = {CHEAP_TIER: CHEAP_MODEL, CAPABLE_TIER: CAPABLE_MODEL}


@dataclass(frozen=True)
class Answer:
    time: float
    revision: str
    tier: str
    correct: bool


class Tally:
    def __init__(self, rows: Sequence[Mapping[str, Any]], keep_seconds: float = 600.0) -> None:
        self.correct = [
            {tier: bool(row["models"][model].get("correct")) for tier, model in MODEL_OF_TIER.items()}
            for row in rows
        ]
        self.answers: deque[Answer] = deque()
        self.keep_seconds = keep_seconds
        self.lock = threading.Lock()
        self.errors = 0

    def record(self, index: int, status: int, headers: Mapping[str, str]) -> None:
        tier, revision = headers.get("x-tierguard-tier"), headers.get("x-tierguard-revision")
        now = time.monotonic()
        with self.lock:
            if status != 200 or tier not in MODEL_OF_TIER or not revision:
                self.errors += 1
                return
            self.answers.append(Answer(now, revision, tier, self.correct[index][tier]))
            while self.answers and self.answers[0].time < now - self.keep_seconds:
                self.answers.popleft()

    def rating(self, index: int, headers: Mapping[str, str], share: float = 0.25) -> str | None:
        """A user's feedback on a share of the answers: thumbs down exactly when the answer was
        wrong. Which answers get feedback is a pure function of the prompt and the tier."""
        tier = headers.get("x-tierguard-tier")
        if tier not in MODEL_OF_TIER or (index * 2654435761 + len(tier)) % 1000 >= share * 1000:
            return None
        return "up" if self.correct[index][tier] else "down"

    def between(self, start: float, end: float | None = None) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.time >= start and (end is None or a.time <= end)]


def accuracy(answers: Sequence[Answer]) -> float | None:
    return sum(a.correct for a in answers) / len(answers) if answers else None


def by_revision_tier(answers: Sequence[Answer]) -> dict[tuple[str, str], tuple[int, float]]:
    """(revision, tier) -> (answers, accuracy)."""
    groups: dict[tuple[str, str], list[Answer]] = {}
    for a in answers:
        groups.setdefault((a.revision, a.tier), []).append(a)
    return {k: (len(v), sum(a.correct for a in v) / len(v)) for k, v in groups.items()}
