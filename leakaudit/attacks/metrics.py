"""Metrics of a membership-inference attack, from scores where higher means member.

AUC is the Mann-Whitney statistic with ties counted 1/2 (what scikit-learn computes).  TPR
at a fixed FPR comes from the step-function ROC: the best TPR among thresholds whose FPR is
at most alpha, never interpolated.  With N non-members the FPR moves in steps of 1/N, so
an alpha below 1/N is only met by FPR = 0 and the result says so; so does an alpha that allows
fewer than ten false positives (with 1,000 non-members, the TPR at 0.1% FPR rests on one).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta, binom, mannwhitneyu, rankdata

from leakaudit.report.schema import DP_UNCHECKED, FPR_LEVELS, AttackResult, DPBoundCheck, RocCurve

COARSE_FP = 10  # a TPR at a level allowing fewer false positives than this is flagged as coarse


def _check(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(members, dtype=np.float64)
    n = np.asarray(non_members, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("scores must be finite (NaN or inf would silently change the class balance)")
    return m, n


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member score > non-member score) + 1/2 P(equal)."""
    m, n = _check(members, non_members)
    ranks = rankdata(np.concatenate([m, n]))
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def auc_p_value(members: np.ndarray, non_members: np.ndarray) -> float:
    """One-sided p-value that members score higher than non-members (AUC above 0.5).

    The Mann-Whitney U test (its statistic is the AUC times the number of pairs): exact for small
    samples without ties, otherwise the normal approximation with the tie correction.  Valid when,
    under "the model never saw these records", member and non-member scores are exchangeable,
    i.e. when members and non-members were split at random.
    """
    m, n = _check(members, non_members)
    return float(mannwhitneyu(m, n, alternative="greater").pvalue)


JOINT_PERMUTATIONS = 9999
"""Relabellings of the joint permutation tests (their p-values resolve down to 1 / 10,000)."""


def _units(member: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(each record's unit index 0..U-1, whether each unit is a member): a record's group, or the record itself
    without groups; every unit must lie on one side."""
    if groups is None:
        return np.arange(member.size), member
    _, unit = np.unique(np.asarray(groups), return_inverse=True)
    unit = unit.reshape(-1)
    if unit.size != member.size:
        raise ValueError(f"{unit.size} group ids for {member.size} records")
    unit_member = np.zeros(int(unit.max()) + 1, dtype=bool)
    unit_member[unit[member]] = True
    if (unit_member[unit] != member).any():
        raise ValueError("a group has records among both members and non-members")
    return unit, unit_member


def _max_t_p_values(values: np.ndarray, member: np.ndarray, groups: np.ndarray | None, *, permutations: int,
                    seed: int, chunk_elements: int = 1 << 22) -> np.ndarray:
    """Single-step max-T permutation p-values (Westfall and Young) of "members' mean is higher", one per column.

    ``values``: [records, tests].  Each test's statistic is the members' mean minus the non-members' mean, divided
    by the standard deviation of its values (with records as the units that is the statistic's own spread over
    the relabellings up to a factor common to all tests, so tests on different scales, or with many ties, weigh
    alike; it does not depend on the labels, so the test stays exact).  The units (:func:`_units`) are relabelled
    at random, the number of member units kept, and each observed statistic is compared with the largest of all
    the tests' statistics in every relabelling.  A test whose statistic never varies gets p = 1.
    """
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    unit, unit_member = _units(member, groups)
    n_all, n_units = member.size, unit_member.size
    k = int(unit_member.sum())
    if k == 0 or k == n_units:
        raise ValueError("need at least one member and one non-member score")
    total = values.sum(axis=0)

    def stat(inside: np.ndarray) -> np.ndarray:  # inside: [rows, records] 0/1 -> [rows, tests]
        n_in = inside.sum(axis=1, keepdims=True)
        s_in = inside @ values
        return s_in / n_in - (total - s_in) / (n_all - n_in)

    observed = stat(member[None, :].astype(np.float64))[0]
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elements // max(n_all, n_units))
    null = np.empty((permutations, values.shape[1]))
    for start in range(0, permutations, rows):
        c = min(rows, permutations - start)
        pick = rng.random((c, n_units)).argpartition(k - 1, axis=1)[:, :k]  # k random units per row
        chosen = np.zeros((c, n_units))
        np.put_along_axis(chosen, pick, 1.0, axis=1)
        null[start : start + c] = stat(chosen[:, unit])
    sd = values.std(axis=0)  # the values' spread: the same whichever labelling was observed, as validity needs
    scale = np.where(sd > 0, sd, 1.0)
    largest = (null / scale).max(axis=1)
    tol = 1e-9 * max(1.0, float(np.abs(observed / scale).max()))
    hits = (largest[:, None] >= (observed / scale)[None, :] - tol).sum(axis=0)
    p = (1 + hits) / (1 + permutations)
    still = np.ptp(null, axis=0) == 0
    return np.where(still, 1.0, p)


def _joint(values: np.ndarray, member: np.ndarray, groups: np.ndarray | None, permutations: int, seed: int,
           alone: list[float] | None) -> np.ndarray:
    """:func:`_max_t_p_values`, with each test's own exact p-value ``alone`` (records as the units only) giving
    the Bonferroni value where the permutation estimate sits at its floor (no relabelling reached it), when
    smaller.  Only there: anywhere else Bonferroni is a second, separate test, and taking the smaller of two
    tests' p-values would reject more often than either (attacks with many tied scores move the max-T little
    while Bonferroni still tests them at alpha / K)."""
    p = _max_t_p_values(values, member, groups, permutations=permutations, seed=seed)
    if alone is not None:
        floor = 1.0 / (1 + permutations)
        bound = np.minimum(1.0, len(alone) * np.asarray(alone, dtype=np.float64))
        p = np.where(p <= floor * (1 + 1e-12), np.minimum(p, bound), p)
    return np.minimum(1.0, p)


def _scores_matrix(scores: dict[str, np.ndarray], member: np.ndarray) -> np.ndarray:
    cols = []
    for a, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != member.shape:
            raise ValueError(f"{a!r}: {s.size} values for {member.size} records")
        _check(s[member], s[~member])
        cols.append(s)
    return np.column_stack(cols)


def joint_auc_p_values(
    scores: dict[str, np.ndarray],
    member: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    permutations: int = JOINT_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, float]:
    """Each attack's p-value that its AUC exceeds 0.5, adjusted for all the attacks together.

    Westfall and Young's single-step max-T method over the attacks' AUCs (on ranks, AUC - 1/2 is the
    members' mean rank minus the non-members', over the number of records): each attack's AUC, in
    units of its ranks' spread (an attack with many tied scores spreads less), is
    compared with the largest such value of *any* attack under random relabellings of the same records,
    the number of member units kept.  Under "the model never saw these records" with a random split, the
    labels are exchangeable, so the family-wise error is controlled whatever the attacks' dependence:
    attacks that measure nearly the same thing (LOSS, zlib, Min-K%) cost almost nothing, where
    Bonferroni pays a factor for each.  Attacks must not use the membership labels (none does).

    ``groups``: a unit id per record (a person), for splits made per unit: every unit's records must
    lie on one side, and the units, not the records, are relabelled (a person's records resemble one
    another, so relabelling them one by one would understate chance).  Without it each record is a unit.
    The estimate ``(1 + hits) / (1 + permutations)`` cannot go below its resolution; where it sits there
    and records are the units (no ``groups``), the Bonferroni value (the attacks' count times the
    Mann-Whitney p-value, a valid test on its own) is taken when smaller: below 1 / (permutations + 1)
    only Bonferroni can reject, above it only the permutation test does.
    ``scores``: attack -> one finite score per record (higher = member), all over the same records.
    """
    member = np.asarray(member, dtype=bool)
    if not scores:
        return {}
    values = _scores_matrix(scores, member)
    ranks = np.column_stack([rankdata(v) for v in values.T])
    alone = None if groups is not None else [auc_p_value(v[member], v[~member]) for v in values.T]
    return {a: float(x) for a, x in zip(scores, _joint(ranks, member, groups, permutations, seed, alone))}


def joint_rate_p_values(
    hits: dict[str, np.ndarray],
    member: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    permutations: int = JOINT_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, float]:
    """Each test's p-value that members' records succeed more often than non-members', adjusted for the tests
    together: ``hits`` maps a test to one outcome per record in [0, 1] (a memorized record: 0 or 1; an
    expected success where ties are split: a fraction).

    The max-T permutation test as :func:`joint_auc_p_values`, on the difference of the two sides' rates,
    each test's difference divided by its outcomes' standard deviation.  With records as the
    units, one test and 0/1 outcomes it is Fisher's exact test (the margins are what a relabelling keeps);
    with ``groups`` whole units (people) are relabelled.  Without ``groups``, with 0/1 outcomes, an
    estimate at the permutations' floor takes the Bonferroni value over Fisher's p-values when smaller.
    """
    from leakaudit.report.stats import fisher_greater

    member = np.asarray(member, dtype=bool)
    if not hits:
        return {}
    values = _scores_matrix(hits, member)
    if ((values < 0) | (values > 1)).any():
        raise ValueError("each outcome must lie in [0, 1]")
    alone = None
    if groups is None and np.isin(values, (0.0, 1.0)).all():  # Fisher needs whole counts
        n1, n0 = int(member.sum()), int((~member).sum())
        alone = [fisher_greater(int(v[member].sum()), n1, int(v[~member].sum()), n0) for v in values.T]
    return {a: float(x) for a, x in zip(hits, _joint(values, member, groups, permutations, seed, alone))}


def roc_curve(members: np.ndarray, non_members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step-function ROC: ``(fpr, tpr, thresholds)`` for "member if score >= threshold".

    The first point is (0, 0) at threshold +inf; one point per distinct score after that.
    """
    m, n = _check(members, non_members)
    fp, tp, thr = _roc_counts(m, n)
    return fp / n.size, tp / m.size, thr


def _roc_counts(m: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`roc_curve` as counts: ``(false positives, true positives, thresholds)``, both counts non-decreasing."""
    thr = np.unique(np.concatenate([m, n]))[::-1]
    tp = m.size - np.searchsorted(np.sort(m), thr, side="left")
    fp = n.size - np.searchsorted(np.sort(n), thr, side="left")
    return np.r_[0, fp], np.r_[0, tp], np.r_[np.inf, thr]


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, alpha: float) -> float:
    """Largest TPR over thresholds with FPR <= alpha (no interpolation)."""
    fpr, tpr, _ = roc_curve(members, non_members)
    return float(tpr[fpr <= alpha + 1e-12].max())


def advantage(members: np.ndarray, non_members: np.ndarray) -> float:
    """max over thresholds of TPR - FPR (balanced accuracy = (1 + advantage) / 2)."""
    fpr, tpr, _ = roc_curve(members, non_members)
    return _advantage(fpr, tpr)


def _advantage(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.max(tpr - fpr))


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 300) -> RocCurve:
    """Keep the ROC's shape at low FPR (log-spaced) with a bounded number of points."""
    if fpr.size <= max_points:
        return RocCurve(fpr=[float(x) for x in fpr], tpr=[float(y) for y in tpr])
    grid = np.unique(np.concatenate([[0.0], np.geomspace(max(fpr[fpr > 0].min(), 1e-6), 1.0, max_points - 1)]))
    # the best TPR at FPR <= g, for each grid value g: a step function, like the ROC itself
    idx = np.searchsorted(fpr, grid, side="right") - 1
    best = np.maximum.accumulate(tpr)
    return RocCurve(fpr=[float(x) for x in grid], tpr=[float(y) for y in best[idx]])


def bootstrap_auc_ci(
    members: np.ndarray, non_members: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling members and non-members separately."""
    m, n = _check(members, non_members)
    rng = np.random.default_rng(seed)
    wins = _wins(m, n)
    out = np.empty(n_boot)
    for b in range(n_boot):
        drawn_m = rng.integers(0, m.size, m.size)
        drawn_n = rng.integers(0, n.size, n.size)
        out[b] = _weighted_auc(wins, np.bincount(drawn_m, minlength=m.size), np.bincount(drawn_n, minlength=n.size))
    lo, hi = np.quantile(out, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _wins(m: np.ndarray, n: np.ndarray):
    """What :func:`_weighted_auc` needs of the scores, computed once: the non-members' sorting order and each
    member's two positions (below, and up to ties) among the sorted non-members.

    One sort, then O(m + n) a weighting: each member's non-members below and equal are the non-members'
    weights summed up to its two positions.  The same exact (half-integer) sums as recomputing the AUC of
    each resample, without a sort a resample (6x faster at 100,000 records)."""
    order = np.argsort(n, kind="stable")
    return order, np.searchsorted(n[order], m, side="left"), np.searchsorted(n[order], m, side="right")


def _weighted_auc(wins, w_m: np.ndarray, w_n: np.ndarray) -> float:
    """The AUC with member ``i`` counted ``w_m[i]`` times and non-member ``j`` ``w_n[j]`` times (a resample)."""
    order, below, upto = wins
    counted = np.zeros(w_n.size + 1, dtype=np.float64)  # counted[i]: weight of the i smallest non-members
    np.cumsum(w_n[order], out=counted[1:])
    won = counted[below] + 0.5 * (counted[upto] - counted[below])
    return float((w_m @ won) / (w_m.sum() * w_n.sum()))


def tpr_interval(members: np.ndarray, non_members: np.ndarray, alpha: float,
                 level: float = 0.95) -> tuple[float, float]:
    """Interval of the TPR at FPR ``alpha`` of the attack's true ROC, allowing for the threshold's own error.

    The threshold is chosen from the non-members, so its true FPR is itself uncertain: a Clopper-Pearson
    interval at the chosen threshold covers the TPR at that threshold, not the TPR at FPR ``alpha`` (in a
    simulation, 1,000 records a side, it covered the latter only about half the time at 1% FPR).  Here the
    threshold just above the ``c + 1``-th largest non-member score has a true FPR distributed as Beta(c + 1,
    n - c) (continuous scores), so P(its FPR <= alpha) = P(Binomial(n, alpha) >= c + 1).  The lower end is the
    Clopper-Pearson lower bound of the TPR at the largest ``c`` whose threshold has FPR <= alpha with
    probability 1 - a, the upper end the upper bound at the smallest ``c`` whose threshold has FPR >= alpha
    with probability 1 - a, each at error a, with a = (1 - ``level``) / 4: at least ``level`` coverage for any
    continuous score distributions (tied scores move each threshold to the safe side).  With too few
    non-members for alpha (no threshold has FPR <= alpha with that probability) the lower end is 0.
    Records must be independent (with a per-person split, :func:`cluster_bootstrap_cis`).
    """
    m, n = _check(members, non_members)
    fp, tp, _ = _roc_counts(m, n)
    return _tpr_interval(fp, tp, m.size, n.size, alpha, level)


def _tpr_interval(fp: np.ndarray, tp: np.ndarray, n_members: int, n_non_members: int, alpha: float,
                  level: float = 0.95) -> tuple[float, float]:
    """:func:`tpr_interval` from the ROC's counts (:func:`_roc_counts`)."""
    a = (1 - level) / 4
    one_sided = 1 - 2 * a  # a two-sided Clopper-Pearson level whose one end errs with probability a
    c = np.arange(n_non_members + 1)
    safe_below = np.flatnonzero(binom.sf(c, n_non_members, alpha) >= 1 - a)  # P(FPR <= alpha) >= 1 - a
    lo = 0.0
    if safe_below.size:  # the ROC point with the most members among those with at most c_lo false positives
        lo = clopper_pearson(int(tp[np.flatnonzero(fp <= safe_below[-1])[-1]]), n_members, one_sided)[0]
    c_hi = int(np.flatnonzero(binom.cdf(c, n_non_members, alpha) >= 1 - a)[0])  # P(FPR >= alpha) >= 1 - a
    # at or below that threshold: its FPR only larger
    return lo, clopper_pearson(int(tp[np.flatnonzero(fp >= c_hi)[0]]), n_members, one_sided)[1]


def cluster_bootstrap_cis(
    members: np.ndarray, non_members: np.ndarray, member_groups: np.ndarray, non_member_groups: np.ndarray,
    alphas=FPR_LEVELS, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[tuple[float, float], dict[str, tuple[float, float]]]:
    """Percentile bootstrap intervals of the AUC and of the TPR at each FPR in ``alphas``, resampling people.

    For records split per person: one person's records go in or out together and are alike, so they are not
    independent draws, and intervals that resample records (or Clopper-Pearson's) are too narrow (a simulated
    model that saw nobody: a record-level 95% AUC interval held 0.5 in about 78% of audits).  Each resample
    draws the member people and the non-member people with replacement (each side its own count of people),
    each drawn person bringing all their records; the TPR at FPR alpha is recomputed on each resample (its
    threshold re-chosen), so the interval allows for the threshold's error too.  Approximate, as any
    bootstrap, most of all at an FPR allowing few false positives.
    """
    m, n = _check(members, non_members)
    um = np.unique(np.asarray(member_groups), return_inverse=True)[1].reshape(-1)
    un = np.unique(np.asarray(non_member_groups), return_inverse=True)[1].reshape(-1)
    if um.size != m.size or un.size != n.size:
        raise ValueError(f"{um.size} and {un.size} group ids for {m.size} members and {n.size} non-members")
    people_m, people_n = int(um.max()) + 1, int(un.max()) + 1
    rng = np.random.default_rng(seed)
    wins = _wins(m, n)
    # the ROC of a resample: all scores sorted once, highest first; a threshold per distinct score
    scores = np.concatenate([m, n])
    order = np.argsort(-scores, kind="stable")
    is_member = (np.arange(scores.size) < m.size)[order]
    ends = np.r_[np.flatnonzero(np.diff(scores[order]) != 0), scores.size - 1]  # last of each tie group
    aucs, tprs = np.empty(n_boot), {a: np.empty(n_boot) for a in alphas}
    for b in range(n_boot):
        w_m = np.bincount(rng.integers(0, people_m, people_m), minlength=people_m)[um].astype(float)
        w_n = np.bincount(rng.integers(0, people_n, people_n), minlength=people_n)[un].astype(float)
        aucs[b] = _weighted_auc(wins, w_m, w_n)
        w = np.concatenate([w_m, w_n])[order]
        tp = np.cumsum(np.where(is_member, w, 0.0))[ends] / w_m.sum()
        fp = np.cumsum(np.where(is_member, 0.0, w))[ends] / w_n.sum()
        for a in alphas:
            ok = fp <= float(a) + 1e-12
            tprs[a][b] = tp[ok].max() if ok.any() else 0.0
    q = [(1 - level) / 2, (1 + level) / 2]

    def pair(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.quantile(x, q)
        return float(lo), float(hi)

    return pair(aucs), {a: pair(x) for a, x in tprs.items()}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes out of n."""
    a = 1 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _dp_tpr_bound(epsilon: float, fpr: np.ndarray, delta: float) -> np.ndarray:
    """``e^eps * FPR + delta`` without overflow: at FPR 0 it is delta for any finite eps (inf * 0 would be NaN);
    an infinite eps bounds nothing (1)."""
    if math.isinf(epsilon):
        return np.ones_like(fpr, dtype=float)
    scale = np.exp(min(float(epsilon), 700.0))
    return np.where(fpr > 0, scale * np.maximum(fpr, 0.0), 0.0) + delta


def dp_max_tpr(epsilon: float, delta: float, fpr: np.ndarray) -> np.ndarray:
    """The most TPR an (eps, delta)-DP test can have at each FPR: the lower of ``e^eps FPR + delta`` and, from
    ``TNR <= e^eps FNR + delta``, ``1 - e^-eps (1 - delta - FPR)``; in [0, 1]."""
    fpr = np.asarray(fpr, dtype=float)
    mirror = 1.0 - np.exp(-min(float(epsilon), 700.0)) * (1.0 - delta - fpr)
    return np.clip(np.minimum(_dp_tpr_bound(epsilon, fpr, delta), mirror), 0.0, 1.0)


def dp_test_counts(n: int) -> list[int]:
    """The false-positive counts at which the DP bound is tested among ``n`` non-members: 0, 1, 2, 4, ... below
    ``n``.  Fixed before the scores are seen, so that the correction over them is fixed too."""
    return [0] + [2**j for j in range(64) if 2**j <= n - 1]


def _dp_side(m: np.ndarray, n: np.ndarray, epsilon: float, delta: float, each: float) -> tuple[bool, float]:
    """(whether TPR <= e^eps FPR + delta fails beyond sampling error at one of :func:`dp_test_counts`, the
    largest empirical excess over the ROC) for "member if score >= threshold" (``each``: each test's level)."""
    fp, tp, _ = _roc_counts(m, n)
    excess = float((tp / m.size - _dp_tpr_bound(epsilon, fp / n.size, delta)).max())
    for c in dp_test_counts(n.size):
        i = np.flatnonzero(fp <= c)[-1]  # the threshold above the (c + 1)-th largest non-member score
        if _beyond_bound(int(tp[i]), m.size, int(fp[i]), n.size, each, epsilon, delta):
            return True, excess
    return False, excess


def dp_bound_check(
    members: np.ndarray, non_members: np.ndarray, epsilon: float, delta: float, level: float = 0.95
) -> DPBoundCheck:
    """Test an attack's ROC against (eps, delta)-DP, allowing for sampling error.

    Under (eps, delta)-DP every test satisfies TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta
    (the same bound with members and non-members swapped and the scores negated).  Each is tested at the
    thresholds just above the ``c + 1``-th largest score of the side in the FPR's place, ``c`` in
    :func:`dp_test_counts` (about log2 n of them, fixed in advance: a threshold at an order statistic has a true
    FPR whose Clopper-Pearson upper bound at ``c`` false positives is exact).  A violation is declared only when
    the Clopper-Pearson lower bound on the TPR exceeds the bound computed from the upper bound on the FPR, with
    the confidence level Bonferroni-corrected over all the thresholds of both, so that chance raises a false
    alarm with probability below ``1 - level`` (about 22 tests at 500 records a side, where the correction
    over every ROC point would be about 1,000: more power, and the same count whatever the ties).
    ``testable``: whether a perfectly separating attack on as many records would be declared a violation, by
    the same tests (so a check that is not testable cannot fail).
    """
    m, n = _check(members, non_members)
    each = 1 - (1 - level) / (len(dp_test_counts(n.size)) + len(dp_test_counts(m.size)))
    above, excess = _dp_side(m, n, epsilon, delta, each)
    below, excess_swapped = _dp_side(-n, -m, epsilon, delta, each)
    # a perfect attack: every member above every non-member, at FPR 0 (both inequalities at count 0)
    testable = (_beyond_bound(m.size, m.size, 0, n.size, each, epsilon, delta)
                or _beyond_bound(n.size, n.size, 0, m.size, each, epsilon, delta))
    return DPBoundCheck(epsilon=epsilon, delta=delta, violated=above or below,
                        max_excess=max(excess, excess_swapped), testable=testable, level=level)


def _beyond_bound(tp: int, n_members: int, fp: int, n_non_members: int, level: float, epsilon: float,
                  delta: float) -> bool:
    """Whether the Clopper-Pearson lower bound on TPR = tp / n_members exceeds the DP bound at the upper bound
    on FPR = fp / n_non_members (intervals at ``level``)."""
    fpr_hi = clopper_pearson(fp, n_non_members, level)[1]
    return bool(clopper_pearson(tp, n_members, level)[0] > _dp_tpr_bound(epsilon, np.array([fpr_hi]), delta)[0])


def group_bound(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """The (eps, delta) that protects a group of ``k`` records under a record-level (eps, delta) guarantee:
    ``(k eps, k e^((k-1) eps) delta)`` (delta capped at 1, where the bound says nothing)."""
    if k < 1:
        raise ValueError("a group has at least one record")
    if k == 1:
        return float(epsilon), float(delta)  # (k - 1) eps would be 0 * inf = NaN at eps inf
    exponent = (k - 1) * float(epsilon)
    group_delta = 1.0 if exponent > 700 else min(1.0, k * math.exp(exponent) * float(delta))
    return k * float(epsilon), group_delta


def attack_result(
    members: np.ndarray,
    non_members: np.ndarray,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    n_boot: int = 1000,
    group: int = 1,
    dp_subset: tuple[np.ndarray, np.ndarray] | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
    dp_level: float = 0.95,
) -> AttackResult:
    """AUC with its bootstrap interval, TPR at 0.1%, 1% and 10% FPR with their intervals (:func:`tpr_interval`),
    balanced accuracy, the ROC for plotting, resolution warnings and, for a DP model, the DP bound check.

    ``group``: how many training records one member unit may stand for (a canary inserted k times).
    The check kept in the result is always against the record-level bound (the report says what a
    unit's excess over it means); the warning that the DP training or its accounting is broken is
    given only when the ROC exceeds the bound that protects such a group (:func:`group_bound`).
    ``dp_subset``: boolean masks over ``members`` and ``non_members`` of the records the DP bound is checked on
    (records split per person: those whose person has no other record, the only ones a record-level
    guarantee speaks for); none on a side leaves the bound unchecked, with a warning saying why.
    ``groups``: each member's and each non-member's person, for records split per person: the AUC and TPR
    intervals then resample people (:func:`cluster_bootstrap_cis`; ``n_boot`` 0: no intervals at all).
    ``dp_level``: the DP bound check's confidence (an audit running k such checks on one model passes
    ``1 - 0.05 / k``, so that any of them failing says the guarantee failed at 95% overall).
    """
    m, n = _check(members, non_members)
    delta = 0.0 if delta is None else delta
    fp, tp, _ = _roc_counts(m, n)
    fpr, tpr = fp / n.size, tp / m.size
    res = 1.0 / n.size
    warns = []
    for a in FPR_LEVELS:
        allowed = int(np.floor(float(a) * n.size + 1e-9))  # false positives the level allows
        if allowed == 0:
            warns.append(f"TPR at FPR {float(a):.1%} rests on no non-member sample (resolution 1/{n.size} = "
                         f"{res:.2%}); it is the TPR at FPR 0")
        elif allowed < COARSE_FP:
            warns.append(f"TPR at FPR {float(a):.1%} allows only {allowed} false positive(s) among {n.size} "
                         "non-members: a coarse estimate (see its confidence interval)")
    tprs = {a: float(tpr[fpr <= float(a) + 1e-12].max()) for a in FPR_LEVELS}
    dp = None
    dm, dn = (m, n) if dp_subset is None else (m[np.asarray(dp_subset[0], bool)], n[np.asarray(dp_subset[1], bool)])
    if epsilon is not None and not (dm.size and dn.size):
        warns.append(f"{DP_UNCHECKED}records were split per person and {dm.size} member and "
                     f"{dn.size} non-member records belong to people with no other audited record (a person's "
                     "records together are protected only at group privacy)")
    elif epsilon is not None:
        dp = dp_bound_check(dm, dn, epsilon, delta, dp_level)
        if dp_subset is not None:
            dp = dp.model_copy(update={"scope": "records of people with no other audited record",
                                       "n_members": int(dm.size), "n_non_members": int(dn.size)})
        broken = dp
        if group > 1 and dp.violated:
            broken = dp_bound_check(dm, dn, *group_bound(epsilon, delta, group), dp_level)
        if broken.violated:
            of = f" for groups of {group} records" if group > 1 else ""
            warns.append(
                f"the attack's ROC exceeds the (eps={broken.epsilon:.2f}, delta={broken.delta:g}) DP bound{of} "
                "beyond sampling error: the DP training or its accounting is broken"
            )
    if groups is not None:
        auc_ci, tpr_ci = cluster_bootstrap_cis(m, n, *groups, n_boot=n_boot) if n_boot else (None, {})
    else:
        auc_ci = bootstrap_auc_ci(m, n, n_boot=n_boot) if n_boot else None
        tpr_ci = {a: _tpr_interval(fp, tp, m.size, n.size, float(a)) for a in FPR_LEVELS}
    return AttackResult(
        auc=auc(m, n),
        auc_ci=auc_ci,
        auc_pvalue=auc_p_value(m, n),
        tpr_at_fpr=tprs,
        tpr_ci=tpr_ci,
        intervals="people" if groups is not None else "records",
        balanced_accuracy=(1 + _advantage(fpr, tpr)) / 2,
        n_members=int(m.size),
        n_non_members=int(n.size),
        min_resolvable_fpr=res,
        dp_bound=dp,
        warnings=warns,
        roc=thin_roc(fpr, tpr),
    )
