"""One-token decoding attention: equals the library's SDPA path, switches models and back, used by the engine."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from leakaudit.models import attention
from leakaudit.models.attention import NAME, decode_attention, single_token_attention


def _inputs(b=3, h=4, hkv=4, q=1, length=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(b, h, q, d, generator=g)
    key = torch.randn(b, hkv, length, d, generator=g)
    value = torch.randn(b, hkv, length, d, generator=g)
    module = types.SimpleNamespace(num_key_value_groups=h // hkv, is_causal=True, training=False)
    return module, query, key, value


def _padding_mask(b, length, q=1, seed=1):
    """Additive (B, 1, q, L): each row masks a different number of leading (padding) slots."""
    keep = torch.ones(b, length, dtype=torch.bool)
    for i in range(b):
        keep[i, : i * 2] = False
    mask = torch.zeros(b, 1, q, length)
    return mask.masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min), keep


@pytest.mark.parametrize("hkv", [4, 2, 1])  # multi-head, grouped-query, multi-query
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_equals_sdpa_with_additive_padding_mask(hkv, scaling):
    module, q, k, v = _inputs(hkv=hkv)
    mask, _ = _padding_mask(3, 9)
    ours, weights = decode_attention(module, q, k, v, mask, scaling=scaling)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=scaling)
    assert weights is None and ours.shape == (3, 1, 4, 8) == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_boolean_and_per_head_masks_and_no_mask():
    module, q, k, v = _inputs(hkv=2)
    additive, keep = _padding_mask(3, 9)
    boolean = keep[:, None, None, :]
    ref, _ = sdpa_attention_forward(module, q, k, v, additive)
    torch.testing.assert_close(decode_attention(module, q, k, v, boolean)[0], ref, rtol=1e-5, atol=1e-6)
    per_head = additive.expand(3, 4, 1, 9).clone()  # one row per query head
    torch.testing.assert_close(decode_attention(module, q, k, v, per_head)[0], ref, rtol=1e-5, atol=1e-6)
    no_mask, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=False)
    torch.testing.assert_close(decode_attention(module, q, k, v, None)[0], no_mask, rtol=1e-5, atol=1e-6)


def test_mask_longer_than_the_keys_is_cut_to_them():
    """The decoder's mask buffer may be wider than the cache slice a layer returns."""
    module, q, k, v = _inputs(length=9)
    mask, _ = _padding_mask(3, 12)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask[..., :9])
    torch.testing.assert_close(decode_attention(module, q, k, v, mask)[0], ref, rtol=1e-5, atol=1e-6)


def test_fully_masked_padding_slot_matches_sdpa_in_bf16():
    """bf16, the model dtype's most negative value as the mask: the same as SDPA to bf16 rounding."""
    module, q, k, v = (x.bfloat16() if torch.is_tensor(x) else x for x in _inputs(hkv=2, length=40, d=16))
    mask, _ = _padding_mask(3, 40)
    mask = mask.clamp_min(torch.finfo(torch.bfloat16).min).bfloat16()
    ours, _ = decode_attention(module, q, k, v, mask)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0.02, atol=0.02)


def test_longer_queries_and_unsupported_options_go_to_sdpa(monkeypatch):
    module, q, k, v = _inputs(q=3, length=9)
    mask, _ = _padding_mask(3, 9, q=3)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask)
    torch.testing.assert_close(decode_attention(module, q, k, v, mask)[0], ref)
    calls = []
    monkeypatch.setattr(attention, "_sdpa", lambda *a, **kw: calls.append(sorted(kw)) or ("sdpa", None))
    module, q, k, v = _inputs()
    assert decode_attention(module, q, k, v, None, softcap=30.0)[0] == "sdpa"
    assert decode_attention(module, q, k, v, None, dropout=0.1)[0] == "sdpa"
    assert decode_attention(module, q, k, v, None, position_bias=torch.zeros(1))[0] == "sdpa"
    assert len(calls) == 3
    decode_attention(module, q, k, v, None, softcap=None, sliding_window=None)  # None options: own path
    assert len(calls) == 3


def test_switches_sdpa_and_eager_models_and_restores_them_also_on_error(tokenizer):
    from leakaudit.models import build_model

    model = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    before = model.config._attn_implementation
    assert before in ("sdpa", "eager")
    with single_token_attention(model):
        assert model.config._attn_implementation == NAME
        assert all(m.config._attn_implementation == NAME for m in model.modules() if hasattr(m, "config"))
    assert model.config._attn_implementation == before
    with pytest.raises(RuntimeError, match="inside"):
        with single_token_attention(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == before
    model.config._attn_implementation = "flex_attention"  # not one this path reproduces: left alone
    with single_token_attention(model):
        assert model.config._attn_implementation == "flex_attention"


def test_value_heads_narrower_than_query_heads():
    """Some architectures (multi-head latent attention) have value heads of another width."""
    module, q, k, _ = _inputs(d=12)
    v = torch.randn(3, 4, 9, 6)
    mask, _ = _padding_mask(3, 9)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask)
    ours, _ = decode_attention(module, q, k, v, mask)
    assert ours.shape == ref.shape == (3, 1, 4, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_a_fully_masked_row_gives_zeros_as_sdpa_does():
    module, q, k, v = _inputs()
    keep = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    keep[1] = False
    ours, _ = decode_attention(module, q, k, v, keep)
    ref, _ = sdpa_attention_forward(module, q, k, v, keep)
    assert torch.isfinite(ours).all() and not ours[1].any()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_two_dimensional_padding_masks_still_apply_inside_the_block(tokenizer):
    """A forward inside the block that passes a 2-D mask (not the decoder's 4-D one) keeps its padding."""
    from leakaudit.models import build_model
    from leakaudit.models.generate import cache_argument

    torch.manual_seed(0)
    model = build_model(tokenizer, arch="llama", n_layer=2, n_embd=32, n_head=4, context=64).eval()
    arg = cache_argument(model)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        ref_prefill = model(input_ids=ids, attention_mask=mask, position_ids=pos)
        with single_token_attention(model):
            got_prefill = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        nxt, mask2 = torch.randint(5, 100, (2, 1)), torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        ref_prefill_cached = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        ref_step = model(input_ids=nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1,
                         **{arg: ref_prefill_cached.past_key_values}).logits
        with single_token_attention(model):
            got_step = model(input_ids=nxt, attention_mask=mask2, position_ids=pos[:, -1:] + 1,
                             **{arg: got_prefill.past_key_values}).logits
    torch.testing.assert_close(got_prefill.logits[0, 3:], ref_prefill.logits[0, 3:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_step, ref_step, rtol=1e-5, atol=1e-5)


def test_only_known_architectures_are_switched_and_sub_configs_keep_their_own(tokenizer):
    from transformers import GPT2Config

    from leakaudit.models import build_model

    llama = build_model(tokenizer, arch="llama", n_layer=1, n_embd=16, n_head=2, context=64)
    other = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    other.model_type = "some_model"  # e.g. an architecture with attention sinks: not known here
    upcast = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, reorder_and_upcast_attn=True)
    for c in (other, upcast):
        c._attn_implementation_internal = "eager"
    flex = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    flex._attn_implementation_internal = "flex_attention"
    holder = torch.nn.Module()
    holder.config = llama.config
    for name, c in (("a", other), ("b", upcast), ("c", flex)):
        sub = torch.nn.Module()
        sub.config = c
        holder.add_module(name, sub)
    before = llama.config._attn_implementation
    with single_token_attention(holder):
        assert llama.config._attn_implementation == NAME
        assert (other._attn_implementation, upcast._attn_implementation) == ("eager", "eager")
        assert flex._attn_implementation == "flex_attention"
    assert llama.config._attn_implementation == before
    assert (other._attn_implementation, upcast._attn_implementation, flex._attn_implementation) == (
        "eager", "eager", "flex_attention")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt"])  # every switched one
def test_static_engine_steps_use_it_and_match_library_greedy(arch, corpora, tokenizer, monkeypatch):
    """The engine's decoding steps run through decode_attention and still equal the library's greedy."""
    from leakaudit.models import build_model
    from leakaudit.models import generate as engine
    from leakaudit.models.generate import Sampling, generate
    from leakaudit.models.tokenize import encode

    private, _ = corpora
    prompts = [e.ids for e in encode(tokenizer, [r["text"][:n] for r, n in zip(private, [5, 20, 40, 11, 60, 3])])]
    pad = tokenizer.pad_token_id
    model = build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=4, context=256).eval()
    if arch in ("llama", "qwen2"):  # grouped-query attention: two query heads per key/value head
        model.config.num_key_value_heads = 2
        model = type(model)(model.config).eval()
    one_token = []
    real = attention.decode_attention

    def spy(module, query, *args, **kwargs):
        one_token.append(query.shape[2] == 1)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(attention, "decode_attention", spy)
    engine.release_decoder()
    ours = generate(model, prompts, Sampling(max_new_tokens=10, greedy=True), pad_id=pad, batch_size=4,
                    engine="static")
    engine.release_decoder()
    assert one_token and all(one_token)  # used, and only by one-token steps (the prefill is not switched)
    assert model.config._attn_implementation != NAME
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                         pad_token_id=pad, eos_token_id=None)[:, width:].numpy()
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.gpu
def test_cuda_bf16_equals_sdpa_and_repeats_bit_for_bit():
    """GPT-2-small decoding shapes at batch 512 (12 heads of 64, 320 slots): close to SDPA, identical twice."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(512, 12, 1, 64, device="cuda", generator=g).bfloat16()
    k = torch.randn(512, 12, 320, 64, device="cuda", generator=g).bfloat16()
    v = torch.randn(512, 12, 320, 64, device="cuda", generator=g).bfloat16()
    mask = torch.zeros(512, 1, 1, 320, device="cuda", dtype=torch.bfloat16)
    mask[::3, ..., :100] = torch.finfo(torch.bfloat16).min  # every third row: 100 padding slots
    module = types.SimpleNamespace(num_key_value_groups=1, is_causal=True, training=False)
    ours, _ = decode_attention(module, q, k, v, mask)
    again, _ = decode_attention(module, q, k, v, mask)
    ref, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask.float())
    assert torch.equal(ours, again)
    torch.testing.assert_close(ours.float(), ref, rtol=0.03, atol=0.03)
