"""Why an outcomes file gave no usable rows: the message names what the file does have.

Only called on the error path, so it reads the file once more rather than threading record-level
facts through the loaders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .outcomes import load_outcomes
from .policy import CascadeSpec


def _listing(counts: Counter[str]) -> str:
    return ", ".join(f"{k} ({n} rows)" for k, n in sorted(counts.items()))


def explain_no_rows(
    path: str | Path,
    spec: CascadeSpec,
    *,
    benchmarks: Sequence[str] | None = None,
    split: str | None = None,
) -> str:
    """One message saying why no row of ``path`` fits ``spec``, ``benchmarks`` and ``split``."""
    outcomes = load_outcomes(path)
    records = outcomes.records
    if not records:
        bad = f" ({len(outcomes.skipped)} malformed lines)" if outcomes.skipped else ""
        return f"{path}: the file is empty: no outcome records{bad}"
    have_b = Counter(r.benchmark or "(none)" for r in records)
    if benchmarks:
        missing = [b for b in benchmarks if b not in have_b]
        if missing:
            return (
                f"{path}: no rows of benchmark {', '.join(repr(b) for b in missing)}; "
                f"the file has benchmarks: {_listing(have_b)}"
            )
        records = [r for r in records if r.benchmark in set(benchmarks)]
    models: Counter[str] = Counter(m for r in records for m in r.models)
    absent = [t.model for t in spec.tiers if t.model not in models]
    if absent:
        return (
            f"{path}: the policy's model(s) {', '.join(repr(m) for m in absent)} are not in the file; "
            f"it has models: {_listing(models)}"
        )
    if split and split != "all":
        have_s = Counter(r.split or "(none)" for r in records)
        if split not in have_s:
            return f"{path}: no rows of split {split!r}; the file has splits: {_listing(have_s)}"
    return (
        f"{path}: no row has every tier's model with 'correct' and a cost "
        f"(see the skipped-row warnings above; docs/outcomes-format.md)"
    )
