"""Discoverable memorization: does the model complete a training record from its beginning?

Carlini et al. 2023 ("Quantifying Memorization Across Neural Language Models"): take a training
sequence, use its first ``k`` tokens as the prompt (from the training token stream, i.e. the
ids the training loss saw, not re-tokenized text), greedy-decode ``n`` tokens and compare them
with the true next ``n`` tokens.  All ``n`` equal is an exact match; the fraction of equal
positions is the token match; approximate memorization (Ippolito et al. 2023) counts a
continuation whose BLEU-4 against the truth exceeds 0.75, and the normalised edit similarity is
reported beside it.  The same numbers on non-members are the baseline: what the model completes
from the template and general knowledge alone.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from leakaudit.attacks.metrics import clopper_pearson
from leakaudit.models.generate import Sampling, generate
from leakaudit.models.target import Target
from leakaudit.models.tokenize import encode
from leakaudit.report.schema import MemorizationResult, MemorizationStats

APPROX_BLEU = 0.75


def bleu4(candidate: list[int], reference: list[int]) -> float:
    """Sentence BLEU-4 of token lists: geometric mean of clipped n-gram precisions, +1 smoothing
    for n > 1 (so one missing 4-gram does not zero the score), times the brevity penalty."""
    if not candidate or not reference:
        return 0.0
    logs = []
    for n in range(1, 5):
        cand = Counter(tuple(candidate[i : i + n]) for i in range(len(candidate) - n + 1))
        ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        total = sum(cand.values())
        hit = sum(min(c, ref[g]) for g, c in cand.items())
        if n == 1:
            if hit == 0:
                return 0.0
            logs.append(math.log(hit / total))
        else:
            logs.append(math.log((hit + 1) / (total + 1)))
    bp = 1.0 if len(candidate) >= len(reference) else math.exp(1 - len(reference) / len(candidate))
    return bp * math.exp(sum(logs) / 4)


def edit_similarity(a: list[int], b: list[int]) -> float:
    """1 - Levenshtein(a, b) / max(len): 1 for equal sequences, 0 for nothing in common."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


@dataclass(frozen=True)
class _Case:
    id: str
    member: bool
    prompt: list[int]
    truth: list[int]


def _cases(target: Target, ids: list[str], texts: list[str], members: list[bool], k: int, n: int) -> list[_Case]:
    out = []
    for rid, e, m in zip(ids, encode(target.tokenizer, texts), members):
        body = len(e.ids) - e.n_special
        if body < k + n:
            continue  # too short to hold a k-token prompt and an n-token continuation
        cut = e.n_special + k
        out.append(_Case(rid, m, e.ids[:cut], e.ids[cut : cut + n]))
    return out


def _stats(df: pd.DataFrame) -> MemorizationStats:
    n = len(df)
    if n == 0:
        return MemorizationStats(n_records=0)
    exact = int(df["exact"].sum())
    lo, hi = clopper_pearson(exact, n)
    return MemorizationStats(
        n_records=n,
        exact_matches=exact,
        exact_match_rate=exact / n,
        exact_match_ci=(lo, hi),
        token_match_mean=float(df["token_match"].mean()),
        approx_match_rate=float((df["bleu"] > APPROX_BLEU).mean()),
        bleu_mean=float(df["bleu"].mean()),
        edit_similarity_mean=float(df["edit_similarity"].mean()),
    )


def discoverable_memorization(
    target: Target,
    ids: list[str],
    texts: list[str],
    members: list[bool],
    *,
    k: int = 32,
    n: int = 32,
    batch_size: int = 64,
    max_records: int | None = None,
    seed: int = 0,
) -> tuple[MemorizationResult, pd.DataFrame]:
    """Greedy-complete each long-enough record from its first ``k`` tokens and compare ``n`` tokens.

    ``texts`` are the records as the model was trained on them; ``members`` says which were in
    the training set.  Records shorter than ``k + n`` tokens are skipped (counted in the result).
    ``max_records`` caps each side by a seeded sample.  Returns the summary (no text) and one row
    per record: id, member, exact, token_match, bleu, edit_similarity.
    """
    cases = _cases(target, ids, texts, members, k, n)
    skipped = len(texts) - len(cases)
    if max_records is not None:
        rng = np.random.default_rng(seed)
        keep = []
        for side in (True, False):
            idx = [i for i, c in enumerate(cases) if c.member == side]
            if len(idx) > max_records:
                idx = sorted(rng.choice(idx, size=max_records, replace=False).tolist())
            keep.extend(idx)
        cases = [cases[i] for i in sorted(keep)]
    rows = []
    if cases:
        new = generate(target.model, [c.prompt for c in cases], Sampling(max_new_tokens=n, greedy=True),
                       pad_id=target.pad_id, batch_size=batch_size, what=f"memorization {k}:{n} (k:n)")
        for c, g in zip(cases, new.tolist()):
            same = np.equal(g, c.truth)
            rows.append({
                "id": c.id, "member": c.member, "exact": bool(same.all()), "token_match": float(same.mean()),
                "bleu": bleu4(g, c.truth), "edit_similarity": edit_similarity(g, c.truth),
            })
    df = pd.DataFrame(rows, columns=["id", "member", "exact", "token_match", "bleu", "edit_similarity"])
    result = MemorizationResult(
        k=k, n=n,
        skipped_short=skipped,
        members=_stats(df[df["member"].astype(bool)]),
        non_members=_stats(df[~df["member"].astype(bool)]),
    )
    return result, df
