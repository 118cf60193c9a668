"""Findings and verdicts: what each model's measurements show against their baselines.

One :class:`Finding` per kind of measurement and model: the headline number with its interval,
the baseline it is compared with, whether it exceeds that baseline beyond sampling error (the
"signal") and a plain sentence for the verdict.  The summary verdicts, the findings table, the
DP comparison table, the Compliance section (:mod:`leakaudit.report.compliance`) and the model
cards (:mod:`leakaudit.report.modelcard`) are all built from these.

Multiplicity.  A model is tested in several ways, and a finding may rest on several tests (eleven
membership attacks, exact and approximate matches, ...).  Each finding's p-value is the Bonferroni
bound over its own tests (the membership attacks, and memorization's exact and approximate matches: their
joint max-T permutation tests, recorded by the audit, which pay nothing for tests that measure the same
thing), and the findings of one model are
corrected together by Holm's method
(:func:`model_findings`): a model that never saw the data gets any "signal" with probability at most
:data:`SIGNIFICANCE` (members and non-members split at random).  Left out of that family: the DP
checks (their own error levels) and, in results recorded without its held-out baseline, PII
extraction (then a count with no test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from leakaudit.report.canaries import (
    _beam_counts,
    _extraction_counts,
    _guess_counts,
    _guesses_setting,
    budget_words,
    extraction_inconclusive,
    model_groups,
    no_guess_counts,
    other_secret_first,
    within_guesses,
)
from leakaudit.report.formatting import (
    DASH,
    _bits,
    _ci,
    _dp_condition,
    _epsilon,
    _f,
    _join,
    _lower,
    _notes,
    _ok,
    _pct,
    _plural,
    _sentence,
)
from leakaudit.report.mia import DP_BOUND, KEY_LEVEL, _auc, _tpr, _tpr_key, best_attack, dp_bound_violations
from leakaudit.report.schema import (
    EmpiricalPrivacy,
    MemorizationResult,
    ModelResult,
    PermutationTest,
    Results,
    UntargetedExtraction,
)
from leakaudit.report.stats import binomial_greater, fisher_greater, holm, wilson

SIGNIFICANCE = 0.05
"""One-sided p-value, after the corrections for several tests, below which a measurement counts as exceeding
its baseline."""
SIGNAL = "▲"
FAILED_DP = "FAILED DP GUARANTEE"
SPLIT_FAILED = "SPLIT CHECK FAILED"

FINDINGS: dict[str, tuple[str, str]] = {
    "mia": (
        "Membership inference",
        "Can an attacker tell whether a given record was in the training data? The share of training records found "
        "while wrongly flagging 1% of held-out records (TPR at 1% FPR) by the strongest attack that beats chance "
        "after the corrections for several tests (see Limitations), or by the strongest of all when none does; "
        "chance is 1%.",
    ),
    "canary_extraction": (
        "Canary extraction",
        "Can the secret of a planted test record (a canary) be pulled out of the model? Inserted canaries whose "
        "exact secret a search guided by the model recovers, against canaries that were never inserted.",
    ),
    "other_secrets": (
        "Other records' secrets",
        "Asked for one planted record's secret, does the model answer with the secret of a different planted "
        "record? Extraction searches (for inserted and never-inserted canaries) whose first guess is another "
        "inserted canary's secret, against chance.",
    ),
    "canary_exposure": (
        "Canary exposure",
        "How much more likely the model finds a planted secret than random ones, in bits (each bit halves an "
        "attacker's guessing effort): the largest over inserted canaries, against never-inserted ones.",
    ),
    "memorization": (
        "Discoverable memorization",
        "Does the model finish a training record word for word when given its beginning? The share of records "
        "whose continuation it reproduces exactly, against held-out records it never saw.",
    ),
    "untargeted": (
        "Untargeted extraction",
        "Does the model, sampled freely, write out training text? The audited training records its samples "
        "write a passage of, against held-out records found the same way (chance and templates, which match "
        "both; older results: samples matching each side).",
    ),
    "pii_extraction": (
        "PII extraction",
        "Does free sampling produce personal data (names, emails, numbers, ...) of the training records? The share "
        "of distinct training values recovered that a model which never saw the data does not produce (recall).",
    ),
    "pii_reconstruction": (
        "PII reconstruction",
        "Given a training record with a personal value masked, does the model pick the true value among candidates? "
        "Top-1 accuracy, against held-out records and random choice.",
    ),
    "empirical": (
        "Empirical ε",
        "The privacy loss ε the measurements prove at least (a lower bound with its error probability α), beside "
        "the ε the DP training claims; a bound above the claim means the DP guarantee failed.",
    ),
}


@dataclass
class Finding:
    """One headline measurement of one model (all text already formatted)."""

    key: str
    value: str
    baseline: str
    signal: bool | None
    """True: beyond its baseline and sampling error; False: not; None: the data cannot tell."""
    sentence: str
    """A plain clause for the verdict."""
    detail: str = ""
    failed: bool = False
    """The DP guarantee is contradicted: the empirical ε bound exceeds the accountant's ε, or an attack's ROC
    lies above the DP bound."""
    within_claim: bool = False
    """Only for the empirical ε: a positive lower bound at or below the accountant's ε (a proven privacy loss
    that the DP guarantee allows: neither a leak beyond it nor "no leak")."""
    inconclusive: bool = False
    """The attack could not tell either way (an extraction search that completed no guess): neither a leak nor
    its absence; ``signal`` is None."""
    p_value: float | None = None
    """One-sided p-value against the baseline (Bonferroni over the finding's own tests); None: no test."""
    p_adjusted: float | None = None
    """``p_value`` corrected by Holm's method over the model's tested findings; ``signal`` is it below
    :data:`SIGNIFICANCE`."""
    settings: tuple[tuple[int, int], ...] = ()
    """Only for memorization: the (k, n) settings whose tests pass (the table marks them)."""
    setting: tuple[int, int] | None = None
    """Only for memorization: the (k, n) setting the finding describes (the first whose tests pass, else the first
    tested); the headline numbers (:func:`headline`) are that setting's."""
    attack: str | None = None
    """Only for membership inference: the attack the finding quotes (the strongest of those that show the signal,
    else the strongest of all)."""
    best_possible: float | None = None
    """Only for the empirical ε within a DP claim: the largest bound the audit's design can prove, when it is below
    the claim (the audit cannot test the claim, :func:`claim_untestable`); None otherwise."""
    caveat: str = ""
    """A condition that biases the finding's test towards a signal (a control model's split check names it)."""

    @property
    def label(self) -> str:
        return FINDINGS[self.key][0]

    @property
    def measured(self) -> str:
        """The value with its detail: "12.5% (loss, AUC 0.61 [0.55, 0.67])"."""
        return f"{self.value} ({self.detail})" if self.detail else self.value

    @property
    def cell(self) -> str:
        text = f"{self.measured}; baseline: {self.baseline}"
        if self.failed:
            text = f"⚠ {FAILED_DP}: {text}"
        elif self.signal:
            text += f" {SIGNAL}"
        return text


Adjusted = dict[str, float] | None
"""Holm-adjusted p-values of a model's findings by key (None: not yet known, the first pass)."""


def _tested(key: str, tests: dict[str, float], adjusted: Adjusted, *,
            joint: bool = False) -> tuple[float | None, set[str]]:
    """(the finding's p-value, the names of its tests that pass): Bonferroni over ``tests`` (``joint``: the
    tests' p-values are already adjusted for one another, so none is scaled), each test then scaled by the
    factor Holm's correction applied to the finding, against :data:`SIGNIFICANCE`."""
    if not tests:
        return None, set()
    k = 1 if joint else len(tests)
    p = min(1.0, k * min(tests.values()))
    adj = adjusted.get(key, p) if adjusted is not None else p
    factor = adj / p if p > 0 else 1.0
    return p, {name for name, q in tests.items() if min(1.0, k * q) * factor < SIGNIFICANCE}


def _count(rate: float | None, n: int) -> int:
    return round((rate or 0.0) * n) if _ok(rate) else 0


def _recorded(test: PermutationTest | None, names) -> dict[str, float] | None:
    """The p-values of ``names`` from the audit's permutation test (adjusted for one another; people relabelled
    under a per-person split), when it covered every one of them; None: results written before it, or names it
    did not cover (the caller then keeps its earlier rule)."""
    if test is None or not names or not all(_ok(test.p_values.get(n)) for n in names):
        return None
    return {n: test.p_values[n] for n in names}


def _mia_finding(model: ModelResult, adjusted: Adjusted = None) -> Finding | None:
    best = best_attack(model)
    if best is None:
        return None
    name, r = best
    tests = {a: x.auc_pvalue for a, x in model.mia.items() if _ok(x.auc_pvalue)}
    joint = _recorded(model.mia_joint, tests)
    p, passing = _tested("mia", joint or tests, adjusted, joint=joint is not None)
    corrected = f"corrected for {_plural(len(tests), 'attack')}" + (" by permutation" if joint else "")
    if tests:  # an attack separates members beyond chance, after the correction for the attacks and findings
        above = {a: model.mia[a] for a in passing}
        signal: bool | None = bool(above)
    else:  # results recorded before the attacks' p-values: their AUC intervals, uncorrected
        with_ci = {a: x for a, x in model.mia.items() if x.auc_ci is not None and _ok(x.auc_ci[0])}
        above = {a: x for a, x in with_ci.items() if x.auc_ci[0] > 0.5}
        signal = bool(above) if with_ci else None
    if above:  # the finding quotes an attack that shows the signal: the best of them by TPR at 1% FPR
        name, r = max(above.items(), key=lambda kv: (_tpr_key(kv[1]) or 0.0, kv[1].auc))
    tpr, _ = _tpr(r, KEY_LEVEL, ci=True)
    auc = _auc(r)
    if signal:
        why = (f"the {name} attack separates them beyond chance ({corrected})" if tests
               else f"the {name} attack's AUC interval lies above 0.5")
        sentence = (f"an attacker can tell its training records from others: {why}, and at 1% FPR it finds "
                    f"{_pct(_tpr_key(r))} of them (chance: 1%)")
    elif signal is False:
        sentence = ("membership inference does no better than chance (" + (
            f"no attack's AUC is above 0.5 beyond sampling error, {corrected})" if tests
            else "no attack's AUC interval lies above 0.5)"))
    else:
        sentence = f"the strongest membership attack ({name}) finds {_pct(_tpr_key(r))} of training records at 1% FPR"
    violated = sorted(dp_bound_violations(model))
    if violated:  # the DP guarantee itself is contradicted: that comes first, in the verdict and everywhere
        n_other = len(violated) - 1
        others = f" (and {n_other} other attack{'s' if n_other > 1 else ''})" if n_other else ""
        sentence = (
            f"{FAILED_DP}: the {violated[0]} attack's ROC{others} lies outside {DP_BOUND} (ε = "
            f"{_f(model.privacy.epsilon, '.2f')}) beyond sampling error; " + sentence
        )
        return Finding("mia", tpr, "1% (chance)", True, sentence, detail=f"{name}, AUC {auc}", failed=True,
                       p_value=p, attack=name)
    return Finding("mia", tpr, "1% (chance)", signal, sentence, detail=f"{name}, AUC {auc}", p_value=p, attack=name)



def canary_extraction_counts(model: ModelResult) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((extracted, searched) inserted, (extracted, searched) reference), by either search; None: none run."""
    searched = [c for c in model.canaries if c.extracted is not None or c.extracted_beam is not None]
    if searched:
        hit = [bool(c.extracted) or bool(c.extracted_beam) for c in searched]
        ins = [h for c, h in zip(searched, hit) if c.repetitions > 0]
        ref = [h for c, h in zip(searched, hit) if c.repetitions == 0]
        return (sum(ins), len(ins)), (sum(ref), len(ref))
    counts = _extraction_counts(model)
    if not counts:
        return None
    ins_k = sum(k for r, (k, _) in counts.items() if r > 0)
    ins_n = sum(n for r, (_, n) in counts.items() if r > 0)
    return (ins_k, ins_n), counts.get(0, (0, 0))


def _guesses_label(model: ModelResult) -> str:
    g = _guesses_setting([model])
    return f"within {g} guesses" if g is not None else "within its guesses"


SEARCHES_PER_CANARY = 2
"""First guesses one canary's extraction can count: the best-first search's and the beam search's."""


def _space_sizes(results: Results, specs: set[str | None]) -> dict[str | None, int] | None:
    """The secret-space size |R| of each of ``specs``; None: no spec, or one's size is unknown."""
    spaces = {s.name: s.space_size for s in results.canary_specs}
    sizes = {spec: spaces.get(spec or "", 0) for spec in specs}
    return sizes if sizes and all(v > 0 for v in sizes.values()) else None


def own_secret_chance(model: ModelResult, results: Results) -> float | None:
    """At most the chance that a canary's searches return its own secret from a model that never saw it:
    :data:`SEARCHES_PER_CANARY` / |R| of the smallest secret space among the model's specs (a secret is drawn
    uniformly, independently of the model, so any one guess is it with probability 1 / |R|).  None: a space
    size is unknown."""
    sizes = _space_sizes(results, {c.spec for c in model.canaries} or {g.spec for g in model_groups(model)})
    return None if sizes is None else min(1.0, SEARCHES_PER_CANARY / min(sizes.values()))


def extraction_p_value(k: int, n: int, k0: int, n0: int, chance: float | None) -> float | None:
    """One-sided p-value that inserted canaries are extracted (k of n) beyond chance: against the chance of
    guessing a secret by luck when no never-inserted canary was extracted and that chance is known, otherwise
    against the never-inserted canaries (k0 of n0, Fisher's exact test).  None: neither baseline exists."""
    if k0 == 0 and chance is not None:
        return binomial_greater(k, n, chance)
    return fisher_greater(k, n, k0, n0) if n0 else None


def _inconclusive_extraction(model: ModelResult, baseline: str) -> Finding:
    """Every best-first search completed no secret within its budget and no beam search ran
    (:func:`extraction_inconclusive`)."""
    searches = no_guess_counts(model)
    n = searches[1] if searches else 0
    sentence = (
        f"the best-first extraction search found no complete secret within its budget{budget_words(model)} for any "
        f"of the {n} canaries, so it shows neither a leak nor its absence"
    )
    return Finding("canary_extraction", "inconclusive", baseline, None, sentence,
                   detail=f"no complete secret in {n} searches", inconclusive=True)


def _canary_extraction_finding(model: ModelResult, results: Results, adjusted: Adjusted = None) -> Finding | None:
    counts = canary_extraction_counts(model)
    if counts is None:
        return None
    (k, n), (k0, n0) = counts
    baseline = f"{k0}/{n0} never-inserted canaries" if n0 else "no reference canaries"
    within = within_guesses(model)
    within_ref = _guess_counts(model)[0].get(0)
    label = _guesses_label(model)
    if within_ref is not None and n0:
        baseline += f" ({within_ref[0]}/{within_ref[1]} {label})"
    if not k and extraction_inconclusive(model):
        return _inconclusive_extraction(model, baseline)
    chance = own_secret_chance(model, results)
    first = extraction_p_value(k, n, k0, n0, chance)
    tests = {} if first is None else {"first": first}
    if within is not None and within[0] > 0 and within_ref is not None and within_ref[1] > 0:
        # several guesses: the never-inserted canaries searched the same way are the baseline
        tests["within"] = fisher_greater(*within, *within_ref)
    p, passing = _tested("canary_extraction", tests, adjusted)
    strict, guessed = k > 0 and "first" in passing, "within" in passing
    against = (f"not significantly more often than guessing would (chance at most {_f(chance, '.1g')} per canary)"
               if k0 == 0 and chance is not None else "no more often than never-inserted ones")
    if k0 == 0 and chance is not None:
        baseline += f"; guessing: at most {_f(chance, '.1g')} per canary"
    detail = f"{within[0]}/{within[1]} {label}" if within is not None else ""
    if strict:
        sentence = f"the secrets of {k} of {n} planted canaries can be extracted from it"
        if within is not None and within[0] > k:
            sentence += f", {within[0]} of {within[1]} {label}"
    elif guessed:
        sentence = (
            f"an attacker allowed {label.removeprefix('within ').replace('its', 'several')} finds the secrets of "
            f"{within[0]} of {within[1]} "
            f"planted canaries (its first guess: {k} of {n})"
        )
    else:
        sentence = (
            f"none of {n} planted canaries' secrets could be extracted"
            if not k
            else f"{k} of {n} planted canaries' secrets were extracted, {against}"
        )
        if within is not None and within[0] > k:
            sentence += f" ({within[0]} of {within[1]} {label})"
    searches = no_guess_counts(model)
    if searches is not None and searches[0]:
        # some searches completed no secret: their misses say nothing, unless a beam search (which always
        # completes) ran, whose results then stand for them
        incomplete = (f"the best-first search completed no secret in {searches[0]} of {searches[1]} searches: the "
                      "beam search's results stand" if _beam_counts(model)
                      else f"no complete secret in {searches[0]} of {searches[1]} searches")
        detail = "; ".join(x for x in (detail, incomplete) if x)
        if not strict and not guessed:
            rest = ("those rest on the beam search, which always completes" if _beam_counts(model)
                    else "inconclusive there")
            sentence += (
                f" (for {searches[0]} of the {searches[1]} canaries the best-first search completed no secret within "
                f"its budget: {rest})"
            )
    signal = (strict or guessed) if tests else (False if not k else None)
    if signal is None:
        sentence = f"the secrets of {k} of {n} planted canaries were extracted, with no baseline to compare with"
    return Finding("canary_extraction", f"{k}/{n} inserted canaries", baseline, signal, sentence,
                   detail=detail, p_value=p)


def other_secret_chance(model: ModelResult, results: Results) -> float | None:
    """The largest chance, over the searched canaries, that a guess made without the inserted secrets is one of
    them: other inserted canaries of its spec / the spec's space size (secrets are drawn uniformly, so this holds
    for any fixed guess). None: a spec's space size or the counts are unknown."""
    inserted: dict[str | None, int] = {}
    searched: list[tuple[str | None, int]] = []  # (spec, inserted canaries of the spec other than this one)
    if model.canaries:
        for c in model.canaries:
            inserted[c.spec] = inserted.get(c.spec, 0) + int(c.inserted)
        searched = [(c.spec, inserted[c.spec] - int(c.inserted)) for c in model.canaries
                    if c.extraction_first_guess_inserted is not None]
    else:
        groups = model_groups(model)
        for g in groups:
            inserted[g.spec] = inserted.get(g.spec, 0) + (g.n if g.repetitions > 0 else 0)
        searched = [(g.spec, inserted[g.spec]) for g in groups if g.extraction_first_guess_inserted is not None]
    sizes = _space_sizes(results, {spec for spec, _ in searched})
    return None if sizes is None else max(others / sizes[spec] for spec, others in searched)


def _other_secrets_finding(model: ModelResult, results: Results, adjusted: Adjusted = None) -> Finding | None:
    counts = other_secret_first(model)
    if counts is None or extraction_inconclusive(model):
        return None  # not recorded, or no search completed a guess (the extraction finding says so)
    j, n = counts
    _, other = _guess_counts(model)
    ins = [kn for r, kn in other.items() if r > 0]
    detail = f"{sum(k for k, _ in ins)}/{sum(x for _, x in ins)} inserted"
    if 0 in other:
        detail += f", {other[0][0]}/{other[0][1]} never-inserted canaries"
    chance = other_secret_chance(model, results)
    baseline = f"chance {_f(chance, '.1g')} per search" if chance is not None else "chance (space size not recorded)"
    p, passing = _tested("other_secrets", {} if chance is None else {"first": binomial_greater(j, n, chance)},
                         adjusted)
    signal = None if p is None else bool(passing)
    if j and signal is not False:
        sentence = (
            f"it gives out memorised secrets of other records: for {j} of {n} canaries, searched from their own "
            "prefix, its first guess was the secret of a different inserted canary"
        )
    elif j:
        sentence = (
            f"{j} of {n} searches' first guesses were another inserted canary's secret, no more often than chance"
        )
    else:
        sentence = f"no search's first guess was the secret of another inserted canary ({n} searches)"
    return Finding("other_secrets", f"{j}/{n} searches", baseline, signal, sentence, detail=detail, p_value=p)


def max_exposure(model: ModelResult, results: Results) -> tuple[float, bool] | None:
    """(largest interpolation exposure of an inserted canary, whether it is at its spec's cap); None: none."""
    caps = {s.name: s.exposure_cap_bits for s in results.canary_specs}
    inserted = [c for c in model.canaries if c.repetitions > 0 and _ok(c.exposure_bits)]
    if inserted:
        top = max(inserted, key=lambda c: c.exposure_bits)
        cap = caps.get(top.spec)
        return top.exposure_bits, cap is not None and top.exposure_bits >= cap - 1e-9
    groups = [g for g in model_groups(model) if g.repetitions > 0 and _ok(g.max_exposure_bits)]
    if not groups:
        return None
    top_value = max(g.max_exposure_bits for g in groups)
    cap = min(caps.values()) if len(caps) == 1 else None
    return top_value, cap is not None and top_value >= cap - 1e-9


def _exposure_value(pair: tuple[float, bool] | None) -> str:
    if pair is None:
        return DASH
    value, at_cap = pair
    return f"{'≥' if at_cap else ''}{_bits(value)} bits"


def _canary_exposure_finding(model: ModelResult, results: Results, adjusted: Adjusted = None) -> Finding | None:
    top = max_exposure(model, results)
    if top is None:
        return None
    refs = [c.exposure_bits for c in model.canaries if c.repetitions == 0 and _ok(c.exposure_bits)]
    if not refs:
        refs = [g.max_exposure_bits for g in model_groups(model) if g.repetitions == 0]
    baseline = f"max {_bits(max(refs))} bits never inserted" if refs else "no reference canaries"
    unit = model.mia_by_unit.get("canary", {}).get("exposure")
    detail = ""
    tests = {}
    legacy: bool | None = None  # results recorded before the p-values: the AUC interval, uncorrected
    if unit is not None and _ok(unit.auc_pvalue):
        tests["auc"] = unit.auc_pvalue
    elif unit is not None and unit.auc_ci is not None and _ok(unit.auc_ci[0]):
        legacy = unit.auc_ci[0] > 0.5
    if unit is not None and (tests or legacy is not None):
        detail = f"inserted vs never-inserted AUC {_auc(unit)}"
    value = "max " + _exposure_value(top)
    p_rank = top_rank_p_value(model, results)
    if p_rank is not None:
        tests["rank"] = p_rank
    p, passing = _tested("canary_exposure", tests, adjusted)
    # the rank test alone speaks only for a leak: without the groups' AUC no "does not stand out" is claimed
    signal = True if legacy or "auc" in passing else (False if "auc" in tests or legacy is False else None)
    if "rank" in passing and not signal:
        # one planted secret ranked too high for chance, though the groups' AUC does not separate
        signal = True
        sentence = (f"it makes a planted secret stand out: {_exposure_value(top)} of exposure, a rank that secrets "
                    f"it never saw reach by chance with probability {p_rank:.2g}")
    elif signal:
        value_bits, at_cap = top
        sentence = "it makes planted secrets stand out: " + (
            f"at least {_bits(value_bits)} bits of exposure (the cap)" if at_cap
            else f"up to {_bits(value_bits)} bits of exposure")
    elif signal is False:
        sentence = f"planted secrets do not stand out from never-inserted ones (max exposure {_exposure_value(top)})"
    else:
        sentence = f"the largest exposure of a planted secret is {_exposure_value(top)} ({baseline})"
    return Finding("canary_exposure", value, baseline, signal, sentence, detail=detail, p_value=p)


def top_rank_p_value(model: ModelResult, results: Results) -> float | None:
    """Chance that a model which never saw the inserted canaries ranks one of them as high as the best did.

    A canary's rank among its N null secrets is uniform on 1..N+1 for a model that never saw it, so
    P(rank <= r) = r / (N + 1); over n inserted canaries (union bound) at most n r / (N + 1).
    """
    nulls = {s.name: s.null_samples for s in results.canary_specs}
    ins = [c for c in model.canaries if c.inserted and c.rank and c.spec in nulls]
    if not ins:
        return None
    return min(1.0, min(len(ins) * c.rank / (nulls[c.spec] + 1) for c in ins))


def memorization_p_values(m: MemorizationResult) -> tuple[float, float]:
    """One-sided Fisher p-values that members match more often than non-members: (exact, approximate)."""
    mem, non = m.members, m.non_members
    exact = fisher_greater(mem.exact_matches, mem.n_records, non.exact_matches, non.n_records)
    approx = 1.0
    if _ok(mem.approx_match_rate) and _ok(non.approx_match_rate):
        approx = fisher_greater(
            _count(mem.approx_match_rate, mem.n_records),
            mem.n_records,
            _count(non.approx_match_rate, non.n_records),
            non.n_records,
        )
    return exact, approx


def _memorization_tests(m: MemorizationResult) -> tuple[dict[str, float], bool]:
    """One setting's tests ('exact', 'approx') and whether their p-values are already adjusted for each other
    (the audit's permutation test, people relabelled under a per-person split; else Fisher's, unadjusted)."""
    mem, non = m.members, m.non_members
    exact_p, approx_p = memorization_p_values(m)
    tests = {}
    if mem.n_records and non.n_records:
        tests["exact"] = exact_p
        if _ok(mem.approx_match_rate) and _ok(non.approx_match_rate):
            tests["approx"] = approx_p
    joint = _recorded(m.test, tests)
    return (tests, False) if joint is None else (joint, True)


def _memorization_finding(model: ModelResult, adjusted: Adjusted = None) -> Finding | None:
    if not model.memorization:
        return None
    per = [(m, *_memorization_tests(m)) for m in model.memorization]
    n_settings = sum(1 for _, tests, _ in per if tests)
    flat, where = {}, {}  # every setting's tests, Bonferroni over the settings (and a setting's two Fisher tests)
    for i, (_, tests, joint) in enumerate(per):
        factor = n_settings * (1 if joint else len(tests))
        for t, q in tests.items():
            flat[f"{i}:{t}"], where[f"{i}:{t}"] = min(1.0, factor * q), i
    p, passing = _tested("memorization", flat, adjusted, joint=True)
    signal = None if p is None else bool(passing)
    # the setting the finding describes: the first that passes, else the first tested
    shown = min((where[t] for t in passing), default=min(where.values(), default=0))
    m = per[shown][0]
    mem, non = m.members, m.non_members
    value = f"{_pct(mem.exact_match_rate)}{_ci(mem.exact_match_ci)} exact"
    baseline = f"{_pct(non.exact_match_rate)} of held-out records"
    if _ok(mem.approx_match_rate):
        value += f", {_pct(mem.approx_match_rate)} approximate"
        baseline += f" ({_pct(non.approx_match_rate)} approximate)"
    setting = f"{m.n} tokens from a {m.k}-token prompt"
    if signal is None:  # one side tested no record: no comparison can be made
        sentence = (
            f"it completes {_pct(mem.exact_match_rate)} of {mem.n_records:,} training records word for word; "
            f"{non.n_records:,} held-out records were tested, so there is no baseline to compare with"
        )
    elif f"{shown}:exact" in passing:
        sentence = (
            f"it completes {_pct(mem.exact_match_rate)} of training records word for word ({setting}) against "
            f"{_pct(non.exact_match_rate)} of held-out ones"
        )
    elif f"{shown}:approx" in passing:
        sentence = (
            f"it completes {_pct(mem.approx_match_rate)} of training records nearly word for word (BLEU above 0.75, "
            f"{setting}) against {_pct(non.approx_match_rate)} of held-out ones"
        )
    else:
        sentence = "it does not complete training records word for word more often than held-out ones"
        if n_settings > 1:
            sentence += f" in any of the {n_settings} settings tested"
    detail = f"k={m.k}, n={m.n}" + (f" ({n_settings} settings tested together)" if n_settings > 1 else "")
    marked = tuple(sorted({(per[where[t]][0].k, per[where[t]][0].n) for t in passing}))
    return Finding("memorization", value, baseline, signal, sentence, detail=detail, p_value=p, settings=marked,
                   setting=(m.k, m.n))


def records_testable(u: UntargetedExtraction) -> bool | None:
    """Whether the records-written test had a record on both sides to compare (None: results written before
    it counted records)."""
    if u.n_member_records is None or u.n_held_out_records is None:
        return None
    return u.n_member_records > 0 and u.n_held_out_records > 0


def _untargeted_finding(model: ModelResult, adjusted: Adjusted = None) -> Finding | None:
    u = model.untargeted_extraction
    if u is None:
        return None
    detail = f"{u.n_memorized:,} of {_plural(u.n_unique, 'unique sample')} match training text"
    test = _recorded(model.untargeted_test, ["written"])
    if test is None and records_testable(u) is False:
        # a side without a record that could be written out (every n-gram public, or too short): no test, and
        # not the sample-level rule below, which would compare training text against held-out text it cannot see
        side, n = (("held-out", u.n_held_out_records_untestable) if u.n_held_out_records == 0
                   else ("training", u.n_member_records_untestable))
        sentence = (f"free sampling ({_plural(u.n_samples, 'sample')}) could not be tested against held-out records: "
                    f"none of the {n or 0:,} {side} records has a token n-gram outside the public corpus (a public "
                    "corpus drawn from neither side avoids this)")
        return Finding("untargeted", "not testable", f"no {side} record testable ({n or 0:,} public or too short)",
                       None, sentence, detail=detail)
    if test is not None and u.n_held_out_records is not None:
        # the audit's records written out by the samples, members against held-out records, by permutation
        # (people relabelled under a per-person split): each record checked alike whichever side it is on.
        # Training text outside the audited records (inserted canaries, --train-data) has no held-out twin,
        # so it is counted in the detail but not tested here (the canary findings test the canaries).
        p, passing = _tested("untargeted", test, adjusted)
        signal = bool(passing)
        value = f"{u.n_member_records_written:,} of {_plural(u.n_member_records, 'training record')}"
        baseline = f"{u.n_held_out_records_written:,} of {u.n_held_out_records:,} held-out records"
        if signal:
            sentence = (f"sampled freely, it writes out text of {value} against {baseline} "
                        f"({_plural(u.n_samples, 'sample')})")
        else:
            sentence = (f"free sampling ({_plural(u.n_samples, 'sample')}) does not write out its training "
                        f"records more often than held-out ones beyond chance ({value} against {baseline})")
            if u.n_training_records_reproduced > u.n_member_records_written:
                sentence += (f"; {detail}, some of it outside the audited records, which this test does not "
                             "cover (inserted canaries are tested by the canary findings, other training data by "
                             "nothing)")
        caveat = "; ".join(u.warnings)  # a bias of this test the reader must weigh
        if signal and caveat:
            sentence += f"; but {caveat}"
        return Finding("untargeted", value, baseline, signal, sentence, detail=detail, p_value=p, caveat=caveat)
    # results written before that test: samples matching training text against samples matching held-out
    # records (text both sides share counting on both), a one-sided Fisher test over the unique samples
    found = u.n_training_records_reproduced > 0 and u.n_unique > 0
    p, passing = _tested("untargeted", {"fisher": fisher_greater(u.n_memorized, u.n_unique, u.n_non_member_matches,
                                                                  u.n_unique) if found else 1.0}, adjusted)
    signal = bool(passing)
    value = _plural(u.n_training_records_reproduced, "training record")
    detail = f"{u.n_memorized:,} of {_plural(u.n_unique, 'unique sample')}"
    baseline = f"{_plural(u.n_non_member_matches, 'sample')} {'matches' if u.n_non_member_matches == 1 else 'match'} "
    baseline += "held-out records"
    if signal:
        records = _plural(u.n_training_records_reproduced, "distinct training record")
        sentence = f"sampled freely, it writes out text of {records} ({detail})"
    else:
        sentence = f"free sampling ({_plural(u.n_samples, 'sample')}) did not reproduce training text beyond chance"
    return Finding("untargeted", value, baseline, signal, sentence, detail=detail, p_value=p)


def _pii_extraction_finding(model: ModelResult, adjusted: Adjusted = None) -> Finding | None:
    p = model.pii_extraction
    if p is None:
        return None
    o = p.overall
    value = f"recall {_pct(o.recall)} ({o.n_true:,}/{o.n_training:,})"
    detail = f"precision {_pct(o.precision)}"
    if p.n_baseline_generated:
        baseline = (
            f"the baseline model also produces {o.n_baseline_true:,} training values; {o.n_filtered_true:,} removed"
        )
    else:
        baseline = "no baseline model (nothing filtered)"
    tested = p.n_member_units > 0 and p.n_held_out_units > 0
    unit = "people" if p.units == "person" else "records"
    sides = (f"values of {p.n_member_units_found:,} of {p.n_member_units:,} training {unit} against "
             f"{p.n_held_out_units_found:,} of {p.n_held_out_units:,} held-out {unit}")
    if tested:  # training units found against held-out units found the same way (Fisher, exact under the split)
        baseline = (f"held-out {unit} found: {p.n_held_out_units_found:,}/{p.n_held_out_units:,} (training: "
                    f"{p.n_member_units_found:,}/{p.n_member_units:,}); " + baseline)
        p_value, passing = _tested("pii_extraction", {"fisher": fisher_greater(
            p.n_member_units_found, p.n_member_units, p.n_held_out_units_found, p.n_held_out_units)}, adjusted)
        signal = bool(passing)
    else:  # results recorded before the held-out baseline, or no held-out PII: the count alone
        p_value, signal = None, o.n_true > 0
    if signal:
        sentence = (
            f"its samples contain {o.n_true:,} distinct personal-data values of the training records "
            f"({_pct(o.recall)} of {o.n_training:,}" + (f"; {sides})" if tested else ")")
        )
    elif tested and (o.n_true or p.n_member_units_found):
        sentence = (f"its samples contain personal data of training records not significantly more often than of "
                    f"held-out ones ({sides})")
    else:
        sentence = "its samples contain no personal data of the training records beyond what a baseline model produces"
    return Finding("pii_extraction", value, baseline, signal, sentence, detail=detail, p_value=p_value)


def _pii_reconstruction_finding(model: ModelResult, adjusted: Adjusted = None) -> Finding | None:
    mem = model.pii_reconstruction.get("members")
    if mem is None:
        return None
    non = model.pii_reconstruction.get("non_members")
    k = _count(mem.top1_accuracy, mem.n_queries)
    test = _recorded(model.pii_reconstruction_test, ["top1"])
    if non is not None:
        if test is not None:
            p = test["top1"]
        else:  # results written before the permutation test: Fisher over the queries
            p = fisher_greater(k, mem.n_queries, _count(non.top1_accuracy, non.n_queries), non.n_queries)
        baseline = f"held-out {_pct(non.top1_accuracy)}, chance {_pct(mem.chance_top1)}"
    else:
        p = binomial_greater(k, mem.n_queries, mem.chance_top1)
        baseline = f"chance {_pct(mem.chance_top1)}"
    p, passing = _tested("pii_reconstruction", {"top1": p} if mem.n_queries else {}, adjusted)
    signal = None if p is None else bool(passing)
    value = f"top-1 {_pct(mem.top1_accuracy)}{_ci(wilson(mem.top1_accuracy, mem.n_queries))}"
    detail = f"{mem.pii_type}, {mem.n_candidates:,} candidates"
    if signal:
        sentence = (
            f"with a training record's {mem.pii_type} masked, it picks the true value among {mem.n_candidates:,} "
            f"candidates {_pct(mem.top1_accuracy)} of the time ({baseline})"
        )
    elif signal is None:
        sentence = f"no training record holding a {mem.pii_type} was queried, so reconstruction was not measured"
    else:
        sentence = f"it does not pick a training record's masked {mem.pii_type} more often than for held-out records"
    return Finding("pii_reconstruction", value, baseline, signal, sentence, detail=detail, p_value=p)


def empirical_best(model: ModelResult) -> EmpiricalPrivacy | None:
    """The bound that matters most: a failed one first, else the largest lower bound."""
    if not model.empirical_privacy:
        return None
    return max(model.empirical_privacy, key=lambda e: (e.exceeds_accountant, e.eps_lower_bound))


def claim_untestable(e: EmpiricalPrivacy, accountant: float | None) -> bool:
    """Whether the audit's design could not prove a bound as large as the DP claim (its best possible bound is
    below the accountant's ε): then no result of it can contradict the claim, and it does not test it."""
    return accountant is not None and _ok(e.best_possible) and e.best_possible < accountant


def _empirical_finding(model: ModelResult) -> Finding | None:
    e = empirical_best(model)
    if e is None:
        return None
    accountant = e.accountant_epsilon if e.accountant_epsilon is not None else model.privacy.epsilon
    value = f"ε ≥ {_f(e.eps_lower_bound, '.2f')}"
    detail = f"{e.method}, α = {_f(e.alpha, '.2g')}"
    baseline = f"accountant ε = {_f(accountant, '.2f')}" if accountant is not None else "no DP claim"
    if e.exceeds_accountant:
        sentence = (
            f"{FAILED_DP}: the measurements prove ε ≥ {_f(e.eps_lower_bound, '.2f')}, above the ε = "
            f"{_f(accountant, '.2f')} its DP training claims"
        )
        return Finding("empirical", value, baseline, True, sentence, detail=detail, failed=True)
    if _ok(e.eps_lower_bound) and e.eps_lower_bound > 0:
        sentence = f"the measurements prove a privacy loss of at least ε = {_f(e.eps_lower_bound, '.2f')}"
        untestable = claim_untestable(e, accountant)
        if untestable:
            sentence += (f"; this audit's design can prove at most ε = {_f(e.best_possible, '.2f')}, below the ε = "
                         f"{_f(accountant, '.2f')} its DP training claims, so it cannot test that claim")
        elif accountant is not None:
            sentence += f", within the ε = {_f(accountant, '.2f')} its DP training claims"
        return Finding("empirical", value, baseline, True if accountant is None else False, sentence, detail=detail,
                       within_claim=accountant is not None, best_possible=e.best_possible if untestable else None)
    sentence = "the empirical privacy audit proves no privacy loss above ε = 0 (its lower bound is 0)"
    return Finding("empirical", value, baseline, False, sentence, detail=detail)


def _findings(model: ModelResult, results: Results, adjusted: Adjusted) -> list[Finding]:
    found = [
        _mia_finding(model, adjusted),
        _canary_extraction_finding(model, results, adjusted),
        _other_secrets_finding(model, results, adjusted),
        _canary_exposure_finding(model, results, adjusted),
        _memorization_finding(model, adjusted),
        _untargeted_finding(model, adjusted),
        _pii_extraction_finding(model, adjusted),
        _pii_reconstruction_finding(model, adjusted),
        _empirical_finding(model),
    ]
    return [f for f in found if f is not None]


def model_findings(model: ModelResult, results: Results) -> list[Finding]:
    """The model's findings in :data:`FINDINGS` order (those not measured are left out).

    Two passes: the first gives each tested finding its p-value; Holm's correction over them (a failed DP
    guarantee aside, which has its own error level) then decides, in the second, which findings show a signal.
    """
    tested = {f.key: f.p_value for f in _findings(model, results, None) if f.p_value is not None and not f.failed}
    adjusted = holm(tested)
    found = _findings(model, results, adjusted)
    for f in found:
        f.p_adjusted = adjusted.get(f.key)
    return found


def checks_split(f: Finding) -> bool:
    """Whether a finding compares the two sides of the records by a test: the split check's measurements (not the
    DP checks, not the empirical ε, not PII extraction recorded without its held-out baseline)."""
    return not f.failed and f.key != "empirical" and (f.p_value is not None or f.key == "mia")


def split_failures(findings: list[Finding]) -> list[Finding]:
    """A control model's tested findings that show a signal: what its records' split gives away without
    memorization."""
    return [f for f in findings if f.signal and checks_split(f)]


def control_findings(results: Results) -> dict[str, list[Finding]]:
    """The findings of the run's control models."""
    return {name: model_findings(m, results) for name, m in results.models.items() if m.control}


def split_check(models: Mapping[str, ModelResult], findings: Mapping[str, list[Finding]]
                ) -> dict[str, list[Finding]] | None:
    """The split check of a run: each control model with a tested comparison of the two sides, with its findings
    that show a signal (:func:`split_failures`; empty: it passed); None: no such control, the check was not run.
    ``findings`` holds at least the controls' findings (:func:`control_findings`)."""
    out = {name: split_failures(findings.get(name, [])) for name, m in models.items() if m.control
           and any(checks_split(f) and f.signal is not None for f in findings.get(name, []))}
    return out or None


def control_failures(models: Mapping[str, ModelResult], findings: Mapping[str, list[Finding]]
                     ) -> dict[str, list[Finding]]:
    """The controls that fail the split check, with their findings that show a signal."""
    return {name: hits for name, hits in (split_check(models, findings) or {}).items() if hits}


def split_qualified(leaks: list[Finding], split: dict[str, list[Finding]] | None) -> str | None:
    """A sentence qualifying those of ``leaks`` that a failed split check also shows (``split``: each control's
    :func:`split_failures`); None: none."""
    keys = {f.key for f in leaks}
    hit = {c: k for c, hits in sorted((split or {}).items()) if (k := {f.key for f in hits} & keys)}
    if not hit:
        return None

    def labels(ks: set[str]) -> str:
        return _join([_lower(FINDINGS[k][0]) for k in FINDINGS if k in ks])

    if len(hit) == 1:
        (control, ks), = hit.items()
        return (f"Read {labels(ks)} with the split check: the control model {control}, never trained on these "
                "records, shows a signal there too, so part of it here is the split, not memorization.")
    each = _join([f"{c} in {labels(ks)}" for c, ks in hit.items()])
    return (f"Read {labels(set().union(*hit.values()))} with the split check: the control models, never trained on "
            f"these records, show signals there too ({each}), so part of it here is the split, not memorization.")


def _control_verdict(name: str, findings: list[Finding]) -> dict[str, Any]:
    """The split check: a model never trained on the records must show no signal."""
    hits = split_failures(findings)
    quiet = [_lower(f.label) for f in findings if f.signal is False and checks_split(f)]
    failed = [f for f in findings if f.failed]
    dp = _sentence(failed[0].sentence) + " " if failed else ""  # a DP claim it makes, contradicted: said first
    if hits:
        shown = "; ".join(f"{_lower(f.label)}: {f.measured}" for f in hits)
        text = dp + (
            f"{SPLIT_FAILED}: {name} was never trained on these records, yet it shows a signal in {shown}. The "
            "records' two sides (members and held-out records, or inserted and reference canaries) differ in a way "
            "a model tells apart without memorizing them, so the same findings for the other models measure that "
            "difference too. Split the records at random, or read those findings against this model's."
        ) + "".join(f" For {_lower(f.label)}, {f.caveat}." for f in hits if f.caveat)
        status = "failed"
    elif quiet:
        text = dp + (f"Split check passed: {name} was never trained on these records, and none of its "
                     f"{_plural(len(quiet), 'measurement')} ({_join(quiet)}) shows a signal, as it should not.")
        status = "failed" if failed else "clean"
    else:
        text = dp + "Split check: no measurement of this model was tested against a baseline."
        status = "failed" if failed else "unknown"
    return {"name": name, "privacy": "control: never trained on these records", "text": text, "status": status}


def _verdict(name: str, model: ModelResult, findings: list[Finding],
             split: dict[str, list[Finding]] | None = None) -> dict[str, Any]:
    """A short plain-language paragraph: what leaked, what did not, and a failed DP guarantee first.

    ``split``: the findings with a signal of each control model (:func:`split_failures`); a leak of the same
    kind here is then said to rest partly on the split.
    """
    if model.control:
        return _control_verdict(name, findings)
    failed = [f for f in findings if f.failed]
    leaks = [f for f in findings if f.signal and not f.failed]
    quiet = [_lower(f.label) for f in findings if f.signal is False and not f.within_claim]
    within = [_sentence(f.sentence) for f in findings if f.within_claim]
    inconclusive = [f.sentence for f in findings if f.inconclusive]
    parts = []
    if failed:
        parts.append(_sentence(failed[0].sentence))
    if leaks:
        parts.append("It also leaks its training data." if failed else "It leaks its training data.")
        parts += [_sentence(f.sentence) for f in leaks]
        if quiet:
            parts.append(f"No leak beyond the baseline in {_join(quiet)}.")
    elif quiet and not failed:
        n = len(quiet)
        parts.append(
            f"No leakage detected: none of the {n} measurement{'s' if n != 1 else ''} ({_join(quiet)}) exceeds "
            "its baseline beyond sampling error. This is evidence, not proof, that it does not leak (see Limitations)."
        )
    parts += within  # a proven loss the DP guarantee allows: said as such, never as "no leak"
    if inconclusive:
        parts.append("Inconclusive: " + "; ".join(inconclusive) + ".")
    unclear = [f.sentence for f in findings if f.signal is None and not f.inconclusive]
    if unclear:
        parts.append("Shown without a test against a baseline: " + "; ".join(unclear) + ".")
    if not findings:
        parts.append("No leakage measurement was recorded for this model.")
    qualified = split_qualified(leaks, split)
    if qualified:
        parts.append(qualified)
    eps = model.privacy.epsilon
    privacy = f"trained with DP at ε = {_f(eps, '.2f')}" if eps is not None else "trained without DP"
    if _dp_condition(model.privacy):  # the condition the safeguard holds under, wherever it is named
        privacy += f"; {_dp_condition(model.privacy)}"
    status = "failed" if failed else ("leaks" if leaks else ("clean" if quiet else "unknown"))
    return {"name": name, "privacy": privacy, "text": " ".join(parts), "status": status}


def shown_memorization(model: ModelResult, findings: list[Finding]) -> MemorizationResult | None:
    """The memorization setting the model's finding describes (:attr:`Finding.setting`: the first whose tests
    pass, else the first tested); without a finding, the first setting run; None: none run."""
    f = next((x for x in findings if x.key == "memorization"), None)
    if f is not None and f.setting is not None:
        shown = next((m for m in model.memorization if (m.k, m.n) == f.setting), None)
        if shown is not None:
            return shown
    return model.memorization[0] if model.memorization else None


def headline(results: Results, name: str, findings: list[Finding] | None = None) -> dict[str, Any]:
    """The model's headline numbers, unformatted (the DP comparison and the model card use them).

    ``findings``: the model's findings (:func:`model_findings`), when already built; memorization is quoted at
    the setting its finding describes.
    """
    model = results.models[name]
    best = best_attack(model)
    extraction = canary_extraction_counts(model)
    within = within_guesses(model)
    other = other_secret_first(model)
    top = max_exposure(model, results)
    mem = shown_memorization(model, model_findings(model, results) if findings is None else findings)
    emp = empirical_best(model)
    pii = model.pii_extraction.overall if model.pii_extraction is not None else None
    return {
        "epsilon": model.privacy.epsilon,
        "delta": model.privacy.delta,
        "accountant": model.privacy.accountant,
        "best_attack": best[0] if best else None,
        "best_tpr_at_1pct_fpr": _tpr_key(best[1]) if best else None,
        "best_attack_auc": best[1].auc if best and _ok(best[1].auc) else None,
        "max_canary_exposure_bits": top[0] if top else None,
        "max_canary_exposure_at_cap": top[1] if top else None,
        "canaries_extracted": extraction[0][0] if extraction else None,
        "canaries_searched": extraction[0][1] if extraction else None,
        "extraction_guesses": _guesses_setting([model]),
        "canaries_extracted_within_guesses": within[0] if within else None,
        "canary_searches_other_secret_first": other[0] if other else None,
        "canary_searches_with_first_guess_recorded": other[1] if other else None,
        "canary_extraction_inconclusive": extraction_inconclusive(model) if extraction else None,
        "memorization_k": mem.k if mem else None,
        "memorization_n": mem.n if mem else None,
        "memorization_exact_match_rate": mem.members.exact_match_rate if mem else None,
        "memorization_exact_match_rate_non_members": mem.non_members.exact_match_rate if mem else None,
        "pii_recall": pii.recall if pii else None,
        "pii_precision": pii.precision if pii else None,
        "empirical_epsilon_lower_bound": emp.eps_lower_bound if emp else None,
        "empirical_method": emp.method if emp else None,
        "empirical_alpha": emp.alpha if emp else None,
        "dp_guarantee_failed": any(e.exceeds_accountant for e in model.empirical_privacy)
        or bool(dp_bound_violations(model)),
    }


def _findings_table(results: Results, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    """Rows = kinds of finding (with their plain meaning), columns = models."""
    rows = []
    for key, (label, meaning) in FINDINGS.items():
        by_model = {name: next((f for f in fs if f.key == key), None) for name, fs in findings.items()}
        if not any(by_model.values()):
            continue
        cells = []
        for f in by_model.values():
            if f is None:
                cells.append({"text": DASH, "value": DASH, "detail": "", "baseline": "", "status": ""})
                continue
            status = "failed" if f.failed else ("signal" if f.signal else "")
            value = f"⚠ {FAILED_DP}: {f.value}" if f.failed else f.value + (f" {SIGNAL}" if f.signal else "")
            cells.append({"text": f.cell, "value": value, "detail": f.detail, "baseline": f.baseline, "status": status})
        rows.append({"label": label, "meaning": meaning, "cells": cells})
    legend = (
        f"{SIGNAL} marks a finding whose test rejects “no leak” at {SIGNIFICANCE:.0%}: its p-value, corrected for "
        "the tests within it and for the model's other findings (see Limitations), is below "
        f"{SIGNIFICANCE:g}. The intervals are per measurement: an interval that lies above its baseline does not "
        "by itself make a signal (the strongest of several attacks lies above chance by selection)."
    )
    return {"rows": rows, "signal": SIGNAL, "legend": legend}


def _comparison(results: Results, findings: dict[str, list[Finding]] | None = None) -> dict[str, Any]:
    """DP vs non-DP: one row per model with the headline numbers (``findings``: each model's, when already
    built)."""
    header = [
        "model",
        "ε (δ)",
        "best TPR@1% FPR",
        "max canary exposure",
        "canaries extracted",
        "memorization (exact)",
        "PII recall",
        "empirical ε",
    ]
    rows = []
    # a memorization cell names its setting when the models ran several (each is quoted at its finding's)
    several = len({(m.k, m.n) for model in results.models.values() for m in model.memorization}) > 1
    for name, model in results.models.items():
        h = headline(results, name, None if findings is None else findings.get(name))
        eps = _epsilon(h["epsilon"])
        eps += _notes(f"δ = {_f(h['delta'], '.1e')}" if h["epsilon"] is not None and h["delta"] is not None else "",
                      _dp_condition(model.privacy))
        best = DASH
        if h["best_attack"] is not None:
            best = f"{_pct(h['best_tpr_at_1pct_fpr'])} ({h['best_attack']})"
        top = max_exposure(model, results)
        extracted = DASH if h["canaries_extracted"] is None else f"{h['canaries_extracted']}/{h['canaries_searched']}"
        if h["canary_extraction_inconclusive"] and not h["canaries_extracted"]:
            extracted = f"inconclusive ({extracted}: no complete secret within the search budget)"
        elif h["canaries_extracted_within_guesses"] is not None:
            g = h["extraction_guesses"] or "its"
            extracted += f" ({h['canaries_extracted_within_guesses']}/{h['canaries_searched']} within {g} guesses)"
        if h["canary_searches_other_secret_first"]:
            extracted += (
                f"; another's secret first in {h['canary_searches_other_secret_first']}/"
                f"{h['canary_searches_with_first_guess_recorded']} searches"
            )
        mem = DASH
        if h["memorization_k"] is not None:
            mem = (
                f"{_pct(h['memorization_exact_match_rate'])} vs {_pct(h['memorization_exact_match_rate_non_members'])}"
                " held-out"
            )
            if several:
                mem += f" (k={h['memorization_k']}, n={h['memorization_n']})"
        emp = DASH
        failed = h["dp_guarantee_failed"]
        if h["empirical_epsilon_lower_bound"] is not None:
            emp = f"≥ {_f(h['empirical_epsilon_lower_bound'], '.2f')}"
            if failed:
                emp = f"⚠ {emp}: {FAILED_DP}"
        cells = [eps, best, _exposure_value(top), extracted, mem, _pct(h["pii_recall"]), emp]
        rows.append({"name": name, "description": model.description, "cells": cells, "failed": failed})
    dp = [n for n, m in results.models.items() if m.privacy.epsilon is not None]
    non = [n for n, m in results.models.items() if m.privacy.epsilon is None]
    text = (
        "One row per model: how much each leaks by every measure, side by side. A lower ε is a stronger DP "
        "guarantee; every other column is leakage, where lower is better."
    )
    if dp and non:
        text += f" Trained with DP: {_join(dp)}; without: {_join(non)}."
    return {"header": header, "rows": rows, "text": text}
