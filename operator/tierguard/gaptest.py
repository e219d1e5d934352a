"""An exact test that a cascade's accuracy is within ε of the capable tier's. Pure functions.

Per query, the loss of answering with the cascade instead of the capable tier is
``1[capable correct] - 1[cascade correct]`` in {-1, 0, 1}. Over ``n`` exchangeable queries the
counts ``a`` (loss +1: the cascade is wrong where the capable tier is right) and ``b`` (loss -1:
the reverse) are trinomial with probabilities ``p_a`` and ``p_b``; the accuracy gap is
``p_a - p_b``. :func:`gap_p_value` is a valid p-value for the null hypothesis

    H0: p_a - p_b > eps       (the cascade is more than eps below the capable tier)

computed exactly, not from a normal approximation: the ordering statistic is the signed root
of the likelihood-ratio statistic for the gap, and the p-value is the largest probability, over
the nuisance parameter ``p_b`` on the null boundary ``p_a = p_b + eps``, of a result at least as
favourable to the cascade as the one observed (Barnard's unconditional construction). Larger
gaps only make such a result less likely, so the boundary is the worst case. The supremum is
taken over a fixed grid of ``p_b`` values, dense near 0 where it is attained, as exact
unconditional tests are usually computed.

Why not simpler bounds: Hoeffding or Bentkus bounds for a loss in [-1, 1] ignore that most
losses are 0 (a cheap tier that accepts answers agrees with the capable tier on most of them),
and a union of two Clopper-Pearson bounds on ``p_a`` and ``p_b`` halves δ for each; on the few
hundred rows a calibration set has, both certify next to nothing. The binomial tails are
written out here (log-space sums) rather than taken from SciPy, which the product does not
otherwise need.
"""

from __future__ import annotations

import math
from functools import lru_cache

_TAIL_EPS = 1e-16


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == n else -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def _tail(start: int, stop: int, step: int, n: int, p: float) -> float:
    """Sum of Binomial(n, p) probabilities from ``start`` towards ``stop`` (inclusive) by
    ``step``, each term from the previous by the pmf's ratio; stops once terms are negligible."""
    term = math.exp(_log_pmf(start, n, p))
    total = term
    if p <= 0.0 or p >= 1.0:
        return term
    odds = p / (1.0 - p)
    i = start
    while i != stop:
        term *= (n - i) / (i + 1) * odds if step > 0 else i / ((n - i + 1) * odds)
        i += step
        total += term
        if term < _TAIL_EPS * total:
            break
    return min(1.0, total)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), from whichever tail is shorter."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if k > n * p:
        return _tail(k, n, 1, n, p)
    return max(0.0, 1.0 - _tail(k - 1, 0, -1, n, p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return 1.0 - binom_sf(k + 1, n, p)


def binom_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound: the largest p with P(X <= k) >= alpha."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _loglik(a: int, b: int, n: int, pa: float, pb: float) -> float:
    out = 0.0
    for count, p in ((a, pa), (b, pb), (n - a - b, 1.0 - pa - pb)):
        if count:
            if p <= 0.0:
                return -math.inf
            out += count * math.log(p)
    return out


def null_mle(a: int, b: int, n: int, eps: float) -> float:
    """The maximum-likelihood ``p_b`` on the null boundary ``p_a = p_b + eps``.

    Setting the derivative of the trinomial log-likelihood to 0 gives the quadratic
    ``2n p^2 - B p - b eps (1 - eps) = 0`` with ``B = (a + b)(1 - eps) - 2 eps (n - a)``.
    """
    big_b = (a + b) * (1.0 - eps) - 2.0 * eps * (n - a)
    c = b * eps * (1.0 - eps)
    p = (big_b + math.sqrt(big_b * big_b + 8.0 * n * c)) / (4.0 * n)
    return min(max(p, 0.0), (1.0 - eps) / 2.0)


def signed_root(a: int, b: int, n: int, eps: float) -> float:
    """Evidence against H0: the signed root of the likelihood-ratio statistic (larger: the
    cascade is more clearly within ``eps``)."""
    pb = null_mle(a, b, n, eps)
    stat = 2.0 * (_loglik(a, b, n, a / n, b / n) - _loglik(a, b, n, pb + eps, pb))
    root = math.sqrt(max(stat, 0.0))
    return root if (a - b) / n < eps else -root


def _null_grid(eps: float, factor: float = 1.12) -> list[float]:
    top = (1.0 - eps) / 2.0
    grid = {0.0, top}
    x = 1e-5
    while x < top:
        grid.add(x)
        x *= factor
    return sorted(grid)


def _region(a: int, b: int, n: int, eps: float) -> list[tuple[int, int]]:
    """Per loss count x, the smallest gain count y whose statistic is at least the observed one
    (the statistic rises with y and falls with x; checked in tests)."""
    r_obs = signed_root(a, b, n, eps) - 1e-9  # ties count as at least as favourable
    region: list[tuple[int, int]] = []
    for x in range(n + 1):
        if signed_root(x, n - x, n, eps) < r_obs:
            break  # no larger x can reach it either
        lo, hi = 0, n - x
        while lo < hi:
            mid = (lo + hi) // 2
            if signed_root(x, mid, n, eps) >= r_obs:
                hi = mid
            else:
                lo = mid + 1
        region.append((x, lo))
    return region


def _region_probability(region: list[tuple[int, int]], n: int, eps: float, pb: float) -> float:
    pa = pb + eps
    q = pb / (1.0 - pa) if pa < 1.0 else 0.0
    total = 0.0
    for x, y in region:
        px = math.exp(_log_pmf(x, n, pa))
        if px < 1e-16:
            if x > n * pa:
                break
            continue
        total += px * binom_sf(y, n - x, q)
    return total


@lru_cache(maxsize=100_000)
def gap_p_value(a: int, b: int, n: int, eps: float) -> float:
    """p-value of H0 ``p_a - p_b > eps`` given ``a`` losses, ``b`` gains in ``n`` queries.

    The largest probability of the observed region over a geometric grid of ``p_b`` on the null
    boundary, refined around the grid's maximum."""
    if n <= 0 or a < 0 or b < 0 or a + b > n:
        raise ValueError(f"need 0 <= a, b and a + b <= n, got a={a}, b={b}, n={n}")
    if not 0.0 <= eps < 1.0:
        raise ValueError("eps must lie in [0, 1)")
    region = _region(a, b, n, eps)
    grid = _null_grid(eps)
    values = [_region_probability(region, n, eps, pb) for pb in grid]
    k = max(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    fine = [lo + (hi - lo) * i / 16 for i in range(1, 16)]
    worst = max([values[k], *(_region_probability(region, n, eps, pb) for pb in fine)])
    return min(1.0, worst)
