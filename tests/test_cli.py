"""Bad inputs give one line naming the problem, exit code 2, no traceback, nothing written."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leakaudit.cli import main
from leakaudit.errors import LeakauditError


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["leakaudit", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.fixture()
def corpus(tmp_path):
    p = tmp_path / "members.jsonl"
    p.write_text("".join(json.dumps({"text": f"record {i} about a refund"}) + "\n" for i in range(6)))
    q = tmp_path / "non.jsonl"
    q.write_text("".join(json.dumps({"text": f"held out {i} about a parcel"}) + "\n" for i in range(6)))
    return p, q


def _assert_clean_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("leakaudit: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_audit_missing_file(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", tmp_path / "nope.jsonl",
                       "--non-members", corpus[1], "--out", out)
    _assert_clean_error(code, err, "nope.jsonl", "no such file")
    assert not out.exists()


def test_audit_empty_corpus(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", empty,
                       "--non-members", corpus[1], "--out", out)
    _assert_clean_error(code, err, "empty.jsonl", "empty")
    assert not out.exists()


def test_audit_text_field_absent(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", corpus[0],
                       "--non-members", corpus[1], "--text-field", "body", "--out", out)
    _assert_clean_error(code, err, "members.jsonl", "'body'", "--text-field")
    assert not out.exists()


def test_audit_overlap(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", corpus[0],
                       "--non-members", corpus[0], "--out", out)
    _assert_clean_error(code, err, "overlap")
    assert not out.exists()


def test_model_directory_without_weights(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", bad, "--members", corpus[0],
                       "--non-members", corpus[1], "--out", out)
    _assert_clean_error(code, err, str(bad), "no weights")
    assert not out.exists()
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    code, _, err = run(monkeypatch, capsys, "train", "--base", bad, "--data", corpus[0], "--out", out)
    _assert_clean_error(code, err, "pickle", "safetensors")
    assert not out.exists()


def test_a_model_directory_without_tokenizer_json_says_so_in_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir,
                                                                      corpus):
    broken = _copy_model(tiny_model_dir, tmp_path / "model")
    (broken / "tokenizer.json").unlink()  # tokenizer_config.json stays: the library tries, and fails over lines
    from tests.conftest import TINY_SPEC

    assert run(monkeypatch, capsys, "canaries", "generate", TINY_SPEC, "--out", tmp_path / "m.json")[0] == 0
    code, _, err = run(monkeypatch, capsys, "canaries", "check", "--manifest", tmp_path / "m.json", "--data",
                       corpus[0], "--tokenizer", broken, "--max-length", 64)
    _assert_clean_error(code, err, f"{broken}: cannot load tokenizer: no tokenizer.json, and the other files "
                                   "could not make one (")
    assert err.rstrip().endswith(")")


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_model_directories_that_would_load_pickles_or_unhashed_files_are_refused(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    from leakaudit.errors import LeakauditError
    from leakaudit.models.loading import _no_unpickling, load_model

    state = load_file(tiny_model_dir / "model.safetensors")
    # the config names a pickle as its weights file (the library reads it with torch.load)
    named = _copy_model(tiny_model_dir, tmp_path / "named")
    torch.save(state, named / "adapter_model.bin")
    cfg = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**cfg, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(LeakauditError, match=r"config.json: field 'transformers_weights' names 'adapter_model.bin'"):
        load_model(named)
    # a shard index naming a pickle shard, a shard in a subfolder, a shard outside the directory
    for i, shard in enumerate(["shard.bin", "sub/w.safetensors", "../elsewhere.safetensors"]):
        d = _copy_model(tiny_model_dir, tmp_path / f"index{i}")
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in state}}))
        with pytest.raises(LeakauditError, match=rf"field 'weight_map' names the shard '{re.escape(shard)}'"):
            load_model(d)
    # an adapter directory: its base model would come from elsewhere, unhashed
    adapter = _copy_model(tiny_model_dir, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(LeakauditError, match="adapter_config.json.*merge"):
        load_model(adapter)
    # second line of defence: while a model loads, torch.load refuses
    torch.save(state, tmp_path / "w.bin")
    with pytest.raises(LeakauditError, match="tried to unpickle"), _no_unpickling(tmp_path):
        torch.load(tmp_path / "w.bin", weights_only=True)
    assert torch.load(tmp_path / "w.bin", weights_only=True).keys() == state.keys()  # restored afterwards
    assert load_model(tiny_model_dir).files_sha256  # an ordinary directory still loads


def test_a_privacy_record_is_tied_to_the_weights_it_was_saved_with(monkeypatch, capsys, tmp_path, tiny_model_dir,
                                                                    corpus):
    import torch

    from leakaudit.audit import read_privacy
    from leakaudit.models.loading import hash_model_dir, load_model
    from leakaudit.report.schema import PrivacyRecord
    from leakaudit.train import save_trained

    # a malformed privacy.json: one line naming the file and field, before anything is written
    claimed = _copy_model(tiny_model_dir, tmp_path / "claimed")
    (claimed / "privacy.json").write_text(json.dumps({"epsilon": "lots"}))
    out = tmp_path / "run"
    args = ["audit", "--model", f"m={claimed}", "--members", corpus[0], "--non-members", corpus[1], "--out", out,
            "--attacks", "loss"]
    code, _, err = run(monkeypatch, capsys, *args)
    _assert_clean_error(code, err, "privacy.json: field 'epsilon'")
    assert not out.exists()
    # a well-formed record that leakaudit train did not save with these weights is reported as a claim ...
    (claimed / "privacy.json").write_text(json.dumps({"epsilon": 0.5, "delta": 1e-5, "accountant": "prv"}))
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    privacy = json.loads((out / "results.json").read_text())["models"]["m"]["privacy"]
    assert privacy["epsilon"] == 0.5 and privacy["bound_to_weights"] is False
    assert "not saved with these weights: an unchecked claim" in (out / "report.md").read_text()
    # ... and fails the gate's eps limit
    policy = tmp_path / "p.yaml"
    policy.write_text("max_epsilon: 1.0\n")
    code, text, _ = run(monkeypatch, capsys, "gate", out, "--policy", policy)
    assert code == 1 and "not saved with the audited weights" in text
    # one that leakaudit train saved with these weights is bound to them
    trained = tmp_path / "trained"
    loaded = load_model(tiny_model_dir)
    save_trained(loaded.model, loaded.tokenizer, trained, PrivacyRecord(epsilon=0.5, delta=1e-5))
    assert read_privacy(trained, hash_model_dir(trained)).bound_to_weights is True
    (claimed / "privacy.json").write_text((trained / "privacy.json").read_text())  # copied beside other weights
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    loaded.model.save_pretrained(claimed, safe_serialization=True)
    assert read_privacy(claimed, hash_model_dir(claimed)).bound_to_weights is False


def test_canary_spec_unknown_format(monkeypatch, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntemplate: 'pin {secret}'\nsecret: {format: morse, length: 4}\nrepetitions: [1, 2]\n")
    out = tmp_path / "m.json"
    code, _, err = run(monkeypatch, capsys, "canaries", "generate", spec, "--out", out)
    _assert_clean_error(code, err, "spec.yaml", "secret.format", "morse")
    assert not out.exists()
    run_dir = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--canaries", spec, "--out", run_dir)
    _assert_clean_error(code, err, "morse")
    assert not run_dir.exists()


def test_negative_epsilon(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    run_dir = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--epsilon", "-1", "--out", run_dir)
    _assert_clean_error(code, err, "--epsilon", "> 0")
    assert not run_dir.exists()
    out = tmp_path / "trained"
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", corpus[0], "--out", out,
                       "--dp", "--epsilon", "-3")
    _assert_clean_error(code, err, "--epsilon")
    assert not out.exists()
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", corpus[0], "--out", out,
                       "--dp", "--epsilon", "3", "--grad-sample-mode", "fast")
    _assert_clean_error(code, err, "--grad-sample-mode", "bookkeeping", "fast")
    assert not out.exists()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("dp: {target_epsilon: -2}\n")
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--config", cfg, "--out", run_dir)
    _assert_clean_error(code, err, "cfg.yaml", "dp.target_epsilon")
    assert not run_dir.exists()


def test_unknown_attack_and_preset(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", corpus[0],
                       "--non-members", corpus[1], "--out", tmp_path / "r", "--attacks", "loss,magic")
    _assert_clean_error(code, err, "--attacks", "magic")
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "huge", "--out", tmp_path / "r")
    _assert_clean_error(code, err, "--preset", "huge")
    assert not (tmp_path / "r").exists()


def test_console_script_exit_code_without_traceback(tmp_path):
    """The same through a real process: what a CI job sees."""
    r = subprocess.run(
        [sys.executable, "-m", "leakaudit", "report", str(tmp_path / "missing-run")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "results.json" in r.stderr


def test_audit_writes_a_run_directory(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    out = tmp_path / "run"
    code, stdout, _ = run(monkeypatch, capsys, "audit", "--model", f"tiny={tiny_model_dir}", "--members", corpus[0],
                          "--non-members", corpus[1], "--out", out)
    assert code == 0
    assert "report.html" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"tiny"}
    tiny = results["models"]["tiny"]
    assert set(tiny["mia"]) == {"loss", "zlib", "lowercase", "min_k", "min_k_pp", "neighbourhood"}
    assert set(tiny["skipped_attacks"]) == {"reference", "reference_ratio", "lira_online", "lira_offline", "rmia"}
    assert "reference model" in tiny["skipped_attacks"]["reference"]
    assert (out / "scores" / "tiny" / "mia.parquet").is_file() and (out / "config.yaml").is_file()
    # again into the same directory with other settings and corrected user ids: the config is this run's,
    # the scores are rebuilt (the records' fields are in their key) and no per-sample file of before is left
    stale = out / "per_sample" / "tiny" / "memorization-k9-n9.parquet"
    stale.write_bytes(b"old")
    users = tmp_path / "members_users.jsonl"
    users.write_text("".join(json.dumps({**json.loads(x), "user_id": f"u{i}"}) + "\n"
                             for i, x in enumerate(corpus[0].read_text().splitlines())))
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"tiny={tiny_model_dir}", "--members", users,
                       "--non-members", corpus[1], "--out", out, "--attacks", "loss,zlib")
    assert code == 0, err
    # the user hears that the directory's earlier run had other settings, whose results this run replaces
    said = " ".join(err.split())
    assert "note: this directory held an earlier run of other settings (attacks lira_offline, " in said
    assert "zlib before, loss, zlib now); its results are replaced by this run's" in said
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["attacks"] == ["loss", "zlib"]
    assert not stale.exists()
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e.get("stage") == "scores/tiny"][-2:] == ["stage_started", "stage_finished"]
    import pandas as pd

    assert pd.read_parquet(out / "per_sample" / "tiny" / "scores.parquet")["user_id"].tolist()[:2] == ["u0", "u1"]
    # the non-members carry no user ids: the per-user unit is not evaluated, and the results and report say why
    tiny = json.loads((out / "results.json").read_text())["models"]["tiny"]
    assert "user" not in tiny["mia_by_unit"]
    n_non = len(corpus[1].read_text().splitlines())
    assert tiny["skipped_units"]["user"].startswith(f"{n_non} of ")
    assert "per-user evaluation: " in (out / "report.md").read_text()


def test_canaries_generate_insert_and_check(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    from tests.conftest import TINY_SPEC

    manifest, train = tmp_path / "m.json", tmp_path / "train.jsonl"
    assert run(monkeypatch, capsys, "canaries", "generate", TINY_SPEC, "--out", manifest)[0] == 0
    assert run(monkeypatch, capsys, "canaries", "insert", "--manifest", manifest, "--data", corpus[0],
               "--out", train)[0] == 0
    code, out, _ = run(monkeypatch, capsys, "canaries", "check", "--manifest", manifest, "--data", train,
                       "--tokenizer", tiny_model_dir, "--max-length", 256)
    assert code == 0 and "12/12 inserted canaries" in out
    code, out, _ = run(monkeypatch, capsys, "canaries", "check", "--manifest", manifest, "--data", train,
                       "--tokenizer", tiny_model_dir, "--max-length", 8)
    assert code == 1 and "truncates at 8 tokens" in out and "0/12" in out
    secrets = [c["secret"] for c in json.loads(manifest.read_text())["canaries"]]
    assert not any(s in out for s in secrets)  # warnings name canaries by id, never by secret
    # a --max-length past the model's positions: training truncates at the context, and so does the check
    code, out, _ = run(monkeypatch, capsys, "canaries", "check", "--manifest", manifest, "--data", train,
                       "--tokenizer", tiny_model_dir, "--max-length", 4096)
    assert code == 0 and "exceeds the 256 positions of the model" in out and "12/12 inserted canaries" in out
    short = tmp_path / "short_context"
    shutil.copytree(tiny_model_dir, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "n_positions": 8}))
    code, out, _ = run(monkeypatch, capsys, "canaries", "check", "--manifest", manifest, "--data", train,
                       "--tokenizer", short, "--max-length", 512)
    assert code == 1 and "truncates at 8 tokens" in out and "0/12" in out


def test_warnings_print_as_one_line(monkeypatch, capsys, tmp_path):
    """A library warning during a command prints as the CLI's other messages, not with a file, line and code."""
    import warnings as w

    from leakaudit import cli

    def noisy(*_a, **_k):
        w.warn("max_length 512 exceeds the model's 192 positions:\n 3 sequence(s) truncated", UserWarning,
               stacklevel=2)
        raise LeakauditError("stop here")

    monkeypatch.setattr(cli, "_check_out", noisy)
    with w.catch_warnings():
        w.simplefilter("always")
        # printed to stderr through warnings.formatwarning, as outside pytest (which records them instead)
        w.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(w.formatwarning(m, c, f, n, line))
        code, _, err = run(monkeypatch, capsys, "canaries", "generate", "spec.yaml", "--out", tmp_path / "m.json")
    assert code == 2 and err.splitlines() == [
        "leakaudit: warning: max_length 512 exceeds the model's 192 positions: 3 sequence(s) truncated",
        "leakaudit: error: stop here"]


def test_canaries_insert_keeps_the_corpus_text_field_and_columns(monkeypatch, capsys, tmp_path):
    from leakaudit.data import load_corpus
    from tests.conftest import TINY_SPEC

    data, manifest, out = tmp_path / "d.jsonl", tmp_path / "m.json", tmp_path / "out.jsonl"
    data.write_text("".join(json.dumps({"rid": i, "body": f"record {i}", "user_id": f"u{i % 3}"}) + "\n"
                            for i in range(20)))
    assert run(monkeypatch, capsys, "canaries", "generate", TINY_SPEC, "--out", manifest)[0] == 0
    code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", manifest, "--data", data,
                       "--text-field", "body", "--out", out)
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    mine = [r for r in rows if "canary_id" not in r]
    assert mine == [{"rid": i, "body": f"record {i}", "user_id": f"u{i % 3}", "id": str(i)} for i in range(20)]
    assert all("body" in r and "text" not in r for r in rows)
    assert len(load_corpus(out, text_field="body")) == len(rows)  # the same --text-field reads the output
    import pandas as pd

    dated = tmp_path / "d.parquet"  # columns JSON has no type for (dates) are written as text
    pd.DataFrame({"body": ["one", "two"], "created": pd.to_datetime(["2024-01-01", "2024-02-01"])}).to_parquet(dated)
    code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", manifest, "--data", dated,
                       "--text-field", "body", "--out", tmp_path / "dated.jsonl")
    assert code == 0, err
    dated_rows = [json.loads(x) for x in (tmp_path / "dated.jsonl").read_text().splitlines()]
    assert sorted(r["created"][:10] for r in dated_rows if "canary_id" not in r) == ["2024-01-01", "2024-02-01"]


def test_audit_in_bfloat16_scores_close_to_float32(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    """--dtype bfloat16 on a CPU: its own cached scores, within bf16 rounding of float32; a bad value is refused."""
    import pandas as pd  # noqa: PLC0415

    args = ["audit", "--model", f"tiny={tiny_model_dir}", "--members", corpus[0], "--non-members", corpus[1],
            "--attacks", "loss,zlib"]
    code, _, err = run(monkeypatch, capsys, *args, "--out", tmp_path / "bad", "--dtype", "half")
    _assert_clean_error(code, err, "--dtype", "half")
    tables = {}
    for dtype in ("auto", "bfloat16"):
        out = tmp_path / dtype
        code, _, _ = run(monkeypatch, capsys, *args, "--out", out, "--dtype", dtype)
        assert code == 0
        tables[dtype] = pd.read_parquet(out / "scores" / "tiny" / "mia.parquet")
        recorded = json.loads((out / "results.json").read_text())["run"]["dtype"]
        assert recorded == {"auto": "float32", "bfloat16": "bfloat16"}[dtype]  # what "auto" chose, recorded
        key = json.loads((out / "scores" / "tiny" / "stage.json").read_text())["key"]["dtype"]
        assert key == {"auto": "float32", "bfloat16": "bfloat16"}[dtype]
    a = np.array([np.mean(x) for x in tables["auto"]["token_logprobs"]])
    b = np.array([np.mean(x) for x in tables["bfloat16"]["token_logprobs"]])
    assert np.abs(a - b).max() < 0.1 and (a != b).any()  # bf16 rounding: close, not identical


def test_train_with_bookkeeping_clipping_records_the_mode(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    import json

    out = tmp_path / "trained"
    code, stdout, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", corpus[0], "--out", out,
                            "--dp", "--epsilon", "8", "--grad-sample-mode", "bookkeeping", "--epochs", "1",
                            "--max-length", "32", "--batch-size", "8")
    assert code == 0, err
    record = json.loads((out / "privacy.json").read_text())
    assert record["grad_sample_mode"] == "bookkeeping" and record["epsilon"] == pytest.approx(8.0, rel=0.05)
    assert record["randomness"] == "secret"  # the CLI default, for models to release
    # the DP model is not replaced by a second training into the same --out unless asked
    before = (out / "privacy.json").read_text()
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", corpus[0], "--out", out,
                       "--epochs", "1", "--max-length", "32", "--batch-size", "8")
    _assert_clean_error(code, err, f"--out {out}: a model is already there; add --overwrite to replace it")
    assert (out / "privacy.json").read_text() == before
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", corpus[0], "--out", out,
                       "--epochs", "1", "--max-length", "32", "--batch-size", "8", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "privacy.json").read_text())["epsilon"] is None


def test_a_manifest_is_replaced_only_with_overwrite(monkeypatch, capsys, tmp_path, corpus):
    """A manifest holds the only copy of its canaries' secrets: drawing again over it would orphan the canaries
    already inserted into a corpus."""
    spec = Path(__file__).resolve().parents[1] / "canaries" / "recovery_codes.yaml"
    out = tmp_path / "manifest.json"
    assert run(monkeypatch, capsys, "canaries", "generate", spec, "--out", out)[0] == 0
    before = out.read_text()
    code, _, err = run(monkeypatch, capsys, "canaries", "generate", spec, "--out", out)
    _assert_clean_error(code, err, f"--out {out}: a file is already there; add --overwrite to replace it")
    assert out.read_text() == before
    data = tmp_path / "with_canaries.jsonl"
    for extra, want in (((), 0), ((), 2), (("--overwrite",), 0)):
        code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", out, "--data", corpus[0],
                           "--out", data, *extra)
        assert code == want, err
    assert run(monkeypatch, capsys, "canaries", "generate", spec, "--out", out, "--overwrite")[0] == 0


@pytest.mark.parametrize("args, needles", [
    (["nosuchcommand"], ["No such command 'nosuchcommand'"]),
    (["audit", "--bogus"], ["No such option: --bogus", "leakaudit audit --help"]),
    (["canaries", "generate"], ["Missing argument 'spec'"]),
    (["train", "--epochs", "0"], ["'--epochs'", "greater than or equal to 1", "'leakaudit train --help'"]),
    (["canaries", "check", "--max-length", "abc"], ["'--max-length'", "valid integer",
                                                    "'leakaudit canaries check --help'"]),
])
def test_command_line_usage_errors_are_one_line(monkeypatch, capsys, args, needles):
    """Click's usage errors (from typer's own copy of click too) read like every other error: one line, exit 2."""
    code, _, err = run(monkeypatch, capsys, *args)
    _assert_clean_error(code, err, *needles)


def test_bare_command_shows_its_help_and_exits_0(monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys)
    assert code in (0, None) and "Usage" in out and out.count("Usage") == 1 and "Traceback" not in err


def test_interrupt_says_how_to_resume(monkeypatch, capsys):
    import leakaudit.cli as cli

    monkeypatch.setattr(cli, "app", lambda **kw: 130)  # click returns 130 for a Ctrl-C in non-standalone mode
    code, _, err = run(monkeypatch, capsys, "audit")
    assert code == 130 and "interrupted; run the same command again to resume" in err


def test_outputs_that_cannot_take_the_result_are_refused_before_any_work(
        monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    mem, non = corpus
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", mem, "--out", precious)
    _assert_clean_error(code, err, "--out", "not a model written by 'leakaudit train'")
    assert (precious / "notes.txt").read_text() == "keep"
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", mem, "--out", mem)
    _assert_clean_error(code, err, "is a file")
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", mem, "--non-members",
                       non, "--out", mem)
    _assert_clean_error(code, err, "is a file")
    spec = Path(__file__).resolve().parents[1] / "canaries" / "recovery_codes.yaml"
    code, _, err = run(monkeypatch, capsys, "canaries", "generate", spec, "--out", tmp_path)
    _assert_clean_error(code, err, "is a directory")
    for flag, value in (("--lr", "nan"), ("--lr", "inf"), ("--max-grad-norm", "0")):
        code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", mem, "--out",
                           tmp_path / "m", "--dp", "--epsilon", "1", flag, value)
        _assert_clean_error(code, err, f"{flag} must be a finite number > 0")
    for flag, value in (("--accountant", "bogus"), ("--delta", "5"), ("--max-grad-norm", "-1")):
        code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", mem, "--out",
                           tmp_path / "m", flag, value)  # without --dp it would be ignored
        _assert_clean_error(code, err, f"{flag} needs --dp")
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, "--members", mem, "--non-members",
                       non, "--out", tmp_path / "p", "--attacks", "loss", "--param", "loss.x=[")
    _assert_clean_error(code, err, "--param loss.x: '[' is not a valid value")
    assert not list(tmp_path.glob(".*partial")) and not (tmp_path / "m").exists()


def test_atomic_dir_replaces_an_earlier_output_without_a_gap(tmp_path):
    from leakaudit.io import atomic_dir

    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(out) as tmp:
        assert (out / "a").read_text() == "1"  # the earlier output stays in place while the new one is built
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .partial or .old left
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_record_without_an_id_gets_its_row_number():
    from leakaudit.data.loading import record_id

    assert [record_id(r, i) for i, r in enumerate([{"id": None}, {"id": float("nan")}, {"id": 7}, {}])] == [
        "0", "1", "7", "3"]


def test_demo_names_the_flag_that_set_a_bad_value(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--shadows", "2", "--out", tmp_path / "d")
    _assert_clean_error(code, err, "--shadows: the number of shadow models must be 0 or an even number >= 4")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("shadows: 2\n")  # the same value from a file: named as the file's field
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--config", cfg, "--out", tmp_path / "d")
    _assert_clean_error(code, err, "c.yaml: field 'shadows'")
    assert not (tmp_path / "d").exists()


def test_a_reference_named_like_an_audited_model(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    # the same name for another directory is refused; for the same directory the reference is audited too,
    # its own reference attacks skipped (as the demo's base model)
    other = _copy_model(tiny_model_dir, tmp_path / "other")
    common = ["--members", corpus[0], "--non-members", corpus[1], "--attacks", "loss,reference"]
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--reference", f"m={other}",
                       *common, "--out", tmp_path / "r")
    _assert_clean_error(code, err, "--reference m: the same name as a --model with another directory")
    assert not (tmp_path / "r").exists()
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--model", f"base={other}",
                       "--reference", f"base={other}", "--control", "nope", *common, "--out", tmp_path / "r")
    _assert_clean_error(code, err, "--control nope: no --model named 'nope' (named: m, base)")
    assert not (tmp_path / "r").exists()
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--model", f"base={other}",
                       "--reference", f"base={other}", "--control", "base", *common, "--out", tmp_path / "r")
    assert code == 0, err
    models = json.loads((tmp_path / "r" / "results.json").read_text())["models"]
    assert "reference" in models["m"]["mia"] and "reference" in models["base"]["skipped_attacks"]
    assert models["base"]["control"] is True and models["m"]["control"] is False
    assert "(control: never trained on these records)" in (tmp_path / "r" / "report.md").read_text()
    # attack parameters are checked against the attacks and references named, before any work
    for extra, needle in [(["--param", "reference.reference=nope"], "--param reference.reference=nope: no --reference"),
                          (["--param", "min_k.k=0.1"], "--param min_k.k: attack 'min_k' is not among --attacks"),
                          (["--param", "foo.k=1"], "--param: unknown attack 'foo'")]:
        code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--reference",
                           f"base={other}", *common, *extra, "--out", tmp_path / "p")
        _assert_clean_error(code, err, needle)
        assert not (tmp_path / "p").exists()


def test_a_reference_that_is_the_audited_model_under_another_name_is_refused(
        monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--reference",
                       f"base={tiny_model_dir}", "--members", corpus[0], "--non-members", corpus[1],
                       "--out", tmp_path / "r", "--attacks", "loss,reference")
    _assert_clean_error(code, err, "reference model 'base':", "is the audited model 'm' itself")


def test_demo_refuses_infinite_epsilon_and_names_where_a_bad_device_came_from(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--epsilon", "inf", "--out", tmp_path / "d")
    _assert_clean_error(code, err, "--epsilon inf is no privacy")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("device: tpu\n")  # not a flag the user gave: the file's field is named
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--config", cfg, "--out", tmp_path / "d")
    _assert_clean_error(code, err, "c.yaml: field 'device': expected cpu or cuda (got 'tpu')")
    cfg.write_text("dp: {target_epsilon: .inf}\n")
    code, _, err = run(monkeypatch, capsys, "demo", "--preset", "tiny", "--config", cfg, "--out", tmp_path / "d")
    _assert_clean_error(code, err, "c.yaml: field 'dp.target_epsilon'", "finite")
    assert not (tmp_path / "d").exists()


def test_audit_reads_every_input_before_training_shadow_models(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--members", corpus[0],
                       "--non-members", corpus[1], "--shadows", "4", "--shadow-base", tiny_model_dir,
                       "--train-data", tmp_path / "missing.jsonl", "--out", tmp_path / "r")
    _assert_clean_error(code, err, "missing.jsonl")
    assert not (tmp_path / "r").exists()  # no shadow model trained, nothing written
    # what the model trained on must not hold a held-out record: it would be scored as never seen
    train = tmp_path / "train.jsonl"
    train.write_text(corpus[0].read_text() + corpus[1].read_text().splitlines(keepends=True)[0])
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--members", corpus[0],
                       "--non-members", corpus[1], "--train-data", train, "--out", tmp_path / "r")
    _assert_clean_error(code, err, f"--train-data {train} and non-members overlap: 1 non-member text(s) also occur "
                        f"in --train-data {train}")
    assert not (tmp_path / "r").exists()


def test_progress_lines_are_printed_as_they_are(capsys):
    from leakaudit.cli import _say

    _say("[cached] data")
    _say("run odd[/x] done")
    err = capsys.readouterr().err
    assert "[cached] data" in err and "odd[/x] done" in err


def test_model_names_stay_inside_the_run_directory(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    for spec in (f"../../x={tiny_model_dir}", f"a/b={tiny_model_dir}"):
        code, _, err = run(monkeypatch, capsys, "audit", "--model", spec, "--members", corpus[0],
                           "--non-members", corpus[1], "--out", tmp_path / "r")
        _assert_clean_error(code, err, "--model", "may hold only letters, digits")
    assert not (tmp_path / "r").exists() and not (tmp_path.parent / "x").exists()


def test_console_summary_takes_the_true_median_and_flags_unresolved_tprs(capsys):
    from leakaudit.cli import _print_summary
    from tests.test_policy import _canary, make_results

    res = make_results(n_non=50)
    model = res.models["dp"]
    model.canaries = [_canary(i, bits, 32) for i, bits in enumerate([3.0, 4.0, 6.0, 9.0])]  # median 5.0, not 6.0
    res.models = {"dp": model}
    _print_summary(res)
    text = capsys.readouterr().err  # the console writes to stderr
    assert "5.00" in text and "6.00" not in text
    assert "unresolved" in text  # 50 non-members cannot resolve 1% FPR


def test_run_directories_are_never_someone_elses_and_never_hold_stale_results(
        monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    args = ["--members", corpus[0], "--non-members", corpus[1], "--attacks", "loss"]
    # a directory of the user's own files is not written into; nor is a model directory
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    code, _, err = run(monkeypatch, capsys, "audit", "--model", tiny_model_dir, *args, "--out", mine)
    _assert_clean_error(code, err, f"--out {mine}: holds files that are not a leakaudit run")
    assert (mine / "report.md").read_text() == "my notes"
    code, _, err = run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", *args,
                       "--out", tiny_model_dir / "audit")
    _assert_clean_error(code, err, "overlaps --model m")
    # broken weights: one line before anything is written, not a traceback after the scoring
    broken = _copy_model(tiny_model_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    code, _, err = run(monkeypatch, capsys, "audit", "--model", broken, *args, "--out", tmp_path / "b")
    _assert_clean_error(code, err, "model.safetensors: not a readable safetensors file")
    assert not (tmp_path / "b").exists()
    # a rerun that fails leaves no results of the earlier inputs for the gate to pass on
    out = tmp_path / "run"
    assert run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", *args, "--out", out)[0] == 0
    assert (out / "results.json").is_file()
    from leakaudit.audit import run_audit
    from leakaudit.errors import LeakauditError

    with pytest.raises(LeakauditError):
        run_audit(out, {"m": broken}, [{"id": "1", "text": "a b c"}], [{"id": "2", "text": "d e f"}], [],
                  device="cpu")
    assert not (out / "results.json").exists() and not (out / "report.html").exists()
    code, _, err = run(monkeypatch, capsys, "report", out)
    _assert_clean_error(code, err, "results.json: results file not found")
    # report refuses what the gate refuses
    assert run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", *args, "--out", out)[0] == 0
    text = (out / "results.json").read_text()
    data = json.loads(text)
    data["models"]["m"]["mia"]["loss"]["auc"] = float("nan")
    (out / "results.json").write_text(json.dumps(data))
    code, _, err = run(monkeypatch, capsys, "report", out)
    _assert_clean_error(code, err, "is not a finite number")
    code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", tmp_path / "m.json", "--data",
                       corpus[0], "--out", tmp_path / "x.csv")
    _assert_clean_error(code, err, "--out", "*.jsonl")


def test_out_directories_a_run_may_write_into(tmp_path):
    from leakaudit.cli import _check_out
    from leakaudit.errors import LeakauditError

    cont = tmp_path / "cont"  # finished seeds and cells copied here to continue a grid (docs/experiments.md)
    (cont / "seeds" / "seed-0").mkdir(parents=True)
    (cont / "cells").mkdir()
    _check_out(cont, "experiment")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".gitkeep").write_text("")
    _check_out(hidden, "dir")
    _check_out(hidden, "experiment")
    (hidden / "notes.md").write_text("mine")
    for kind in ("dir", "experiment"):
        with pytest.raises(LeakauditError, match="not a leakaudit run"):
            _check_out(hidden, kind)


def test_outputs_that_would_destroy_an_input_or_cannot_be_written_are_refused(
        monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    mem, non = corpus
    base = _copy_model(tiny_model_dir, tmp_path / "base")
    (base / "privacy.json").write_text("{}")  # as a model written by 'leakaudit train' (which --out may replace)
    before = sorted((f.name, f.read_bytes()) for f in base.iterdir())
    code, _, err = run(monkeypatch, capsys, "train", "--base", base, "--data", mem, "--out", base)
    _assert_clean_error(code, err, f"--out {base}: overlaps --base")
    code, _, err = run(monkeypatch, capsys, "train", "--base", base, "--data", mem, "--out", base / "tuned")
    _assert_clean_error(code, err, "overlaps --base")
    assert sorted((f.name, f.read_bytes()) for f in base.iterdir()) == before
    code, _, err = run(monkeypatch, capsys, "train", "--base", tiny_model_dir, "--data", mem, "--out", tmp_path)
    _assert_clean_error(code, err, "overlaps --data")  # the model would replace the folder holding its corpus
    spec = tmp_path / "spec.yaml"
    spec.write_text((Path(__file__).resolve().parents[1] / "canaries" / "recovery_codes.yaml").read_text())
    code, _, err = run(monkeypatch, capsys, "canaries", "generate", spec, "--out", spec)
    _assert_clean_error(code, err, "overlaps SPEC")
    manifest = tmp_path / "m.json"
    assert run(monkeypatch, capsys, "canaries", "generate", spec, "--out", manifest)[0] == 0
    text = mem.read_text()
    code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", manifest, "--data", mem, "--out", mem)
    _assert_clean_error(code, err, "overlaps --data")
    assert mem.read_text() == text
    # under a file: one line before any work, for every command that writes
    for args in (("train", "--base", tiny_model_dir, "--data", mem, "--out", mem / "model"),
                 ("audit", "--model", tiny_model_dir, "--members", mem, "--non-members", non, "--out", mem / "run"),
                 ("canaries", "generate", spec, "--out", mem / "sub" / "m.json"),
                 ("demo", "--preset", "tiny", "--out", mem / "demo")):
        code, _, err = run(monkeypatch, capsys, *args)
        _assert_clean_error(code, err, f"{mem} is a file, so nothing can be written under it")


def test_file_system_errors_while_writing_are_one_line(monkeypatch, capsys):
    import leakaudit.cli as cli

    def app(**kw):
        raise PermissionError(13, "Permission denied", "/srv/runs/x/results.json")

    monkeypatch.setattr(cli, "app", app)
    code, _, err = run(monkeypatch, capsys, "audit")
    _assert_clean_error(code, err, "/srv/runs/x/results.json: Permission denied")

    def bug(**kw):
        raise FileNotFoundError(2, "No such file or directory", "x")  # not the user's to fix: a traceback

    monkeypatch.setattr(cli, "app", bug)
    with pytest.raises(FileNotFoundError):
        run(monkeypatch, capsys, "audit")


def test_an_interrupted_training_says_it_starts_again(monkeypatch, capsys):
    import leakaudit.cli as cli

    monkeypatch.setattr(cli, "app", lambda **kw: 130)
    code, _, err = run(monkeypatch, capsys, "train")
    assert code == 130 and "nothing was saved" in err and "resume" not in err


@pytest.mark.parametrize("args", [
    ("train", "--base", "a", "--out", "x", "--data", "d", "--out", "y"),
    ("canaries", "insert", "--manifest", "m", "--out=a", "--data", "d", "--out", "b"),
    ("audit", "--model", "a", "--members", "m", "--members=n", "--non-members", "n", "--out", "o"),
])
def test_an_option_given_twice_is_refused(monkeypatch, capsys, args):
    code, _, err = run(monkeypatch, capsys, *args)
    name = "--members" if "audit" in args else "--out"
    _assert_clean_error(code, err, f"{name} is given twice")


def test_repeatable_options_and_option_like_values_are_not_counted_twice():
    from leakaudit.cli import _check_repeated_options

    _check_repeated_options(["audit", "--model", "a", "--model", "b", "--canaries", "c", "--canaries", "d"])
    _check_repeated_options(["audit", "--text-field", "--out", "--out", "x"])  # the first --out is a value
    _check_repeated_options(["canaries", "generate", "--out", "a", "--", "--out"])
    _check_repeated_options(["audit", "--trust-remote-code", "--no-trust-remote-code"])  # a flag: the last counts
    _check_repeated_options(["train", "--out", "a", "--out", "b", "--help"])  # help is shown, not an error


def test_where_an_output_must_be_writable(monkeypatch, tmp_path):
    import leakaudit.cli as cli
    from leakaudit.errors import LeakauditError
    from leakaudit.io import atomic_dir

    parent = tmp_path / "ro"
    (parent / "run").mkdir(parents=True)
    monkeypatch.setattr(cli.os, "access", lambda d, mode: Path(d) != parent)  # as if this user could not write there
    cli._check_out(parent / "run", "dir")  # a run directory is written into, not replaced from its parent
    for kind, out in (("model", parent / "run"), ("file", parent / "m.json"), ("dir", parent / "new")):
        with pytest.raises(LeakauditError, match=f"cannot write in {parent}"):
            cli._check_out(out, kind)
    with atomic_dir(tmp_path / "model" / "sub" / "..") as d:  # "." and ".." name no directory of their own
        (d / "a").write_text("1")
    assert (tmp_path / "model" / "a").read_text() == "1"


def test_attacks_asked_for_by_name_must_be_able_to_run(monkeypatch, capsys, tmp_path, tiny_model_dir, corpus):
    args = ["audit", "--model", tiny_model_dir, "--members", corpus[0], "--non-members", corpus[1]]
    for attack, needs in (("lira_online", "--shadows N"), ("rmia", "--shadows N"), ("reference", "--reference DIR")):
        code, _, err = run(monkeypatch, capsys, *args, "--attacks", f"loss,{attack}", "--out", tmp_path / "r")
        _assert_clean_error(code, err, f"--attacks {attack}: needs", needs)
    assert not (tmp_path / "r").exists()


def test_weights_unlike_their_config_are_refused(tmp_path, tiny_model_dir):
    from leakaudit.errors import LeakauditError
    from leakaudit.models import check_model_loadable, load_model

    wider = _copy_model(tiny_model_dir, tmp_path / "wider")
    cfg = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**cfg, "n_embd": 2 * cfg["n_embd"]}))
    with pytest.raises(LeakauditError, match=r"wider: weight '.*' has shape \[.*\] in the files but config.json "
                       r"makes it"):
        check_model_loadable(wider)  # before any work
    deeper = _copy_model(tiny_model_dir, tmp_path / "deeper")
    (deeper / "config.json").write_text(json.dumps({**cfg, "n_layer": cfg["n_layer"] + 1}))
    with pytest.raises(LeakauditError, match=r"deeper: 12 weight\(s\) .* are not in the files"):
        check_model_loadable(deeper)  # before any work
    with pytest.raises(LeakauditError, match=r"deeper: cannot load model: 12 weight\(s\) .* are not in the files"):
        load_model(deeper)  # the library would have filled the third layer with random values
    # tied embeddings: the head's weight is not stored, and is no missing weight
    tied = tmp_path / "tied"
    model = load_model(tiny_model_dir).model
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tied)
    load_model(tiny_model_dir).tokenizer.save_pretrained(tied)
    check_model_loadable(tied)
    assert load_model(tiny_model_dir).model.config.n_layer == cfg["n_layer"]


def test_files_from_a_newer_leakaudit_and_absurd_specs_are_refused(monkeypatch, capsys, tmp_path, tiny_model_dir,
                                                                   corpus):
    out = tmp_path / "run"
    assert run(monkeypatch, capsys, "audit", "--model", f"m={tiny_model_dir}", "--members", corpus[0],
               "--non-members", corpus[1], "--attacks", "loss", "--out", out)[0] == 0
    data = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**data, "schema_version": 999}))
    policy = Path(__file__).resolve().parents[1] / "experiments" / "policy.yaml"
    for args in (("report", out), ("gate", out, "--policy", policy)):
        code, _, err = run(monkeypatch, capsys, *args)
        _assert_clean_error(code, err, "field 'schema_version': 999 is not a results version this leakaudit reads")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntemplate: 'pin {secret}'\nsecret: {format: digits, length: 9}\n"
                    "repetitions: [1, 100000000]\n")
    code, _, err = run(monkeypatch, capsys, "canaries", "generate", spec, "--out", tmp_path / "m.json")
    _assert_clean_error(code, err, "spec.yaml", "repetitions", "400,000,004 canary copies")
    spec.write_text("name: x\ntemplate: 'pin {secret}'\nsecret: {format: digits, length: 9}\nrepetitions: [1, 2]\n")
    manifest = tmp_path / "m.json"
    assert run(monkeypatch, capsys, "canaries", "generate", spec, "--out", manifest)[0] == 0
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 2}))
    code, _, err = run(monkeypatch, capsys, "canaries", "insert", "--manifest", manifest, "--data", corpus[0],
                       "--out", tmp_path / "with.jsonl")
    _assert_clean_error(code, err, "m.json", "schema_version")


def test_one_process_at_a_time_writes_a_run_directory(tmp_path):
    import os
    import socket

    from leakaudit.errors import LeakauditError
    from leakaudit.io import run_lock

    run_dir = tmp_path / "run"
    with run_lock(run_dir, "demo"):
        assert (run_dir / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(LeakauditError, match=rf"another leakaudit demo \(process {os.getpid()}\) is writing"):
            with run_lock(run_dir, "demo"):
                pass
        assert (run_dir / ".lock").exists()  # the refused one leaves the holder's lock in place
    assert not (run_dir / ".lock").exists()
    (run_dir / ".lock").write_text(f"999999999 {socket.gethostname()}")  # a writer that is gone: taken over
    with run_lock(run_dir, "demo"):
        assert (run_dir / ".lock").read_text().startswith(str(os.getpid()))
    (run_dir / ".lock").write_text("123 another-host")
    with pytest.raises(LeakauditError, match="another leakaudit experiment on another-host"):
        with run_lock(run_dir, "experiment"):
            pass
