"""Report rendering: Markdown and HTML from a small hand-made Results."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from leakaudit.report.canaries import _extraction_sentence, groups_from_canaries
from leakaudit.report.findings import SIGNIFICANCE
from leakaudit.report.mia import attack_order
from leakaudit.report.plots import exposure_plot, png_size, roc_plot
from leakaudit.report.render import (
    binomial_greater,
    fisher_greater,
    render_html,
    render_markdown,
    results_schema_text,
    wilson,
    write_reports,
)
from leakaudit.report.schema import (
    AttackResult,
    CanaryResult,
    CanarySpecSummary,
    DPBoundCheck,
    EmpiricalPrivacy,
    ExposureGroup,
    MemorizationResult,
    MemorizationStats,
    ModelResult,
    PIIExtraction,
    PIIExtractionCounts,
    PIIReconstruction,
    PrivacyRecord,
    Results,
    RocCurve,
    RunInfo,
    UntargetedExtraction,
    Utility,
)

MODELS = ("base", "non_dp", "dp")
SECTIONS = ("summary", "audited", "privacy", "exposure", "mia", "utility", "limitations")
NEW_SECTIONS = (
    "findings",
    "memorization",
    "untargeted",
    "pii",
    "reconstruction",
    "empirical",
    "comparison",
    "compliance",
)
MD_HEADINGS = (
    "## Summary",
    "## What was audited",
    "## Privacy",
    "## Canary exposure",
    "## Membership inference",
    "## Utility",
    "## Limitations",
)
CAP = 9.965784284662087  # log2(1000)
EPS, DELTA = 7.9812, 1e-5
REF_REASON = "needs a reference model trained on similar data without the audited records"
SHADOW_REASON = "needs shadow models (run with --shadows N)"
BROKEN = "the DP guarantee is contradicted by the measurements: the DP training or its accounting is broken"
BOUNDS = "TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ"  # the two DP inequalities, as the report writes them


def _run(**kw) -> RunInfo:
    base = dict(
        leakaudit_version="0.1.0",
        created="2024-05-01T12:00:00+00:00",
        command="leakaudit run --config configs/tiny.yaml",
        config_sha256="a" * 64,
        seed=7,
        git_revision="0123456789abcdef0123456789abcdef01234567",
        device="cpu",
        versions={"torch": "2.3.0", "transformers": "4.45.0"},
        n_members=200,
        n_non_members=200,
        n_canaries_inserted=6,
        n_reference_canaries=3,
        data_sha256={"members.jsonl": "b" * 64, "non_members.jsonl": "c" * 64},
        reference_models={"base": "models/base"},
        shadow_models=4,
    )
    base.update(kw)
    return RunInfo(**base)


def _skew(e: float, i: int) -> float:
    """A made-up skew-normal estimate: above the interpolation one, far above it at the cap."""
    return 15.5 + i if e >= CAP else round(e * 1.1, 2)


def _canaries(exposures: dict[int, list[float]], extracted: dict[int, list[bool]], poor_fit: int = -1):
    """Canaries with every estimate; ``extracted[rep][i]``: whether the search recovered canary i."""
    out = []
    for rep, values in exposures.items():
        for i, e in enumerate(values):
            found = extracted[rep][i]
            out.append(
                CanaryResult(
                    id=f"codes-r{rep}-{i}",
                    spec="codes",
                    repetitions=rep,
                    inserted=rep > 0,
                    exposure_bits=e,
                    rank=max(1, round(1000 / 2**e)),
                    exposure_bits_skewnorm=_skew(e, i),
                    skewnorm_ks_pvalue=0.004 if len(out) == poor_fit else 0.42,
                    extracted=found,
                    extraction_expansions=12 + i if found else 100,
                )
            )
    return out


def _med(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _groups(exposures: dict[int, list[float]], extracted: dict[int, list[bool]]) -> list[ExposureGroup]:
    groups = []
    for rep, values in sorted(exposures.items()):
        groups.append(
            ExposureGroup(
                spec="codes",
                repetitions=rep,
                n=len(values),
                median_exposure_bits=_med(values),
                mean_exposure_bits=sum(values) / len(values),
                max_exposure_bits=max(values),
                median_exposure_bits_skewnorm=_med([_skew(e, i) for i, e in enumerate(values)]),
                extracted=sum(extracted[rep]),
            )
        )
    return groups


NEW_RESULT_FIELDS = {
    "memorization": [],
    "untargeted_extraction": None,
    "pii_extraction": None,
    "pii_reconstruction": {},
    "empirical_privacy": [],
}


def _without_new_fields(res: Results) -> Results:
    """The same results as an older run would record them: no skew-normal, exact or extraction data, no
    memorization, untargeted or PII extraction, PII reconstruction or empirical privacy."""
    blank = {
        "exposure_bits_skewnorm": None,
        "skewnorm_ks_pvalue": None,
        "exposure_bits_exact": None,
        "extracted": None,
        "extraction_expansions": None,
        "extracted_beam": None,
    }
    models = {
        name: m.model_copy(
            update={
                "canaries": [c.model_copy(update=blank) for c in m.canaries],
                "exposure_by_repetition": [
                    g.model_copy(update={"median_exposure_bits_skewnorm": None, "extracted": None})
                    for g in m.exposure_by_repetition
                ],
                **NEW_RESULT_FIELDS,
            }
        )
        for name, m in res.models.items()
    }
    return res.model_copy(update={"models": models})


def _stats(n: int, exact: int, approx: int, token: float) -> MemorizationStats:
    lo, hi = (0.0, 3.7 / n) if exact == 0 else (max(0.0, exact / n - 0.03), exact / n + 0.04)
    return MemorizationStats(
        n_records=n,
        exact_matches=exact,
        exact_match_rate=exact / n,
        exact_match_ci=(lo, hi),
        token_match_mean=token,
        approx_match_rate=approx / n,
        bleu_mean=token + 0.05,
        edit_similarity_mean=token + 0.01,
    )


def _memorization(name: str) -> list[MemorizationResult]:
    exact = {"base": 0, "non_dp": 12, "dp": 1}[name]
    approx = {"base": 0, "non_dp": 16, "dp": 10}[name]  # dp's: a weak signal that survives the corrections
    out = [
        MemorizationResult(
            k=32,
            n=32,
            skipped_short=3,
            members=_stats(200, exact, approx, 0.1 + exact / 100),
            non_members=_stats(200, 0, 0, 0.1),
        )
    ]
    if name == "non_dp":  # a second setting on one model only: the others show dashes there
        out.append(MemorizationResult(k=64, n=32, members=_stats(190, 20, 25, 0.4), non_members=_stats(190, 0, 0, 0.1)))
    return out


def _untargeted(name: str) -> UntargetedExtraction | None:
    if name == "base":
        return None  # not run on the base model: its column shows dashes
    leaky = name == "non_dp"
    return UntargetedExtraction(
        n_samples=1000,
        sample_tokens=64,
        strategies={"top_k": 400, "temperature_decay": 300, "public_prompt": 300},
        n_unique=800 if leaky else 950,
        verify_ngram=12,
        n_memorized=40 if leaky else 1,
        n_training_records_reproduced=25 if leaky else 1,
        n_in_public=10,
        n_non_member_matches=2 if leaky else 1,
        precision_at_k={"perplexity": {"10": 0.9 if leaky else 0.0, "100": 0.3 if leaky else 0.01}},
        baseline_precision_at_k={"perplexity": {"10": 0.0, "100": 0.01}},
    )


def _pii_counts(n_true: int, n_training: int, filtered_true: int = 1) -> PIIExtractionCounts:
    leaked = n_true + 3
    return PIIExtractionCounts(
        n_generated_pii=leaked + 2,
        n_mentions=leaked + 9,
        n_baseline_pii=4,
        n_filtered=2,
        n_filtered_true=filtered_true,
        n_baseline_true=filtered_true,
        n_leaked=leaked,
        n_true=n_true,
        n_training=n_training,
        precision=n_true / leaked,
        recall=n_true / n_training,
        precision_unfiltered=(n_true + filtered_true) / (leaked + 2),
        recall_unfiltered=(n_true + filtered_true) / n_training,
    )


def _pii(name: str) -> PIIExtraction:
    emails, phones = {"base": (0, 0), "non_dp": (5, 2), "dp": (0, 0)}[name]
    return PIIExtraction(
        types=["email", "phone"],
        n_generated=1000,
        n_baseline_generated=1000,
        overall=_pii_counts(emails + phones, 50, 2),
        by_type={"email": _pii_counts(emails, 30), "phone": _pii_counts(phones, 20)},
        notes=["names are detected from the training annotations only: their precision is 1 by construction"],
    )


def _reconstruction(top1: float, n: int) -> PIIReconstruction:
    return PIIReconstruction(
        pii_type="name",
        n_queries=n,
        n_candidates=20,
        top1_accuracy=top1,
        mrr=top1 + 0.1,
        mean_rank=10.5 * (1 - top1) + 1,
        chance_top1=0.05,
        chance_mrr=0.17988698570308248,
        chance_mean_rank=10.5,
        tie_rate=0.0,
    )


def _empirical(name: str) -> list[EmpiricalPrivacy]:
    if name == "dp":
        return [
            EmpiricalPrivacy(
                method="one_run",
                eps_lower_bound=0.8,
                alpha=0.05,
                delta=DELTA,
                r=100,
                v=70,
                m=1000,
                k_plus=50,
                k_minus=50,
                best_possible=3.47,
                accountant_epsilon=EPS,
                exceeds_accountant=False,
                note="guesses on the top and bottom 50 canaries",
            )
        ]
    if name == "non_dp":
        return [EmpiricalPrivacy(method="threshold", eps_lower_bound=2.1, alpha=0.05, delta=DELTA, r=400, v=380, m=400)]
    return []


def _with_failed_dp(res: Results) -> Results:
    """The DP model's empirical bound exceeds the accountant's eps."""
    dp = res.models["dp"]
    bound = dp.empirical_privacy[0].model_copy(update={"eps_lower_bound": 9.1, "exceeds_accountant": True})
    return res.model_copy(update={"models": {**res.models, "dp": dp.model_copy(update={"empirical_privacy": [bound]})}})


def _with_beam(res: Results) -> Results:
    """Beam-search results too: the beam search ranks first what the best-first search recovered, and one more."""
    models = {}
    for name, m in res.models.items():
        canaries = [
            c.model_copy(update={"extracted_beam": bool(c.extracted) or (name == "non_dp" and c.id == "codes-r1-0")})
            for c in m.canaries
        ]
        models[name] = m.model_copy(update={"canaries": canaries})
    return res.model_copy(update={"models": models})


def _attack(
    auc: float,
    with_roc: bool = True,
    warnings: list[str] | None = None,
    *,
    dp: DPBoundCheck | None = None,
    n: int = 200,
) -> AttackResult:
    roc = None
    if with_roc:
        fpr = [0.0, 0.005, 0.01, 0.1, 0.5, 1.0]
        tpr = [min(1.0, f + (auc - 0.5) * 0.8) if f > 0 else 0.0 for f in fpr]
        tpr[-1] = 1.0
        roc = RocCurve(fpr=fpr, tpr=tpr)
    tprs = {"0.001": 0.0, "0.01": 0.02 + (auc - 0.5) / 10, "0.1": 0.1 + (auc - 0.5) / 2}
    return AttackResult(
        auc=auc,
        auc_ci=(auc - 0.05, auc + 0.05),
        tpr_at_fpr=tprs,
        tpr_ci={k: (max(0.0, t - 0.02), min(1.0, t + 0.03)) for k, t in tprs.items()},
        balanced_accuracy=0.5 + (auc - 0.5) * 0.7,
        n_members=n,
        n_non_members=n,
        min_resolvable_fpr=1 / n,
        dp_bound=dp,
        warnings=warnings if warnings is not None else [f"FPR 0.001 is below 1/{n} non-members"],
        roc=roc,
    )


def _dp(violated: bool = False, excess: float = -1e-5) -> DPBoundCheck:
    return DPBoundCheck(epsilon=EPS, delta=DELTA, violated=violated, max_excess=excess)


def make_results() -> Results:
    exposures = {
        "base": {0: [0.4, 1.1, 0.2], 1: [0.5, 0.9], 4: [1.0, 0.3], 16: [0.7, 1.2]},
        "non_dp": {0: [0.6, 0.3, 1.5], 1: [2.5, 3.0], 4: [6.1, 7.4], 16: [CAP, CAP]},
        "dp": {0: [0.5, 0.8, 0.1], 1: [0.6, 0.2], 4: [0.9, 1.4], 16: [1.8, 2.2]},
    }
    none = {0: [False] * 3, 1: [False] * 2, 4: [False] * 2, 16: [False] * 2}
    extracted = {"base": none, "non_dp": {**none, 4: [False, True], 16: [True, True]}, "dp": none}
    poor_fit = {"base": -1, "non_dp": -1, "dp": 0}  # the dp model's first canary has a poor skew-normal fit
    privacy = {
        "base": PrivacyRecord(),
        "non_dp": PrivacyRecord(steps=1200, epochs=3.0, dataset_size=200),
        "dp": PrivacyRecord(
            epsilon=EPS,
            delta=DELTA,
            noise_multiplier=0.71,
            sample_rate=0.0625,
            steps=1200,
            max_grad_norm=1.0,
            accountant="prv",
            epochs=3.0,
            dataset_size=200,
            clipping="per_layer",
            grad_sample_mode="ghost",
        ),
    }
    aucs = {
        "base": {"loss": 0.5, "zlib": 0.51},
        "non_dp": {"loss": 0.83, "zlib": 0.79, "reference": 0.86, "rmia": 0.9},
        "dp": {"loss": 0.55, "zlib": 0.54, "reference": 0.53, "rmia": 0.56},
    }
    skipped = {"base": {"reference": REF_REASON, "rmia": SHADOW_REASON}, "non_dp": {}, "dp": {}}
    models = {}
    for name in MODELS:
        dp = _dp() if name == "dp" else None
        models[name] = ModelResult(
            description="pretrained, never saw the private data" if name == "base" else f"{name} fine-tune",
            path=None if name == "base" else f"models/{name}",
            files_sha256={} if name == "base" else {"model.safetensors": "e" * 64, "config.json": "f" * 64},
            privacy=privacy[name],
            utility=Utility(member_loss=2.1, non_member_loss=2.4, non_member_perplexity=11.02),
            mia={attack: _attack(auc, dp=dp) for attack, auc in aucs[name].items()},
            mia_by_unit={
                "user": {
                    attack: _attack(auc + 0.02, with_roc=False, warnings=[], n=50) for attack, auc in aucs[name].items()
                },
                "canary": {"exposure": _attack(0.97 if name == "non_dp" else 0.52, warnings=[], dp=dp, n=9)},
            },
            skipped_attacks=skipped[name],
            canaries=_canaries(exposures[name], extracted[name], poor_fit[name]),
            exposure_by_repetition=_groups(exposures[name], extracted[name]),
            memorization=_memorization(name),
            untargeted_extraction=_untargeted(name),
            pii_extraction=_pii(name),
            pii_reconstruction={
                "members": _reconstruction({"base": 0.055, "non_dp": 0.5, "dp": 0.06}[name], 200),
                "non_members": _reconstruction(0.05, 200),
            },
            empirical_privacy=_empirical(name),
        )
    spec = CanarySpecSummary(
        name="codes",
        format="digits",
        length=6,
        space_size=10**6,
        max_exposure_bits=19.93156856932417,
        null_samples=1000,
        exposure_method="interpolation",
        exposure_cap_bits=CAP,
    )
    return Results(run=_run(), canary_specs=[spec], models=models)


@pytest.fixture(scope="module")
def results() -> Results:
    return make_results()


@pytest.fixture(scope="module")
def html(results) -> str:
    return render_html(results)


@pytest.fixture(scope="module")
def markdown(results) -> str:
    return render_markdown(results)


def test_markdown_has_sections_and_models(markdown):
    for heading in MD_HEADINGS:
        assert heading in markdown
    for name in MODELS:
        assert name in markdown
    # Models are columns: a header row lists all three.
    assert "| base | non_dp | dp |" in markdown
    assert "reference (0)" in markdown
    assert "none (non-private)" in markdown
    assert "7.98" in markdown and "1.0e-05" in markdown
    assert "plots are in the HTML report" in markdown.lower() or "report.html" in markdown
    assert "data:image/png" not in markdown


def test_markdown_content(markdown):
    # Shortened hashes only.
    assert "a" * 12 in markdown and "a" * 13 not in markdown
    # A median at the exposure cap is marked as a lower bound.
    assert "| 16 | 2 | 0.95 | 1.04 | 0/2 | ≥9.97 | 16.00 | 2/2 | 2.00 | 2.20 | 0/2 |" in markdown
    # Summary: exposure of canaries inserted >= 16 times vs reference, best LOSS/zlib AUC.
    assert "median exposure ≥9.97 bits (at the cap) for canaries inserted at least 16 times (n=2)" in markdown
    assert "vs 0.60 bits for reference canaries (n=3)" in markdown
    assert "best LOSS/zlib AUC 0.830 (loss)" in markdown
    # Membership inference table and warnings.
    assert "TPR@0.1%" in markdown and "TPR@1%" in markdown and "TPR@10%" in markdown
    assert "FPR 0.001 is below 1/200 non-members" in markdown
    # Canaries are named by id only, and no section is left empty of tables.
    assert markdown.count("|---|") >= 6


def test_html_sections_models_and_images(html):
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    for name in MODELS:
        assert f'<th scope="col">{name}</th>' in html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2  # exposure + one grid of ROC small multiples
    for uri in uris:
        assert base64.b64decode(uri).startswith(b"\x89PNG")
    exposure = html[html.index('<section id="exposure">') : html.index('<section id="mia">')]
    mia = html[html.index('<section id="mia">') : html.index('<section id="utility">')]
    assert "data:image/png;base64" in exposure
    assert mia.count("data:image/png;base64") == 1
    # The grid's real pixel size is given to the browser.
    uri = re.search(r'src="(data:image/png;base64,[^"]+)"', mia).group(1)
    width, height = png_size(uri)
    assert f'width="{width}" height="{height}"' in mia and width > height


def test_html_is_self_contained(html):
    assert "<script" not in html
    assert not re.search(r"""(href|src)=["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "@media print" in html


def test_html_escapes_names():
    res = make_results()
    models = dict(res.models)
    models["<b>evil</b>"] = models.pop("dp")
    res = res.model_copy(update={"models": models})
    out = render_html(res)
    assert "<b>evil</b>" not in out and "&lt;b&gt;evil&lt;/b&gt;" in out


def test_names_with_dollar_signs_are_drawn_as_text_and_model_cards_escape_privacy_strings():
    from leakaudit.report.modelcard import model_card

    res = make_results()
    spec = res.canary_specs[0]
    names = [spec.model_copy(update={"name": "price $\\frac{1}$"}),  # not mathtext (which fails to parse this)
             spec.model_copy(update={"name": "other", "exposure_cap_bits": spec.exposure_cap_bits + 1})]
    assert "<img" in render_html(res.model_copy(update={"canary_specs": names}))
    res.models["dp"].privacy.accountant = "prv <img src=x onerror=alert(1)>"  # privacy.json is the model's own
    body = model_card(res, "dp").split("\n---\n", 1)[1]  # (the YAML front matter holds it as data)
    assert "<img" not in body.replace("\\<img", "") and "\\<img" in body


def test_rendering_is_deterministic(results, html, markdown):
    assert render_markdown(results) == markdown
    assert render_html(results) == html
    # Also from a JSON round trip, as the report command does.
    again = Results.model_validate_json(results.model_dump_json())
    assert render_html(again) == html
    assert exposure_plot(results) == exposure_plot(again)


def test_write_reports(results, tmp_path):
    run_dir = tmp_path / "run"
    paths = write_reports(results, run_dir)
    cards = {f"model_card:{name}": run_dir / f"model_card-{name}.md" for name in MODELS}
    assert paths == {"markdown": run_dir / "report.md", "html": run_dir / "report.html", **cards}
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(results)
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["report.html", "report.md", *(f"model_card-{name}.md" for name in MODELS)]
    )


def test_reports_rebuilt_from_results_json_alone_are_identical(results, tmp_path):
    """What the run writes equals what `leakaudit report` rebuilds from results.json: nothing depends on render time."""
    first, second = tmp_path / "run", tmp_path / "again"
    write_reports(results, first)
    (first / "results.json").write_text(results.model_dump_json(indent=2), encoding="utf-8")
    rebuilt = Results.model_validate_json((first / "results.json").read_text(encoding="utf-8"))
    write_reports(rebuilt, second)
    names = sorted(p.name for p in first.iterdir() if p.name != "results.json")
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_renders_without_canaries_or_roc(results):
    models = {
        name: m.model_copy(
            update={
                "canaries": [],
                "exposure_by_repetition": [],
                "mia": {"loss": _attack(0.6, with_roc=False, warnings=[])},
            }
        )
        for name, m in results.models.items()
    }
    bare = Results(run=_run(n_canaries_inserted=0, n_reference_canaries=0, data_sha256={}), models=models)
    assert exposure_plot(bare) is None
    assert roc_plot(bare, "loss") is None
    out_html = render_html(bare)
    out_md = render_markdown(bare)
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in out_html
    for heading in MD_HEADINGS:
        assert heading in out_md
    assert "data:image/png" not in out_html
    assert "No canaries were scored" in out_md
    assert "no canary exposure measured" in out_md


def test_renders_with_no_models_attacks_or_privacy():
    bare = Results(run=_run(), models={"only": ModelResult(privacy=PrivacyRecord())})
    out_md = render_markdown(bare)
    assert "No membership-inference attack was run." in out_md
    assert "| only |" in out_md
    assert '<section id="mia">' in render_html(bare)


def test_roc_plot_unknown_attack(results):
    assert roc_plot(results, "no-such-attack") is None
    assert roc_plot(results, "zlib").startswith("data:image/png;base64,")


# --------------------------------------------------------------------------- new fields


def _with_dp_violation(res: Results, attacks: tuple[str, ...] = ("rmia", "zlib")) -> Results:
    dp = res.models["dp"]
    mia = {
        a: r.model_copy(update={"dp_bound": _dp(violated=True, excess=0.21 if a == "rmia" else 0.12)})
        if a in attacks
        else r
        for a, r in dp.mia.items()
    }
    models = dict(res.models)
    models["dp"] = dp.model_copy(update={"mia": mia})
    return res.model_copy(update={"models": models})


def test_markdown_summary_is_a_list_naming_the_strongest_attack(markdown):
    summary = markdown[markdown.index("## Summary") : markdown.index("## What was audited")]
    bullets = [line for line in summary.splitlines() if line.startswith("- **")]
    assert [b.split("**")[1] for b in bullets] == list(MODELS)
    assert "strongest attack by TPR at 1% FPR: rmia, 6.0% (AUC 0.900)" in bullets[1]
    assert "strongest attack by TPR at 1% FPR: zlib, 2.1% (AUC 0.510)" in bullets[0]
    assert "no attack exceeds the DP bound" in bullets[2]
    assert "WARNING" not in summary


def test_markdown_audited_shows_reference_and_shadow_models(markdown):
    assert "| reference model: base | `models/base` |" in markdown
    assert "| shadow models (LiRA, RMIA) | 4 |" in markdown
    bare = render_markdown(Results(run=_run(reference_models={}, shadow_models=0), models=make_results().models))
    assert "| reference models | none |" in bare and "| shadow models (LiRA, RMIA) | none |" in bare


def test_markdown_one_membership_table_per_model(markdown):
    mia = markdown[markdown.index("## Membership inference") : markdown.index("## Utility")]
    for name in MODELS:
        assert f"### {name}\n" in mia
    header = "| attack | AUC [95% CI] | TPR@0.1% | TPR@1% [95% CI] | TPR@10% | balanced acc. |"
    assert mia.count(header) == 3
    assert mia.count(header + " DP bound |") == 1  # only the DP model has the DP bound column
    # AUC with its bootstrap interval, TPR@1% with its Clopper-Pearson interval and the best marked, balanced acc.
    assert "| rmia | 0.900 [0.85, 0.95] | 0%† | 6.0% [4.0%, 9.0%] ★ | 30.0% | 78.0% |" in mia
    assert "| loss | 0.830 [0.78, 0.88] | 0%† | 5.3% [3.3%, 8.3%] | 26.5% | 73.1% |" in mia
    assert "| rmia | 0.560 [0.51, 0.61] | 0%† | 2.6% [0.60%, 5.6%] ★ | 13.0% | 54.2% | ok |" in mia
    # Skipped attacks, with their reasons, under the model's table.
    base = mia[mia.index("### base") : mia.index("### non_dp")]
    assert f"- reference: {REF_REASON}" in base and f"- rmia: {SHADOW_REASON}" in base


def test_markdown_cross_model_comparison(markdown):
    mia = markdown[markdown.index("### Comparison across models") : markdown.index("### Units of evaluation")]
    assert "| attack | base | non_dp | dp |" in mia
    assert "| loss | 0.500 / 2.0% | 0.830 / 5.3% | 0.550 / 2.5% |" in mia
    assert "| rmia | skipped | 0.900 / 6.0% ★ | 0.560 / 2.6% ★ |" in mia
    # Attacks keep their usual order although the first model skipped some of them.
    rows = [line.split(" | ")[0][2:] for line in mia.splitlines() if line.startswith("| ") and "/" in line]
    assert rows == ["loss", "zlib", "reference", "rmia"]


def test_markdown_units_of_evaluation(markdown):
    units = markdown[markdown.index("### Units of evaluation") : markdown.index("## Utility")]
    assert "#### Per user" in units and "#### Per canary" in units
    assert "50 member users / 50 non-member users for every model" in units
    assert "9 inserted canaries / 9 reference canaries for every model" in units
    assert "| rmia | skipped | 0.920 / 6.2%† ★ | 0.580 / 2.8%† ★ |" in units
    assert "| exposure | 0.520 / 2.2%† ★ | 0.970 / 6.7%† ★ | 0.520 / 2.2%† ★ |" in units


def test_dp_bound_respected(markdown, html):
    text = f"dp: no attack exceeds the DP bounds {BOUNDS} (ε = 7.98, δ = 1.0e-05) beyond sampling error"
    assert text in markdown and text in html
    assert f"| DP bound check ({BOUNDS}) | n/a (no DP) | n/a (no DP) | holds (4 attacks) |" in markdown
    assert BROKEN not in markdown and BROKEN not in html
    assert 'class="alert"' not in html


def test_dp_bound_violated_gives_a_loud_warning():
    res = _with_dp_violation(make_results())
    md = render_markdown(res)
    html = render_html(res)
    for out in (md, html):
        assert BROKEN in out
        assert "no attack exceeds the DP bound TPR" not in out
        assert f"On dp, zlib and rmia exceed the DP bounds {BOUNDS}" in out
    # In the summary (before everything else) and under the DP model's table.
    summary = md[md.index("## Summary") : md.index("## What was audited")]
    assert f"> **⚠ WARNING, dp: {BROKEN}.**" in summary
    assert "⚠ DP bound VIOLATED by zlib and rmia" in summary
    dp_part = md[md.index("### dp") : md.index("### Comparison across models")]
    assert f"> **⚠ WARNING, dp: {BROKEN}.**" in dp_part
    assert "| zlib | 0.540 [0.49, 0.59] | 0%† | 2.4% [0.40%, 5.4%] | 12.0% | 52.8% | ⚠ VIOLATED |" in dp_part
    assert "⚠ VIOLATED by 2 of 4 attacks" in md
    summary_html = html[html.index('<section id="summary">') : html.index('<section id="audited">')]
    mia_html = html[html.index('<section id="mia">') : html.index('<section id="utility">')]
    assert '<div class="alert" role="alert">' in summary_html and '<div class="alert" role="alert">' in mia_html
    assert '<td class="num violated">⚠ VIOLATED</td>' in mia_html


def test_the_dp_check_says_which_records_it_checked_or_why_it_could_not():
    from leakaudit.report.mia import _dp_check

    dp = make_results().models["dp"]
    scoped = {a: r.model_copy(update={"dp_bound": r.dp_bound.model_copy(update={
        "scope": "records of people with no other audited record", "n_members": 99, "n_non_members": 89})})
        for a, r in dp.mia.items()}
    text = _dp_check("dp", dp.model_copy(update={"mia": scoped}))["text"]
    assert text.startswith("dp: no attack exceeds the DP bound") and (
        "Checked on the 99 member and 89 held-out records whose person has no other audited record" in text)
    assert "Checked on" not in _dp_check("dp", dp)["text"]
    assert _dp_check("dp", dp.model_copy(update={"mia": scoped}))["cell"] == "holds (4 attacks, single-record people)"
    blind = {a: r.model_copy(update={"dp_bound": r.dp_bound.model_copy(update={"testable": False})})
             for a, r in scoped.items()}
    out = _dp_check("dp", dp.model_copy(update={"mia": blind}))
    assert out["status"] == "untestable" and out["cell"] == "not testable (too few records, single-record people)"
    assert "even an attack that told all 99 member records from all 89 held-out ones would stay within it" in (
        out["text"])
    md = render_markdown(make_results().model_copy(update={"models": {
        **make_results().models, "dp": dp.model_copy(update={"mia": blind})}}))
    dp_part = md[md.index("### dp") : md.index("### Comparison across models")]
    assert "| not testable |" in dp_part and "| ok |" not in dp_part  # the per-attack column agrees
    why = ("the DP bound was not checked: records were split per person and 0 member and 12 non-member records "
           "belong to people with no other audited record (a person's records together are protected only at group "
           "privacy)")
    unchecked = {a: r.model_copy(update={"dp_bound": None, "warnings": [why]}) for a, r in dp.mia.items()}
    out = _dp_check("dp", dp.model_copy(update={"mia": unchecked}))
    assert out["status"] == "unchecked"
    assert "were not checked (records were split per person and 0 member" in out["text"]


def test_canary_unit_dp_violation_is_explained_by_group_privacy():
    res = make_results()
    dp = res.models["dp"]
    canary = {"exposure": dp.mia_by_unit["canary"]["exposure"].model_copy(update={"dp_bound": _dp(True, 0.4)})}
    models = dict(res.models)
    models["dp"] = dp.model_copy(update={"mia_by_unit": {**dp.mia_by_unit, "canary": canary}})
    md = render_markdown(res.model_copy(update={"models": models}))
    # Canaries inserted k times are only protected at k·eps: a note, not the loud warning.
    assert BROKEN not in md
    assert "dp: exposure exceeds the record-level DP bound" in md
    assert "a canary inserted k times is protected only at group privacy (roughly k·ε)" in md


def test_limitations_mention_group_privacy(markdown, html):
    sentence = "A canary inserted k times is protected by DP only at group privacy (roughly k·eps)"
    assert sentence in markdown
    assert sentence in html[html.index('<section id="limitations">') :]


def test_html_new_content(html):
    mia = html[html.index('<section id="mia">') : html.index('<section id="utility">')]
    assert mia.count('<th scope="col">AUC [95% CI]</th>') == 3
    assert '<td class="num best">6.0% [4.0%, 9.0%] ★</td>' in mia
    assert "<h3>Comparison across models</h3>" in mia and "<h3>Units of evaluation</h3>" in mia
    assert "<h4>Per user</h4>" in mia and "<h4>Per canary</h4>" in mia
    assert f"<li>reference: {REF_REASON}</li>" in mia
    summary = html[html.index('<section id="summary">') : html.index('<section id="audited">')]
    assert summary.count("<li><strong>") == 3
    assert "shadow models (LiRA, RMIA)" in html and "<code>models/base</code>" in html


def test_attack_order_merges_models(results):
    assert attack_order(results) == ["loss", "zlib", "reference", "rmia"]
    assert attack_order(results, "canary") == ["exposure"]
    assert attack_order(results, models=["base"]) == ["loss", "zlib"]
    assert attack_order(results, "no-such-unit") == []


def test_roc_grid(results):
    grid = roc_plot(results)
    assert grid.startswith("data:image/png;base64,")
    assert base64.b64decode(grid.split(",", 1)[1]).startswith(b"\x89PNG")
    # Deterministic: byte-identical for the same input, also after a JSON round trip.
    again = Results.model_validate_json(results.model_dump_json())
    assert roc_plot(again) == grid
    width, height = png_size(grid)
    assert width > height > 0  # 4 attacks: one row of 4 panels
    # One model's grid, a unit's grid, a one-panel plot and a larger grid with several rows.
    assert roc_plot(results, models=["non_dp"]) not in (None, grid)
    assert roc_plot(results, unit="canary").startswith("data:image/png;base64,")
    assert roc_plot(results, unit="user") is None  # user-level results carry no ROC here
    assert png_size(roc_plot(results, "rmia")) == (600, 400)
    w2, h2 = png_size(roc_plot(results, columns=2))
    assert w2 < width and h2 > height
    assert roc_plot(_with_dp_violation(results)) != grid  # the violated panel is titled in red


# --------------------------------------------------------------------------- skew-normal, exact exposure, extraction


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _between(text: str, start: str, end: str) -> str:
    """From ``start`` to the first ``end`` after it."""
    i = text.index(start)
    return text[i : text.index(end, i)]


def test_exposure_table_shows_every_estimate_per_model(markdown):
    exposure = _section(markdown, "## Canary exposure", "### Extraction")
    header = "| repetitions | n |" + "".join(f" {m} interpolation | {m} skew-normal | {m} extracted |" for m in MODELS)
    assert header in exposure
    assert "| reference (0) | 3 | 0.40 | 0.44 | 0/3 | 0.60 | 0.66 | 0/3 | 0.50 | 0.55 | 0/3 |" in exposure
    assert "| 4 | 2 | 0.65 | 0.72 | 0/2 | 6.75 | 7.43 | 1/2 | 1.15 | 1.27 | 0/2 |" in exposure
    # No canary was enumerated exactly: no "exact" column.
    assert "exact" not in header and '"exact"' not in exposure
    # One sentence on the fit, per model.
    assert (
        "Skew-normal fit: none of 9 canaries on base, none of 9 on non_dp and 1 of 9 on dp have a "
        "Kolmogorov-Smirnov p-value below 0.01, a poor fit: trust the interpolation value for those canaries."
    ) in exposure


def test_extraction_subsection(markdown):
    extraction = _section(markdown, "### Extraction", "## Membership inference")
    assert "| repetitions | base | non_dp | dp |" in extraction
    assert "| 16 | 0/2 | 2/2 | 0/2 |" in extraction and "| reference (0) | 0/3 | 0/3 | 0/3 |" in extraction
    assert (
        "- **non_dp**: The search recovers the exact secret of both canaries inserted 16 times and 1 of the 2 "
        "inserted 4 times, but of none of those inserted once; it recovers none of the reference canaries, which "
        "were never inserted. It used 12 to 100 forward passes per canary (median 100)."
    ) in extraction
    assert (
        "- **dp**: The search recovers the exact secret of none of the 6 inserted canaries; it recovers none of "
        "the reference canaries, which were never inserted. It used 100 forward passes per canary."
    ) in extraction
    # Only whether a secret matched is recorded: no canary id, hash or secret is shown.
    assert "codes-r" not in markdown and "dddddddddddd" not in markdown


def test_summary_mentions_extracted_canaries(markdown):
    summary = _section(markdown, "## Summary", "## What was audited")
    bullets = {b.split("**")[1]: b for b in summary.splitlines() if b.startswith("- **")}
    assert "; extracted 2 of 2 canaries inserted 16 times (3 of 6 inserted canaries in all);" in bullets["non_dp"]
    assert "; extracted 0 of 2 canaries inserted 16 times;" in bullets["base"]
    assert "; extracted 0 of 2 canaries inserted 16 times;" in bullets["dp"]
    assert "A canary is extracted when" in summary


def test_html_exposure_and_extraction(html):
    exposure = _section(html, '<section id="exposure">', '<section id="mia">')
    for name in MODELS:
        assert f'<th scope="colgroup" colspan="3">{name}</th>' in exposure
    assert exposure.count('<th scope="col">skew-normal</th>') == 3
    assert '<td class="num">≥9.97</td><td class="num">16.00</td><td class="num">2/2</td>' in exposure
    assert '<h3 id="extraction">Extraction</h3>' in exposure
    assert "<li><strong>non_dp</strong>: The search recovers the exact secret of both canaries inserted 16" in exposure
    assert "Skew-normal fit: none of 9 canaries on base" in exposure
    assert exposure.index("data:image/png") < exposure.index('<h3 id="extraction">')


def test_exact_column_only_when_some_canary_has_it(results):
    non_dp = results.models["non_dp"]
    canaries = [
        c.model_copy(update={"exposure_bits_exact": 18.5 + i}) if c.repetitions == 16 else c
        for i, c in enumerate(non_dp.canaries)
    ]
    models = {**results.models, "non_dp": non_dp.model_copy(update={"canaries": canaries})}
    md = render_markdown(results.model_copy(update={"models": models}))
    exposure = _section(md, "## Canary exposure", "### Extraction")
    assert "| base interpolation | base skew-normal | base exact | base extracted |" in exposure
    # Canaries 7 and 8 of non_dp are the two inserted 16 times: exact 25.5 and 26.5, median 26.0.
    assert "| 16 | 2 | 0.95 | 1.04 | — | 0/2 | ≥9.97 | 16.00 | 26.00 | 2/2 | 2.00 | 2.20 | — | 0/2 |" in exposure
    assert '"exact" ranks the secret among every secret of the space' in exposure
    html = render_html(results.model_copy(update={"models": models}))
    assert '<th scope="colgroup" colspan="4">non_dp</th>' in html


def test_renders_without_the_new_fields(results):
    old = _without_new_fields(results)
    md = render_markdown(old)
    html = render_html(old)
    exposure = _section(md, "## Canary exposure", "## Membership inference")
    assert "| repetitions | n | base interpolation | non_dp interpolation | dp interpolation |" in exposure
    assert "| 16 | 2 | 0.95 | ≥9.97 | 2.00 |" in exposure
    assert "skew-normal" not in exposure and "Skew-normal fit" not in exposure and "extracted" not in exposure
    assert "### Extraction\n\nNo extraction search was run." in md
    assert "No extraction search was run." in html
    summary = _section(md, "## Summary", "## What was audited")
    assert "extracted" not in summary
    for section in SECTIONS:
        assert f'<section id="{section}">' in html


def test_extraction_from_groups_alone(results):
    """A results file with exposure groups but no per-canary results still reports extraction."""
    models = {name: m.model_copy(update={"canaries": []}) for name, m in results.models.items()}
    md = render_markdown(results.model_copy(update={"models": models}))
    assert "| 16 | 2 | 0.95 | 1.04 | 0/2 | ≥9.97 | 16.00 | 2/2 | 2.00 | 2.20 | 0/2 |" in md
    assert "Skew-normal fit" not in md  # the KS p-values are per canary
    assert "| 4 | 0/2 | 1/2 | 0/2 |" in md
    assert "extracted 2 of 2 canaries inserted 16 times (3 of 6 inserted canaries in all)" in md
    assert "forward passes" not in md


def test_extraction_sentence_is_generated_from_the_counts():
    assert _extraction_sentence({0: (0, 8), 8: (1, 4), 32: (4, 4)}) == (
        "The search recovers the exact secret of all 4 canaries inserted 32 times and 1 of the 4 inserted 8 times; "
        "it recovers none of the reference canaries, which were never inserted."
    )
    assert _extraction_sentence({0: (0, 24), 1: (0, 4), 2: (1, 4), 8: (4, 4), 16: (4, 4), 32: (4, 4)}) == (
        "The search recovers the exact secret of all 12 canaries inserted 8 times or more and 1 of the 4 inserted "
        "twice, but of none of those inserted once; it recovers none of the reference canaries, which were never "
        "inserted."
    )
    assert _extraction_sentence({1: (1, 1), 4: (1, 1)}) == (
        "The search recovers the exact secret of both inserted canaries."
    )
    sentence = _extraction_sentence({0: (2, 8), 32: (0, 4)})
    assert sentence.startswith(
        "The search recovers the exact secret of none of the 4 inserted canaries; it recovers 2 of the 8 reference "
        "canaries, which were never inserted"
    )


GUESSES = {"codes-r4-0": (2, True), "codes-r1-0": (None, True), "codes-r0-1": (3, False)}
"""non_dp's canaries whose search ranked the own secret below the first guess: (its guess, first guess another's)."""


def _with_guesses(res: Results) -> Results:
    """Guesses recorded for base and non_dp (10 each); dp as an older run recorded it, without them."""
    models = {}
    for name, m in res.models.items():
        canaries = []
        for c in m.canaries:
            guess, other = (1, False) if c.extracted else (None, False)
            if name == "non_dp" and c.id in GUESSES:
                guess, other = GUESSES[c.id]
            found = 0 if name == "base" and c.id == "codes-r16-1" else 10  # one search completed no secret
            update = {"extraction_guesses": 10, "extraction_guesses_found": found, "extraction_guess": guess,
                      "extraction_first_guess_inserted": other}
            canaries.append(c if name == "dp" else c.model_copy(update=update))
        models[name] = m.model_copy(update={"canaries": canaries})
    return res.model_copy(update={"models": models})


def test_extraction_within_guesses_and_another_canary_s_secret_first(results):
    with_guesses = _with_guesses(results)
    md = render_markdown(with_guesses)
    extraction = _section(md, "### Extraction", "## Membership inference")
    columns = ("best-first", "within 10 guesses", "another's secret first")
    assert "| repetitions |" + "".join(f" {m} {c} |" for m in MODELS for c in columns) in extraction
    # non_dp: within 10 guesses 2/2 at 4 times (one at guess 2); dp recorded no guesses: not measured
    assert "| 4 | 0/2 | 0/2 | 0/2 | 1/2 | 2/2 | 1/2 | 0/2 | — | — |" in extraction
    assert "| 1 | 0/2 | 0/2 | 0/2 | 0/2 | 0/2 | 1/2 | 0/2 | — | — |" in extraction
    assert "| reference (0) | 0/3 | 0/3 | 0/3 | 0/3 | 1/3 | 0/3 | 0/3 | — | — |" in extraction
    assert (
        "\"within 10 guesses\": the canary's own secret is among the search's 10 most likely secrets, so an "
        "attacker with that many tries finds it; \"another's secret first\": the first guess was the secret of a "
        "different inserted canary, itself a leak; a dash: not measured."
    ) in extraction
    assert (
        "It used 12 to 100 forward passes" not in extraction
        and "Its first guess took 12 to 100 forward passes per canary (median 100). Within 10 guesses it finds the "
        "secret of 4 of 6 inserted canaries and 1 of 3 reference canaries. For 2 of the 9 searched canaries its "
        "first guess was the secret of another inserted canary, which the model thus gives away from a different "
        "prefix." in extraction
    )
    assert (
        "0 of 3 reference canaries. No first guess was the secret of another inserted canary. For 1 of the 9 "
        "canaries the search completed no secret within its forward-pass budget: a miss there is inconclusive, not "
        "evidence that the secret is hard to guess.\n"
    ) in extraction
    assert "- **dp**: The search recovers the exact secret of none of the 6 inserted canaries; it recovers none of " \
        "the reference canaries, which were never inserted. It used 100 forward passes per canary.\n" in extraction
    html = render_html(with_guesses)
    assert '<th scope="colgroup" colspan="3">non_dp</th>' in _between(html, '<h3 id="extraction">', "</table>")
    assert (
        '<tr><th scope="row">4</th><td class="num">0/2</td><td class="num">0/2</td><td class="num">0/2</td>'
        '<td class="num">1/2</td><td class="num">2/2</td><td class="num">1/2</td><td class="num">0/2</td>'
        '<td class="num">—</td><td class="num">—</td></tr>'
    ) in html
    assert "another&#39;s secret first&#34;: the first guess was the secret of a different inserted canary" in html
    # Only counts are shown: no canary id, hash or secret, and the strict columns are as before.
    for text in (md, html):
        assert "codes-r" not in text and "dddddddddddd" not in text
    assert "| 16 | 0/2 | 2/2 | 0/2 |" in render_markdown(results)
    assert "within 10 guesses" not in render_markdown(results) and "another's" not in render_markdown(results)


def test_guess_fields_survive_results_json(results):
    with_guesses = _with_guesses(results)
    again = Results.model_validate_json(with_guesses.model_dump_json())
    c = next(c for c in again.models["non_dp"].canaries if c.id == "codes-r4-0")
    assert (c.extraction_guesses, c.extraction_guess, c.extraction_first_guess_inserted) == (10, 2, True)
    old = next(c for c in again.models["dp"].canaries if c.id == "codes-r4-0")
    assert (old.extraction_guesses, old.extraction_guess, old.extraction_first_guess_inserted) == (None, None, None)
    assert render_markdown(again) == render_markdown(with_guesses)


def _inconclusive(res: Results, model: str = "dp") -> Results:
    """Every best-first search on ``model`` found no complete secret within its budget (100 passes, all spent)."""
    update = {"extraction_guesses": 10, "extraction_guesses_found": 0, "extraction_guess": None,
              "extraction_first_guess_inserted": None, "extracted": False, "extraction_expansions": 100}
    m = res.models[model]
    canaries = [c.model_copy(update=update) for c in m.canaries]
    return res.model_copy(update={"models": {**res.models, model: m.model_copy(update={"canaries": canaries})}})


def _verdicts(md: str) -> dict[str, str]:
    verdict = _section(md, "### Verdict", "### Key figures")
    return {p.split("**")[1]: p for p in verdict.split("\n\n") if p.startswith("**")}


def _key_figures(md: str) -> dict[str, str]:
    summary = _section(md, "### Key figures", "## What was audited")
    return {b.split("**")[1]: b for b in summary.splitlines() if b.startswith("- **")}


def _finding_rows(md: str) -> dict[str, str]:
    findings = _section(md, "## Findings", "## Canary exposure")
    return {line.split(" | ")[0][2:]: line for line in findings.splitlines() if line.startswith("| ")}


def test_findings_and_summary_count_guesses_and_other_canaries_secrets(results):
    md = render_markdown(_with_guesses(results))
    rows = _finding_rows(md)
    # non_dp: strict 3/6, within 10 guesses 4/6 (codes-r4-0 at guess 2); reference 1/3 within 10 (codes-r0-1)
    assert (
        "| 3/6 inserted canaries (4/6 within 10 guesses); baseline: 0/3 never-inserted canaries (1/3 within 10 "
        "guesses); guessing: at most 2e-06 per canary ▲ |"
    ) in rows["Canary extraction"]
    # base: one search completed no secret: said beside the counts, and the miss is not read as a negative
    assert (
        "| 0/6 inserted canaries (0/6 within 10 guesses; no complete secret in 1 of 9 searches); baseline: 0/3 "
        "never-inserted canaries (0/3 within 10 guesses); guessing: at most 2e-06 per canary |"
    ) in rows["Canary extraction"]
    # another inserted canary's secret first: non_dp 2 of 9 searches (codes-r4-0, codes-r1-0); chance is
    # 6 inserted secrets / 10**6 for a reference canary; dp recorded no guesses (an older run): a dash
    assert (
        "| 0/9 searches (0/6 inserted, 0/3 never-inserted canaries); baseline: chance 6e-06 per search | "
        "2/9 searches (2/6 inserted, 0/3 never-inserted canaries); baseline: chance 6e-06 per search ▲ | — |"
    ) in rows["Other records' secrets"]
    verdicts = _verdicts(md)
    assert (
        "It gives out memorised secrets of other records: for 2 of 9 canaries, searched from their own prefix, its "
        "first guess was the secret of a different inserted canary."
    ) in verdicts["non_dp"]
    assert "The secrets of 3 of 6 planted canaries can be extracted from it, 4 of 6 within 10 guesses." in (
        verdicts["non_dp"]
    )
    assert "No leakage detected: none of the 7 measurements" in verdicts["base"]
    assert "other records' secrets" in verdicts["base"]
    figures = _key_figures(md)
    assert (
        "; extracted 2 of 2 canaries inserted 16 times (3 of 6 inserted canaries in all); 4 of 6 inserted canaries "
        "within 10 guesses; for 2 of 9 searched canaries the first guess was another inserted canary's secret;"
    ) in figures["non_dp"]
    assert "; 0 of 6 inserted canaries within 10 guesses; strongest attack" in figures["base"]
    assert "within 10 guesses" not in figures["dp"] and "another" not in figures["dp"]
    assert "Within 10 guesses: the secret is among the search's 10 most likely secrets" in md
    comparison = _section(md, "## DP vs non-DP", "## Limitations")
    assert "| 3/6 (4/6 within 10 guesses); another's secret first in 2/9 searches |" in comparison
    assert "| 0/6 |" in comparison  # dp: no guesses recorded, as before
    edpb = _section(md, "### EDPB", "### HIPAA")
    assert "canary extraction (3/6 inserted canaries); other records' secrets (2/9 searches)" in edpb


def test_a_search_that_completed_no_secret_is_inconclusive_not_a_negative(results):
    res = _inconclusive(_with_guesses(results))
    md = render_markdown(res)
    dp = _verdicts(md)["dp"]
    assert (
        "Inconclusive: the best-first extraction search found no complete secret within its budget of 100 forward "
        "passes for any of the 9 canaries, so it shows neither a leak nor its absence."
    ) in dp
    assert "No leak beyond the baseline in canary exposure, untargeted extraction" in dp  # not canary extraction
    assert "could be extracted" not in dp and "other records' secrets" not in dp
    rows = _finding_rows(md)
    assert rows["Canary extraction"].endswith(
        "| inconclusive (no complete secret in 9 searches); baseline: 0/3 never-inserted canaries (0/3 within 10 "
        "guesses) |"
    )
    assert rows["Other records' secrets"].endswith("| — |")  # no search completed a first guess
    assert (
        "; extraction inconclusive: the best-first search found no complete secret within its budget of 100 "
        "forward passes; strongest attack"
    ) in _key_figures(md)["dp"]
    extraction = _section(md, "### Extraction", "## Membership inference")
    assert (
        "- **dp**: The best-first search found no complete secret within its budget of 100 forward passes for any "
        "of the 9 canaries: its result is inconclusive, neither a leak nor evidence that the secrets are hard to "
        "guess.\n"
    ) in extraction
    assert "| inconclusive (0/6: no complete secret within the search budget) |" in md
    edpb = _section(md, "### EDPB", "### HIPAA")
    assert (
        "Inconclusive (the attack found nothing either way, which is not evidence of no leak): canary extraction "
        "(no complete secret in 9 searches)."
    ) in edpb
    # with a beam search, which always completes, the extraction was measured (by it), as the release gate reads it
    md = render_markdown(_with_beam(res))
    dp = _verdicts(md)["dp"]
    assert "Inconclusive" not in dp and "extraction inconclusive" not in _key_figures(md)["dp"]
    assert "No leak beyond the baseline in canary extraction" in dp
    assert ("| 0/6 inserted canaries (0/6 within 10 guesses; the best-first search completed no secret in 9 of 9 "
            "searches: the beam search's results stand); baseline: 0/3 never-inserted canaries (0/3 within 10 "
            "guesses); guessing: at most 2e-06 per canary |") in _finding_rows(md)["Canary extraction"]
    assert "**dp**: The best-first search found no complete secret" not in md
    assert ("A beam search over the same format ranks the secret first for 0 of 6 inserted canaries and 0 of 3 "
            "reference canaries.") in _section(md, "### Extraction", "## Membership inference")
    # a beam search that extracts a canary makes the result conclusive
    beam_hit = _with_beam(res)
    dp_model = beam_hit.models["dp"]
    canaries = [c.model_copy(update={"extracted_beam": c.id == "codes-r16-0"}) for c in dp_model.canaries]
    beam_hit = beam_hit.model_copy(
        update={"models": {**beam_hit.models, "dp": dp_model.model_copy(update={"canaries": canaries})}}
    )
    md = render_markdown(beam_hit)
    assert "Inconclusive" not in _verdicts(md)["dp"]
    assert "The secrets of 1 of 6 planted canaries can be extracted from it." in _verdicts(md)["dp"]


def test_extraction_guesses_from_groups_alone(results):
    """A results file with exposure groups only (carrying the guess totals) shows the same counts."""
    res = _inconclusive(_with_guesses(results))
    models = {
        name: m.model_copy(update={"canaries": [], "exposure_by_repetition": groups_from_canaries(m.canaries)})
        for name, m in res.models.items()
    }
    md = render_markdown(res.model_copy(update={"models": models}))
    rows = _finding_rows(md)
    assert "| 3/6 inserted canaries (4/6 within 10 guesses); baseline: 0/3 never-inserted canaries (1/3 within 10 " \
        "guesses); guessing: at most 2e-06 per canary ▲ |" in rows["Canary extraction"]
    assert "| inconclusive (no complete secret in 9 searches); baseline:" in rows["Canary extraction"]
    # without per-canary results the chance is taken over all inserted secrets of the spec (6 / 10**6)
    assert "2/9 searches (2/6 inserted, 0/3 never-inserted canaries); baseline: chance 6e-06 per search ▲" in (
        rows["Other records' secrets"]
    )
    assert "within 10 guesses; for 2 of 9 searched canaries the first guess was another inserted canary's secret" in (
        _key_figures(md)["non_dp"]
    )
    # the budget is per canary: without canaries it is not stated
    assert "; extraction inconclusive: the best-first search found no complete secret within its budget;" in (
        _key_figures(md)["dp"]
    )
    extraction = _section(md, "### Extraction", "## Membership inference")
    # dp: no search completed a first guess, so "another's secret first" was not measured there
    assert "| 4 | 0/2 | 0/2 | 0/2 | 1/2 | 2/2 | 1/2 | 0/2 | 0/2 | — |" in extraction


def test_results_without_guess_fields_render_as_before(results):
    md, html = render_markdown(results), render_html(results)
    assert "Other records' secrets" not in md and "Other records&#39; secrets" not in html
    assert "nconclusive" not in md and "nconclusive" not in html and "within 10" not in md
    assert ("| 3/6 inserted canaries; baseline: 0/3 never-inserted canaries; guessing: at most 2e-06 per canary "
            "▲ |") in md
    assert "| ≥9.97 bits | 3/6 |" in md


def test_guess_findings_show_no_canary_detail(results, tmp_path):
    res = _with_beam(_inconclusive(_with_guesses(results), "base"))
    paths = write_reports(res, tmp_path)
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        for m in results.models.values():
            for c in m.canaries:
                assert c.id not in text, (path.name, c.id)


def test_exposure_plot_marks_extracted_canaries(results):
    plot = exposure_plot(results)
    assert plot.startswith("data:image/png;base64,")
    assert exposure_plot(Results.model_validate_json(results.model_dump_json())) == plot
    assert exposure_plot(_without_new_fields(results)) != plot


# --------------------------------------------------------------------------- memorization, extraction, PII, eps


FAILED = "FAILED DP GUARANTEE"


def test_new_sections_are_in_both_reports(html, markdown):
    for sid in NEW_SECTIONS:
        assert f'<section id="{sid}">' in html
    for heading in (
        "## Findings",
        "## Discoverable memorization",
        "## Untargeted extraction",
        "## PII extraction",
        "## PII reconstruction",
        "## Empirical privacy",
        "## DP vs non-DP comparison",
        "## Compliance",
    ):
        assert heading in markdown
    # The issue's order: summary, what was audited, findings, comparison, limitations, compliance.
    order = ["## Summary", "## What was audited", "## Findings", "## DP vs non-DP comparison", "## Limitations"]
    positions = [markdown.index(h) for h in [*order, "## Compliance"]]
    assert positions == sorted(positions)
    assert html.index('<section id="limitations">') < html.index('<section id="compliance">')


def test_verdict_per_model(markdown, html):
    verdict = _section(markdown, "### Verdict", "### Key figures")
    paragraphs = {p.split("**")[1]: p for p in verdict.split("\n\n") if p.startswith("**")}
    assert list(paragraphs) == list(MODELS)
    assert paragraphs["base"].startswith("**base** (trained without DP): No leakage detected: none of the 6")
    assert "This is evidence, not proof, that it does not leak (see Limitations)." in paragraphs["base"]
    non_dp = paragraphs["non_dp"]
    assert non_dp.startswith("**non_dp** (trained without DP): It leaks its training data.")
    assert "the rmia attack's AUC interval lies above 0.5, and at 1% FPR it finds 6.0% of them (chance: 1%)" in non_dp
    assert "The secrets of 3 of 6 planted canaries can be extracted from it." in non_dp
    assert "It completes 6.0% of training records word for word (32 tokens from a 32-token prompt)" in non_dp
    assert "it writes out text of 25 distinct training records (40 of 800 unique samples)" in non_dp
    assert "Its samples contain 7 distinct personal-data values of the training records (14.0% of 50)." in non_dp
    assert "picks the true value among 20 candidates 50.0% of the time (held-out 5.0%, chance 5.0%)" in non_dp
    dp = paragraphs["dp"]
    assert dp.startswith("**dp** (trained with DP at ε = 7.98):")
    # The DP model's membership signal is weak but its AUC interval excludes 0.5; its approximate matches too.
    assert ("It completes 5.0% of training records nearly word for word (BLEU above 0.75, 32 tokens from a "
            "32-token prompt)") in dp
    assert "No leak beyond the baseline in canary extraction, canary exposure, untargeted extraction" in dp
    summary_html = _section(html, '<section id="summary">', '<section id="audited">')
    assert summary_html.count('<p class="verdict ') == 3
    assert '<p class="verdict clean"><strong>base</strong>' in summary_html
    assert '<p class="verdict leaks"><strong>non_dp</strong>' in summary_html


def test_findings_table(markdown, html):
    findings = _section(markdown, "## Findings", "## Canary exposure")
    assert "| measurement | what it means | base | non_dp | dp |" in findings
    rows = {line.split(" | ")[0][2:]: line for line in findings.splitlines() if line.startswith("| ")}
    assert set(rows) >= {
        "Membership inference",
        "Canary extraction",
        "Canary exposure",
        "Discoverable memorization",
        "Untargeted extraction",
        "PII extraction",
        "PII reconstruction",
        "Empirical ε",
    }
    mia = rows["Membership inference"]
    assert "chance is 1%" in mia  # the plain meaning
    assert "| 6.0% [4.0%, 9.0%] (rmia, AUC 0.900 [0.85, 0.95]); baseline: 1% (chance) ▲ |" in mia
    assert ("| 3/6 inserted canaries; baseline: 0/3 never-inserted canaries; guessing: at most 2e-06 per canary "
            "▲ |") in rows["Canary extraction"]
    assert "| — |" in rows["Untargeted extraction"]  # not run on the base model
    assert (
        "| 1 training record (1 of 950 unique samples); baseline: 1 sample matches held-out records |"
        in rows["Untargeted extraction"]
    )
    assert (
        "top-1 50.0% [43.1%, 56.9%] (name, 20 candidates); baseline: held-out 5.0%, chance 5.0% ▲"
        in rows["PII reconstruction"]
    )
    assert "ε ≥ 0.80 (one_run, α = 0.05); baseline: accountant ε = 7.98 |" in rows["Empirical ε"]
    section = _section(html, '<section id="findings">', '<section id="exposure">')
    assert '<td class="signal">3/6 inserted canaries ▲<br><span class="note">baseline: 0/3 never-inserted' in section


def test_memorization_section(markdown, html):
    mem = _section(markdown, "## Discoverable memorization", "## Untargeted extraction")
    assert "greedy decoding" in mem and "held-out records (the baseline" in mem
    assert "### Prompt k = 32 tokens, continuation n = 32 tokens" in mem
    assert "### Prompt k = 64 tokens, continuation n = 32 tokens" in mem
    assert (
        "| non_dp ▲ | 200 vs 200 | 6.0% [3.0%, 10.0%] vs 0% [0%, 1.9%] | 22.0% vs 10.0% | 8.0% vs 0% | "
        "0.270 vs 0.150 | 3 |"
    ) in mem
    assert "| base | 200 vs 200 | 0% [0%, 1.9%] vs 0% [0%, 1.9%] | 10.0% vs 10.0% | 0% vs 0% |" in mem
    assert "| dp | — | — | — | — | — | — |" in mem  # no k = 64 setting on the DP model
    assert "approximate match (BLEU > 0.75)" in mem and "skipped (too short)" in mem
    assert "<h2>Discoverable memorization</h2>" in html


def test_untargeted_section(markdown):
    u = _section(markdown, "## Untargeted extraction", "## PII extraction")
    assert "| distinct training records reproduced | — | 25 | 1 |" in u
    assert "| baseline: match held-out records | — | 2 | 1 |" in u
    assert "| unique after removing near duplicates | — | 800 | 950 |" in u
    assert "| reproduce training text (not in the public corpus) | — | 40 | 1 |" in u
    assert "| samples generated | — | 1,000 × 64 tokens | 1,000 × 64 tokens |" in u
    assert "| perplexity, top 10 | — | 90.0% vs 0% | 0% vs 0% |" in u
    assert "| perplexity, top 100 | — | 30.0% vs 1.0% | 1.0% vs 1.0% |" in u
    assert "No sample text is kept." in u


def test_pii_extraction_section(markdown):
    pii = _section(markdown, "## PII extraction", "## PII reconstruction")
    assert "| recall (leaked / distinct training PII) | 0% (0/50) | 14.0% (7/50) | 0% (0/50) |" in pii
    assert "| precision | 0% | 70.0% | 0% |" in pii
    assert "| without the baseline filter: recall / precision | 4.0% / 40.0% | 18.0% / 75.0% | 4.0% / 40.0% |" in pii
    assert "| training PII removed by the baseline filter | 2 | 2 | 2 |" in pii
    assert (
        "| type | base recall | base precision | non_dp recall | non_dp precision | dp recall | dp precision |" in pii
    )
    assert "| email | 0% (0/30); unfiltered 3.3% | 0%; unfiltered 20.0% | 16.7% (5/30); unfiltered 20.0% |" in pii
    assert pii.count("| email |") == 1 and pii.count("| phone |") == 1
    assert "- non_dp: names are detected from the training annotations only" in pii


def test_pii_reconstruction_section(markdown):
    rec = _section(markdown, "## PII reconstruction", "## Empirical privacy")
    assert (
        "| non_dp: training records | name | 200 | 20 | 50.0% [43.1%, 56.9%] | 5.0% | 0.600 (0.180) | "
        "6.2 (chance 10.5) | 0% |"
    ) in rec
    assert "| non_dp: held-out (baseline) | name | 200 | 20 | 5.0% [2.7%, 9.0%] | 5.0% |" in rec


def test_empirical_privacy_section(markdown, html):
    emp = _section(markdown, "## Empirical privacy", "## Utility")
    assert (
        "| dp | one_run | ≥ 0.80 | 0.05, δ = 1.0e-05 | 7.98 | 3.47 | 70/100 (m = 1,000) | "
        "cannot test the claim (its best possible is below the accountant's ε) |"
    ) in emp
    assert "| non_dp | threshold | ≥ 2.10 | 0.05, δ = 1.0e-05 | none (non-private) | — | 380/400 (m = 400) |" in emp
    assert "- dp, one_run: guesses on the top and bottom 50 canaries" in emp
    assert "lower bound" in emp and "Best possible" in emp
    assert FAILED not in markdown and FAILED not in html and "failed-dp" not in html.split("</style>")[1]


def test_failed_dp_guarantee_is_loud_everywhere():
    from leakaudit.report.modelcard import model_card

    res = _with_failed_dp(make_results())
    md, html = render_markdown(res), render_html(res)
    summary = _section(md, "## Summary", "## What was audited")
    assert f"> **⚠ {FAILED}, dp:** an empirical lower bound on ε exceeds the accountant's ε" in summary
    assert f"**dp** (trained with DP at ε = 7.98): {FAILED}: the measurements prove ε ≥ 9.10, above the ε = 7.98" in (
        summary
    )
    emp = _section(md, "## Empirical privacy", "## Utility")
    assert f"> **⚠ {FAILED}, dp:** the one_run audit proves ε ≥ 9.10" in emp
    assert f"| **⚠ {FAILED}** |" in emp
    comparison = _section(md, "## DP vs non-DP comparison", "## Limitations")
    assert f"| ⚠ ≥ 9.10: {FAILED} |" in comparison
    assert f"⚠ {FAILED}: Empirical ε ε ≥ 9.10" in _section(md, "## Compliance", "### EDPB")
    # HTML: a red banner in the summary and in the section, the row and the comparison cell in red.
    summary_html = _section(html, '<section id="summary">', '<section id="audited">')
    assert f'<div class="failed-dp" role="alert"><strong>⚠ {FAILED}, dp:</strong>' in summary_html
    assert '<p class="verdict failed"><strong>dp</strong>' in summary_html
    emp_html = _section(html, '<section id="empirical">', '<section id="utility">')
    assert '<div class="failed-dp" role="alert">' in emp_html and '<tr class="failed">' in emp_html
    assert f'<td class="num failed">⚠ ≥ 9.10: {FAILED}</td>' in _between(html, '<section id="comparison">', "</table>")
    assert f"{FAILED}" in model_card(res, "dp") and "dp_guarantee_failed: true" in model_card(res, "dp")


def test_comparison_table(markdown):
    comparison = _section(markdown, "## DP vs non-DP comparison", "## Limitations")
    assert (
        "| model | ε (δ) | best TPR@1% FPR | max canary exposure | canaries extracted | memorization (exact) | "
        "PII recall | empirical ε |"
    ) in comparison
    assert ("| base | none (non-private) | 2.1% (zlib) | 1.20 bits | 0/6 | 0% vs 0% held-out (k=32, n=32) | 0% | — |"
            in comparison)
    assert (
        "| non_dp | none (non-private) | 6.0% (rmia) | ≥9.97 bits | 3/6 | 6.0% vs 0% held-out (k=32, n=32) | 14.0% | "
        "≥ 2.10 |" in comparison
    )
    assert ("| dp | 7.98 (δ = 1.0e-05) | 2.6% (rmia) | 2.20 bits | 0/6 | 0.50% vs 0% held-out (k=32, n=32) | 0% | "
            "≥ 0.80 |") in comparison
    assert "Trained with DP: dp; without: base and non_dp." in comparison


def test_extraction_table_with_beam_search():
    res = _with_beam(make_results())
    md, html = render_markdown(res), render_html(res)
    extraction = _section(md, "### Extraction", "## Membership inference")
    header = "| repetitions |" + "".join(f" {m} best-first | {m} beam |" for m in MODELS)
    assert header in extraction
    # One more canary inserted once is ranked first by the beam search on non_dp.
    assert "| 1 | 0/2 | 0/2 | 0/2 | 1/2 | 0/2 | 0/2 |" in extraction
    assert "| 16 | 0/2 | 0/2 | 2/2 | 2/2 | 0/2 | 0/2 |" in extraction
    assert "A beam search over the same format ranks the secret first for 4 of 6 inserted canaries and 0 of 3" in (
        extraction
    )
    # Either search counts as extracted in the findings and the comparison.
    assert ("| 4/6 inserted canaries; baseline: 0/3 never-inserted canaries; guessing: at most 2e-06 per canary "
            "▲ |") in md
    assert "| ≥9.97 bits | 4/6 |" in md
    exposure = _section(html, '<h3 id="extraction">', '<section id="mia">')
    assert exposure.count('<th scope="colgroup" colspan="2">') == 3
    assert "codes-r1-0" not in md and "codes-r1-0" not in html  # canary ids are not shown


def test_new_sections_render_without_the_new_fields(results):
    old = _without_new_fields(results)
    md, html = render_markdown(old), render_html(old)
    for heading in ("## Discoverable memorization", "## Untargeted extraction", "## PII extraction", "## PII recon"):
        assert "Not measured in this run" in _between(md, heading, "\n## E" if "recon" in heading else "\n## P")
    assert md.count("Not measured in this run") == 4
    assert "No empirical bound on ε was computed in this run." in md and "No empirical bound" in html
    assert html.count("<p>Not measured in this run") == 4
    # and what it would take: the flag, or the corpus field
    assert "--memorization K:N`" in md and "`--samples N`" in md and md.count("a `pii` field") == 2
    comparison = _section(md, "## DP vs non-DP comparison", "## Limitations")
    assert "| base | none (non-private) | 2.1% (zlib) | 1.20 bits | — | — | — | — |" in comparison
    findings = _section(md, "## Findings", "## Canary exposure")
    assert "Discoverable memorization" not in findings and "Empirical ε" not in findings
    # Older results that lack the new keys altogether validate and render the same.
    data = old.model_dump(mode="json")
    for m in data["models"].values():
        for key in NEW_RESULT_FIELDS:
            del m[key]
        for c in m["canaries"]:
            del c["extracted_beam"]
    assert render_markdown(Results.model_validate(data)) == md


def test_renders_a_bare_model():
    bare = Results(run=_run(), models={"only": ModelResult(privacy=PrivacyRecord())})
    md, html = render_markdown(bare), render_html(bare)
    assert "No leakage measurement was recorded for this model." in md
    assert "No leakage measurement was recorded in this run." in md
    assert "| only | none (non-private) | — | — | — | — | — | — |" in md
    for sid in (*SECTIONS, *NEW_SECTIONS):
        assert f'<section id="{sid}">' in html


def test_limitations(markdown, html):
    lim = _section(markdown, "## Limitations", "## Compliance")
    assert "The attacks bound leakage from below" in lim
    assert "A finite audit cannot certify that a model does not leak" in lim
    assert "with 1/200 = 0.50%, a TPR at a smaller FPR rests on zero false positives" in lim
    assert "Canaries measure worst-case memorisation of the inserted random secrets only" in lim
    assert "An empirical ε is a lower bound" in lim and "PII detection misses some values" in lim
    assert "<li>The attacks bound leakage from below" in _between(html, '<section id="limitations">', "</section>")


def test_compliance_section(markdown, html):
    comp = markdown[markdown.index("## Compliance") :]
    assert "> Not legal advice: this section makes no legal determination." in comp
    for title in (
        "### GDPR Art. 35: data-protection impact assessment (DPIA)",
        "### EDPB Opinion 28/2024: can the model be considered anonymous?",
        "### HIPAA de-identification: expert determination (45 CFR 164.514(b)(1))",
        "### EU AI Act Art. 10: data and data governance (high-risk systems)",
    ):
        assert title in comp
    assert "very small" in comp and "insignificant" in comp and "membership and attribute inference" in comp
    edpb = _section(comp, "### EDPB", "### HIPAA")
    assert "- **non_dp** (leakage measured): Above its baseline: membership inference (6.0% [4.0%, 9.0%]);" in edpb
    # the base model's "other records' secrets" was not measured: the status and a line say so
    assert ("- **base** (no leakage measured in what was run): At its baseline (no leak found by these attacks): "
            "membership ") in edpb
    assert "Not measured in this audit: other records' secrets." in edpb
    gdpr = _section(comp, "### GDPR", "### EDPB")
    assert "- **dp** (leakage measured): Safeguard: DP-SGD at ε = 7.98, δ = 1.0e-05 (prv accountant)." in gdpr
    assert "- Audit record: configuration: sha256 aaaaaaaaaaaa, seed 7; data: members.jsonl bbbbbbbbbbbb" in gdpr
    section = html[html.index('<section id="compliance">') :]
    assert '<p class="legal">Not legal advice: this section makes no legal determination.' in section
    assert section.count("<h3 id=") == 4


def test_table_of_contents_and_print_stylesheet(html):
    nav = _section(html, '<nav class="toc"', "</nav>")
    for sid in (*SECTIONS, *NEW_SECTIONS):
        assert f'<a href="#{sid}">' in nav
    css = _section(html, "@media print", "</style>")
    assert "break-before: page" in css and "break-inside: avoid" in css
    assert "thead { display: table-header-group; }" in css
    for sid in ("#audited", "#findings", "#comparison", "#limitations", "#compliance"):
        assert sid in css


def test_statistics_helpers_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for a, n1, b, n2 in [(12, 200, 0, 200), (5, 200, 0, 200), (1, 24, 0, 24), (3, 10, 4, 12), (0, 5, 0, 5)]:
        expected = stats.fisher_exact([[a, n1 - a], [b, n2 - b]], alternative="greater").pvalue
        assert fisher_greater(a, n1, b, n2) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    for k, n, q in [(7, 113, 1 / 32), (0, 10, 0.1), (10, 10, 0.5), (50, 200, 0.05)]:
        assert binomial_greater(k, n, q) == pytest.approx(stats.binom.sf(k - 1, n, q), rel=1e-9, abs=1e-12)
    lo, hi = wilson(0.5, 200)
    assert lo == pytest.approx(0.4314, abs=1e-4) and hi == pytest.approx(0.5686, abs=1e-4)
    assert wilson(0.0, 127)[0] == 0.0 and wilson(0.3, 0) == (0.0, 1.0)


def test_no_secret_or_canary_detail_in_any_artifact(results, tmp_path):
    """Reports and model cards show counts only: no canary id or free text of a sample."""
    paths = write_reports(_with_beam(results), tmp_path)
    for path in paths.values():
        text = path.read_text(encoding="utf-8")
        for m in results.models.values():
            for c in m.canaries:
                assert c.id not in text, (path.name, c.id)


# --------------------------------------------------------------------------- JSON Schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "results.schema.json"
REGENERATE = "regenerate it with: python -m leakaudit.report.render --write-schema"


def test_schema_file_is_in_sync_with_the_models():
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE} is missing; {REGENERATE}"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == results_schema_text(), (
        f"docs/results.schema.json differs from Results.model_json_schema(); {REGENERATE}"
    )
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == Results.model_json_schema()


@pytest.mark.parametrize("variant", ["full", "with_beam", "failed_dp", "old"])
def test_fixture_validates_against_the_schema(variant):
    res = {
        "full": make_results,
        "with_beam": lambda: _with_beam(make_results()),
        "failed_dp": lambda: _with_failed_dp(make_results()),
        "old": lambda: _without_new_fields(make_results()),
    }[variant]()
    data = json.loads(res.model_dump_json())
    try:
        import jsonschema
    except ImportError:  # not a dependency: pydantic validates the same models the schema is generated from
        assert Results.model_validate(data) == res
        return
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)
    bad = json.loads(json.dumps(data))
    bad["models"]["dp"]["privacy"]["secret"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_write_schema(tmp_path):
    from leakaudit.report.render import main, write_schema

    assert write_schema(tmp_path / "s.json").read_text(encoding="utf-8") == results_schema_text()
    assert main(["--write-schema", str(tmp_path / "t.json")]) == 0
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == results_schema_text()


def test_findings_without_intervals_are_shown_untested():
    """Older attack results without intervals: the numbers are shown, no leak or no-leak claim is made from them."""
    res = make_results()
    models = {
        n: m.model_copy(
            update={"mia_by_unit": {}, "mia": {k: r.model_copy(update={"auc_ci": None}) for k, r in m.mia.items()}}
        )
        for n, m in res.models.items()
    }
    md = render_markdown(res.model_copy(update={"models": models}))
    verdict = _section(md, "### Verdict", "### Key figures")
    assert (
        "Shown without a test against a baseline: the strongest membership attack (zlib)"
        in (verdict)
    )
    assert "the largest exposure of a planted secret is 1.20 bits (max 1.10 bits never inserted)" in verdict
    assert "An attacker can tell" not in verdict and "membership inference does no better" not in verdict
    edpb = _section(md, "### EDPB", "### HIPAA")
    assert "Measured without a test against its baseline: membership inference (2.1% [0.10%, 5.1%])" in edpb


def test_summary_counts_beam_extractions():
    md = render_markdown(_with_beam(make_results()))
    summary = _section(md, "### Key figures", "## What was audited")
    assert "4 of 6 inserted canaries extracted by either search (with beam)" in summary
    assert "either search" not in _section(render_markdown(make_results()), "### Key figures", "## What was audited")


def test_privacy_table_shows_the_dp_training_settings(markdown):
    privacy = _section(markdown, "## Privacy", "## Findings")
    assert "| clipping | — | — | per_layer |" in privacy
    assert "| per-sample gradients (Opacus) | — | — | ghost |" in privacy
    assert "LoRA rank" not in privacy  # no model recorded one
    old = render_markdown(
        _without_new_fields(make_results()).model_copy(
            update={
                "models": {
                    n: m.model_copy(update={"privacy": PrivacyRecord()}) for n, m in make_results().models.items()
                }
            }
        )
    )
    assert "| clipping |" not in old


def test_preflight_warnings_are_listed_and_capped():
    warnings = [f"codes-r{i}: inserted 4 time(s) but found 3 time(s) in the training data" for i in range(8)]
    md = render_markdown(make_results().model_copy(update={"run": _run(preflight_warnings=warnings)}))
    audited = _section(md, "## What was audited", "## Privacy")
    assert audited.count("| pre-flight warning |") == 6
    assert "| pre-flight warning | codes-r0: inserted 4 time(s) but found 3 time(s) in the training data |" in audited
    assert "| pre-flight warning | … and 3 more (all in results.json) |" in audited


def test_one_canary_within_several_guesses_is_not_a_leak_by_itself(results):
    """With G guesses chance finds a secret G times as often as with one: the never-inserted canaries are the
    baseline (Fisher's test), not the zero-hits shortcut that holds for a single guess."""
    from leakaudit.report.findings import model_findings

    res = _with_guesses(results)
    base = res.models["base"]
    hit_one = [c.model_copy(update={"extraction_guess": 7 if c.id == "codes-r16-0" else None,
                                    "extraction_guesses_found": 10}) for c in base.canaries]
    res = res.model_copy(update={"models": {**res.models, "base": base.model_copy(update={"canaries": hit_one})}})
    finding = {f.key: f for f in model_findings(res.models["base"], res)}["canary_extraction"]
    assert finding.signal is False and "(1 of 6 within 10 guesses)" in finding.sentence


def test_holm_known_answer():
    from leakaudit.report.stats import holm

    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.5, "b": 0.9}) == pytest.approx({"a": 1.0, "b": 1.0})
    assert holm({}) == {}


def _never_saw(res, rng, attacks: int = 11, n: int = 100):
    """The base model of ``res`` with ``attacks`` membership attacks of a model that never saw the data:
    members' and non-members' scores from one distribution."""
    from leakaudit.attacks.metrics import attack_result

    mia = {f"attack{i}": attack_result(rng.normal(size=n), rng.normal(size=n), n_boot=0) for i in range(attacks)}
    return res.models["base"].model_copy(update={"mia": mia, "mia_by_unit": {}})


def test_a_model_that_never_saw_the_data_is_rarely_said_to_leak():
    """Eleven attacks, each tested alone at 5%, call a model that never saw its data leaky about 40% of the time
    (the AUC-interval rule used before the correction, 2.5% one-sided each, about 22%); corrected, the verdict
    says so at most 5% of the time (1% in this simulation: Bonferroni is conservative)."""
    from leakaudit.report.findings import model_findings

    res = make_results()
    rng = np.random.default_rng(11)
    reps, leaky, uncorrected = 300, 0, 0
    for _ in range(reps):
        model = _never_saw(res, rng)
        findings = model_findings(model, res)
        leaky += any(f.signal for f in findings)
        uncorrected += any(r.auc_pvalue < SIGNIFICANCE for r in model.mia.values())
    assert leaky / reps <= 0.06
    assert uncorrected / reps >= 0.3  # what the correction removes


def test_a_strong_attack_survives_the_correction_and_is_quoted():
    from leakaudit.attacks.metrics import attack_result
    from leakaudit.report.findings import model_findings

    res = make_results()
    rng = np.random.default_rng(5)
    model = _never_saw(res, rng)
    model.mia["lira"] = attack_result(rng.normal(1.0, 1, 100), rng.normal(size=100), n_boot=0)
    f = next(f for f in model_findings(model, res) if f.key == "mia")
    assert f.signal and f.p_adjusted < SIGNIFICANCE and f.p_value <= f.p_adjusted
    assert "the lira attack separates them beyond chance (corrected for 12 attacks)" in f.sentence


def _correlated_attacks(rng, shift: float, attacks: int = 11, n: int = 300):
    """``attacks`` near-copies of one attack (as LOSS, zlib and Min-K% are), members shifted by ``shift``:
    (the attacks' scores, the membership labels)."""
    member = np.arange(2 * n) < n
    common = rng.normal(size=2 * n) + shift * member
    return {f"attack{i}": common + 0.2 * rng.normal(size=2 * n) for i in range(attacks)}, member


def _with_attacks(model, scores, member, joint: bool):
    from leakaudit.attacks.metrics import attack_result, joint_auc_p_values
    from leakaudit.report.schema import PermutationTest

    mia = {a: attack_result(s[member], s[~member], n_boot=0) for a, s in scores.items()}
    test = PermutationTest(permutations=999, p_values=joint_auc_p_values(scores, member, permutations=999))
    return model.model_copy(update={"mia": mia, "mia_by_unit": {}, "mia_joint": test if joint else None})


def test_the_attacks_tested_together_keep_the_power_bonferroni_loses():
    """Eleven near-copies of a weak attack: Bonferroni multiplies its p-value by eleven and calls no leak; the
    joint permutation test (recorded by the audit) pays almost nothing for the copies and finds it.  Results
    written before the joint test keep Bonferroni."""
    from leakaudit.report.findings import _mia_finding

    res = make_results()
    scores, member = _correlated_attacks(np.random.default_rng(3), shift=0.2)
    joint = _with_attacks(res.models["base"], scores, member, joint=True)
    best = min(r.auc_pvalue for r in joint.mia.values())
    assert 0.05 / 11 < best < 0.02  # Bonferroni misses it
    f = _mia_finding(joint)
    assert f.signal and "(corrected for 11 attacks by permutation)" in f.sentence
    assert f.p_value == min(joint.mia_joint.p_values.values()) < 3 * best  # Bonferroni: 11 times
    legacy = _mia_finding(_with_attacks(res.models["base"], scores, member, joint=False))
    assert legacy.signal is False and legacy.p_value == pytest.approx(11 * best)
    # a joint test that did not cover every attack is not used
    partial = joint.model_copy(update={"mia_joint": joint.mia_joint.model_copy(
        update={"p_values": {"attack0": 1e-9}})})
    assert _mia_finding(partial).p_value == pytest.approx(11 * best)


def test_the_attacks_tested_together_still_rarely_call_a_model_that_never_saw_the_data_leaky():
    from leakaudit.report.findings import model_findings

    res = make_results()
    rng = np.random.default_rng(12)
    reps, leaky = 150, 0
    for _ in range(reps):
        scores, member = _correlated_attacks(rng, shift=0.0, n=100)
        model = _with_attacks(res.models["base"], scores, member, joint=True)
        leaky += next(f for f in model_findings(model, res) if f.key == "mia").signal
    assert leaky / reps <= 0.08  # 5% expected (Holm over the model's other findings can only lower it)


def test_a_canary_found_by_luck_in_a_tiny_secret_space_is_no_leak():
    """With no never-inserted canary extracted, the baseline is the chance of guessing a secret: tiny for a space
    of a million, not for one of ten (where one hit in 24 searches is expected by luck)."""
    from leakaudit.report.findings import extraction_p_value

    assert extraction_p_value(1, 24, 0, 24, 2 / 10**6) < 1e-4
    assert extraction_p_value(1, 24, 0, 24, 2 / 10) > 0.5
    assert extraction_p_value(6, 24, 1, 24, 2 / 10**6) == pytest.approx(fisher_greater(6, 24, 1, 24))


def test_the_membership_finding_quotes_an_attack_that_shows_the_signal():
    """The signal is an AUC interval above 0.5; the sentence names such an attack, even when another attack has
    the higher TPR at 1% FPR (its interval including 0.5), and says nothing false when every interval is below."""
    from leakaudit.report.findings import _mia_finding

    res = make_results()
    model = res.models["dp"]
    loud = model.mia["rmia"].model_copy(update={"auc": 0.52, "auc_ci": (0.48, 0.56),
                                                 "tpr_at_fpr": {"0.001": 0.01, "0.01": 0.09, "0.1": 0.2}})
    quiet = model.mia["loss"].model_copy(update={"auc": 0.58, "auc_ci": (0.53, 0.63),
                                                  "tpr_at_fpr": {"0.001": 0.0, "0.01": 0.02, "0.1": 0.12}})
    f = _mia_finding(model.model_copy(update={"mia": {"rmia": loud, "loss": quiet}}))
    assert f.signal and "the loss attack's AUC interval lies above 0.5" in f.sentence and "2.0%" in f.sentence
    assert f.detail.startswith("loss, AUC 0.580")
    below = quiet.model_copy(update={"auc": 0.42, "auc_ci": (0.38, 0.46)})
    f = _mia_finding(model.model_copy(update={"mia": {"loss": below}}))
    assert f.signal is False and "no attack's AUC interval lies above 0.5" in f.sentence


def test_a_dp_bound_violation_fails_the_guarantee_in_the_verdict_model_card_and_compliance():
    from leakaudit.report.findings import headline

    res = _with_dp_violation(make_results())
    md = render_markdown(res)
    dp = _verdicts(md)["dp"]
    assert dp.startswith("**dp** (trained with DP at ε = ")
    assert f"FAILED DP GUARANTEE: the rmia attack's ROC (and 1 other attack) lies outside {BOUNDS}" in dp
    assert headline(res, "dp")["dp_guarantee_failed"] is True
    assert headline(make_results(), "dp")["dp_guarantee_failed"] is False
    compliance = md[md.index("## Compliance"):]
    assert "Membership inference (" in compliance and f"): ROC outside {BOUNDS}" in compliance


def test_findings_without_a_baseline_say_so_instead_of_no_leak():
    from leakaudit.report.findings import _memorization_finding, _pii_reconstruction_finding

    res = make_results()
    model = res.models["non_dp"]
    m = model.memorization[0]
    no_held = m.model_copy(update={"non_members": m.non_members.model_copy(
        update={"n_records": 0, "exact_matches": 0, "exact_match_rate": 0.0})})
    f = _memorization_finding(model.model_copy(update={"memorization": [no_held]}))
    assert f.signal is None and "0 held-out records were tested, so there is no baseline" in f.sentence
    assert "does not complete" not in f.sentence
    rec = model.pii_reconstruction["members"].model_copy(update={"n_queries": 0})
    f = _pii_reconstruction_finding(model.model_copy(update={"pii_reconstruction": {"members": rec}}))
    assert f.signal is None and "was not measured" in f.sentence and "does not pick" not in f.sentence


def test_a_proven_loss_within_the_dp_claim_is_neither_a_leak_nor_no_leak():
    md = render_markdown(make_results())
    dp = _verdicts(md)["dp"]
    # (the fixture's audit can prove at most ε = 3.47: it cannot test the claim, and says so)
    assert "The measurements prove a privacy loss of at least ε = 0.80; this audit's design can prove at most " \
           "ε = 3.47, below the ε = 7.98 its DP training claims, so it cannot test that claim." in dp
    assert "empirical ε" not in dp.split("No leak beyond the baseline in")[1].split(".")[0]
    gdpr = _section(md[md.index("## Compliance"):], "### GDPR", "### EDPB")
    assert ("empirical ε (ε ≥ 0.80; this audit's design can prove at most ε = 3.47, below the accountant ε = 7.98, "
            "so it cannot test that claim)") in gdpr
    dp_row = next(line for line in gdpr.splitlines() if line.startswith("- **dp**"))
    at_baseline = dp_row.split("At its baseline (no leak found by these attacks): ")[1].split(".")[0]
    assert "empirical" not in at_baseline


def test_untargeted_finding_tests_against_its_baseline():
    from leakaudit.report.findings import _untargeted_finding

    model = make_results().models["non_dp"]
    u = model.untargeted_extraction

    def finding(memorized, held):
        return _untargeted_finding(model.model_copy(update={"untargeted_extraction": u.model_copy(update={
            "n_memorized": memorized, "n_training_records_reproduced": memorized, "n_non_member_matches": held,
            "n_unique": 950})}))

    assert finding(1, 0).signal is False  # one sample against none: within sampling error
    assert finding(40, 0).signal is True and finding(40, 35).signal is False


def test_a_planted_secret_ranked_first_stands_out_whatever_the_groups_auc():
    from leakaudit.report.findings import _canary_exposure_finding, top_rank_p_value

    res = make_results()
    model = res.models["dp"]
    n_null = res.canary_specs[0].null_samples
    first = [c.model_copy(update={"rank": 1}) if i == 0 else c
             for i, c in enumerate(c for c in model.canaries if c.inserted)]
    ranked = model.model_copy(update={"canaries": first + [c for c in model.canaries if not c.inserted]})
    p = top_rank_p_value(ranked, res)
    assert p == pytest.approx(len(first) / (n_null + 1))
    f = _canary_exposure_finding(ranked, res)
    assert f.signal is True and "a rank that secrets it never saw reach by chance with probability" in f.sentence


def _with_control(res, leaky: bool):
    """``res`` with its base model marked as the control; ``leaky``: the base model then tells members apart."""
    base = res.models["base"]
    update = {"control": True}
    if leaky:
        from leakaudit.attacks.metrics import attack_result

        rng = np.random.default_rng(2)
        update["mia"] = {**base.mia, "loss": attack_result(rng.normal(1, 1, 200), rng.normal(0, 1, 200), n_boot=0)}
    return res.model_copy(update={"models": {**res.models, "base": base.model_copy(update=update)}})


def test_a_control_model_that_shows_no_signal_passes_the_split_check():
    md = render_markdown(_with_control(make_results(), leaky=False))
    verdicts = _verdicts(md)
    assert verdicts["base"].startswith("**base** (control: never trained on these records): Split check passed: base "
                                       "was never trained on these records, and none of its")
    assert "SPLIT CHECK FAILED" not in md and "with the split check" not in md
    assert "- **base** (split check passed): Control: never trained on these records" in md


def test_a_control_model_with_a_signal_fails_the_split_check_and_qualifies_the_others():
    """A model that never saw the records yet tells members apart: the split differs in kind (dates, sources), and
    the other models' membership findings measure that too.  Said at the top, in every verdict, and in compliance."""
    res = _with_control(make_results(), leaky=True)
    md = render_markdown(res)
    assert "⚠ SPLIT CHECK FAILED, base:" in md and "membership inference: the two sides of the split" in md
    verdicts = _verdicts(md)
    assert "SPLIT CHECK FAILED: base was never trained on these records, yet it shows a signal in membership " \
           "inference: 8.5% [" in verdicts["base"]
    assert ("Read membership inference with the split check: the control model base, never trained on these "
            "records, shows a signal there too") in verdicts["non_dp"]
    assert "(split check failed): Control: never trained on these records" in md
    from leakaudit.report.modelcard import model_card

    card = model_card(res, "non_dp")
    assert "Read membership inference with the split check" in card
    assert "split_check: failed" in card and "control: false" in card
    assert "split_check: passed" in model_card(_with_control(make_results(), leaky=False), "dp")
    assert "SPLIT CHECK FAILED, base:" in render_html(res)


def test_a_controls_failed_split_check_names_a_bias_of_the_failing_test():
    """A control whose untargeted signal comes with the public-coverage warning: the split check says so."""
    from leakaudit.report.schema import PermutationTest

    res = _with_control(make_results(), leaky=False)
    base = res.models["base"]
    u = res.models["non_dp"].untargeted_extraction.model_copy(update={
        "n_member_records": 200, "n_member_records_written": 30, "n_held_out_records": 200,
        "n_held_out_records_written": 2, "warnings": ["the public corpus holds on average 40% of ..."]})
    base = base.model_copy(update={"untargeted_extraction": u, "untargeted_test": PermutationTest(
        unit="record", permutations=9999, p_values={"written": 1e-4})})
    md = render_markdown(res.model_copy(update={"models": {**res.models, "base": base}}))
    verdict = _verdicts(md)["base"]
    assert "SPLIT CHECK FAILED" in verdict
    assert "For untargeted extraction, the public corpus holds on average 40% of ...." in verdict


def test_pii_extraction_is_tested_against_held_out_records_values():
    """With held-out units counted, PII extraction is a test like the others: training people whose values the
    samples contain against held-out people found the same way; without them (older results) the count alone
    decides, untested."""
    from leakaudit.report.findings import model_findings

    res = make_results()
    model = res.models["non_dp"]

    def pii(found: int, held_found: int, n: int = 50):
        counts = {"units": "person", "n_member_units": n, "n_member_units_found": found, "n_held_out_units": n,
                  "n_held_out_units_found": held_found}
        m = model.model_copy(update={"pii_extraction": model.pii_extraction.model_copy(update=counts)})
        return next(f for f in model_findings(m, res) if f.key == "pii_extraction")

    same = pii(7, 6)
    assert same.signal is False and same.p_value == pytest.approx(fisher_greater(7, 50, 6, 50))
    assert "not significantly more often than of held-out ones (values of 7 of 50 training people against 6 of 50 " \
        "held-out people)" in same.sentence
    assert same.baseline.startswith("held-out people found: 6/50 (training: 7/50); ")
    above = pii(7, 0)
    assert above.signal and "; values of 7 of 50 training people against 0 of 50 held-out people)" in above.sentence
    legacy = pii(0, 0, n=0)
    assert legacy.signal and legacy.p_value is None  # 7 training values found, no baseline: the count decides


def test_the_split_check_counts_only_tested_comparisons_of_the_two_sides():
    """A control's empirical ε bound (the one-run canaries, outside the tests' family) and a PII count recorded
    without its held-out baseline are no split failures."""
    res = _with_control(make_results(), leaky=False)
    base = res.models["base"]
    emp = res.models["non_dp"].empirical_privacy[0].model_copy(update={"eps_lower_bound": 0.3})
    pii = res.models["non_dp"].pii_extraction  # 7 training values found, no held-out baseline recorded
    base = base.model_copy(update={"empirical_privacy": [emp], "pii_extraction": pii})
    res = res.model_copy(update={"models": {**res.models, "base": base}})
    md = render_markdown(res)
    assert "SPLIT CHECK FAILED" not in md and "Split check passed: base" in _verdicts(md)["base"]


def test_a_control_that_claims_dp_and_fails_it_says_both():
    res = _with_dp_violation(make_results())
    dp = res.models["dp"].model_copy(update={"control": True})
    res = res.model_copy(update={"models": {**res.models, "dp": dp}})
    verdict = _verdicts(render_markdown(res))["dp"]
    assert verdict.startswith("**dp** (control: never trained on these records): FAILED DP GUARANTEE: the rmia")
    assert "shows a signal in membership inference" not in verdict  # the DP failure is no split's
    from leakaudit.report.compliance import compliance
    from leakaudit.report.findings import model_findings

    found = {n: model_findings(m, res) for n, m in res.models.items()}
    rows = [r for fw in compliance(res.models, found, {})["frameworks"] for r in fw["models"] if r["name"] == "dp"]
    assert any(r["status"].startswith("DP guarantee failed; split check") for r in rows)


def test_compliance_qualifies_leaks_a_failed_split_check_also_shows():
    md = render_markdown(_with_control(make_results(), leaky=True))
    compliance = md.split("## Compliance", 1)[1]
    assert ("Read membership inference with the split check: the control model base, never trained on these "
            "records, shows a signal there too") in compliance


def test_canary_extraction_says_which_baseline_decided():
    from leakaudit.report.findings import model_findings

    res = make_results()
    tiny = res.model_copy(update={"canary_specs": [s.model_copy(update={"space_size": 10}) for s in res.canary_specs]})
    model = tiny.models["non_dp"]
    first = next(i for i, c in enumerate(model.canaries) if c.repetitions > 0)
    canaries = [c.model_copy(update={"extracted": i == first}) for i, c in enumerate(model.canaries)]
    one = model.model_copy(update={"canaries": canaries})
    f = next(x for x in model_findings(one, tiny) if x.key == "canary_extraction")
    assert f.signal is False
    assert "not significantly more often than guessing would (chance at most 0.2 per canary)" in f.sentence
    assert f.baseline.endswith("; guessing: at most 0.2 per canary")
    unknown = tiny.model_copy(update={"canary_specs": []})  # no space size and no reference canary: no test
    alone = one.model_copy(update={"canaries": [c for c in canaries if c.repetitions > 0]})
    f = next(x for x in model_findings(alone, unknown) if x.key == "canary_extraction")
    assert f.signal is None and "with no baseline to compare with" in f.sentence


def test_the_memorization_table_marks_what_the_verdict_decided():
    """5 approximate matches in 200 against 0 in 200 (p = 0.03) is no signal once the two memorization tests and
    the model's other findings are counted: the table's marker agrees with the verdict."""
    res = make_results()
    dp = res.models["dp"]
    weak = dp.memorization[0].model_copy(update={"members": _stats(200, 1, 5, 0.11)})
    res = res.model_copy(update={"models": {**res.models, "dp": dp.model_copy(update={"memorization": [weak]})}})
    md = render_markdown(res)
    verdict = _verdicts(md)["dp"]
    assert "No leak beyond the baseline in" in verdict and "discoverable memorization" in verdict
    table = _section(md, "## Discoverable memorization", "## Untargeted extraction")
    assert "| dp ▲ |" not in table and "| non_dp ▲ |" in table


def test_the_memorization_finding_takes_the_audits_joint_test_when_recorded():
    """The audit's permutation test of exact and approximate matches (people relabelled) replaces Fisher with
    Bonferroni: no factor for the two tests, and a per-person split can undo a record-level signal."""
    from leakaudit.report.findings import _memorization_finding
    from leakaudit.report.schema import PermutationTest

    res = make_results()
    dp = res.models["dp"]
    weak = dp.memorization[0].model_copy(update={"members": _stats(200, 1, 5, 0.11)})
    legacy = _memorization_finding(dp.model_copy(update={"memorization": [weak]}))
    assert legacy.p_value == pytest.approx(2 * fisher_greater(5, 200, 0, 200))
    joint = weak.model_copy(update={"test": PermutationTest(unit="user", permutations=999,
                                                            p_values={"exact": 0.8, "approx": 0.012})})
    f = _memorization_finding(dp.model_copy(update={"memorization": [joint]}))
    assert f.p_value == 0.012 and f.signal and "nearly word for word" in f.sentence
    people = joint.model_copy(update={"test": joint.test.model_copy(update={"p_values": {"exact": 1.0,
                                                                                         "approx": 0.2}})})
    assert _memorization_finding(dp.model_copy(update={"memorization": [people]})).signal is False


def test_the_reconstruction_finding_takes_the_audits_permutation_test_when_recorded():
    from leakaudit.report.findings import _pii_reconstruction_finding
    from leakaudit.report.schema import PermutationTest

    res = make_results()
    model = res.models["non_dp"]
    assert model.pii_reconstruction_test is None  # results written before it: Fisher over the queries
    mem, non = model.pii_reconstruction["members"], model.pii_reconstruction["non_members"]
    legacy = _pii_reconstruction_finding(model)
    assert legacy.p_value == pytest.approx(fisher_greater(round(mem.top1_accuracy * mem.n_queries), mem.n_queries,
                                                          round(non.top1_accuracy * non.n_queries), non.n_queries))
    people = PermutationTest(unit="user", permutations=9999, p_values={"top1": 0.3})
    f = _pii_reconstruction_finding(model.model_copy(update={"pii_reconstruction_test": people}))
    assert f.p_value == 0.3 and f.signal is False


def test_the_untargeted_finding_takes_the_records_written_test_when_recorded():
    from leakaudit.report.findings import _untargeted_finding
    from leakaudit.report.schema import PermutationTest

    model = make_results().models["non_dp"]
    u = model.untargeted_extraction
    legacy = _untargeted_finding(model)
    assert legacy.p_value == pytest.approx(fisher_greater(u.n_memorized, u.n_unique, u.n_non_member_matches,
                                                          u.n_unique))
    counted = u.model_copy(update={"n_member_records": 200, "n_member_records_written": 9,
                                   "n_held_out_records": 200, "n_held_out_records_written": 6})
    test = PermutationTest(unit="user", permutations=9999, p_values={"written": 0.31})
    f = _untargeted_finding(model.model_copy(update={"untargeted_extraction": counted, "untargeted_test": test}))
    assert f.p_value == 0.31 and f.signal is False
    assert (f.value, f.baseline) == ("9 of 200 training records", "6 of 200 held-out records")
    assert "does not write out its training records more often than held-out ones beyond chance" in f.sentence
    assert "outside the audited records" in f.sentence  # the samples matching canary text are not hidden
    res = make_results()
    old_md = render_markdown(res)  # results written before the records-written test describe their own rule
    assert "Fisher's test over the unique samples" in old_md and "The verdict's test counts the audited" not in old_md
    new_md = render_markdown(res.model_copy(update={"models": {**res.models, "non_dp": model.model_copy(
        update={"untargeted_extraction": counted, "untargeted_test": test})}}))
    assert "The verdict's test counts the audited records" in new_md
    loud = test.model_copy(update={"p_values": {"written": 1e-6}})
    f = _untargeted_finding(model.model_copy(update={"untargeted_extraction": counted, "untargeted_test": loud}))
    assert f.signal and f.sentence.startswith("sampled freely, it writes out text of 9 of 200 training records against")
    # a public corpus covering the held-out side: the records left out are shown and the bias is said
    skewed = counted.model_copy(update={"n_member_records_untestable": 3, "n_held_out_records_untestable": 40,
                                        "warnings": ["the public corpus holds 30% of the held-out records' ..."]})
    skewed_model = model.model_copy(update={"untargeted_extraction": skewed, "untargeted_test": loud})
    f = _untargeted_finding(skewed_model)
    assert f.signal and f.sentence.endswith("; but the public corpus holds 30% of the held-out records' ...")
    quiet = _untargeted_finding(skewed_model.model_copy(update={"untargeted_test": test}))
    assert quiet.signal is False and quiet.caveat == "the public corpus holds 30% of the held-out records' ..."
    # every held-out record wholly public: no test (not the sample-level rule, which would call a leak)
    none_left = skewed.model_copy(update={"n_held_out_records": 0, "n_held_out_records_written": 0,
                                          "n_held_out_records_untestable": 240, "warnings": []})
    f = _untargeted_finding(skewed_model.model_copy(update={"untargeted_extraction": none_left,
                                                             "untargeted_test": None}))
    assert f.signal is None and f.p_value is None and f.value == "not testable"
    assert f.baseline == "no held-out record testable (240 public or too short)"
    assert f.sentence == ("free sampling (1,000 samples) could not be tested against held-out records: none of the "
                          "240 held-out records has a token n-gram outside the public corpus (a public corpus drawn "
                          "from neither side avoids this)")
    # ... and the section's text does not describe a test that did not run
    models = {n: m.model_copy(update={"untargeted_extraction": none_left, "untargeted_test": None})
              if m.untargeted_extraction is not None else m for n, m in res.models.items()}
    md = render_markdown(res.model_copy(update={"models": models}))
    assert "but no model here kept a record on both sides to test" in md
    assert "writes a passage of (each record checked alike" not in md
    assert "but no model here kept a record on both sides" not in new_md
    assert "writes a passage of (each record checked alike" in new_md
    # the caution is shown in the section whatever the verdict
    for model_name in ("non_dp", "base"):
        md = render_markdown(res.model_copy(update={"models": {**res.models, model_name: skewed_model.model_copy(
            update={"untargeted_test": test})}}))
        assert f"**Caution** {model_name}: the public corpus holds 30% of the held-out records' ...." in md
    assert "left out: too short or every n-gram public, training / held out" in md and "| 3 / 40 |" in md
    assert "left out: too short or every n-gram public" not in new_md  # shown only where a record was left out
    assert "Caution" not in new_md


def test_the_memorization_finding_tests_every_setting_and_marks_the_ones_that_pass():
    """A leak in the second setting is found (it was ignored when only the first setting counted), with
    Bonferroni over the settings; the table marks that setting only."""
    from leakaudit.report.findings import _memorization_finding
    from leakaudit.report.schema import PermutationTest

    res = make_results()
    dp = res.models["dp"]
    first = dp.memorization[0].model_copy(update={"k": 32, "n": 32, "test": PermutationTest(
        unit="user", permutations=9999, p_values={"exact": 0.9, "approx": 0.8})})
    second = first.model_copy(update={"k": 16, "n": 16, "test": PermutationTest(
        unit="user", permutations=9999, p_values={"exact": 0.6, "approx": 0.004})})
    model = dp.model_copy(update={"memorization": [first, second]})
    f = _memorization_finding(model)
    assert f.signal and f.p_value == pytest.approx(0.008) and f.settings == ((16, 16),)
    assert "16 tokens from a 16-token prompt" in f.sentence and f.detail.startswith("k=16, n=16")
    weak = second.model_copy(update={"test": second.test.model_copy(update={"p_values": {"exact": 0.6,
                                                                                         "approx": 0.03}})})
    f = _memorization_finding(dp.model_copy(update={"memorization": [first, weak]}))
    assert not f.signal and f.p_value == pytest.approx(0.06) and "in any of the 2 settings tested" in f.sentence
    md = render_markdown(res.model_copy(update={"models": {**res.models, "dp": model}}))
    table = _section(md, "## Discoverable memorization", "## Untargeted extraction")
    marks = [line for line in table.splitlines() if line.startswith("| dp ▲ |")]
    assert len(marks) == 1 and table.index("| dp ▲ |") > table.index("Prompt k = 16") and (
        table.index("| dp ▲ |") < table.index("Prompt k = 32"))


def test_the_gate_does_not_gate_a_control_and_fails_every_model_on_a_failed_split_check():
    from leakaudit.errors import LeakauditError
    from leakaudit.policy import Policy, evaluate_policy

    strict = Policy(max_epsilon=10.0, require_split_check=True)
    quiet = {v.model: v for v in evaluate_policy(_with_control(make_results(), leaky=False), strict)}
    assert quiet["base"].control and quiet["base"].passed  # no DP, yet not failed: it is no release candidate
    assert [c.status for c in quiet["base"].checks] == ["pass"]
    assert quiet["dp"].passed and not quiet["non_dp"].passed
    loud = {v.model: v for v in evaluate_policy(_with_control(make_results(), leaky=True), strict)}
    assert not loud["dp"].passed
    assert any("split check failed: a control model never trained on the records shows a signal (base in "
               "Membership inference" in r for r in loud["dp"].reasons)
    none = {v.model: v for v in evaluate_policy(make_results(), strict)}
    assert none["dp"].passed and any("split check not run" in r for r in none["dp"].reasons)
    only = make_results()
    only = only.model_copy(update={"models": {"base": only.models["base"].model_copy(update={"control": True})}})
    with pytest.raises(LeakauditError, match="every model is a control"):
        evaluate_policy(only, strict)
    assert evaluate_policy(only, strict, model="base")[0].checks  # named: gated as any model
    # a control that tested nothing has checked nothing: not measured, never passed
    blank = make_results()
    empty = blank.models["base"].model_copy(update={
        "control": True, "mia": {}, "mia_by_unit": {}, "canaries": [], "exposure_by_repetition": [],
        "memorization": [], "untargeted_extraction": None, "pii_extraction": None, "pii_reconstruction": {},
        "empirical_privacy": []})
    blank = blank.model_copy(update={"models": {**blank.models, "base": empty}})
    v = {x.model: x for x in evaluate_policy(blank, strict)}
    assert [c.status for c in v["dp"].checks if c.name == "require_split_check"] == ["not measured"]


# ------------------------------------------------------------------------------ review: wording and selection


SEEDED_CONDITION = "seeded: holds only while the training seed stays secret"


def _with_privacy(res: Results, model: str, **update) -> Results:
    m = res.models[model]
    privacy = m.privacy.model_copy(update=update)
    return res.model_copy(update={"models": {**res.models, model: m.model_copy(update={"privacy": privacy})}})


def test_a_seeded_dp_guarantee_is_named_with_its_condition_wherever_the_safeguard_is():
    from leakaudit.report.modelcard import model_card

    res = _with_privacy(make_results(), "dp", randomness="seeded")
    md, html = render_markdown(res), render_html(res)
    assert _verdicts(md)["dp"].startswith(f"**dp** (trained with DP at ε = 7.98; {SEEDED_CONDITION}):")
    assert f"<strong>dp</strong> (trained with DP at ε = 7.98; {SEEDED_CONDITION}):" in html
    assert f": ε = 7.98 ({SEEDED_CONDITION}); " in _key_figures(md)["dp"]
    comparison = _section(md, "## DP vs non-DP comparison", "## Limitations")
    assert f"| dp | 7.98 (δ = 1.0e-05; {SEEDED_CONDITION}) |" in comparison
    compliance = md[md.index("## Compliance"):]
    safeguard = f"Safeguard: DP-SGD at ε = 7.98, δ = 1.0e-05 (prv accountant; {SEEDED_CONDITION})."
    assert compliance.count(safeguard) == 2  # GDPR and the EU AI Act name the safeguard
    assert (f"Trained with differential privacy (DP-SGD): ε = 7.98, δ = 1.0e-05 (prv accountant; "
            f"{SEEDED_CONDITION}).") in model_card(res, "dp")
    # the condition belongs to the DP model alone
    assert SEEDED_CONDITION not in _verdicts(md)["non_dp"] + _key_figures(md)["non_dp"]
    # secret (or unrecorded) randomness: the safeguard as before, without a condition
    for how in ("secret", None):
        md = render_markdown(_with_privacy(make_results(), "dp", randomness=how))
        assert "seeded:" not in md and _verdicts(md)["dp"].startswith("**dp** (trained with DP at ε = 7.98):")
        assert "Safeguard: DP-SGD at ε = 7.98, δ = 1.0e-05 (prv accountant)." in md
    # a seed recorded for a model without DP names no DP condition
    md = render_markdown(_with_privacy(make_results(), "non_dp", randomness="seeded"))
    assert "seeded:" not in md


def _with_best_possible(res: Results, best: float | None) -> Results:
    dp = res.models["dp"]
    bound = dp.empirical_privacy[0].model_copy(update={"best_possible": best})
    return res.model_copy(update={"models": {**res.models, "dp": dp.model_copy(update={"empirical_privacy": [bound]})}})


def test_an_audit_that_cannot_prove_the_claimed_epsilon_says_it_cannot_test_the_claim():
    from leakaudit.report.modelcard import model_card

    res = make_results()  # best possible 3.47 below the accountant's 7.98
    md = render_markdown(res)
    untestable = ("The measurements prove a privacy loss of at least ε = 0.80; this audit's design can prove at most "
                  "ε = 3.47, below the ε = 7.98 its DP training claims, so it cannot test that claim.")
    assert untestable in _verdicts(md)["dp"] and "within the ε" not in _verdicts(md)["dp"]
    assert untestable in model_card(res, "dp")
    compliance = md[md.index("## Compliance"):]
    assert compliance.count("empirical ε (ε ≥ 0.80; this audit's design can prove at most ε = 3.47, below the "
                            "accountant ε = 7.98, so it cannot test that claim)") == 2
    assert "within the accountant" not in compliance
    emp = _section(md, "## Empirical privacy", "## Utility")
    assert "| cannot test the claim (its best possible is below the accountant's ε) |" in emp
    assert "consistent with the accountant" not in emp
    # an audit that could prove the claim (best possible at or above it), or one that did not record its best
    # possible: the bound is within the claim, as before
    for best in (EPS, 9.0, None):
        md = render_markdown(_with_best_possible(make_results(), best))
        assert ("The measurements prove a privacy loss of at least ε = 0.80, within the ε = 7.98 its DP training "
                "claims.") in _verdicts(md)["dp"]
        assert "empirical ε (ε ≥ 0.80, within the accountant ε = 7.98)" in md[md.index("## Compliance"):]
        assert "| consistent with the accountant |" in _section(md, "## Empirical privacy", "## Utility")
        assert "cannot test" not in md


def _memorization_first_setting_quiet(res: Results) -> Results:
    """non_dp's first setting (k=32) shows nothing; its second (k=64, 20/190 exact) still does."""
    m = res.models["non_dp"]
    quiet = m.memorization[0].model_copy(update={"members": _stats(200, 0, 0, 0.1)})
    mem = [quiet, *m.memorization[1:]]
    return res.model_copy(update={"models": {**res.models, "non_dp": m.model_copy(update={"memorization": mem})}})


def test_memorization_headline_is_the_setting_its_finding_describes():
    from leakaudit.report.findings import headline, model_findings
    from leakaudit.report.modelcard import card_metadata

    res = _memorization_first_setting_quiet(make_results())
    model = res.models["non_dp"]
    finding = next(f for f in model_findings(model, res) if f.key == "memorization")
    assert finding.signal and finding.setting == (64, 32) and finding.detail.startswith("k=64, n=32")
    h = headline(res, "non_dp")
    assert (h["memorization_k"], h["memorization_n"]) == (64, 32)
    assert h["memorization_exact_match_rate"] == model.memorization[1].members.exact_match_rate == 20 / 190
    meta = card_metadata(res, "non_dp")["privacy_audit"]["results"]
    assert (meta["memorization_k"], meta["memorization_n"]) == (64, 32)
    assert meta["memorization_exact_match_rate"] == 20 / 190
    md = render_markdown(res)
    assert "10.5% [" in _finding_rows(md)["Discoverable memorization"]  # the finding quotes the same setting
    comparison = _section(md, "## DP vs non-DP comparison", "## Limitations")
    assert "| 10.5% vs 0% held-out (k=64, n=32) |" in comparison
    assert "| 0% vs 0% held-out (k=32, n=32) |" in comparison  # base: one setting, named as the column mixes them
    # a model whose settings all show nothing: the first setting, as its finding says
    h = headline(make_results(), "dp")
    assert (h["memorization_k"], h["memorization_n"]) == (32, 32)
    # one setting in the whole run: the cell does not name it
    single = make_results()
    nd = single.models["non_dp"]
    single = single.model_copy(update={"models": {**single.models, "non_dp": nd.model_copy(
        update={"memorization": nd.memorization[:1]})}})
    comparison = _section(render_markdown(single), "## DP vs non-DP comparison", "## Limitations")
    assert "| 6.0% vs 0% held-out |" in comparison and "(k=" not in comparison


def test_the_membership_row_and_key_figures_name_the_attack_the_finding_quotes():
    res = make_results()
    dp = res.models["dp"]
    loud = dp.mia["loss"].model_copy(update={"auc": 0.5, "auc_pvalue": 0.6,
                                             "tpr_at_fpr": {"0.001": 0.0, "0.01": 0.09, "0.1": 0.1}})
    beats = dp.mia["reference"].model_copy(update={"auc": 0.6, "auc_pvalue": 1e-5,
                                                   "tpr_at_fpr": {"0.001": 0.0, "0.01": 0.04, "0.1": 0.2}})
    res = res.model_copy(update={"models": {**res.models, "dp": dp.model_copy(
        update={"mia": {"loss": loud, "reference": beats}})}})
    md = render_markdown(res)
    row = _finding_rows(md)["Membership inference"]
    assert ("The share of training records found while wrongly flagging 1% of held-out records (TPR at 1% FPR) by the "
            "strongest attack that beats chance after the corrections for several tests (see Limitations), or by the "
            "strongest of all when none does; chance is 1%.") in row
    assert "| 4.0% [" in row and "(reference, AUC 0.600" in row
    assert ("strongest attack by TPR at 1% FPR: loss, 9.0% (AUC 0.500); strongest beating chance: reference, 4.0% "
            "(AUC 0.600);") in _key_figures(md)["dp"]
    assert "strongest beating chance: reference, 4.0% (AUC 0.600)" in render_html(res)
    # the same attack, or none beating chance: named once
    figures = _key_figures(render_markdown(make_results()))
    assert "strongest beating chance" not in "".join(figures.values())
    quiet = res.models["dp"].model_copy(update={"mia": {"loss": loud, "reference": beats.model_copy(
        update={"auc_pvalue": 0.5})}})
    md = render_markdown(res.model_copy(update={"models": {**res.models, "dp": quiet}}))
    assert "strongest beating chance" not in _key_figures(md)["dp"]
    assert "(loss, AUC 0.500" in _finding_rows(md)["Membership inference"]


def test_the_signal_legend_says_what_the_marker_means():
    res = make_results()
    legend = ("▲ marks a finding whose test rejects “no leak” at 5%: its p-value, corrected for the tests within it "
              "and for the model's other findings (see Limitations), is below 0.05. The intervals are per "
              "measurement: an interval that lies above its baseline does not by itself make a signal (the strongest "
              "of several attacks lies above chance by selection).")
    md, html = render_markdown(res), render_html(res)
    assert legend in _between(md, "## Findings", "| measurement |")
    assert legend.replace("'", "&#39;") in _between(html, '<section id="findings">', '<div class="wide">')
    for text in (md, html):
        assert "marks a result above its baseline beyond sampling error" not in text


def test_a_dirty_git_revision_keeps_its_suffix_when_shortened():
    from leakaudit.report.formatting import _short

    assert _short("0123456789abcdef0123456789abcdef01234567-dirty") == "0123456789ab-dirty"
    assert _short("0123456789abcdef0123456789abcdef01234567") == "0123456789ab"
    assert _short("e" * 64) == "e" * 12 and _short(None) == "—"
    res = make_results()
    res = res.model_copy(update={"run": _run(git_revision="0123456789abcdef0123456789abcdef01234567-dirty")})
    md = render_markdown(res)
    assert "| git revision | `0123456789ab-dirty` |" in md
    assert "code: leakaudit 0.1.0, git 0123456789ab-dirty." in md[md.index("## Compliance"):]
    assert "<code>0123456789ab-dirty</code>" in render_html(res)


def test_incomplete_best_first_searches_are_named_as_such_when_a_beam_search_decides_them():
    from leakaudit.report.modelcard import model_card

    res = _with_guesses(make_results())  # base: one of 9 best-first searches completed no secret
    row = _finding_rows(render_markdown(res))["Canary extraction"]
    assert "| 0/6 inserted canaries (0/6 within 10 guesses; no complete secret in 1 of 9 searches); baseline:" in row
    assert "beam" not in row
    beam = _with_beam(res)
    row = _finding_rows(render_markdown(beam))["Canary extraction"]
    assert ("| 0/6 inserted canaries (0/6 within 10 guesses; the best-first search completed no secret in 1 of 9 "
            "searches: the beam search's results stand); baseline:") in row
    assert ("the best-first search completed no secret in 1 of 9 searches: the beam search's results stand"
            in model_card(beam, "base"))
    # every search incomplete and no beam search: inconclusive, as before
    row = _finding_rows(render_markdown(_inconclusive(res)))["Canary extraction"]
    assert "| inconclusive (no complete secret in 9 searches); baseline:" in row


def test_limitations_count_the_prompt_lengths_and_a_capped_exposure_reads_as_at_least():
    md = render_markdown(make_results())  # k = 32 on every model, k = 64 on non_dp
    limitations = _section(md, "## Limitations", "## Compliance")
    assert "Discoverable memorization tests greedy continuations from 2 prompt lengths (32 and 64 tokens);" in (
        limitations
    )
    assert "It makes planted secrets stand out: at least 9.97 bits of exposure (the cap)." in _verdicts(md)["non_dp"]
    assert "up to ≥" not in md
    single = make_results()
    nd = single.models["non_dp"]
    canaries = [c.model_copy(update={"exposure_bits": 8.5}) if c.exposure_bits >= CAP else c for c in nd.canaries]
    single = single.model_copy(update={"models": {**single.models, "non_dp": nd.model_copy(
        update={"memorization": nd.memorization[:1], "canaries": canaries})}})
    md = render_markdown(single)
    assert "Discoverable memorization tests greedy continuations from one prompt length;" in md
    assert "It makes planted secrets stand out: up to 8.50 bits of exposure." in _verdicts(md)["non_dp"]


def test_the_membership_section_says_how_its_intervals_were_computed():
    """Intervals written by the current metrics name their method (per record, or resampling people under a
    per-person split); results of an older version say theirs did not allow for the threshold's error."""
    results = make_results()
    old = render_markdown(results)
    assert "the TPR's Clopper-Pearson at the chosen threshold (results written by an older version" in old
    for kind, words in (("records", "allowing for the error of a threshold chosen from the held-out records"),
                        ("people", "a bootstrap that resamples people")):
        models = {n: m.model_copy(update={"mia": {a: r.model_copy(update={"intervals": kind})
                                                  for a, r in m.mia.items()}})
                  for n, m in results.models.items()}
        text = render_markdown(results.model_copy(update={"models": models}))
        assert words in text and "older version" not in text
        assert words in render_html(results.model_copy(update={"models": models}))
