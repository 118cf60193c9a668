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
from leakaudit.report.plots import exposure_plot, groups_from_canaries, model_groups, roc_plot
from leakaudit.report.schema import FPR_LEVELS, CanaryResult, ModelResult, Results

DASH = "—"
HIGH_REPETITIONS = 16
"""The summary compares canaries inserted at least this many times with reference canaries."""
SHORT_HASH = 12

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
    for name, model in results.models.items():
        parts = [f"ε = {_epsilon(model.privacy.epsilon)}"]
        parts.append(_exposure_sentence(model, results))
        auc = _best_auc(model)
        if auc:
            parts.append(auc)
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
        "attack that tries to tell training records from held-out ones: 0.5 is chance, 1.0 is perfect."
    )
    n = len(results.models)
    intro = (
        f"This report audits {n} model{'s' if n != 1 else ''} ({', '.join(results.models)}) "
        f"from the run created {results.run.created}."
    )
    return {"intro": intro, "models": lines, "explain": explain}


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
    ]
    return [{"label": label, "cells": cells} for label, cells in rows]


def _exposure_rows(results: Results, groups_by_model: dict[str, list], cap: float | None) -> list[dict]:
    reps = sorted({g.repetitions for gs in groups_by_model.values() for g in gs})
    rows = []
    for rep in reps:
        cells = []
        for name in results.models:
            g = next((g for g in groups_by_model.get(name, []) if g.repetitions == rep), None)
            if g is None:
                cells.append(DASH)
                continue
            at_cap = cap is not None and _ok(g.median_exposure_bits) and g.median_exposure_bits >= cap - 1e-9
            cells.append(f"{'≥' if at_cap else ''}{_bits(g.median_exposure_bits)} (n={g.n})")
        rows.append({"label": "reference (0)" if rep == 0 else str(rep), "cells": cells})
    return rows


def _exposure(results: Results) -> dict[str, Any]:
    tables = []
    from_canaries = False
    for spec in results.canary_specs:
        groups_by_model = {
            name: groups_from_canaries(c for c in m.canaries if c.spec == spec.name)
            for name, m in results.models.items()
        }
        if any(groups_by_model.values()):
            from_canaries = True
        elif len(results.canary_specs) == 1:
            groups_by_model = {name: model_groups(m) for name, m in results.models.items()}
        tables.append(
            {
                "title": spec.name,
                "facts": [
                    ("format", f"{spec.format}, length {spec.length}"),
                    ("space size", _space(spec.space_size, spec.max_exposure_bits)),
                    ("null samples", f"{spec.null_samples:,}"),
                    ("method", spec.exposure_method),
                    ("exposure cap", f"{spec.exposure_cap_bits:.2f} bits"),
                ],
                "rows": _exposure_rows(results, groups_by_model, spec.exposure_cap_bits),
            }
        )
    if not from_canaries and len(results.canary_specs) != 1:
        # No per-spec breakdown is possible: show the pooled groups as recorded.
        groups_by_model = {name: model_groups(m) for name, m in results.models.items()}
        if any(groups_by_model.values()):
            tables.append(
                {
                    "title": "all canary specs pooled",
                    "facts": [],
                    "rows": _exposure_rows(results, groups_by_model, None),
                }
            )
    tables = [t for t in tables if t["rows"] or t["facts"]]
    any_rows = any(t["rows"] for t in tables)
    return {"tables": tables, "any_rows": any_rows}


def _mia(results: Results) -> dict[str, Any]:
    attacks: list[str] = []
    for model in results.models.values():
        attacks += [a for a in model.mia if a not in attacks]
    levels = [_level_label(level) for level in FPR_LEVELS]
    rows = []
    unresolved = False
    warnings: dict[str, list[str]] = {}
    for attack in attacks:
        cells = []
        for name, model in results.models.items():
            r = model.mia.get(attack)
            if r is None:
                cells.append([DASH] * (1 + len(FPR_LEVELS)))
                continue
            row = [_f(r.auc, ".3f")]
            for level in FPR_LEVELS:
                value = _pct(r.tpr_at_fpr.get(level))
                if float(level) < r.min_resolvable_fpr and value != DASH:
                    value += "†"
                    unresolved = True
                row.append(value)
            cells.append(row)
            for w in r.warnings:
                warnings.setdefault(w, []).append(f"{name} / {attack}")
        rows.append({"attack": attack, "cells": cells})
    sizes = {
        name: sorted({(r.n_members, r.n_non_members) for r in m.mia.values()})
        for name, m in results.models.items()
        if m.mia
    }
    fmt_sizes = {
        name: "; ".join(f"{a:,} members / {b:,} non-members" for a, b in v) for name, v in sizes.items()
    }
    if len(set(fmt_sizes.values())) == 1 and len(fmt_sizes) > 1:
        counts = [f"{next(iter(fmt_sizes.values()))} for every model"]
    else:
        counts = [f"{name}: {text}" for name, text in fmt_sizes.items()]
    n_pairs = sum(len(m.mia) for m in results.models.values())
    notes = [
        {"text": w, "where": "all models and attacks" if len(where) == n_pairs > 1 else ", ".join(where)}
        for w, where in warnings.items()
    ]
    return {
        "attacks": attacks,
        "levels": levels,
        "rows": rows,
        "unresolved": unresolved,
        "warnings": notes,
        "counts": counts,
        "rocs": [],
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
        mia["rocs"] = [
            {"attack": a, "plot": uri} for a in mia["attacks"] if (uri := roc_plot(results, a)) is not None
        ]
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
