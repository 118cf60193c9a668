"""Untargeted extraction after sampling: near-duplicate removal, verification against the training
and held-out n-gram indexes, and the records-written check, timed against the per-sample loops they
replaced (kept below as the baseline), on the same synthetic samples in the same run.

    python benchmarks/untargeted_post.py [--samples 10000] [--scale 100000] [--tokens 256] [--out FILE]

The samples are drawn from a Zipf distribution over a GPT-2-sized vocabulary (so common trigrams are
shared by thousands of samples, as in sampled text), with 5% copies of earlier samples and 100 planted
training passages; dedupe also runs on samples as a memorising, early-stopping model writes them (a
third near-copies of one text, a third padded after an early stop).  Both implementations run on
``--samples`` and their outputs are compared; the new one alone also runs on ``--scale`` samples (the
old near-duplicate search grows quadratically there).  No model is involved: ranking (scoring the
samples) is the scoring engine's benchmark.  The baseline's loops use the current ``NgramIndex``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd

from leakaudit.attacks.untargeted import NgramIndex, Samples, _written, dedupe, records_written, verify

VOCAB = 50257


def synthetic(n: int, tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def draw(k):
        return ((rng.zipf(1.2, size=k) - 1) % VOCAB).tolist()

    new = [draw(tokens) for _ in range(n)]
    for _ in range(n // 20):  # copies of earlier samples
        a, b = sorted(rng.integers(0, n, 2))
        new[b] = list(new[a])
    train = [draw(200) for _ in range(2000)]
    held = [draw(200) for _ in range(2000)]
    for i in range(100):  # planted training passages
        new[i * (n // 100)][50:114] = train[i][:64]
    return Samples([[VOCAB - 1] for _ in range(n)], new, ["top_k"] * n), train, held


# ---- the baseline: the per-sample loops these functions had before ---------------------------------

def dedupe_loop(samples, threshold=0.5):
    owners, kept = {}, []
    for i, s in enumerate(samples):
        grams = {tuple(s[j: j + 3]) for j in range(len(s) - 2)}
        if not grams:
            continue
        shared = {}
        for g in grams:
            for k in owners.get(g, ()):
                shared[k] = shared.get(k, 0) + 1
        if shared and max(shared.values()) > threshold * len(grams):
            continue
        kept.append(i)
        for g in grams:
            owners.setdefault(g, []).append(i)
    return np.array(kept, dtype=np.int64)


def verify_loop(samples, train, non_members):
    rows = []
    for p, g in zip(samples.prompts, samples.new):
        seq = _written(p, g, train.n)
        hits = train.lookup(seq)
        held = non_members.lookup(seq) >= 0
        rows.append({"memorized": bool((hits >= 0).any()),
                     "train_doc": int(hits[hits >= 0][0]) if (hits >= 0).any() else -1,
                     "in_public": False, "non_member_match": bool(held.any())})
    return pd.DataFrame(rows)


def records_written_loop(samples, kept, records, n):
    written = NgramIndex([_written(samples.prompts[i], samples.new[i], n) for i in kept], n)
    return np.array([bool((written.lookup(ids) >= 0).any()) for ids in records])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def repeats(n: int, tokens: int, seed: int = 1) -> list[list[int]]:
    """Samples as a memorising, early-stopping model writes them: a third copies of one text with a few
    tokens changed, a third stopping early and padded to full length, a third Zipf text."""
    rng = np.random.default_rng(seed)
    text = rng.integers(0, VOCAB, tokens).tolist()
    out = []
    for i in range(n):
        if i % 3 == 0:
            s = list(text)
            for j in rng.integers(0, tokens, 3):
                s[j] = int(rng.integers(0, VOCAB))
        elif i % 3 == 1:
            k = int(rng.integers(0, tokens // 4))
            s = ((rng.zipf(1.2, size=k) - 1) % VOCAB).tolist() + [VOCAB - 1] * (tokens - k)
        else:
            s = ((rng.zipf(1.2, size=tokens) - 1) % VOCAB).tolist()
        out.append([VOCAB - 1] + s)
    return out


def run(samples, train_docs, held_docs, *, baseline: bool) -> dict:
    seqs = [p + g for p, g in zip(samples.prompts, samples.new)]
    train, held = NgramIndex(train_docs, 16), NgramIndex(held_docs, 16)
    res = {}
    kept, res["dedupe_s"] = timed(lambda: dedupe(seqs))
    table, res["verify_s"] = timed(lambda: verify(samples, train, non_members=held))
    flags, res["records_written_s"] = timed(
        lambda: records_written(samples, kept, train_docs + held_docs, 16)["written"].to_numpy())
    res.update(kept=len(kept), memorized=int(table["memorized"].sum()), records_written=int(flags.sum()))
    if baseline:
        kept0, res["dedupe_loop_s"] = timed(lambda: dedupe_loop(seqs))
        table0, res["verify_loop_s"] = timed(lambda: verify_loop(samples, train, held))
        flags0, res["records_written_loop_s"] = timed(
            lambda: records_written_loop(samples, kept0, train_docs + held_docs, 16))
        rep = repeats(len(seqs), len(samples.new[0]))
        kept_rep, res["dedupe_repeats_s"] = timed(lambda: dedupe(rep))
        kept_rep0, res["dedupe_repeats_loop_s"] = timed(lambda: dedupe_loop(rep))
        res["identical"] = bool(np.array_equal(kept, kept0) and table.equals(table0.astype(table.dtypes))
                                and np.array_equal(flags, flags0) and np.array_equal(kept_rep, kept_rep0))
        for step in ("dedupe", "dedupe_repeats", "verify", "records_written"):
            res[f"{step}_speedup"] = round(res[f"{step}_loop_s"] / max(res[f"{step}_s"], 1e-9), 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10_000, help="samples for the comparison with the loops")
    ap.add_argument("--scale", type=int, default=100_000, help="samples for the new code alone (0: skip)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    out = {"samples": args.samples, "tokens": args.tokens}
    out["compare"] = run(*synthetic(args.samples, args.tokens), baseline=True)
    print(json.dumps(out["compare"]), flush=True)
    if args.scale:
        out["scale"] = {"samples": args.scale, **run(*synthetic(args.scale, args.tokens), baseline=False)}
        print(json.dumps(out["scale"]), flush=True)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"peak RSS {out['peak_rss_mib']} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    if not out["compare"]["identical"]:
        raise SystemExit("the fast implementations disagree with the loops they replace")


if __name__ == "__main__":
    main()
