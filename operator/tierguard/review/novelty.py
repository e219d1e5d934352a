"""A cheap out-of-distribution score for a query against the calibration prompts (no GPU, no model).

Each prompt is reduced to the set of its hashed features: its first ``MAX_WORDS`` lower-cased word
tokens (CRC-32, stable across processes unlike ``hash()``) and word bigrams (the two words' hashes
combined), folded into ``BUCKETS`` buckets. The reference keeps each bucket's document frequency
``df`` over the ``n`` calibration prompts.

A prompt's *rarity* is the mean, over its distinct features, of the normalised inverse document
frequency ``log((n + 1) / (df + 1)) / log(n + 1)``: 0 for a feature in every calibration prompt,
1 for one in none. Rarity alone is not comparable across domains (some in-distribution prompts are
full of rare words), so the reference also keeps the sorted rarities of the calibration prompts
themselves (each scored leave-one-out: its own features count ``df - 1``), and a query's **novelty**
is the share of calibration prompts that are less rare than it: about uniform on [0, 1] for
in-distribution traffic, near 1 for prompts unlike anything calibration saw. Scoring costs one pass
over the prompt's tokens and a dictionary look-up per feature.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUCKETS = 1 << 20
_MASK = BUCKETS - 1
MAX_WORDS = 400
MAX_SCORES = 2001  # quantiles of the calibration rarities kept in the reference
_TOKEN = re.compile(r"[^\W_]+")


def features(text: str) -> frozenset[int]:
    """The hashed word and word-bigram features of ``text``."""
    words = _TOKEN.findall(text.lower())
    grams = [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]
    return frozenset(zlib.crc32(g.encode()) % BUCKETS for g in grams)


def _idf(df: int, n: int) -> float:
    return math.log((n + 1) / (df + 1)) / math.log(n + 1) if n > 0 else 1.0


@dataclass(frozen=True)
class NoveltyReference:
    docs: int
    df: dict[int, int]
    scores: tuple[float, ...]  # sorted rarities of the calibration prompts (quantiles)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, prompts: Iterable[str], meta: dict[str, Any] | None = None) -> NoveltyReference:
        feats = [features(p) for p in prompts]
        if not feats:
            raise ValueError("a novelty reference needs at least one calibration prompt")
        df: dict[int, int] = {}
        for fs in feats:
            for f in fs:
                df[f] = df.get(f, 0) + 1
        n = len(feats)
        loo = sorted(_rarity(fs, df, n - 1, own=True) for fs in feats)
        if len(loo) > MAX_SCORES:
            step = (len(loo) - 1) / (MAX_SCORES - 1)
            loo = [loo[round(i * step)] for i in range(MAX_SCORES)]
        return cls(n, df, tuple(loo), dict(meta or {}))

    def __post_init__(self) -> None:
        # the normalised IDF of every known bucket, computed once (scoring is on the request path)
        idf = {f: _idf(d, self.docs) for f, d in self.df.items()}
        object.__setattr__(self, "_idf_table", idf)
        object.__setattr__(self, "_unseen", _idf(0, self.docs))

    def rarity(self, text: str) -> float:
        fs = features(text)
        if not fs:
            return 0.0
        table: dict[int, float] = self._idf_table  # type: ignore[attr-defined]
        unseen: float = self._unseen  # type: ignore[attr-defined]
        return sum(table.get(f, unseen) for f in fs) / len(fs)

    def novelty(self, text: str) -> float:
        """The share of calibration prompts less rare than ``text`` (0 to 1)."""
        r = self.rarity(text)
        return bisect.bisect_left(self.scores, r) / len(self.scores)

    # --- file form -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "NoveltyReference",
            "version": 1,
            "buckets": BUCKETS,
            "docs": self.docs,
            "scores": [round(s, 6) for s in self.scores],
            "df": {str(k): v for k, v in sorted(self.df.items())},
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "novelty reference") -> NoveltyReference:
        try:
            if data.get("kind") != "NoveltyReference" or data.get("version") != 1:
                raise ValueError("not a NoveltyReference (version 1)")
            if data.get("buckets") != BUCKETS:
                raise ValueError(f"built with {data.get('buckets')} buckets, this version uses {BUCKETS}")
            scores = tuple(float(s) for s in data["scores"])
            if not scores or list(scores) != sorted(scores):
                raise ValueError("'scores' must be a non-empty sorted list")
            df = {int(k): int(v) for k, v in data["df"].items()}
            return cls(int(data["docs"]), df, scores, dict(data.get("meta") or {}))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> NoveltyReference:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as err:
            raise ValueError(f"{p}: cannot read: {err.strerror}") from None
        except ValueError as err:
            raise ValueError(f"{p}: not valid JSON: {err}") from None
        return cls.from_json(data, str(p))


def _rarity(fs: frozenset[int], df: dict[int, int], n: int, own: bool = False) -> float:
    if not fs:
        return 0.0
    sub = 1 if own else 0
    return sum(_idf(df.get(f, 0) - sub, n) for f in fs) / len(fs)
