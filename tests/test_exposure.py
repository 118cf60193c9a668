"""Exposure arithmetic against TF Privacy's interpolation definition, and on a model."""

import math

import numpy as np
import pytest

from leakaudit.attacks import canary_exposures, exposure_groups, interpolation_exposure
from leakaudit.attacks.exposure import null_secrets
from leakaudit.canaries import generate_canaries, load_spec
from leakaudit.models import Target
from leakaudit.report.canaries import groups_from_canaries
from leakaudit.report.schema import CanaryResult, ExposureGroup
from tests.conftest import TINY_SPEC


def _tf_privacy_interpolation(perplexities: dict, reference: np.ndarray) -> dict:
    """TF Privacy's compute_exposure_interpolation, re-derived from its definition:
    rank = 1 + #{references with perplexity <= the canary's}, exposure = log2(N / rank)."""
    n = len(reference)
    return {r: np.array([math.log2(n / (1 + np.sum(reference <= p))) for p in ps]) for r, ps in perplexities.items()}


def test_interpolation_hand_made_inputs_with_ties():
    ref = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert interpolation_exposure(0.5, ref) == (3.0, 1)  # below every reference: log2 8
    assert interpolation_exposure(2.0, ref) == (pytest.approx(math.log2(8 / 4)), 4)  # ties count against
    assert interpolation_exposure(9.0, ref)[1] == 9
    expected = _tf_privacy_interpolation({1: np.array([0.5, 2.0, 9.0])}, ref)[1]
    got = [interpolation_exposure(p, ref)[0] for p in [0.5, 2.0, 9.0]]
    np.testing.assert_allclose(got, expected)


def test_null_secrets_exclude_inserted_and_include_references():
    m = generate_canaries(load_spec(TINY_SPEC))
    pool = null_secrets(m)
    assert len(pool) == len(set(pool)) == m.spec.reference_canaries + m.spec.null_samples
    assert not {c.secret for c in m.inserted} & set(pool)
    assert {c.secret for c in m.canaries if not c.inserted} <= set(pool)
    assert pool == null_secrets(m)


def test_exposures_on_an_untrained_model_look_like_chance(gpt2, tokenizer):
    m = generate_canaries(load_spec(TINY_SPEC))
    res = canary_exposures(Target(gpt2, tokenizer), m)
    assert [r.id for r in res] == [c.id for c in m.canaries]
    cap = math.log2(len(null_secrets(m)))
    bits = np.array([r.exposure_bits for r in res])
    assert (bits <= cap + 1e-9).all()
    assert np.median(bits) < 4  # a model that never saw a canary gives no canary a high rank
    groups = exposure_groups(res)
    assert {g.repetitions for g in groups} == {0, 1, 4, 16, 32}
    assert sum(g.n for g in groups) == len(res)


def test_skewnorm_estimate_recovers_a_known_tail_and_flags_a_poor_fit():
    from scipy.stats import skewnorm

    from leakaudit.attacks.exposure import skewnorm_exposure

    true = skewnorm(4.0, loc=30.0, scale=5.0)
    null = true.rvs(size=5000, random_state=0)
    for x in (true.ppf(1e-3), true.ppf(1e-5)):
        bits, p = skewnorm_exposure(x, null, 10**9)
        assert bits == pytest.approx(-true.logcdf(x) / math.log(2), abs=1.0)  # the issue asks for 1 bit
        assert p > 0.05
    bimodal = np.r_[np.random.default_rng(1).normal(20, 1, 2500), np.random.default_rng(2).normal(40, 1, 2500)]
    assert skewnorm_exposure(30.0, bimodal, 10**9)[1] < 0.01
    assert skewnorm_exposure(-1e6, null, 1000)[0] == pytest.approx(math.log2(1000))  # clipped to log2 |R|


def test_skewnorm_estimate_counts_known_inserted_secrets_exactly():
    from scipy.stats import skewnorm

    from leakaudit.attacks.exposure import skewnorm_exposure

    null = skewnorm(4.0, loc=30.0, scale=5.0).rvs(size=5000, random_state=0)
    # far below the fitted tail: without known secrets the estimate sits at the ceiling, rank 1
    assert skewnorm_exposure(0.0, null, 10**5)[0] == pytest.approx(math.log2(10**5))
    # two inserted secrets ahead of it make it rank 3, whatever the fitted tail says
    bits, _ = skewnorm_exposure(0.0, null, 10**5, np.array([-2.0, -1.0, 50.0]))
    assert bits == pytest.approx(math.log2(10**5 / 3), abs=1e-6)
    # in the bulk the known secrets hardly move the estimate
    x = skewnorm(4.0, loc=30.0, scale=5.0).ppf(1e-2)
    assert skewnorm_exposure(x, null, 10**5, np.array([-2.0, -1.0]))[0] == pytest.approx(
        skewnorm_exposure(x, null, 10**5)[0], abs=0.01)


def test_canary_exposures_rank_a_canary_behind_another_inserted_secret():
    """A stand-in model that memorised every inserted secret, one of them more than the others."""
    from leakaudit.canaries import CanarySpec

    spec = CanarySpec(name="memo", template="the PIN of {name} is {secret}.", secret={"format": "digits", "length": 5},
                      repetitions=[4], canaries_per_repetition=2, reference_canaries=2, null_samples=500, seed=5)
    m = generate_canaries(spec)
    first, second = m.inserted[0].secret, m.inserted[1].secret

    class Memorised:
        def secret_nll(self, prefix, secrets):
            rng = np.random.default_rng(0)
            out = 25.0 + rng.gamma(4.0, 1.0, size=len(secrets))
            return np.array([1.0 if s == first else 2.0 if s == second else v for s, v in zip(secrets, out)])

    res = {r.id: r for r in canary_exposures(Memorised(), m)}
    assert res[m.inserted[0].id].exposure_bits_skewnorm == pytest.approx(math.log2(10**5))
    assert res[m.inserted[1].id].exposure_bits_skewnorm == pytest.approx(math.log2(10**5 / 2), abs=1e-6)


def test_exact_exposure_equals_brute_force_on_a_small_space(gpt2, tokenizer):
    from leakaudit.attacks.exposure import exact_exposure
    from leakaudit.canaries import CanarySpec

    spec = CanarySpec(name="small", template="the PIN of {name} is {secret}.", secret={"format": "digits", "length": 3},
                      repetitions=[1], canaries_per_repetition=2, reference_canaries=2, null_samples=50, seed=3)
    m = generate_canaries(spec)
    target = Target(gpt2, tokenizer)
    c = m.canaries[0]
    everything = [f"{i:03d}" for i in range(1000)]
    from leakaudit.models import encode

    e = encode(tokenizer, [c.prefix + s for s in everything])
    lps = target.score_ids([x.ids for x in e])
    from tests.conftest import secret_tokens

    nll = np.array([-lp[secret_tokens(x, c.prefix, s)].sum() for x, lp, s in zip(e, lps, everything)])
    own = nll[everything.index(c.secret)]
    rank = int(np.sum(nll <= own + 1e-4))
    assert exact_exposure(target, c.prefix, c.secret, m) == pytest.approx(math.log2(1000) - math.log2(rank))
    res = canary_exposures(target, m, exact_max=1000)
    assert res[0].exposure_bits_exact == pytest.approx(math.log2(1000) - math.log2(rank))
    assert all(r.exposure_bits_skewnorm is not None and 0 <= r.skewnorm_ks_pvalue <= 1 for r in res)


def test_prepared_chunks_come_back_in_order_with_or_without_overlap():
    import threading

    from leakaudit.attacks.exposure import _prepared

    seen = []

    def prepare(x):
        seen.append(threading.current_thread() is threading.main_thread())
        return x * x

    assert list(_prepared(prepare, [3, 1, 2], overlap=False)) == [9, 1, 4]
    assert all(seen)
    seen.clear()
    assert list(_prepared(prepare, [3, 1, 2, 5], overlap=True)) == [9, 1, 4, 25]
    assert not any(seen)  # every chunk prepared in the worker thread
    assert list(_prepared(prepare, [], overlap=True)) == []


def test_secret_index_round_trips_and_prefix_neighbourhoods():
    from leakaudit.attacks.exposure import neighbourhood
    from leakaudit.canaries.formats import get_format

    card = get_format("card", 8)
    for i in (0, 1234, card.space_size - 1):
        assert card.index(card.from_index(i)) == i
    fmt = get_format("digits", 6)
    near = neighbourhood(fmt, ["123456", "123999", "987654"], cap=25_000)
    # one leading digit would give 2 x 10^5 secrets (over the cap); two give 2 x 10^4
    assert len(near) == 20_000 - 3 and {s[:2] for s in near} == {"12", "98"} and "123456" not in near
    assert neighbourhood(fmt, ["123456"], cap=0) == []
    with pytest.raises(ValueError, match="12a456"):
        fmt.index("12a456")


def test_skewnorm_estimate_counts_secrets_that_begin_like_an_inserted_one():
    """A stand-in model that learned the inserted secrets' leading digits: exact rank by enumeration."""
    from leakaudit.canaries import CanarySpec

    spec = CanarySpec(name="near", template="the PIN of {name} is {secret}.", secret={"format": "digits", "length": 5},
                      repetitions=[4], canaries_per_repetition=4, reference_canaries=2, null_samples=2000, seed=6)
    m = generate_canaries(spec)
    inserted = [c.secret for c in m.inserted]
    heads = {s[:3] for s in inserted}
    target_canary = m.inserted[0]

    def nll(s: str) -> float:
        jitter = ((int(s) * 2654435761) % 1000) / 1000.0
        if s == target_canary.secret:
            return 12.0
        if s in inserted:
            return 5.0
        return (10.0 if s[:3] in heads else 30.0) + 5.0 * jitter  # neighbours: 10-15, the rest: 30-35

    class Learned:
        def secret_nll(self, prefix, secrets):
            return np.array([nll(s) for s in secrets])

    everything = np.array([nll(f"{i:05d}") for i in range(10**5)])
    exact = math.log2(10**5) - math.log2(int(np.sum(everything <= 12.0)))
    with_near = {r.id: r for r in canary_exposures(Learned(), m)}[target_canary.id]
    without = {r.id: r for r in canary_exposures(Learned(), m, neighbourhood_max=0)}[target_canary.id]
    assert with_near.exposure_bits_skewnorm == pytest.approx(exact, abs=0.2)
    assert without.exposure_bits_skewnorm > exact + 2  # the fitted tail misses the neighbours ahead


def test_neighbourhood_on_a_space_beyond_int64_and_secrets_outside_the_format():
    from leakaudit.attacks.exposure import neighbourhood, skewnorm_exposure
    from leakaudit.canaries.formats import get_format

    pan = get_format("card", 19)  # card numbers: 10^19 secrets, indices past 2^63
    near = neighbourhood(pan, ["9999 9999 9999 9999 999", "1234 5678 9012 3456 789"])
    assert len(near) == 2 * 10**4 - 2 and all(pan.contains(s) for s in near)
    assert near[-1] == "9999 9999 9999 9999 998"
    assert neighbourhood(pan, ["not a card"]) == []
    # the rank formula on a space of 2^80 (a Python int): finite, clipped
    bits, _ = skewnorm_exposure(1.0, np.random.default_rng(0).normal(30, 3, 500), 2**80)
    assert 0 < bits <= 80


def _searched(i: int, reps: int, *, extracted: bool, guess: int | None, other: bool, found: int) -> CanaryResult:
    return CanaryResult(
        id=f"c{i}", spec="codes", repetitions=reps, inserted=reps > 0, exposure_bits=1.0, rank=1,
        extracted=extracted, extraction_expansions=50, extraction_guesses=10, extraction_guesses_found=found,
        extraction_guess=guess, extraction_first_guess_inserted=other,
    )


def test_exposure_groups_carry_the_extraction_guess_totals():
    res = [
        _searched(0, 32, extracted=True, guess=1, other=False, found=10),
        _searched(1, 32, extracted=False, guess=2, other=True, found=10),  # another's secret first, its own second
        _searched(2, 32, extracted=False, guess=None, other=False, found=0),  # no complete secret: inconclusive
        _searched(3, 0, extracted=False, guess=None, other=True, found=3),
        _searched(4, 0, extracted=False, guess=None, other=True, found=10),
    ]
    groups = {g.repetitions: g for g in exposure_groups(res)}
    g32, g0 = groups[32], groups[0]
    assert (g32.n, g32.extracted, g32.extraction_guesses) == (3, 1, 10)
    assert (g32.extracted_within_guesses, g32.extraction_first_guess_inserted, g32.extraction_no_guess) == (2, 1, 1)
    assert (g0.extracted, g0.extracted_within_guesses, g0.extraction_first_guess_inserted) == (0, 0, 2)
    assert g0.extraction_no_guess == 0
    # the report computes the same totals from per-canary results
    assert groups_from_canaries(res) == sorted(groups.values(), key=lambda g: g.repetitions)
    # an older run recorded none of them: the totals stay None
    old = [r.model_copy(update={"extraction_guesses": None, "extraction_guesses_found": None,
                                "extraction_first_guess_inserted": None}) for r in res]
    for g in exposure_groups(old):
        assert g.extraction_guesses is g.extracted_within_guesses is g.extraction_first_guess_inserted is None
        assert g.extraction_no_guess is None and g.extracted is not None
    loaded = ExposureGroup.model_validate({"repetitions": 4, "n": 2, "median_exposure_bits": 1.0,
                                           "mean_exposure_bits": 1.0, "max_exposure_bits": 1.5, "extracted": 1})
    assert loaded.extracted_within_guesses is None and loaded.extraction_no_guess is None


def test_nan_log_likelihoods_are_refused_not_ranked_first(gpt2, tokenizer):
    """Every comparison with NaN is false: a NaN secret would get rank 1 (the largest exposure) and NaN
    null secrets would drop out of the count. A model that outputs NaN is refused with one message."""
    import copy

    import torch

    from leakaudit.attacks.exposure import skewnorm_exposure
    from leakaudit.errors import LeakauditError

    null = np.random.default_rng(0).normal(60, 5, 1000)
    assert interpolation_exposure(60.0, null)[1] > 1
    holed = null.copy()
    holed[:900] = np.nan
    for call in (lambda: interpolation_exposure(float("nan"), null), lambda: interpolation_exposure(60.0, holed),
                 lambda: skewnorm_exposure(float("nan"), null, 10**6),
                 lambda: skewnorm_exposure(60.0, null, 10**6, np.array([np.inf]))):
        with pytest.raises(LeakauditError, match="NaN or infinite log-likelihoods"):
            call()
    broken = copy.deepcopy(gpt2)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(LeakauditError, match="its weights or dtype are broken"):
        canary_exposures(Target(broken, tokenizer), generate_canaries(load_spec(TINY_SPEC)))


def test_canary_results_hold_no_hash_of_the_canary_text(gpt2, tokenizer):
    """A hash of a canary's text gives its secret back to anyone who tries the secret's few values: results
    hold ids only, and results written before this rule load with the hash dropped."""
    import json

    from leakaudit.io import sha256_text

    m = generate_canaries(load_spec(TINY_SPEC))
    res = canary_exposures(Target(gpt2, tokenizer), m)
    dumped = json.dumps([r.model_dump(mode="json") for r in res])
    assert "sha256" not in dumped
    assert not [c for c in m.canaries if sha256_text(c.prefix + c.secret + c.suffix) in dumped or c.secret in dumped]
    old = {**res[0].model_dump(mode="json"), "sha256": "ab" * 32}
    assert CanaryResult.model_validate(old) == res[0]


def test_shared_results_publish_a_canarys_exposure_too_coarse_to_give_its_rank_back():
    from leakaudit.audit import _published
    from leakaudit.report.schema import CanaryResult

    space = 10_000
    c = CanaryResult(id="c", spec="s", repetitions=0, inserted=False, exposure_bits=0.2, rank=800,
                     exposure_bits_exact=math.log2(space) - math.log2(8507), exposure_bits_skewnorm=0.23456)
    out = _published(c)
    assert out.exposure_bits_exact == 0.2 and out.exposure_bits_skewnorm == 0.2
    # the ranks the published value allows: hundreds of candidates, not one
    lo, hi = space / 2 ** (out.exposure_bits_exact + 0.05), space / 2 ** (out.exposure_bits_exact - 0.05)
    assert hi - lo > 500
