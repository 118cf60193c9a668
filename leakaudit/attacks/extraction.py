"""Canary extraction: best-first (Dijkstra) search for the most likely secrets of a format.

Starting from the canary's prefix, the search expands token by token, restricted to tokens that
keep the text a valid beginning of ``whitespace + secret`` in the spec's format (the prefix's
trailing whitespace is left to the search, because byte-level BPE merges it into the secret's
first token).  Edge cost is ``-log p(token)``; costs only grow, so the first complete secret
popped from the queue is the model's most likely secret over all token paths (the rank-1
candidate), and the k-th distinct complete secret popped is the rank-k one.  A canary is
extracted when the first guess is its own secret, within ``max_expansions`` expansions; the
later guesses say how many guesses an attacker needs, and whether the model prefers another
canary's secret.
"""

from __future__ import annotations

import heapq
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from leakaudit.canaries.formats import SecretFormat
from leakaudit.models.target import Target
from leakaudit.models.tokenize import encode


@dataclass(frozen=True)
class Extraction:
    """What a search found.  ``secret``, ``nll`` and ``expansions`` describe the first guess.

    The guesses are secrets the model finds likely, possibly real ones: keep them in memory, never
    in a shared report.
    """

    secret: str | None  # the first complete secret found (None: budget exhausted)
    nll: float | None  # its cost, summed -log p over its tokens
    expansions: int  # nodes expanded when the first guess was found (all of them when none was)
    guesses: tuple[str, ...] = ()  # distinct complete secrets in cost order; guesses[0] == secret
    guess_nlls: tuple[float, ...] = ()  # their costs, ascending
    total_expansions: int = 0  # nodes expanded in all


def _check_guesses(guesses: int) -> None:
    if isinstance(guesses, bool) or not isinstance(guesses, int) or guesses < 1:
        raise ValueError(f"guesses must be a positive integer, got {guesses!r}")


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


# per tokenizer: (fmt, lead, vocabulary size) -> the candidate tokens (decoding the whole vocabulary takes
# about 25 ms for 8,192 tokens; an audit searches every canary twice, best-first and beam)
_CANDIDATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _candidate_tokens(target: Target, fmt: SecretFormat, lead: str) -> tuple[np.ndarray, list[str]]:
    """The tokens that can spell part of a secret (or the whitespace before it), each with the text it adds.

    Each token is decoded after a one-token context: decoded alone, a SentencePiece-style (Metaspace)
    token such as ``▁1`` loses its leading space (the decoder strips it at the start of a text), so no
    token could spell the space between the prefix and the secret and the search found nothing.
    Remembered per tokenizer, format and leading whitespace.
    """
    tok = target.tokenizer
    try:
        memo = _CANDIDATES.setdefault(tok, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: no memo
        memo = {}
    key = (fmt, lead, len(tok))
    if key not in memo:
        memo[key] = _decode_candidates(tok, fmt, lead)
    ids, strings = memo[key]
    return ids.copy(), list(strings)


def _decode_candidates(tok, fmt: SecretFormat, lead: str) -> tuple[np.ndarray, list[str]]:
    chars = set(fmt.alphabet) | set(fmt.sep if fmt.group else "") | set(lead)
    ctx = tok("a", add_special_tokens=False)["input_ids"][-1:]
    head = tok.decode(ctx, clean_up_tokenization_spaces=False)
    texts = tok.batch_decode([ctx + [tid] for tid in range(len(tok))], clean_up_tokenization_spaces=False)
    ids, strings = [], []
    for tid, full in enumerate(texts):
        s = full[len(head):] if full.startswith(head) else ""
        if s and set(s) <= chars:
            ids.append(tid)
            strings.append(s)
    return np.array(ids), strings


def _result(found: list[tuple[float, str]], lead: str, first_expansions: int | None, total: int) -> Extraction:
    if not found:
        return Extraction(None, None, total, total_expansions=total)
    secrets = tuple(text[len(lead):] for _, text in found)
    costs = tuple(float(c) for c, _ in found)
    return Extraction(secrets[0], costs[0], first_expansions if first_expansions is not None else total,
                      secrets, costs, total)


@torch.no_grad()
def extract_secret(
    target: Target, prefix: str, fmt: SecretFormat, *, max_expansions: int = 200, guesses: int = 1,
    lookahead: int = 16,
) -> Extraction:
    """Dijkstra over token continuations of ``prefix`` that spell a secret of ``fmt``.

    Edge costs (``-log p``) are never negative, so complete secrets are popped in order of cost:
    the k-th distinct complete secret popped is the model's rank-k secret over token paths (a
    secret's cost is that of its cheapest token path).  The search keeps popping after the first
    complete secret until it holds ``guesses`` distinct secrets or has spent ``max_expansions``
    expansions (complete secrets already at the top of the queue then still count: popping them
    needs no pass); a secret reached again by another (non-canonical) token path is counted once,
    the first time it is popped.  ``guesses=1`` stops at the first complete secret, as an attacker
    with one guess would.

    Expansions are counted as the search above makes them, one node at a time; the forward passes
    are batched underneath: when a node's next-token probabilities are not known yet, they are
    computed in one pass together with those of the ``lookahead - 1`` cheapest other open nodes
    in the queue, which the search is likely to expand next (within the budget left, and never more
    than ``lookahead - 1`` computed ahead and not yet expanded: those are the search's only extra
    cost).  Which nodes are
    expanded, and so what is found, does not depend on ``lookahead`` (up to the rounding of a
    batched pass); only the number of passes does (``lookahead=1``: one a node).
    """
    _check_guesses(guesses)
    if lookahead < 1:
        raise ValueError(f"lookahead must be at least 1, got {lookahead!r}")
    base, lead, partial, tok_ids, tok_strs = _setup(target, prefix, fmt)
    heap: list[tuple[float, str, tuple[int, ...]]] = [(0.0, "", ())]
    found: list[tuple[float, str]] = []
    seen: set[str] = set()
    known: dict[tuple[int, ...], np.ndarray] = {}  # log-probs of the allowed tokens after a path, computed ahead
    allowed = torch.as_tensor(tok_ids, device=target.device)
    expansions, first = 0, None
    while heap:
        if expansions >= max_expansions and not (heap[0][1] and partial.state(heap[0][1]) == "done"):
            break  # budget spent; complete secrets already at the top of the queue still pop (no pass needed)
        cost, text, path = heapq.heappop(heap)
        if text and partial.state(text) == "done":
            if text not in seen:
                seen.add(text)
                found.append((cost, text))
                first = expansions if first is None else first
                if len(found) >= guesses:
                    break
            continue  # a complete secret has no continuation
        expansions += 1
        if path not in known:
            # those computed ahead and not yet expanded (a peaky, memorized canary leaves its siblings so)
            # count against both the lookahead and the budget: at most lookahead - 1 of them at any time
            room = max(0, min(lookahead - 1, max_expansions - expansions) - len(known))
            ahead = [p for _, t, p in heapq.nsmallest(room + len(known), heap)
                     if not (t and partial.state(t) == "done") and p not in known][:room]
            known.update(zip([path, *ahead], _next_logprobs(target, base, [path, *ahead], allowed)))
        logp = known.pop(path)
        for tid, s, lp in zip(tok_ids, tok_strs, logp):
            nxt = text + s
            if partial.state(nxt) is not None:
                heapq.heappush(heap, (cost - float(lp), nxt, path + (int(tid),)))
    return _result(found, lead, first, expansions)


@torch.no_grad()
def _next_logprobs(target: Target, base: list[int], paths: list[tuple[int, ...]],
                   allowed: torch.Tensor) -> np.ndarray:
    """Log-probabilities of the ``allowed`` tokens after ``base + path``, a row per path, in one pass
    (right-padded: each row's real positions are those of the path alone)."""
    rows = [base + list(p) for p in paths]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), target.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    ids, mask = ids.to(target.device), mask.to(target.device)
    kwargs = {"attention_mask": mask} if len(rows) > 1 else {}  # one row has no padding: no mask needed
    logits = target.model(input_ids=ids, **kwargs).logits
    last = torch.tensor([len(r) - 1 for r in rows], device=target.device)
    out = torch.log_softmax(logits[torch.arange(len(rows), device=target.device), last].float(), -1)
    return out[:, allowed].cpu().numpy()  # [paths, allowed]


@torch.no_grad()
def beam_search_secret(
    target: Target, prefix: str, fmt: SecretFormat, *, width: int = 16, guesses: int = 1
) -> Extraction:
    """Beam search over the same constrained token space: keep the ``width`` cheapest partial
    secrets at every step, expand them in one batched pass, return the cheapest complete secrets
    (up to ``guesses`` distinct ones, in order of cost; a secret reached by several token paths
    counts once, at its cheapest).

    Cheaper than best-first on flat distributions (a fixed ``steps x 1`` batched passes) but not
    guaranteed to find the most likely secrets.
    """
    _check_guesses(guesses)
    base, lead, partial, tok_ids, tok_strs = _setup(target, prefix, fmt)
    beams: list[tuple[float, str, tuple[int, ...]]] = [(0.0, "", ())]
    done: dict[str, float] = {}  # complete secret -> its cheapest cost
    passes = 0
    allowed = torch.as_tensor(tok_ids, device=target.device)
    while beams:
        logp = _next_logprobs(target, base, [path for _, _, path in beams], allowed)
        passes += 1
        nxt = []
        for b, (cost, text, path) in enumerate(beams):
            for j, (tid, s) in enumerate(zip(tok_ids, tok_strs)):
                t = text + s
                st = partial.state(t)
                if st == "done":
                    c = cost - float(logp[b, j])
                    done[t] = min(c, done.get(t, c))
                elif st == "open":
                    nxt.append((cost - float(logp[b, j]), t, path + (int(tid),)))
        nxt.sort(key=lambda x: x[0])
        # a partial secret costlier than the guesses-th cheapest complete one can only get costlier
        costs = sorted(done.values())
        bound = costs[guesses - 1] if len(costs) >= guesses else float("inf")
        beams = [x for x in nxt[:width] if x[0] < bound]
    ranked = sorted((c, t) for t, c in done.items())[:guesses]
    return _result(ranked, lead, passes, passes)
