"""The membership-inference section: attack tables per model and unit, and the DP bound check.

Also the helpers that pick the attacks of a unit of evaluation, order them across models and
find a model's strongest attack (by TPR at 1% FPR), which the findings and the figures share.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from leakaudit.report.formatting import DASH, _f, _join, _ok, _pct
from leakaudit.report.schema import DP_UNCHECKED, FPR_LEVELS, AttackResult, ModelResult, Results

KEY_LEVEL = "0.01"
"""The FPR level used to rank attacks (TPR at 1% FPR): the best is starred and named in the summary."""
BEST = "★"
UNRESOLVED = "†"
DP_BOUND = "TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ"
"""The two inequalities every (ε, δ)-DP test obeys (TNR = 1 − FPR, FNR = 1 − TPR); the check tests both."""
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


def unit_attacks(model: ModelResult, unit: str | None = None) -> dict[str, AttackResult]:
    """The model's attacks for one unit of evaluation: per sequence (``None``) or ``model.mia_by_unit[unit]``."""
    return dict(model.mia) if unit is None else dict(model.mia_by_unit.get(unit, {}))


def attack_order(results: Results, unit: str | None = None, models: Sequence[str] | None = None) -> list[str]:
    """All attacks of the given models (default: all), merged so that each model's own order is kept.

    An attack first seen in a later model is placed right after its predecessor in that model, so a
    model that skipped some attacks does not push the others out of their usual order.
    """
    order: list[str] = []
    for name in models if models is not None else list(results.models):
        model = results.models.get(name)
        if model is None:
            continue
        prev: str | None = None
        for attack in unit_attacks(model, unit):
            if attack not in order:
                order.insert(order.index(prev) + 1 if prev is not None else 0, attack)
            prev = attack
    return order


def _level_label(level: str) -> str:
    pct = float(level) * 100
    return f"TPR@{pct:g}%"


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


def best_attack(model: ModelResult) -> tuple[str, AttackResult] | None:
    """The per-sequence attack with the highest TPR at 1% FPR (ties: the higher AUC, then the first)."""
    attacks = {k: r for k, r in model.mia.items() if _tpr_key(r) is not None}
    if not attacks:
        return None
    name = max(attacks, key=lambda k: (_tpr_key(attacks[k]) or 0.0, attacks[k].auc if _ok(attacks[k].auc) else -1))
    return name, attacks[name]


def _dp_params(check: Any) -> str:
    return f"ε = {_f(check.epsilon, '.2f')}, δ = {_f(check.delta, '.1e')}"


def dp_bound_violations(model: ModelResult) -> list[str]:
    """Attacks whose ROC contradicts the model's DP guarantee beyond sampling error (in the results' order)."""
    return [a for a, r in model.mia.items() if r.dp_bound is not None and r.dp_bound.violated]


def _dp_check(name: str, model: ModelResult) -> dict[str, Any] | None:
    """The DP bound verdict of a model's per-sequence attacks; None for a model trained without DP."""
    checks = {a: r.dp_bound for a, r in model.mia.items() if r.dp_bound is not None}
    if not checks:
        if model.privacy.epsilon is None:
            return None
        why = next((w.removeprefix(DP_UNCHECKED) for r in model.mia.values() for w in r.warnings
                    if w.startswith(DP_UNCHECKED)), "no attack result carries a DP bound check")
        return {
            "status": "unchecked",
            "headline": "",
            "text": f"{name}: the DP bounds {DP_BOUND} were not checked ({why}).",
            "short": "DP bound not checked",
            "cell": "not checked",
        }
    params = _dp_params(next(iter(checks.values())))
    first = next(iter(checks.values()))
    scope, scoped = "", first.scope != "all records"
    if scoped:
        scope = (f" Checked on the {first.n_members:,} member and {first.n_non_members:,} held-out records whose "
                 "person has no other audited record: the records were split per person, and a person's records "
                 "together are protected only at group privacy.")
    where = ", single-record people" if scoped else ""
    excess = {a: c.max_excess for a, c in checks.items() if _ok(c.max_excess)}
    worst = max(excess, key=lambda a: excess[a]) if excess else None
    violators = dp_bound_violations(model)
    if violators:
        verb = "exceeds" if len(violators) == 1 else "exceed"
        largest = f" (largest excess {excess[worst]:.3f}, {worst})" if worst is not None else ""
        return {
            "status": "violated",
            "headline": f"WARNING, {name}: {DP_BROKEN}.",
            "text": f"On {name}, {_join(violators)} {verb} the DP bounds {DP_BOUND} ({params}) "
            f"beyond sampling error{largest}. Do not rely on this model's privacy guarantee.{scope}",
            "short": f"⚠ DP bound VIOLATED by {_join(violators)}: the DP guarantee does not hold (see the warning)",
            "cell": f"⚠ VIOLATED by {len(violators)} of {len(checks)} attacks",
            "attacks": violators,
        }
    if all(c.testable is False for c in checks.values()):  # no attack, however strong, could have failed it
        attack = next(r for r in model.mia.values() if r.dp_bound is not None)
        n_m = first.n_members if first.n_members is not None else attack.n_members
        n_n = first.n_non_members if first.n_non_members is not None else attack.n_non_members
        return {
            "status": "untestable",
            "headline": "",
            "text": f"{name}: the DP bounds {DP_BOUND} ({params}) cannot be tested with these records: even an "
            f"attack that told all {n_m:,} member records from all {n_n:,} held-out ones would stay within it "
            f"beyond sampling error, so that no attack exceeds it is no evidence that the guarantee holds.{scope}",
            "short": f"the DP bounds {DP_BOUND} cannot be tested with {n_m:,} and {n_n:,} records",
            "cell": f"not testable (too few records{where})",
            "attacks": [],
        }
    if worst is not None and excess[worst] > 0:
        tail = f"the largest empirical excess, {excess[worst]:.3f} ({worst}), is within sampling error"
    else:
        tail = "every empirical ROC stays below the bound"
    n = len(checks)
    return {
        "status": "ok",
        "headline": "",
        "text": f"{name}: no attack exceeds the DP bounds {DP_BOUND} ({params}) beyond sampling error "
        f"({n} attack{'s' if n != 1 else ''} checked; {tail}).{scope}",
        "short": f"no attack exceeds the DP bounds {DP_BOUND} ({n} checked{where})",
        "cell": f"holds ({n} attack{'s' if n != 1 else ''}{where})",
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


INTERVALS = {
    "records": "the AUC's from a bootstrap over records; the TPR's covers the TPR at that FPR, allowing for the "
    "error of a threshold chosen from the held-out records (order statistics with Clopper-Pearson bounds)",
    "people": "records were split per person, so both come from a bootstrap that resamples people (a person's "
    "records are alike, not independent draws), the TPR's threshold re-chosen in every resample",
    None: "the AUC's from a bootstrap over records; the TPR's Clopper-Pearson at the chosen threshold (results "
    "written by an older version: it does not allow for the threshold's own error)",
}
"""How each kind of :attr:`AttackResult.intervals` was computed, for the report."""


def _intervals_text(results: Results) -> str:
    """The per-record attacks' 95% intervals, as computed (one sentence for each kind the results hold)."""
    kinds = list(dict.fromkeys(r.intervals for m in results.models.values() for r in m.mia.values()))
    return " ".join(f"95% intervals: {INTERVALS.get(k, INTERVALS[None])}." for k in kinds)


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
                row["cells"].append(DASH if b is None else "⚠ VIOLATED" if b.violated
                                    else "not testable" if b.testable is False else "ok")
            rows.append(row)
        models.append(
            {
                "name": name,
                "description": model.description,
                "rows": rows,
                "dp_column": dp_column,
                "dp": dp,
                "skipped": [{"attack": a, "reason": why} for a, why in model.skipped_attacks.items()]
                + [{"attack": f"per-{u} evaluation", "reason": why} for u, why in model.skipped_units.items()],
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
                    f"{name}: {_join(violators)} {verb} the record-level DP bounds {DP_BOUND} "
                    f"({_dp_params(checks[violators[0]])}) beyond sampling error; {why}, so this alone does not "
                    "contradict the DP guarantee, but it does show that such units leak."
                )
            elif checks and all(c.testable is False for c in checks.values()):
                notes.append(f"{name}: the record-level DP bounds {DP_BOUND} cannot be tested at this unit with so "
                             "few units (even a perfect attack would stay within it).")
            elif checks:
                notes.append(f"{name}: no attack exceeds the record-level DP bounds {DP_BOUND} at this unit.")
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
        "intervals": _intervals_text(results),
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
