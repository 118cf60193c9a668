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

Registered with the library under ``NAME`` (with SDPA's mask builder, so a forward inside the
block that passes a 2-D padding mask still gets it); ``single_token_attention(model)`` switches a
model to it for the duration of a block (the decoder wraps its steps, so a captured CUDA graph
holds these kernels).  Only architectures whose attention layers are known to pass nothing this
path would drop are switched (``_ARCHITECTURES``): others, e.g. models with attention sinks,
soft-capping or sparse index masks, keep their own implementation.  Within a switched model,
anything this path does not cover (a query longer than one token, dropout, returned weights)
goes to the library's SDPA path.  The switch changes the model's config while the block runs,
so a model must not be used from another thread meanwhile.
"""
from __future__ import annotations

import contextlib

import torch

NAME = "leakaudit_decode"
_SWITCHABLE = ("sdpa", "eager")  # implementations whose one-token results this path reproduces
# model types whose attention layers pass only dropout, scaling (and, Qwen2/Mistral, a sliding
# window that the decoder's own mask encodes, as with SDPA) to the attention function
_ARCHITECTURES = frozenset({"gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt"})
_DELEGATE_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "head_mask", "indices")


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
    hkv, length, dv = key.shape[1], key.shape[2], value.shape[-1]
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
    probs = torch.softmax(scores, dim=-1)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # a row with every slot masked: NaN here, zeros in SDPA.  Additive masks are left alone (one
        # pass less per layer and step): the decoder's use the dtype's finite minimum, never -inf
        probs = torch.nan_to_num(probs, nan=0.0)
    probs = probs.to(value.dtype)
    out = torch.matmul(probs, value)  # (B, Hkv, groups, Dv)
    return out.reshape(b, h, 1, dv).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``NAME`` known to the library, as an attention function and a mask builder (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def _switchable(config) -> bool:
    return (getattr(config, "model_type", None) in _ARCHITECTURES
            and config._attn_implementation in _SWITCHABLE
            and not getattr(config, "reorder_and_upcast_attn", False))  # GPT-2's float32 eager variant


def _configs(model) -> list:
    """Every distinct config object the model's modules read (attention layers keep a reference)."""
    seen: dict[int, object] = {}
    for m in [model, *model.modules()]:
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen.setdefault(id(c), c)
    return list(seen.values())


def _set(config, value: str) -> None:
    """Set one config's implementation without the library's setter, which recurses into sub-configs."""
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = value
    else:  # a library version without the internal field
        config._attn_implementation = value


@contextlib.contextmanager
def single_token_attention(model):
    """Inside the block, the SDPA or eager attention layers of a known architecture use ``decode_attention``.

    Each config object the model's modules read is switched on its own (a composite model's
    sub-configs keep their own settings); other implementations (flash-attention, flex, paged)
    and other architectures are left as they are.  The previous settings are restored on exit,
    also when the block raises.
    """
    register()
    switched = [(c, c._attn_implementation) for c in _configs(model) if _switchable(c)]
    try:
        for c, _ in switched:
            _set(c, NAME)
        yield
    finally:
        for c, before in switched:
            _set(c, before)
