"""Experiments: config validation, a tiny 2-cell grid end to end, resuming, and the submitit executor."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys

import pytest
import yaml

from leakaudit.canaries import CanaryManifest
from leakaudit.errors import LeakauditError
from leakaudit.experiment import (
    ExperimentFailed,
    SubmititExecutor,
    experiment_from_dict,
    load_experiment,
    make_executor,
    run_experiment,
)
from leakaudit.io import read_jsonl, sha256_file

CELLS = ["full-epsinf-seed0", "full-eps1-seed0"]
TINY = {
    "name": "tiny_grid",
    "base": {
        "preset": "tiny",
        "device": "cpu",
        "data": {"n_private": 120, "n_public": 300},
        "model": {"vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2},
        "pretrain": {"epochs": 1, "batch_size": 32, "lr": 3e-3},
        "dp_train": {"epochs": 8, "batch_size": 32, "lr": 3e-3},
        "canaries": [
            {"name": "codes", "template": "Security note for {name}: the account recovery code is {secret}.",
             "secret": {"format": "digits", "length": 6}, "repetitions": [1, 16], "canaries_per_repetition": 2,
             "reference_canaries": 4, "null_samples": 100, "seed": 5},
            {"name": "one-run", "design": "one_run", "template": "Verification number for {name}: {secret}.",
             "secret": {"format": "digits", "length": 8}, "repetitions": [1], "canaries_per_repetition": 40,
             "seed": 2},
        ],
        "attacks": ["loss", "zlib", "reference"],
        "shadows": 0,
        "extraction_budget": 20,
        "beam_width": 0,
        "memorization": [],
        "extraction_samples": 0,
    },
    "grid": {"epsilon": ["inf", 1], "seed": [0], "mode": ["full"]},
    "pii_reconstruction_records": 0,
}


def _write(tmp_path, obj, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False))
    return p


def _with(**changes):
    d = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = d
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return d


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({"grid__epsilon": [-1, "inf"]}, ["field 'grid.epsilon'", "> 0 or inf"]),
        ({"grid__epsilon": []}, ["field 'grid.epsilon'"]),
        ({"grid__mode": ["full", "qlora"]}, ["field 'grid.mode.1'"]),
        ({"grid__seed": [0, 0]}, ["field 'grid.seed'", "distinct"]),
        ({"colour": "blue"}, ["field 'colour'"]),
        ({"name": "has space"}, ["field 'name'"]),
        ({"base__data__n_private": 2}, ["field 'base.data.n_private'"]),
        ({"base__attacks": ["loss", "nope"]}, ["field 'base.attacks'", "nope"]),
        ({"base__preset": "huge"}, ["field 'base.preset'", "huge"]),
        ({"base__canaries": [{"name": "x", "template": "no secret here", "secret": {"format": "digits",
                                                                                   "length": 4},
                              "repetitions": [1]}]}, ["field 'base.canaries.0"]),
        ({"base__canaries": ["missing.yaml"]}, ["field 'base.canaries.0'", "missing.yaml"]),
        ({"lora_lr": 0}, ["field 'lora_lr'"]),
        ({"non_dp_lr": {"full": 0}}, ["field 'non_dp_lr.full'"]),
        ({"non_dp_lr": {"lora": float("inf")}}, ["field 'non_dp_lr.lora'", "finite"]),
        ({"lora_lr": float("inf")}, ["field 'lora_lr'", "finite"]),
        ({"non_dp_lr": {"qlora": 1e-3}}, ["field 'non_dp_lr.qlora'"]),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path, changes, needles):
    path = _write(tmp_path, _with(**changes))
    with pytest.raises(LeakauditError) as e:
        load_experiment(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_unreadable_files(tmp_path):
    with pytest.raises(LeakauditError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")
    with pytest.raises(LeakauditError, match="not valid YAML"):
        load_experiment(_write(tmp_path, "grid: [unclosed"))
    with pytest.raises(LeakauditError, match="must be a YAML mapping"):
        load_experiment(_write(tmp_path, "- a list"))


def test_grid_expands_with_inf_as_no_dp(tmp_path):
    exp = load_experiment(_write(tmp_path, _with(grid__epsilon=[math.inf, 8, 1], grid__seed=[0, 1],
                                                  grid__mode=["full", "lora"])))
    assert len(exp.cells()) == 12
    assert exp.config.grid.epsilon[0] == math.inf
    ids = [c.id for c in exp.cells()]
    assert ids[:3] == ["full-epsinf-seed0", "full-eps8-seed0", "full-eps1-seed0"] and "lora-eps1-seed1" in ids
    assert not exp.cells()[0].dp and exp.cells()[1].dp


def test_non_dp_cells_take_their_own_learning_rate_with_the_dp_cells_steps(tmp_path):
    from leakaudit.experiment import cell_settings

    exp = load_experiment(_write(tmp_path, _with(grid__mode=["full", "lora"], lora_lr=2e-3,
                                                  non_dp_lr={"full": 5e-4})))
    cells = {c.id: c for c in exp.cells()}
    settings = {k: cell_settings(exp, c, 100) for k, c in cells.items()}
    dp_full, plain_full = settings["full-eps1-seed0"][0], settings["full-epsinf-seed0"][0]
    dp_lora, plain_lora = settings["lora-eps1-seed0"][0], settings["lora-epsinf-seed0"][0]
    assert (dp_full.lr, plain_full.lr) == (3e-3, 5e-4)
    assert (dp_lora.lr, plain_lora.lr) == (2e-3, 2e-3)  # no non-DP lora rate given: the DP cells'
    # steps and batch stay matched: 8 epochs of ceil(100 / 32) = 4 steps, batches of 100 / 4
    assert plain_full.steps == plain_lora.steps == 32 and plain_full.batch_size == 25
    # and without matched steps the non-DP cells' own rate still applies
    exp = load_experiment(_write(tmp_path, _with(matched_steps=False, non_dp_lr={"full": 5e-4}), name="b.yaml"))
    plain = cell_settings(exp, exp.cells()[0], 100)[0]
    assert plain.lr == 5e-4 and plain.epochs == exp.base.finetune.epochs


def test_shipped_experiments_validate():
    from tests.conftest import TESTS

    for name in ("dp_vs_nondp.yaml", "dp_vs_nondp_gpu.yaml"):
        exp = load_experiment(TESTS.parent / "experiments" / name)
        assert len(exp.cells()) == 16 and exp.config.matched_steps
        assert {s.design for s in exp.base.canaries} == {"fixed", "one_run"}


def test_executor_errors(tmp_path, monkeypatch):
    exp = experiment_from_dict(TINY)
    with pytest.raises(LeakauditError, match="--jobs"):
        make_executor("local", exp, tmp_path, jobs=2)
    with pytest.raises(LeakauditError, match="--executor"):
        make_executor("dask", exp, tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(LeakauditError, match=r"pip install 'leakaudit\[cluster\]'"):
        make_executor("submitit", exp, tmp_path)


def test_an_exposure_threshold_above_every_repetition_is_refused():
    with pytest.raises(LeakauditError, match=r"field 'exposure_min_repetitions': 64 is more than any canary is "
                                             r"inserted \(16 times at most\)"):
        experiment_from_dict(_with(exposure_min_repetitions=64))
    assert experiment_from_dict(_with(exposure_min_repetitions=16)).config.exposure_min_repetitions == 16


def test_cli_bad_experiment_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from leakaudit.cli import main

    path = _write(tmp_path, _with(grid__epsilon=[0]))
    monkeypatch.setattr(sys, "argv", ["leakaudit", "experiment", str(path), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("leakaudit: error: ") and "grid.epsilon" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_dp_delta_not_below_one_over_n_stops_the_seed_before_its_base_model(tmp_path):
    """N is known once the canaries are in; the DP cells' training would refuse the delta, so the seed does,
    before the base model is trained (not after it and every non-DP cell)."""
    exp = experiment_from_dict(_with(base__dp={"delta": 0.5}))
    with pytest.raises(ExperimentFailed) as e:
        run_experiment(exp, tmp_path / "out")
    (label, error), = e.value.failed.items()
    assert label == "seed 0: data, canaries, base model" and "dp.delta 0.5 is not below 1/N = " in error
    seed = tmp_path / "out" / "seeds" / "seed-0"
    assert (seed / "canaries" / "train.jsonl").is_file() and not (seed / "models").exists()
    assert not (tmp_path / "out" / "cells").exists()


def test_exposures_at_the_interpolation_cap_read_as_lower_bounds():
    from leakaudit.experiment import _tables, capped, summarize

    def row(seed, median, at_cap, n=4):
        return {"cell": f"full-epsinf-seed{seed}", "mode": "full", "epsilon_label": "inf", "seed": seed,
                "steps": 10, "expected_batch": 8, "noise_multiplier": None, "exposure_median": median,
                "exposure_max": 10.97, "exposure_at_cap": at_cap, "n_exposure_canaries": n}

    rows = [row(0, 10.97, 2), row(1, 6.5, 1)]
    assert [capped(r, "exposure_median") for r in rows] == [True, False]  # half of 4 at the cap: the median
    assert all(capped(r, "exposure_max") for r in rows) and not capped(row(2, 3.0, 0), "exposure_max")
    head, body, chead, cbody = _tables({"summary": summarize(rows), "cells": rows})
    median_col = head.index("median exposure (bits)")
    assert body[0][median_col] == "≥ 8.73 ± 3.16"  # one seed's value is a lower bound: so is the mean
    assert [r[chead.index("median exposure (bits)")] for r in cbody] == ["≥ 10.97", "6.50"]


# ------------------------------------------------------------------------------- a tiny grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    path = _write(root, TINY)
    exp = load_experiment(path)
    run = run_experiment(exp, root / "out")
    return exp, path, root / "out", run


def test_grid_runs_end_to_end_into_the_comparison(grid):
    exp, _, out, run = grid
    assert sorted(run.ran) == sorted(CELLS) and run.skipped == []
    for f in ("comparison.json", "comparison.csv", "comparison.md", "comparison.html", "experiment.yaml",
              "seeds/seed-0/seed.json", "seeds/seed-0/models/base/model.safetensors"):
        assert (out / f).is_file(), f
    for c in CELLS:  # each cell is a normal audited run
        for f in ("cell.json", "results.json", "report.html", "model/privacy.json"):
            assert (out / "cells" / c / f).is_file(), (c, f)
        # the reference (base) model's files are hashed in the results, as the audited model's are
        refs = json.loads((out / "cells" / c / "results.json").read_text())["run"]["reference_models_sha256"]
        # where the cell's time went: one entry per step it ran, none for a step it did not
        steps = json.loads((out / "cells" / c / "cell.json").read_text())["steps_seconds"]
        assert {"load base model", "train", "save model", "membership scores", "exposure", "results",
                "reports"} <= set(steps), steps
        assert all(v >= 0 for v in steps.values())
        base = out / "seeds" / "seed-0" / "models" / "base"
        assert refs["base"]["model.safetensors"] == sha256_file(base / "model.safetensors")
        assert refs["base"]["config.json"] == sha256_file(base / "config.json")
    doc = json.loads((out / "comparison.json").read_text())
    cells = {r["cell"]: r for r in doc["cells"]}
    assert set(cells) == set(CELLS) and doc["missing_cells"] == []
    for r in cells.values():
        assert r["dp_guarantee_failed"] is False
        for k in ("epsilon", "perplexity", "exposure_max", "exposure_median", "best_tpr_at_1pct_fpr", "loss_auc",
                  "canaries_extracted", "memorization_exact_rate", "untargeted_memorized", "pii_recall",
                  "one_run_eps_lower_bound", "steps", "expected_batch"):
            assert k in r, k
        assert r["perplexity"] > 1 and 0 <= r["loss_auc"] <= 1 and 0 <= r["best_tpr_at_1pct_fpr"] <= 1
        assert r["n_exposure_canaries"] == 2 and r["canaries_searched"] == 4
        # guess counts exist exactly when some best-first search completed a secret
        assert (r["canaries_within_guesses"] is not None) == bool(r["extraction_searches_completed"])
    plain, dp = cells["full-epsinf-seed0"], cells["full-eps1-seed0"]
    assert plain["epsilon"] is None and dp["epsilon"] == pytest.approx(1.0, rel=0.02)
    # matched steps: the non-DP cell takes the DP cell's steps and (expected) batch
    assert plain["steps"] == dp["steps"] and abs(plain["expected_batch"] - dp["expected_batch"]) <= 1
    assert doc["matched_check"] == [{"mode": "full", "seed": 0, "matched": True, "dp_steps": dp["steps"],
                                     "dp_expected_batch": dp["expected_batch"], "non_dp_steps": plain["steps"],
                                     "non_dp_batch": plain["expected_batch"], "dp_lr": 3e-3, "non_dp_lr": 3e-3}]
    # a real effect even at this size: the 16x canaries are exposed without DP, much less with eps 1
    assert plain["exposure_median"] > dp["exposure_median"] + 1.0, (plain, dp)
    assert dp["one_run_eps_lower_bound"] <= dp["epsilon"]
    # exposures at the interpolation's cap (the secret beat every null sample) are marked as lower bounds
    results = json.loads((out / "cells" / "full-epsinf-seed0" / "results.json").read_text())
    ranks = [c["rank"] for c in results["models"]["full-epsinf-seed0"]["canaries"]
             if c["inserted"] and c["repetitions"] >= 16]
    assert plain["exposure_at_cap"] == ranks.count(1) and plain["n_exposure_canaries"] == len(ranks)
    md = (out / "comparison.md").read_text()
    if 2 * ranks.count(1) >= len(ranks):
        assert f"≥ {plain['exposure_median']:.2f}" in md and "≥: a lower bound." in md
    assert plain["exposure_skewnorm_median"] >= plain["exposure_median"] - 1.0
    assert [(g["mode"], g["epsilon_label"], g["n_seeds"]) for g in doc["summary"]] == [("full", "inf", 1),
                                                                                       ("full", "1", 1)]
    assert doc["machine"]["devices"] and "torch" in doc["machine"]["versions"] and doc["machine"]["platform"]
    # each cell says where it ran (a grid may be finished on another machine): both cells here, one group
    assert doc["machine"]["cells_ran_on"] == [{"device": plain["device"], "platform": plain["platform"],
                                               "software": plain["software"], "cells": 2}]
    assert "torch " in plain["software"] and plain["platform"]
    assert f"Ran 2 cells on: {plain['device']}" in (out / "comparison.md").read_text()
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["cell"] for r in rows] == CELLS and float(rows[1]["epsilon"]) == pytest.approx(dp["epsilon"])


def test_reports_are_self_contained_and_hold_no_secrets(grid):
    _, _, out, _ = grid
    html = (out / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # TPR, exposure, perplexity, empirical eps
    assert "http://" not in html and "https://" not in html and "<script" not in html
    md = (out / "comparison.md").read_text()
    assert "| full | inf | 1 |" in md and "| full | 1 | 1 |" in md and "figures/leakage_tpr.png" in md
    assert (out / "figures" / "utility_perplexity.png").is_file()
    shared = html + "".join((out / f).read_text() for f in ("comparison.json", "comparison.csv", "comparison.md"))
    sdir = out / "seeds" / "seed-0"
    secrets = [c.secret for m in sdir.glob("canaries/manifest-*.json") for c in CanaryManifest.load(m).canaries]
    assert len(secrets) == 48
    assert not [s for s in secrets if s in shared]
    texts = [r["text"] for r in read_jsonl(sdir / "data" / "members.jsonl")][:20]
    assert not [t for t in texts if t[:40] in shared]
    # nor the seeds that regenerate them (the canary specs' and the data's); experiment.yaml keeps them
    config = json.loads((out / "comparison.json").read_text())["config"]
    for section in (config["experiment"]["base"], config["resolved_base"]):
        assert section["canaries"] and not [c for c in section["canaries"] if "seed" in c]
        assert "seed" not in section["data"] and section["data"]["n_private"] == 120
    assert len(config["config_sha256"]) == 16
    # it identifies the shared (seedless) config: a hash over the seeds would give them back by trial
    from leakaudit.io import stable_hash

    hashed = {k: v for k, v in config.items() if k not in ("config_sha256", "seeds_removed")}
    grid = hashed["experiment"]["grid"]
    grid["epsilon"] = [math.inf if e is None else e for e in grid["epsilon"]]  # JSON keeps inf as null
    assert config["config_sha256"] == stable_hash(hashed)
    full = yaml.safe_load((out / "experiment.yaml").read_text())
    assert [c["seed"] for c in full["experiment"]["base"]["canaries"]] == [5, 2]


def test_rerun_skips_finished_cells_and_resumes_an_unfinished_one(grid, tmp_path):
    exp, _, out, first = grid
    resumed = tmp_path / "out"
    shutil.copytree(out, resumed)
    again = run_experiment(exp, resumed)
    assert again.ran == [] and sorted(again.skipped) == sorted(CELLS)
    assert again.cells == first.cells
    # a cell interrupted after training: only its audit is redone, its model stage is reused
    (resumed / "cells" / CELLS[1] / "cell.json").unlink()
    shutil.rmtree(resumed / "cells" / CELLS[1] / "scores")
    third = run_experiment(exp, resumed)
    assert third.ran == [CELLS[1]] and third.skipped == [CELLS[0]]
    events = [json.loads(x) for x in (resumed / "cells" / CELLS[1] / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "stage_skipped" and e["stage"] == "model" for e in events)
    # the resumed run's steps only: training was not redone, the scoring was
    steps = json.loads((resumed / "cells" / CELLS[1] / "cell.json").read_text())["steps_seconds"]
    assert "train" not in steps and "membership scores" in steps
    # deterministic: the same metrics as the first run
    for a, b in zip(first.cells, third.cells):
        assert a["exposure_median"] == pytest.approx(b["exposure_median"]) and a["steps"] == b["steps"]


def test_a_change_of_scoring_method_reruns_finished_cells(grid, tmp_path, monkeypatch):
    """A finished cell was skipped however the scoring had changed since (its key held no method version)."""
    from leakaudit import audit
    from leakaudit.experiment import cell_done

    exp, _, out, _ = grid
    assert all(cell_done(exp, out, c) for c in exp.cells())
    monkeypatch.setattr(audit, "SCORE_VERSIONS", {**audit.SCORE_VERSIONS, "exposure_version": 999})
    assert not any(cell_done(exp, out, c) for c in exp.cells())


def test_finished_cells_carried_to_another_directory_continue_the_grid(grid, tmp_path):
    """Only cell.json and seed.json travel (as from a lent GPU machine): the seed is prepared again, the
    missing cell runs, the carried cell is kept; cells from two different base models are reported."""
    exp, _, out, first = grid
    carried = tmp_path / "out"
    for f in ("seeds/seed-0/seed.json", f"cells/{CELLS[0]}/cell.json"):
        (carried / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / f, carried / f)
    run = run_experiment(exp, carried)
    assert run.ran == [CELLS[1]] and run.skipped == [CELLS[0]] and run.left == []
    events = [json.loads(x) for x in (carried / "events.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in events if e["event"] == "seed_again"] == [0]
    assert (carried / "seeds/seed-0/models/base/model.safetensors").is_file()
    doc = json.loads((carried / "comparison.json").read_text())
    assert [r["cell"] for r in doc["cells"]] == CELLS and doc["missing_cells"] == []
    # on the CPU the base model is trained again bit for bit: one base model, the same metrics as before
    assert doc["base_models"] == {"0": [first.cells[0]["base_sha256"]]}
    again = {r["cell"]: r for r in run.cells}[CELLS[1]]
    assert again["exposure_median"] == pytest.approx({r["cell"]: r for r in first.cells}[CELLS[1]]["exposure_median"])
    assert "base models" not in (carried / "comparison.md").read_text()
    # a carried cell from another base model (as after a GPU run): named in the comparison
    marker = carried / "cells" / CELLS[0] / "cell.json"
    cell = json.loads(marker.read_text())
    cell["metrics"]["base_sha256"] = "0" * 16
    marker.write_text(json.dumps(cell))
    run_experiment(exp, carried)
    doc = json.loads((carried / "comparison.json").read_text())
    assert len(doc["base_models"]["0"]) == 2
    assert "seed 0 come from 2 base models" in (carried / "comparison.md").read_text()


def test_time_budget_leaves_cells_for_the_next_run(grid, tmp_path, monkeypatch, capsys):
    from leakaudit import experiment as ex
    from leakaudit.cli import main

    exp, path, out, _ = grid
    target = tmp_path / "out"
    shutil.copytree(out, target, ignore=shutil.ignore_patterns(CELLS[1]))
    run = run_experiment(exp, target, max_seconds=0)  # no time at all: nothing starts
    assert run.ran == [] and run.skipped == [CELLS[0]] and run.left == [CELLS[1]]
    assert not (target / "cells" / CELLS[1]).exists()
    assert json.loads((target / "comparison.json").read_text())["missing_cells"] == [CELLS[1]]
    # the CLI: exit 3 and what to do
    monkeypatch.setattr(sys, "argv", ["leakaudit", "experiment", str(path), "--out", str(target), "--max-minutes", "5"])
    monkeypatch.setattr(ex.Budget, "allows", lambda self, *kinds: False)
    with pytest.raises(SystemExit) as e:
        main()
    cap = capsys.readouterr()
    assert e.value.code == 3, cap.err
    assert f"1 cell(s) left ({CELLS[1]}); run the same command again" in cap.out
    monkeypatch.setattr(sys, "argv", ["leakaudit", "experiment", str(path), "--max-minutes", "0"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "--max-minutes must be a finite number > 0" in capsys.readouterr().err


def test_budget_starts_a_task_only_while_the_longest_so_far_fits():
    from leakaudit.experiment import Budget, LocalExecutor

    now = [0.0]
    budget = Budget(10.0, clock=lambda: now[0])
    ran = []

    def task(x):
        now[0] += x
        ran.append(x)
        return x

    # 4 s, then 3 s (7 s used, 3 left, the longest so far 4: stop), the rest not started
    outcomes = LocalExecutor().map(task, [4.0, 3.0, 1.0, 1.0], ["a", "b", "c", "d"], lambda *a, **k: None, budget)
    assert ran == [4.0, 3.0] and [o.not_started for o in outcomes] == [False, False, True, True]
    assert budget.longest == {"task": 4.0} and budget.left() == 3.0
    # kinds are timed apart: the first task of another kind starts while any time is left
    def other(x):
        now[0] += x
        return x

    assert not LocalExecutor().map(other, [2.0], ["e"], lambda *a, **k: None, budget)[0].not_started
    assert LocalExecutor().map(other, [0.5], ["f"], lambda *a, **k: None, budget)[0].not_started  # 1 s left < 2


def test_cli_experiment_on_a_finished_grid(grid, monkeypatch, capsys):
    from leakaudit.cli import main

    _, path, out, _ = grid
    monkeypatch.setattr(sys, "argv", ["leakaudit", "experiment", str(path), "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main()
        raise SystemExit(0)
    cap = capsys.readouterr()
    assert e.value.code == 0, cap.err
    assert "0 cell(s) run, 2 already finished" in cap.out and "comparison.html" in cap.out


def test_a_new_privacy_record_version_or_an_unreadable_marker_reruns_the_work(grid, tmp_path, monkeypatch):
    """A cell finished before the privacy record changed was skipped (its models retrained, its cell not); a
    truncated cell.json or seed.json stopped the run with a traceback."""
    from leakaudit import experiment
    from leakaudit.experiment import cell_dir, cell_done, seed_dir, seed_done

    exp, _, out, _ = grid
    target = tmp_path / "out"
    shutil.copytree(out, target)
    assert all(cell_done(exp, target, c) for c in exp.cells())
    (cell_dir(target, exp.cells()[0]) / "cell.json").write_text('{"key": "abc", "n_tr')
    (seed_dir(target, 0) / "seed.json").write_text("[1]")
    assert not cell_done(exp, target, exp.cells()[0]) and cell_done(exp, target, exp.cells()[1])
    assert not seed_done(exp, target, 0)
    monkeypatch.setattr(experiment, "RECORD_VERSION", experiment.RECORD_VERSION + 1)
    assert not any(cell_done(exp, out, c) for c in exp.cells())


def test_submitit_jobs_are_cancelled_when_the_command_stops(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from leakaudit import experiment

    class Job:
        job_id, cancelled = "7", False

        def done(self):
            return False

        def cancel(self, check=True):
            Job.cancelled = True

    executor = SubmititExecutor(tmp_path / "submitit", cluster="local", jobs=2, poll_s=0.01)
    monkeypatch.setattr(executor.executor, "submit", lambda *a: Job())

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment.time, "sleep", interrupt)
    events = []
    with pytest.raises(KeyboardInterrupt):
        executor.map(len, [[1], [2]], ["a", "b"], lambda event, *a, **k: events.append(event))
    assert Job.cancelled and events.count("task_cancelled") == 2


def test_a_cuda_grid_in_local_submitit_jobs_needs_gpus_per_node(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    import torch

    from leakaudit.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    path = _write(tmp_path, _with(base__device="cuda"))
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["leakaudit", "experiment", str(path), "--out", str(out), "--executor",
                                      "submitit", "--cluster", "local"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "field 'submitit.parameters': submitit's local jobs see no GPU" in err, err
    assert not out.exists()  # the executor's folder is not left behind


def test_submitit_executor_in_local_mode(grid, tmp_path):
    pytest.importorskip("submitit")
    exp, _, out, first = grid
    target = tmp_path / "out"
    shutil.copytree(out, target, ignore=shutil.ignore_patterns(CELLS[0]))  # the non-DP cell is redone in a job
    executor = SubmititExecutor(target / "submitit", cluster="local", jobs=1, timeout_min=10, poll_s=0.5)
    assert executor.cluster == "local"
    run = run_experiment(exp, target, executor=executor)
    assert run.ran == [CELLS[0]] and run.skipped == [CELLS[1]]
    assert list((target / "submitit").iterdir())  # the job's folder (logs, pickles)
    got = {r["cell"]: r for r in run.cells}[CELLS[0]]
    want = {r["cell"]: r for r in first.cells}[CELLS[0]]
    assert got["steps"] == want["steps"] and got["perplexity"] == pytest.approx(want["perplexity"], rel=0.05)
    assert json.loads((target / "comparison.json").read_text())["missing_cells"] == []


def test_cell_metrics_count_guesses_and_other_canaries_secrets(grid):
    """Known answer: the two guess counts of a cell, with the canaries' search fields set by hand."""
    from leakaudit.experiment import cell_metrics
    from leakaudit.report.schema import Results

    _, _, out, _ = grid
    res = Results.model_validate(json.loads((out / "cells" / CELLS[0] / "results.json").read_text()))
    model = next(iter(res.models.values()))
    marks = []  # (inserted, own secret within the guesses, first guess another inserted secret)
    canaries = []
    for i, c in enumerate(model.canaries):
        within, other = i % 3 == 0, i % 4 == 1
        marks.append((c.inserted, within, other))
        canaries.append(c.model_copy(update={"extraction_guesses": 10, "extraction_guess": 2 if within else None,
                                             "extraction_first_guess_inserted": other, "extraction_guesses_found": 3,
                                             "extracted": False, "extracted_beam": None}))
    got = cell_metrics(model.model_copy(update={"canaries": canaries}))
    assert got["canaries_within_guesses"] == sum(ins and w for ins, w, _ in marks)
    assert got["other_secret_first"] == sum(o for _, _, o in marks)  # reference canaries' searches count too
    assert got["extraction_searches_completed"] == len(canaries) and got["canaries_extracted"] == 0
    # an older run (no guesses recorded): not measured, not zero
    old = cell_metrics(model.model_copy(update={"canaries": [
        c.model_copy(update={"extraction_guesses": None, "extraction_guesses_found": None}) for c in canaries]}))
    assert old["other_secret_first"] is None and old["canaries_within_guesses"] is None
    # no best-first search completed a secret and no beam search ran: nothing measured
    empty = [c.model_copy(update={"extraction_guesses_found": 0, "extraction_guess": None,
                                  "extraction_first_guess_inserted": None}) for c in canaries]
    none = cell_metrics(model.model_copy(update={"canaries": empty}))
    assert none["canaries_extracted"] is None and none["canaries_within_guesses"] is None
    assert none["other_secret_first"] is None and none["extraction_searches_completed"] == 0
    # ... with a beam search beside it, "not extracted" is a measurement
    beam = [c.model_copy(update={"extracted_beam": False}) for c in empty]
    assert cell_metrics(model.model_copy(update={"canaries": beam}))["canaries_extracted"] == 0


def test_copying_the_seed_s_reference_stages_is_all_or_nothing(tmp_path, monkeypatch):
    from leakaudit import experiment as ex

    sdir, cdir = tmp_path / "seed", tmp_path / "cell"
    (sdir / "scores" / "base").mkdir(parents=True)
    (sdir / "scores" / "base" / "stage.json").write_text("{}")
    (sdir / "scores" / "base" / "mia.parquet").write_bytes(b"x")
    real = shutil.copytree

    def interrupted(src, dst, **kw):  # stage.json copied, then the job is killed
        dst = type(tmp_path)(dst)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(type(tmp_path)(src) / "stage.json", dst / "stage.json")
        raise KeyboardInterrupt

    monkeypatch.setattr(ex.shutil, "copytree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex._copy_reference(sdir, cdir)
    assert not (cdir / "scores" / "base").exists()  # no stage.json without its outputs
    monkeypatch.setattr(ex.shutil, "copytree", real)
    ex._copy_reference(sdir, cdir)
    assert sorted(p.name for p in (cdir / "scores" / "base").iterdir()) == ["mia.parquet", "stage.json"]


def test_step_times_sum_steps_from_an_offset_and_skip_a_cut_off_line(tmp_path):
    from leakaudit.runs import EventLog, step_times

    log = EventLog(tmp_path)
    log.add_time("exposure", 1.5, model="a")
    start = log.path.stat().st_size
    with log.timed("exposure", model="b"):
        pass
    log.add_time("exposure", 2.0, model="c")
    log.add_time("train", 3.25)
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"event": "step_finished", "step": "reports", "seco')  # killed mid-write
    times = step_times(log.path, start)
    assert set(times) == {"exposure", "train"} and times["train"] == 3.25
    assert 2.0 <= times["exposure"] < 2.5  # the two models' exposure after the offset, not the first
    assert step_times(tmp_path / "missing.jsonl") == {}


def test_notes_name_cells_worse_than_their_base_model_and_those_that_overfit():
    from leakaudit.experiment import _notes

    cell = dict(member_loss=2.0, non_member_loss=2.1)
    doc = {"matched_steps": False, "exposure_min_repetitions": 16, "missing_cells": [],
           "base_model_perplexity": {"0": 5.0, "1": 6.0},
           "cells": [{**cell, "cell": "full-epsinf-seed0", "seed": 0, "dp": False, "perplexity": 9.0,
                      "member_loss": 0.4, "non_member_loss": 2.2},       # worse and overfit
                     {**cell, "cell": "lora-epsinf-seed0", "seed": 0, "dp": False, "perplexity": 5.5},  # worse only
                     {**cell, "cell": "full-eps8-seed1", "seed": 1, "dp": True, "perplexity": 6.5,
                      "member_loss": 0.4, "non_member_loss": 2.2},       # DP: never called overfit here
                     {**cell, "cell": "full-eps8-seed0", "seed": 0, "dp": True, "perplexity": 4.9}]}  # better
    notes = _notes(doc)
    worse = next(n for n in notes if n.startswith("Held-out perplexity above"))
    assert "full-epsinf-seed0 (9.00 vs 5.00)" in worse and "lora-epsinf-seed0" in worse
    assert "full-eps8-seed1 (6.50 vs 6.00)" in worse and "full-eps8-seed0" not in worse
    overfit = [n for n in notes if n.startswith("Overfit:")]
    assert len(overfit) == 1 and "full-epsinf-seed0 (member loss 0.40, non-member 2.20)" in overfit[0]
    assert "lora-epsinf-seed0" not in overfit[0] and "full-eps8-seed1" not in overfit[0]
    doc["cells"] = doc["cells"][3:]
    assert not any(n.startswith(("Held-out perplexity above", "Overfit:")) for n in _notes(doc))


def test_a_failed_dp_guarantee_leads_the_notes():
    from leakaudit.experiment import _notes

    doc = {"matched_steps": False, "exposure_min_repetitions": 16, "missing_cells": [], "base_model_perplexity": {},
           "cells": [{"cell": "full-eps8-seed0", "seed": 0, "dp": True, "dp_guarantee_failed": False},
                     {"cell": "full-eps1-seed0", "seed": 0, "dp": True, "dp_guarantee_failed": True}]}
    first = _notes(doc)[0]
    assert first.startswith("DP GUARANTEE FAILED in full-eps1-seed0:") and "eps8" not in first
    doc["cells"][1]["dp_guarantee_failed"] = False
    assert not any("FAILED" in n for n in _notes(doc))


def test_matched_note_says_when_the_non_dp_cells_have_their_own_learning_rate():
    from leakaudit.experiment import _notes

    check = {"seed": 0, "matched": True, "dp_steps": 10, "dp_expected_batch": 8, "non_dp_steps": 10,
             "non_dp_batch": 8}
    doc = {"matched_steps": True, "exposure_min_repetitions": 16, "missing_cells": [], "base_model_perplexity": {},
           "cells": [], "matched_check": [{**check, "mode": "full", "dp_lr": 1e-3, "non_dp_lr": 1e-3}]}
    same = "expected batch size and learning rate of the DP cells of its mode; only clipping and noise"
    assert same in _notes(doc)[0]
    doc["matched_check"] += [{**check, "mode": "lora", "dp_lr": 3e-3, "non_dp_lr": 2e-4}]
    note = _notes(doc)[0]
    assert ("the non-DP cells of mode lora take a learning rate of their own (lora: DP 0.003, non-DP 0.0002)"
            in note and "full:" not in note)
    doc["matched_check"] = []  # no DP and non-DP pair finished: nothing compared, nothing claimed
    assert _notes(doc)[0].startswith("Matched steps: asked for, but no mode and seed has both")


def test_summary_says_how_many_seeds_a_value_rests_on():
    from leakaudit.experiment import _summary_cell, summarize

    rows = [{"mode": "full", "epsilon_label": "8", "seed": s, "perplexity": p} for s, p in ((0, 9.0), (1, math.inf))]
    g = summarize(rows)[0]
    assert g["n_seeds"] == 2 and g["perplexity"]["n"] == 1 and g["perplexity"]["std"] is None
    assert _summary_cell(g, "perplexity", "{:.2f}") == "9.00 (1 of 2 seeds)"


def test_seed_and_cell_records_are_checked_against_what_is_on_disk(grid, tmp_path):
    """A seed.json carried over a rebuilt base model must not pass for it, and a cell records the hash of the base
    model on disk; a finished cell stays finished while its seed's seed.json is missing (being prepared again)."""
    from leakaudit.experiment import cell_done, seed_dir, seed_done

    exp, _, out, _ = grid
    work = tmp_path / "out"
    shutil.copytree(out, work)
    marker = seed_dir(work, 0) / "seed.json"
    info = json.loads(marker.read_text())
    assert seed_done(exp, work, 0)
    marker.write_text(json.dumps({**info, "base_sha256": "stale0000000000"}))
    assert not seed_done(exp, work, 0)
    marker.unlink()
    assert all(cell_done(exp, work, c) for c in exp.cells())
    with pytest.raises(LeakauditError, match="distinct to 6 significant digits"):
        load_experiment(_write(tmp_path, _with(grid__epsilon=[0.5, 0.5000001])))
