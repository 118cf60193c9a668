"""Markdown and HTML reports rendered from :class:`~leakaudit.report.schema.Results` alone.

All numbers are formatted here, into a plain "view" dict that both Jinja templates lay out,
so the two reports always agree.  Output depends only on the results (the date shown is
``results.run.created``), so rendering the same results twice gives identical files.

Each model's measurements are condensed into :class:`Finding` objects (value, interval,
baseline, whether it exceeds the baseline beyond sampling error, a plain sentence); the
summary verdict, the findings table, the DP comparison, the Compliance section
(:mod:`leakaudit.report.compliance`) and the model cards (:mod:`leakaudit.report.modelcard`)
are built from them.  ``python -m leakaudit.report.render --write-schema`` regenerates
``docs/results.schema.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from leakaudit.io import write_text_atomic
from leakaudit.report.compliance import compliance
from leakaudit.report.plots import (
    attack_order,
    exposure_plot,
    groups_from_canaries,
    model_groups,
    png_size,
    roc_plot,
    unit_attacks,
)
from leakaudit.report.schema import (
    FPR_LEVELS,
    AttackResult,
    CanaryResult,
    EmpiricalPrivacy,
    MemorizationResult,
    ModelResult,
    Results,
)

DASH = "—"
HIGH_REPETITIONS = 16
"""The summary compares canaries inserted at least this many times with reference canaries."""
SHORT_HASH = 12
MAX_PREFLIGHT = 5
"""Pre-flight warnings listed under What was audited (the rest are counted)."""
KEY_LEVEL = "0.01"
"""The FPR level used to rank attacks (TPR at 1% FPR): the best is starred and named in the summary."""
BEST = "★"
UNRESOLVED = "†"
DP_BOUND = "TPR ≤ e^ε·FPR + δ"
POOR_FIT = 0.01
"""A skew-normal fit whose Kolmogorov-Smirnov p-value is below this is called poor."""
MEASURES = ("interpolation", "skew-normal", "exact", "extracted")
"""Columns per model of the exposure tables, in order (only those with data are shown)."""
DP_BROKEN = "the DP guarantee is contradicted by the measurements: the DP training or its accounting is broken"
UNIT_TITLES = {"user": "Per user", "canary": "Per canary"}
UNIT_NAMES = {"user": "a person", "canary": "a canary"}
UNIT_TEXT = {
    "user": "A person's records are aggregated into one score per person; a member is a person whose records "
    "were in the training data. This is the membership question that matters for a person.",
    "canary": "Inserted canaries against reference canaries that were never inserted, with the exposure as "
    "the attack score.",
}
UNIT_NOUNS = {"user": ("member", "non-member", "users"), "canary": ("inserted", "reference", "canaries")}
GROUP_PRIVACY = {
    "user": "a person with k records is protected only at group privacy (roughly k·ε)",
    "canary": "a canary inserted k times is protected only at group privacy (roughly k·ε)",
}

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


# --------------------------------------------------------------------------- formatting


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))


def _f(x: float | None, fmt: str) -> str:
    if x is None:
        return DASH
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return format(x, fmt)


def _int(x: int | None) -> str:
    return DASH if x is None else f"{x:,}"


def _epsilon(x: float | None) -> str:
    return "none (non-private)" if x is None else _f(x, ".2f")


def _bits(x: float | None) -> str:
    return _f(x, ".2f")


def _pct(x: float | None) -> str:
    if not _ok(x):
        return _f(x, "")
    if x == 0:
        return "0%"
    return f"{x * 100:.1f}%" if x >= 0.01 else f"{x * 100:.2f}%"


def _level_label(level: str) -> str:
    pct = float(level) * 100
    return f"TPR@{pct:g}%"


def _short(h: str | None) -> str:
    if not h:
        return DASH
    return h[:SHORT_HASH]


def _space(size: int, bits: float) -> str:
    base = f"{size:,}" if size < 10**15 else f"{size:.3g}"
    return f"{base} ({bits:.2f} bits)"


# --------------------------------------------------------------------------- sections


def _summary(results: Results, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    lines = []
    alerts = []
    for name, model in results.models.items():
        parts = [f"ε = {_epsilon(model.privacy.epsilon)}"]
        parts.append(_exposure_sentence(model, results))
        counts = _extraction_counts(model)
        extraction = _extraction_short(counts)
        if extraction:
            parts.append(extraction)
        either = canary_extraction_counts(model) if _beam_counts(model) else None
        if either is not None and either[0][0] != sum(k for r, (k, _) in counts.items() if r > 0):
            parts.append(f"{either[0][0]} of {either[0][1]} inserted canaries extracted by either search (with beam)")
        strongest = _strongest(model)
        if strongest:
            parts.append(strongest)
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
    n = len(results.models)
    intro = (
        f"This report audits {n} model{'s' if n != 1 else ''} ({', '.join(results.models)}) "
        f"from the run created {results.run.created}."
    )
    verdicts = [_verdict(name, m, findings[name]) for name, m in results.models.items()]
    return {"intro": intro, "models": lines, "explain": explain, "alerts": alerts, "verdicts": verdicts}


def _tpr_key(r: AttackResult) -> float | None:
    value = r.tpr_at_fpr.get(KEY_LEVEL)
    return value if _ok(value) else None


def _best_attacks(attacks: dict[str, AttackResult]) -> set[str]:
    """Attacks with the highest TPR at 1% FPR (all of them on a tie); none when that TPR is 0."""
    values = {k: v for k, r in attacks.items() if (v := _tpr_key(r)) is not None}
    if not values or max(values.values()) <= 0:
        return set()
    top = max(values.values())
    return {k for k, v in values.items() if v >= top - 1e-12}


def _strongest(model: ModelResult) -> str | None:
    """The attack with the highest TPR at 1% FPR (ties broken by AUC), with its AUC."""
    attacks = {k: r for k, r in model.mia.items() if _tpr_key(r) is not None}
    if not attacks:
        return None

    def key(k: str) -> tuple[float, float]:
        r = attacks[k]
        return (_tpr_key(r) or 0.0, r.auc if _ok(r.auc) else -1.0)

    name = max(attacks, key=key)  # the first of equals, in the results' order
    r = attacks[name]
    if (_tpr_key(r) or 0.0) <= 0:
        return "no attack reaches a nonzero TPR at 1% FPR"
    mark = UNRESOLVED if float(KEY_LEVEL) < r.min_resolvable_fpr else ""
    return f"strongest attack by TPR at 1% FPR: {name}, {_pct(_tpr_key(r))}{mark} (AUC {_f(r.auc, '.3f')})"


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if _ok(v)]
    return float(statistics.median(vals)) if vals else None


def _exposure_sentence(model: ModelResult, results: Results) -> str:
    canaries: list[CanaryResult] = list(model.canaries)
    groups = model_groups(model)
    if not canaries and not groups:
        return "no canary exposure measured"
    inserted_reps = sorted({g.repetitions for g in groups if g.repetitions > 0})
    threshold = HIGH_REPETITIONS
    if inserted_reps and inserted_reps[-1] < HIGH_REPETITIONS:
        threshold = inserted_reps[-1]
    caps = {s.name: s.exposure_cap_bits for s in results.canary_specs}
    cap: float | None = None
    if canaries:
        high_c = [c for c in canaries if c.repetitions >= threshold and c.repetitions > 0]
        high = [c.exposure_bits for c in high_c]
        hi_med, hi_n = _median(high), len(high)
        spec_caps = [caps[c.spec] for c in high_c if c.spec in caps]
        cap = min(spec_caps) if spec_caps else None
        ref = [c.exposure_bits for c in canaries if c.repetitions == 0]
        ref_med, ref_n = _median(ref), len(ref)
    else:
        sel = [g for g in groups if g.repetitions >= threshold and g.repetitions > 0]
        hi_n = sum(g.n for g in sel)
        # Without per-canary results the pooled median is unknown: use the median of group medians.
        hi_med = _median([g.median_exposure_bits for g in sel])
        refs = [g for g in groups if g.repetitions == 0]
        ref_n = sum(g.n for g in refs)
        ref_med = _median([g.median_exposure_bits for g in refs])
        cap = min(caps.values()) if len(caps) == 1 else None
    times = f"at least {threshold} times" if threshold == HIGH_REPETITIONS else f"{threshold} times"
    if hi_n:
        at_cap = cap is not None and hi_med is not None and hi_med >= cap - 1e-9
        value = f"≥{_bits(hi_med)} bits (at the cap)" if at_cap else f"{_bits(hi_med)} bits"
        text = f"median exposure {value} for canaries inserted {times} (n={hi_n})"
    else:
        text = "no inserted canary scored"
    if ref_n:
        sep = " vs " if hi_n else "; median exposure "
        text += f"{sep}{_bits(ref_med)} bits for reference canaries (n={ref_n})"
    return text


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
        ("device", run.device, False),
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
        "Paths of models are relative to the run directory."
    )
    return {"run": run_rows, "models": model_rows, "note": note}


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
    ]
    rows += [(label, cells) for label, cells in optional if any(c != DASH for c in cells)]
    rows.append((f"DP bound check ({DP_BOUND})", [_dp_cell(name, m) for name, m in results.models.items()]))
    return [{"label": label, "cells": cells} for label, cells in rows]


def _median_text(values: list[float | None]) -> str:
    return _bits(_median([v for v in values if v is not None]))


def _exposure_table(
    results: Results,
    groups_by_model: dict[str, list],
    canaries_by_model: dict[str, list[CanaryResult]],
    cap: float | None,
) -> dict[str, Any]:
    """Rows = repetition counts; per model the columns of :data:`MEASURES` that have data, plus a fit note."""
    reps = sorted({g.repetitions for gs in groups_by_model.values() for g in gs})
    groups = [g for gs in groups_by_model.values() for g in gs]
    canaries = [c for cs in canaries_by_model.values() for c in cs]
    present = {
        "interpolation": True,
        "skew-normal": any(g.median_exposure_bits_skewnorm is not None for g in groups),
        "exact": any(c.exposure_bits_exact is not None for c in canaries),
        "extracted": any(g.extracted is not None for g in groups),
    }
    measures = [m for m in MEASURES if present[m]]
    rows = []
    for rep in reps:
        cells: list[str] = []
        ns: dict[str, int] = {}
        for name in results.models:
            g = next((g for g in groups_by_model.get(name, []) if g.repetitions == rep), None)
            if g is None:
                cells += [DASH] * len(measures)
                continue
            ns[name] = g.n
            for measure in measures:
                if measure == "interpolation":
                    med = g.median_exposure_bits
                    at_cap = cap is not None and _ok(med) and med >= cap - 1e-9
                    cells.append(f"{'≥' if at_cap else ''}{_bits(med)}")
                elif measure == "skew-normal":
                    cells.append(_bits(g.median_exposure_bits_skewnorm))
                elif measure == "exact":
                    exact = [c.exposure_bits_exact for c in canaries_by_model.get(name, []) if c.repetitions == rep]
                    cells.append(_median_text(exact))
                else:
                    cells.append(DASH if g.extracted is None else f"{g.extracted}/{g.n}")
        if len(set(ns.values())) == 1:
            n_text = str(next(iter(ns.values())))
        else:
            n_text = ", ".join(f"{name}: {n}" for name, n in ns.items())
        rows.append({"label": "reference (0)" if rep == 0 else str(rep), "n": n_text, "cells": cells})
    notes = ['"interpolation" ranks the secret among the null samples ("≥": a median at the exposure cap)']
    if present["skew-normal"]:
        notes.append(
            '"skew-normal" fits a skew-normal distribution to the null samples\' likelihoods and is not capped '
            "by their number (at most log2 of the space size)"
        )
    if present["exact"]:
        notes.append('"exact" ranks the secret among every secret of the space (a dash: not enumerated)')
    if present["extracted"]:
        notes.append('"extracted" counts the canaries whose secret the extraction search recovered (see Extraction)')
    return {
        "measures": measures,
        "header": [f"{name} {m}" for name in results.models for m in measures],
        "rows": rows,
        "columns_note": "Columns per model: " + "; ".join(notes) + ".",
        "fit": _fit_sentence(results, canaries_by_model),
    }


def _fit_sentence(results: Results, canaries_by_model: dict[str, list[CanaryResult]]) -> str | None:
    """How many canaries' skew-normal fits are poor (KS p < POOR_FIT), per model; None without KS p-values."""
    counts = {}
    for name in results.models:
        ps = [c.skewnorm_ks_pvalue for c in canaries_by_model.get(name, []) if _ok(c.skewnorm_ks_pvalue)]
        if ps:
            counts[name] = (sum(p < POOR_FIT for p in ps), len(ps))
    if not counts:
        return None
    test = f"a Kolmogorov-Smirnov p-value below {POOR_FIT:g}"
    if not any(k for k, _ in counts.values()):
        sizes = {n for _, n in counts.values()}
        each = f"{sizes.pop()} canaries{' each' if len(counts) > 1 else ''}" if len(sizes) == 1 else "all canaries"
        return f"Skew-normal fit: no canary's fit has {test} on {_join(list(counts), 'or')} ({each})."
    parts = []
    for i, (name, (k, n)) in enumerate(counts.items()):
        noun = " canaries" if i == 0 else ""
        parts.append(f"{k if k else 'none'} of {n}{noun} on {name}")
    return f"Skew-normal fit: {_join(parts)} have {test}, a poor fit: trust the interpolation value for those canaries."


def _exposure(results: Results) -> dict[str, Any]:
    tables = []
    from_canaries = False
    for spec in results.canary_specs:
        canaries_by_model = {name: [c for c in m.canaries if c.spec == spec.name] for name, m in results.models.items()}
        groups_by_model = {name: groups_from_canaries(cs) for name, cs in canaries_by_model.items()}
        if any(groups_by_model.values()):
            from_canaries = True
        elif len(results.canary_specs) == 1:
            groups_by_model = {name: model_groups(m) for name, m in results.models.items()}
        table = _exposure_table(results, groups_by_model, canaries_by_model, spec.exposure_cap_bits)
        table["title"] = spec.name
        table["facts"] = [
            ("format", f"{spec.format}, length {spec.length}"),
            ("space size", _space(spec.space_size, spec.max_exposure_bits)),
            ("null samples", f"{spec.null_samples:,}"),
            ("method", spec.exposure_method),
            ("exposure cap", f"{spec.exposure_cap_bits:.2f} bits"),
        ]
        tables.append(table)
    if not from_canaries and len(results.canary_specs) != 1:
        # No per-spec breakdown is possible: show the pooled groups as recorded.
        groups_by_model = {name: model_groups(m) for name, m in results.models.items()}
        if any(groups_by_model.values()):
            table = _exposure_table(results, groups_by_model, {}, None)
            table["title"] = "all canary specs pooled"
            table["facts"] = []
            tables.append(table)
    tables = [t for t in tables if t["rows"] or t["facts"]]
    any_rows = any(t["rows"] for t in tables)
    return {"tables": tables, "any_rows": any_rows, "extraction": _extraction(results)}


# --------------------------------------------------------------------------- extraction


def _extraction_counts(model: ModelResult) -> dict[int, tuple[int, int]]:
    """Repetition count -> (extracted, searched), pooled over specs; empty when nothing was searched."""
    out: dict[int, tuple[int, int]] = {}
    searched = [c for c in model.canaries if c.extracted is not None]
    if searched:
        for c in searched:
            k, n = out.get(c.repetitions, (0, 0))
            out[c.repetitions] = (k + int(bool(c.extracted)), n + 1)
    elif not model.canaries:
        for g in model_groups(model):
            if g.extracted is not None:
                k, n = out.get(g.repetitions, (0, 0))
                out[g.repetitions] = (k + g.extracted, n + g.n)
    return dict(sorted(out.items()))


def _times(rep: int) -> str:
    return {1: "once", 2: "twice"}.get(rep, f"{rep} times")


def _reps_text(reps: list[int]) -> str:
    """[1] -> "once", [1, 4] -> "1 or 4 times"."""
    return _times(reps[0]) if len(reps) == 1 else f"{_join([str(r) for r in reps], 'or')} times"


def _all(n: int) -> str:
    return "both" if n == 2 else f"all {n}"


def _extraction_short(counts: dict[int, tuple[int, int]]) -> str | None:
    """Summary clause: "extracted 4 of 4 canaries inserted 32 times (10 of 16 inserted canaries in all)"."""
    inserted = sorted(((r, kn) for r, kn in counts.items() if r > 0), reverse=True)
    parts = []
    if inserted:
        rep, (k, n) = inserted[0]
        text = f"extracted {k} of {n} canaries inserted {_times(rep)}"
        total_k, total_n = sum(kn[0] for _, kn in inserted), sum(kn[1] for _, kn in inserted)
        if total_k > k:
            text += f" ({total_k} of {total_n} inserted canaries in all)"
        parts.append(text)
    ref = counts.get(0)
    if ref and (ref[0] or not parts):
        what = f"{ref[0]} of {ref[1]} reference canaries (never inserted)"
        parts.append(what if parts else f"extracted {what}")
    return _join(parts) if parts else None


def _extraction_sentence(counts: dict[int, tuple[int, int]]) -> str:
    """Plain-language result of the extraction search for one model, from its counts."""
    inserted = sorted(((r, k, n) for r, (k, n) in counts.items() if r > 0), reverse=True)
    # The most repeated canaries, all extracted, are named together: "all 12 canaries inserted 8 times or more".
    lead = 0
    while lead < len(inserted) and inserted[lead][1] == inserted[lead][2] > 0:
        lead += 1
    phrases = []
    if lead >= 2:
        total = sum(n for _, _, n in inserted[:lead])
        if lead == len(inserted):
            phrases.append(f"{_all(total)} inserted canaries")
        else:
            phrases.append(f"{_all(total)} canaries inserted {_times(inserted[lead - 1][0])} or more")
        rest = inserted[lead:]
    else:
        rest = inserted
    for r, k, n in rest:
        if not k:
            continue
        noun = "" if phrases else " canaries"
        if k == n == 1:
            phrases.append(f"the only {'one' if phrases else 'canary'} inserted {_times(r)}")
        elif k == n:
            phrases.append(f"{_all(n)}{noun} inserted {_times(r)}")
        else:
            phrases.append(f"{k} of the {n}{noun} inserted {_times(r)}")
    misses = sorted(r for r, k, _ in inserted if not k)
    text = ""
    if phrases:
        text = "The search recovers the exact secret of " + _join(phrases)
        if misses:
            text += f", but of none of those inserted {_reps_text(misses)}"
    elif inserted:
        total = sum(n for _, _, n in inserted)
        text = f"The search recovers the exact secret of none of the {total} inserted canaries"
    ref = counts.get(0)
    if ref:
        k0, n0 = ref
        if k0 == 0:
            clause = "it recovers none of the reference canaries, which were never inserted"
        else:
            clause = (
                f"it {'also ' if phrases else ''}recovers {k0} of the {n0} reference canaries, which were never "
                "inserted: their secrets are likely under the model without training on them, so an extraction alone "
                "does not prove memorization"
            )
        text = f"{text}; {clause}" if text else f"The search finds no inserted canary; {clause}"
    return text + "."


def _beam_counts(model: ModelResult) -> dict[int, tuple[int, int]]:
    """Repetition count -> (ranked first by the beam search, beam-searched); empty when no beam search ran."""
    out: dict[int, tuple[int, int]] = {}
    for c in model.canaries:
        if c.extracted_beam is not None:
            k, n = out.get(c.repetitions, (0, 0))
            out[c.repetitions] = (k + int(c.extracted_beam), n + 1)
    return dict(sorted(out.items()))


def _beam_sentence(counts: dict[int, tuple[int, int]]) -> str:
    inserted = [kn for r, kn in counts.items() if r > 0]
    k, n = sum(x for x, _ in inserted), sum(x for _, x in inserted)
    text = f" A beam search over the same format ranks the secret first for {k} of {n} inserted canaries"
    ref = counts.get(0)
    if ref:
        text += f" and {ref[0]} of {ref[1]} reference canaries"
    return text + "."


def _extraction(results: Results) -> dict[str, Any]:
    counts = {name: _extraction_counts(m) for name, m in results.models.items()}
    beams = {name: _beam_counts(m) for name, m in results.models.items()}
    beam = any(beams.values())
    reps = sorted({r for c in [*counts.values(), *beams.values()] for r in c})
    measures = ["best-first", "beam"] if beam else []
    rows = []
    for rep in reps:
        cells = []
        for name in results.models:
            for source in (counts, beams) if beam else (counts,):
                kn = source[name].get(rep)
                cells.append(DASH if kn is None else f"{kn[0]}/{kn[1]}")
        rows.append({"label": "reference (0)" if rep == 0 else str(rep), "cells": cells})
    lines = []
    for name, model in results.models.items():
        if not counts[name] and not beams[name]:
            continue
        text = _extraction_sentence(counts[name]) if counts[name] else "The best-first search was not run."
        passes = [c.extraction_expansions for c in model.canaries if c.extraction_expansions is not None]
        if passes and min(passes) == max(passes):
            text += f" It used {max(passes):,} forward passes per canary."
        elif passes:
            text += (
                f" It used {min(passes):,} to {max(passes):,} forward passes per canary "
                f"(median {statistics.median(passes):,.0f})."
            )
        if beams[name]:
            text += _beam_sentence(beams[name])
        lines.append({"name": name, "text": text})
    return {
        "any": bool(rows),
        "rows": rows,
        "measures": measures,
        "header": [f"{name} {m}" for name in results.models for m in measures] or list(results.models),
        "models": lines,
        "not_searched": [n for n in results.models if not counts[n] and not beams[n]] if rows else [],
    }


def _join(names: list[str], word: str = "and") -> str:
    if len(names) <= 2:
        return f" {word} ".join(names)
    return ", ".join(names[:-1]) + f" {word} " + names[-1]


def _dp_params(check: Any) -> str:
    return f"ε = {_f(check.epsilon, '.2f')}, δ = {_f(check.delta, '.1e')}"


def _dp_check(name: str, model: ModelResult) -> dict[str, Any] | None:
    """The DP bound verdict of a model's per-sequence attacks; None for a model trained without DP."""
    checks = {a: r.dp_bound for a, r in model.mia.items() if r.dp_bound is not None}
    if not checks:
        if model.privacy.epsilon is None:
            return None
        return {
            "status": "unchecked",
            "headline": "",
            "text": f"{name}: the DP bound {DP_BOUND} was not checked (no attack result carries a DP bound check).",
            "short": "DP bound not checked",
            "cell": "not checked",
        }
    params = _dp_params(next(iter(checks.values())))
    excess = {a: c.max_excess for a, c in checks.items() if _ok(c.max_excess)}
    worst = max(excess, key=lambda a: excess[a]) if excess else None
    violators = [a for a, c in checks.items() if c.violated]
    if violators:
        verb = "exceeds" if len(violators) == 1 else "exceed"
        largest = f" (largest excess {excess[worst]:.3f}, {worst})" if worst is not None else ""
        return {
            "status": "violated",
            "headline": f"WARNING, {name}: {DP_BROKEN}.",
            "text": f"On {name}, {_join(violators)} {verb} the DP bound {DP_BOUND} ({params}) "
            f"beyond sampling error{largest}. Do not rely on this model's privacy guarantee.",
            "short": f"⚠ DP bound VIOLATED by {_join(violators)}: the DP guarantee does not hold (see the warning)",
            "cell": f"⚠ VIOLATED by {len(violators)} of {len(checks)} attacks",
            "attacks": violators,
        }
    if worst is not None and excess[worst] > 0:
        tail = f"the largest empirical excess, {excess[worst]:.3f} ({worst}), is within sampling error"
    else:
        tail = "every empirical ROC stays below the bound"
    n = len(checks)
    return {
        "status": "ok",
        "headline": "",
        "text": f"{name}: no attack exceeds the DP bound {DP_BOUND} ({params}) beyond sampling error "
        f"({n} attack{'s' if n != 1 else ''} checked; {tail}).",
        "short": f"no attack exceeds the DP bound {DP_BOUND} ({n} checked)",
        "cell": f"holds ({n} attack{'s' if n != 1 else ''})",
        "attacks": [],
    }


def _dp_cell(name: str, model: ModelResult) -> str:
    dp = _dp_check(name, model)
    return "n/a (no DP)" if dp is None else dp["cell"]


def _tpr(r: AttackResult, level: str, *, ci: bool = False, best: bool = False) -> tuple[str, bool]:
    """A TPR cell: value, † when the level is below the resolution, [CI] when asked, ★ when best."""
    value = _pct(r.tpr_at_fpr.get(level))
    unresolved = False
    if value != DASH and float(level) < r.min_resolvable_fpr:
        value += UNRESOLVED
        unresolved = True
    interval = r.tpr_ci.get(level)
    if ci and interval is not None:
        value += f" [{_pct(interval[0])}, {_pct(interval[1])}]"
    if best:
        value += f" {BEST}"
    return value, unresolved


def _auc(r: AttackResult, *, ci: bool = True) -> str:
    text = _f(r.auc, ".3f")
    if ci and r.auc_ci is not None:
        text += f" [{_f(r.auc_ci[0], '.2f')}, {_f(r.auc_ci[1], '.2f')}]"
    return text


def _units(results: Results) -> list[str]:
    units: list[str] = [u for u in UNIT_TITLES if any(m.mia_by_unit.get(u) for m in results.models.values())]
    for model in results.models.values():
        units += [u for u, attacks in model.mia_by_unit.items() if attacks and u not in units]
    return units


def _compact_rows(results: Results, unit: str | None, state: dict[str, bool]) -> list[dict[str, Any]]:
    """Rows = attacks, columns = models, cells "AUC / TPR@1%" (★ best TPR@1% of the model)."""
    best = {name: _best_attacks(unit_attacks(m, unit)) for name, m in results.models.items()}
    rows = []
    for attack in attack_order(results, unit):
        cells = []
        for name, model in results.models.items():
            r = unit_attacks(model, unit).get(attack)
            if r is None:
                cells.append("skipped" if attack in model.skipped_attacks else DASH)
                continue
            tpr, unresolved = _tpr(r, KEY_LEVEL, best=attack in best[name])
            state["unresolved"] |= unresolved
            cells.append(f"{_f(r.auc, '.3f')} / {tpr}")
        rows.append({"attack": attack, "cells": cells})
    return rows


def _sizes(results: Results, unit: str | None) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for name, model in results.models.items():
        attacks = unit_attacks(model, unit)
        if attacks:
            out[name] = sorted({(r.n_members, r.n_non_members) for r in attacks.values()})
    return out


def _counts(results: Results, unit: str | None) -> str:
    """ "113 members / 127 non-members for every model", "60 member users / 60 non-member users ..."."""
    if unit is None:
        yes, no = "members", "non-members"
    else:
        member, non_member, noun = UNIT_NOUNS.get(unit, ("member", "non-member", f"{unit}s"))
        yes, no = f"{member} {noun}", f"{non_member} {noun}"
    fmt = {
        name: "; ".join(f"{a:,} {yes} / {b:,} {no}" for a, b in sizes) for name, sizes in _sizes(results, unit).items()
    }
    if len(set(fmt.values())) == 1 and len(fmt) > 1:
        return f"{next(iter(fmt.values()))} for every model"
    return "; ".join(f"{name}: {text}" for name, text in fmt.items())


def _ci_width(results: Results, unit: str | None) -> str | None:
    halves = [
        (r.auc_ci[1] - r.auc_ci[0]) / 2
        for m in results.models.values()
        for r in unit_attacks(m, unit).values()
        if r.auc_ci is not None and _ok(r.auc_ci[0]) and _ok(r.auc_ci[1])
    ]
    if not halves:
        return None
    return f"95% AUC intervals are about ±{statistics.median(halves):.2f} wide"


def _where(results: Results, triples: list[tuple[str | None, str, str]], units: list[str | None]) -> str:
    """Compact "where" of a warning: whole units, whole models, else model / attacks."""
    parts = []
    for unit in units:
        sel = [(m, a) for u, m, a in triples if u == unit]
        if not sel:
            continue
        everything = {(n, a) for n, m in results.models.items() for a in unit_attacks(m, unit)}
        prefix = "" if unit is None else f"per {unit}, "
        if set(sel) == everything and len(everything) > 1:
            parts.append(prefix + "all models and attacks")
            continue
        by_model = []
        for name, model in results.models.items():
            attacks = [a for m, a in sel if m == name]
            if not attacks:
                continue
            if set(attacks) == set(unit_attacks(model, unit)) and len(attacks) > 1:
                by_model.append(f"{name} (all attacks)")
            else:
                by_model.append(f"{name} / {', '.join(attacks)}")
        parts.append(prefix + "; ".join(by_model))
    return "; ".join(parts)


def _mia(results: Results) -> dict[str, Any]:
    levels = [_level_label(level) for level in FPR_LEVELS]
    key_label = _level_label(KEY_LEVEL)
    state = {"unresolved": False}
    models = []
    for name, model in results.models.items():
        best = _best_attacks(model.mia)
        dp = _dp_check(name, model)
        dp_column = any(r.dp_bound is not None for r in model.mia.values())
        rows = []
        for attack in attack_order(results, None, [name]):
            r = model.mia[attack]
            tprs = []
            for level in FPR_LEVELS:
                cell, unresolved = _tpr(r, level, ci=level == KEY_LEVEL, best=level == KEY_LEVEL and attack in best)
                state["unresolved"] |= unresolved
                tprs.append(cell)
            row = {"attack": attack, "cells": [_auc(r), *tprs, _pct(r.balanced_accuracy)]}
            if dp_column:
                b = r.dp_bound
                row["cells"].append(DASH if b is None else ("⚠ VIOLATED" if b.violated else "ok"))
            rows.append(row)
        models.append(
            {
                "name": name,
                "description": model.description,
                "rows": rows,
                "dp_column": dp_column,
                "dp": dp,
                "skipped": [{"attack": a, "reason": why} for a, why in model.skipped_attacks.items()],
            }
        )
    header = ["AUC [95% CI]", *(f"{lab} [95% CI]" if lab == key_label else lab for lab in levels), "balanced acc."]

    units = []
    for unit in _units(results):
        notes = []
        for name, model in results.models.items():
            checks = {a: r.dp_bound for a, r in model.mia_by_unit.get(unit, {}).items() if r.dp_bound is not None}
            violators = [a for a, c in checks.items() if c.violated]
            if violators:
                why = GROUP_PRIVACY.get(unit, "a unit made of several records is protected only at group privacy")
                verb = "exceeds" if len(violators) == 1 else "exceed"
                notes.append(
                    f"{name}: {_join(violators)} {verb} the record-level DP bound {DP_BOUND} "
                    f"({_dp_params(checks[violators[0]])}) beyond sampling error; {why}, so this alone does not "
                    "contradict the DP guarantee, but it does show that such units leak."
                )
            elif checks:
                notes.append(f"{name}: no attack exceeds the record-level DP bound {DP_BOUND} at this unit.")
        facts = [f"Evaluated on {_counts(results, unit)}"]
        width = _ci_width(results, unit)
        if width:
            facts.append(width)
        units.append(
            {
                "unit": unit,
                "title": UNIT_TITLES.get(unit, f"Per {unit}"),
                "text": UNIT_TEXT.get(unit, ""),
                "facts": "; ".join(facts) + ".",
                "rows": _compact_rows(results, unit, state),
                "notes": notes,
            }
        )

    unit_names = [UNIT_NAMES.get(u["unit"], f"a {u['unit']}") for u in units]
    units_intro = (
        f"The tables above score single records. Here the unit is {_join(unit_names, 'or')}; "
        f"cells are AUC / {key_label} (★ the model's best)."
        if units
        else ""
    )
    compare = _compact_rows(results, None, state)
    warnings: dict[str, list[tuple[str | None, str, str]]] = {}
    for name, model in results.models.items():
        for unit in [None, *_units(results)]:
            for attack, r in unit_attacks(model, unit).items():
                for w in r.warnings:
                    warnings.setdefault(w, []).append((unit, name, attack))
    all_units: list[str | None] = [None, *_units(results)]
    notes = [{"text": w, "where": _where(results, where, all_units)} for w, where in warnings.items()]
    counts = _counts(results, None)
    return {
        "any": any(m.mia for m in results.models.values()),
        "header": header,
        "key_label": key_label,
        "models_mia": models,
        "compare": compare,
        "units": units,
        "units_intro": units_intro,
        "unresolved": state["unresolved"],
        "warnings": notes,
        "counts": [counts] if counts else [],
        "roc": None,
    }


# --------------------------------------------------------------------------- findings
#
# One Finding per kind of measurement and model: the headline number with its interval, the
# baseline it is compared with, whether it exceeds that baseline beyond sampling error (the
# "signal") and a plain sentence for the verdict.  The summary, the findings table, the DP
# comparison, the compliance section and the model card are all built from these.

SIGNIFICANCE = 0.05
"""One-sided p-value below which a measurement counts as exceeding its baseline."""
SIGNAL = "▲"
FAILED_DP = "FAILED DP GUARANTEE"

FINDINGS: dict[str, tuple[str, str]] = {
    "mia": (
        "Membership inference",
        "Can an attacker tell whether a given record was in the training data? The share of training records the "
        "strongest attack finds while wrongly flagging 1% of held-out records (TPR at 1% FPR); chance is 1%.",
    ),
    "canary_extraction": (
        "Canary extraction",
        "Can the secret of a planted test record (a canary) be pulled out of the model? Inserted canaries whose "
        "exact secret a search guided by the model recovers, against canaries that were never inserted.",
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
        "Does the model, sampled freely, write out training text? Distinct training records found in its "
        "samples, against samples that match held-out records only (chance and templates).",
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
    """Only for the empirical ε: the bound exceeds the accountant's ε."""

    @property
    def label(self) -> str:
        return FINDINGS[self.key][0]

    @property
    def cell(self) -> str:
        text = self.value
        if self.detail:
            text += f" ({self.detail})"
        text += f"; baseline: {self.baseline}"
        if self.failed:
            text = f"⚠ {FAILED_DP}: {text}"
        elif self.signal:
            text += f" {SIGNAL}"
        return text


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(a: int, n1: int, b: int, n2: int) -> float:
    """One-sided Fisher exact p-value that the rate ``a / n1`` exceeds ``b / n2`` (1.0 when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    a, b = min(max(a, 0), n1), min(max(b, 0), n2)
    total, hits = n1 + n2, a + b
    top = min(hits, n1)
    base = _log_comb(total, n1)
    p = sum(math.exp(_log_comb(hits, x) + _log_comb(total - hits, n1 - x) - base) for x in range(a, top + 1))
    return min(1.0, p)


def binomial_greater(k: int, n: int, p: float) -> float:
    """One-sided binomial p-value P[Binomial(n, p) >= k]."""
    if n <= 0 or k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(_log_comb(n, i) + i * lp + (n - i) * lq) for i in range(min(k, n), n + 1)))


def wilson(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on n trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ci(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return ""
    return f" [{_pct(interval[0])}, {_pct(interval[1])}]"


def _count(rate: float | None, n: int) -> int:
    return round((rate or 0.0) * n) if _ok(rate) else 0


def best_attack(model: ModelResult) -> tuple[str, AttackResult] | None:
    """The per-sequence attack with the highest TPR at 1% FPR (ties: the higher AUC, then the first)."""
    attacks = {k: r for k, r in model.mia.items() if _tpr_key(r) is not None}
    if not attacks:
        return None
    name = max(attacks, key=lambda k: (_tpr_key(attacks[k]) or 0.0, attacks[k].auc if _ok(attacks[k].auc) else -1))
    return name, attacks[name]


def _mia_finding(model: ModelResult) -> Finding | None:
    best = best_attack(model)
    if best is None:
        return None
    name, r = best
    tpr, _ = _tpr(r, KEY_LEVEL, ci=True)
    with_ci = [x for x in model.mia.values() if x.auc_ci is not None and _ok(x.auc_ci[0])]
    signal = any(x.auc_ci[0] > 0.5 for x in with_ci) if with_ci else None
    auc = _auc(r)
    if signal:
        sentence = (
            f"an attacker can tell its training records from others: the strongest attack ({name}) finds "
            f"{_pct(_tpr_key(r))} of them while wrongly flagging 1% of held-out records (chance: 1%)"
        )
    elif signal is False:
        sentence = "membership inference does no better than chance (every attack's AUC interval includes 0.5)"
    else:
        sentence = f"the strongest membership attack ({name}) finds {_pct(_tpr_key(r))} of training records at 1% FPR"
    return Finding("mia", tpr, "1% (chance)", signal, sentence, detail=f"{name}, AUC {auc}")


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


def _canary_extraction_finding(model: ModelResult) -> Finding | None:
    counts = canary_extraction_counts(model)
    if counts is None:
        return None
    (k, n), (k0, n0) = counts
    signal = k > 0 and (k0 == 0 or fisher_greater(k, n, k0, n0) < SIGNIFICANCE)
    baseline = f"{k0}/{n0} never-inserted canaries" if n0 else "no reference canaries"
    if signal:
        sentence = f"the secrets of {k} of {n} planted canaries can be extracted from it"
    else:
        sentence = (
            f"none of {n} planted canaries' secrets could be extracted"
            if not k
            else (f"{k} of {n} planted canaries' secrets were extracted, no more often than never-inserted ones")
        )
    return Finding("canary_extraction", f"{k}/{n} inserted canaries", baseline, signal, sentence)


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


def _canary_exposure_finding(model: ModelResult, results: Results) -> Finding | None:
    top = max_exposure(model, results)
    if top is None:
        return None
    refs = [c.exposure_bits for c in model.canaries if c.repetitions == 0 and _ok(c.exposure_bits)]
    if not refs:
        refs = [g.max_exposure_bits for g in model_groups(model) if g.repetitions == 0]
    baseline = f"max {_bits(max(refs))} bits never inserted" if refs else "no reference canaries"
    unit = model.mia_by_unit.get("canary", {}).get("exposure")
    signal = None
    detail = ""
    if unit is not None and unit.auc_ci is not None and _ok(unit.auc_ci[0]):
        signal = unit.auc_ci[0] > 0.5
        detail = f"inserted vs never-inserted AUC {_auc(unit)}"
    value = "max " + _exposure_value(top)
    if signal:
        sentence = f"it makes planted secrets stand out: up to {_exposure_value(top)} of exposure"
    elif signal is False:
        sentence = f"planted secrets do not stand out from never-inserted ones (max exposure {_exposure_value(top)})"
    else:
        sentence = f"the largest exposure of a planted secret is {_exposure_value(top)} ({baseline})"
    return Finding("canary_exposure", value, baseline, signal, sentence, detail=detail)


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


def _memorization_finding(model: ModelResult) -> Finding | None:
    if not model.memorization:
        return None
    m = model.memorization[0]
    mem, non = m.members, m.non_members
    exact_p, approx_p = memorization_p_values(m)
    signal = None if not mem.n_records or not non.n_records else min(exact_p, approx_p) < SIGNIFICANCE
    value = f"{_pct(mem.exact_match_rate)}{_ci(mem.exact_match_ci)} exact"
    baseline = f"{_pct(non.exact_match_rate)} of held-out records"
    if _ok(mem.approx_match_rate):
        value += f", {_pct(mem.approx_match_rate)} approximate"
        baseline += f" ({_pct(non.approx_match_rate)} approximate)"
    if exact_p < SIGNIFICANCE:
        sentence = (
            f"it completes {_pct(mem.exact_match_rate)} of training records word for word ({m.n} tokens from a "
            f"{m.k}-token prompt) against {_pct(non.exact_match_rate)} of held-out ones"
        )
    elif approx_p < SIGNIFICANCE:
        sentence = (
            f"it completes {_pct(mem.approx_match_rate)} of training records nearly word for word (BLEU above 0.75) "
            f"against {_pct(non.approx_match_rate)} of held-out ones"
        )
    else:
        sentence = "it does not complete training records word for word more often than held-out ones"
    return Finding("memorization", value, baseline, signal, sentence, detail=f"k={m.k}, n={m.n}")


def _plural(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def _untargeted_finding(model: ModelResult) -> Finding | None:
    u = model.untargeted_extraction
    if u is None:
        return None
    signal = u.n_training_records_reproduced > 0 and u.n_memorized > u.n_non_member_matches
    value = _plural(u.n_training_records_reproduced, "training record")
    detail = f"{u.n_memorized:,} of {_plural(u.n_unique, 'unique sample')}"
    baseline = f"{_plural(u.n_non_member_matches, 'sample')} {'matches' if u.n_non_member_matches == 1 else 'match'} "
    baseline += "held-out records only"
    if signal:
        records = _plural(u.n_training_records_reproduced, "distinct training record")
        sentence = f"sampled freely, it writes out text of {records} ({detail})"
    else:
        sentence = f"free sampling ({_plural(u.n_samples, 'sample')}) did not reproduce training text beyond chance"
    return Finding("untargeted", value, baseline, signal, sentence, detail=detail)


def _pii_extraction_finding(model: ModelResult) -> Finding | None:
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
    signal = o.n_true > 0
    if signal:
        sentence = (
            f"its samples contain {o.n_true:,} distinct personal-data values of the training records "
            f"({_pct(o.recall)} of {o.n_training:,})"
        )
    else:
        sentence = "its samples contain no personal data of the training records beyond what a baseline model produces"
    return Finding("pii_extraction", value, baseline, signal, sentence, detail=detail)


def _pii_reconstruction_finding(model: ModelResult) -> Finding | None:
    mem = model.pii_reconstruction.get("members")
    if mem is None:
        return None
    non = model.pii_reconstruction.get("non_members")
    k = _count(mem.top1_accuracy, mem.n_queries)
    if non is not None:
        p = fisher_greater(k, mem.n_queries, _count(non.top1_accuracy, non.n_queries), non.n_queries)
        baseline = f"held-out {_pct(non.top1_accuracy)}, chance {_pct(mem.chance_top1)}"
    else:
        p = binomial_greater(k, mem.n_queries, mem.chance_top1)
        baseline = f"chance {_pct(mem.chance_top1)}"
    signal = p < SIGNIFICANCE if mem.n_queries else None
    value = f"top-1 {_pct(mem.top1_accuracy)}{_ci(wilson(mem.top1_accuracy, mem.n_queries))}"
    detail = f"{mem.pii_type}, {mem.n_candidates:,} candidates"
    if signal:
        sentence = (
            f"with a training record's {mem.pii_type} masked, it picks the true value among {mem.n_candidates:,} "
            f"candidates {_pct(mem.top1_accuracy)} of the time ({baseline})"
        )
    else:
        sentence = f"it does not pick a training record's masked {mem.pii_type} more often than for held-out records"
    return Finding("pii_reconstruction", value, baseline, signal, sentence, detail=detail)


def empirical_best(model: ModelResult) -> EmpiricalPrivacy | None:
    """The bound that matters most: a failed one first, else the largest lower bound."""
    if not model.empirical_privacy:
        return None
    return max(model.empirical_privacy, key=lambda e: (e.exceeds_accountant, e.eps_lower_bound))


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
        if accountant is not None:
            sentence += f", within the ε = {_f(accountant, '.2f')} its DP training claims"
        return Finding("empirical", value, baseline, True if accountant is None else False, sentence, detail=detail)
    sentence = "the empirical privacy audit proves no privacy loss"
    return Finding("empirical", value, baseline, False, sentence, detail=detail)


def model_findings(model: ModelResult, results: Results) -> list[Finding]:
    """The model's findings in :data:`FINDINGS` order (those not measured are left out)."""
    found = [
        _mia_finding(model),
        _canary_extraction_finding(model),
        _canary_exposure_finding(model, results),
        _memorization_finding(model),
        _untargeted_finding(model),
        _pii_extraction_finding(model),
        _pii_reconstruction_finding(model),
        _empirical_finding(model),
    ]
    return [f for f in found if f is not None]


def _lower(label: str) -> str:
    """ "Membership inference" -> "membership inference"; "PII extraction" stays."""
    return label if label[1:2].isupper() else label[:1].lower() + label[1:]


def _sentence(clause: str) -> str:
    return clause[:1].upper() + clause[1:] + "."


def _verdict(name: str, model: ModelResult, findings: list[Finding]) -> dict[str, Any]:
    """A short plain-language paragraph: what leaked, what did not, and a failed DP guarantee first."""
    failed = [f for f in findings if f.failed]
    leaks = [f for f in findings if f.signal and not f.failed]
    quiet = [_lower(f.label) for f in findings if f.signal is False]
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
    unclear = [f.sentence for f in findings if f.signal is None]
    if unclear:
        parts.append("Shown without a test against its baseline (no interval recorded): " + "; ".join(unclear) + ".")
    if not findings:
        parts.append("No leakage measurement was recorded for this model.")
    eps = model.privacy.epsilon
    privacy = f"trained with DP at ε = {_f(eps, '.2f')}" if eps is not None else "trained without DP"
    status = "failed" if failed else ("leaks" if leaks else ("clean" if quiet else "unknown"))
    return {"name": name, "privacy": privacy, "text": " ".join(parts), "status": status}


def headline(results: Results, name: str) -> dict[str, Any]:
    """The model's headline numbers, unformatted (the DP comparison and the model card use them)."""
    model = results.models[name]
    best = best_attack(model)
    extraction = canary_extraction_counts(model)
    top = max_exposure(model, results)
    mem = model.memorization[0] if model.memorization else None
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
        "memorization_k": mem.k if mem else None,
        "memorization_n": mem.n if mem else None,
        "memorization_exact_match_rate": mem.members.exact_match_rate if mem else None,
        "memorization_exact_match_rate_non_members": mem.non_members.exact_match_rate if mem else None,
        "pii_recall": pii.recall if pii else None,
        "pii_precision": pii.precision if pii else None,
        "empirical_epsilon_lower_bound": emp.eps_lower_bound if emp else None,
        "empirical_method": emp.method if emp else None,
        "empirical_alpha": emp.alpha if emp else None,
        "dp_guarantee_failed": any(e.exceeds_accountant for e in model.empirical_privacy),
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
    return {"rows": rows, "signal": SIGNAL}


def _comparison(results: Results) -> dict[str, Any]:
    """DP vs non-DP: one row per model with the headline numbers."""
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
    for name, model in results.models.items():
        h = headline(results, name)
        eps = _epsilon(h["epsilon"])
        if h["epsilon"] is not None and h["delta"] is not None:
            eps += f" (δ = {_f(h['delta'], '.1e')})"
        best = DASH
        if h["best_attack"] is not None:
            best = f"{_pct(h['best_tpr_at_1pct_fpr'])} ({h['best_attack']})"
        top = max_exposure(model, results)
        extracted = DASH if h["canaries_extracted"] is None else f"{h['canaries_extracted']}/{h['canaries_searched']}"
        mem = DASH
        if h["memorization_k"] is not None:
            mem = (
                f"{_pct(h['memorization_exact_match_rate'])} vs {_pct(h['memorization_exact_match_rate_non_members'])}"
                " held-out"
            )
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


def _memorization(results: Results) -> dict[str, Any]:
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
    for k, n in settings:
        rows = []
        for name, model in results.models.items():
            m = next((x for x in model.memorization if (x.k, x.n) == (k, n)), None)
            if m is None:
                rows.append({"name": name, "cells": [DASH] * (len(header) - 1), "signal": False})
                continue
            a, b = m.members, m.non_members
            p = min(memorization_p_values(m))
            cells = [
                f"{a.n_records:,} vs {b.n_records:,}",
                f"{_pct(a.exact_match_rate)}{_ci(a.exact_match_ci)} vs "
                f"{_pct(b.exact_match_rate)}{_ci(b.exact_match_ci)}",
                f"{_pct(a.token_match_mean)} vs {_pct(b.token_match_mean)}",
                f"{_pct(a.approx_match_rate)} vs {_pct(b.approx_match_rate)}",
                f"{_f(a.bleu_mean, '.3f')} vs {_f(b.bleu_mean, '.3f')}",
                f"{m.skipped_short:,}",
            ]
            rows.append({"name": name, "cells": cells, "signal": p < SIGNIFICANCE})
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
        f"(one-sided Fisher exact test, p < {SIGNIFICANCE:g}).",
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
        ("baseline: match held-out records only", cell(lambda u: f"{u.n_non_member_matches:,}")),
        ("match the public corpus (not counted)", cell(lambda u: f"{u.n_in_public:,}")),
        ("verified on token n-grams of length", cell(lambda u: str(u.verify_ngram))),
    ]
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
        "plain": (
            "whether text the model writes on its own copies passages of its training records, compared with "
            "records it never saw."
        ),
        "meaning": "The model is sampled freely (from an empty prompt, with decaying temperature and from public "
        "prompts), near-duplicate samples are removed and each sample is checked against the training set: a "
        "sample that shares a long token sequence with a training record, and not with the public corpus, "
        "reproduces training text. The baseline is the same check against held-out records, which the model never "
        "saw: matches there come from chance and common templates. No sample text is kept.",
        "precision_text": "Precision at k: of the k samples a ranking metric finds most suspicious, the share that "
        "reproduces training text, vs the same share against held-out records (the baseline).",
    }


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
        "resolvable at all. Intervals are 95%; several attacks are run and the strongest is reported, so a single "
        "weak signal can be luck and deserves a repeat with more records.",
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
        items.append(
            "Discoverable memorization tests greedy continuations from one prompt length; other prompts or "
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
        "memorization": _memorization(results),
        "untargeted": _untargeted(results),
        "pii": _pii_extraction(results),
        "reconstruction": _pii_reconstruction(results),
        "empirical": _empirical(results),
        "utility": _utility(results),
        "comparison": _comparison(results),
        "limitations": _limitations(results),
        "compliance": compliance(dict(results.models), findings, _record(results)),
        "high_repetitions": HIGH_REPETITIONS,
        "dp_bound": DP_BOUND,
        "failed_dp": FAILED_DP,
    }


# --------------------------------------------------------------------------- templates


def _md_escape(value: Any) -> str:
    """Make a value safe inside a Markdown table cell."""
    text = " ".join(str(value).split())
    for ch in ("\\", "|", "<", ">", "*", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def _md_code(value: Any) -> str:
    """A value as inline code inside a Markdown table cell."""
    text = " ".join(str(value).split())
    if text == DASH:
        return text
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("leakaudit.report", "templates"),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = _md_escape
    env.filters["mdcode"] = _md_code
    return env


def render_markdown(results: Results) -> str:
    """The report as Markdown (no images: the plots are in the HTML report)."""
    text = _env(html=False).get_template("report.md.j2").render(v=_view(results, plots=False))
    return re.sub(r"\n{3,}", "\n\n", text)


def render_html(results: Results) -> str:
    """The report as one self-contained HTML file (inline CSS, plots as inline PNG data URIs)."""
    return _env(html=True).get_template("report.html.j2").render(v=_view(results, plots=True))


def model_card_path(run_dir: Path, model_name: str) -> Path:
    """Where :func:`write_reports` puts a model's card: ``model_card-<model>.md`` (odd characters as ``_``)."""
    return Path(run_dir) / f"model_card-{re.sub(r'[^A-Za-z0-9._-]', '_', model_name)}.md"


def write_reports(results: Results, run_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and a ``model_card-<model>.md`` per model atomically into ``run_dir``.

    Returns ``{"markdown": path, "html": path, "model_card:<model>": path, ...}``.
    """
    from leakaudit.report.modelcard import model_card

    run_dir = Path(run_dir)
    paths = {"markdown": run_dir / REPORT_MD, "html": run_dir / REPORT_HTML}
    write_text_atomic(paths["markdown"], render_markdown(results))
    write_text_atomic(paths["html"], render_html(results))
    for name in results.models:
        path = model_card_path(run_dir, name)
        write_text_atomic(path, model_card(results, name))
        paths[f"model_card:{name}"] = path
    return paths


# --------------------------------------------------------------------------- JSON Schema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "results.schema.json"
"""``docs/results.schema.json`` in a source checkout."""


def results_schema_text() -> str:
    """The JSON Schema of :class:`Results` as written to ``docs/results.schema.json``."""
    return json.dumps(Results.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the JSON Schema of ``results.json`` (regenerate after changing ``schema.py``)."""
    write_text_atomic(Path(path), results_schema_text())
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leakaudit.report.render")
    parser.add_argument(
        "--write-schema",
        nargs="?",
        const=str(SCHEMA_PATH),
        metavar="PATH",
        help=f"write the JSON Schema of results.json (default: {SCHEMA_PATH})",
    )
    args = parser.parse_args(argv)
    if args.write_schema is None:
        parser.print_help()
        return 2
    print(write_schema(Path(args.write_schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
