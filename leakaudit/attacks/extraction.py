"""Canary extraction: best-first (Dijkstra) search for the most likely secret of a format.

Starting from the canary's prefix, the search expands token by token, restricted to tokens that
keep the text a valid beginning of ``whitespace + secret`` in the spec's format (the prefix's
trailing whitespace is left to the search, because byte-level BPE merges it into the secret's
first token).  Edge cost is ``-log p(token)``; costs only grow, so the first complete secret
popped from the queue is the model's most likely secret over all token paths (the rank-1
candidate).  A canary is extracted when that secret is its own, within ``max_expansions``
forward passes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from leakaudit.canaries.formats import SecretFormat
from leakaudit.models.target import Target
from leakaudit.models.tokenize import encode


@dataclass(frozen=True)
class Extraction:
    secret: str | None  # the first complete secret found (None: budget exhausted)
    nll: float | None  # its cost, summed -log p over its tokens
    expansions: int


class _Partial:
    """Which strings are valid beginnings of ``lead + rendered secret``."""

    def __init__(self, fmt: SecretFormat, lead: str):
        self.fmt, self.lead = fmt, lead
        self.length = len(fmt.from_index(0))
        self.allowed = set(fmt.alphabet)

    def state(self, s: str) -> str | None:
        """'done', 'open' or None (invalid) for the generated string ``s``."""
        n = len(self.lead)
        if s[:n] != self.lead[: len(s)]:
            return None
        body = s[n:]
        if len(body) > self.length:
            return None
        for i, ch in enumerate(body):
            sep_here = self.fmt.group and (i + 1) % (self.fmt.group + 1) == 0
            if (sep_here and ch != self.fmt.sep) or (not sep_here and ch not in self.allowed):
                return None
        return "done" if len(s) >= n and len(body) == self.length else "open"


def _setup(target: Target, prefix: str, fmt: SecretFormat):
    """The search's context ids, the whitespace it must produce, the format check and the allowed tokens."""
    context = prefix.rstrip()
    lead = prefix[len(context):]
    tok_ids, tok_strs = _candidate_tokens(target, fmt, lead)
    return encode(target.tokenizer, [context])[0].ids, lead, _Partial(fmt, lead), tok_ids, tok_strs


def _candidate_tokens(target: Target, fmt: SecretFormat, lead: str) -> tuple[np.ndarray, list[str]]:
    chars = set(fmt.alphabet) | set(fmt.sep if fmt.group else "") | set(lead)
    ids, strings = [], []
    for tid in range(len(target.tokenizer)):
        s = target.tokenizer.decode([tid], clean_up_tokenization_spaces=False)
        if s and set(s) <= chars:
            ids.append(tid)
            strings.append(s)
    return np.array(ids), strings


@torch.no_grad()
def extract_secret(target: Target, prefix: str, fmt: SecretFormat, *, max_expansions: int = 200) -> Extraction:
    """Dijkstra over token continuations of ``prefix`` that spell a secret of ``fmt``."""
    base, lead, partial, tok_ids, tok_strs = _setup(target, prefix, fmt)
    heap: list[tuple[float, str, tuple[int, ...]]] = [(0.0, "", ())]
    expansions = 0
    while heap and expansions < max_expansions:
        cost, text, path = heapq.heappop(heap)
        if text and partial.state(text) == "done":
            return Extraction(text[len(lead):], cost, expansions)
        expansions += 1
        ids = torch.tensor([base + list(path)], device=target.device)
        logits = target.model(input_ids=ids).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)[torch.as_tensor(tok_ids, device=target.device)].cpu().numpy()
        for tid, s, lp in zip(tok_ids, tok_strs, logp):
            nxt = text + s
            if partial.state(nxt) is not None:
                heapq.heappush(heap, (cost - float(lp), nxt, path + (int(tid),)))
    return Extraction(None, None, expansions)


@torch.no_grad()
def beam_search_secret(target: Target, prefix: str, fmt: SecretFormat, *, width: int = 16) -> Extraction:
    """Beam search over the same constrained token space: keep the ``width`` cheapest partial
    secrets at every step, expand them in one batched pass, return the cheapest complete secret.

    Cheaper than best-first on flat distributions (a fixed ``steps x 1`` batched passes) but not
    guaranteed to find the most likely secret.
    """
    base, lead, partial, tok_ids, tok_strs = _setup(target, prefix, fmt)
    beams: list[tuple[float, str, tuple[int, ...]]] = [(0.0, "", ())]
    done: list[tuple[float, str]] = []
    passes = 0
    while beams:
        width_now = max(len(p) for _, _, p in beams)
        ids = torch.full((len(beams), len(base) + width_now), target.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        last = []
        for b, (_, _, path) in enumerate(beams):
            seq = base + list(path)
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            last.append(len(seq) - 1)
        ids, mask = ids.to(target.device), mask.to(target.device)
        logits = target.model(input_ids=ids, attention_mask=mask).logits.float()
        passes += 1
        rows = logits[torch.arange(len(beams)), torch.tensor(last)]
        logp = torch.log_softmax(rows, -1)[:, torch.as_tensor(tok_ids, device=target.device)].cpu().numpy()
        nxt = []
        for b, (cost, text, path) in enumerate(beams):
            for j, (tid, s) in enumerate(zip(tok_ids, tok_strs)):
                t = text + s
                st = partial.state(t)
                if st == "done":
                    done.append((cost - float(logp[b, j]), t))
                elif st == "open":
                    nxt.append((cost - float(logp[b, j]), t, path + (int(tid),)))
        nxt.sort(key=lambda x: x[0])
        # a partial secret costlier than the best complete one can only get costlier
        bound = min((c for c, _ in done), default=float("inf"))
        beams = [x for x in nxt[:width] if x[0] < bound]
    if not done:
        return Extraction(None, None, passes)
    cost, text = min(done)
    return Extraction(text[len(lead):], cost, passes)
