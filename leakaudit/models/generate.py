"""One decoding engine for every attack that generates text.

Canary search, discoverable memorization, untargeted and PII extraction all decode through
:func:`generate`: prompts of mixed lengths are left-padded into batches (with an attention
mask and ``position_ids`` counted from each prompt's first real token), the model's key/value
cache is reused step by step, and the next token is chosen greedily or sampled with top-k,
top-p and a temperature that may decay over the first steps (Carlini et al. 2021 sample at a
high temperature first, then at 1).  A fixed seed gives the same samples twice: each batch
draws from its own generator seeded by ``(seed, batch index)``, so results do not depend on
what else ran before.

This is the portable path (CPU, any architecture with a cache).  Batches are formed from
prompts of similar length so little compute goes to padding; results come back in prompt
order.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    Args:
        max_new_tokens: tokens to generate after each prompt.
        greedy: take the most likely token (top_k, top_p and temperature are then ignored).
        top_k: sample among the k most likely tokens (None: no limit).
        top_p: sample from the smallest set of tokens whose probability reaches p (None: off).
        temperature: the temperature from step ``decay_steps`` on.
        start_temperature: the temperature of the first step; it falls linearly to
            ``temperature`` over ``decay_steps`` steps (Carlini et al.: 10 -> 1 over 20 tokens).
        decay_steps: length of that schedule (0: constant temperature).
        stop_token: a sequence ends after emitting it (its remaining positions are ``pad``).
    """

    max_new_tokens: int
    greedy: bool = False
    top_k: int | None = 40
    top_p: float | None = None
    temperature: float = 1.0
    start_temperature: float | None = None
    decay_steps: int = 0
    stop_token: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.temperature <= 0 or (self.start_temperature is not None and self.start_temperature <= 0):
            raise ValueError("temperatures must be > 0")

    def temperature_at(self, step: int) -> float:
        if self.start_temperature is None or self.decay_steps <= 0 or step >= self.decay_steps:
            return self.temperature
        frac = step / self.decay_steps
        return self.start_temperature + frac * (self.temperature - self.start_temperature)


def cache_argument(model: PreTrainedModel) -> str:
    """The forward argument that takes a key/value cache (transformers 5 renamed it to ``cache``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output):
    """The key/value cache a forward pass returned, whatever the library version calls it."""
    return output.get("cache", output.get("past_key_values"))


def _choose(logits: torch.Tensor, s: Sampling, step: int, gen: torch.Generator) -> torch.Tensor:
    """Next token per row from float32 logits [B, V]."""
    if s.greedy:
        return logits.argmax(-1)
    logits = logits / s.temperature_at(step)
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= s.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.no_grad()
def _generate_batch(
    model: PreTrainedModel, prompts: list[list[int]], s: Sampling, pad_id: int, gen: torch.Generator, cache_arg: str
) -> np.ndarray:
    device = next(model.parameters()).device
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = returned_cache(out)
    logits = out.logits[:, -1].float()
    next_pos = pos[:, -1:] + 1
    new = torch.full((B, s.max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(s.max_new_tokens):
        tok = _choose(logits, s, step, gen)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new[:, step] = tok
        if s.stop_token is not None:
            done |= tok == s.stop_token
        if step + 1 == s.max_new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **{cache_arg: cache}
        )
        cache = returned_cache(out)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return new.cpu().numpy()


def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    sampling: Sampling,
    *,
    pad_id: int,
    batch_size: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Decode ``sampling.max_new_tokens`` tokens after each prompt (token ids, BOS included).

    Returns an int array [len(prompts), max_new_tokens] of the new tokens, in prompt order;
    positions after a stop token hold ``pad_id``.  Every prompt needs at least one token.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (a BOS for an empty prompt)")
    model = model.eval()
    cache_arg = cache_argument(model)
    out = np.full((len(prompts), sampling.max_new_tokens), pad_id, dtype=np.int64)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    for n, start in enumerate(range(0, len(order), batch_size)):
        batch = order[start : start + batch_size]
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
        out[batch] = _generate_batch(model, [prompts[i] for i in batch], sampling, pad_id, gen, cache_arg)
    return out


def trim(tokens: np.ndarray, stop_token: int | None, pad_id: int) -> list[list[int]]:
    """Generated rows as lists, cut after the stop token (kept) and without trailing padding."""
    rows = []
    for row in tokens.tolist():
        if stop_token is not None and stop_token in row:
            row = row[: row.index(stop_token) + 1]
        else:
            while row and row[-1] == pad_id:
                row.pop()
        rows.append(row)
    return rows
