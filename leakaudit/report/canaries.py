"""The canary sections: exposure tables per canary spec and the extraction-search results.

Also the exposure groups (per repetition count) that the summary, the findings and the exposure
figure share.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from leakaudit.report.formatting import DASH, _bits, _join, _ok
from leakaudit.report.schema import CanaryResult, ExposureGroup, ModelResult, Results

HIGH_REPETITIONS = 16
"""The summary compares canaries inserted at least this many times with reference canaries."""
POOR_FIT = 0.01
"""A skew-normal fit whose Kolmogorov-Smirnov p-value is below this is called poor."""
MEASURES = ("interpolation", "skew-normal", "exact", "extracted")
"""Columns per model of the exposure tables, in order (only those with data are shown)."""


def _space(size: int, bits: float) -> str:
    base = f"{size:,}" if size < 10**15 else f"{size:.3g}"
    return f"{base} ({bits:.2f} bits)"


def groups_from_canaries(canaries: Iterable[CanaryResult]) -> list[ExposureGroup]:
    """Exposure summary per repetition count (0 = reference), sorted by repetition count.

    Like the groups a run records: the skew-normal median over the canaries that have that estimate
    and the number of extracted canaries among those searched (None when none has the field).
    """
    by_rep: dict[int, list[CanaryResult]] = {}
    for c in canaries:
        by_rep.setdefault(c.repetitions, []).append(c)
    groups = []
    for rep, cs in sorted(by_rep.items()):
        specs = {c.spec for c in cs}
        groups.append(ExposureGroup.of(cs, spec=specs.pop() if len(specs) == 1 else None, repetitions=rep))
    return groups


def model_groups(model: ModelResult) -> list[ExposureGroup]:
    """The model's exposure groups: as recorded, else computed from its per-canary results."""
    if model.exposure_by_repetition:
        return sorted(model.exposure_by_repetition, key=lambda g: g.repetitions)
    return groups_from_canaries(model.canaries)


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


def _guess_counts(model: ModelResult) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Repetition count -> (found within the search's guesses, searched) and -> (first guess another inserted
    canary's secret, searched), over the canaries that recorded them (else the groups' totals); empty when none
    did (older runs)."""
    within: dict[int, tuple[int, int]] = {}
    other: dict[int, tuple[int, int]] = {}

    def add(counts: dict[int, tuple[int, int]], rep: int, k: int, n: int) -> None:
        k0, n0 = counts.get(rep, (0, 0))
        counts[rep] = (k0 + k, n0 + n)

    for c in model.canaries:
        if c.extracted is None:
            continue
        if c.extraction_guesses is not None:
            add(within, c.repetitions, int(c.extraction_guess is not None), 1)
        if c.extraction_first_guess_inserted is not None:
            add(other, c.repetitions, int(c.extraction_first_guess_inserted), 1)
    if not model.canaries:
        for g in model_groups(model):
            if g.extracted is None:
                continue
            if g.extracted_within_guesses is not None:
                add(within, g.repetitions, g.extracted_within_guesses, g.n)
            if g.extraction_first_guess_inserted is not None:  # over the searches that completed a guess
                done = g.n - (g.extraction_no_guess or 0)
                if done > 0:
                    add(other, g.repetitions, g.extraction_first_guess_inserted, done)
    return dict(sorted(within.items())), dict(sorted(other.items()))


def _guesses_setting(models: Iterable[ModelResult]) -> int | None:
    """The guesses the searches were allowed, when one number for all (None: none recorded, or several)."""
    gs: set[int] = set()
    for m in models:
        if m.canaries:
            gs |= {c.extraction_guesses for c in m.canaries if c.extraction_guesses is not None}
        else:
            gs |= {g.extraction_guesses for g in model_groups(m) if g.extraction_guesses is not None}
    return gs.pop() if len(gs) == 1 else None


def no_guess_counts(model: ModelResult) -> tuple[int, int] | None:
    """(searches that found no complete secret within their budget, searches that recorded it); None: none did."""
    if model.canaries:
        found = [c.extraction_guesses_found for c in model.canaries
                 if c.extracted is not None and c.extraction_guesses_found is not None]
        return (sum(f == 0 for f in found), len(found)) if found else None
    groups = [g for g in model_groups(model) if g.extracted is not None and g.extraction_no_guess is not None]
    return (sum(g.extraction_no_guess for g in groups), sum(g.n for g in groups)) if groups else None


def extraction_inconclusive(model: ModelResult) -> bool:
    """Whether every best-first search of the model found no complete secret within its budget and no beam search
    ran: its misses say nothing, neither leak nor its absence.  (A beam search always completes a secret, so
    when it ran the extraction was measured, by it; the release gate reads it the same way.)"""
    if _beam_counts(model):
        return False
    if model.canaries:  # decided over the inserted canaries: a reference canary's completed search shows nothing
        found = [c.extraction_guesses_found for c in model.canaries
                 if c.inserted and c.extracted is not None and c.extraction_guesses_found is not None]
        return bool(found) and all(f == 0 for f in found)
    counts = no_guess_counts(model)
    return counts is not None and counts[1] > 0 and counts[0] == counts[1]


def search_budget(model: ModelResult) -> int | None:
    """The forward passes a search that found nothing spent (its whole budget), when one number."""
    spent = {c.extraction_expansions for c in model.canaries
             if c.extraction_guesses_found == 0 and c.extraction_expansions is not None}
    return spent.pop() if len(spent) == 1 else None


def budget_words(model: ModelResult) -> str:
    """" of 200 forward passes" (the search budget, when one number is known), else ""."""
    budget = search_budget(model)
    return f" of {budget:,} forward passes" if budget is not None else ""


def within_guesses(model: ModelResult) -> tuple[int, int] | None:
    """(inserted canaries whose own secret was among the search's guesses, searched); None: not recorded."""
    within, _ = _guess_counts(model)
    ins = [kn for r, kn in within.items() if r > 0]
    return (sum(k for k, _ in ins), sum(n for _, n in ins)) if ins else None


def other_secret_first(model: ModelResult) -> tuple[int, int] | None:
    """(searches whose first guess was another inserted canary's secret, searches), inserted and reference
    canaries together; None: not recorded."""
    _, other = _guess_counts(model)
    if not other:
        return None
    return sum(k for k, _ in other.values()), sum(n for _, n in other.values())


def _inconclusive_sentence(model: ModelResult) -> str:
    """"The best-first search found no complete secret within its budget of 200 forward passes for any of the 9
    canaries: ..." (when :func:`extraction_inconclusive`)."""
    counts = no_guess_counts(model)
    n = counts[1] if counts else 0
    words = budget_words(model)
    within = f"its budget{words}" if words else "its forward-pass budget"
    return (
        f"The best-first search found no complete secret within {within} for any of the {n} canaries: its "
        "result is inconclusive, neither a leak nor evidence that the secrets are hard to guess."
    )


def _no_guess_sentence(model: ModelResult) -> str:
    """How many searches found no complete secret within their budget (their misses say nothing)."""
    counts = no_guess_counts(model)
    if counts is None or not counts[0]:
        return ""
    k, n = counts
    if k == n:
        return (
            f" For none of the {n} canaries did the search complete a secret within its forward-pass budget: the "
            "search is inconclusive, not evidence that the secrets are hard to guess."
        )
    return (
        f" For {k} of the {n} canaries the search completed no secret within its forward-pass budget: "
        "a miss there is inconclusive, not evidence that the secret is hard to guess."
    )


def _guess_sentence(within: dict[int, tuple[int, int]], other: dict[int, tuple[int, int]], g: int | None) -> str:
    """" Within 10 guesses it finds the secret of 5 of 6 inserted canaries ...; for 1 of them ..."."""
    text = ""
    if within:
        k = sum(kn[0] for r, kn in within.items() if r > 0)
        n = sum(kn[1] for r, kn in within.items() if r > 0)
        text = f" Within {g if g is not None else 'its'} guesses it finds the secret of {k} of {n} inserted canaries"
        if 0 in within:
            text += f" and {within[0][0]} of {within[0][1]} reference canaries"
        text += "."
    if other:
        j = sum(kn[0] for kn in other.values())
        n = sum(kn[1] for kn in other.values())
        if j:
            text += (
                f" For {j} of the {n} searched canaries its first guess was the secret of another inserted canary, "
                "which the model thus gives away from a different prefix."
            )
        else:
            text += " No first guess was the secret of another inserted canary."
    return text


def _extraction(results: Results) -> dict[str, Any]:
    counts = {name: _extraction_counts(m) for name, m in results.models.items()}
    beams = {name: _beam_counts(m) for name, m in results.models.items()}
    guess = {name: _guess_counts(m) for name, m in results.models.items()}
    g = _guesses_setting(results.models.values())
    beam = any(beams.values())
    has_within = any(w for w, _ in guess.values())
    has_other = any(o for _, o in guess.values())
    within_label = f"within {g} guesses" if g is not None else "within its guesses"
    sources: list[tuple[str, dict[str, dict[int, tuple[int, int]]]]] = [("best-first", counts)]
    if has_within:
        sources.append((within_label, {name: w for name, (w, _) in guess.items()}))
    if has_other:
        sources.append(("another's secret first", {name: o for name, (_, o) in guess.items()}))
    if beam:
        sources.append(("beam", beams))
    measures = [label for label, _ in sources] if len(sources) > 1 else []
    reps = sorted({r for c in [*counts.values(), *beams.values()] for r in c})
    rows = []
    for rep in reps:
        cells = []
        for name in results.models:
            for _, source in sources:
                kn = source[name].get(rep)
                cells.append(DASH if kn is None else f"{kn[0]}/{kn[1]}")
        rows.append({"label": "reference (0)" if rep == 0 else str(rep), "cells": cells})
    notes = []
    if has_within:
        most = f"{g} most likely secrets" if g is not None else "most likely secrets (as many as it was allowed)"
        notes.append(
            f'"{within_label}": the canary\'s own secret is among the search\'s {most}, so an attacker with that '
            "many tries finds it"
        )
    if has_other:
        notes.append(
            '"another\'s secret first": the first guess was the secret of a different inserted canary, itself a leak'
        )
    if notes:
        notes.append("a dash: not measured")
    note = ("; ".join(notes) + ".") if notes else ""
    lines = []
    for name, model in results.models.items():
        if not counts[name] and not beams[name]:
            continue
        if extraction_inconclusive(model):  # (then no beam search ran)
            lines.append({"name": name, "text": _inconclusive_sentence(model)})
            continue
        text = _extraction_sentence(counts[name]) if counts[name] else "The best-first search was not run."
        passes = [c.extraction_expansions for c in model.canaries  # searches that found nothing: their own sentence
                  if c.extraction_expansions is not None and c.extraction_guesses_found != 0]
        # with several guesses the recorded passes are those spent until the first guess
        used = "Its first guess took" if any((c.extraction_guesses or 1) > 1 for c in model.canaries) else "It used"
        if passes and min(passes) == max(passes):
            text += f" {used} {max(passes):,} forward passes per canary."
        elif passes:
            text += (
                f" {used} {min(passes):,} to {max(passes):,} forward passes per canary "
                f"(median {statistics.median(passes):,.0f})."
            )
        text += _guess_sentence(*guess[name], _guesses_setting([model])) + _no_guess_sentence(model)
        if beams[name]:
            text += _beam_sentence(beams[name])
        lines.append({"name": name, "text": text})
    return {
        "any": bool(rows),
        "rows": rows,
        "measures": measures,
        "note": note,
        "header": [f"{name} {m}" for name in results.models for m in measures] or list(results.models),
        "models": lines,
        "not_searched": [n for n in results.models if not counts[n] and not beams[n]] if rows else [],
    }
