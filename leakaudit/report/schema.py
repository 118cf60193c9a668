"""The typed, versioned results of a run (``results.json``).

Reports are rendered from these models alone, so a report can be rebuilt offline from a
run directory.  Nothing in here may hold a secret, canary text or PII value: canaries are
referred to by id and hash only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
FPR_LEVELS = ("0.001", "0.01", "0.1")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrivacyRecord(_Model):
    """How a model was trained, privacy-wise.  ``epsilon`` is null for non-private training."""

    epsilon: float | None = Field(default=None, description="Accountant's epsilon; null without DP.")
    delta: float | None = Field(default=None, description="Target delta of the DP guarantee.")
    noise_multiplier: float | None = Field(default=None, description="Gaussian noise std / clip norm.")
    sample_rate: float | None = Field(default=None, description="Poisson sampling rate q = batch / N.")
    steps: int | None = Field(default=None, description="Optimizer steps taken.")
    max_grad_norm: float | None = Field(default=None, description="Per-sample clip norm.")
    accountant: str | None = Field(default=None, description="Privacy accountant (prv, rdp, ...).")
    epochs: float | None = Field(default=None, description="Passes over the training set.")
    dataset_size: int | None = Field(default=None, description="Records in the training set.")


class RocCurve(_Model):
    """A step-function ROC, thinned to at most a few hundred points for plotting."""

    fpr: list[float]
    tpr: list[float]


class DPBoundCheck(_Model):
    """Whether the attack's ROC respects TPR <= e^eps FPR + delta (it must, under (eps, delta)-DP)."""

    epsilon: float
    delta: float
    violated: bool = Field(
        description="True when, at some threshold, the Clopper-Pearson lower bound on TPR exceeds "
        "e^eps times the upper bound on FPR plus delta (95% two-sided intervals)."
    )
    max_excess: float = Field(description="Largest empirical TPR - (e^eps FPR + delta) over thresholds.")


class AttackResult(_Model):
    """Metrics of one membership-inference attack on one model."""

    auc: float = Field(description="Area under the ROC (Mann-Whitney, ties count 1/2).")
    auc_ci: tuple[float, float] | None = Field(default=None, description="95% bootstrap interval of the AUC.")
    tpr_at_fpr: dict[str, float] = Field(description="TPR at FPR <= alpha from the step-function ROC.")
    tpr_ci: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="95% Clopper-Pearson interval of each TPR at its threshold."
    )
    balanced_accuracy: float | None = Field(default=None, description="max over thresholds of (TPR + 1 - FPR) / 2.")
    n_members: int
    n_non_members: int
    min_resolvable_fpr: float = Field(description="1 / n_non_members: smaller FPRs rest on zero samples.")
    dp_bound: DPBoundCheck | None = None
    warnings: list[str] = Field(default_factory=list)
    roc: RocCurve | None = None


class CanaryResult(_Model):
    """Exposure of one canary (no secret: id and hash only)."""

    id: str
    spec: str
    repetitions: int
    inserted: bool
    exposure_bits: float = Field(description="log2(N) - log2(rank) among N null secrets (interpolation).")
    rank: int = Field(description="1 + number of null secrets at least as likely as this one.")
    exposure_bits_skewnorm: float | None = Field(
        default=None,
        description="-log2 CDF of the secret's NLL under a skew-normal fitted to the null NLLs, clipped to "
        "[0, log2 |R|]: not capped by the number of null samples.",
    )
    skewnorm_ks_pvalue: float | None = Field(
        default=None, description="Kolmogorov-Smirnov p-value of that fit (small: the fit is poor)."
    )
    exposure_bits_exact: float | None = Field(
        default=None, description="log2|R| - log2(rank) over the whole randomness space, when it was enumerated."
    )
    extracted: bool | None = Field(
        default=None,
        description="True when a best-first search over the secret's format returned this secret as the model's "
        "most likely one within the search budget (None: not searched).",
    )
    extraction_expansions: int | None = Field(default=None, description="Forward passes the search used.")
    sha256: str


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
    path: str | None = Field(default=None, description="Model directory, relative to the run directory.")
    files_sha256: dict[str, str] = Field(default_factory=dict)
    privacy: PrivacyRecord
    utility: Utility = Field(default_factory=Utility)
    mia: dict[str, AttackResult] = Field(default_factory=dict, description="Per-sequence attacks.")
    mia_by_unit: dict[str, dict[str, AttackResult]] = Field(
        default_factory=dict,
        description="Other units of evaluation: 'user' (a person's records aggregated) and 'canary' "
        "(inserted versus reference canaries, scored by exposure).",
    )
    skipped_attacks: dict[str, str] = Field(default_factory=dict, description="Attack -> why it was not run.")
    canaries: list[CanaryResult] = Field(default_factory=list)
    exposure_by_repetition: list[ExposureGroup] = Field(default_factory=list)


class RunInfo(_Model):
    leakaudit_version: str
    created: str
    command: str
    config_sha256: str
    seed: int
    git_revision: str | None = None
    device: str
    versions: dict[str, str] = Field(default_factory=dict)
    n_members: int
    n_non_members: int
    n_canaries_inserted: int
    n_reference_canaries: int
    data_sha256: dict[str, str] = Field(default_factory=dict)
    reference_models: dict[str, str] = Field(default_factory=dict, description="Reference name -> directory.")
    shadow_models: int = Field(default=0, description="Shadow models used by LiRA and RMIA.")
    preflight_warnings: list[str] = Field(
        default_factory=list, description="Canaries the training may not see (truncated, missing, leaked)."
    )


class Results(_Model):
    """The summary of one run.  ``models`` maps a model name to its results."""

    schema_version: int = SCHEMA_VERSION
    run: RunInfo
    canary_specs: list[CanarySpecSummary] = Field(default_factory=list)
    models: dict[str, ModelResult]
