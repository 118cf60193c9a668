"""One decoding engine for every attack that generates text.

Canary search, discoverable memorization, untargeted and PII extraction all decode through
:func:`generate`: prompts of mixed lengths are left-padded into batches (with an attention
mask and ``position_ids`` counted from each prompt's first real token), the model's key/value
cache is reused step by step, and the next token is chosen greedily or sampled with top-k,
top-p and a temperature that may decay over the first steps (Carlini et al. 2021 sample at a
high temperature first, then at 1).  A fixed seed gives the same samples twice: each batch
draws from its own generator seeded by ``(seed, batch index)``, so results do not depend on
what else ran before.

Two paths, one interface:

* ``static`` (the default on a GPU): a preallocated key/value cache (the library's
  ``StaticCache``) and a 4-D attention mask kept in fixed buffers, so one decoding step has the
  same shapes every time; on CUDA that step is captured once as a CUDA graph and replayed, which
  removes the per-step launch and framework overhead that dominates small-model decoding.
  Sampling runs on the device (Gumbel-max over the top-k logits), never copying the logits to
  the host.
* ``portable`` (the default on a CPU, and the fallback): the library's growing cache, one
  ordinary forward per step.  When the static path cannot run for a model (an architecture
  whose cache or attention it cannot drive) the engine warns once, naming the reason, and
  falls back to this path.

Batches are formed from prompts of similar length so little compute goes to padding; results
come back in prompt order.  Under ``torch.distributed`` (torchrun, accelerate) the prompts are
split across processes and gathered back in order on every rank.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel

from leakaudit.errors import LeakauditError
from leakaudit.models.attention import single_token_attention
from leakaudit.models.compiling import Compiled, first_line


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


def context_of(config) -> int | None:
    """The positions a model configuration (a config object or config.json's dict) was built for: its learned
    position table, or the length a rotary model was trained to; None when it does not say."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    value = get("max_position_embeddings") or get("n_positions")
    return value if isinstance(value, int) and value > 0 else None


def model_context(model: PreTrainedModel) -> int:
    """:func:`context_of` the model's configuration; 1,024 when it does not say."""
    return context_of(model.config) or 1024


def check_fits_context(model: PreTrainedModel, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """Refuse decoding past the model's context: a learned position table fails with an index error (a device
    assert on a GPU), a rotary model decodes on, past what it was trained for, and its tokens mean nothing."""
    context = model_context(model)
    if prompt_tokens + new_tokens - 1 > context:
        raise LeakauditError(
            f"{what}: prompts of {prompt_tokens} tokens and {new_tokens} new tokens need "
            f"{prompt_tokens + new_tokens - 1} positions; the model's context is {context}"
        )


def cache_argument(model: PreTrainedModel) -> str:
    """The forward argument that takes a key/value cache (transformers 5 renamed it to ``cache``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output):
    """The key/value cache a forward pass returned, whatever the library version calls it."""
    return output.get("cache", output.get("past_key_values"))


def _filtered(logits: torch.Tensor, s: Sampling, step: int) -> torch.Tensor:
    """logit / T with the tokens outside top-k and top-p set to -inf, cut by value.

    Every token tied with the k-th (or with the last one top-p keeps) stays, so the result does
    not depend on the order in which a sort or top-k returns tied logits.
    """
    logits = logits / s.temperature_at(step)
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1:
        vals = torch.sort(logits, dim=-1, descending=True).values
        probs = torch.softmax(vals, dim=-1)
        n_keep = ((probs.cumsum(-1) - probs) < s.top_p).sum(-1, keepdim=True)  # >= 1: the top token stays
        logits = logits.masked_fill(logits < vals.gather(-1, n_keep - 1), float("-inf"))
    return logits


def _choose(logits: torch.Tensor, s: Sampling, step: int, gen: torch.Generator,
            overflow: torch.Tensor | None = None, margin: int | None = None) -> torch.Tensor:
    """Next token per row from logits [B, V] (any float dtype; float32 where it matters).

    On a CPU: ``torch.multinomial`` with the host generator.  On a GPU the draw stays on the
    device, by the Gumbel-max trick (:func:`_choose_on_device`; ``overflow`` and ``margin`` go to it).
    """
    if s.greedy:
        return logits.argmax(-1)
    if _device_sampling(logits):
        return _choose_on_device(logits, s, step, gen, overflow=overflow, margin=margin)
    probs = torch.softmax(_filtered(logits.float(), s, step), dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


_TIE_MARGIN = 24  # candidates beyond the k-th that the top-k sampler looks at (0: always the whole vocabulary)
# > 0: the top-k sampler first finds each chunk of this many tokens' largest logit, then a top-k over the best
# chunks; 0: one plain top-k.  Plain by default: on an H100 (GPT-2-small, batch 512, 50,257 logits) the chunked
# pass took 0.84 ms a step against 0.57 ms (docs/benchmarks.md, 2026-11-26)
_CHUNK = 0
_DEFER_TIES = True  # the top-k sampler's tie check stays on the device until the batch ends (False: every step)
_DEVICE_SAMPLER_ON_CPU = False  # tests: decode on a CPU with the GPU's sampler


def _device_sampling(logits: torch.Tensor) -> bool:
    """Whether tokens are drawn where the logits are (:func:`_choose_on_device`): on a GPU (tests: anywhere)."""
    return logits.is_cuda or _DEVICE_SAMPLER_ON_CPU


def _top_candidates(logits: torch.Tensor, n: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` largest logits of each row and their token ids, largest first (as ``torch.topk``).

    Two small top-ks instead of one over the whole vocabulary: the largest logit of each chunk
    of ``chunk`` tokens (one read of the row), then a top-k over the tokens of the ``n`` chunks
    whose maxima are largest.  Exact: if ``t`` is the n-th largest chunk maximum, at least ``n``
    logits are ``>= t``, so every one of the ``n`` largest is ``>= t``; a logit above ``t`` lies in
    a chunk whose maximum is above ``t``, and all those chunks are searched.  A logit equal to
    ``t`` outside them can only be tied with the n-th value, which the caller's tie check covers
    (it needs only the values, which are the same).  Small vocabularies take one plain top-k.
    A row with fewer than ``n`` finite logits may get ids ``>= V`` for some of its ``-inf`` values
    (the short last chunk's padding); they are never drawn.
    """
    chunk = _CHUNK if chunk is None else chunk
    B, V = logits.shape
    whole = V // chunk if chunk > 0 else 0
    if whole < 4 * n:
        return torch.topk(logits, n, dim=-1)
    maxima = logits[:, : whole * chunk].reshape(B, whole, chunk).amax(-1)
    if V > whole * chunk:  # the last, shorter chunk
        maxima = torch.cat([maxima, logits[:, whole * chunk :].amax(-1, keepdim=True)], dim=1)
    chunks = torch.topk(maxima, n, dim=-1).indices  # [B, n]
    idx = (chunks[:, :, None] * chunk + torch.arange(chunk, device=logits.device)).reshape(B, n * chunk)
    inside = idx < V
    vals = logits.gather(-1, idx.clamp_max(V - 1)).masked_fill(~inside, float("-inf"))
    top, at = torch.topk(vals, n, dim=-1)
    return top, idx.gather(-1, at)


def _choose_on_device(logits: torch.Tensor, s: Sampling, step: int, gen: torch.Generator,
                      overflow: torch.Tensor | None = None, margin: int | None = None) -> torch.Tensor:
    """Sample where the logits are, with the Gumbel-max trick: argmax(logit / T + G), G ~ Gumbel(0, 1).

    That argmax is an exact draw from softmax(logit / T) over the tokens :func:`_filtered` keeps.
    With top-k, only the ``k + margin`` largest logits (``margin``: ``_TIE_MARGIN`` unless given)
    are taken from the vocabulary (:func:`_top_candidates`, in the logits' own dtype): every token
    tied with the k-th is among them unless the last of them ties it too (rarely: a model with many
    equal logits).  Without ``overflow`` the step checks that on the host (one small read, which
    makes the host wait for the device) and then takes the whole vocabulary; with ``overflow``, a
    device bool tensor [B], each row's check is only written there, never waited for, and the
    caller must redo the step over the whole vocabulary where an active row is set (:func:`_decode`).
    The kept tokens get their noise in order of token id, never of rank, so a seed gives the same
    tokens even where a GPU's top-k orders tied logits differently from one run to the next.
    ``gen`` must live on the logits' device.
    """
    k, V = s.top_k, logits.shape[-1]
    margin = _TIE_MARGIN if margin is None else margin
    if k is not None and margin > 0 and k + margin < V:
        vals, idx = _top_candidates(logits, k + margin)
        vals = vals.float()
        scaled = vals / s.temperature_at(step)  # the values the cut compares
        # the last candidate ties the k-th, which is finite (with fewer finite logits, all are candidates)
        ties = (scaled[:, -1] == scaled[:, k - 1]) & torch.isfinite(scaled[:, k - 1])
        if overflow is not None:
            overflow.copy_(ties)
        if overflow is not None or not bool(ties.any()):
            kept = _filtered(vals, s, step)  # the same cut by value as over the whole vocabulary
            by_id = torch.where(torch.isfinite(kept), idx, idx + V).argsort(-1)  # kept ones first, by id
            kept, idx = kept.gather(-1, by_id), idx.gather(-1, by_id)
            return idx.gather(-1, _gumbel_argmax(kept, gen)[:, None]).squeeze(-1)
    return _gumbel_argmax(_filtered(logits.float(), s, step), gen)


def _gumbel_argmax(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=torch.float32)
    return (logits - torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))).argmax(-1)


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    return ids, mask


def _stop_check(s: Sampling, step: int, done: torch.Tensor) -> bool:
    """Whether every row has stopped (checked every 8 steps: each check waits for the device)."""
    return s.stop_token is not None and step % 8 == 7 and bool(done.all())


def _decode(start, s: Sampling, pad_id: int, gen: torch.Generator) -> torch.Tensor:
    """The decoding loop both paths share: choose, record, stop.

    ``start()`` runs the prompts and returns their last logits and ``next_logits(tok, step)``,
    which runs the model on the chosen tokens.  On a GPU the top-k sampler never waits for the
    device to check for ties (:func:`_choose_on_device`): the loop only notes, on the device, the
    first step at which an unfinished row's candidates overflowed with ties.  If there was one, the
    tokens before it are kept (whether a step overflows depends only on the tokens before it, and
    those were exact draws), the model is run again over them, the generator is put back to its
    state at that step, and decoding goes on from there over the whole vocabulary.  So every
    token is an exact draw and a seed gives the same tokens.
    """
    logits, next_logits = start()
    deferred = _device_sampling(logits) and not s.greedy and s.top_k is not None and _DEFER_TIES
    if not deferred:
        return _decode_loop(logits, next_logits, s, pad_id, gen)
    states: list[torch.Tensor] = []
    first = torch.full((), s.max_new_tokens, dtype=torch.long, device=logits.device)
    new = _decode_loop(logits, next_logits, s, pad_id, gen, first_overflow=first, states=states)
    t = int(first)  # the one read of the flag, after the last step
    if t >= s.max_new_tokens:
        return new
    new[:, t:] = pad_id  # the first pass's later tokens are discarded (a redo that stops early leaves padding)
    logits, next_logits = start()
    for step in range(t):  # the kept tokens, fed as the first pass fed them (finished rows: padding)
        logits = next_logits(new[:, step], step)
    gen.set_state(states[t])
    return _decode_loop(logits, next_logits, s, pad_id, gen, margin=0, new=new, first_step=t)


def _decode_loop(logits: torch.Tensor, next_logits, s: Sampling, pad_id: int, gen: torch.Generator, *,
                 first_overflow: torch.Tensor | None = None, states: list | None = None, margin: int | None = None,
                 new: torch.Tensor | None = None, first_step: int = 0) -> torch.Tensor:
    """Steps ``first_step`` .. of one batch (``new`` holds the tokens before them, when given).

    With ``first_overflow`` (a device scalar) the sampler's tie checks stay on the device and the
    first overflowing step is written there; ``states`` then receives the generator state before
    each step.
    """
    B = logits.shape[0]
    if new is None:
        new = torch.full((B, s.max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    if s.stop_token is not None and first_step:
        done |= (new[:, :first_step] == s.stop_token).any(-1)
    flags = torch.zeros(B, dtype=torch.bool, device=logits.device) if first_overflow is not None else None
    for step in range(first_step, s.max_new_tokens):
        if states is not None:
            states.append(gen.get_state())
        tok = _choose(logits, s, step, gen, overflow=flags, margin=margin)
        if flags is not None:  # only unfinished rows count; only the first such step is kept
            hit = (flags & ~done).any() & (first_overflow == s.max_new_tokens)
            first_overflow.copy_(torch.where(hit, step, first_overflow))
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new[:, step] = tok
        if s.stop_token is not None:
            done |= tok == s.stop_token
        if step + 1 == s.max_new_tokens or _stop_check(s, step, done):
            break
        logits = next_logits(tok, step)
    return new


@torch.no_grad()
def _generate_batch(
    model: PreTrainedModel, prompts: list[list[int]], s: Sampling, pad_id: int, gen: torch.Generator, cache_arg: str
) -> np.ndarray:
    """The portable path: the library's growing cache and one ordinary forward per step."""
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    state: dict = {}

    def start():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        state.update(mask=mask, cache=returned_cache(out), pos=pos[:, -1:] + 1)
        return out.logits[:, -1], next_logits

    def next_logits(tok: torch.Tensor, step: int) -> torch.Tensor:
        m = state["mask"]
        state["mask"] = torch.cat([m, torch.ones((m.shape[0], 1), dtype=m.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=state["mask"], position_ids=state["pos"], use_cache=True,
                    **{cache_arg: state["cache"]})
        state["cache"] = returned_cache(out)
        state["pos"] = state["pos"] + 1
        return out.logits[:, -1]

    return _decode(start, s, pad_id, gen).cpu().numpy()


class StaticPathUnavailable(RuntimeError):
    """The static-cache path cannot drive this model; the message says why."""


def _sliced(update, visible: list[int]):
    """A cache layer's ``update`` returning only its first ``visible[0]`` slots.

    ``visible`` is a one-element list the decoder sets before each forward; the wrapper holds
    that list, not the decoder, so a released decoder and its cache are freed at once.
    """
    def sliced_update(key_states, value_states, *args, **kwargs):
        keys, values = update(key_states, value_states, *args, **kwargs)
        n = visible[0]
        return (keys, values) if n >= keys.shape[-2] else (keys[:, :, :n], values[:, :, :n])
    return sliced_update


_KV_BUCKET = 32  # decoding steps attend to the cache in slices of this many slots (0: the whole cache)
# each batch's prompts end at their own widest prompt, rounded up to this many slots (0: every batch's at the
# widest prompt of the call, rounded as the cache is), so a batch of short prompts does not attend to the
# padding that the call's longest prompt needs
_PROMPT_ALIGN = 8
_DECODE_ATTENTION = True  # one-token steps use models.attention's two products (False: the library's SDPA)
_COMPILE_STEP = False  # experimental: the decoding step through torch.compile before it is captured


class _StaticDecoder:
    """Fixed-shape decoding for batches of ``batch`` prompts of up to ``max_prompt`` tokens.

    The key/value cache (``StaticCache``), the input ids, positions and the additive 4-D
    attention mask live in buffers allocated once, so every decoding step has the same shapes
    and addresses.  A step attends only to the cache slots filled so far, rounded up to a
    multiple of ``_KV_BUCKET`` (the cache layers return that slice of their keys and values),
    so early steps do not read the whole cache, and each batch's prompts end at that batch's own
    widest prompt (rounded up to ``_PROMPT_ALIGN``), so a batch of short prompts does not attend to
    the padding that the call's longest prompt would need.  On CUDA each slice length's step is captured
    as a graph once and replayed for every later step and batch: it is first run eagerly twice
    on a side stream (lazy initialisation, library kernels) and those runs are rewound, so every
    real step, in the first call as in later ones, is a replay of the same graph.  The mask is
    built here (the library takes a ready 4-D mask as it is), so no mask code runs inside a
    captured step.
    """

    def __init__(self, model: PreTrainedModel, batch: int, max_prompt: int, max_new: int, cache_arg: str,
                 use_graph: bool):
        from transformers import StaticCache

        self.model, self.cache_arg = model, cache_arg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.B, self.W = batch, max_prompt  # W: the widest prompts a batch may have
        self.L = -(-(max_prompt + max_new) // 64) * 64  # a multiple of 64: aligned attention-mask rows
        self.start = max_prompt  # the current batch's prompt width: its first new token goes to this slot
        self.steps = self.slots_read = 0  # decoding steps run and the cache slots they attended to, in all
        try:
            self.cache = StaticCache(config=model.config, max_cache_len=self.L)
        except Exception as e:  # noqa: BLE001 - any failure means: this model cannot use the path
            raise StaticPathUnavailable(f"StaticCache cannot be built for {type(model).__name__}: {e}") from e
        layers = list(getattr(self.cache, "layers", []))
        if any(getattr(layer, "is_sliding", False) for layer in layers):
            raise StaticPathUnavailable(f"{type(model).__name__} uses sliding-window attention layers")
        self._visible = [self.L]  # cache slots the next forward attends to (a box: the layers read it)
        # slices and rewound warm-ups need the write position as a device counter (transformers 5's layers)
        counted = bool(layers) and all(hasattr(x, "cumulative_length") for x in layers)
        self.bucket = _KV_BUCKET if counted else 0
        if self.bucket:
            for layer in layers:
                layer.update = _sliced(layer.update, self._visible)
        self.neg = torch.finfo(self.dtype).min
        self.ids = torch.full((batch, 1), 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        self.mask = torch.full((batch, 1, 1, self.L), self.neg, dtype=self.dtype, device=self.device)
        self.use_graph = use_graph and self.device.type == "cuda" and counted
        # graphs replay one at a time and each one's logits are used before the next replay, so they can
        # share one pool for their intermediate buffers; each graph still keeps its own logits output (batch x
        # vocabulary: at batch 512 and GPT-2's vocabulary in bf16, 51 MB for each of up to L / _KV_BUCKET graphs)
        self.pool = torch.cuda.graph_pool_handle() if self.use_graph else None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.decode_attention = _DECODE_ATTENTION  # fixed per decoder: its captured graphs hold the kernels
        # compiled (experimental): the step's small kernels fused; compiling happens in the warm-up runs
        self._compiled_step = (Compiled(model, f"the decoding step of {type(model).__name__}", dynamic=True)
                               if _COMPILE_STEP else None)

    @property
    def step_model(self):
        """What runs a step: the compiled model, unless it was not asked for or compiling failed."""
        c = self._compiled_step
        return c if c is not None and c.failed is None else self.model

    @property
    def visible(self) -> int:
        return self._visible[0]

    @visible.setter
    def visible(self, n: int) -> None:
        self._visible[0] = n

    def _step_forward(self) -> torch.Tensor:
        inputs = dict(input_ids=self.ids, attention_mask=self.mask[..., : self.visible], position_ids=self.pos,
                      use_cache=True, **{self.cache_arg: self.cache})
        with single_token_attention(self.model) if self.decode_attention else contextlib.nullcontext():
            if self.step_model is not self.model:
                saved = self._positions()
                out = self._compiled_step(**inputs)
                if out is not None:
                    return out.logits[:, -1]
                self._rewind(saved)  # a failed call may have advanced the cache's write position
            return self.model(**inputs).logits[:, -1]

    def _reset(self) -> None:
        for layer in getattr(self.cache, "layers", []):
            if getattr(layer, "is_initialized", False):
                layer.keys.zero_()
                layer.values.zero_()
                layer.cumulative_length.zero_()

    def _positions(self) -> list[torch.Tensor]:
        return [layer.cumulative_length.clone() for layer in self.cache.layers]

    def _rewind(self, saved: list[torch.Tensor]) -> None:
        """Put the write positions back to ``saved`` (a warm-up step's slot is written again for real)."""
        for layer, pos in zip(self.cache.layers, saved):
            layer.cumulative_length.copy_(pos)

    def _prompt_width(self, widest: int) -> int:
        """The column at which a batch whose longest prompt has ``widest`` tokens starts decoding."""
        if _PROMPT_ALIGN <= 0:
            return self.W
        return min(self.W, -(-widest // _PROMPT_ALIGN) * _PROMPT_ALIGN)

    def prefill(self, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
        """Run the left-padded prompts (right-aligned at :meth:`_prompt_width`) and return the last logits."""
        ids, keep = _left_pad(prompts, pad_id)
        W, L = self._prompt_width(ids.shape[1]), self.L
        if ids.shape[1] < W:  # right-align the batch at column W so its rows' decoding slots line up
            extra = W - ids.shape[1]
            ids = torch.cat([torch.full((self.B, extra), pad_id, dtype=torch.long), ids], 1)
            keep = torch.cat([torch.zeros((self.B, extra), dtype=torch.long), keep], 1)
        ids, keep = ids.to(self.device), keep.to(self.device).bool()
        self._reset()
        self.start = W
        causal = torch.ones((W, L), dtype=torch.bool, device=self.device).tril()
        allowed = causal[None] & torch.cat([keep, torch.zeros((self.B, L - W), dtype=torch.bool,
                                                              device=self.device)], 1)[:, None, :]
        allowed |= torch.eye(W, L, dtype=torch.bool, device=self.device)[None]  # padding rows see themselves
        mask = torch.zeros((self.B, 1, W, L), dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed[:, None], self.neg)
        pos = (keep.long().cumsum(-1) - 1).clamp_min(0)
        self.visible = L
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_arg: self.cache})
        # decoding steps attend to the real prompt tokens and, one by one, to the new tokens
        self.mask.fill_(self.neg)
        self.mask[:, 0, 0, :W].masked_fill_(keep, 0.0)
        self.pos.copy_(pos[:, -1:])
        return out.logits[:, -1]

    def step(self, tok: torch.Tensor, step: int) -> torch.Tensor:
        """Feed the tokens chosen at ``step`` (written to cache slot start + step); return the next logits."""
        self.ids.copy_(tok[:, None])
        self.pos.add_(1)
        self.mask[:, 0, 0, self.start + step] = 0.0
        filled = self.start + step + 1
        self.visible = min(self.L, -(-filled // self.bucket) * self.bucket) if self.bucket else self.L
        self.steps += 1
        self.slots_read += self.visible
        if not self.use_graph:
            return self._step_forward()
        if self.visible not in self.graphs and not self._capture():
            return self._step_forward()
        graph, logits = self.graphs[self.visible]
        graph.replay()
        return logits

    def _capture(self) -> bool:
        """Capture the step for the current slice length (False: capture refused, decode eagerly from now on)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs, rewound: the real step is the replay below
            saved = self._positions()
            for _ in range(2):
                self._step_forward()
                self._rewind(saved)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):  # one memory pool for all slice lengths
                logits = self._step_forward()
        except Exception as e:  # noqa: BLE001 - capture refused: keep the static cache, run eagerly
            torch.cuda.synchronize()
            self.use_graph = False
            _warn_once(f"the decoding step of {type(self.model).__name__} could not be captured as a CUDA "
                       f"graph ({first_line(e)}); decoding eagerly with the static cache", path="eager static path")
            return False
        self.graphs[self.visible] = (graph, logits)
        return True


_last_decoder: list[tuple[tuple, _StaticDecoder]] = []  # the most recent one, kept for the next call


def _decoder(model, batch: int, max_prompt: int, max_new: int, cache_arg: str, use_graph: bool) -> _StaticDecoder:
    """A decoder for these shapes, reusing the last one (its cache and captured graph) when they match.

    Only one is kept: its cache holds batch x layers x (prompt + new tokens) keys and values.
    """
    width = -(-(max_prompt + max_new) // 64) * 64
    # the output module (a padded head inside generate) is in the key and kept: graphs read its weight
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    p = next(model.parameters())  # a model moved away and back has new addresses: graphs must be recaptured
    key = (id(model), batch, width - max_new, max_new, use_graph, p.dtype, p.device, p.data_ptr(), _KV_BUCKET,
           id(head), _DECODE_ATTENTION, _COMPILE_STEP)
    if _last_decoder and _last_decoder[0][0] == key and _last_decoder[0][1].model is model:
        return _last_decoder[0][1]
    _last_decoder.clear()  # free the old cache before allocating the new one
    dec = _StaticDecoder(model, batch, width - max_new, max_new, cache_arg, use_graph)
    dec.head = head
    _last_decoder.append((key, dec))
    return dec


def release_decoder() -> None:
    """Free the kept static cache and CUDA graph (they are otherwise reused by the next call)."""
    _last_decoder.clear()


@torch.no_grad()
def _generate_static(dec: _StaticDecoder, prompts: list[list[int]], s: Sampling, pad_id: int,
                     gen: torch.Generator) -> np.ndarray:
    n_real = len(prompts)
    prompts = prompts + [prompts[-1]] * (dec.B - n_real)  # a short last batch keeps the captured shape
    new = _decode(lambda: (dec.prefill(prompts, pad_id), dec.step), s, pad_id, gen)
    return new[:n_real].cpu().numpy()


Engine = Literal["auto", "static", "portable"]
_warned: set[str] = set()


def _warn_once(reason: str, path: str = "portable path") -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"generation falls back to the {path}: {reason}", RuntimeWarning, stacklevel=3)


def _attention_kernels():
    """The attention kernels decoding may use: not cuDNN's.

    On an H200 (torch 2.11) cuDNN's attention gave different logits for the same inputs once the
    cache grew past about 100 slots, so the same seed gave different samples from the 65th step
    on; with it switched off the flash, memory-efficient and math kernels repeat bit for bit
    (benchmarks/generation_repro.py).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: no cuDNN attention either
        return contextlib.nullcontext()
    cuda = torch.backends.cuda
    allowed = [b for b, on in ((SDPBackend.FLASH_ATTENTION, cuda.flash_sdp_enabled()),
                               (SDPBackend.EFFICIENT_ATTENTION, cuda.mem_efficient_sdp_enabled()),
                               (SDPBackend.MATH, cuda.math_sdp_enabled())) if on]  # what the user left on
    return sdpa_kernel(allowed or [SDPBackend.MATH])


def _local_generate(model, prompts, sampling, pad_id, batch_size, seed, engine, cuda_graph, report) -> np.ndarray:
    from leakaudit.models.fused import padded_head

    with _attention_kernels(), padded_head(model):
        return _decode_all(model, prompts, sampling, pad_id, batch_size, seed, engine, cuda_graph, report)


def _decode_all(model, prompts, sampling, pad_id, batch_size, seed, engine, cuda_graph, report) -> np.ndarray:
    device = next(model.parameters()).device
    cache_arg = cache_argument(model)
    out = np.full((len(prompts), sampling.max_new_tokens), pad_id, dtype=np.int64)
    if not prompts:
        return out
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    use_static = engine == "static" or (engine == "auto" and device.type == "cuda")
    dec = None
    if use_static:
        try:
            dec = _decoder(model, min(batch_size, len(prompts)), max(len(p) for p in prompts),
                           sampling.max_new_tokens, cache_arg, cuda_graph)
        except StaticPathUnavailable as e:
            _warn_once(str(e))
    for n, batch in enumerate(batches):
        gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + n)
        rows = [prompts[i] for i in batch]
        if dec is not None:
            try:
                out[batch] = _generate_static(dec, rows, sampling, pad_id, gen)
                report["path"] = "static, CUDA graph" if dec.graphs else "static"
                continue
            except Exception as e:  # noqa: BLE001 - the model's forward rejected the static inputs
                if n > 0 or engine == "static":
                    raise
                _warn_once(f"{type(model).__name__} could not decode with a static cache ({first_line(e)})")
                release_decoder()  # its cache is of no further use
                dec = None
                gen = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + n)
        out[batch] = _generate_batch(model, rows, sampling, pad_id, gen, cache_arg)
        report["path"] = "portable"
    return out


def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    sampling: Sampling,
    *,
    pad_id: int,
    batch_size: int = 64,
    seed: int = 0,
    engine: Engine = "auto",
    cuda_graph: bool = True,
    report: dict | None = None,
    fuse: bool = True,
    what: str = "generation",
) -> np.ndarray:
    """Decode ``sampling.max_new_tokens`` tokens after each prompt (token ids, BOS included).

    Returns an int array [len(prompts), max_new_tokens] of the new tokens, in prompt order;
    positions after a stop token hold ``pad_id``.  Every prompt needs at least one token.

    ``engine``: ``auto`` takes the static path on a GPU and the portable path on a CPU;
    ``static`` asks for the static path anywhere (on a CPU it runs without a graph); ``portable``
    forces the library's growing cache.  ``cuda_graph=False`` keeps the static path eager.
    A fixed seed gives the same tokens twice on the same device and engine (the CPU and GPU
    draw their random numbers differently).  ``report``, when given, receives ``path``: the path
    that decoded the last batch ("static, CUDA graph", "static" or "portable").  Under
    ``torch.distributed`` each rank decodes every W-th prompt (by length) and all ranks return
    the full result in prompt order.  ``fuse=False`` keeps composite activations as they are
    (see :mod:`leakaudit.models.fused`).  ``what`` names the setting in the error when the prompts and new tokens
    do not fit the model's context.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (a BOS for an empty prompt)")
    if engine not in ("auto", "static", "portable"):
        raise ValueError(f"engine must be auto, static or portable, not {engine!r}")
    if prompts:
        check_fits_context(model, max(map(len, prompts)), sampling.max_new_tokens, what)
    from leakaudit.models.fused import fuse_activations

    if fuse:
        fuse_activations(model)  # the same function in fewer kernels (the model is changed in place)
    model = model.eval()
    report = report if report is not None else {}
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _local_generate(model, prompts, sampling, pad_id, batch_size, seed, engine, cuda_graph, report)
    world, rank = dist.get_world_size(), dist.get_rank()
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    mine = order[rank::world]
    local = _local_generate(model, [prompts[i] for i in mine], sampling, pad_id, batch_size, seed * world + rank,
                            engine, cuda_graph, report)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (mine, local))
    out = np.full((len(prompts), sampling.max_new_tokens), pad_id, dtype=np.int64)
    for idx, rows in gathered:
        if idx:
            out[idx] = rows
    return out
