"""Metric functions against scikit-learn and a brute-force threshold sweep."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from leakaudit.attacks.metrics import advantage, attack_result, auc, roc_curve, thin_roc, tpr_at_fpr


def _cases():
    rng = np.random.default_rng(0)
    yield rng.normal(0.3, 1, 200), rng.normal(0, 1, 300)  # continuous
    yield rng.integers(0, 5, 150).astype(float), rng.integers(0, 4, 170).astype(float)  # heavy ties
    yield np.ones(10), np.ones(7)  # all tied
    yield np.array([3.0]), np.array([1.0, 2.0, 5.0])


@pytest.mark.parametrize("case", list(_cases()))
def test_auc_equals_sklearn(case):
    m, n = case
    y = np.r_[np.ones(m.size), np.zeros(n.size)]
    assert auc(m, n) == pytest.approx(roc_auc_score(y, np.r_[m, n]), abs=1e-12)


@pytest.mark.parametrize("case", list(_cases()))
def test_roc_points_match_sklearn(case):
    m, n = case
    y = np.r_[np.ones(m.size), np.zeros(n.size)]
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, np.r_[m, n], drop_intermediate=False)
    fpr, tpr, _ = roc_curve(m, n)
    assert set(zip(np.round(fpr, 12), np.round(tpr, 12))) == set(zip(np.round(sk_fpr, 12), np.round(sk_tpr, 12)))


def _brute_tpr(m, n, alpha):
    best = 0.0
    for t in np.r_[np.inf, np.unique(np.r_[m, n])]:
        if np.mean(n >= t) <= alpha:
            best = max(best, np.mean(m >= t))
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.001, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("case", list(_cases()))
def test_tpr_at_fpr_equals_brute_force(case, alpha):
    m, n = case
    assert tpr_at_fpr(m, n, alpha) == pytest.approx(_brute_tpr(m, n, alpha))


def test_advantage_brute_force():
    rng = np.random.default_rng(1)
    m, n = rng.normal(1, 1, 50), rng.normal(0, 1, 60)
    brute = max(np.mean(m >= t) - np.mean(n >= t) for t in np.r_[np.inf, m, n])
    assert advantage(m, n) == pytest.approx(brute)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        auc(np.array([1.0, np.nan]), np.array([0.0]))


def test_attack_result_warns_about_unresolvable_fpr():
    rng = np.random.default_rng(2)
    r = attack_result(rng.normal(size=100), rng.normal(size=200))
    assert set(r.tpr_at_fpr) == {"0.001", "0.01", "0.1"}
    assert r.min_resolvable_fpr == pytest.approx(1 / 200)
    # 200 non-members: 0.1% allows no false positive, 1% two (coarse), 10% twenty (fine)
    assert len(r.warnings) == 2
    assert "TPR at FPR 0.1% rests on no non-member sample" in r.warnings[0]
    assert "TPR at FPR 1.0% allows only 2 false positive(s) among 200 non-members" in r.warnings[1]
    # METHODS' case: with 1,000 non-members the TPR at 0.1% FPR rests on a single one, and says so
    r = attack_result(rng.normal(1, 1, 1000), rng.normal(0, 1, 1000), n_boot=0)
    assert r.warnings == ["TPR at FPR 0.1% allows only 1 false positive(s) among 1000 non-members: a coarse "
                          "estimate (see its confidence interval)"]
    assert attack_result(rng.normal(size=50), rng.normal(size=10_000), n_boot=0).warnings == []


def test_dp_bound_check_at_extreme_epsilons_and_without_delta():
    """e^eps overflows past eps ~ 709: at FPR 0 the bound is delta (not inf * 0 = NaN), and a privacy record
    with eps but no delta is read as delta 0 instead of failing on the warning's format."""
    from leakaudit.attacks.metrics import dp_bound_check, group_bound

    m, n = np.linspace(10, 11, 500), np.linspace(0, 1, 500)  # perfect separation: TPR 1 at FPR 0
    check = dp_bound_check(m, n, epsilon=800.0, delta=1e-5)
    # the excess at FPR 0 is finite; no violation: the FPR's upper bound times e^eps covers any TPR
    assert check.max_excess == pytest.approx(1 - 1e-5) and not check.violated
    # an infinite eps bounds no TPR, at FPR 0 too (it gave delta there: an excess of 1 - delta)
    check = dp_bound_check(m, n, epsilon=float("inf"), delta=1e-5)
    assert check.max_excess <= 0 and not check.violated
    assert group_bound(float("inf"), 1e-5, 1) == (float("inf"), 1e-5)  # (k - 1) eps was 0 * inf = NaN
    r = attack_result(m, n, epsilon=0.1, delta=None, n_boot=0)
    assert r.dp_bound.delta == 0.0 and r.dp_bound.violated
    assert any("delta=0" in w and "DP bound" in w for w in r.warnings)


def test_perfect_separation():
    r = attack_result(np.arange(10, 20.0), np.arange(0, 10.0))
    assert r.auc == 1.0 and r.tpr_at_fpr["0.001"] == 1.0


def test_thin_roc_keeps_a_step_function_below_the_curve():
    rng = np.random.default_rng(3)
    m, n = rng.normal(0.5, 1, 5000), rng.normal(0, 1, 5000)
    fpr, tpr, _ = roc_curve(m, n)
    thin = thin_roc(fpr, tpr, max_points=100)
    assert len(thin.fpr) <= 100
    for f, t in zip(thin.fpr, thin.tpr):
        assert t == pytest.approx(tpr_at_fpr(m, n, f))


def test_clopper_pearson_known_values():
    from scipy.stats import binomtest

    from leakaudit.attacks.metrics import clopper_pearson

    for k, n in [(0, 10), (3, 10), (10, 10), (57, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_bootstrap_interval_covers_the_auc_and_narrows_with_data():
    from leakaudit.attacks.metrics import bootstrap_auc_ci

    rng = np.random.default_rng(4)
    small = bootstrap_auc_ci(rng.normal(0.5, 1, 50), rng.normal(0, 1, 50), n_boot=300)
    m, n = rng.normal(0.5, 1, 2000), rng.normal(0, 1, 2000)
    big = bootstrap_auc_ci(m, n, n_boot=300)
    assert big[0] < auc(m, n) < big[1]
    assert big[1] - big[0] < small[1] - small[0]


def test_dp_bound_check_flags_only_real_violations():
    from leakaudit.attacks.metrics import dp_bound_check

    rng = np.random.default_rng(5)
    m, n = rng.normal(3, 1, 500), rng.normal(0, 1, 500)  # a strong attack
    assert dp_bound_check(m, n, epsilon=0.1, delta=1e-5).violated  # cannot come from a 0.1-DP model
    assert not dp_bound_check(m, n, epsilon=8.0, delta=1e-5).violated
    same = rng.normal(0, 1, 500), rng.normal(0, 1, 500)  # chance: never a violation
    assert not dp_bound_check(*same, epsilon=0.01, delta=0.0).violated


def test_the_dp_bound_is_checked_only_where_one_record_differs():
    """Records split per person: a person's records go in or out together, so the record-level bound speaks only
    for people with one record.  A strong signal carried by people of many records is no violation; the same
    signal among single-record people is."""
    from leakaudit.attacks.metrics import attack_result

    rng = np.random.default_rng(6)
    m, n = np.r_[rng.normal(3, 1, 300), rng.normal(0, 1, 100)], rng.normal(0, 1, 400)
    single_m, single_n = np.arange(400) >= 300, np.arange(400) >= 300  # the last 100 of each side
    assert attack_result(m, n, epsilon=0.1, delta=1e-5, n_boot=0).dp_bound.violated  # all records: violated
    r = attack_result(m, n, epsilon=0.1, delta=1e-5, n_boot=0, dp_subset=(single_m, single_n))
    assert not r.dp_bound.violated and not any("broken" in w for w in r.warnings)
    assert (r.dp_bound.scope, r.dp_bound.n_members, r.dp_bound.n_non_members) == (
        "records of people with no other audited record", 100, 100)
    assert r.auc > 0.8 and r.n_members == 400  # everything else is over all records
    flipped = attack_result(m[::-1].copy(), n, epsilon=0.1, delta=1e-5, n_boot=0, dp_subset=(single_m, single_n))
    assert flipped.dp_bound.violated  # the strong members are now the single-record people
    none = attack_result(m, n, epsilon=0.1, delta=1e-5, n_boot=0, dp_subset=(np.zeros(400, bool), single_n))
    assert none.dp_bound is None
    assert any(w.startswith("the DP bound was not checked: records were split per person and 0 member")
               for w in none.warnings)


def test_the_dp_bound_check_says_when_no_attack_could_fail_it():
    """A check that even a perfect attack would pass at these sizes says nothing: it is marked untestable, in
    agreement with running the check on such an attack."""
    from leakaudit.attacks.metrics import dp_bound_check

    for m_size, n_size, eps in [(99, 89, 7.99), (484, 516, 7.99), (484, 516, 4.0), (500, 500, 1.0), (5, 5, 0.1)]:
        perfect = dp_bound_check(np.ones(m_size), np.zeros(n_size), eps, 1e-5)
        rng = np.random.default_rng(0)
        chance = dp_bound_check(rng.normal(size=m_size), rng.normal(size=n_size), eps, 1e-5)
        assert perfect.testable == chance.testable == perfect.violated, (m_size, n_size, eps)
    assert not dp_bound_check(np.ones(99), np.zeros(89), 7.99, 1e-5).testable
    assert dp_bound_check(np.ones(500), np.zeros(500), 1.0, 1e-5).testable


def test_group_bound_and_the_broken_warning_only_beyond_it():
    from leakaudit.attacks.metrics import attack_result, group_bound

    assert group_bound(1.0, 1e-5, 1) == (1.0, 1e-5)
    eps, d = group_bound(0.5, 1e-5, 4)
    assert eps == 2.0 and d == pytest.approx(4 * math.exp(1.5) * 1e-5)
    assert group_bound(8.0, 1e-5, 32) == (256.0, 1.0)  # nothing left to promise
    with pytest.raises(ValueError):
        group_bound(1.0, 1e-5, 0)
    rng = np.random.default_rng(3)
    m, n = rng.normal(8, 1, 60), rng.normal(0, 1, 200)  # canaries inserted many times, against references
    single = attack_result(m, n, epsilon=1.0, delta=1e-5, n_boot=0)
    assert single.dp_bound.violated and any("accounting is broken" in w for w in single.warnings)
    grouped = attack_result(m, n, epsilon=1.0, delta=1e-5, n_boot=0, group=16)
    # the record-level check is kept (the report explains it); no claim that DP is broken
    assert grouped.dp_bound.violated and grouped.dp_bound.epsilon == 1.0
    assert not any("broken" in w for w in grouped.warnings)
    # a group bound that still fails is a real alarm: 2 records at eps 0.05 cannot separate like this
    tight = attack_result(m, n, epsilon=0.05, delta=1e-5, n_boot=0, group=2)
    assert any("for groups of 2 records" in w and "broken" in w for w in tight.warnings)


def test_auc_p_value_known_answers():
    """Exact Mann-Whitney: with every member above every non-member, P(U >= m n) = 1 / C(m + n, m)."""
    from leakaudit.attacks.metrics import auc_p_value

    assert auc_p_value(np.array([3.0]), np.array([1.0, 2.0])) == pytest.approx(1 / 3)
    assert auc_p_value(np.array([4.0, 5.0, 6.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 20)
    assert auc_p_value(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])) == pytest.approx(1.0)
    # large samples, normal approximation: z = (AUC - 1/2) / sqrt((m + n + 1) / (12 m n)), no ties
    rng = np.random.default_rng(3)
    m, n = rng.normal(0.2, 1, 400), rng.normal(0, 1, 500)
    z = (auc(m, n) - 0.5) / math.sqrt((m.size + n.size + 1) / (12 * m.size * n.size))
    expected = 0.5 * math.erfc(z / math.sqrt(2))
    assert auc_p_value(m, n) == pytest.approx(expected, rel=0.02)
    assert attack_result(m, n, n_boot=0).auc_pvalue == auc_p_value(m, n)


def test_auc_p_value_is_uniform_for_a_model_that_never_saw_the_data():
    from leakaudit.attacks.metrics import auc_p_value

    rng = np.random.default_rng(7)
    p = np.array([auc_p_value(rng.normal(size=60), rng.normal(size=80)) for _ in range(1000)])
    assert 0.035 <= (p < 0.05).mean() <= 0.065
    assert 0.45 <= (p < 0.5).mean() <= 0.55


def _exact_joint(scores: dict, member: np.ndarray, groups: np.ndarray) -> dict:
    """The max-T p-values by enumerating every way of choosing the member units: each attack's AUC - 1/2 in
    units of the standard deviation of its scores' ranks."""
    import itertools

    from scipy.stats import rankdata

    def aucs(m):
        return np.array([auc(s[m], s[~m]) for s in scores.values()])

    units = np.unique(groups)
    k = len(np.unique(groups[member]))
    every = np.array([aucs(np.isin(groups, chosen)) for chosen in itertools.combinations(units, k)])
    sd = np.array([rankdata(s).std() for s in scores.values()])
    z = (every - 0.5) / sd
    observed = (aucs(member) - 0.5) / sd
    return dict(zip(scores, (z.max(axis=1)[:, None] >= observed[None, :] - 1e-9).mean(axis=0)))


@pytest.mark.parametrize("groups", [None, np.array([0, 0, 1, 2, 2, 3, 4, 4])])
def test_joint_p_values_equal_the_enumerated_permutation_test(groups):
    from leakaudit.attacks.metrics import auc_p_value, joint_auc_p_values

    member = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    scores = {"a": np.array([5, 4, 1, 3, 2, 0, -1, -2.0]), "b": np.array([1, 5, 4, 3, 0, 2, -1, -2.0]),
              "c": np.array([0, 0, 1, 1, 0, 1, 0, 1.0])}  # c: heavy ties
    exact = _exact_joint(scores, member, np.arange(8) if groups is None else groups)
    got = joint_auc_p_values(scores, member, groups=groups, permutations=40_000, seed=1)
    # 40,000 draws: the estimate's standard error is below 0.0025
    assert got == pytest.approx(exact, abs=0.01)
    if groups is None:  # one attack alone: the exact Mann-Whitney test (no ties)
        a = scores["a"]
        one = joint_auc_p_values({"a": a}, member, permutations=40_000, seed=1)["a"]
        assert one == pytest.approx(auc_p_value(a[member], a[~member]), abs=0.01)


def test_joint_p_values_pay_nothing_for_an_attack_repeated():
    """Ten copies of one attack are one test: the joint p-value stays that attack's own, where Bonferroni
    multiplies it by ten."""
    from leakaudit.attacks.metrics import auc_p_value, joint_auc_p_values

    rng = np.random.default_rng(4)
    member = np.arange(400) < 200
    s = rng.normal(size=400) + 0.22 * member
    alone = auc_p_value(s[member], s[~member])
    assert 0.005 < alone < 0.05
    copies = joint_auc_p_values({f"copy{i}": s for i in range(10)}, member, permutations=20_000, seed=2)
    for p in copies.values():
        assert p == pytest.approx(alone, rel=0.25)  # permutation estimate against the normal approximation
        assert p < 10 * alone / 3


def test_joint_p_values_below_their_resolution_take_bonferroni():
    from leakaudit.attacks.metrics import auc_p_value, joint_auc_p_values

    rng = np.random.default_rng(5)
    member = np.arange(300) < 150
    scores = {"strong": rng.normal(size=300) + 2.0 * member, "weak": rng.normal(size=300)}
    p = joint_auc_p_values(scores, member, permutations=99)
    s = scores["strong"]
    assert p["strong"] == pytest.approx(2 * auc_p_value(s[member], s[~member])) and p["strong"] < 1e-20
    # with people as the units the estimate stays at its resolution: the record-level bound does not apply
    grouped = joint_auc_p_values(scores, member, groups=np.arange(300) // 3, permutations=99)
    assert grouped["strong"] == pytest.approx(1 / 100)


def test_joint_p_values_hold_their_level_where_a_persons_records_resemble_each_other():
    """A model that never saw the data, members chosen per person, a person's four records alike: relabelling
    records one by one (Bonferroni over Mann-Whitney, or the permutation test over records) calls it leaky far
    more often than 5%; relabelling people holds the level."""
    from leakaudit.attacks.metrics import auc_p_value, joint_auc_p_values

    rng = np.random.default_rng(0)
    people, each, attacks, draws = 60, 4, 6, 200
    person = np.repeat(np.arange(people), each)
    by_records = by_people = 0
    for d in range(draws):
        member = (rng.permutation(people) < people // 2)[person]
        common = rng.normal(size=people)[person] + 0.7 * rng.normal(size=person.size)
        scores = {f"a{i}": common + 0.5 * rng.normal(size=person.size) for i in range(attacks)}
        bonferroni = attacks * min(auc_p_value(s[member], s[~member]) for s in scores.values())
        by_records += bonferroni < 0.05
        p = joint_auc_p_values(scores, member, groups=person, permutations=199, seed=d)
        by_people += min(p.values()) < 0.05
    assert by_records / draws >= 0.09
    assert by_people / draws <= 0.08  # 5% expected; 200 draws put 8% at 2.4 standard errors above it


def test_joint_p_values_refuse_bad_input():
    from leakaudit.attacks.metrics import joint_auc_p_values

    member = np.array([1, 1, 0, 0], bool)
    s = np.array([1.0, 2.0, 3.0, 4.0])
    assert joint_auc_p_values({}, member) == {}
    with pytest.raises(ValueError, match="both members and non-members"):
        joint_auc_p_values({"a": s}, member, groups=np.array([0, 1, 1, 2]))
    with pytest.raises(ValueError, match="3 values for 4 records"):
        joint_auc_p_values({"a": s[:3]}, member)
    with pytest.raises(ValueError, match="finite"):
        joint_auc_p_values({"a": np.array([1.0, np.nan, 3.0, 4.0])}, member)
    with pytest.raises(ValueError, match="at least one member"):
        joint_auc_p_values({"a": s}, np.zeros(4, bool))


def test_joint_rate_p_values_of_one_test_over_records_are_fishers():
    from leakaudit.attacks.metrics import joint_rate_p_values
    from leakaudit.report.stats import fisher_greater

    member = np.arange(60) < 25
    hit = np.zeros(60)
    hit[[0, 1, 2, 3, 4, 30, 31]] = 1  # 5 of 25 members, 2 of 35 non-members
    fisher = fisher_greater(5, 25, 2, 35)
    assert 0.02 < fisher < 0.2
    got = joint_rate_p_values({"exact": hit}, member, permutations=40_000, seed=3)["exact"]
    assert got == pytest.approx(fisher, abs=0.01)
    # two tests: the studentized max-T against enumeration is covered for scores above; here each test's p-value
    # is at most Bonferroni's and at least its own
    approx = hit.copy()
    approx[[5, 6, 40]] = 1
    both = joint_rate_p_values({"exact": hit, "approx": approx}, member, permutations=20_000, seed=3)
    assert fisher - 0.01 <= both["exact"] <= 2 * fisher + 0.01
    assert joint_rate_p_values({"none": np.zeros(60)}, member) == {"none": 1.0}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        joint_rate_p_values({"exact": hit * 2}, member)


def test_joint_rate_p_values_relabel_people():
    """A never-trained model completes a person's records alike (templated text): counting records called a
    leak far more often than 5%; relabelling people holds the level."""
    from leakaudit.attacks.metrics import joint_rate_p_values
    from leakaudit.report.stats import fisher_greater

    rng = np.random.default_rng(1)
    people, each, draws = 80, 4, 200
    person = np.repeat(np.arange(people), each)
    by_records = by_people = 0
    for d in range(draws):
        member = (rng.permutation(people) < people // 2)[person]
        prone = rng.random(people) < 0.1  # a few people's records are easy to complete
        hit = ((rng.random(person.size) < 0.6) & prone[person]).astype(float)
        by_records += fisher_greater(int(hit[member].sum()), int(member.sum()), int(hit[~member].sum()),
                                     int((~member).sum())) < 0.05
        p = joint_rate_p_values({"exact": hit}, member, groups=person, permutations=199, seed=d)
        by_people += p["exact"] < 0.05
    assert by_records / draws >= 0.09
    assert by_people / draws <= 0.08


def test_joint_p_values_hold_their_level_with_attacks_of_many_ties():
    """One continuous attack and four whose scores are 95% tied: the level holds (taking the smaller of the
    permutation and Bonferroni p-values everywhere, not only below the permutations' resolution, gave 8.3% in
    2,000 such draws)."""
    from leakaudit.attacks.metrics import joint_auc_p_values

    rng = np.random.default_rng(1)
    n, draws = 200, 400
    member = np.arange(n) < n // 2
    leaky = 0
    for d in range(draws):
        scores = {"a": rng.normal(size=n)}
        for j in range(4):
            scores[f"tied{j}"] = np.where(rng.random(n) < 0.95, 0.0, rng.normal(size=n))
        leaky += min(joint_auc_p_values(scores, rng.permutation(member), permutations=199, seed=d).values()) < 0.05
    assert leaky / draws <= 0.075  # 5% expected; 2.3 standard errors above it


@pytest.mark.parametrize("case", list(_cases()))
def test_bootstrap_interval_equals_recomputing_each_resamples_auc(case):
    """The counting bootstrap against the definition: the same draws, each resample's AUC from scratch."""
    from leakaudit.attacks.metrics import bootstrap_auc_ci

    m, n = case
    rng = np.random.default_rng(9)
    draws = [auc(m[rng.integers(0, m.size, m.size)], n[rng.integers(0, n.size, n.size)]) for _ in range(300)]
    expected = tuple(np.quantile(draws, [0.025, 0.975]))
    assert bootstrap_auc_ci(m, n, n_boot=300, seed=9) == pytest.approx(expected, abs=1e-12)


def test_the_tpr_interval_covers_the_tpr_at_the_fpr_not_only_at_the_chosen_threshold():
    """The threshold is picked from the non-members, so its true FPR is uncertain: the interval allows for it.
    Known answer: Gaussian scores, where the true TPR at FPR alpha is sf(isf(alpha) - mu)."""
    from scipy.stats import norm

    from leakaudit.attacks.metrics import clopper_pearson, tpr_interval

    rng = np.random.default_rng(11)
    mu, reps = 1.5, 200
    for alpha in (0.01, 0.1):
        true = norm.sf(norm.isf(alpha) - mu)
        hits = at_threshold = 0
        for _ in range(reps):
            m, n = rng.normal(mu, 1, 400), rng.normal(0, 1, 400)
            lo, hi = tpr_interval(m, n, alpha)
            assert lo <= tpr_at_fpr(m, n, alpha) <= hi
            hits += lo <= true <= hi
            cp = clopper_pearson(round(tpr_at_fpr(m, n, alpha) * m.size), m.size)
            at_threshold += cp[0] <= true <= cp[1]
        assert hits / reps >= 0.95, (alpha, hits)
        if alpha == 0.01:  # the interval at the chosen threshold alone falls well short there
            assert at_threshold / reps < 0.85, at_threshold
    # too few non-members to find a threshold with FPR <= 0.1% with confidence: the lower end is 0
    assert tpr_interval(np.full(100, 5.0), np.zeros(100), 0.001)[0] == 0.0
    assert tpr_interval(np.full(100, 5.0), np.linspace(0, 1, 5000), 0.001)[0] > 0.9


def test_the_dp_bound_check_tests_both_inequalities_and_is_testable_exactly_when_a_perfect_attack_fails():
    from leakaudit.attacks.metrics import dp_bound_check

    rng = np.random.default_rng(12)
    # 1 - FPR <= e^eps (1 - TPR) + delta broken: every member in the top half of the non-members (TPR 1 at FPR 0.5)
    check = dp_bound_check(rng.uniform(0.5, 1, 500), rng.uniform(0, 1, 500), epsilon=1.0, delta=1e-5)
    assert check.violated and check.max_excess > 0.4
    # distinct scores (as many ROC points as records) and tied ones alike: a perfect attack fails the check
    # exactly when the check is testable at these sizes
    for m_size, n_size in [(484, 516), (99, 89), (1000, 1000), (30, 2000)]:
        for eps in np.arange(0.5, 8.0, 0.25):
            distinct = dp_bound_check(np.linspace(10, 11, m_size), np.linspace(0, 1, n_size), eps, 1e-5)
            tied = dp_bound_check(np.ones(m_size), np.zeros(n_size), eps, 1e-5)
            assert distinct.testable == distinct.violated == tied.violated == tied.testable, (m_size, n_size, eps)
    # chance alone: false alarms well under 5%, even at eps near 0
    alarms = sum(dp_bound_check(rng.normal(size=300), rng.normal(size=300), 0.01, 0.0).violated for _ in range(200))
    assert alarms <= 2


def test_intervals_resample_people_when_records_were_split_per_person():
    """Known answer: when every person has the same number of identical records, resampling people gives
    exactly the intervals of one record per person (the same draws), not the narrower ones of records taken
    as independent; and a model that saw nobody gets an interval around 0.5 about as often as promised."""
    from leakaudit.attacks.metrics import attack_result, bootstrap_auc_ci, cluster_bootstrap_cis

    rng = np.random.default_rng(13)
    m, n = rng.normal(0.3, 1, 120), rng.normal(0, 1, 150)
    once = cluster_bootstrap_cis(m, n, np.arange(120), np.arange(150), n_boot=200, seed=3)
    thrice = cluster_bootstrap_cis(np.repeat(m, 3), np.repeat(n, 3), np.repeat(np.arange(120), 3),
                                   np.repeat(np.arange(150), 3), n_boot=200, seed=3)
    assert thrice[0] == pytest.approx(once[0], abs=1e-12)
    for level, pair in once[1].items():
        assert thrice[1][level] == pytest.approx(pair, abs=1e-12)
    as_records = bootstrap_auc_ci(np.repeat(m, 3), np.repeat(n, 3), n_boot=200, seed=3)
    assert as_records[1] - as_records[0] < 0.7 * (once[0][1] - once[0][0])
    r = attack_result(np.repeat(m, 3), np.repeat(n, 3), n_boot=200,
                      groups=(np.repeat(np.arange(120), 3), np.repeat(np.arange(150), 3)))
    assert r.auc_ci is not None and r.auc_ci[1] - r.auc_ci[0] > 1.4 * (as_records[1] - as_records[0])
    assert set(r.tpr_ci) == {"0.001", "0.01", "0.1"} and r.intervals == "people"
    assert attack_result(m, n, n_boot=0).intervals == "records"
    # a model that saw nobody; people of 1-4 alike records, split per person
    covered, reps = 0, 60
    for rep in range(reps):
        person = np.repeat(np.arange(300), rng.integers(1, 5, 300))
        s = rng.normal(size=300)[person] + 0.5 * rng.normal(size=person.size)
        member = (rng.random(300) < 0.5)[person]
        (lo, hi), _ = cluster_bootstrap_cis(s[member], s[~member], person[member], person[~member], n_boot=200,
                                            seed=rep)
        covered += lo <= 0.5 <= hi
    assert covered / reps >= 0.85, covered
