"""The Hugging Face model-card snippet: YAML front matter whose values are the results', and a short section."""

from __future__ import annotations

import pytest
import yaml

from leakaudit.report.modelcard import CARD_KEY, model_card
from leakaudit.report.render import write_reports
from leakaudit.report.schema import ModelResult, PrivacyRecord, Results
from tests.test_report import DELTA, EPS, MODELS, _run, _with_beam, _with_failed_dp, _without_new_fields, make_results


def _front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, sep, body = card[4:].partition("\n---\n")
    assert sep, "the front matter is not closed"
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def results() -> Results:
    return make_results()


def test_front_matter_values_equal_the_results(results):
    for name in MODELS:
        meta, _ = _front_matter(model_card(results, name))
        model = results.models[name]
        audit = meta[CARD_KEY]
        assert audit["model"] == name
        assert audit["tool"] == "leakaudit" and audit["tool_version"] == results.run.leakaudit_version
        assert audit["run_created"] == results.run.created and audit["config_sha256"] == results.run.config_sha256
        assert audit["files_sha256"] == model.files_sha256
        dp = audit["differential_privacy"]
        assert dp["epsilon"] == model.privacy.epsilon and dp["delta"] == model.privacy.delta
        assert dp["accountant"] == model.privacy.accountant
        r = audit["results"]
        best = max(model.mia.values(), key=lambda a: (a.tpr_at_fpr["0.01"], a.auc))
        assert r["best_tpr_at_1pct_fpr"] == best.tpr_at_fpr["0.01"] and r["best_attack_auc"] == best.auc
        assert model.mia[r["best_attack"]] is best
        inserted = [c for c in model.canaries if c.repetitions > 0]
        assert r["max_canary_exposure_bits"] == max(c.exposure_bits for c in inserted)
        assert r["canaries_extracted"] == sum(bool(c.extracted) for c in inserted)
        assert r["canaries_searched"] == len(inserted)
        assert r["pii_recall"] == model.pii_extraction.overall.recall
        assert r["memorization_exact_match_rate"] == model.memorization[0].members.exact_match_rate
        assert (r["memorization_k"], r["memorization_n"]) == (model.memorization[0].k, model.memorization[0].n)
        bounds = [e.eps_lower_bound for e in model.empirical_privacy]
        assert r["empirical_epsilon_lower_bound"] == (max(bounds) if bounds else None)
        assert r["dp_guarantee_failed"] is False
        assert r["dp_bound_check"] == (None if model.privacy.epsilon is None else "ok")
        assert ("differential-privacy" in meta["tags"]) == (model.privacy.epsilon is not None)


def test_dp_model_card(results):
    meta, body = _front_matter(model_card(results, "dp"))
    assert meta[CARD_KEY]["differential_privacy"]["epsilon"] == EPS
    assert meta[CARD_KEY]["differential_privacy"]["delta"] == DELTA
    assert meta[CARD_KEY]["differential_privacy"]["accountant"] == "prv"
    assert meta[CARD_KEY]["differential_privacy"]["clipping"] == "per_layer"
    assert meta[CARD_KEY]["differential_privacy"]["lora_rank"] is None
    assert meta[CARD_KEY]["results"]["empirical_epsilon_lower_bound"] == 0.8
    assert meta[CARD_KEY]["results"]["empirical_epsilon_method"] == "one_run"
    assert "## Privacy audit" in body
    assert "Trained with differential privacy (DP-SGD): ε = 7.98, δ = 1.0e-05 (prv accountant)." in body
    assert "| Empirical ε | ε ≥ 0.80 (one_run, α = 0.05) | accountant ε = 7.98 |" in body
    assert "not legal advice" in body


def test_non_dp_model_card(results):
    meta, body = _front_matter(model_card(results, "non_dp"))
    assert meta[CARD_KEY]["differential_privacy"]["epsilon"] is None
    assert meta[CARD_KEY]["results"]["max_canary_exposure_at_cap"] is True
    assert "Trained without differential privacy." in body
    assert "It leaks its training data." in body
    assert meta[CARD_KEY]["control"] is False and meta[CARD_KEY]["split_check"] == "not run"
    assert ("| Canary extraction | 3/6 inserted canaries | 0/3 never-inserted canaries; guessing: at most 2e-06 per "
            "canary |") in body


def test_failed_dp_guarantee_in_the_card():
    meta, body = _front_matter(model_card(_with_failed_dp(make_results()), "dp"))
    assert meta[CARD_KEY]["results"]["dp_guarantee_failed"] is True
    assert meta[CARD_KEY]["results"]["empirical_epsilon_lower_bound"] == 9.1
    assert "FAILED DP GUARANTEE" in body


def test_beam_search_counts_as_extracted():
    meta, _ = _front_matter(model_card(_with_beam(make_results()), "non_dp"))
    assert meta[CARD_KEY]["results"]["canaries_extracted"] == 4


def test_card_of_an_older_or_bare_result():
    meta, body = _front_matter(model_card(_without_new_fields(make_results()), "non_dp"))
    r = meta[CARD_KEY]["results"]
    assert r["pii_recall"] is None and r["empirical_epsilon_lower_bound"] is None and r["canaries_extracted"] is None
    assert r["memorization_exact_match_rate"] is None
    bare = Results(run=_run(), models={"only": ModelResult(privacy=PrivacyRecord())})
    meta, body = _front_matter(model_card(bare, "only"))
    assert meta[CARD_KEY]["results"]["best_attack"] is None
    assert "No leakage measurement was recorded for this model." in body
    with pytest.raises(KeyError, match="no model 'nope'"):
        model_card(bare, "nope")


def test_cards_are_written_with_the_reports_and_hold_no_canary_detail(results, tmp_path):
    paths = write_reports(results, tmp_path)
    for name in MODELS:
        path = tmp_path / f"model_card-{name}.md"
        assert paths[f"model_card:{name}"] == path
        text = path.read_text(encoding="utf-8")
        assert text == model_card(results, name)  # deterministic: the same results give the same card
        for c in results.models[name].canaries:
            assert c.id not in text
    odd = results.model_copy(update={"models": {"a/b c": results.models["dp"]}})
    assert write_reports(odd, tmp_path / "odd")["model_card:a/b c"].name == "model_card-a_b_c.md"
