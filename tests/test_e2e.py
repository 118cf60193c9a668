"""End to end on the tiny preset: a real effect, the results shape, no leaks in shared artifacts."""

import json
import re
import statistics

import pytest

from leakaudit.canaries import CanaryManifest
from leakaudit.config import resolve_config
from leakaudit.io import read_jsonl
from leakaudit.pipeline import run_demo
from leakaudit.report.render import render_html, render_markdown
from leakaudit.report.schema import Results
from tests.conftest import TINY_SPEC

ONE_RUN_SPEC = TINY_SPEC.parents[2] / "canaries" / "one_run_audit_small.yaml"

SHARED = ["results.json", "report.md", "report.html"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo")
    cfg = resolve_config(preset="tiny", canary_files=[TINY_SPEC, ONE_RUN_SPEC], overrides={"shadows": 4})
    results = run_demo(cfg, run_dir)
    return run_dir, results


def _median(model, pred):
    return statistics.median(c["exposure_bits"] for c in model["canaries"] if pred(c))


def test_results_json_has_the_promised_shape(demo_run):
    run_dir, _ = demo_run
    r = json.loads((run_dir / "results.json").read_text())
    assert r["schema_version"] == 2
    assert set(r["models"]) == {"base", "non_dp", "dp"}
    for m in r["models"].values():
        p = m["privacy"]
        for k in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant"):
            assert k in p
        for attack in ("loss", "zlib"):
            a = m["mia"][attack]
            assert 0 <= a["auc"] <= 1 and set(a["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}
        for c in m["canaries"]:
            assert isinstance(c["id"], str) and isinstance(c["repetitions"], int)
            assert isinstance(c["inserted"], bool) and isinstance(c["exposure_bits"], float)
    assert r["models"]["non_dp"]["privacy"]["epsilon"] is None
    assert r["run"]["preflight_warnings"] == []  # every inserted canary is trained on
    assert r["models"]["dp"]["privacy"]["epsilon"] == pytest.approx(1.0, rel=0.02)
    for f in ["config.yaml", "events.jsonl", "report.md", "report.html", "canaries/train.jsonl",
              "scores/non_dp/mia.parquet", "models/dp/privacy.json", "data/split.json", "per_sample/dp/scores.parquet"]:
        assert (run_dir / f).is_file(), f


def test_repeated_canaries_are_exposed_and_dp_narrows_the_gap(demo_run):
    run_dir, _ = demo_run
    models = json.loads((run_dir / "results.json").read_text())["models"]
    gap = {
        name: _median(m, lambda c: c["repetitions"] >= 16) - _median(m, lambda c: not c["inserted"])
        for name, m in models.items()
    }
    assert gap["non_dp"] >= 3.0, gap  # the tiny spec caps exposure at log2(212) = 7.7 bits
    assert gap["dp"] < gap["non_dp"] - 1.0, gap
    assert abs(gap["base"]) < 2.0, gap


def test_membership_attacks_find_members_only_where_the_model_trained_on_them(demo_run):
    _, results = demo_run
    non_dp, base = results.models["non_dp"], results.models["base"]
    assert set(non_dp.mia) == {"loss", "zlib", "lowercase", "min_k", "min_k_pp", "reference", "reference_ratio",
                               "neighbourhood", "lira_online", "lira_offline", "rmia"}
    assert non_dp.mia["loss"].auc > 0.7 and non_dp.mia["lira_online"].auc > 0.7
    assert set(base.skipped_attacks) == {"reference", "reference_ratio"}  # the base model is the reference
    assert base.control and not non_dp.control  # and the split check
    for attack, r in base.mia.items():
        assert abs(r.auc - 0.5) < 0.15, attack  # never saw the data: chance (about 110 per side)
    assert "user" in non_dp.mia_by_unit and non_dp.mia_by_unit["canary"]["exposure"].auc > 0.8
    for m in (non_dp, base):  # the attacks tested together, people relabelled (the demo splits per person)
        assert set(m.mia_joint.p_values) == set(m.mia) and m.mia_joint.unit == "user"
    assert min(non_dp.mia_joint.p_values.values()) == pytest.approx(1 / (non_dp.mia_joint.permutations + 1))
    dp = results.models["dp"]
    assert all(r.dp_bound is not None and not r.dp_bound.violated for r in dp.mia.values())
    # split per person: checked where one record differs (people with no other record)
    assert {r.dp_bound.scope for r in dp.mia.values()} == {"records of people with no other audited record"}
    assert 0 < dp.mia["loss"].dp_bound.n_members < dp.mia["loss"].n_members
    # one check per attack, each at 1 - 0.05 / k: 95% for the attacks' claim overall
    assert all(r.dp_bound.level == pytest.approx(1 - 0.05 / len(dp.mia)) for r in dp.mia.values())
    assert dp.mia_by_unit["canary"]["exposure"].dp_bound.level == 0.95  # reported on its own


def test_no_secret_canary_or_pii_in_shared_artifacts(demo_run):
    run_dir, _ = demo_run
    manifests = sorted((run_dir / "canaries").glob("manifest-*.json"))
    canaries = [c for f in manifests for c in CanaryManifest.load(f).canaries]
    assert len(canaries) > 200
    members = read_jsonl(run_dir / "data" / "members.jsonl")
    pii = {r["text"][s["start"] : s["end"]] for r in members for s in r["pii"]}
    shared = SHARED + [p.name for p in run_dir.glob("model_card-*.md")]
    for name in shared:
        text = (run_dir / name).read_text()
        for c in canaries:
            assert c.prefix not in text
            assert not re.search(rf"(?<![0-9A-Za-z+/]){re.escape(c.secret)}(?![0-9A-Za-z+/])", text), (name, c.id)
        leaked = [v for v in pii if v in text]
        assert not leaked, (name, leaked[:3])


def test_report_rebuilt_from_results_json_alone_is_identical(demo_run):
    run_dir, _ = demo_run
    results = Results.model_validate_json((run_dir / "results.json").read_text())
    assert render_html(results) == (run_dir / "report.html").read_text()
    assert render_markdown(results) == (run_dir / "report.md").read_text()


def test_a_second_run_resumes_from_the_cache(demo_run):
    run_dir, first = demo_run
    cfg = resolve_config(preset="tiny", canary_files=[TINY_SPEC, ONE_RUN_SPEC], overrides={"shadows": 4})
    again = run_demo(cfg, run_dir)
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    last_run = events[max(i for i, e in enumerate(events) if e["event"] == "run_started") :]
    assert not [e for e in last_run if e["event"] == "stage_started"]
    assert {e["stage"] for e in last_run if e["event"] == "stage_skipped"} >= {"data", "models/dp", "scores/dp"}
    assert again.models == first.models


def test_heavily_repeated_canaries_are_extracted_and_reference_canaries_are_not(demo_run):
    _, results = demo_run
    for name, m in results.models.items():
        assert all(c.extracted is not None for c in m.canaries), name
        assert not any(c.extracted for c in m.canaries if not c.inserted), name  # never inserted: never extracted
    non_dp = results.models["non_dp"].canaries
    top = [c.extracted for c in non_dp if c.repetitions == 32]
    assert sum(top) >= len(top) - 1, top
    assert sum(c.extracted for c in results.models["dp"].canaries) < sum(c.extracted for c in non_dp)
    groups = {g.repetitions: g for g in results.models["non_dp"].exposure_by_repetition}
    assert groups[32].extracted == sum(top) and groups[0].extracted == 0


def test_extraction_memorization_and_pii_are_measured_with_baselines(demo_run):
    _, results = demo_run
    non_dp, base, dp = (results.models[k] for k in ("non_dp", "base", "dp"))
    for m in (non_dp, base, dp):
        assert [(x.k, x.n) for x in m.memorization] == [(16, 16)]
        assert m.untargeted_extraction is not None and m.untargeted_extraction.n_samples == 150
        assert m.pii_extraction is not None and m.pii_extraction.overall.n_training > 0
    # the base model never saw the private records: nothing it generates is verified as training text
    assert base.untargeted_extraction.n_memorized == 0
    for m in (non_dp, base, dp):  # the audit's records written out, members against held-out, people relabelled
        u = m.untargeted_extraction
        assert m.untargeted_test.unit == "user" and u.n_member_records + u.n_held_out_records > 100
    assert non_dp.untargeted_extraction.n_memorized > dp.untargeted_extraction.n_memorized
    mem = non_dp.memorization[0]
    # at this size the tiny model completes members barely better than held-out records (shared template)
    assert mem.members.n_records > 50 and mem.non_members.n_records > 50
    assert 0 <= mem.members.token_match_mean <= 1 and mem.non_members.exact_match_ci is not None
    for m in (non_dp, base, dp):  # exact and approximate matches tested together, people relabelled
        assert set(m.memorization[0].test.p_values) == {"exact", "approx"} and m.memorization[0].test.unit == "user"
    # PII reconstruction: the non-DP model picks a member's true name far above chance, not a non-member's
    rec = non_dp.pii_reconstruction
    assert rec["members"].top1_accuracy > 5 * rec["members"].chance_top1
    assert rec["non_members"].top1_accuracy < rec["members"].top1_accuracy / 2
    assert non_dp.pii_reconstruction_test.unit == "user" and 0 < non_dp.pii_reconstruction_test.p_values["top1"] <= 1


def test_one_run_audit_bounds_eps_and_never_exceeds_the_accountant(demo_run):
    _, results = demo_run
    bound = {k: m.empirical_privacy[0] for k, m in results.models.items()}
    assert all(b.method == "one_run" and b.m == 200 for b in bound.values())
    assert bound["non_dp"].eps_lower_bound > 0.5  # memorised canaries seen three times
    assert bound["dp"].eps_lower_bound <= results.models["dp"].privacy.epsilon
    assert not bound["dp"].exceeds_accountant
    assert bound["base"].eps_lower_bound == 0.0  # never saw a canary
