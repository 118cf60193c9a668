"""Best-first canary search: forward passes batched by look-ahead against one pass per expansion, same run.

    python benchmarks/extraction_search.py [--size gpt2-preset|gpt2-small|tiny] [--budget 200] [--canaries 8]

A model with random weights (a flat distribution, so every search spends its whole budget, as it does
on a DP or base model) searches ``--canaries`` prefixes for a 6-digit secret, once with ``lookahead=1``
(one forward pass per expansion, the search as it was) and once with each ``--lookaheads`` value.
Prints one JSON object: seconds, forward passes and rows per setting, the speed-up over one pass per
expansion, and whether every search found the same guesses after the same expansions (it must).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from leakaudit.attacks.extraction import extract_secret  # noqa: E402
from leakaudit.canaries import get_format  # noqa: E402
from leakaudit.data import make_corpora  # noqa: E402
from leakaudit.models import Target, build_model, train_tokenizer  # noqa: E402
from leakaudit.models.target import resolve_dtype  # noqa: E402

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "gpt2-preset": dict(n_layer=8, n_embd=512, n_head=8, vocab=8192),  # the gpu preset's model
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=8192, resize=50257),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="gpt2-preset")
    ap.add_argument("--budget", type=int, default=200, help="expansions per canary")
    ap.add_argument("--canaries", type=int, default=8)
    ap.add_argument("--guesses", type=int, default=10)
    ap.add_argument("--lookaheads", default="4,16", help="comma-separated, each against lookahead 1")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    sz = SIZES[args.size]
    torch.manual_seed(0)
    _, public = make_corpora(1, 3000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=sz["vocab"])
    model = build_model(tok, n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"], context=256)
    if sz.get("resize"):
        model.resize_token_embeddings(sz["resize"])
    model = model.to(args.device, resolve_dtype(args.device)).eval()
    target = Target(model, tok)
    fmt = get_format("digits", 6)
    names = ["Ann Lee", "Bo Park", "Cy Diaz", "Di Chen", "Ed Moss", "Flo Nagy", "Gus Ito", "Hal Roy"]
    prefixes = [f"Security note for {names[i % len(names)]} ({i}): the account recovery code is "
                for i in range(args.canaries)]
    rows: list[int] = []
    forward = model.forward

    def counting(*a, **kw):
        rows.append(int(kw["input_ids"].shape[0]))
        return forward(*a, **kw)

    model.forward = counting

    def run(lookahead: int) -> dict:
        extract_secret(target, prefixes[0], fmt, max_expansions=min(args.budget, 20), lookahead=lookahead)  # warm-up
        rows.clear()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        found = [extract_secret(target, p, fmt, max_expansions=args.budget, guesses=args.guesses,
                                lookahead=lookahead) for p in prefixes]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return {"lookahead": lookahead, "seconds": dt, "passes": len(rows), "rows": sum(rows),
                "expansions": sum(f.total_expansions for f in found),
                "found": [(f.guesses, f.expansions, f.total_expansions) for f in found]}

    base = run(1)
    res = {"machine": f"{platform.machine()} {platform.processor()}".strip(),
           "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
           else f"cpu ({torch.get_num_threads()} threads)",
           "size": args.size, "parameters": sum(p.numel() for p in model.parameters()), "budget": args.budget,
           "canaries": args.canaries, "runs": []}
    for la in [1] + [int(x) for x in args.lookaheads.split(",") if x]:
        r = base if la == 1 else run(la)
        res["runs"].append({k: v for k, v in r.items() if k != "found"} | {
            "speedup_vs_one_pass_each": base["seconds"] / r["seconds"], "same_search": r["found"] == base["found"]})
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
