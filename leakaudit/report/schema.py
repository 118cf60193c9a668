"""The typed, versioned results of a run (``results.json``).

Reports are rendered from these models alone, so a report can be rebuilt offline from a
run directory.  Nothing in here may hold a secret, canary text or PII value, nor anything a secret
can be recovered from: canaries are referred to by id only (a hash of a canary's text would give
its secret back to anyone trying the secret's few possible values).
"""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 2  # 2: canaries lost their text hash (version-1 files load with it dropped)
FPR_LEVELS = ("0.001", "0.01", "0.1")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrivacyRecord(_Model):
    """How a model was trained, privacy-wise.  ``epsilon`` is null for non-private training."""

    epsilon: float | None = Field(default=None, description="Accountant's epsilon; null without DP.")
    delta: float | None = Field(default=None, description="Target delta of the DP guarantee.")
    noise_multiplier: float | None = Field(default=None, description="Gaussian noise std / clip norm.")
    sample_rate: float | None = Field(
        default=None, description="With DP the Poisson sampling rate q = 1 / ceil(N / batch); without, batch / N."
    )
    steps: int | None = Field(default=None, description="Optimizer steps taken.")
    max_grad_norm: float | None = Field(default=None, description="Per-sample clip norm.")
    accountant: str | None = Field(default=None, description="Privacy accountant (prv, rdp, ...).")
    epochs: float | None = Field(default=None, description="Passes over the training set.")
    dataset_size: int | None = Field(default=None, description="Records in the training set.")
    clipping: str | None = Field(default=None, description="flat, per_layer or adaptive clipping.")
    grad_sample_mode: str | None = Field(default=None, description="Opacus per-sample gradients: hooks, ghost, ...")
    lora_rank: int | None = Field(default=None, description="LoRA rank when only adapters were trained (merged).")
    randomness: str | None = Field(
        default=None, description="DP-SGD's batches and noise: secret (unpredictable, unrecorded seeds) or seeded "
        "(from the training seed: the guarantee holds only while it stays secret); null: not recorded.",
    )
    weights_sha256: dict[str, str] | None = Field(
        default=None, description="SHA-256 of the weight files (*.safetensors) this record was saved with by "
        "leakaudit train; null: not recorded.",
    )
    bound_to_weights: bool | None = Field(
        default=None, description="Set by the audit: true when weights_sha256 equals the audited weights' hashes, "
        "false when the record was not saved with these weights (a claim nothing ties to this model); null: "
        "the model directory has no privacy.json.",
    )


class RocCurve(_Model):
    """A step-function ROC, thinned to at most a few hundred points for plotting."""

    fpr: list[float]
    tpr: list[float]


DP_UNCHECKED = "the DP bound was not checked: "
"""How an attack result's warning begins when its DP bound could not be checked (the reason follows)."""


class DPBoundCheck(_Model):
    """Whether the attack's ROC respects TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta (it must, under
    (eps, delta)-DP)."""

    epsilon: float
    delta: float
    violated: bool = Field(
        description="True when, at one of the tested thresholds, the Clopper-Pearson lower bound on TPR exceeds "
        "e^eps times the upper bound on FPR plus delta, for TPR <= e^eps FPR + delta or for 1 - FPR <= e^eps "
        "(1 - TPR) + delta (Bonferroni over the thresholds of both, at the check's level)."
    )
    level: float = Field(
        default=0.95,
        description="The check's confidence. An audit Bonferroni-corrects over a model's attacks: each attack's "
        "check at 1 - 0.05 / k for k attacks, so that a violation by any holds at 95% overall.",
    )
    max_excess: float = Field(description="Largest empirical excess over thresholds: TPR - (e^eps FPR + delta), or "
                              "(1 - FPR) - (e^eps (1 - TPR) + delta).")
    scope: str = Field(
        default="all records",
        description="The records checked: 'all records', or, when records were split per person, 'records of "
        "people with no other audited record' (only those differ from the training set by one record; a "
        "person's k records together are protected only at group privacy).",
    )
    testable: bool | None = Field(
        default=None,
        description="Whether a perfectly separating attack on as many records would be declared a violation by the "
        "same tests: when False the check cannot fail at this size and says nothing (None: results written before "
        "this field).",
    )
    n_members: int | None = Field(default=None, description="Member records checked (None: all of the attack's).")
    n_non_members: int | None = Field(default=None, description="Non-member records checked (None: all).")


class AttackResult(_Model):
    """Metrics of one membership-inference attack on one model."""

    auc: float = Field(description="Area under the ROC (Mann-Whitney, ties count 1/2).")
    auc_ci: tuple[float, float] | None = Field(
        default=None, description="95% bootstrap interval of the AUC (records split per person: resampling people)."
    )
    auc_pvalue: float | None = Field(
        default=None,
        description="One-sided Mann-Whitney p-value that the AUC exceeds 0.5 (before any correction for the number "
        "of attacks or findings).",
    )
    tpr_at_fpr: dict[str, float] = Field(description="TPR at FPR <= alpha from the step-function ROC.")
    tpr_ci: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="95% interval of the TPR at each FPR level, allowing for the threshold's own error: from order "
        "statistics and Clopper-Pearson bounds, or, records split per person, a bootstrap resampling people (older "
        "results: Clopper-Pearson at the chosen threshold only)."
    )
    intervals: str | None = Field(
        default=None,
        description="How auc_ci and tpr_ci were computed: 'records' (AUC: bootstrap over records; TPR: order "
        "statistics and Clopper-Pearson, allowing for the threshold's error), 'people' (records split per person: "
        "one bootstrap resampling people for both); None: older results (TPR: Clopper-Pearson at the chosen "
        "threshold only).",
    )
    balanced_accuracy: float | None = Field(default=None, description="max over thresholds of (TPR + 1 - FPR) / 2.")
    n_members: int
    n_non_members: int
    min_resolvable_fpr: float = Field(description="1 / n_non_members: smaller FPRs rest on zero samples.")
    dp_bound: DPBoundCheck | None = None
    warnings: list[str] = Field(default_factory=list)
    roc: RocCurve | None = None


class PermutationTest(_Model):
    """Several tests of one model adjusted for one another by relabelling members and non-members."""

    method: str = Field(
        default="max-T permutation (Westfall-Young, single step)",
        description="How the tests were made together: each test's statistic (an attack's AUC; a difference of "
        "match rates, standardised) against the largest of any test's under random relabellings of the same "
        "records (the number of member units kept).",
    )
    unit: str = Field(
        default="record",
        description="What was relabelled: 'user' when every person's records lie on one side (a per-person split), "
        "else 'record'.",
    )
    permutations: int = Field(description="Random relabellings drawn (p-values resolve to 1 / (permutations + 1); "
                              "with records as the units, the Bonferroni value is used below that).")
    seed: int = 0
    p_values: dict[str, float] = Field(
        description="Test (an attack; 'exact', 'approx') -> one-sided p-value that members score higher, adjusted "
        "for every test listed here."
    )


class CanaryResult(_Model):
    """Exposure of one canary (no secret: its id only)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_text_hash(cls, data: Any) -> Any:
        # runs before this fix stored an unsalted SHA-256 of the canary's text: dropped on reading
        if isinstance(data, dict) and "sha256" in data:
            data = {k: v for k, v in data.items() if k != "sha256"}
        return data

    id: str
    spec: str
    repetitions: int
    inserted: bool
    exposure_bits: float = Field(description="log2(N) - log2(rank) among N null secrets (interpolation).")
    rank: int = Field(description="1 + number of null secrets at least as likely as this one.")
    exposure_bits_skewnorm: float | None = Field(
        default=None,
        description="log2 |R| - log2 of the estimated rank: the secret itself, the spec's other inserted secrets "
        "at least as likely (scored exactly), and |R| times the CDF of the secret's NLL under a skew-normal "
        "fitted to the null NLLs for the rest; clipped to [0, log2 |R|], not capped by the number of null samples.",
    )
    skewnorm_ks_pvalue: float | None = Field(
        default=None,
        description="Kolmogorov-Smirnov p-value of that fit (small: the fit is poor). The parameters are fitted to "
        "the same sample, so the p-value runs high: a large one does not show a good fit.",
    )
    exposure_bits_exact: float | None = Field(
        default=None, description="log2|R| - log2(rank) over the whole randomness space, when it was enumerated."
    )
    extracted: bool | None = Field(
        default=None,
        description="True when a best-first search over the secret's format returned this secret as the model's "
        "most likely one within the search budget (None: not searched).",
    )
    extraction_expansions: int | None = Field(
        default=None, description="Forward passes the search used to reach its first guess (all of them when none)."
    )
    extraction_guesses: int | None = Field(
        default=None,
        description="Guesses the best-first search was allowed: the distinct complete secrets it pops, in order "
        "of cost, until it has this many or has spent its forward-pass budget (None: not recorded).",
    )
    extraction_guesses_found: int | None = Field(
        default=None,
        ge=0,
        description="Guesses the search found within its budget (0: no complete secret; None: not recorded).",
    )
    extraction_guess: int | None = Field(
        default=None,
        ge=1,
        description="1-based position of this canary's secret among the search's guesses, i.e. its rank under "
        "the model over token paths (None: not among the guesses found within the budget, or not searched).",
    )
    extraction_first_guess_inserted: bool | None = Field(
        default=None,
        description="True when the search's first guess was the secret of another inserted canary of the same "
        "spec: the model leaks that canary given this one's prefix (None: not recorded).",
    )
    extracted_beam: bool | None = Field(
        default=None,
        description="True when a beam search over the secret's format ranked this secret first (None: not run).",
    )


class ExposureGroup(_Model):
    """Exposure summary of one spec's canaries inserted a given number of times (0 = reference)."""

    spec: str | None = Field(default=None, description="Canary spec name.")
    repetitions: int
    n: int
    median_exposure_bits: float
    mean_exposure_bits: float
    max_exposure_bits: float
    median_exposure_bits_skewnorm: float | None = None
    extracted: int | None = Field(default=None, description="Canaries of this group extracted by the search.")
    extraction_guesses: int | None = Field(
        default=None,
        description="Guesses the best-first search was allowed per canary of this group (None: not recorded, or "
        "not one setting).",
    )
    extracted_within_guesses: int | None = Field(
        default=None,
        ge=0,
        description="Canaries of this group whose own secret was among the search's guesses (None: not recorded).",
    )
    extraction_first_guess_inserted: int | None = Field(
        default=None,
        ge=0,
        description="Canaries of this group whose search's first guess was the secret of another inserted canary "
        "(None: not recorded).",
    )
    extraction_no_guess: int | None = Field(
        default=None,
        ge=0,
        description="Canaries of this group whose search found no complete secret within its forward-pass budget: "
        "inconclusive, not a miss (None: not recorded).",
    )

    @classmethod
    def of(cls, canaries: list[CanaryResult], *, spec: str | None, repetitions: int) -> ExposureGroup:
        """The summary of ``canaries`` (one group): exposure median, mean and max, the skew-normal median over
        those that have it, and the extraction totals over those searched (each None when none recorded it)."""
        bits = [c.exposure_bits for c in canaries]
        skew = [c.exposure_bits_skewnorm for c in canaries if c.exposure_bits_skewnorm is not None]
        searched = [c for c in canaries if c.extracted is not None]
        allowed = {c.extraction_guesses for c in searched if c.extraction_guesses is not None}
        within = [c.extraction_guess is not None for c in searched if c.extraction_guesses is not None]
        other = [bool(c.extraction_first_guess_inserted) for c in searched
                 if c.extraction_first_guess_inserted is not None]
        none = [c.extraction_guesses_found == 0 for c in searched if c.extraction_guesses_found is not None]
        return cls(
            spec=spec, repetitions=repetitions, n=len(bits),
            median_exposure_bits=float(statistics.median(bits)), mean_exposure_bits=float(statistics.fmean(bits)),
            max_exposure_bits=float(max(bits)),
            median_exposure_bits_skewnorm=float(statistics.median(skew)) if skew else None,
            extracted=sum(bool(c.extracted) for c in searched) if searched else None,
            extraction_guesses=allowed.pop() if len(allowed) == 1 else None,
            extracted_within_guesses=sum(within) if within else None,
            extraction_first_guess_inserted=sum(other) if other else None,
            extraction_no_guess=sum(none) if none else None,
        )


class MemorizationStats(_Model):
    """Discoverable memorization on one side (members or non-members)."""

    n_records: int = Field(description="Records long enough for the prompt and the continuation.")
    exact_matches: int = 0
    exact_match_rate: float | None = Field(default=None, description="Greedy continuation equals all n tokens.")
    exact_match_ci: tuple[float, float] | None = Field(default=None, description="95% Clopper-Pearson interval.")
    token_match_mean: float | None = Field(default=None, description="Mean fraction of positions that match.")
    approx_match_rate: float | None = Field(default=None, description="Fraction with BLEU-4 above 0.75.")
    bleu_mean: float | None = None
    edit_similarity_mean: float | None = Field(default=None, description="1 - token edit distance / n, averaged.")


class MemorizationResult(_Model):
    """Discoverable memorization: prompt with k training tokens, greedy-decode n, compare."""

    k: int
    n: int
    skipped_short: int = Field(default=0, description="Records shorter than k + n tokens (not tested).")
    members: MemorizationStats
    non_members: MemorizationStats = Field(description="The baseline: records the model never saw.")
    test: PermutationTest | None = Field(
        default=None,
        description="Exact and approximate matches, members against non-members, tested together (people relabelled "
        "when the split is per person); absent in results written before it.",
    )


class UntargetedExtraction(_Model):
    """Untargeted extraction: sample, rank, dedupe, verify against the training set (no text kept)."""

    n_samples: int
    sample_tokens: int = Field(description="New tokens per sample.")
    strategies: dict[str, int] = Field(description="Samples per strategy (top_k, temperature_decay, public_prompt).")
    n_unique: int = Field(description="Samples left after removing near duplicates (trigram overlap > 1/2).")
    verify_ngram: int = Field(description="Token n-gram length used to verify a sample against the training set.")
    n_memorized: int = Field(description="Unique samples reproducing training text absent from the public corpus.")
    n_training_records_reproduced: int = Field(description="Distinct training records those samples came from.")
    n_in_public: int = Field(default=0, description="Unique samples matching the public corpus (not counted).")
    n_non_member_matches: int = Field(
        default=0,
        description="Baseline: unique samples matching held-out records (the test as for training text: chance "
        "and template).",
    )
    precision_at_k: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Ranking metric -> {k: fraction of the top k that is memorized}."
    )
    baseline_precision_at_k: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="The same with held-out records in place of the training set."
    )
    n_member_records: int | None = Field(
        default=None, description="The audit's member records checked one by one: those with a token n-gram outside "
        "the public corpus (the others cannot be written out; results without n_member_records_untestable counted "
        "every record)."
    )
    n_member_records_written: int | None = Field(
        default=None, description="Member records some unique sample writes a non-public token n-gram of."
    )
    n_held_out_records: int | None = Field(default=None, description="Held-out records checked the same way.")
    n_held_out_records_written: int | None = Field(
        default=None, description="Held-out records some unique sample writes a non-public token n-gram of (the "
        "baseline of the test in untargeted_test)."
    )
    n_member_records_untestable: int | None = Field(
        default=None, description="Member records left out of the test: every token n-gram in the public corpus, or "
        "too short for one."
    )
    n_held_out_records_untestable: int | None = Field(default=None, description="Held-out records left out alike.")
    warnings: list[str] = Field(
        default_factory=list, description="Conditions that bias the records-written test (a public corpus holding "
        "more of the held-out side's text), found by the audit."
    )


class PIIExtractionCounts(_Model):
    """Counts of distinct normalised values (of one type, or summed over types) and the rates from them."""

    n_generated_pii: int = Field(description="Distinct values detected in the audited model's generations.")
    n_mentions: int = Field(description="Detections in the audited model's generations, repeats included.")
    n_baseline_pii: int = Field(description="Distinct values detected in the baseline model's generations.")
    n_filtered: int = Field(description="Values the audited model generated that the baseline also generated.")
    n_filtered_true: int = Field(
        description="Training values the audited model generated that the baseline also generated: "
        "leaks without the baseline filter, removed by it."
    )
    n_baseline_true: int = Field(description="Training values the baseline generated (it never saw them).")
    n_leaked: int = Field(description="Generated values the baseline did not generate.")
    n_true: int = Field(description="Leaked values that are training PII.")
    n_training: int = Field(description="Distinct training PII values.")
    precision: float | None = Field(description="n_true / n_leaked; null when nothing leaked.")
    recall: float | None = Field(description="n_true / n_training; null without training PII.")
    precision_unfiltered: float | None = Field(
        description="(n_true + n_filtered_true) / n_generated_pii: precision without the baseline filter."
    )
    recall_unfiltered: float | None = Field(
        description="(n_true + n_filtered_true) / n_training: recall without the baseline filter."
    )


class PIIExtraction(_Model):
    """PII extraction (Lukas et al. 2023) by type and overall; counts and rates only, no PII values."""

    types: list[str]
    n_generated: int = Field(description="Texts generated by the audited model.")
    n_baseline_generated: int = Field(description="Texts generated by the baseline model.")
    overall: PIIExtractionCounts = Field(description="Counts summed over types (a value is a (type, value) pair).")
    by_type: dict[str, PIIExtractionCounts]
    notes: list[str] = Field(default_factory=list)
    units: str | None = Field(
        default=None, description="The test's unit: 'person' (records of one user_id together) or 'record'; null: "
        "no held-out baseline was measured."
    )
    n_member_units: int = Field(default=0, description="Training units holding detectable PII.")
    n_member_units_found: int = Field(
        default=0, description="Of those, units some of whose values the samples contain (the baseline model's "
        "values removed)."
    )
    n_held_out_units: int = Field(default=0, description="Held-out units holding detectable PII (the baseline).")
    n_held_out_units_found: int = Field(
        default=0, description="Of those, units some of whose values the samples contain: found without "
        "memorization (chance, common values)."
    )


class PIIReconstruction(_Model):
    """Ranking of the true PII value among candidates by sentence likelihood; counts and rates only."""

    pii_type: str
    n_queries: int = Field(description="(record, value) pairs attacked: each value of the type in each record.")
    n_candidates: int = Field(description="Candidates per query, the true value included.")
    top1_accuracy: float = Field(description="Fraction of queries whose true value ranks first (ties split).")
    mrr: float = Field(description="Mean reciprocal rank of the true value (ties split).")
    mean_rank: float = Field(description="Mean rank of the true value, 1 = best (ties split).")
    chance_top1: float = Field(description="1 / n_candidates: top-1 accuracy of a random ranking.")
    chance_mrr: float = Field(description="H(n) / n: mean reciprocal rank of a random ranking.")
    chance_mean_rank: float = Field(description="(n + 1) / 2: mean rank of a random ranking.")
    tie_rate: float = Field(description="Fraction of queries where another candidate tied with the true value.")


class EmpiricalPrivacy(_Model):
    """An empirical lower bound on a model's epsilon, as written to ``results.json``.

    ``r``, ``v``, ``k_plus`` and ``k_minus`` describe a one-run audit; for the threshold form
    ``r`` is the number of scored examples, ``v`` the correctly classified ones at the chosen
    threshold, and ``k_plus`` / ``k_minus`` are null.
    """

    method: str = Field(description="'one_run' (Steinke et al. 2023) or 'threshold' (Jagielski et al. 2020).")
    eps_lower_bound: float = Field(description="eps such that (eps', delta)-DP is rejected for every eps' < eps.")
    alpha: float = Field(description="Total error probability of the bound, Bonferroni correction included.")
    delta: float = Field(description="The delta the bound is stated at; compare with the accountant at this delta.")
    r: int | None = Field(default=None, description="Guesses made (one run) or examples scored (threshold).")
    v: int | None = Field(default=None, description="Correct guesses among them.")
    m: int | None = Field(default=None, description="Canaries (one run) or members + non-members (threshold).")
    k_plus: int | None = Field(default=None, description="'in' guesses: the top-scored canaries.")
    k_minus: int | None = Field(default=None, description="'out' guesses: the bottom-scored canaries.")
    best_possible: float | None = Field(
        default=None, description="The largest bound this design could certify, with every guess correct."
    )
    accountant_epsilon: float | None = Field(default=None, description="The accountant's eps (null without DP).")
    exceeds_accountant: bool = Field(
        default=False, description="True when eps_lower_bound > accountant_epsilon: the DP guarantee failed."
    )
    note: str = ""


class CanarySpecSummary(_Model):
    name: str
    format: str
    length: int
    space_size: int
    max_exposure_bits: float = Field(description="log2 of the space size.")
    null_samples: int
    exposure_method: str = Field(description="How exposure was computed, e.g. 'interpolation'.")
    exposure_cap_bits: float = Field(description="Largest exposure the method can show, log2(null_samples).")


class Utility(_Model):
    member_loss: float | None = Field(default=None, description="Mean per-token NLL on members (nats).")
    non_member_loss: float | None = Field(default=None, description="Mean per-token NLL on held-out records.")
    non_member_perplexity: float | None = Field(default=None, description="exp(non_member_loss).")


class ModelResult(_Model):
    description: str = ""
    control: bool = Field(
        default=False,
        description="Never trained on the audit's records (a base model, one trained on other data): any leak it "
        "shows is a difference between members and non-members (or inserted and reference canaries) that needs no "
        "memorization, and the report says so (the split check).",
    )
    path: str | None = Field(
        default=None,
        description="Model directory: relative to the run directory when inside it, else as given to the command.",
    )
    files_sha256: dict[str, str] = Field(default_factory=dict)
    privacy: PrivacyRecord
    utility: Utility = Field(default_factory=Utility)
    mia: dict[str, AttackResult] = Field(default_factory=dict, description="Per-sequence attacks.")
    mia_by_unit: dict[str, dict[str, AttackResult]] = Field(
        default_factory=dict,
        description="Other units of evaluation: 'user' (a person's records aggregated) and 'canary' "
        "(inserted versus reference canaries, scored by exposure).",
    )
    mia_joint: PermutationTest | None = Field(
        default=None, description="The per-sequence attacks tested together (absent in results written before it)."
    )
    skipped_attacks: dict[str, str] = Field(default_factory=dict, description="Attack -> why it was not run.")
    skipped_units: dict[str, str] = Field(
        default_factory=dict, description="Unit of evaluation (e.g. 'user') -> why it was not evaluated."
    )
    canaries: list[CanaryResult] = Field(default_factory=list)
    exposure_by_repetition: list[ExposureGroup] = Field(default_factory=list)
    memorization: list[MemorizationResult] = Field(
        default_factory=list, description="Discoverable memorization for each (k, n) setting."
    )
    untargeted_extraction: UntargetedExtraction | None = None
    pii_extraction: PIIExtraction | None = Field(
        default=None, description="PII in the model's samples that is training PII and not produced by the baseline."
    )
    pii_reconstruction: dict[str, PIIReconstruction] = Field(
        default_factory=dict,
        description="'members' / 'non_members' -> ranking of a record's true PII among candidates "
        "(the non-member figure is the baseline).",
    )
    untargeted_test: PermutationTest | None = Field(
        default=None,
        description="Records written out by the free samples, members against held-out records ('written'), by "
        "permutation (people relabelled when the split is per person); absent in results written before it and "
        "where a side has no record that could be written out (untargeted_extraction's *_untestable).",
    )
    pii_reconstruction_test: PermutationTest | None = Field(
        default=None,
        description="Top-1 reconstruction, members' queries against held-out ones ('top1'), by permutation (people "
        "relabelled when the split is per person, else records); absent in results written before it.",
    )
    empirical_privacy: list[EmpiricalPrivacy] = Field(
        default_factory=list, description="Empirical lower bounds on eps from this audit, beside the accountant's."
    )


class RunInfo(_Model):
    leakaudit_version: str
    created: str
    command: str
    config_sha256: str
    seed: int
    git_revision: str | None = None
    device: str
    dtype: str | None = Field(default=None, description="Precision the models were scored in (float32, bfloat16).")
    versions: dict[str, str] = Field(default_factory=dict)
    n_members: int
    n_non_members: int
    n_canaries_inserted: int
    n_reference_canaries: int
    data_sha256: dict[str, str] = Field(default_factory=dict)
    reference_models: dict[str, str] = Field(default_factory=dict, description="Reference name -> directory.")
    reference_models_sha256: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Reference name -> SHA-256 of its weight, config and tokenizer files."
    )
    shadow_models: int = Field(default=0, description="Shadow models used by LiRA and RMIA.")
    shadow_set_key: str | None = Field(
        default=None, description="Key of the shadow models in their store (base model hash, population, recipe)."
    )
    preflight_warnings: list[str] = Field(
        default_factory=list, description="Canaries the training may not see (truncated, missing, leaked)."
    )


class Results(_Model):
    """The summary of one run.  ``models`` maps a model name to its results."""

    schema_version: int = SCHEMA_VERSION
    run: RunInfo
    canary_specs: list[CanarySpecSummary] = Field(default_factory=list)
    models: dict[str, ModelResult]
