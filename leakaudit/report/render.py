"""Markdown and HTML reports rendered from :class:`~leakaudit.report.schema.Results` alone.

All numbers are formatted here, into a plain "view" dict that both Jinja templates lay out,
so the two reports always agree.  Output depends only on the results (the date shown is
``results.run.created``), so rendering the same results twice gives identical files.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

import jinja2

from leakaudit.io import write_text_atomic
from leakaudit.report.plots import (
    attack_order,
    exposure_plot,
    groups_from_canaries,
    model_groups,
    png_size,
    roc_plot,
    unit_attacks,
)
from leakaudit.report.schema import FPR_LEVELS, AttackResult, CanaryResult, ModelResult, Results

DASH = "—"
HIGH_REPETITIONS = 16
"""The summary compares canaries inserted at least this many times with reference canaries."""
SHORT_HASH = 12
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


def _summary(results: Results) -> dict[str, Any]:
    lines = []
    alerts = []
    for name, model in results.models.items():
        parts = [f"ε = {_epsilon(model.privacy.epsilon)}"]
        parts.append(_exposure_sentence(model, results))
        extraction = _extraction_short(_extraction_counts(model))
        if extraction:
            parts.append(extraction)
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
    return {"intro": intro, "models": lines, "explain": explain, "alerts": alerts}


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
    return {"run": run_rows, "models": model_rows}


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
        (f"DP bound check ({DP_BOUND})", [_dp_cell(name, m) for name, m in results.models.items()]),
    ]
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


def _extraction(results: Results) -> dict[str, Any]:
    counts = {name: _extraction_counts(m) for name, m in results.models.items()}
    reps = sorted({r for c in counts.values() for r in c})
    rows = []
    for rep in reps:
        cells = []
        for name in results.models:
            kn = counts[name].get(rep)
            cells.append(DASH if kn is None else f"{kn[0]}/{kn[1]}")
        rows.append({"label": "reference (0)" if rep == 0 else str(rep), "cells": cells})
    lines = []
    for name, model in results.models.items():
        if not counts[name]:
            continue
        text = _extraction_sentence(counts[name])
        passes = [c.extraction_expansions for c in model.canaries if c.extraction_expansions is not None]
        if passes and min(passes) == max(passes):
            text += f" It used {max(passes):,} forward passes per canary."
        elif passes:
            text += (
                f" It used {min(passes):,} to {max(passes):,} forward passes per canary "
                f"(median {statistics.median(passes):,.0f})."
            )
        lines.append({"name": name, "text": text})
    return {
        "any": bool(rows),
        "rows": rows,
        "models": lines,
        "not_searched": [name for name in results.models if not counts[name]] if rows else [],
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


def _utility(results: Results) -> list[dict[str, Any]]:
    us = [m.utility for m in results.models.values()]
    return [
        {"label": "held-out loss (nats/token)", "cells": [_f(u.non_member_loss, ".3f") for u in us]},
        {"label": "held-out perplexity", "cells": [_f(u.non_member_perplexity, ".2f") for u in us]},
        {"label": "training loss (members, nats/token)", "cells": [_f(u.member_loss, ".3f") for u in us]},
    ]


def _view(results: Results, *, plots: bool) -> dict[str, Any]:
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
        "summary": _summary(results),
        "audited": _audited(results),
        "privacy": _privacy(results),
        "exposure": exposure,
        "mia": mia,
        "utility": _utility(results),
        "high_repetitions": HIGH_REPETITIONS,
        "dp_bound": DP_BOUND,
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


def write_reports(results: Results, run_dir: Path) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` atomically into ``run_dir``.

    Returns ``{"markdown": path, "html": path}``.
    """
    run_dir = Path(run_dir)
    paths = {"markdown": run_dir / REPORT_MD, "html": run_dir / REPORT_HTML}
    write_text_atomic(paths["markdown"], render_markdown(results))
    write_text_atomic(paths["html"], render_html(results))
    return paths
