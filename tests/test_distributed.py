"""Data-parallel scoring over two CPU processes (gloo) gives the single-process result, in order."""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from leakaudit.models import Target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank, task, world, port, model_dir, inputs, out_dir):
    """Spawned process: join a gloo group of ``world``, load the model, save ``task``'s output for this rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from leakaudit.models import load_model

        out = task(load_model(model_dir), inputs)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), out, allow_pickle=True)
    finally:
        dist.destroy_process_group()


def _score(loaded, texts):
    return np.array(Target(loaded.model, loaded.tokenizer, token_budget=256).score(texts), dtype=object)


def _greedy(loaded, prompts):
    from leakaudit.models.generate import Sampling, generate

    return generate(loaded.model, prompts, Sampling(max_new_tokens=8, greedy=True),
                    pad_id=loaded.tokenizer.pad_token_id, batch_size=4)


def _spawn(task, model_dir, inputs, out_dir) -> None:
    mp.spawn(_in_group, args=(task, 2, _free_port(), str(model_dir), inputs, str(out_dir)), nprocs=2, join=True)


def test_two_processes_score_like_one(tiny_model_dir, corpora, tmp_path):
    from leakaudit.models import load_model

    texts = [r["text"] for r in corpora[0][:25]] + ["a", "short text"]
    _spawn(_score, tiny_model_dir, texts, tmp_path)
    single = _score(load_model(tiny_model_dir), texts)
    for rank in (0, 1):
        got = np.load(tmp_path / f"rank{rank}.npy", allow_pickle=True)
        assert len(got) == len(single)
        for a, b in zip(got, single):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_two_processes_generate_like_one(tiny_model_dir, corpora, tmp_path):
    """Prompts split across two ranks come back to every rank whole, in prompt order."""
    from leakaudit.models import encode, load_model

    loaded = load_model(tiny_model_dir)
    texts = [r["text"][: 5 + 7 * i] for i, r in enumerate(corpora[0][:11])]
    prompts = [e.ids for e in encode(loaded.tokenizer, texts)]
    _spawn(_greedy, tiny_model_dir, prompts, tmp_path)
    single = _greedy(loaded, prompts)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{rank}.npy"), single)


def test_audit_under_torchrun_equals_one_process(tiny_model_dir, corpora, tmp_path):
    """`torchrun --nproc_per_node 2 -m leakaudit audit ...` on the CPU (gloo) writes the same results."""
    import json
    import subprocess
    import sys

    private = corpora[0]
    mem, non = tmp_path / "mem.jsonl", tmp_path / "non.jsonl"
    mem.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in private[:30]))
    non.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in private[30:60]))
    args = ["audit", "--model", f"tiny={tiny_model_dir}", "--members", str(mem), "--non-members", str(non),
            "--attacks", "loss,zlib,min_k_pp", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "leakaudit", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "leakaudit", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())["models"]["tiny"]["mia"]
    b = json.loads((tmp_path / "two" / "results.json").read_text())["models"]["tiny"]["mia"]
    for attack in ("loss", "zlib", "min_k_pp"):
        assert abs(a[attack]["auc"] - b[attack]["auc"]) < 1e-9
    assert two.stdout.count("report:") == 1  # only rank 0 reports
