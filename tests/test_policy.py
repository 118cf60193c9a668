"""The release gate: policy files, verdicts and exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from leakaudit.errors import LeakauditError
from leakaudit.policy import Policy, evaluate_policy, gate, load_policy
from leakaudit.report.schema import (
    AttackResult,
    CanaryResult,
    CanarySpecSummary,
    DPBoundCheck,
    ModelResult,
    PrivacyRecord,
    Results,
    RunInfo,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "experiments" / "policy.yaml"
SHA = "ab" * 32


def _attack(tpr1: float, *, n_non: int = 500, dp: DPBoundCheck | None = None) -> AttackResult:
    return AttackResult(
        auc=0.5 + tpr1 / 2,
        tpr_at_fpr={"0.001": tpr1 / 2, "0.01": tpr1, "0.1": min(1.0, tpr1 * 2)},
        n_members=500,
        n_non_members=n_non,
        min_resolvable_fpr=1 / n_non,
        dp_bound=dp,
    )


def _canary(i: int, bits: float, reps: int, *, extracted: bool | None = False, rank: int = 5) -> CanaryResult:
    return CanaryResult(
        id=f"rc-{i:04d}",
        spec="codes",
        repetitions=reps,
        inserted=reps > 0,
        exposure_bits=bits,
        rank=rank,
        extracted=extracted,
    )


def make_results(*, n_non: int = 500, null_samples: int = 2048) -> Results:
    cap = math.log2(null_samples)
    non_dp = ModelResult(
        privacy=PrivacyRecord(),
        mia={"loss": _attack(0.30, n_non=n_non), "lira": _attack(0.97, n_non=n_non)},
        canaries=[
            _canary(1, 5.5, 1),
            _canary(3, cap, 32, extracted=True, rank=1),
            _canary(4, cap, 8, extracted=False, rank=1),
            _canary(9, 9.5, 0),  # a reference canary: not counted for exposure
        ],
    )
    dp_check = DPBoundCheck(epsilon=8.0, delta=1e-5, violated=False, max_excess=0.0)
    dp = ModelResult(
        privacy=PrivacyRecord(epsilon=8.0, delta=1e-5, noise_multiplier=0.7),
        mia={"loss": _attack(0.03, n_non=n_non, dp=dp_check), "lira": _attack(0.02, n_non=n_non, dp=dp_check)},
        canaries=[_canary(1, 1.6, 1), _canary(3, 1.9, 32), _canary(9, 1.35, 0)],
    )
    return Results(
        run=RunInfo(
            leakaudit_version="0.1.0",
            created="2026-01-01T00:00:00Z",
            command="leakaudit demo",
            config_sha256=SHA,
            seed=0,
            device="cpu",
            n_members=500,
            n_non_members=n_non,
            n_canaries_inserted=3,
            n_reference_canaries=1,
        ),
        canary_specs=[
            CanarySpecSummary(
                name="codes",
                format="{d}{d}{d}{d}-{d}{d}{d}{d}",
                length=8,
                space_size=10**8,
                max_exposure_bits=26.575,
                null_samples=null_samples,
                exposure_method="interpolation",
                exposure_cap_bits=cap,
            )
        ],
        models={"non_dp": non_dp, "dp": dp},
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


FULL = """
max_exposure_bits: 8.0
max_tpr_at_1pct_fpr: 0.10
allow_extracted_canaries: false
max_epsilon: 10
min_audit_power: 100
require_dp_guarantee_holds: true
"""


# -- verdicts -------------------------------------------------------------------------------------------
def test_non_dp_fails_with_reasons_dp_passes(tmp_path):
    policy = load_policy(write(tmp_path / "p.yaml", FULL))
    verdicts = {v.model: v for v in evaluate_policy(make_results(), policy)}
    bad, good = verdicts["non_dp"], verdicts["dp"]
    assert not bad.passed and good.passed and good.reasons == []
    assert bad.reasons == [
        # among equally exposed canaries the one inserted least often is named
        "non_dp: canary exposure 11.00 bits > 8.0 allowed (canary rc-0004, 8 repetitions)",
        "non_dp: membership inference TPR at 1% FPR 97.0% > 10.0% allowed (attack lira)",
        "non_dp: 1 of 4 searched canaries extracted, none allowed: rc-0003 (32 repetitions)",
        "non_dp: trained without differential privacy, eps <= 10.0 required",
    ]
    assert {c.name: c.status for c in good.checks} == {
        "max_exposure_bits": "pass",
        "max_tpr_at_1pct_fpr": "pass",
        "allow_extracted_canaries": "pass",
        "max_epsilon": "pass",
        "min_audit_power": "pass",
        "require_dp_guarantee_holds": "pass",
    }
    for line in bad.reasons + good.reasons:  # ids only: no hash, no secret
        assert SHA not in line and "\n" not in line


def test_example_reason_format(tmp_path):
    res = make_results(null_samples=2024)
    res.models["non_dp"].canaries = [_canary(3, 10.98, 32, rank=1)]
    v = evaluate_policy(res, Policy(max_exposure_bits=8.0), model="non_dp")
    assert v[0].reasons == ["non_dp: canary exposure 10.98 bits > 8.0 allowed (canary rc-0003, 32 repetitions)"]


def test_dict_and_model_give_the_same_verdicts():
    policy = Policy(max_exposure_bits=8.0, max_tpr_at_1pct_fpr=0.1)
    res = make_results()
    assert evaluate_policy(res, policy) == evaluate_policy(res.model_dump(mode="json"), policy)


def test_only_one_model(tmp_path):
    policy = Policy(max_epsilon=10)
    v = evaluate_policy(make_results(), policy, model="dp")
    assert [x.model for x in v] == ["dp"] and v[0].passed
    with pytest.raises(LeakauditError, match="no model 'nope'"):
        evaluate_policy(make_results(), policy, model="nope")


def test_empty_policy_passes_everything_but_a_policy_file_must_set_a_limit(tmp_path):
    assert all(v.passed and not v.checks for v in evaluate_policy(make_results(), Policy()))
    p = tmp_path / "p.yaml"
    for text in ("", "description: lax\nfail_on_missing: true\n", "allow_extracted_canaries: true\n",
                 "require_dp_guarantee_holds: false\nmax_epsilon: null\n"):
        p.write_text(text)
        with pytest.raises(LeakauditError, match="the policy sets no limit, so every model would pass"):
            load_policy(p)
    for text in ("allow_extracted_canaries: false\n", "require_dp_guarantee_holds: true\n", "min_audit_power: 100\n"):
        p.write_text(text)
        assert load_policy(p).checks_something()


def test_missing_metrics_are_reported_and_fail_only_when_asked():
    res = make_results().model_dump(mode="json")
    lax = Policy(max_pii_extraction_rate=0.01)
    v = {x.model: x for x in evaluate_policy(res, lax)}
    assert v["dp"].passed and v["dp"].reasons == ["dp: PII extraction rate not measured"]
    strict = Policy(max_pii_extraction_rate=0.01, fail_on_missing=True)
    v = {x.model: x for x in evaluate_policy(res, strict)}
    assert not v["dp"].passed and v["dp"].reasons == ["dp: PII extraction rate not measured (fail_on_missing)"]
    # no canaries, no attacks: every such limit is not measured
    res["models"]["dp"]["canaries"] = []
    res["models"]["dp"]["mia"] = {}
    v = evaluate_policy(
        res,
        Policy(max_exposure_bits=8, max_tpr_at_1pct_fpr=0.1, min_audit_power=100, allow_extracted_canaries=False),
        model="dp",
    )[0]
    assert v.passed and {c.status for c in v.checks} == {"not measured"} and len(v.reasons) == 4


def test_pii_extraction_rate_when_present():
    res = make_results().model_dump(mode="json")
    res["models"]["non_dp"]["pii_extraction"] = {"overall": {"recall": 0.2, "n_training": 50}, "by_type": {}}
    res["models"]["dp"]["pii_extraction"] = {"overall": {"recall": 0.0, "n_training": 50}, "by_type": {}}
    v = {x.model: x for x in evaluate_policy(res, Policy(max_pii_extraction_rate=0.01))}
    assert v["non_dp"].reasons == ["non_dp: PII extraction rate 20.0% > 1.0% allowed"]
    assert v["dp"].passed and v["dp"].checks[0].status == "pass"


def test_dp_guarantee_broken_by_empirical_bound_or_roc():
    policy = Policy(require_dp_guarantee_holds=True)
    res = make_results().model_dump(mode="json")
    res["models"]["dp"]["empirical_privacy"] = [{
        "method": "one_run",
        "eps_lower_bound": 9.1,
        "alpha": 0.05,
        "delta": 1e-5,
        "accountant_epsilon": 8.0,
        "exceeds_accountant": True,
        "note": "",
    }]
    v = evaluate_policy(res, policy, model="dp")[0]
    assert not v.passed
    assert "empirical eps lower bound 9.10" in v.reasons[0] and "accountant eps 8.00" in v.reasons[0]
    res = make_results()
    res.models["dp"].mia["loss"].dp_bound = DPBoundCheck(epsilon=8.0, delta=1e-5, violated=True, max_excess=0.2)
    v = evaluate_policy(res, policy, model="dp")[0]
    assert not v.passed and "attack loss" in v.reasons[0]
    # a sound bound below eps passes; a model without DP claims nothing and passes this check
    res = make_results().model_dump(mode="json")
    res["models"]["dp"]["empirical_privacy"] = [{
        "method": "one_run",
        "eps_lower_bound": 1.2,
        "alpha": 0.05,
        "delta": 1e-5,
        "accountant_epsilon": 8.0,
    }]
    assert all(x.passed for x in evaluate_policy(res, policy))


def test_a_dp_bound_check_no_attack_could_fail_is_no_audit_of_the_guarantee():
    policy = Policy(require_dp_guarantee_holds=True)
    res = make_results().model_dump(mode="json")
    res["models"]["dp"]["empirical_privacy"] = []
    for r in res["models"]["dp"]["mia"].values():
        r["dp_bound"]["testable"] = False
    check = evaluate_policy(res, policy, model="dp")[0].checks[0]
    assert check.status == "not measured" and "not audited" in check.message
    assert "no attack could have exceeded the ROC bound at this size" in check.message
    # an empirical bound whose best possible value lies below the accountant's eps cannot fail either
    res["models"]["dp"]["empirical_privacy"] = [{
        "method": "one_run", "eps_lower_bound": 0.04, "alpha": 0.05, "delta": 1e-5, "best_possible": 5.0,
        "accountant_epsilon": 8.0,
    }]
    check = evaluate_policy(res, policy, model="dp")[0].checks[0]
    assert check.status == "not measured" and "the empirical bound could not exceed the accountant's eps" in (
        check.message)
    res["models"]["dp"]["empirical_privacy"][0]["best_possible"] = 12.0
    assert evaluate_policy(res, policy, model="dp")[0].checks[0].status == "pass"
    res["models"]["dp"]["empirical_privacy"] = []
    for r in res["models"]["dp"]["mia"].values():
        r["dp_bound"]["testable"] = True
    assert evaluate_policy(res, policy, model="dp")[0].checks[0].status == "pass"


def test_audit_power():
    v = {x.model: x for x in evaluate_policy(make_results(n_non=50), Policy(min_audit_power=100))}
    assert not v["dp"].passed
    assert v["dp"].reasons[0].startswith("dp: attack loss rests on 50 non-members (FPR resolution 2.00%)")


def test_saturated_exposure_is_not_measured():
    # 64 null samples: exposure cannot show more than 6 bits, so a limit of 8 cannot be checked on a canary
    # ranked first
    res = make_results(null_samples=64)
    v = evaluate_policy(res, Policy(max_exposure_bits=8.0), model="non_dp")[0]
    assert v.passed and v.checks[0].status == "not measured" and "saturates at 6.00 bits" in v.reasons[0]
    v = evaluate_policy(res, Policy(max_exposure_bits=8.0, fail_on_missing=True), model="non_dp")[0]
    assert not v.passed
    assert evaluate_policy(res, Policy(max_exposure_bits=5.0), model="non_dp")[0].checks[0].status == "fail"


def test_default_policy_file():
    policy = load_policy(DEFAULT_POLICY)
    assert policy.allow_extracted_canaries is False and policy.max_epsilon == 10
    v = {x.model: x for x in evaluate_policy(make_results(), policy)}
    assert not v["non_dp"].passed
    assert v["dp"].passed


# -- policy files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, field",
    [
        ("max_exposure_bit: 8\n", "max_exposure_bit"),
        ("max_tpr_at_1pct_fpr: high\n", "max_tpr_at_1pct_fpr"),
        ("max_tpr_at_1pct_fpr: 1.5\n", "max_tpr_at_1pct_fpr"),
        ("max_epsilon: -1\n", "max_epsilon"),
        ("min_audit_power: 0\n", "min_audit_power"),
        ("max_tpr_at_1pct_fpr: true\n", "max_tpr_at_1pct_fpr"),  # read as 1.0 it passed every model
        ("min_audit_power: yes\n", "min_audit_power"),
        ("max_exposure_bits: .nan\n", "max_exposure_bits"),
    ],
)
def test_invalid_policy_names_file_and_field(tmp_path, text, field):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(LeakauditError) as e:
        load_policy(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{field}'" in msg and "\n" not in msg


def test_policy_file_problems(tmp_path):
    with pytest.raises(LeakauditError, match="policy file not found"):
        load_policy(tmp_path / "none.yaml")
    with pytest.raises(LeakauditError, match="not valid YAML"):
        load_policy(write(tmp_path / "a.yaml", "max_epsilon: [1\n"))
    with pytest.raises(LeakauditError, match="YAML mapping"):
        load_policy(write(tmp_path / "b.yaml", "- 1\n- 2\n"))
    with pytest.raises(LeakauditError, match="sets no limit"):  # an empty file would pass every model
        load_policy(write(tmp_path / "c.yaml", ""))


# -- gate -------------------------------------------------------------------------------------------
def _run_dir(tmp_path: Path, res: Results) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(res.model_dump_json(indent=1), encoding="utf-8")
    return run


def test_gate_exit_codes(tmp_path):
    run = _run_dir(tmp_path, make_results())
    policy = write(tmp_path / "p.yaml", FULL)
    code, lines = gate(run, policy)
    assert code == 1
    assert lines[0] == "FAIL non_dp" and "PASS dp" in lines and lines[-1] == "gate: failed (1/2 models)"
    failing = lines[1:lines.index("PASS dp")]
    assert failing and all(x.startswith(("  - [fail] ", "  - [not measured")) for x in failing)
    assert any(x.startswith("  - [fail] non_dp: ") for x in failing)
    code, lines = gate(run, policy, model="dp")
    assert code == 0 and lines == ["PASS dp", "gate: passed (1/1 models)"]
    code, _ = gate(run, DEFAULT_POLICY, model="dp")
    assert code == 0
    code, _ = gate(run, DEFAULT_POLICY, model="non_dp")
    assert code == 1


def test_a_gate_that_passes_with_limits_not_measured_says_so(tmp_path):
    """Only one limit, which the non-DP model cannot be measured on: it passes (fail_on_missing is off), and the
    last line says why, instead of a bare 'passed' beside a report that calls the model leaky."""
    run = _run_dir(tmp_path, make_results())
    code, lines = gate(run, write(tmp_path / "p.yaml", "require_secret_randomness: true\n"), model="non_dp")
    assert code == 0 and lines[0] == "PASS non_dp" and lines[1].startswith("  - [not measured] non_dp: ")
    assert lines[-1] == ("gate: passed (1/1 models; 1 check of a limit not measured, passed only because "
                         "fail_on_missing is off)")
    code, lines = gate(run, write(tmp_path / "q.yaml", "require_secret_randomness: true\nfail_on_missing: true\n"),
                       model="non_dp")
    assert code == 1 and lines[-1] == "gate: failed (0/1 models)"


def test_gate_fails_an_empirical_bound_above_the_accountant(tmp_path):
    data = make_results().model_dump(mode="json")
    data["models"]["dp"]["empirical_privacy"] = [{
        "method": "one_run",
        "eps_lower_bound": 9.5,
        "alpha": 0.05,
        "delta": 1e-5,
        "accountant_epsilon": 8.0,
        "exceeds_accountant": True,
    }]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(data), encoding="utf-8")
    code, lines = gate(run, write(tmp_path / "p.yaml", "require_dp_guarantee_holds: true\n"), model="dp")
    assert code == 1 and "DP guarantee failed" in lines[1]


def test_max_epsilon_fails_a_privacy_record_not_saved_with_the_audited_weights():
    res = make_results()
    assert evaluate_policy(res, Policy(max_epsilon=10), model="dp")[0].passed
    res.models["dp"].privacy.bound_to_weights = False  # a privacy.json beside other weights: a claim
    (v,) = evaluate_policy(res, Policy(max_epsilon=10), model="dp")
    assert not v.passed and "not saved with the audited weights" in v.reasons[0]


def test_gate_input_errors(tmp_path):
    policy = write(tmp_path / "p.yaml", FULL)
    with pytest.raises(LeakauditError, match="results file not found"):
        gate(tmp_path, policy)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LeakauditError, match="not valid JSON"):
        gate(run, policy)
    data = make_results().model_dump(mode="json")
    del data["run"]
    (run / "results.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LeakauditError, match="field 'run'"):
        gate(run, policy)
    (run / "results.json").write_text(make_results().model_dump_json(), encoding="utf-8")
    with pytest.raises(LeakauditError, match="policy file not found"):
        gate(run, tmp_path / "missing.yaml")
    with pytest.raises(LeakauditError, match="no model 'x'"):
        gate(run, policy, model="x")
    assert LeakauditError.exit_code == 2
    # a NaN compares false with every limit: it would pass, and as the first value hide the worst one
    data = make_results().model_dump(mode="json")
    data["models"]["non_dp"]["mia"]["loss"]["tpr_at_fpr"]["0.01"] = float("nan")
    (run / "results.json").write_text(json.dumps(data), encoding="utf-8")  # json writes it as NaN
    with pytest.raises(LeakauditError, match=r"field 'models.non_dp.mia.loss.tpr_at_fpr.0.01' is not a finite number"):
        gate(run, policy)


def _guesses(res: Results, model: str, other: dict[int, bool], *, found: int = 10) -> Results:
    """Record the search's first guesses on ``model``: canary number -> first guess another inserted secret."""
    m = res.models[model]
    m.canaries = [
        c.model_copy(update={"extraction_guesses": 10, "extraction_guesses_found": found,
                             "extraction_first_guess_inserted": other.get(int(c.id[3:]), False)})
        for c in m.canaries
    ]
    return res


def test_other_canaries_secret_as_first_guess():
    policy = Policy(allow_other_canary_secrets=False)
    res = _guesses(_guesses(make_results(), "non_dp", {9: True, 1: True}), "dp", {})
    v = {x.model: x for x in evaluate_policy(res, policy)}
    assert v["non_dp"].reasons == [
        "non_dp: for 2 of 4 searched canaries the first guess was another inserted canary's secret, none allowed: "
        "rc-0001 (1 repetition), rc-0009 (reference canary)"
    ]
    assert v["dp"].passed and v["dp"].checks[0].status == "pass"
    assert v["dp"].checks[0].message == "dp: no first guess of 3 searches was another canary's secret"
    # an older run recorded no first guesses; a search that completed none cannot tell: not measured
    v = evaluate_policy(make_results(), policy, model="dp")[0]
    assert v.passed and v.reasons == ["dp: first guesses of the extraction search not recorded"]
    v = evaluate_policy(_guesses(make_results(), "dp", {}, found=0), policy, model="dp")[0]
    assert v.checks[0].status == "not measured" and "(inconclusive)" in v.reasons[0]
    assert not evaluate_policy(_guesses(make_results(), "dp", {}, found=0), Policy(
        allow_other_canary_secrets=False, fail_on_missing=True), model="dp")[0].passed
    for line in v.reasons:
        assert SHA not in line


def test_extraction_that_completed_no_secret_is_not_a_pass():
    policy = Policy(allow_extracted_canaries=False)
    res = _guesses(make_results(), "dp", {}, found=0)
    check = evaluate_policy(res, policy, model="dp")[0].checks[0]
    assert check.status == "not measured"
    n_inserted = sum(c.inserted for c in res.models["dp"].canaries)
    assert check.message == (
        "dp: canary extraction inconclusive: the search found no complete secret within its budget for any of the "
        f"{n_inserted} inserted canaries"
    )
    # only a reference canary's search completed a secret: still inconclusive (the inserted canaries decide)
    one_ref = [c.model_copy(update={"extraction_guesses_found": 1}) if not c.inserted else c
               for c in res.models["dp"].canaries]
    assert any(not c.inserted for c in one_ref)
    ref_only = res.model_copy(update={"models": {"dp": res.models["dp"].model_copy(update={"canaries": one_ref})}})
    assert evaluate_policy(ref_only, policy, model="dp")[0].checks[0].status == "not measured"
    from leakaudit.report.canaries import extraction_inconclusive

    assert extraction_inconclusive(ref_only.models["dp"])
    # a beam search always completes: its negative is a measurement
    res.models["dp"].canaries = [c.model_copy(update={"extracted_beam": False}) for c in res.models["dp"].canaries]
    check = evaluate_policy(res, policy, model="dp")[0].checks[0]
    assert check.status == "pass" and "(beam search; the best-first search found no complete secret" in check.message


def test_default_policy_checks_other_canaries_secrets():
    policy = load_policy(DEFAULT_POLICY)
    assert policy.allow_other_canary_secrets is False
    res = _guesses(_guesses(make_results(), "non_dp", {9: True}), "dp", {}, found=0)
    v = {x.model: x for x in evaluate_policy(res, policy)}
    assert any("rc-0009 (reference canary)" in r for r in v["non_dp"].reasons)
    assert v["dp"].passed  # inconclusive searches are reported, not failed (fail_on_missing: false)
    assert {c.name: c.status for c in v["dp"].checks}["allow_other_canary_secrets"] == "not measured"


def test_searches_that_completed_no_guess_are_left_out_of_the_counts():
    """One search completed a guess, the others none: the passes say on how little they rest."""
    res = make_results()
    m = res.models["dp"]
    m.canaries = [c.model_copy(update={"extraction_guesses": 10, "extraction_guesses_found": 0 if i else 3,
                                       "extraction_first_guess_inserted": None if i else False})
                  for i, c in enumerate(m.canaries)]
    n = len(m.canaries)
    assert n >= 3
    policy = Policy(allow_other_canary_secrets=False, allow_extracted_canaries=False)
    checks = {c.name: c for c in evaluate_policy(res, policy, model="dp")[0].checks}
    assert checks["allow_other_canary_secrets"].message == (
        f"dp: no first guess of 1 searches was another canary's secret ({n - 1} more completed no guess within the "
        "budget)")
    assert checks["allow_extracted_canaries"].message == (
        f"dp: none of {n} searched canaries extracted (the best-first search completed no secret within its budget "
        f"for {n - 1} of them)")


def test_secret_randomness_required_of_dp_models_only():
    policy = Policy(require_secret_randomness=True)
    res = make_results()
    dp = res.models["dp"]
    for how, status in (("secret", "pass"), ("seeded", "fail"), (None, "not measured")):
        model = dp.model_copy(update={"privacy": dp.privacy.model_copy(update={"randomness": how})})
        v = evaluate_policy(res.model_copy(update={"models": {"dp": model}}), policy)[0]
        assert [c.status for c in v.checks] == [status], how
        assert v.passed == (status != "fail")
    seeded = dp.model_copy(update={"privacy": dp.privacy.model_copy(update={"randomness": "seeded"})})
    v = evaluate_policy(res.model_copy(update={"models": {"dp": seeded}}), policy)[0]
    assert v.reasons == ["dp: DP batches and noise were drawn from the recorded training seed (seeded): anyone with "
                         "the seed can regenerate them; retrain with secret randomness"]
    plain = evaluate_policy(res, policy, model="non_dp")[0]
    assert [c.status for c in plain.checks] == ["not measured"] and plain.passed


def test_tpr_limit_on_too_few_non_members_is_not_measured_unless_exceeded():
    """With 50 non-members the TPR at 1% FPR is the TPR at FPR 0, a lower bound: above the limit it fails,
    below it shows nothing."""
    res = make_results()
    dp = res.models["dp"]
    policy = Policy(max_tpr_at_1pct_fpr=0.10, min_audit_power=100)
    for tpr, status in ((0.05, "not measured"), (0.5, "fail")):
        model = dp.model_copy(update={"mia": {"loss": _attack(tpr, n_non=50)}})
        checks = evaluate_policy(res.model_copy(update={"models": {"dp": model}}), policy)[0].checks
        assert [c.status for c in checks] == [status, "fail"], tpr
    zero = dp.model_copy(update={"mia": {"loss": _attack(0.05).model_copy(update={"n_non_members": 0})}})
    (v,) = evaluate_policy(res.model_copy(update={"models": {"dp": zero}}), Policy(min_audit_power=100))
    assert v.reasons[0].startswith("dp: attack loss rests on 0 non-members (FPR resolution none)")


def test_yaml_files_refuse_a_key_given_twice_but_keep_anchors_and_merge_keys(tmp_path):
    from leakaudit.io import read_yaml_mapping

    p = write(tmp_path / "p.yaml", "max_exposure_bits: 8\nmax_exposure_bits: 100\n")
    with pytest.raises(LeakauditError, match=r"field 'max_exposure_bits' is given twice \(line 2\)"):
        load_policy(p)  # the last one silently winning would loosen the policy unseen
    write(p, "a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3}\n")
    assert read_yaml_mapping(p, "file") == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}
    write(p, "? [a, b]\n: 1\n")
    with pytest.raises(LeakauditError, match="not valid YAML"):
        read_yaml_mapping(p, "file")
