"""Empirical lower bounds on eps: one-run (Steinke et al. 2023) and Clopper-Pearson (Jagielski et al. 2020)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from leakaudit.privacy import (
    EmpiricalPrivacy,
    clopper_pearson_bound,
    compare_with_accountant,
    default_k_grid,
    one_run_audit,
    one_run_bound,
    one_run_p_value,
    threshold_bound,
)

DELTA = 1e-5


# -- one run: published values ----------------------------------------------------------------------
# METHODS.md section 7 quotes (alpha = 0.05, delta = 1e-5) 3.47 / 5.78 / 7.83 for perfect guesses with
# r = 100 / 1000 / 10000, and 1.80 for m = 1000, r = 200, v = 180.  The quoted values do not name m for
# the perfect-guess cases; they are reproduced with m = 1000 for r = 100 and r = 1000, and m = r = 10000
# for r = 10000 (i.e. m = max(r, 1000)).  m = r = 100 would give 3.49, not 3.47: m enters through the
# 2 m delta term, so it matters for small r.
@pytest.mark.parametrize(
    "r, v, m, expected",
    [
        (100, 100, 1000, 3.47),
        (1000, 1000, 1000, 5.78),
        (10000, 10000, 10000, 7.83),
        (200, 180, 1000, 1.80),
    ],
)
def test_one_run_published_values(r, v, m, expected):
    assert round(one_run_bound(r, v, m, delta=DELTA, alpha=0.05), 2) == expected


def test_one_run_m_matters_for_small_r():
    assert round(one_run_bound(100, 100, 100, delta=DELTA), 2) == 3.49
    assert one_run_bound(100, 100, 10**5, delta=DELTA) < one_run_bound(100, 100, 1000, delta=DELTA)


def test_one_run_bound_is_where_p_crosses_alpha():
    eps = one_run_bound(200, 180, 1000, delta=DELTA)
    assert one_run_p_value(eps, 200, 180, 1000, delta=DELTA) < 0.05
    assert one_run_p_value(eps + 1e-4, 200, 180, 1000, delta=DELTA) >= 0.05


def test_one_run_p_value_without_delta_is_binomial_tail():
    # delta = 0: p(eps) = P[Binomial(r, sigmoid(eps)) >= v]; for v = r that is sigmoid(eps)^r
    q = 1 / (1 + math.exp(-2.0))
    assert one_run_p_value(2.0, 50, 50, 100, delta=0.0) == pytest.approx(q**50, rel=1e-9)
    assert one_run_bound(50, 50, 100, delta=0.0) == pytest.approx(
        math.log(0.05 ** (1 / 50) / (1 - 0.05 ** (1 / 50))), abs=1e-5
    )


# -- one run: shape -----------------------------------------------------------------------------------
def test_one_run_more_correct_guesses_larger_bound():
    bounds = [one_run_bound(200, v, 1000, delta=DELTA) for v in range(100, 201, 10)]
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:]))
    positive = [b for b in bounds if b > 0]
    assert all(b2 > b1 for b1, b2 in zip(positive, positive[1:]))
    assert bounds[-1] > 3


def test_one_run_larger_alpha_larger_bound():
    b = [one_run_bound(200, 180, 1000, delta=DELTA, alpha=a) for a in (0.01, 0.05, 0.1)]
    assert 0 < b[0] < b[1] < b[2]


@pytest.mark.parametrize("r", [2, 100, 1000, 5000])
def test_one_run_chance_level_gives_zero(r):
    assert one_run_bound(r, r // 2, max(r, 1000), delta=DELTA) == 0.0
    assert one_run_bound(r, 0, max(r, 1000), delta=DELTA) == 0.0


def test_one_run_rejects_impossible_counts():
    with pytest.raises(ValueError):
        one_run_bound(10, 11, 100, delta=DELTA)
    with pytest.raises(ValueError):
        one_run_bound(200, 10, 100, delta=DELTA)
    with pytest.raises(ValueError):
        one_run_bound(10, 5, 100, delta=DELTA, alpha=0)


# -- one run: the audit ---------------------------------------------------------------------------------
def test_one_run_audit_random_scores_give_zero():
    """Scores independent of inclusion: the corrected bound should (almost) never be positive."""
    positives = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        included = rng.random(200) < 0.5
        scores = rng.normal(size=200)
        positives += one_run_audit(scores, included, delta=DELTA).eps_lower_bound > 0
    assert positives <= 2  # expected well below 50 * 0.05 = 2.5 (Bonferroni is conservative)


def test_one_run_audit_randomised_response_respects_true_eps():
    """A mechanism that is exactly eps-DP (randomised response on the inclusion bit) must not be caught
    above eps, except with probability alpha."""
    eps_true = 1.0
    above = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        included = rng.random(1000) < 0.5
        keep = rng.random(1000) < 1 / (1 + math.exp(-eps_true))
        scores = np.where(keep, included, ~included).astype(float)  # binary scores, many ties
        audit = one_run_audit(scores, included, delta=0.0, k_grid=[(250, 250), (100, 100), (500, 500)], seed=seed)
        above += audit.eps_lower_bound > eps_true
        assert audit.eps_lower_bound < eps_true + 0.3
    assert above <= 2


def test_one_run_audit_perfect_separation():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    scores = included + 0.01 * rng.normal(size=1000)
    audit = one_run_audit(scores, included, delta=DELTA, k_grid=[(100, 100)], fixed_k=(50, 50))
    assert (audit.k_plus, audit.k_minus, audit.r, audit.v, audit.m) == (100, 100, 200, 200, 1000)
    assert audit.n_tried == 1 and audit.alpha_used == 0.05
    assert audit.eps_lower_bound == pytest.approx(one_run_bound(200, 200, 1000, delta=DELTA))
    assert audit.best_possible == pytest.approx(audit.eps_lower_bound)
    assert audit.fixed is not None and audit.fixed.v == 100
    assert audit.fixed.eps_lower_bound == pytest.approx(one_run_bound(100, 100, 1000, delta=DELTA, alpha=0.05))


def test_one_run_audit_bonferroni_and_best_possible():
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    scores = 3.0 * included + rng.normal(size=1000)
    audit = one_run_audit(scores, included, delta=DELTA)
    grid = default_k_grid(1000)
    assert audit.n_tried == len(grid) and audit.alpha_used == pytest.approx(0.05 / len(grid))
    assert (audit.k_plus, audit.k_minus) in grid
    assert audit.eps_lower_bound == pytest.approx(
        one_run_bound(audit.r, audit.v, 1000, delta=DELTA, alpha=audit.alpha_used)
    )
    r_max = max(kp + km for kp, km in grid)
    assert audit.best_possible == pytest.approx(one_run_bound(r_max, r_max, 1000, delta=DELTA, alpha=audit.alpha_used))
    assert 0 < audit.eps_lower_bound <= audit.best_possible
    # the correction costs something: the same guesses at the full alpha certify more
    assert one_run_bound(audit.r, audit.v, 1000, delta=DELTA, alpha=0.05) > audit.eps_lower_bound


def test_one_run_audit_int_grid_and_bad_input():
    included = np.array([True, False] * 50)
    scores = included.astype(float)
    audit = one_run_audit(scores, included, delta=DELTA, k_grid=[10, 10, 20])
    assert audit.n_tried == 2  # the repeated point counts once
    assert (audit.k_plus, audit.k_minus) in {(10, 10), (20, 20)}
    with pytest.raises(ValueError):
        one_run_audit(scores, included, delta=DELTA, k_grid=[(60, 60)])
    with pytest.raises(ValueError):
        one_run_audit(scores[:-1], included, delta=DELTA)
    with pytest.raises(ValueError):
        one_run_audit(np.where(included, np.nan, 0.0), included, delta=DELTA)


def test_one_run_audit_record():
    included = np.array([True, False] * 500)
    audit = one_run_audit(included.astype(float), included, delta=DELTA, k_grid=[(100, 100)])
    rec = audit.to_empirical(accountant_eps=1.0)
    assert rec.method == "one_run" and rec.k_plus == 100 and rec.m == 1000
    assert rec.exceeds_accountant and rec.accountant_epsilon == 1.0
    assert "DP GUARANTEE FAILED" in rec.note
    assert EmpiricalPrivacy.model_validate_json(rec.model_dump_json()) == rec
    assert not audit.to_empirical(accountant_eps=8.0).exceeds_accountant


# -- Clopper-Pearson -------------------------------------------------------------------------------------
def test_clopper_pearson_published_value():
    # FP = 0/1000, FN = 0/1000, alpha = 0.05 (one-sided 0.025 each): 5.60 with delta = 0; delta = 1e-5
    # changes it by 1e-5 only, so the quoted value holds for either
    assert round(clopper_pearson_bound(0, 1000, 0, 1000, delta=0.0), 2) == 5.60
    assert round(clopper_pearson_bound(0, 1000, 0, 1000, delta=1e-5), 2) == 5.60
    u = 1 - 0.025 ** (1 / 1000)  # CP upper bound for 0 successes: 1 - (alpha/2)^(1/n)
    assert clopper_pearson_bound(0, 1000, 0, 1000) == pytest.approx(math.log((1 - u) / u), rel=1e-9)


def test_clopper_pearson_hand_computed():
    fpr_u = beta.ppf(0.975, 3 + 1, 1000 - 3)
    fnr_u = beta.ppf(0.975, 10 + 1, 500 - 10)
    expected = max(math.log((1 - fnr_u - DELTA) / fpr_u), math.log((1 - fpr_u - DELTA) / fnr_u))
    assert clopper_pearson_bound(3, 1000, 10, 500, delta=DELTA) == pytest.approx(expected, rel=1e-9)
    # the other direction wins when false negatives are rarer than false positives
    assert clopper_pearson_bound(10, 500, 3, 1000, delta=DELTA) == pytest.approx(expected, rel=1e-9)


def test_clopper_pearson_no_signal_is_zero():
    assert clopper_pearson_bound(500, 1000, 500, 1000) == 0.0
    assert clopper_pearson_bound(1000, 1000, 0, 1000) == 0.0
    assert clopper_pearson_bound(10, 1000, 10, 1000, alpha=0.01) < clopper_pearson_bound(10, 1000, 10, 1000)
    with pytest.raises(ValueError):
        clopper_pearson_bound(5, 4, 0, 10)


def test_threshold_bound_correction_with_ties_counts_the_possible_errors_not_the_thresholds():
    """Binary scores give three thresholds, but which ones is random: the correction stays n per side.
    Only thresholds fixed before the data are seen earn the smaller min(T, n)."""
    rng = np.random.default_rng(1)
    members, non_members = (rng.random(400) < 0.7).astype(float), (rng.random(300) < 0.3).astype(float)
    t = threshold_bound(members, non_members, delta=DELTA)
    assert t.n_thresholds == 3
    assert t.alpha_fpr == pytest.approx(0.025 / 300) and t.alpha_fnr == pytest.approx(0.025 / 400)
    fixed = threshold_bound(members, non_members, delta=DELTA, thresholds=[0.5])
    assert fixed.alpha_fpr == pytest.approx(0.025) and fixed.alpha_fnr == pytest.approx(0.025)
    assert fixed.eps_lower_bound >= t.eps_lower_bound > 0


def test_threshold_bound_separated_and_random():
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(10, 1, 1000), rng.normal(0, 1, 1000)
    t = threshold_bound(members, non_members, delta=DELTA)
    assert t.fp == 0 and t.fn == 0 and t.n_thresholds == 2001
    # thresholds from the data: each side is corrected by n = 1000 (the possible false-positive counts)
    assert t.alpha_fpr == pytest.approx(0.025 / 1000) and t.alpha_fnr == pytest.approx(0.025 / 1000)
    assert t.eps_lower_bound == pytest.approx(t.best_possible)
    assert 4 < t.eps_lower_bound < clopper_pearson_bound(0, 1000, 0, 1000, delta=DELTA)
    nulls = [
        threshold_bound(rng.normal(size=300), rng.normal(size=300), delta=DELTA).eps_lower_bound for _ in range(20)
    ]
    assert max(nulls) == 0.0


def test_threshold_bound_fixed_thresholds():
    rng = np.random.default_rng(2)
    members, non_members = rng.normal(10, 1, 1000), rng.normal(0, 1, 1000)
    t = threshold_bound(members, non_members, delta=DELTA, thresholds=[5.0])
    # one threshold fixed in advance: exactly the plain Clopper-Pearson bound
    assert t.eps_lower_bound == pytest.approx(clopper_pearson_bound(t.fp, 1000, t.fn, 1000, delta=DELTA))
    rec = t.to_empirical(accountant_eps=2.0)
    assert rec.method == "threshold" and rec.exceeds_accountant and rec.k_plus is None


def test_compare_with_accountant():
    rec = EmpiricalPrivacy(method="one_run", eps_lower_bound=1.2, alpha=0.05, delta=DELTA)
    assert not compare_with_accountant(rec, 4.0).exceeds_accountant
    assert not compare_with_accountant(rec, None).exceeds_accountant
    bad = compare_with_accountant(rec, 1.0)
    assert bad.exceeds_accountant and bad.accountant_epsilon == 1.0 and "1.000" in bad.note
    assert rec.exceeds_accountant is False  # the input is not modified
