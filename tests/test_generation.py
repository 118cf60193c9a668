"""The decoding engine: greedy equals the library's generate, sampling is seeded and stays in the top k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakaudit.models.generate import Sampling, generate, trim
from leakaudit.models.tokenize import encode

LENGTHS = [5, 20, 40, 11, 60, 3]


def _prompts(corpora, tokenizer):
    private, _ = corpora
    return [e.ids for e in encode(tokenizer, [r["text"][:n] for r, n in zip(private, LENGTHS)])]


def _hf_greedy(model, prompts, pad, n):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         pad_token_id=pad, eos_token_id=None)
    return out[:, width:].numpy()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_equals_library_generate_with_mixed_length_prompts(arch, corpora, tokenizer, request):
    model = request.getfixturevalue(arch)
    prompts = _prompts(corpora, tokenizer)
    pad = tokenizer.pad_token_id
    ours = generate(model, prompts, Sampling(max_new_tokens=12, greedy=True), pad_id=pad, batch_size=4)
    np.testing.assert_array_equal(ours, _hf_greedy(model, prompts, pad, 12))
    # and one prompt at a time (no padding at all)
    for p, row in zip(prompts, ours):
        alone = generate(model, [p], Sampling(max_new_tokens=12, greedy=True), pad_id=pad)
        np.testing.assert_array_equal(alone[0], row)


def test_fixed_seed_reproducible_and_seeds_differ(gpt2, corpora, tokenizer):
    prompts = _prompts(corpora, tokenizer) * 4
    s = Sampling(max_new_tokens=16, top_k=40)
    a = generate(gpt2, prompts, s, pad_id=tokenizer.pad_token_id, seed=5)
    b = generate(gpt2, prompts, s, pad_id=tokenizer.pad_token_id, seed=5)
    c = generate(gpt2, prompts, s, pad_id=tokenizer.pad_token_id, seed=6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def _ranks(model, prompt, new):
    """Rank (0 = most likely) of each generated token under the model's distribution at its step."""
    ids = torch.tensor([list(prompt) + list(new)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    chosen = logits.gather(-1, torch.tensor(new)[:, None])
    return (logits > chosen).sum(-1).numpy()


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_never_leaves_the_top_k(k, gpt2, corpora, tokenizer):
    prompts = _prompts(corpora, tokenizer)
    out = generate(gpt2, prompts, Sampling(max_new_tokens=20, top_k=k, temperature=3.0), pad_id=tokenizer.pad_token_id,
                   seed=1)
    ranks = np.concatenate([_ranks(gpt2, p, row.tolist()) for p, row in zip(prompts, out)])
    assert ranks.max() < k
    if k == 40:
        assert ranks.max() >= 5  # a hot temperature does reach beyond the first few tokens


def test_top_p_stays_in_the_nucleus(gpt2, corpora, tokenizer):
    prompts = _prompts(corpora, tokenizer)
    out = generate(gpt2, prompts, Sampling(max_new_tokens=10, top_k=None, top_p=0.3), pad_id=tokenizer.pad_token_id)
    for p, row in zip(prompts, out):
        ids = torch.tensor([list(p) + row.tolist()])
        with torch.no_grad():
            probs = torch.softmax(gpt2(input_ids=ids).logits[0, len(p) - 1 : -1].float(), -1)
        for step, t in enumerate(row.tolist()):
            before = probs[step][probs[step] > probs[step][t]].sum()  # mass strictly above the chosen token
            assert before < 0.3 + 1e-6


def test_stop_token_pads_the_rest_and_trim_cuts(gpt2, corpora, tokenizer):
    prompts = _prompts(corpora, tokenizer)
    free = generate(gpt2, prompts, Sampling(max_new_tokens=8, greedy=True), pad_id=tokenizer.pad_token_id)
    stop = int(free[0, 2])  # greedy reaches this token at step 2 of the first prompt
    out = generate(gpt2, prompts, Sampling(max_new_tokens=8, greedy=True, stop_token=stop),
                   pad_id=tokenizer.pad_token_id)
    first = out[0].tolist()
    assert first[: first.index(stop) + 1] == free[0, : first.index(stop) + 1].tolist()
    assert all(t == tokenizer.pad_token_id for t in first[first.index(stop) + 1 :])
    assert trim(out, stop, tokenizer.pad_token_id)[0][-1] == stop


def test_temperature_schedule_and_bad_settings():
    s = Sampling(max_new_tokens=30, start_temperature=10.0, temperature=1.0, decay_steps=20)
    assert s.temperature_at(0) == 10.0 and s.temperature_at(10) == pytest.approx(5.5) and s.temperature_at(25) == 1.0
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 4, "top_k": 0}, {"max_new_tokens": 4, "top_p": 1.5},
                {"max_new_tokens": 4, "temperature": 0}):
        with pytest.raises(ValueError):
            Sampling(**bad)
    with pytest.raises(ValueError, match="at least one token"):
        generate(None, [[]], Sampling(max_new_tokens=2), pad_id=0)
