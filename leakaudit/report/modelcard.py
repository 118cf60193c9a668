"""A Hugging Face model-card snippet with a model's privacy-audit results.

The snippet is a YAML front-matter block (metadata a model hub can index) followed by a short
Markdown section, to paste into the model's ``README.md``.  Like the reports it is rendered from
``results.json`` alone and holds numbers, ids and hashes only: no canary secret, no PII, no text.
"""

from __future__ import annotations

from typing import Any

import yaml

from leakaudit.report.findings import (
    FAILED_DP,
    Finding,
    _verdict,
    control_failures,
    control_findings,
    headline,
    model_findings,
    split_check,
)
from leakaudit.report.formatting import SHORT_HASH, _dp_settings, _md_escape
from leakaudit.report.mia import _dp_check
from leakaudit.report.schema import Results

CARD_KEY = "privacy_audit"
"""The front-matter key holding the audit's metadata."""


def card_metadata(results: Results, model_name: str, controls: dict[str, list[Finding]] | None = None,
                  findings: list[Finding] | None = None) -> dict[str, Any]:
    """The front matter as a dict: hub tags plus :data:`CARD_KEY` with the privacy record and headline results.

    ``controls``: the control models' findings (:func:`control_findings`), when already built; ``findings``: the
    model's own.
    """
    model = results.models[model_name]
    p = model.privacy
    h = headline(results, model_name, findings)
    checked = split_check(results.models, control_findings(results) if controls is None else controls)
    tags = ["leakaudit", "privacy-audit"]
    if p.epsilon is not None:
        tags.append("differential-privacy")
    audit = {
        "tool": "leakaudit",
        "tool_version": results.run.leakaudit_version,
        "results_schema_version": results.schema_version,
        "run_created": results.run.created,
        "config_sha256": results.run.config_sha256,
        "git_revision": results.run.git_revision,
        "model": model_name,
        "control": model.control,
        "split_check": "not run" if checked is None else ("failed" if any(checked.values()) else "passed"),
        "files_sha256": dict(model.files_sha256),
        "differential_privacy": {
            "epsilon": p.epsilon,
            "delta": p.delta,
            "accountant": p.accountant,
            "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate,
            "steps": p.steps,
            "max_grad_norm": p.max_grad_norm,
            "clipping": p.clipping,
            "grad_sample_mode": p.grad_sample_mode,
            "lora_rank": p.lora_rank,
            "randomness": p.randomness,
        },
        "results": {
            "members": results.run.n_members,
            "non_members": results.run.n_non_members,
            "best_attack": h["best_attack"],
            "best_tpr_at_1pct_fpr": h["best_tpr_at_1pct_fpr"],
            "best_attack_auc": h["best_attack_auc"],
            "max_canary_exposure_bits": h["max_canary_exposure_bits"],
            "max_canary_exposure_at_cap": h["max_canary_exposure_at_cap"],
            "canaries_extracted": h["canaries_extracted"],
            "canaries_searched": h["canaries_searched"],
            "canaries_extracted_within_guesses": h["canaries_extracted_within_guesses"],
            "extraction_guesses": h["extraction_guesses"],
            "canary_searches_other_secret_first": h["canary_searches_other_secret_first"],
            "canary_extraction_inconclusive": h["canary_extraction_inconclusive"],
            # at the setting the memorization finding describes
            "memorization_k": h["memorization_k"],
            "memorization_n": h["memorization_n"],
            "memorization_exact_match_rate": h["memorization_exact_match_rate"],
            "memorization_exact_match_rate_non_members": h["memorization_exact_match_rate_non_members"],
            "pii_recall": h["pii_recall"],
            "pii_precision": h["pii_precision"],
            "empirical_epsilon_lower_bound": h["empirical_epsilon_lower_bound"],
            "empirical_epsilon_method": h["empirical_method"],
            "empirical_epsilon_alpha": h["empirical_alpha"],
            "dp_guarantee_failed": h["dp_guarantee_failed"],
            # the ROC check of the DP bound: violated, ok, untestable (no attack could fail it at this size),
            # unchecked; null without a DP claim
            "dp_bound_check": (_dp_check(model_name, model) or {}).get("status"),
        },
    }
    return {"tags": tags, CARD_KEY: audit}


def model_card(results: Results, model_name: str) -> str:
    """A model-card snippet for ``model_name``: YAML front matter plus a Markdown "Privacy audit" section."""
    if model_name not in results.models:
        raise KeyError(f"no model {model_name!r} in the results (models: {', '.join(results.models)})")
    model = results.models[model_name]
    controls = control_findings(results)
    findings = model_findings(model, results)
    front = yaml.safe_dump(card_metadata(results, model_name, controls, findings), sort_keys=False,
                           allow_unicode=True, width=1000)
    split = {n: hits for n, hits in control_failures(results.models, controls).items() if n != model_name}
    verdict = _verdict(model_name, model, findings, split)
    if model.privacy.epsilon is None:
        dp = "Trained without differential privacy."
    else:
        dp = _md_escape(f"Trained with differential privacy (DP-SGD): {_dp_settings(model.privacy)}.")
        if model.privacy.bound_to_weights is False:
            dp += " (Declared by a privacy.json that was not saved with these weights: an unchecked claim.)"
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        "## Privacy audit",
        "",
        dp,
        "",
        _md_escape(verdict["text"]),
        "",
    ]
    if findings:
        lines += ["| measurement | result | baseline |", "|---|---|---|"]
        for f in findings:
            value = f"⚠ {FAILED_DP}: {f.measured}" if f.failed else f.measured
            lines.append(f"| {_md_escape(f.label)} | {_md_escape(value)} | {_md_escape(f.baseline)} |")
        lines.append("")
    run = results.run
    lines += [
        f"Audited with leakaudit {run.leakaudit_version} (run created {run.created}, configuration sha256 "
        f"`{run.config_sha256[:SHORT_HASH]}`, {run.n_members:,} training and {run.n_non_members:,} held-out records). "
        "The attacks bound leakage from below: a result at its baseline does not prove that the model does not "
        "leak. The full report (report.html in the run directory) gives every measurement with its interval and "
        "its limitations. This is evidence for a privacy review, not legal advice.",
        "",
    ]
    return "\n".join(lines)
