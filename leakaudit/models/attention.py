"""Attention for one-token decoding steps: two batched products instead of a fused kernel.

A decoding step asks one query per sequence and head to attend to the whole key/value cache.
The fused kernels are built for long queries: on an H200 (torch 2.11), with a padding mask and
cuDNN's kernel excluded for reproducibility (see ``generate._attention_kernels``), the
memory-efficient kernel read the cache at about a third of the memory bandwidth, and the math
kernel upcasts the whole cache to float32 first (four times slower still).  For one query the
work is two matrix-vector products per head, so this computes

    scores = (q * scale) K^T      (in the model's dtype, float32 accumulation)
    p      = softmax(scores + mask) in float32, cast back
    out    = p V

as the library's own eager attention does, but with grouped-query heads folded into the query
axis instead of copying the keys and values ``groups`` times.  cuBLAS's batched products are
deterministic for fixed shapes, so a fixed seed still gives the same samples.

Registered with the library under ``NAME``; ``single_token_attention(model)`` switches a model to
it for the duration of a block (the decoder wraps its steps, so a captured CUDA graph holds these
kernels).  Anything this path does not cover (a query longer than one token, dropout, soft-capping,
attention sinks, position biases, head masks, returned weights) goes to the library's SDPA path.
"""
from __future__ import annotations

import contextlib

import torch

NAME = "leakaudit_decode"
_SWITCHABLE = ("sdpa", "eager")  # implementations whose one-token results this path reproduces
_DELEGATE_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "head_mask")


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def decode_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """The library's attention-function signature: ``query`` (B, H, 1, D), ``key``/``value`` (B, Hkv, L, D).

    Returns the output as (B, 1, H, D), as the library's functions do, and no weights.
    """
    if (query.shape[2] != 1 or dropout or kwargs.get("output_attentions")
            or any(kwargs.get(k) is not None for k in _DELEGATE_KWARGS)):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    b, h, _, d = query.shape
    hkv, length = key.shape[1], key.shape[2]
    groups = h // hkv
    scale = d ** -0.5 if scaling is None else scaling
    q = (query * scale).reshape(b, hkv, groups, d)  # a query head's group shares its key/value head
    scores = torch.matmul(q, key.transpose(-1, -2)).float()  # (B, Hkv, groups, L)
    if attention_mask is not None:
        mask = attention_mask[..., -1:, :length]  # (B or 1, 1 or H, 1, L)
        if mask.shape[1] != 1:
            mask = mask.reshape(mask.shape[0], hkv, groups, length)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, Hkv, groups, D)
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``NAME`` known to the library (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, decode_attention)


def _configs(model) -> list:
    """Every distinct config object the model's modules read (attention layers keep a reference)."""
    seen: dict[int, object] = {}
    for m in [model, *model.modules()]:
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen.setdefault(id(c), c)
    return list(seen.values())


@contextlib.contextmanager
def single_token_attention(model):
    """Inside the block, the model's SDPA or eager attention layers use ``decode_attention``.

    Other implementations (flash-attention, flex, paged) are left as they are.  The previous
    setting is restored on exit, also when the block raises.
    """
    register()
    switched = [(c, c._attn_implementation) for c in _configs(model) if c._attn_implementation in _SWITCHABLE]
    try:
        for c, _ in switched:
            c._attn_implementation = NAME
        yield
    finally:
        for c, before in switched:
            c._attn_implementation = before
