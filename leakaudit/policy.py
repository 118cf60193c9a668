"""A release gate: check a run's ``results.json`` against a YAML release policy.

A policy sets limits, each optional; a model passes when it is within every limit that was
measured.  A limit whose metric is absent from the results is reported as "not measured" and
fails the gate only with ``fail_on_missing: true``.  Verdicts name models, attacks and canary
ids, never a secret: ``results.json`` holds none, and nothing here reads the canary files.

The checks (see :class:`Policy` for the exact definitions):

==============================  ==============================================================
``max_exposure_bits``           max over inserted canaries of ``exposure_bits``
``max_tpr_at_1pct_fpr``         max over per-sequence attacks (``mia``) of ``tpr_at_fpr["0.01"]``
``allow_extracted_canaries``    ``false``: no canary may be ``extracted`` (search or beam)
``allow_other_canary_secrets``  ``false``: no search's first guess may be another inserted canary's secret
``max_pii_extraction_rate``     ``pii_extraction.recall`` (or ``pii_extraction.overall.recall``)
``max_epsilon``                 the accountant's ``privacy.epsilon`` (null, no DP: fails)
``min_audit_power``             fewest non-members any per-sequence attack rests on
``require_dp_guarantee_holds``  empirical eps bound <= accountant eps, and no DP bound violated
``require_secret_randomness``   a DP model's batches and noise came from unrecorded seeds
``require_split_check``         no control model (never trained on the records) shows a signal
==============================  ==============================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leakaudit.errors import LeakauditError
from leakaudit.io import read_yaml_mapping
from leakaudit.report.schema import SCHEMA_VERSION, Results

__all__ = ["Check", "Policy", "Verdict", "evaluate_policy", "gate", "load_policy"]

TPR_KEY = "0.01"  # the key of TPR at 1% FPR in AttackResult.tpr_at_fpr (schema.FPR_LEVELS)


class Policy(BaseModel):
    """Release limits.  Every limit is optional: leave it out (or null) to not check it."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", description="Free text shown nowhere but the file.")
    max_exposure_bits: float | None = Field(
        default=None, allow_inf_nan=False, ge=0,
        description="Largest exposure_bits allowed on any inserted canary.",
    )
    max_tpr_at_1pct_fpr: float | None = Field(
        default=None, allow_inf_nan=False, ge=0, le=1,
        description="Largest TPR at 1% FPR allowed for any per-sequence attack.",
    )
    allow_extracted_canaries: bool | None = Field(
        default=None, description="false: fail when any canary was extracted (its secret recovered by search)."
    )
    allow_other_canary_secrets: bool | None = Field(
        default=None,
        description="false: fail when any canary's extraction search returned another inserted canary's secret as "
        "its first guess (extraction_first_guess_inserted): the model gives out memorised secrets of other records.",
    )
    max_pii_extraction_rate: float | None = Field(
        default=None, allow_inf_nan=False,
        ge=0,
        le=1,
        description="Largest fraction of training PII values recovered (pii_extraction.recall).",
    )
    max_epsilon: float | None = Field(
        default=None, allow_inf_nan=False, gt=0,
        description="Largest accountant epsilon allowed; a model trained without DP fails.",
    )
    min_audit_power: int | None = Field(
        default=None,
        ge=1,
        description="Fewest non-members each per-sequence attack must be evaluated on: the smallest resolvable "
        "FPR, 1 / n_non_members, must be <= 1 / min_audit_power (100 resolves FPR to 1%).",
    )
    require_dp_guarantee_holds: bool = Field(
        default=False,
        description="Fail when the empirical eps lower bound exceeds the accountant's eps, or an attack's ROC "
        "violates the DP bound TPR <= e^eps FPR + delta beyond sampling error.",
    )
    require_secret_randomness: bool = Field(
        default=False,
        description="Fail when a DP model's batches and noise were drawn from a recorded seed (privacy.randomness "
        "'seeded'): anyone with the seed can regenerate them, so the guarantee rests on the seed staying secret. "
        "Not measured for a model without DP or without the record.",
    )
    require_split_check: bool = Field(
        default=False,
        description="Fail every model when a control model (never trained on the records, models.*.control) shows a "
        "signal in the report's corrected tests: the members and non-members differ in a way that needs no "
        "memorization, so no model's measurements can be read as leakage or its absence. Not measured without a "
        "control model.",
    )
    fail_on_missing: bool = Field(default=False, description="Fail when a limit's metric was not measured.")

    @field_validator("max_exposure_bits", "max_tpr_at_1pct_fpr", "max_pii_extraction_rate", "max_epsilon",
                     "min_audit_power", mode="before")
    @classmethod
    def _a_number(cls, v: Any) -> Any:
        # YAML's true/yes would otherwise read as 1 (max_tpr_at_1pct_fpr: true passed every model)
        if isinstance(v, bool):
            raise ValueError("must be a number, not true or false")
        return v

    def checks_something(self) -> bool:
        """Does any limit apply?  (``allow_*: false`` is a limit, ``true`` or null is none.)"""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.startswith("allow_"):
                if value is False:
                    return True
            elif name.startswith("require_"):
                if value is True:
                    return True
            elif name not in ("description", "fail_on_missing") and value is not None:
                return True
        return False


Status = Literal["pass", "fail", "not measured"]


@dataclass
class Check:
    """One limit applied to one model."""

    name: str
    status: Status
    message: str


@dataclass
class Verdict:
    """The gate's decision on one model; ``reasons`` holds the failed and unmeasured checks."""

    model: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    control: bool = False
    """A control model (never trained on the records): an instrument of the audit, not a release candidate; only
    the split check is shown for it, and it never fails the gate itself (unless named with ``model``: then it is
    gated like any model)."""


# -- loading ---------------------------------------------------------------------------------------
def _describe(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        parts.append(f"field '{loc}': {msg}")
    return f"{where}: " + "; ".join(parts)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; any problem is a one-line :class:`LeakauditError`."""
    p = Path(path)
    raw = read_yaml_mapping(p, "policy file", empty_ok=True)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as e:
        raise LeakauditError(_describe(e, str(p))) from None
    if not policy.checks_something():
        raise LeakauditError(f"{p}: the policy sets no limit, so every model would pass; set at least one "
                             "(see experiments/policy.yaml)")
    return policy


def load_results_file(run_dir: Path) -> dict[str, Any]:
    """A run's results.json, checked (valid JSON, finite numbers, the schema), as the dict it holds."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise LeakauditError(f"{path}: results file not found (is {run_dir} a finished run directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeakauditError(f"{path}: not valid JSON: {e}") from None
    except OSError as e:
        raise LeakauditError(f"{path}: cannot read the results file: {e}") from None
    if not isinstance(data, dict):
        raise LeakauditError(f"{path}: results must be a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:  # first: a newer file may fail the rest
        raise LeakauditError(f"{path}: field 'schema_version': {version!r} is not a results version this "
                             f"leakaudit reads (1 to {SCHEMA_VERSION}); a newer one needs a newer leakaudit")
    bad = _non_finite(data)
    if bad:  # every limit compares with '>', which is false for NaN: a NaN would pass, and hide the worst value
        raise LeakauditError(f"{path}: field '{bad}' is not a finite number; a run never writes one, so the file "
                             "was edited or broken, and no limit can be checked against it")
    try:
        Results.model_validate(data)
    except ValidationError as e:
        x = e.errors()[0]
        loc = ".".join(str(s) for s in x["loc"])
        raise LeakauditError(f"{path}: field '{loc}': {x['msg']}") from None
    return data


def _non_finite(node: Any, where: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a JSON tree, or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return where or "(top)"
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


# -- the checks ------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return str(float(x))


def _reps(n: int) -> str:
    return f"{n} repetition" if n == 1 else f"{n} repetitions"


def _check_exposure(name: str, m: dict, limit: float, caps: dict[str, float]) -> Check:
    inserted = [c for c in m.get("canaries") or [] if c.get("inserted")]
    if not inserted:
        msg = f"{name}: canary exposure not measured (no inserted canaries)"
        return Check("max_exposure_bits", "not measured", msg)
    # the most exposed canary; among equals the one inserted least often (the most telling leak)
    worst = max(inserted, key=lambda c: (c["exposure_bits"], -c["repetitions"]))
    bits = float(worst["exposure_bits"])
    where = f"canary {worst['id']}, {_reps(worst['repetitions'])}"
    if bits > limit:
        return Check(
            "max_exposure_bits", "fail", f"{name}: canary exposure {bits:.2f} bits > {_fmt(limit)} allowed ({where})"
        )
    # a canary ranked first among the null samples sits at the cap log2(null_samples): its true exposure
    # may be anything above, so a cap at or below the limit cannot show a violation
    saturated = sorted(
        {c.get("spec", "") for c in inserted if c.get("rank") == 1 and caps.get(c.get("spec", ""), limit + 1) <= limit}
    )
    if saturated:
        return Check(
            "max_exposure_bits",
            "not measured",
            f"{name}: canary exposure saturates at {min(caps[s] for s in saturated):.2f} bits (spec "
            f"{', '.join(saturated)}), not above the {_fmt(limit)}-bit limit: add null samples to measure it",
        )
    return Check("max_exposure_bits", "pass", f"{name}: canary exposure {bits:.2f} bits <= {_fmt(limit)} ({where})")


def _check_tpr(name: str, m: dict, limit: float) -> Check:
    tprs = {a: r["tpr_at_fpr"][TPR_KEY] for a, r in (m.get("mia") or {}).items() if TPR_KEY in r.get("tpr_at_fpr", {})}
    if not tprs:
        return Check("max_tpr_at_1pct_fpr", "not measured", f"{name}: TPR at 1% FPR not measured (no attack results)")
    attack = max(tprs, key=tprs.get)
    tpr = float(tprs[attack])
    res = float(m["mia"][attack].get("min_resolvable_fpr", 0.0))
    note = f"; FPR resolution {res:.2%}, so this is the TPR at FPR 0" if res > float(TPR_KEY) else ""
    if tpr > limit:
        return Check(
            "max_tpr_at_1pct_fpr",
            "fail",
            f"{name}: membership inference TPR at 1% FPR {tpr:.1%} > {limit:.1%} allowed (attack {attack}{note})",
        )
    if note:  # the TPR at FPR 0 only bounds the TPR at 1% from below: under the limit, it shows nothing
        return Check(
            "max_tpr_at_1pct_fpr", "not measured",
            f"{name}: TPR at 1% FPR not resolved (attack {attack} rests on too few non-members{note})",
        )
    return Check(
        "max_tpr_at_1pct_fpr", "pass", f"{name}: TPR at 1% FPR {tpr:.1%} <= {limit:.1%} (attack {attack}{note})"
    )


def _canary_ids(hit: list[dict], show: int = 5) -> str:
    """The first ``show`` canaries by id with their repetitions (never a secret), and how many more."""
    ids = ", ".join(
        f"{c['id']} ({_reps(c['repetitions'])})" if c.get("inserted") else f"{c['id']} (reference canary)"
        for c in hit[:show]
    )
    return ids + (f" and {len(hit) - show} more" if len(hit) > show else "")


def _check_extracted(name: str, m: dict) -> Check:
    canaries = m.get("canaries") or []
    searched = [c for c in canaries if c.get("extracted") is not None or c.get("extracted_beam") is not None]
    if not searched:
        return Check("allow_extracted_canaries", "not measured", f"{name}: canary extraction not measured")
    hit = [c for c in searched if c.get("extracted") or c.get("extracted_beam")]
    if hit:
        ids = _canary_ids(hit)
        return Check(
            "allow_extracted_canaries",
            "fail",
            f"{name}: {len(hit)} of {len(searched)} searched canaries extracted, none allowed: {ids}",
        )
    found = [c.get("extraction_guesses_found") for c in searched if c.get("extracted") is not None]
    empty = sum(f == 0 for f in found)  # best-first searches that completed no secret: they measured nothing
    beam = any(c.get("extracted_beam") is not None for c in searched)  # a beam search always completes
    found_inserted = [c.get("extraction_guesses_found") for c in searched
                      if c.get("extracted") is not None and c.get("inserted")]
    if found_inserted and all(f == 0 for f in found_inserted) and not beam:  # the inserted canaries decide
        return Check(
            "allow_extracted_canaries",
            "not measured",
            f"{name}: canary extraction inconclusive: the search found no complete secret within its budget for "
            f"any of the {len(found_inserted)} inserted canaries",
        )
    note = ""
    if found and empty == len(found):
        note = " (beam search; the best-first search found no complete secret within its budget)"
    elif empty:
        note = (f" (the best-first search completed no secret within its budget for {empty} of them"
                + ("; the beam search covers them)" if beam else ")"))
    return Check("allow_extracted_canaries", "pass",
                 f"{name}: none of {len(searched)} searched canaries extracted{note}")


def _check_other_secrets(name: str, m: dict) -> Check:
    rule = "allow_other_canary_secrets"
    canaries = m.get("canaries") or []
    searched = [c for c in canaries if c.get("extraction_first_guess_inserted") is not None]
    empty = [c for c in canaries if c.get("extraction_guesses_found") == 0]
    if not searched:
        why = (f"the extraction search completed no guess within its budget for any of {len(empty)} canaries "
               "(inconclusive)" if empty else "first guesses of the extraction search not recorded")
        return Check(rule, "not measured", f"{name}: {why}")
    hit = [c for c in searched if c["extraction_first_guess_inserted"]]
    if hit:
        ids = _canary_ids(hit)
        return Check(
            rule,
            "fail",
            f"{name}: for {len(hit)} of {len(searched)} searched canaries the first guess was another inserted "
            f"canary's secret, none allowed: {ids}",
        )
    if all(c.get("extraction_guesses_found") == 0 for c in searched):
        return Check(
            rule,
            "not measured",
            f"{name}: the extraction search found no complete secret within its budget for any of {len(searched)} "
            "canaries (inconclusive)",
        )
    unmeasured = f" ({len(empty)} more completed no guess within the budget)" if empty else ""
    return Check(rule, "pass",
                 f"{name}: no first guess of {len(searched)} searches was another canary's secret{unmeasured}")


def _check_pii(name: str, m: dict, limit: float) -> Check:
    # the share of distinct training PII values the model's samples gave away (schema.PIIExtraction)
    recall = ((m.get("pii_extraction") or {}).get("overall") or {}).get("recall")
    if recall is None:
        return Check("max_pii_extraction_rate", "not measured", f"{name}: PII extraction rate not measured")
    if recall > limit:
        return Check(
            "max_pii_extraction_rate",
            "fail",
            f"{name}: PII extraction rate {recall:.1%} > {limit:.1%} allowed",
        )
    return Check("max_pii_extraction_rate", "pass", f"{name}: PII extraction rate {recall:.1%} <= {limit:.1%}")


def _check_epsilon(name: str, m: dict, limit: float) -> Check:
    eps = (m.get("privacy") or {}).get("epsilon")
    if eps is None:
        return Check(
            "max_epsilon", "fail", f"{name}: trained without differential privacy, eps <= {_fmt(limit)} required"
        )
    if eps > limit:
        return Check("max_epsilon", "fail", f"{name}: DP epsilon {eps:.2f} > {_fmt(limit)} allowed")
    if m["privacy"].get("bound_to_weights") is False:
        return Check("max_epsilon", "fail", f"{name}: DP epsilon {eps:.2f} comes from a privacy.json that was not "
                     "saved with the audited weights (an unchecked claim)")
    return Check("max_epsilon", "pass", f"{name}: DP epsilon {eps:.2f} <= {_fmt(limit)}")


def _check_randomness(name: str, m: dict) -> Check:
    p = m.get("privacy") or {}
    if p.get("epsilon") is None:
        return Check("require_secret_randomness", "not measured", f"{name}: trained without DP (no DP randomness)")
    how = p.get("randomness")
    if how is None:
        return Check("require_secret_randomness", "not measured",
                     f"{name}: how the DP batches and noise were drawn is not recorded")
    if how != "secret":
        return Check("require_secret_randomness", "fail",
                     f"{name}: DP batches and noise were drawn from the recorded training seed ({how}): anyone with "
                     "the seed can regenerate them; retrain with secret randomness")
    return Check("require_secret_randomness", "pass", f"{name}: DP batches and noise from unrecorded seeds")


def _check_power(name: str, m: dict, minimum: int) -> Check:
    attacks = {a: int(r["n_non_members"]) for a, r in (m.get("mia") or {}).items()}
    if not attacks:
        return Check("min_audit_power", "not measured", f"{name}: audit power not measured (no attack results)")
    attack = min(attacks, key=attacks.get)
    n = attacks[attack]
    if n < minimum:
        return Check(
            "min_audit_power",
            "fail",
            f"{name}: attack {attack} rests on {n} non-members (FPR resolution {f'{1 / n:.2%}' if n else 'none'}), "
            f"fewer than the "
            f"{minimum} required (resolution {1 / minimum:.2%}): the audit is too small to show low-FPR leakage",
        )
    return Check("min_audit_power", "pass", f"{name}: every attack rests on >= {n} non-members (>= {minimum})")


def _check_dp_holds(name: str, m: dict) -> Check:
    acc = (m.get("privacy") or {}).get("epsilon")
    bounds = m.get("empirical_privacy") or []
    violated = [a for a, r in (m.get("mia") or {}).items() if (r.get("dp_bound") or {}).get("violated")]
    # a check that no attack could have failed at its size is no check (testable absent: older results)
    checked_roc = [a for a, r in (m.get("mia") or {}).items()
                   if r.get("dp_bound") and r["dp_bound"].get("testable") is not False]
    problems = []
    for emp in bounds:
        bound = emp.get("eps_lower_bound")
        ref = emp.get("accountant_epsilon", acc)
        ref = acc if ref is None else ref
        if emp.get("exceeds_accountant") or (bound is not None and ref is not None and bound > ref):
            problems.append(
                f"empirical eps lower bound {bound:.2f} ({emp.get('method', 'audit')}, confidence "
                f"{1 - emp.get('alpha', 0.05):.0%}) > accountant eps {ref:.2f}"
            )
    if violated:
        problems.append(f"ROC of attack {', '.join(violated)} exceeds the DP bound TPR <= e^eps FPR + delta")
    if problems:
        return Check(
            "require_dp_guarantee_holds",
            "fail",
            f"{name}: DP guarantee failed: {'; '.join(problems)}; the DP training or its accounting is broken",
        )
    if acc is None:
        return Check("require_dp_guarantee_holds", "pass", f"{name}: no DP guarantee claimed, none to check")
    # an empirical bound that could not exceed the accountant's eps (its best possible is below it) is no check
    able = [e for e in bounds if e.get("best_possible") is None or e["best_possible"] > acc]
    if not able and not checked_roc:
        what = "no empirical bound" if not bounds else "the empirical bound could not exceed the accountant's eps"
        if any(r.get("dp_bound") for r in (m.get("mia") or {}).values()):
            what += ", and no attack could have exceeded the ROC bound at this size"
        return Check("require_dp_guarantee_holds", "not measured", f"{name}: DP guarantee not audited ({what})")
    return Check("require_dp_guarantee_holds", "pass", f"{name}: DP guarantee eps = {acc:.2f} consistent with audit")


def _split_failures(data: dict[str, Any]) -> dict[str, list[str]] | None:
    """Each control model's findings with a signal (by label), for the controls with a tested comparison of the two
    sides; None: no such control in the results."""
    from leakaudit.report.findings import control_findings, split_check

    results = Results.model_validate(data)
    checked = split_check(results.models, control_findings(results))
    return None if checked is None else {name: [f.label for f in hits] for name, hits in checked.items()}


def _check_split(name: str, split: dict[str, list[str]] | None) -> Check:
    if split is None:
        return Check("require_split_check", "not measured",
                     f"{name}: split check not run (no control model with a tested measurement: audit the base "
                     "model with --control)")
    bad = {c: labels for c, labels in split.items() if labels}
    if bad:
        said = "; ".join(f"{c} in {', '.join(labels)}" for c, labels in bad.items())
        return Check("require_split_check", "fail",
                     f"{name}: split check failed: a control model never trained on the records shows a signal "
                     f"({said}); members and non-members differ without memorization, so the audit cannot tell")
    return Check("require_split_check", "pass", f"{name}: split check passed ({', '.join(split)})")


def _results_dict(results: Results | dict) -> dict[str, Any]:
    if isinstance(results, Results):
        return results.model_dump(mode="json")
    if isinstance(results, BaseModel):
        return results.model_dump(mode="json")
    if not isinstance(results, dict) or not isinstance(results.get("models"), dict):
        raise LeakauditError("results: not a results object (no 'models' mapping)")
    return results


def evaluate_policy(results: Results | dict, policy: Policy, *, model: str | None = None) -> list[Verdict]:
    """Apply ``policy`` to every model of ``results`` (or just ``model``): one :class:`Verdict` each."""
    data = _results_dict(results)
    models: dict[str, dict] = data["models"]
    if model is not None:
        if model not in models:
            raise LeakauditError(f"--model: no model '{model}' in the results (have: {', '.join(models) or 'none'})")
        models = {model: models[model]}
    if not models:
        raise LeakauditError("results: no models to check")
    if model is None and all(m.get("control") for m in models.values()):
        raise LeakauditError("results: every model is a control (never trained on the records): none to gate")
    caps = {s["name"]: float(s["exposure_cap_bits"]) for s in data.get("canary_specs") or []}
    split = _split_failures(data) if policy.require_split_check else None
    verdicts = []
    for name, m in models.items():
        if m.get("control") and model is None:  # not gated; its split check speaks for every model
            shown = [_check_split(name, split)] if policy.require_split_check else []
            verdicts.append(Verdict(model=name, passed=True, checks=shown, control=True))
            continue
        checks: list[Check] = []
        if policy.max_exposure_bits is not None:
            checks.append(_check_exposure(name, m, policy.max_exposure_bits, caps))
        if policy.max_tpr_at_1pct_fpr is not None:
            checks.append(_check_tpr(name, m, policy.max_tpr_at_1pct_fpr))
        if policy.allow_extracted_canaries is False:
            checks.append(_check_extracted(name, m))
        if policy.allow_other_canary_secrets is False:
            checks.append(_check_other_secrets(name, m))
        if policy.max_pii_extraction_rate is not None:
            checks.append(_check_pii(name, m, policy.max_pii_extraction_rate))
        if policy.max_epsilon is not None:
            checks.append(_check_epsilon(name, m, policy.max_epsilon))
        if policy.min_audit_power is not None:
            checks.append(_check_power(name, m, policy.min_audit_power))
        if policy.require_dp_guarantee_holds:
            checks.append(_check_dp_holds(name, m))
        if policy.require_secret_randomness:
            checks.append(_check_randomness(name, m))
        if policy.require_split_check:
            checks.append(_check_split(name, split))
        failed = [c for c in checks if c.status == "fail"]
        missing = [c for c in checks if c.status == "not measured"]
        passed = not failed and not (policy.fail_on_missing and missing)
        reasons = [c.message for c in failed] + [
            c.message + (" (fail_on_missing)" if policy.fail_on_missing else "") for c in missing
        ]
        verdicts.append(Verdict(model=name, passed=passed, reasons=reasons, checks=checks))
    return verdicts


def gate(run_dir: str | Path, policy_file: str | Path, *, model: str | None = None) -> tuple[int, list[str]]:
    """Check ``run_dir/results.json`` against ``policy_file``.

    Returns ``(0, lines)`` when every model passes and ``(1, lines)`` otherwise; a missing or
    invalid results or policy file raises :class:`LeakauditError` (exit code 2 in the CLI).
    """
    policy = load_policy(policy_file)
    data = load_results_file(Path(run_dir))
    verdicts = evaluate_policy(data, policy, model=model)
    lines: list[str] = []
    missing_tag = "[not measured: fails, fail_on_missing]" if policy.fail_on_missing else "[not measured]"
    for v in verdicts:
        if v.control:
            lines.append(f"CONTROL {v.model} (never trained on the records: not gated)")
            lines.extend(f"  - [{c.status}] {c.message}" for c in v.checks)
            continue
        lines.append(f"{'PASS' if v.passed else 'FAIL'} {v.model}")
        # what blocked the release is told apart from what could not be checked
        lines.extend(f"  - [fail] {c.message}" for c in v.checks if c.status == "fail")
        lines.extend(f"  - {missing_tag} {c.message}" for c in v.checks if c.status == "not measured")
    gated = [v for v in verdicts if not v.control]
    ok = all(v.passed for v in gated)
    summary = f"gate: {'passed' if ok else 'failed'} ({sum(v.passed for v in gated)}/{len(gated)} models"
    unmeasured = sum(c.status == "not measured" for v in gated for c in v.checks)
    if ok and unmeasured:  # a bare "passed" would read as every limit met
        summary += (f"; {unmeasured} check{'s' if unmeasured != 1 else ''} of a limit not measured, passed only "
                    "because fail_on_missing is off")
    lines.append(summary + ")")
    return (0 if ok else 1), lines
