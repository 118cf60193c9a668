"""Scoring-engine throughput against two baselines, in the same run on the same model and texts.

    python benchmarks/scoring_engine.py [--size small|gpt2-small] [--texts 64] [--max-tokens 512] [--device cpu]

Baselines: (1) one sequence per forward pass; (2) a plain batched forward (fixed batch, padded to
the longest text, float32 log-softmax over every position).  The engine sorts by length, packs
batches under a token budget, normalises only real positions and, on a GPU, runs the model in bf16
with its vocabulary reductions compiled (``leakaudit.models.vocab``); the run also times the
engine with the other form of those reductions (tensor operations on a GPU, compiled on a CPU) and
with the library's composite GELU.  ``--stats`` adds Min-K%++'s statistics to the engine's passes.
Prints one JSON object: tokens/s of each, ratios, peak memory, and the largest
difference in per-token log-prob between the engine and the fp32 loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from leakaudit.data import make_corpora  # noqa: E402
from leakaudit.models import Target, build_model, encode, train_tokenizer, vocab  # noqa: E402
from leakaudit.models import target as target_module  # noqa: E402
from leakaudit.models.target import resolve_dtype  # noqa: E402

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "small": dict(n_layer=4, n_embd=128, n_head=4, vocab=2048),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def loop_one(model, ids_list, device):
    out = []
    for ids in ids_list:
        x = torch.tensor([ids], device=device)
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        out.append(lp.gather(-1, x[0, 1:, None]).squeeze(-1).cpu().numpy())
    return out


@torch.no_grad()
def plain_batched(model, ids_list, device, batch, pad):
    out = []
    for i in range(0, len(ids_list), batch):
        chunk = ids_list[i : i + batch]
        w = max(len(x) for x in chunk)
        x = torch.full((len(chunk), w), pad, device=device)
        m = torch.zeros_like(x)
        for b, ids in enumerate(chunk):
            x[b, : len(ids)] = torch.tensor(ids)
            m[b, : len(ids)] = 1
        lp = torch.log_softmax(model(input_ids=x, attention_mask=m).logits.float(), -1)
        tok = lp[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1).cpu().numpy()
        out += [tok[b, : len(ids) - 1] for b, ids in enumerate(chunk)]
    return out


def profile(fn, device: str, top: int = 15) -> dict:
    """Wall time of one call, the device time inside it and the ``top`` kernels by their own device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    total = sum(getattr(e, key, 0) for e in events)
    return {"wall_s": wall, "device_s_total": total / 1e6,
            "top": [{"name": e.key[:90], "calls": e.count, "self_s": getattr(e, key, 0) / 1e6} for e in rows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--min-tokens", type=int, default=None,
                    help="texts of min..max tokens, uniformly (default max/2; = max: every text that long)")
    ap.add_argument("--batch", type=int, default=16, help="batch of the plain batched baseline")
    ap.add_argument("--token-budget", type=int, default=None, help="engine budget (default: by device)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--engine-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="the engine's weights (auto: bfloat16 on a GPU, float32 on a CPU); baselines stay float32")
    ap.add_argument("--stats", action="store_true",
                    help="engine passes also compute Min-K%%++'s mean and variance of log p (as an audit does)")
    ap.add_argument("--compiled-model", action="store_true",
                    help="also time the engine with the whole model compiled (Target(compile_model=True))")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one engine pass over the texts: the kernels taking most device time")
    args = ap.parse_args()
    sz = SIZES[args.size]
    _, public = make_corpora(1, 3000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=min(sz["vocab"], 8192))
    model = build_model(tok, n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"],
                        context=args.max_tokens)
    if sz["vocab"] > len(tok):
        model.resize_token_embeddings(sz["vocab"])  # a GPT-2-sized vocabulary (50,257) for realistic cost
    model = model.to(args.device).eval()
    rng = np.random.default_rng(0)
    texts = [" ".join(public[j]["text"] for j in rng.choice(len(public), 12)) for _ in range(args.texts)]
    low = args.max_tokens // 2 if args.min_tokens is None else args.min_tokens
    if not 2 <= low <= args.max_tokens:
        ap.error("--min-tokens: expected 2..--max-tokens")
    ids_list = [e.ids[: rng.integers(low, args.max_tokens + 1)] for e in encode(tok, texts)]
    short = sum(len(x) < low for x in ids_list)
    n_tokens = sum(len(x) - 1 for x in ids_list)

    res = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "device": args.device,
           "parameters": sum(p.numel() for p in model.parameters()), "texts": len(ids_list), "tokens": n_tokens,
           "text_tokens": [low, args.max_tokens], "texts_shorter_than_min": short}
    if args.device.startswith("cuda"):
        res["device"] = torch.cuda.get_device_name()
    else:
        res["torch_threads"] = torch.get_num_threads()

    def timed(name, fn):
        fn()  # warm-up
        sync(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        sync(args.device)
        dt = time.perf_counter() - t0
        res[f"{name}_tokens_per_s"] = n_tokens / dt
        if args.device.startswith("cuda"):
            res[f"{name}_peak_mb"] = peak_mb(args.device)
        return out

    ref = timed("one_per_pass", lambda: loop_one(model, ids_list, args.device))
    timed("plain_batched", lambda: plain_batched(model, ids_list, args.device, args.batch, tok.pad_token_id))
    engine_model = model.to(resolve_dtype(args.device, args.engine_dtype))
    res["engine_dtype"] = str(next(engine_model.parameters()).dtype)
    score = (lambda t: t.score_ids(ids_list, stats=True)) if args.stats else (lambda t: t.score_ids(ids_list))
    unfused = Target(engine_model, tok, token_budget=args.token_budget, fuse=False)
    timed("engine_unfused", lambda: score(unfused))  # composite GELU kept (the library's own)
    # the vocabulary reductions in the other form than the device's default (compiled <-> tensor ops)
    default_compiled = vocab.compile_wanted(torch.device(args.device))
    os.environ[vocab.ENV] = "0" if default_compiled else "1"
    other = Target(engine_model, tok, token_budget=args.token_budget)
    timed("engine_" + ("eager" if default_compiled else "compiled") + "_reductions", lambda: score(other))
    os.environ.pop(vocab.ENV)
    target = Target(engine_model, tok, token_budget=args.token_budget)
    target_module._OVERLAP = 0  # each batch read back before the next is queued
    timed("engine_no_overlap", lambda: score(target))
    target_module._OVERLAP = 1
    if args.compiled_model:  # the whole model through torch.compile (compiling happens in the warm-up)
        t0 = time.perf_counter()
        compiled = Target(engine_model, tok, token_budget=args.token_budget, compile_model=True)
        timed("engine_compiled_model", lambda: score(compiled))
        res["engine_compiled_model_setup_and_two_passes_s"] = time.perf_counter() - t0
        res["engine_compiled_model_fell_back"] = not compiled._compile_model
    res["engine_reductions"] = "compiled" if target._compiled else "eager"
    got = timed("engine", lambda: score(target))
    if args.stats:
        got = [g[0] for g in got]
    res["engine_vs_one_per_pass"] = res["engine_tokens_per_s"] / res["one_per_pass_tokens_per_s"]
    res["engine_vs_plain_batched"] = res["engine_tokens_per_s"] / res["plain_batched_tokens_per_s"]
    res["engine_vs_engine_unfused"] = res["engine_tokens_per_s"] / res["engine_unfused_tokens_per_s"]
    res["engine_vs_engine_no_overlap"] = res["engine_tokens_per_s"] / res["engine_no_overlap_tokens_per_s"]
    if args.compiled_model:
        res["engine_compiled_model_vs_engine"] = (
            res["engine_compiled_model_tokens_per_s"] / res["engine_tokens_per_s"])
    for form in ("eager", "compiled"):
        if f"engine_{form}_reductions_tokens_per_s" in res:
            res[f"engine_vs_engine_{form}_reductions"] = (
                res["engine_tokens_per_s"] / res[f"engine_{form}_reductions_tokens_per_s"])
    res["max_abs_diff_logprob"] = float(max(np.abs(a - b).max() for a, b in zip(ref, got)))
    if args.profile:
        res["engine_profile"] = profile(lambda: score(target), args.device)
    if not args.device.startswith("cuda"):
        res["process_peak_rss_mb"] = peak_mb(args.device)  # the whole run: per-method peaks need a GPU
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
