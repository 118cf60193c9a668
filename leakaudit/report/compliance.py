"""The report's Compliance section: which findings answer which reviewer's question.

The frameworks are described by what their reviewers look for, and each model's evidence is
assembled from the report's findings (see :func:`leakaudit.report.findings.model_findings`).  The
section states facts measured by this audit; it draws no legal conclusion and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leakaudit.report.findings import FAILED_DP, FINDINGS, Finding, checks_split, control_failures, split_qualified
from leakaudit.report.formatting import _dp_settings, _f, _lower
from leakaudit.report.mia import DP_BOUND

NOT_LEGAL_ADVICE = (
    "Not legal advice: this section makes no legal determination. It maps this audit's measurements to "
    "the questions that reviewers of these frameworks commonly ask, as evidence for the people who make that "
    "assessment. Whether a model meets a legal standard depends on context this audit does not see: the data and "
    "its purpose, who can query the model and how, and what other information is reasonably available to them. "
    "Ask qualified legal and privacy counsel."
)


@dataclass(frozen=True)
class Framework:
    """A reviewer's framework: what it asks, and which findings are evidence for it."""

    id: str
    title: str
    asks: str
    keys: tuple[str, ...]
    """Finding keys relevant to it, in the order they are listed."""
    how: str
    """How the listed evidence relates to what is asked."""
    record: bool = False
    """Whether the audit record (hashes, versions, DP settings) is evidence too."""


FRAMEWORKS: tuple[Framework, ...] = (
    Framework(
        id="gdpr-dpia",
        title="GDPR Art. 35: data-protection impact assessment (DPIA)",
        asks="A DPIA must contain a systematic description of the processing, an assessment of the risks to the "
        "rights and freedoms of the people whose data is processed, and the measures that address those risks, "
        "including safeguards (Art. 35(7)). Training a language model on personal data is new technology that "
        "reviewers commonly treat as likely high-risk processing.",
        keys=(
            "mia",
            "memorization",
            "untargeted",
            "pii_extraction",
            "pii_reconstruction",
            "canary_extraction",
            "other_secrets",
            "empirical",
        ),
        how="Risk evidence: how much of the training data an attacker can recover or confirm from the model, each "
        "against a baseline. Safeguard evidence: whether the model was trained with differential privacy, at which "
        "ε and δ, and whether the measurements are consistent with that guarantee. The audit record (What was "
        "audited) is part of the systematic description.",
        record=True,
    ),
    Framework(
        id="edpb-28-2024",
        title="EDPB Opinion 28/2024: can the model be considered anonymous?",
        asks="For a model trained on personal data to be considered anonymous, both the likelihood of direct "
        "(including probabilistic) extraction of personal data of the people whose data was used to develop it, and "
        "the likelihood of obtaining such data, intentionally or not, from queries, should be insignificant, "
        "considering all the means reasonably likely to be used. The Opinion names resistance to attacks such as "
        "membership and attribute inference, regurgitation of training data, exfiltration, model inversion and "
        "reconstruction as evidence a supervisory authority may consider.",
        keys=(
            "mia",
            "pii_reconstruction",
            "memorization",
            "untargeted",
            "pii_extraction",
            "canary_extraction",
            "other_secrets",
            "canary_exposure",
        ),
        how="Membership inference is that attack as the Opinion names it; PII reconstruction is an attribute-inference "
        "attack; "
        "discoverable memorization and untargeted extraction measure regurgitation; PII extraction measures personal "
        "data obtained from queries; canaries measure the worst case for a unique secret. A measurement above its "
        "baseline is evidence against an insignificant likelihood; a measurement at its baseline shows only that "
        "these attacks found nothing, not by itself that the likelihood is insignificant (see Limitations).",
    ),
    Framework(
        id="hipaa-expert-determination",
        title="HIPAA de-identification: expert determination (45 CFR 164.514(b)(1))",
        asks="Information is de-identified when an expert, applying generally accepted statistical and scientific "
        "methods, determines that the risk is very small that it could be used, alone or with other reasonably "
        "available information, by an anticipated recipient to identify an individual, and documents the methods "
        "and results. The Safe Harbor alternative (164.514(b)(2)) instead requires removing listed identifiers such "
        "as names, contact details and account numbers.",
        keys=("pii_extraction", "pii_reconstruction", "mia", "memorization", "untargeted"),
        how="These are quantitative re-identification measurements an expert can cite and weigh: identifiers "
        "produced by the model (PII extraction, also by type), identifiers inferred for a known record (PII "
        "reconstruction), and whether a person's presence in the data can be inferred (membership inference). "
        "They are not themselves a determination: the expert sets the anticipated recipient and what counts as "
        "very small.",
    ),
    Framework(
        id="eu-ai-act-art-10",
        title="EU AI Act Art. 10: data and data governance (high-risk systems)",
        asks="Training, validation and testing data of high-risk AI systems must be subject to data-governance and "
        "management practices, covering among others the data's origin and, for personal data, the original "
        "purpose of its collection and the data-preparation operations (Art. 10(2)). Where special categories of "
        "personal data are processed, state-of-the-art security and privacy-preserving measures are expected "
        "(Art. 10(5)).",
        keys=("empirical", "mia", "pii_extraction"),
        how="The audit record identifies exactly which data, configuration, code and models were audited (hashes, "
        "versions, seed, git revision: What was audited); the privacy settings document a privacy-preserving "
        "measure (DP-SGD) and the findings test whether it holds, where the audit is large enough for a "
        "violation to show (the DP bound check says when it is not).",
        record=True,
    ),
)


def _model_evidence(
    findings: list[Finding], keys: tuple[str, ...]
) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(failed DP guarantees, findings above their baseline, at it, not tested, inconclusive), as "label (value)"
    text."""
    failed, above, at, untested, inconclusive = [], [], [], [], []
    for key in keys:
        f = next((x for x in findings if x.key == key), None)
        if f is None:
            continue
        if f.within_claim and f.best_possible is not None:  # an audit too small to test the DP claim
            untested.append(f"{_lower(f.label)} ({f.value}; this audit's design can prove at most ε = "
                            f"{_f(f.best_possible, '.2f')}, below the {f.baseline}, so it cannot test that claim)")
        elif f.within_claim:  # a proven loss within the DP claim: not "at its baseline"
            untested.append(f"{_lower(f.label)} ({f.value}, within the {f.baseline})")
        elif f.inconclusive:
            inconclusive.append(f"{_lower(f.label)} ({f.detail})" if f.detail else _lower(f.label))
        elif f.failed and f.key == "empirical":
            failed.append(f"{f.label} {f.value}, above the accountant's ε")
        elif f.failed:  # an attack's ROC above the DP bound
            failed.append(f"{f.label} ({f.value}): ROC outside {DP_BOUND}")
        elif f.signal:
            above.append(f"{_lower(f.label)} ({f.value})")
        elif f.signal is False:
            at.append(_lower(f.label))
        else:
            untested.append(f"{_lower(f.label)} ({f.value})")
    return failed, above, at, untested, inconclusive


def compliance(
    models: dict[str, Any],
    findings: dict[str, list[Finding]],
    record: dict[str, str],
) -> dict[str, Any]:
    """The Compliance section's view: a disclaimer and, per framework, what it asks and each model's evidence.

    ``models`` maps a model name to its :class:`~leakaudit.report.schema.ModelResult`, ``findings`` to its
    findings, ``record`` holds pre-formatted audit-record facts ("config", "data", "revision").
    """
    out = []
    split = control_failures(models, findings)
    for fw in FRAMEWORKS:
        rows = []
        for name, model in models.items():
            failed, above, at, untested, inconclusive = _model_evidence(findings.get(name, []), fw.keys)
            lines = []
            if fw.record:
                if model.privacy.epsilon is None:
                    lines.append("Safeguard: trained without differential privacy.")
                else:
                    lines.append(f"Safeguard: DP-SGD at {_dp_settings(model.privacy)}.")
            if failed:
                lines.append(f"⚠ {FAILED_DP}: " + "; ".join(failed) + ".")
            if above:
                lines.append("Above its baseline: " + "; ".join(above) + ".")
            if at:
                lines.append("At its baseline (no leak found by these attacks): " + ", ".join(at) + ".")
            if untested:
                lines.append("Measured without a test against its baseline: " + "; ".join(untested) + ".")
            measured = {f.key for f in findings.get(name, [])}
            missing = [_lower(FINDINGS[k][0]) for k in fw.keys if k not in measured]
            if missing and (failed or above or at or untested or inconclusive):
                lines.append("Not measured in this audit: " + ", ".join(missing) + ".")
            if inconclusive:
                lines.append(
                    "Inconclusive (the attack found nothing either way, which is not evidence of no leak): "
                    + "; ".join(inconclusive) + "."
                )
            shown = [f for f in findings.get(name, []) if f.key in fw.keys and f.signal and not f.failed]
            qualified = None if model.control else split_qualified(shown, split)
            if qualified:
                lines.append(qualified)
            if model.control:  # its evidence checks the split, not a leak
                lines.insert(0, "Control: never trained on these records; a signal here is the split's, not a leak.")
                hits = [f for f in split.get(name, []) if f.key in fw.keys]
                checked = any(f.key in fw.keys and f.signal is False and checks_split(f)
                              for f in findings.get(name, []))
                status = "split check failed" if hits else ("split check passed" if checked else "split not checked")
                if failed:
                    status = "DP guarantee failed; " + status
            elif failed:
                status = "DP guarantee failed"
            elif above:
                status = "leakage measured"
            elif at:
                status = "no leakage measured" if not missing else "no leakage measured in what was run"
            elif untested:
                status = "not tested against a baseline"
            elif inconclusive:
                status = "inconclusive"
            else:
                status = "not measured"
                lines.append("No relevant measurement was recorded.")
            rows.append({"name": name, "status": status, "lines": lines, "failed": bool(failed)})
        facts = [f"{k}: {v}" for k, v in record.items() if v] if fw.record else []
        out.append({"id": fw.id, "title": fw.title, "asks": fw.asks, "how": fw.how, "models": rows, "facts": facts})
    return {"disclaimer": NOT_LEGAL_ADVICE, "frameworks": out}
