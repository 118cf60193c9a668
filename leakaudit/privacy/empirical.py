"""Empirical lower bounds on the epsilon of a DP training run (auditing DP; docs/methods.md).

Two forms:

* **One run** (Steinke, Nasr and Jagielski 2023).  ``m`` canaries are each included in training
  independently with probability 1/2; after training the auditor guesses "in" for the ``k+``
  highest-scoring canaries and "out" for the ``k-`` lowest, abstaining on the rest.  Of the
  ``r = k+ + k-`` guesses, ``v`` are correct.  Under (eps, delta)-DP the number of correct guesses is
  stochastically dominated (up to a delta term) by ``B ~ Binomial(r, q)`` with ``q = sigmoid(eps)``,
  which gives the p-value

      p(eps) = P[B >= v] + 2 m delta * max_{i=1..v} P[v - i <= B < v] / i      (capped at 1)

  and the bound ``eps_lb = sup{eps : p(eps) < alpha}`` (0 when ``p(0) >= alpha``).

* **Threshold / Clopper-Pearson** (Jagielski, Ullman and Oprea 2020).  From false positives out
  of ``n_neg`` non-members and false negatives out of ``n_pos`` members at one threshold, upper
  Clopper-Pearson bounds on FPR and FNR (one-sided, ``alpha / 2`` each) give

      eps_lb = max(ln((1 - FNR_u - delta) / FPR_u), ln((1 - FPR_u - delta) / FNR_u))

  (0 when both are non-positive).

Every bound here holds with probability at least ``1 - alpha`` over the training and the
canary draw.  Any data-dependent choice (which ``k+, k-``, which threshold) is paid for with a
Bonferroni correction, documented at each function.

An empirical bound above the accountant's epsilon (at the same delta) means the DP guarantee
failed: the training, the noise or the accounting is broken.  :func:`compare_with_accountant`
records that in :class:`EmpiricalPrivacy`, the record written to ``results.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import beta, binom

from leakaudit.report.schema import EmpiricalPrivacy

__all__ = [
    "EmpiricalPrivacy",
    "OneRunAudit",
    "OneRunGuess",
    "ThresholdAudit",
    "clopper_pearson_bound",
    "compare_with_accountant",
    "default_k_grid",
    "one_run_audit",
    "one_run_bound",
    "one_run_p_value",
    "threshold_bound",
]

_EPS_TOL = 1e-6  # bisection tolerance on eps (nats)
_EPS_MAX = 64.0  # sigmoid(64) == 1.0 in float64: nothing above is distinguishable
_SCAN = 48  # coarse grid points before bisecting (guards against a non-monotone p)


# -- the record in results.json (its model lives in leakaudit.report.schema) -------------------


def compare_with_accountant(bound: EmpiricalPrivacy, accountant_eps: float | None) -> EmpiricalPrivacy:
    """Return a copy of ``bound`` with the accountant's eps and ``exceeds_accountant`` set.

    ``exceeds_accountant`` is True when the empirical lower bound is strictly above the
    accountant's eps: with probability ``1 - alpha`` the model is not (eps, delta)-DP, so the
    DP implementation or its accounting is broken.  The comparison is only meaningful when the
    bound was computed at the accountant's delta.  ``accountant_eps=None`` (no DP) never exceeds.
    """
    exceeds = accountant_eps is not None and bound.eps_lower_bound > accountant_eps
    note = bound.note
    if exceeds:
        warning = (
            f"DP GUARANTEE FAILED: the empirical lower bound eps >= {bound.eps_lower_bound:.3f} "
            f"(confidence {1 - bound.alpha:.0%}, delta {bound.delta:g}) exceeds the accountant's "
            f"eps = {accountant_eps:.3f}; the DP training or its accounting is broken"
        )
        note = f"{warning}. {note}" if note else warning
    return bound.model_copy(
        update={
            "accountant_epsilon": None if accountant_eps is None else float(accountant_eps),
            "exceeds_accountant": bool(exceeds),
            "note": note,
        }
    )


# -- one run ----------------------------------------------------------------------------------
def _check_probs(delta: float, alpha: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1) (got {delta})")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")


def one_run_p_value(eps: float, r: int, v: int, m: int, *, delta: float) -> float:
    """p(eps) of the one-run audit: how likely ``>= v`` correct guesses out of ``r`` are under (eps, delta)-DP.

    The max over ``i`` is taken in log space: ``log P[v-i <= B < v]`` is a running log-sum-exp of
    the binomial log-pmf from ``v - 1`` down to ``v - i``, so no near-1 probabilities are subtracted.
    """
    q = float(expit(eps))
    tail = float(binom.sf(v - 1, r, q))  # P[B >= v]
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    lp = binom.logpmf(np.arange(v - 1, -1, -1), r, q)  # log P[B = v-1], ..., log P[B = 0]
    with np.errstate(divide="ignore"):
        log_mass = np.logaddexp.accumulate(lp)  # [i-1] -> log P[v-i <= B < v]
    log_best = float(np.max(log_mass - np.log(np.arange(1, v + 1))))
    return min(tail + 2.0 * m * delta * math.exp(log_best), 1.0)


def one_run_bound(r: int, v: int, m: int, *, delta: float, alpha: float = 0.05) -> float:
    """Lower bound on eps from ``v`` correct guesses out of ``r`` on ``m`` canaries (Steinke et al. 2023).

    ``sup{eps : p(eps) < alpha}``, 0 when ``p(0) >= alpha``.  ``P[B >= v]`` grows with eps, so beyond
    the eps where it alone reaches ``alpha`` no eps can be rejected; below it, p is evaluated on a
    coarse grid and the last grid point with ``p < alpha`` is refined by bisection to 1e-6 (the
    returned value always has ``p < alpha``).
    """
    r, v, m = int(r), int(v), int(m)
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m (got v={v}, r={r}, m={m})")
    _check_probs(delta, alpha)
    if r == 0 or one_run_p_value(0.0, r, v, m, delta=delta) >= alpha:
        return 0.0
    # upper end: the smallest eps where P[B >= v] >= alpha (monotone in eps), found by doubling then bisection
    hi = 1.0
    while hi < _EPS_MAX and binom.sf(v - 1, r, expit(hi)) < alpha:
        hi *= 2.0
    hi = min(hi, _EPS_MAX)
    lo_t, hi_t = 0.0, hi
    while hi_t - lo_t > _EPS_TOL:
        mid = 0.5 * (lo_t + hi_t)
        if binom.sf(v - 1, r, expit(mid)) < alpha:
            lo_t = mid
        else:
            hi_t = mid
    hi = hi_t
    grid = np.linspace(0.0, hi, _SCAN + 1)
    below = [e for e in grid[1:] if one_run_p_value(float(e), r, v, m, delta=delta) < alpha]
    lo = float(below[-1]) if below else 0.0
    step = hi / _SCAN
    up = min(lo + step, hi)
    while up - lo > _EPS_TOL:
        mid = 0.5 * (lo + up)
        if one_run_p_value(mid, r, v, m, delta=delta) < alpha:
            lo = mid
        else:
            up = mid
    return float(lo)


@dataclass(frozen=True)
class OneRunGuess:
    """One choice of (k+, k-) and what it certifies."""

    k_plus: int
    k_minus: int
    r: int
    v: int
    alpha: float  # the level this bound was computed at (after any correction)
    eps_lower_bound: float


@dataclass(frozen=True)
class OneRunAudit:
    """Result of :func:`one_run_audit`.

    ``eps_lower_bound`` is the best bound over the grid of (k+, k-), each computed at
    ``alpha_used = alpha / n_tried`` so that picking the best after seeing the scores is valid
    (Bonferroni).  ``fixed`` is the bound for a (k+, k-) the caller fixed before seeing the scores,
    at the full ``alpha``.  The two are separate claims: report the one chosen in advance.
    """

    eps_lower_bound: float
    k_plus: int
    k_minus: int
    r: int
    v: int
    m: int
    delta: float
    alpha: float
    alpha_used: float
    n_tried: int
    best_possible: float
    fixed: OneRunGuess | None = None

    def to_empirical(self, accountant_eps: float | None = None) -> EmpiricalPrivacy:
        """The record for ``results.json`` (with the accountant comparison when eps is given)."""
        note = (
            f"one-run audit (Steinke et al. 2023): {self.v}/{self.r} correct guesses on {self.m} canaries "
            f"(top {self.k_plus} 'in', bottom {self.k_minus} 'out'), best of {self.n_tried} (k+, k-) choices "
            f"at alpha/{self.n_tried}"
        )
        if self.fixed is not None:
            f = self.fixed
            note += (
                f"; the pre-set choice k+={f.k_plus}, k-={f.k_minus} gives {f.v}/{f.r} correct and "
                f"eps >= {f.eps_lower_bound:.3f} at alpha {f.alpha:g}"
            )
        rec = EmpiricalPrivacy(
            method="one_run",
            eps_lower_bound=self.eps_lower_bound,
            alpha=self.alpha,
            delta=self.delta,
            r=self.r,
            v=self.v,
            m=self.m,
            k_plus=self.k_plus,
            k_minus=self.k_minus,
            best_possible=self.best_possible,
            note=note,
        )
        return compare_with_accountant(rec, accountant_eps)


def default_k_grid(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) tried when none is given: k in {1, 2, 5, 10, 20, 30, 40, 50}% of m,
    both symmetric (k, k) and "in"-only (k, 0) guesses (loss-based attacks are most confident
    about members), with k+ + k- <= m.  At most 16 points, so the Bonferroni factor stays small."""
    ks = sorted({max(1, round(m * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)})
    grid = {(k, k) for k in ks if 2 * k <= m} | {(k, 0) for k in ks if k <= m}
    return sorted(grid)


def _order(scores: np.ndarray, seed: int) -> np.ndarray:
    """Indices sorted by score, ascending; ties broken at random (never by position or label)."""
    tiebreak = np.random.default_rng(seed).random(scores.size)
    return np.lexsort((tiebreak, scores))


def _correct(order: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> int:
    top = order[order.size - k_plus :] if k_plus else order[:0]
    bottom = order[:k_minus]
    return int(included[top].sum() + (~included[bottom]).sum())


def _as_pair(k: int | tuple[int, int], m: int) -> tuple[int, int]:
    kp, km = (int(k), int(k)) if np.isscalar(k) else (int(k[0]), int(k[1]))
    if kp < 0 or km < 0 or kp + km == 0 or kp + km > m:
        raise ValueError(f"(k+, k-) = ({kp}, {km}) must be non-negative with 0 < k+ + k- <= m = {m}")
    return kp, km


def one_run_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    k_grid: Sequence[int | tuple[int, int]] | None = None,
    fixed_k: int | tuple[int, int] | None = None,
    seed: int = 0,
) -> OneRunAudit:
    """One-run audit of ``m`` canaries from their scores (higher = more likely included).

    ``included[i]`` says whether canary ``i`` was really in the training set (drawn independently
    with probability 1/2 before training: the bound relies on it).  For every ``(k+, k-)`` in
    ``k_grid`` (an int ``k`` means ``(k, k)``; default :func:`default_k_grid`) the top ``k+`` are
    guessed "in", the bottom ``k-`` "out", and the bound is computed at ``alpha / len(k_grid)``;
    the largest is returned.  The grid itself must not depend on the scores.  ``fixed_k``, a
    choice made before seeing the scores, is also evaluated at the full ``alpha``.
    Ties in score are broken at random with ``seed``.

    ``best_possible`` is the bound the design (m, grid, delta, corrected alpha) would certify if
    every guess were correct: the ceiling of this audit, whatever the attack.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    inc = np.asarray(included).ravel()
    if s.size != inc.size:
        raise ValueError(f"{s.size} scores but {inc.size} inclusion flags")
    if s.size == 0:
        raise ValueError("no canaries to audit")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if inc.dtype != bool:
        if not np.isin(inc, [0, 1]).all():
            raise ValueError("included must be booleans (or 0/1)")
        inc = inc.astype(bool)
    _check_probs(delta, alpha)
    m = int(s.size)
    grid = [_as_pair(k, m) for k in (k_grid if k_grid is not None else default_k_grid(m))]
    grid = list(dict.fromkeys(grid))  # a repeated point is one test, not two
    if not grid:
        raise ValueError("k_grid is empty")
    order = _order(s, seed)
    a_used = alpha / len(grid)
    best: OneRunGuess | None = None
    ceiling = 0.0
    for kp, km in grid:
        r = kp + km
        v = _correct(order, inc, kp, km)
        eps = one_run_bound(r, v, m, delta=delta, alpha=a_used)
        if best is None or eps > best.eps_lower_bound:
            best = OneRunGuess(kp, km, r, v, a_used, eps)
    # perfect guesses: the bound grows with r, so the widest r in the grid is the ceiling
    r_max = max(kp + km for kp, km in grid)
    ceiling = one_run_bound(r_max, r_max, m, delta=delta, alpha=a_used)
    fixed = None
    if fixed_k is not None:
        kp, km = _as_pair(fixed_k, m)
        v = _correct(order, inc, kp, km)
        fixed = OneRunGuess(kp, km, kp + km, v, alpha, one_run_bound(kp + km, v, m, delta=delta, alpha=alpha))
    assert best is not None
    return OneRunAudit(
        eps_lower_bound=best.eps_lower_bound,
        k_plus=best.k_plus,
        k_minus=best.k_minus,
        r=best.r,
        v=best.v,
        m=m,
        delta=float(delta),
        alpha=float(alpha),
        alpha_used=a_used,
        n_tried=len(grid),
        best_possible=ceiling,
        fixed=fixed,
    )


# -- Clopper-Pearson / threshold form -----------------------------------------------------------
def _cp_upper(k: np.ndarray, n: int, a: float) -> np.ndarray:
    """One-sided upper Clopper-Pearson bound at level 1 - a for k successes out of n (1 when k == n)."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = beta.ppf(1.0 - a, k + 1.0, np.maximum(n - k, 1e-300))
    return np.where(k >= n, 1.0, u)


def _cp_eps(
    fp: np.ndarray, n_neg: int, fn: np.ndarray, n_pos: int, delta: float, a_fpr: float, a_fnr: float
) -> np.ndarray:
    fpr_u = _cp_upper(fp, n_neg, a_fpr)
    fnr_u = _cp_upper(fn, n_pos, a_fnr)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.log(np.clip(1.0 - fnr_u - delta, 0.0, None) / fpr_u)
        e2 = np.log(np.clip(1.0 - fpr_u - delta, 0.0, None) / fnr_u)
    e = np.fmax(e1, e2)
    return np.where(np.isfinite(e) & (e > 0), e, 0.0)


def _check_counts(k: int, n: int, what: str) -> None:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= {what} <= n and n > 0 (got {k}/{n})")


def clopper_pearson_bound(
    fp: int, n_neg: int, fn: int, n_pos: int, *, delta: float = 0.0, alpha: float = 0.05
) -> float:
    """Lower bound on eps from one threshold, fixed before the data were seen (Jagielski et al. 2020).

    ``FPR_u`` and ``FNR_u`` are one-sided upper Clopper-Pearson bounds at level ``1 - alpha/2``
    each (``beta.ppf(1 - alpha/2, k + 1, n - k)``), so both hold together with probability
    ``1 - alpha``; ``eps_lb = max(ln((1 - FNR_u - delta) / FPR_u), ln((1 - FPR_u - delta) / FNR_u))``,
    0 when non-positive.
    """
    _check_counts(fp, n_neg, "fp")
    _check_counts(fn, n_pos, "fn")
    _check_probs(delta, alpha)
    return float(_cp_eps(np.array([fp]), n_neg, np.array([fn]), n_pos, delta, alpha / 2, alpha / 2)[0])


@dataclass(frozen=True)
class ThresholdAudit:
    """Result of :func:`threshold_bound`: the best threshold and what it certifies."""

    eps_lower_bound: float
    threshold: float  # "member" when score >= threshold
    fp: int
    n_neg: int
    fn: int
    n_pos: int
    delta: float
    alpha: float
    alpha_fpr: float  # per-threshold one-sided level of the FPR bound, after the correction
    alpha_fnr: float
    n_thresholds: int
    best_possible: float

    def to_empirical(self, accountant_eps: float | None = None) -> EmpiricalPrivacy:
        n = self.n_pos + self.n_neg
        correct = (self.n_pos - self.fn) + (self.n_neg - self.fp)
        rec = EmpiricalPrivacy(
            method="threshold",
            eps_lower_bound=self.eps_lower_bound,
            alpha=self.alpha,
            delta=self.delta,
            r=n,
            v=correct,
            m=n,
            best_possible=self.best_possible,
            note=(
                f"Clopper-Pearson threshold audit (Jagielski et al. 2020): FP {self.fp}/{self.n_neg}, "
                f"FN {self.fn}/{self.n_pos} at the best of {self.n_thresholds} thresholds; one-sided levels "
                f"{self.alpha_fpr:.2g} (FPR) and {self.alpha_fnr:.2g} (FNR) after the Bonferroni correction"
            ),
        )
        return compare_with_accountant(rec, accountant_eps)


def threshold_bound(
    member_scores: Sequence[float] | np.ndarray,
    non_member_scores: Sequence[float] | np.ndarray,
    *,
    delta: float,
    alpha: float = 0.05,
    thresholds: Sequence[float] | None = None,
) -> ThresholdAudit:
    """The best Clopper-Pearson bound over thresholds, paying for the choice (Bonferroni).

    The guess is "member" when ``score >= threshold``.  Candidates: ``thresholds`` if given (they
    must not be chosen from these scores), else every cut of the pooled scores (each distinct
    score, plus +inf), so ``T`` candidates.  Half of ``alpha`` goes to the FPR bounds and half to
    the FNR bounds, each split ``c`` ways:

    * ``c_fpr = min(T, n_neg)`` for ``thresholds`` fixed in advance, ``n_neg`` for thresholds taken
      from the scores (the default).  ``T``: a plain union bound over the candidate thresholds,
      valid only when they do not depend on the data (with heavy ties the data give fewer
      thresholds than ``n_neg``, but which ones is itself random).  ``n_neg``: a union bound over
      the possible false-positive counts ``k = 0 .. n_neg - 1``
      (``k = n_neg`` gives FPR_u = 1 and claims nothing).  For each ``k``, "some threshold has at
      most ``k`` false positives although its true FPR exceeds the upper bound ``u_k``" is the
      event that the single largest threshold with true FPR above ``u_k`` has at most ``k``,
      which has probability at most ``alpha_fpr``; so the bounds hold for every threshold at
      once, even thresholds picked from the data.
    * ``c_fnr`` likewise (``n_pos``) for the false negatives.

    With all bounds valid together (probability ``>= 1 - alpha``) the largest per-threshold eps
    is a valid lower bound.  ``best_possible`` is the bound at FP = FN = 0 under the same
    correction.
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(non_member_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    _check_probs(delta, alpha)
    if thresholds is None:
        thr = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    else:
        thr = np.unique(np.asarray(thresholds, dtype=np.float64).ravel())
        if thr.size == 0:
            raise ValueError("thresholds is empty")
    n_pos, n_neg, t = int(pos.size), int(neg.size), int(thr.size)
    fixed = thresholds is not None
    a_fpr = alpha / 2 / (min(t, n_neg) if fixed else n_neg)
    a_fnr = alpha / 2 / (min(t, n_pos) if fixed else n_pos)
    fp = n_neg - np.searchsorted(np.sort(neg), thr, side="left")  # non-members with score >= thr
    fn = np.searchsorted(np.sort(pos), thr, side="left")  # members with score < thr
    eps = _cp_eps(fp, n_neg, fn, n_pos, delta, a_fpr, a_fnr)
    i = int(np.argmax(eps))
    ceiling = float(_cp_eps(np.array([0]), n_neg, np.array([0]), n_pos, delta, a_fpr, a_fnr)[0])
    return ThresholdAudit(
        eps_lower_bound=float(eps[i]),
        threshold=float(thr[i]),
        fp=int(fp[i]),
        n_neg=n_neg,
        fn=int(fn[i]),
        n_pos=n_pos,
        delta=float(delta),
        alpha=float(alpha),
        alpha_fpr=a_fpr,
        alpha_fnr=a_fnr,
        n_thresholds=t,
        best_possible=ceiling,
    )
