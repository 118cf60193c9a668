"""Every registered attack: its contract, its docs entry, and known answers on simulated scores."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leakaudit.attacks import ATTACKS, AttackInputs, auc, build_score_table, run_attack, tpr_at_fpr
from leakaudit.attacks.lira import _fit, _variance_mode
from leakaudit.attacks.neighbours import neighbours
from leakaudit.attacks.rmia import tune_a
from leakaudit.errors import LeakauditError
from leakaudit.models import Target
from leakaudit.train.shadows import membership_matrix

DOCS = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()


@pytest.fixture(scope="module")
def tiny_inputs(gpt2, llama, tokenizer, corpora):
    """Real score tables from the tiny models: gpt2 as target, llama as reference, simulated shadows."""
    texts = [r["text"] for r in corpora[0][:40]]
    member = [i % 2 == 0 for i in range(len(texts))]
    ids = [str(i) for i in range(len(texts))]
    target = build_score_table(Target(gpt2, tokenizer), ids, texts, member, lowercase=True, n_neighbours=3)
    ref = build_score_table(Target(llama, tokenizer), ids, texts, member)
    rng = np.random.default_rng(0)
    shadow_in = membership_matrix(4, len(texts), seed=1)
    stats = target["mean_logprob"].to_numpy()[None] + rng.normal(0, 0.05, (4, len(texts))) + 0.1 * shadow_in
    return AttackInputs(target=target, references={"llama": ref}, shadow_stats=stats, shadow_in=shadow_in)


def test_every_attack_has_metadata_and_a_docs_entry():
    assert len(ATTACKS) >= 11
    for name, info in ATTACKS.items():
        assert info.paper and info.threat_model and info.summary and info.direction == "higher = member"
        assert re.search(rf"^### {re.escape(name)}$", DOCS, re.M), f"docs/methods.md has no entry for {name}"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_contract_every_attack_runs_on_the_tiny_model(tiny_inputs, name):
    scores = run_attack(name, tiny_inputs)
    assert scores.shape == (len(tiny_inputs.target),)
    assert np.isfinite(scores).all()
    assert np.array_equal(scores, run_attack(name, tiny_inputs))  # deterministic


def test_missing_inputs_and_unknown_parameters_are_refused(tiny_inputs):
    bare = AttackInputs(target=tiny_inputs.target[["id", "member", "mean_logprob", "zlib_len", "token_logprobs"]])
    with pytest.raises(LeakauditError, match="reference model"):
        run_attack("reference", bare)
    with pytest.raises(LeakauditError, match="shadow models"):
        run_attack("lira_online", bare)
    with pytest.raises(LeakauditError, match="unknown parameter"):
        run_attack("min_k", tiny_inputs, {"kk": 0.1})


def test_min_k_uses_the_lowest_tokens_and_at_least_one():
    t = pd.DataFrame({"token_logprobs": [np.array([-1.0, -5.0, -2.0, -0.5, -3.0]), np.array([-4.0])]})
    inp = AttackInputs(target=t)
    np.testing.assert_allclose(run_attack("min_k", inp, {"k": 0.4}), [-4.0, -4.0])
    np.testing.assert_allclose(run_attack("min_k", inp, {"k": 0.2}), [-5.0, -4.0])


def test_min_k_pp_standardises_by_the_vocabulary_statistics():
    t = pd.DataFrame({
        "token_logprobs": [np.array([-1.0, -3.0])],
        "token_mu": [np.array([-2.0, -2.0])],
        "token_var": [np.array([4.0, 1.0])],
    })
    np.testing.assert_allclose(run_attack("min_k_pp", AttackInputs(target=t), {"k": 0.5}), [-1.0])


def test_neighbours_are_seeded_and_keep_the_text_shape():
    texts = ["The customer Anna Berg called about a refund on her account.", "Short note."]
    a, b = neighbours(texts, n=3, seed=1), neighbours(texts, n=3, seed=1)
    assert a == b and len(a[0]) == 3
    for copy in a[0]:
        assert copy != texts[0] and copy.endswith(".") and abs(len(copy.split()) - len(texts[0].split())) == 0


def _simulated(n=2000, n_shadows=16, effect=0.4, seed=0):
    """Per-example difficulty dominates the loss; training raises the statistic by `effect`."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(-2.0, 1.0, n)
    member = rng.random(n) < 0.5
    shadow_in = membership_matrix(n_shadows, n, seed=seed + 1)
    noise = 0.05
    stats = difficulty + effect * shadow_in + rng.normal(0, noise, (n_shadows, n))
    target = difficulty + effect * member + rng.normal(0, noise, n)
    table = pd.DataFrame({"mean_logprob": target, "member": member})
    return AttackInputs(target=table, shadow_stats=stats, shadow_in=shadow_in), member


def test_shadow_attacks_beat_loss_when_difficulty_varies():
    inp, member = _simulated()
    loss = run_attack("loss", inp)
    base_tpr = tpr_at_fpr(loss[member], loss[~member], 0.01)
    for name in ("lira_online", "lira_offline", "rmia"):
        s = run_attack(name, inp)
        assert tpr_at_fpr(s[member], s[~member], 0.01) >= max(2 * base_tpr, 0.5), name


def test_every_attack_is_at_chance_when_the_model_never_saw_the_data():
    inp, member = _simulated(effect=0.0, seed=3)
    inp.shadow_in = membership_matrix(16, len(member), seed=9)
    for name in ("loss", "lira_online", "lira_offline", "rmia"):
        s = run_attack(name, inp)
        assert abs(auc(s[member], s[~member]) - 0.5) < 0.05, name


def test_offline_lira_ranks_as_the_log_cdf_and_keeps_strong_leaks_apart():
    from scipy.stats import norm

    inp, member = _simulated(seed=6)
    s = run_attack("lira_offline", inp)
    mu, sd = _fit(inp.shadow_stats, ~inp.shadow_in, _variance_mode("auto", inp.shadow_stats.shape[0]))
    z = (inp.target["mean_logprob"].to_numpy() - mu) / sd
    moderate = np.abs(z) < 30  # where log Phi has not rounded to 0
    logcdf = norm.logcdf(z)
    assert np.array_equal(np.argsort(s[moderate], kind="stable"), np.argsort(logcdf[moderate], kind="stable"))
    # far above the OUT distribution (z of 40 and 60): log Phi gives both exactly 0, the score keeps them apart
    inp.target.loc[0:1, "mean_logprob"] = mu[:2] + sd[:2] * np.array([40.0, 60.0])
    far = run_attack("lira_offline", inp)[:2]
    assert norm.logcdf(40.0) == norm.logcdf(60.0) == 0.0 and far[1] > far[0] > 30


def test_rmia_with_too_few_shadows_to_tune_a_takes_the_plain_out_average():
    """With 2 shadows no shadow can be attacked from the other (some text has no OUT reference left): the
    fallback a = 0.3 put a constant 0.35 beside sequence probabilities of about 0.05, and RMIA ranked as LOSS."""
    from leakaudit.train.shadows import membership_matrix

    rng = np.random.default_rng(1)
    n = 400
    base = rng.normal(-3.0, 0.5, n)  # a text's own difficulty; exp(mean lp) about 0.05
    member = rng.random(n) < 0.5
    target = pd.DataFrame({"mean_logprob": base + 0.15 * member + rng.normal(0, 0.05, n)})
    shadow_in = membership_matrix(2, n, seed=0)
    stats = np.stack([base + 0.15 * m + rng.normal(0, 0.05, n) for m in shadow_in])
    inp = AttackInputs(target=target, shadow_stats=stats, shadow_in=shadow_in)
    assert tune_a(stats, shadow_in) == 1.0
    s, loss = run_attack("rmia", inp), run_attack("loss", inp)
    np.testing.assert_array_equal(s, run_attack("rmia", inp, {"a": 1.0}))
    assert auc(s[member], s[~member]) > 0.85 > 0.65 > auc(loss[member], loss[~member])


def test_rmia_tunes_a_on_a_paired_shadow_when_a_is_not_given():
    inp, member = _simulated(n=600, n_shadows=8, seed=4)
    a = tune_a(inp.shadow_stats, inp.shadow_in)
    assert a in np.round(np.linspace(0, 1, 11), 2)
    np.testing.assert_array_equal(run_attack("rmia", inp), run_attack("rmia", inp, {"a": a}))
    s = run_attack("rmia", inp, {"a": 0.3, "gamma": 1.0})
    # gamma = 1: the score is the rank of ratio(x) among the population, so the ranking equals the ratio's
    ratio = np.exp(inp.target["mean_logprob"]) / (0.65 * np.exp(inp.shadow_stats).mean(0, where=~inp.shadow_in) + 0.35)
    assert auc(s[member], s[~member]) == pytest.approx(auc(ratio[member], ratio[~member]), abs=1e-9)


def test_every_parameter_has_a_check_its_default_passes():
    from leakaudit.attacks.registry import check_params

    for name, info in ATTACKS.items():
        assert set(info.checks) == set(info.params), name
        check_params(name, dict(info.params))  # the defaults are accepted


@pytest.mark.parametrize("attack, params, needle", [
    ("min_k", {"k": "abc"}, "min_k.k: expected a number in (0, 1] (got 'abc')"),
    ("min_k", {"k": 5}, "min_k.k: expected a number in (0, 1]"),
    ("min_k_pp", {"k": -0.5}, "min_k_pp.k: expected a number in (0, 1]"),
    ("rmia", {"gamma": 0}, "rmia.gamma: expected a number > 0"),
    ("rmia", {"a": 1.5}, "rmia.a: expected null (tuned) or a number in [0, 1]"),
    ("lira_online", {"variance": "wide"}, "lira_online.variance: expected one of auto, global, per_example"),
    ("reference", {"reference": 3}, "reference.reference: expected null or a reference model's name"),
    ("min_k", {"zz": 1}, "min_k.zz: unknown parameter of attack 'min_k' (it has k)"),
])
def test_attack_parameters_are_checked_before_any_work(attack, params, needle):
    from leakaudit.attacks.registry import check_params
    from leakaudit.config import resolve_config

    with pytest.raises(LeakauditError) as e:
        check_params(attack, params)
    assert str(e.value).startswith(f"--param {needle}")
    with pytest.raises(LeakauditError) as e:  # the same check for the demo's and experiments' attack_params
        resolve_config(preset="tiny", overrides={"attack_params": {attack: params}})
    assert str(e.value).startswith(f"config: field 'attack_params': {needle}")


def test_a_text_with_no_token_to_score_is_refused_by_id(gpt2, tokenizer):
    import copy

    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None  # as a tokenizer without a BOS token (Qwen2's, for one)
    one_token = next(t for t in ("the", "a", "account", "code") if len(no_bos(t)["input_ids"]) == 1)
    texts = ["Security note for Ada: the account recovery code is 123456.", one_token]
    with pytest.raises(LeakauditError, match=r"1 of 2 records have no token to score \(ids r2\)"):
        build_score_table(Target(gpt2, no_bos), ["r1", "r2"], texts, [True, False])
    table = build_score_table(Target(gpt2, tokenizer), ["r1", "r2"], texts, [True, False])  # with the BOS: scored
    assert list(table["n_tokens"]) == [len(tokenizer(texts[0])["input_ids"]), 1]


def test_shadows_must_have_been_trained_on_exactly_the_audited_rows_in_order():
    from leakaudit.audit import check_shadow_population
    from leakaudit.io import texts_hash
    from leakaudit.train.shadows import ShadowSet

    rows = [{"text": f"record {i}"} for i in range(6)]
    shadows = ShadowSet(dirs=[], membership=membership_matrix(4, 6, seed=0), key="k",
                        population_sha256=texts_hash([r["text"] for r in rows]))
    check_shadow_population(shadows, rows)  # the same texts, the same order
    with pytest.raises(LeakauditError, match="different population"):
        check_shadow_population(shadows, rows[::-1])  # same size, reordered: each row would get another's IN/OUT
    with pytest.raises(LeakauditError, match="different population"):
        check_shadow_population(shadows, rows[:5])


def test_per_user_unit_scores_people_or_says_why_not():
    import pandas as pd

    from leakaudit.audit import _user_groups, _user_scores

    table = pd.DataFrame({"user_id": ["a", "a", "b", "c", "c", "d"], "member": [1, 1, 1, 0, 0, 0]})
    users, why = _user_groups(table)
    assert why is None
    ins, outs = _user_scores(users, np.array([1.0, 3.0, 5.0, 0.0, 2.0, 7.0]))
    assert ins.tolist() == [2.0, 5.0] and outs.tolist() == [1.0, 7.0]  # a person's score: the mean of their records
    assert _user_groups(table.drop(columns="user_id")) == (None, None)  # no users at all: nothing to say
    mixed = table.assign(member=[1, 0, 1, 0, 0, 0])
    assert _user_groups(mixed)[1].startswith("1 of 4 users have records among both members and non-members")
    assert _user_groups(table.assign(user_id=["a", None, "b", "c", "c", "d"]))[1] == "1 of 6 records have no user_id"
    assert _user_groups(table.assign(member=1))[1] == "every user is among the members"


def test_one_run_bounds_of_several_specs_share_alpha(tmp_path):
    import json

    from leakaudit.audit import _one_run_bounds
    from leakaudit.report.schema import PrivacyRecord

    rng = np.random.default_rng(0)
    rows = [{"id": f"{s}{i}", "spec": s, "included": bool(i % 2), "nll": float(rng.normal(5.0 - 3.0 * (i % 2)))}
            for s in ("a", "b") for i in range(200)]
    (tmp_path / "audit_canaries.json").write_text(json.dumps(rows))
    both = _one_run_bounds(tmp_path, {}, PrivacyRecord(), seed=0)
    assert [e.alpha for e in both] == [0.025, 0.025] and "shared by the 2 one-run specs" in both[0].note
    (tmp_path / "audit_canaries.json").write_text(json.dumps([r for r in rows if r["spec"] == "a"]))
    (alone,) = _one_run_bounds(tmp_path, {}, PrivacyRecord(), seed=0)
    assert alone.alpha == 0.05 and alone.eps_lower_bound > both[0].eps_lower_bound > 0  # the same data, less alpha



def test_per_example_lira_variance_needs_two_shadows_on_a_side():
    """One shadow on a side has no spread (0, floored to 1e-4: scores in the millions): such examples take the
    pooled spread, the others keep their own."""
    rng = np.random.default_rng(21)
    stats = rng.normal(size=(6, 4))
    member = np.zeros((6, 4), bool)
    member[:1, 0] = True  # example 0: one IN shadow
    member[:3, 1:] = True  # the others: three
    _, sd_global = _fit(stats, member, "global")
    mu, sd = _fit(stats, member, "per_example")
    assert sd[0] == pytest.approx(sd_global[0])
    assert sd[1:] == pytest.approx(stats[:3, 1:].std(axis=0, ddof=1))
    assert mu[0] == stats[0, 0]
