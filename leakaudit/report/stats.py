"""The small statistical tests and intervals behind the report's verdicts.

One-sided Fisher exact and binomial tests (does a rate exceed its baseline beyond sampling
error?), the Wilson score interval of a proportion and Holm's correction for several tests, in pure
Python.
"""

from __future__ import annotations

import math


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(a: int, n1: int, b: int, n2: int) -> float:
    """One-sided Fisher exact p-value that the rate ``a / n1`` exceeds ``b / n2`` (1.0 when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    a, b = min(max(a, 0), n1), min(max(b, 0), n2)
    total, hits = n1 + n2, a + b
    top = min(hits, n1)
    base = _log_comb(total, n1)
    p = sum(math.exp(_log_comb(hits, x) + _log_comb(total - hits, n1 - x) - base) for x in range(a, top + 1))
    return min(1.0, p)


def binomial_greater(k: int, n: int, p: float) -> float:
    """One-sided binomial p-value P[Binomial(n, p) >= k]."""
    if n <= 0 or k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(_log_comb(n, i) + i * lp + (n - i) * lq) for i in range(min(k, n), n + 1)))


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on n trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: rejecting those below alpha keeps the chance of any false
    rejection among all the tests at most alpha, whatever their dependence."""
    adjusted: dict[str, float] = {}
    running = 0.0
    m = len(p_values)
    for i, key in enumerate(sorted(p_values, key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        adjusted[key] = running
    return adjusted
