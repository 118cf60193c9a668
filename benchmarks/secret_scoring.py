"""Secret scoring speed: the shared-prefix KV cache against independent batched scoring and a
one-candidate-per-pass loop, in the same run on the same model.

    python benchmarks/secret_scoring.py [--candidates 2000] [--size tiny|small|gpt2-small] [--device cpu]
                                        [--exact-space 1000000]

Prints one JSON object: candidates/s of each method, the ratios, and the largest difference in
summed NLL between methods (they must agree).  With ``--exact-space N`` it also times the exact
exposure of one canary over all N secrets (chunked, shared prefix) against the naive loop's time
for N candidates, projected from its measured rate on ``--loop-candidates`` of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from leakaudit.attacks.exposure import exact_rank  # noqa: E402
from leakaudit.canaries.formats import get_format  # noqa: E402
from leakaudit.data import make_corpora  # noqa: E402
from leakaudit.models import Target, build_model, encode, train_tokenizer  # noqa: E402
from leakaudit.models.target import span_nll  # noqa: E402
from leakaudit.models.tokenize import scored_start  # noqa: E402

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "small": dict(n_layer=4, n_embd=128, n_head=4, vocab=2048),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=8192, resize=50257),
}


def independent(target: Target, prefix: str, cands: list[str]) -> np.ndarray:
    enc = encode(target.tokenizer, [prefix + c for c in cands])
    lps = target.score_ids([e.ids for e in enc])
    return _sum_secret(enc, lps, prefix, cands)


def one_per_pass(target: Target, prefix: str, cands: list[str]) -> np.ndarray:
    out = []
    for c in cands:
        enc = encode(target.tokenizer, [prefix + c])
        out.append(_sum_secret(enc, target.score_ids([enc[0].ids]), prefix, [c])[0])
    return np.array(out)


def _sum_secret(enc, lps, prefix, cands):
    return span_nll(enc, lps, [(scored_start(prefix), len(prefix) + len(c)) for c in cands])


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def scoring_model(size: str, device: str, bf16: bool = False):
    """(model, tokenizer) of one of :data:`SIZES`, in eval mode on ``device`` (bfloat16 on a GPU if asked)."""
    sz = SIZES[size]
    _, public = make_corpora(1, 2000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=sz["vocab"])
    model = build_model(tok, n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"], context=256)
    if sz.get("resize"):
        model.resize_token_embeddings(sz["resize"])  # a GPT-2-sized vocabulary: the output layer's real cost
    dtype = torch.bfloat16 if device.startswith("cuda") and bf16 else torch.float32
    return model.to(device, dtype).eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--loop-candidates", type=int, default=200, help="the slow loop runs on a subset")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--exact-space", type=int, default=0, choices=[0, 10**4, 10**5, 10**6],
                    help="also time the exact exposure of one canary over a whole digits space of this size")
    ap.add_argument("--bf16", action="store_true", help="run the model in bfloat16 on a GPU")
    args = ap.parse_args()
    model, tok = scoring_model(args.size, args.device, args.bf16)
    target = Target(model, tok, token_budget=16384)
    prefix = "Security note for Jordan Avery Whitfield: the account recovery code is "
    cands = [f"{i:06d}" for i in np.random.default_rng(0).choice(10**6, args.candidates, replace=False)]
    t0 = time.perf_counter()  # warm-up of both paths (and, where compiled, the one-off compiling of their reductions)
    target.secret_nll(prefix, cands[:50])  # shared-prefix path
    target.secret_nll(prefix, cands[:300])  # candidate-tree path (>= 256 candidates)
    warmup = time.perf_counter() - t0
    fast, t_fast = timed(target.secret_nll, prefix, cands)
    batched, t_batched = timed(independent, target, prefix, cands)
    sub = cands[: args.loop_candidates]
    loop, t_loop = timed(one_per_pass, target, prefix, sub)
    res = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "size": args.size, "dtype": str(next(model.parameters()).dtype),
        "parameters": sum(p.numel() for p in model.parameters()),
        "candidates": args.candidates,
        "compiled_reductions": target._compiled, "warmup_seconds": warmup,
        "shared_prefix_cands_per_s": args.candidates / t_fast,
        "independent_batched_cands_per_s": args.candidates / t_batched,
        "one_per_pass_cands_per_s": len(sub) / t_loop,
        "speedup_vs_independent": t_batched / t_fast,
        "speedup_vs_one_per_pass": (t_loop / len(sub)) / (t_fast / args.candidates),
        "max_abs_diff_nll": float(max(np.abs(fast - batched).max(), np.abs(fast[: len(sub)] - loop).max())),
    }
    if args.exact_space:
        fmt = get_format("digits", len(str(args.exact_space)) - 1)
        rank, t_exact = timed(exact_rank, target, prefix, cands[0][: fmt.length], fmt)
        naive = fmt.space_size * (t_loop / len(sub))  # the loop's measured rate, over the whole space
        from leakaudit.models.tokenize import encode_continuations

        t0 = time.perf_counter()  # the host's share: making and tokenizing every candidate, no model
        for a in range(0, fmt.space_size, 20000):
            encode_continuations(tok, prefix, fmt.from_indices(a, min(a + 20000, fmt.space_size)))
        res["exact_host_tokenize_seconds"] = time.perf_counter() - t0
        res.update({
            "exact_space": fmt.space_size, "exact_seconds": t_exact, "exact_rank": rank,
            "naive_loop_seconds_projected": naive, "exact_speedup_vs_naive_loop": naive / t_exact,
        })
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
