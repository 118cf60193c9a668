"""Report rendering: Markdown and HTML from a small hand-made Results."""

from __future__ import annotations

import base64
import re

import pytest

from leakaudit.report.plots import exposure_plot, roc_plot
from leakaudit.report.render import render_html, render_markdown, write_reports
from leakaudit.report.schema import (
    AttackResult,
    CanaryResult,
    CanarySpecSummary,
    ExposureGroup,
    ModelResult,
    PrivacyRecord,
    Results,
    RocCurve,
    RunInfo,
    Utility,
)

MODELS = ("base", "non_dp", "dp")
SECTIONS = ("summary", "audited", "privacy", "exposure", "mia", "utility", "limitations")
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
    )
    base.update(kw)
    return RunInfo(**base)


def _canaries(exposures: dict[int, list[float]]) -> list[CanaryResult]:
    out = []
    for rep, values in exposures.items():
        for i, e in enumerate(values):
            out.append(
                CanaryResult(
                    id=f"codes-r{rep}-{i}",
                    spec="codes",
                    repetitions=rep,
                    inserted=rep > 0,
                    exposure_bits=e,
                    rank=max(1, round(1000 / 2**e)),
                    sha256=f"{rep:02d}{i:02d}" + "d" * 60,
                )
            )
    return out


def _groups(exposures: dict[int, list[float]]) -> list[ExposureGroup]:
    groups = []
    for rep, values in sorted(exposures.items()):
        s = sorted(values)
        mid = len(s) // 2
        med = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
        groups.append(
            ExposureGroup(
                repetitions=rep,
                n=len(s),
                median_exposure_bits=med,
                mean_exposure_bits=sum(s) / len(s),
                max_exposure_bits=max(s),
            )
        )
    return groups


def _attack(auc: float, with_roc: bool = True, warnings: list[str] | None = None) -> AttackResult:
    roc = None
    if with_roc:
        fpr = [0.0, 0.005, 0.01, 0.1, 0.5, 1.0]
        tpr = [min(1.0, f + (auc - 0.5) * 0.8) if f > 0 else 0.0 for f in fpr]
        tpr[-1] = 1.0
        roc = RocCurve(fpr=fpr, tpr=tpr)
    return AttackResult(
        auc=auc,
        tpr_at_fpr={"0.001": 0.0, "0.01": 0.02 + (auc - 0.5) / 10, "0.1": 0.1 + (auc - 0.5) / 2},
        n_members=200,
        n_non_members=200,
        min_resolvable_fpr=1 / 200,
        warnings=warnings if warnings is not None else ["FPR 0.001 is below 1/200 non-members"],
        roc=roc,
    )


def make_results() -> Results:
    exposures = {
        "base": {0: [0.4, 1.1, 0.2], 1: [0.5, 0.9], 4: [1.0, 0.3], 16: [0.7, 1.2]},
        "non_dp": {0: [0.6, 0.3, 1.5], 1: [2.5, 3.0], 4: [6.1, 7.4], 16: [CAP, CAP]},
        "dp": {0: [0.5, 0.8, 0.1], 1: [0.6, 0.2], 4: [0.9, 1.4], 16: [1.8, 2.2]},
    }
    privacy = {
        "base": PrivacyRecord(),
        "non_dp": PrivacyRecord(steps=1200, epochs=3.0, dataset_size=200),
        "dp": PrivacyRecord(
            epsilon=7.9812,
            delta=1e-5,
            noise_multiplier=0.71,
            sample_rate=0.0625,
            steps=1200,
            max_grad_norm=1.0,
            accountant="prv",
            epochs=3.0,
            dataset_size=200,
        ),
    }
    aucs = {"base": (0.5, 0.51), "non_dp": (0.83, 0.79), "dp": (0.55, 0.54)}
    models = {}
    for name in MODELS:
        models[name] = ModelResult(
            description="pretrained, never saw the private data" if name == "base" else f"{name} fine-tune",
            path=None if name == "base" else f"models/{name}",
            files_sha256={} if name == "base" else {"model.safetensors": "e" * 64, "config.json": "f" * 64},
            privacy=privacy[name],
            utility=Utility(member_loss=2.1, non_member_loss=2.4, non_member_perplexity=11.02),
            mia={"loss": _attack(aucs[name][0]), "zlib": _attack(aucs[name][1])},
            canaries=_canaries(exposures[name]),
            exposure_by_repetition=_groups(exposures[name]),
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
    assert "≥9.97 (n=2)" in markdown
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
    assert len(uris) == 3  # exposure + one ROC per attack
    for uri in uris:
        assert base64.b64decode(uri).startswith(b"\x89PNG")
    exposure = html[html.index('<section id="exposure">') : html.index('<section id="mia">')]
    mia = html[html.index('<section id="mia">') : html.index('<section id="utility">')]
    assert "data:image/png;base64" in exposure
    assert mia.count("data:image/png;base64") == 2


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
    assert paths == {"markdown": run_dir / "report.md", "html": run_dir / "report.html"}
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(results)
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "report.md"]


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
