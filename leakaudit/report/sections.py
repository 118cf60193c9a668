"""The report's view: every section as plain, already formatted data for the Jinja templates.

:func:`_view` assembles the sections (summary, what was audited, privacy settings, findings,
exposure, membership inference, memorization, extraction, PII, empirical ε, utility, the DP
comparison, limitations and compliance) into one dict that both templates lay out, so the HTML
and the Markdown report always agree.
"""

from __future__ import annotations

import math
from typing import Any

from leakaudit.report.canaries import (
    HIGH_REPETITIONS,
    _beam_counts,
    _exposure,
    _exposure_sentence,
    _extraction_counts,
    _extraction_short,
    _guesses_setting,
    budget_words,
    extraction_inconclusive,
    other_secret_first,
    within_guesses,
)
from leakaudit.report.compliance import compliance
from leakaudit.report.findings import (
    FAILED_DP,
    SIGNAL,
    SIGNIFICANCE,
    SPLIT_FAILED,
    Finding,
    _comparison,
    _findings_table,
    _verdict,
    canary_extraction_counts,
    claim_untestable,
    control_failures,
    model_findings,
    records_testable,
)
from leakaudit.report.formatting import (
    DASH,
    SHORT_HASH,
    _ci,
    _dp_condition,
    _epsilon,
    _f,
    _int,
    _join,
    _lower,
    _notes,
    _ok,
    _pct,
    _short,
)
from leakaudit.report.mia import DP_BOUND, KEY_LEVEL, UNRESOLVED, _dp_cell, _dp_check, _mia, _tpr_key, best_attack
from leakaudit.report.plots import exposure_plot, png_size, roc_plot
from leakaudit.report.schema import AttackResult, ModelResult, Results
from leakaudit.report.stats import wilson

MAX_PREFLIGHT = 5
"""Pre-flight warnings listed under What was audited (the rest are counted)."""


def _summary(results: Results, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    lines = []
    alerts = []
    for name, model in results.models.items():
        parts = [f"ε = {_epsilon(model.privacy.epsilon)}"]
        unbound = model.privacy.bound_to_weights is False and model.privacy.epsilon is not None
        parts[0] += _notes(_dp_condition(model.privacy),
                           "claimed by a privacy.json not saved with these weights" if unbound else "")
        parts.append(_exposure_sentence(model, results))
        parts += _extraction_summary(model)
        parts += _strongest(model, findings.get(name, []))
        auc = _best_auc(model)
        if auc:
            parts.append(auc)
        dp = _dp_check(name, model)
        if dp is not None:
            parts.append(dp["short"])
            if dp["status"] == "violated":
                alerts.append(dp)
        lines.append({"name": name, "description": model.description, "text": "; ".join(parts) + "."})
        if any(e.exceeds_accountant for e in model.empirical_privacy):
            alerts.append(
                {
                    "status": "failed",
                    "headline": f"{FAILED_DP}, {name}:",
                    "text": "an empirical lower bound on ε exceeds the accountant's ε: the DP training or its "
                    "accounting is broken (see Empirical privacy). Do not rely on this model's privacy guarantee.",
                }
            )
    caps = sorted({s.null_samples for s in results.canary_specs})
    if len(caps) == 1:
        cap_text = f"log2({caps[0]:,}) = {math.log2(caps[0]):.2f} bits"
    else:
        cap_text = "log2 of the number of null samples"
    explain = (
        "Exposure is the advantage, in bits, that the model gives a canary's secret over guessing: "
        "the secret is ranked by the model's likelihood among randomly drawn candidate secrets of the same "
        f"format (the null samples). 0 bits is no better than chance; the maximum, {cap_text}, means the "
        "secret was the most likely candidate. AUC is the area under the ROC curve of a membership-inference "
        "attack that tries to tell training records from held-out ones: 0.5 is chance, 1.0 is perfect. "
        "TPR at 1% FPR is the share of training records the attack finds while wrongly flagging 1% of "
        "held-out ones; it measures what matters most, confident leakage of some records."
    )
    if any(_extraction_counts(m) for m in results.models.values()):
        explain += (
            " A canary is extracted when a search guided only by the model, given the canary's prefix, returns "
            "the canary's exact secret as the model's most likely secret of that format."
        )
    if any(within_guesses(m) is not None for m in results.models.values()):
        g = _guesses_setting(results.models.values())
        within = f"Within {g} guesses: the secret is among the search's {g}" if g is not None else (
            "Within its guesses: the secret is among the search's"
        )
        explain += (
            f" {within} most likely secrets, so an attacker with that many tries finds it. A search that completes "
            "no secret within its forward-pass budget is inconclusive, not a negative."
        )
    n = len(results.models)
    intro = (
        f"This report audits {n} model{'s' if n != 1 else ''} ({', '.join(results.models)}) "
        f"from the run created {results.run.created}."
    )
    split = control_failures(results.models, findings)
    for name, hits in split.items():
        alerts.append({
            "status": "failed",
            "headline": f"{SPLIT_FAILED}, {name}:",
            "text": f"{name} was never trained on these records, yet it shows a signal in "
            f"{', '.join(_lower(f.label) for f in hits)}: the two sides of the split differ in a way that needs no "
            "memorization, and the other models' findings of that kind measure it too (see the verdicts).",
        })
    verdicts = [_verdict(name, m, findings[name], split) for name, m in results.models.items()]
    return {"intro": intro, "models": lines, "explain": explain, "alerts": alerts, "verdicts": verdicts}


def _extraction_summary(model: ModelResult) -> list[str]:
    """The summary's extraction clauses: strict, within the search's guesses, another canary's secret first; or,
    when no best-first search completed a secret and no beam search ran, that the search was inconclusive."""
    counts = _extraction_counts(model)
    if extraction_inconclusive(model):  # (then no beam search ran)
        return [f"extraction inconclusive: the best-first search found no complete secret within its "
                f"budget{budget_words(model)}"]
    parts = []
    extraction = _extraction_short(counts)
    if extraction:
        parts.append(extraction)
    within = within_guesses(model)
    if within is not None and counts:
        g = _guesses_setting([model])
        parts.append(f"{within[0]} of {within[1]} inserted canaries within {g if g is not None else 'its'} guesses")
    other = other_secret_first(model)
    if other is not None and other[0]:
        parts.append(
            f"for {other[0]} of {other[1]} searched canaries the first guess was another inserted canary's secret"
        )
    either = canary_extraction_counts(model) if _beam_counts(model) else None
    if either is not None and either[0][0] != sum(k for r, (k, _) in counts.items() if r > 0):
        parts.append(f"{either[0][0]} of {either[0][1]} inserted canaries extracted by either search (with beam)")
    return parts


def _attack_figure(name: str, r: AttackResult) -> str:
    """ "loss, 3.7% (AUC 0.495)": an attack's TPR at 1% FPR (marked where the FPR is not resolved) and AUC."""
    mark = UNRESOLVED if float(KEY_LEVEL) < r.min_resolvable_fpr else ""
    return f"{name}, {_pct(_tpr_key(r))}{mark} (AUC {_f(r.auc, '.3f')})"


def _strongest(model: ModelResult, findings: list[Finding]) -> list[str]:
    """The attack with the highest TPR at 1% FPR (:func:`best_attack`), with its AUC; and, when the membership
    finding quotes another (the strongest of those that beat chance), that one too."""
    best = best_attack(model)
    if best is None:
        return []
    name, r = best
    if (_tpr_key(r) or 0.0) <= 0:
        return ["no attack reaches a nonzero TPR at 1% FPR"]
    parts = [f"strongest attack by TPR at 1% FPR: {_attack_figure(name, r)}"]
    quoted = next((f for f in findings if f.key == "mia"), None)  # another attack only when it beats chance
    if quoted is not None and quoted.attack not in (None, name) and quoted.attack in model.mia:
        parts.append(f"strongest beating chance: {_attack_figure(quoted.attack, model.mia[quoted.attack])}")
    return parts


def _best_auc(model: ModelResult) -> str | None:
    attacks = {k: v for k, v in model.mia.items() if _ok(v.auc)}
    if not attacks:
        return None
    preferred = {k: v for k, v in attacks.items() if "loss" in k.lower() or "zlib" in k.lower()}
    label = "best LOSS/zlib AUC" if preferred else "best attack AUC"
    pool = preferred or attacks
    name = max(pool, key=lambda k: pool[k].auc)
    return f"{label} {pool[name].auc:.3f} ({name})"


def _audited(results: Results) -> dict[str, Any]:
    run = results.run
    rows = [
        ("leakaudit version", run.leakaudit_version, False),
        ("created", run.created, False),
        ("command", run.command, True),
        ("config sha256", _short(run.config_sha256), True),
        ("seed", str(run.seed), False),
        ("git revision", _short(run.git_revision), True),
        ("device", run.device + (f", {run.dtype}" if run.dtype else ""), False),
        ("package versions", ", ".join(f"{k} {v}" for k, v in run.versions.items()) or DASH, False),
        ("members / non-members", f"{run.n_members:,} / {run.n_non_members:,}", False),
        (
            "canaries inserted / reference",
            f"{run.n_canaries_inserted:,} / {run.n_reference_canaries:,}",
            False,
        ),
    ]
    rows += [(f"data: {k}", _short(v), True) for k, v in run.data_sha256.items()]
    if run.reference_models:
        rows += [(f"reference model: {k}", v, True) for k, v in run.reference_models.items()]
    else:
        rows.append(("reference models", "none", False))
    rows.append(("shadow models (LiRA, RMIA)", str(run.shadow_models) if run.shadow_models else "none", False))
    shown = run.preflight_warnings[:MAX_PREFLIGHT]
    rows += [("pre-flight warning", w, False) for w in shown]
    if len(run.preflight_warnings) > len(shown):
        more = len(run.preflight_warnings) - len(shown)
        rows.append(("pre-flight warning", f"… and {more} more (all in results.json)", False))
    run_rows = [{"label": label, "value": value, "code": code} for label, value, code in rows]

    files: list[str] = []
    for model in results.models.values():
        files += [f for f in model.files_sha256 if f not in files]
    model_rows = [
        {
            "label": "description",
            "cells": [m.description or DASH for m in results.models.values()],
            "code": False,
        },
        {"label": "path", "cells": [m.path or DASH for m in results.models.values()], "code": True},
    ]
    for f in files:
        model_rows.append(
            {
                "label": f"sha256: {f}",
                "cells": [_short(m.files_sha256.get(f)) for m in results.models.values()],
                "code": True,
            }
        )
    note = (
        f"Hashes are SHA-256, shortened to their first {SHORT_HASH} hex digits; results.json holds them in full. "
        "Paths of models inside the run directory are relative to it; others are as given to the command "
        "(relative to the directory it ran in, unless absolute)."
    )
    return {"run": run_rows, "models": model_rows, "note": note}


RANDOMNESS = {
    "secret": "secret (unrecorded seeds)",
    "seeded": "from the training seed: the guarantee holds only while the seed stays secret",
}


RECORD_BINDING = {
    True: "saved with these weights (by leakaudit train)",
    False: "not saved with these weights: an unchecked claim",
}


def _privacy(results: Results) -> list[dict[str, Any]]:
    ps = [m.privacy for m in results.models.values()]
    rows = [
        ("epsilon (ε)", [_epsilon(p.epsilon) for p in ps]),
        ("delta (δ)", [_f(p.delta, ".1e") for p in ps]),
        ("noise multiplier", [_f(p.noise_multiplier, ".3g") for p in ps]),
        ("sample rate", [_f(p.sample_rate, ".3g") for p in ps]),
        ("steps", [_int(p.steps) for p in ps]),
        ("clip norm", [_f(p.max_grad_norm, ".3g") for p in ps]),
        ("accountant", [p.accountant or DASH for p in ps]),
        ("epochs", [_f(p.epochs, ".3g") for p in ps]),
        ("training records", [_int(p.dataset_size) for p in ps]),
    ]
    optional = [
        ("clipping", [p.clipping or DASH for p in ps]),
        ("per-sample gradients (Opacus)", [p.grad_sample_mode or DASH for p in ps]),
        ("LoRA rank (adapters only)", [_int(p.lora_rank) for p in ps]),
        ("batches and noise", [RANDOMNESS.get(p.randomness or "", DASH) if p.epsilon is not None else DASH
                               for p in ps]),
        ("privacy.json", [RECORD_BINDING.get(p.bound_to_weights, DASH) if p.epsilon is not None else DASH
                          for p in ps]),
    ]
    rows += [(label, cells) for label, cells in optional if any(c != DASH for c in cells)]
    rows.append((f"DP bound check ({DP_BOUND})", [_dp_cell(name, m) for name, m in results.models.items()]))
    return [{"label": label, "cells": cells} for label, cells in rows]


def _memorization(results: Results, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    settings = sorted({(m.k, m.n) for model in results.models.values() for m in model.memorization})
    header = [
        "model",
        "records tested",
        "exact match [95% CI]",
        "mean token match",
        "approximate match (BLEU > 0.75)",
        "mean BLEU",
        "skipped (too short)",
    ]
    tables = []
    # the marker is the verdict's memorization finding: the settings whose tests pass, after the corrections
    marked = {name: {kn for f in findings[name] if f.key == "memorization" and f.signal for kn in f.settings}
              for name in results.models}
    for k, n in settings:
        rows = []
        for name, model in results.models.items():
            m = next((x for x in model.memorization if (x.k, x.n) == (k, n)), None)
            if m is None:
                rows.append({"name": name, "cells": [DASH] * (len(header) - 1), "signal": False})
                continue
            a, b = m.members, m.non_members
            cells = [
                f"{a.n_records:,} vs {b.n_records:,}",
                f"{_pct(a.exact_match_rate)}{_ci(a.exact_match_ci)} vs "
                f"{_pct(b.exact_match_rate)}{_ci(b.exact_match_ci)}",
                f"{_pct(a.token_match_mean)} vs {_pct(b.token_match_mean)}",
                f"{_pct(a.approx_match_rate)} vs {_pct(b.approx_match_rate)}",
                f"{_f(a.bleu_mean, '.3f')} vs {_f(b.bleu_mean, '.3f')}",
                f"{m.skipped_short:,}",
            ]
            rows.append({"name": name, "cells": cells, "signal": (m.k, m.n) in marked[name]})
        tables.append({"title": f"Prompt k = {k} tokens, continuation n = {n} tokens", "rows": rows})
    return {
        "any": bool(settings),
        "header": header,
        "tables": tables,
        "plain": (
            "how often the model, given the start of one of its training records, writes out the rest word "
            "for word, compared with records it never saw."
        ),
        "meaning": "The model is given the first k tokens of a record and asked to continue it (greedy decoding): "
        "a record is memorized when the next n tokens come out exactly. Each cell is training records vs held-out "
        "records (the baseline: what can be guessed from the language alone). Approximate match counts "
        "continuations with a BLEU-4 score above 0.75 (near-verbatim).",
        "signal_text": f"{SIGNAL}: more exact or approximate matches on training records than on held-out ones "
        f"beyond chance (the two tested together by relabelling people, or records, at random; in results "
        f"written before that test, one-sided Fisher exact tests, Bonferroni over the two; then corrected for "
        f"the model's other findings and Bonferroni over the settings, p < {SIGNIFICANCE:g}).",
    }


def _untargeted(results: Results) -> dict[str, Any]:
    models = {n: m.untargeted_extraction for n, m in results.models.items()}
    present = [u for u in models.values() if u is not None]
    if not present:
        return {"any": False}

    def cell(fn) -> list[str]:
        return [DASH if u is None else fn(u) for u in models.values()]

    rows = [
        ("samples generated", cell(lambda u: f"{u.n_samples:,} × {u.sample_tokens} tokens")),
        ("by strategy", cell(lambda u: ", ".join(f"{k} {v:,}" for k, v in u.strategies.items()) or DASH)),
        ("unique after removing near duplicates", cell(lambda u: f"{u.n_unique:,}")),
        ("reproduce training text (not in the public corpus)", cell(lambda u: f"{u.n_memorized:,}")),
        ("distinct training records reproduced", cell(lambda u: f"{u.n_training_records_reproduced:,}")),
        ("baseline: match held-out records", cell(lambda u: f"{u.n_non_member_matches:,}")),
        ("match the public corpus (not counted)", cell(lambda u: f"{u.n_in_public:,}")),
        ("verified on token n-grams of length", cell(lambda u: str(u.verify_ngram))),
    ]
    by_records = any(u.n_member_records is not None for u in present)  # the records-written test was run
    if by_records:  # the test the verdict uses
        rows += [
            ("audited training records written out",
             cell(lambda u: DASH if u.n_member_records is None else
                  f"{u.n_member_records_written:,} of {u.n_member_records:,}")),
            ("held-out records written out (the test's baseline)",
             cell(lambda u: DASH if u.n_held_out_records is None else
                  f"{u.n_held_out_records_written:,} of {u.n_held_out_records:,}")),
        ]
    if any(u.n_member_records_untestable or u.n_held_out_records_untestable for u in present):
        rows.append(("left out: too short or every n-gram public, training / held out",
                     cell(lambda u: DASH if u.n_member_records_untestable is None else
                          f"{u.n_member_records_untestable:,} / {u.n_held_out_records_untestable:,}")))
    metrics: list[tuple[str, str]] = []
    for u in present:
        for metric, by_k in u.precision_at_k.items():
            for k in sorted(by_k, key=lambda x: int(x) if x.isdigit() else 0):
                if (metric, k) not in metrics:
                    metrics.append((metric, k))
    precision = []
    for metric, k in metrics:
        cells = []
        for u in models.values():
            value = None if u is None else u.precision_at_k.get(metric, {}).get(k)
            base = None if u is None else u.baseline_precision_at_k.get(metric, {}).get(k)
            cells.append(DASH if value is None else f"{_pct(value)} vs {_pct(base)}")
        precision.append({"label": f"{metric}, top {k}", "cells": cells})
    return {
        "any": True,
        "rows": [{"label": label, "cells": cells} for label, cells in rows],
        "precision": precision,
        # biases of the records-written test, whatever the verdict (a control's signal may come from them)
        "warnings": [f"{name}: {w}" for name, u in models.items() if u is not None for w in u.warnings],
        "plain": (
            "whether text the model writes on its own copies passages of its training records, compared with "
            "records it never saw."
        ),
        "meaning": "The model is sampled freely (from an empty prompt, with decaying temperature and from public "
        "prompts), near-duplicate samples are removed and each sample is checked against the training set: a "
        "sample that shares a long token sequence with a training record, and not with the public corpus, "
        "reproduces training text. The baseline is the same check against held-out records, which the model never "
        "saw: matches there come from chance and common templates." + _untargeted_test_text(present)
        + " No sample text is kept.",
        "precision_text": "Precision at k: of the k samples a ranking metric finds most suspicious, the share that "
        "reproduces training text, vs the same share against held-out records (the baseline).",
    }


def _untargeted_test_text(present: list) -> str:
    """What the untargeted verdict's test compares, as the results hold it."""
    if any(records_testable(u) for u in present):
        return (" The verdict's test counts the audited records, training against held-out, that some sample "
                "writes a passage of (each record checked alike; people compared when the records were split per "
                "person): training text outside them has no held-out counterpart and is not tested here (inserted "
                "canaries are tested by the canary findings; other training data by nothing).")
    if any(records_testable(u) is False for u in present):  # counted, but no model kept a record on both sides
        return (" The verdict's test counts the audited records, training against held-out, that some sample "
                "writes a passage of, but no model here kept a record on both sides to test: a side whose every "
                "record is too short or wholly in the public corpus has nothing a sample could be found to copy "
                "(the findings say which side).")
    return (" The verdict compares the samples matching training text with those matching held-out records "
            "(Fisher's test over the unique samples; results written before the records-written test).")


PII_COUNT_ROWS = (
    ("distinct PII values in the model's samples", "n_generated_pii"),
    ("detections, repeats included", "n_mentions"),
    ("distinct values in the baseline model's samples", "n_baseline_pii"),
    ("left after removing the baseline's values", "n_leaked"),
    ("of those, training PII (leaked)", "n_true"),
    ("distinct training PII values", "n_training"),
    ("training PII removed by the baseline filter", "n_filtered_true"),
    ("training PII the baseline model produced", "n_baseline_true"),
)


def _pii_extraction(results: Results) -> dict[str, Any]:
    models = {n: m.pii_extraction for n, m in results.models.items()}
    present = [p for p in models.values() if p is not None]
    if not present:
        return {"any": False}
    rows = [
        {
            "label": "texts generated (model / baseline model)",
            "cells": [
                DASH if p is None else f"{p.n_generated:,} / {p.n_baseline_generated:,}" for p in models.values()
            ],
        },
        {
            "label": "recall (leaked / distinct training PII)",
            "cells": [
                DASH if p is None else f"{_pct(p.overall.recall)} ({p.overall.n_true:,}/{p.overall.n_training:,})"
                for p in models.values()
            ],
        },
        {"label": "precision", "cells": [DASH if p is None else _pct(p.overall.precision) for p in models.values()]},
        {
            "label": "without the baseline filter: recall / precision",
            "cells": [
                DASH if p is None else f"{_pct(p.overall.recall_unfiltered)} / {_pct(p.overall.precision_unfiltered)}"
                for p in models.values()
            ],
        },
    ]
    for label, field in PII_COUNT_ROWS:
        rows.append(
            {
                "label": label,
                "cells": [DASH if p is None else f"{getattr(p.overall, field):,}" for p in models.values()],
            }
        )
    types: list[str] = []
    for p in present:
        for t in [*p.types, *p.by_type]:
            if t not in types:
                types.append(t)
    by_type = []
    for t in types:
        cells = []
        for p in models.values():
            c = None if p is None else p.by_type.get(t)
            if c is None:
                cells += [DASH, DASH]
                continue
            cells.append(f"{_pct(c.recall)} ({c.n_true:,}/{c.n_training:,}); unfiltered {_pct(c.recall_unfiltered)}")
            cells.append(f"{_pct(c.precision)}; unfiltered {_pct(c.precision_unfiltered)}")
        by_type.append({"label": t, "cells": cells})
    notes = [{"name": n, "text": note} for n, p in models.items() if p is not None for note in p.notes]
    return {
        "any": True,
        "rows": rows,
        "by_type": by_type,
        "measures": ["recall", "precision"],
        "type_header": [f"{name} {m}" for name in results.models for m in ("recall", "precision")],
        "notes": notes,
        "plain": (
            "whether personal details (names, emails, phone or account numbers) of the people in the "
            "training data show up in what the model writes, beyond what a model that never saw them writes "
            "too."
        ),
        "meaning": "Personal data (PII) is detected in the model's free samples. A value counts as leaked when it is "
        "a value of the training records and a baseline model, which never saw them, does not produce it too. "
        "Recall is the share of the distinct training values recovered; precision the share of the model's "
        "remaining values that are real training values. The unfiltered figures skip the baseline filter: the "
        "difference is what the filter removes (common values any model would produce). Only counts are shown.",
    }


def _pii_reconstruction(results: Results) -> dict[str, Any]:
    present = {n: m.pii_reconstruction for n, m in results.models.items() if m.pii_reconstruction}
    if not present:
        return {"any": False}
    header = [
        "model",
        "PII type",
        "queries",
        "candidates",
        "top-1 accuracy [95% CI]",
        "chance top-1",
        "mean reciprocal rank (chance)",
        "mean rank (chance)",
        "ties",
    ]
    rows = []
    for name, by_side in present.items():
        sides = ["members", "non_members", *[s for s in by_side if s not in ("members", "non_members")]]
        for side in sides:
            r = by_side.get(side)
            if r is None:
                continue
            label = {"members": "training records", "non_members": "held-out (baseline)"}.get(side, side)
            cells = [
                r.pii_type,
                f"{r.n_queries:,}",
                f"{r.n_candidates:,}",
                f"{_pct(r.top1_accuracy)}{_ci(wilson(r.top1_accuracy, r.n_queries))}",
                _pct(r.chance_top1),
                f"{_f(r.mrr, '.3f')} ({_f(r.chance_mrr, '.3f')})",
                f"{_f(r.mean_rank, '.1f')} (chance {_f(r.chance_mean_rank, '.1f')})",
                _pct(r.tie_rate),
            ]
            rows.append({"name": f"{name}: {label}", "cells": cells})
    return {
        "any": True,
        "header": header,
        "rows": rows,
        "plain": (
            "whether the model fills in a person's hidden detail in a training record better than in a "
            "record it never saw, or than a random guess."
        ),
        "meaning": "A record's personal value is masked and the model ranks the true value among candidates of the "
        "same type by the likelihood of the whole sentence. Picking the true value far more often on training "
        "records than on held-out ones (the baseline) means the model has memorised who is in which record; "
        "chance is one in the number of candidates. Intervals are 95% Wilson intervals.",
    }


def _empirical(results: Results) -> dict[str, Any]:
    rows = []
    alerts = []
    for name, model in results.models.items():
        for e in model.empirical_privacy:
            accountant = e.accountant_epsilon if e.accountant_epsilon is not None else model.privacy.epsilon
            if e.exceeds_accountant:
                verdict = f"⚠ {FAILED_DP}"
                alerts.append(
                    {
                        "headline": f"{FAILED_DP}, {name}",
                        "text": f"the {e.method} audit proves ε ≥ {_f(e.eps_lower_bound, '.2f')} (error probability "
                        f"α = {_f(e.alpha, '.2g')}, δ = {_f(e.delta, '.1e')}), above the accountant's ε = "
                        f"{_f(accountant, '.2f')}: the DP training or its accounting is broken. Do not rely on this "
                        "model's privacy guarantee.",
                    }
                )
            elif accountant is None:
                verdict = "no DP claim to check"
            elif claim_untestable(e, accountant):
                verdict = "cannot test the claim (its best possible is below the accountant's ε)"
            else:
                verdict = "consistent with the accountant"
            guesses = DASH
            if e.r is not None:
                guesses = f"{e.v if e.v is not None else DASH}/{e.r:,}"
                if e.m is not None:
                    guesses += f" (m = {e.m:,})"
            rows.append(
                {
                    "name": name,
                    "cells": [
                        e.method,
                        f"≥ {_f(e.eps_lower_bound, '.2f')}",
                        f"{_f(e.alpha, '.2g')}, δ = {_f(e.delta, '.1e')}",
                        _epsilon(accountant),
                        _f(e.best_possible, ".2f"),
                        guesses,
                        verdict,
                    ],
                    "failed": e.exceeds_accountant,
                    "note": e.note,
                }
            )
    return {
        "any": bool(rows),
        "header": [
            "model",
            "method",
            "ε lower bound",
            "α (error probability)",
            "accountant ε",
            "best possible",
            "correct / guesses",
            "verdict",
        ],
        "rows": rows,
        "alerts": alerts,
        "plain": (
            "the least privacy loss the measurements prove, next to what the DP training promises; a proof "
            "above the promise means the promise is broken."
        ),
        "meaning": "From the audit's guesses about which records or canaries were trained on, a statistical test "
        "proves the model's privacy loss ε is at least the bound shown, wrong with probability at most α. It is a "
        "lower bound: the true ε may be higher. A bound above the ε claimed by the DP accountant means the DP "
        "guarantee failed. “Best possible” is the largest bound this audit design could prove even with every "
        "guess correct: a bound far below the claimed ε can mean the audit was too small, not that the model is "
        "more private.",
    }


def _limitations(results: Results) -> list[str]:
    """What a negative (and a positive) result does and does not show, with this run's numbers."""
    models = list(results.models.values())
    n_non = sorted({r.n_non_members for m in models for r in m.mia.values()}) or [results.run.n_non_members]
    resolution = ", ".join(f"1/{n:,} = {_pct(1 / n)}" for n in n_non if n > 0) or DASH
    items = [
        "The attacks bound leakage from below: each shows what one attacker, with this audit's data, queries and "
        "compute, gets out of the model. A stronger attack, more samples or a different prompt may get more.",
        "A negative result (low exposure, AUC near 0.5, nothing extracted) does not prove the absence of leakage; it "
        "only shows that these attacks did not find it. A finite audit cannot certify that a model does not leak: "
        "only a proven guarantee, such as correctly implemented differential privacy, bounds leakage from above, "
        "and only for what it covers (one record at the stated ε and δ).",
        f"The false-positive-rate resolution is limited by the number of held-out records: with {resolution}, a TPR "
        "at a smaller FPR rests on zero false positives and is coarse, and the TPR at 0.1% FPR may not be "
        "resolvable at all. Intervals are 95%. A model is tested in several ways (several attacks, several kinds "
        "of finding), and each test alone would sometimes fire by luck: a finding counts as a signal only when its "
        "p-value, corrected for the tests within it (the attacks together, and memorization's exact and "
        "approximate matches together, by permutation tests; other tests by Bonferroni) and for the model's "
        "other findings (Holm), is "
        "below 5%, so a model that never saw the data is called leaky at most 5% of the time by these tests, which "
        "assume members and non-members were split at random (see the split check). The empirical ε bound has an "
        "error level of its own (5%), and in results recorded without these p-values (older runs) membership "
        "inference, the canary-exposure AUC and PII extraction keep the earlier, uncorrected rules. "
        "The price is power: a weak signal near that line deserves a repeat with more records.",
        "Canaries measure worst-case memorisation of the inserted random secrets only: how readily the model "
        "memorises a unique random string seen k times. They say nothing directly about natural records, which are "
        "less unique. Exposure is estimated by ranking each secret among a sampled set of null secrets and "
        "interpolating, so it is an estimate and is capped at log2(null samples): a canary at the cap may leak "
        "more than shown. The skew-normal estimate is not capped, but it extrapolates a fitted distribution into "
        "its tail: where the fit is poor (a Kolmogorov-Smirnov p-value below 0.01) it can be far off.",
        "An extracted canary shows that the model gives up that secret; a canary the search did not recover within "
        "its budget may still be memorized.",
        "A canary inserted k times is protected by DP only at group privacy (roughly k·eps), so repeated records can "
        "leak from a DP model; likewise a person with several records.",
    ]
    if any(m.memorization or m.untargeted_extraction for m in models):
        lengths = sorted({m.k for model in models for m in model.memorization})
        prompts = ("one prompt length" if len(lengths) <= 1 else
                   f"{len(lengths)} prompt lengths ({_join([str(k) for k in lengths])} tokens)")
        items.append(
            f"Discoverable memorization tests greedy continuations from {prompts}; other prompts or "
            "decoding may reproduce more. Untargeted extraction finds only what a finite number of samples happens "
            "to produce and what the verifier's n-gram match recognises."
        )
    if any(m.pii_extraction or m.pii_reconstruction for m in models):
        items.append(
            "PII detection misses some values and flags some non-personal strings. The baseline filter removes "
            "values a model that never saw the data also produces, so leaks of common values are not counted: the "
            "unfiltered figures give the upper end. PII reconstruction ranks a fixed candidate set; an attacker "
            "with a better candidate list may do better."
        )
    if any(m.empirical_privacy for m in models):
        items.append(
            "An empirical ε is a lower bound, wrong with probability at most α. It cannot exceed what the audit's "
            "design allows (“best possible”), so a small bound from a small audit says little about the true ε."
        )
    return items


def _utility(results: Results) -> list[dict[str, Any]]:
    us = [m.utility for m in results.models.values()]
    return [
        {"label": "held-out loss (nats/token)", "cells": [_f(u.non_member_loss, ".3f") for u in us]},
        {"label": "held-out perplexity", "cells": [_f(u.non_member_perplexity, ".2f") for u in us]},
        {"label": "training loss (members, nats/token)", "cells": [_f(u.member_loss, ".3f") for u in us]},
    ]


def _record(results: Results) -> dict[str, str]:
    run = results.run
    data = ", ".join(f"{k} {_short(v)}" for k, v in run.data_sha256.items())
    return {
        "configuration": f"sha256 {_short(run.config_sha256)}, seed {run.seed}",
        "data": data,
        "code": f"leakaudit {run.leakaudit_version}"
        + (f", git {_short(run.git_revision)}" if run.git_revision else ""),
    }


def _view(results: Results, *, plots: bool) -> dict[str, Any]:
    findings = {name: model_findings(m, results) for name, m in results.models.items()}
    mia = _mia(results)
    exposure = _exposure(results)
    if plots:
        exposure["plot"] = exposure_plot(results)
        uri = roc_plot(results)
        if uri is not None:
            width, height = png_size(uri)
            mia["roc"] = {"plot": uri, "width": width, "height": height}
    else:
        exposure["plot"] = None
    return {
        "title": "leakaudit report",
        "created": results.run.created,
        "version": results.run.leakaudit_version,
        "schema_version": results.schema_version,
        "models": list(results.models),
        "summary": _summary(results, findings),
        "audited": _audited(results),
        "privacy": _privacy(results),
        "findings": _findings_table(results, findings),
        "exposure": exposure,
        "mia": mia,
        "memorization": _memorization(results, findings),
        "untargeted": _untargeted(results),
        "pii": _pii_extraction(results),
        "reconstruction": _pii_reconstruction(results),
        "empirical": _empirical(results),
        "utility": _utility(results),
        "comparison": _comparison(results, findings),
        "limitations": _limitations(results),
        "compliance": compliance(dict(results.models), findings, _record(results)),
        "high_repetitions": HIGH_REPETITIONS,
        "dp_bound": DP_BOUND,
        "failed_dp": FAILED_DP,
    }
