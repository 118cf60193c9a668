"""The scoring engine against a naive one-sequence forward, with padding, windows and secrets."""

import numpy as np
import pytest
import torch

from leakaudit.models import Target, encode
from leakaudit.models.target import _windows
from tests.conftest import secret_tokens


def _naive(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return lp.gather(-1, x[0, 1:, None]).squeeze(-1).numpy()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_scores_equal_one_sequence_at_a_time(request, corpora, tokenizer, arch):
    model = request.getfixturevalue(arch)
    texts = [r["text"] for r in corpora[0][:12]] + ["hi", "Ticket"]
    target = Target(model, tokenizer, token_budget=300)  # several batches, much padding
    lps = target.score(texts)
    for t, lp in zip(texts, lps):
        e = encode(tokenizer, [t])[0]
        assert e.ids[0] == tokenizer.bos_token_id and e.n_special == 1
        assert len(lp) == len(e.ids) - 1  # every token but the BOS is scored, padding never
        np.testing.assert_allclose(lp, _naive(model, e.ids), atol=2e-5)


def test_windows_score_every_token_once():
    for n in [5, 16, 17, 40, 101]:
        rows = _windows(0, list(range(n)), 1, 16)
        covered = []
        for r in rows:
            start = r.ids[0]
            assert len(r.ids) <= 16
            covered += list(range(start + r.first, start + len(r.ids)))
            if r is not rows[0]:
                assert r.first >= 8  # at least half a context before each scored token
        assert covered == list(range(1, n))


def test_long_texts_use_a_sliding_window(gpt2, tokenizer):
    text = " ".join(["the account was closed after the refund"] * 30)
    ids = encode(tokenizer, [text])[0].ids
    assert len(ids) > 128
    full = Target(gpt2, tokenizer)
    full.context = 64
    lp = full.score([text])[0]
    assert len(lp) == len(ids) - 1 and np.isfinite(lp).all()
    np.testing.assert_allclose(lp[:63], _naive(gpt2, ids[:64]), atol=2e-5)  # first window exact


def test_secret_nll_sums_the_secret_tokens(gpt2, tokenizer):
    target = Target(gpt2, tokenizer)
    prefix = "Security note for Ann Lee: the account recovery code is "
    cands = ["123456", "000000", "987654"]
    nll = target.secret_nll(prefix, cands)
    for c, v in zip(cands, nll):
        e = encode(tokenizer, [prefix + c])[0]
        lp = _naive(gpt2, e.ids)
        start, sel = len(prefix.rstrip()), secret_tokens(e, prefix, c)
        assert sel, "the secret must cover at least one token"
        assert v == pytest.approx(-lp[sel].sum(), abs=1e-4)
        assert v > 0
        # every candidate pays for the space: merged into its first token ("Ġ0", "Ġ9") or on its own ("Ġ", "1")
        toks = tokenizer.convert_ids_to_tokens(e.ids)
        first_own = next(t for t, (a, b) in enumerate(e.offsets) if t >= 1 and b > start)
        assert toks[first_own] in ("Ġ", "Ġ" + c[0]) and first_own - 1 in sel
    # both kinds occur here: "123456" has a space token of its own (no "Ġ1" in this vocabulary)
    assert tokenizer.convert_ids_to_tokens(encode(tokenizer, [prefix + "123456"])[0].ids)[-7] == "Ġ"
    # the candidate order does not change the values
    np.testing.assert_allclose(target.secret_nll(prefix, cands[::-1]), nll[::-1], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prefix_cache_equals_independent_scoring(request, tokenizer, arch):
    model = request.getfixturevalue(arch)
    target = Target(model, tokenizer, token_budget=64)  # several tail batches
    prefix = "Security note for Ann Lee: the account recovery code is "
    cands = [f"{i:06d}" for i in range(0, 1000000, 37037)] + ["12", "9999999999"]
    fast = target.secret_nll(prefix, cands)
    enc = encode(tokenizer, [prefix + c for c in cands])
    assert target._shared_prefix_scores([e.ids for e in enc]) is not None  # the cached path ran
    slow_lp = target.score_ids([e.ids for e in enc])
    for c, v, e, lp in zip(cands, fast, enc, slow_lp):
        sel = secret_tokens(e, prefix, c)
        assert v == pytest.approx(-lp[sel].sum(), abs=1e-4)


def test_min_k_plus_plus_statistics_come_from_the_same_pass(gpt2, tokenizer, corpora):
    texts = [r["text"] for r in corpora[0][:5]]
    target = Target(gpt2, tokenizer, token_budget=200)
    stats = target.score_stats(texts)
    plain = target.score(texts)
    for t, st, lp in zip(texts, stats, plain):
        np.testing.assert_allclose(st.lp, lp, atol=1e-6)
        ids = encode(tokenizer, [t])[0].ids
        with torch.no_grad():
            logp = torch.log_softmax(gpt2(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        p = logp.exp()
        mu = (p * logp).sum(-1).numpy()
        var = (p * logp**2).sum(-1).numpy() - mu**2
        np.testing.assert_allclose(st.mu, mu, atol=1e-4)
        np.testing.assert_allclose(st.var, var, atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_many_candidates_take_the_vectorised_path_and_agree(request, tokenizer, arch):
    from leakaudit.models.tokenize import encode_continuations

    model = request.getfixturevalue(arch)
    target = Target(model, tokenizer, token_budget=512)
    prefix = "Security note for Ann Lee: the account recovery code is "
    rng = np.random.default_rng(0)
    cands = [f"{i:06d}" for i in rng.choice(10**6, 300, replace=False)] + ["12", "9999999999", "abc", " 42", "x y"]
    split = encode_continuations(tokenizer, prefix, cands)
    assert split is not None and split.cut < len(prefix)
    for c, tail in zip(cands[:20], split.tails):
        assert split.head.ids + tail == encode(tokenizer, [prefix + c])[0].ids
    fast = target.secret_nll(prefix, cands)
    assert target._continuation_nll(prefix, cands) is not None
    slow = target.secret_nll(prefix, cands[:200]).tolist() + target.secret_nll(prefix, cands[200:]).tolist()
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def test_tails_tokenized_for_one_canary_serve_the_next(tokenizer):
    from leakaudit.models.tokenize import TailCache, encode_continuations

    rng = np.random.default_rng(1)
    pool = [f"{i:06d}" for i in rng.choice(10**6, 400, replace=False)]
    cache = TailCache(max_entries=600)
    calls = []
    real = cache.tails
    cache.tails = lambda b, rest, cs: calls.append(sum(c not in cache._by_rest.get(rest, {}) for c in cs)) or real(
        b, rest, cs)
    for name, own in (("Ann Lee", "123456"), ("Bo Chen", "654321"), ("Cy Dorr", "000001")):
        prefix = f"Security note for {name}: the account recovery code is "
        cands = pool + [own, " 42", "x y"]
        cached = encode_continuations(tokenizer, prefix, cands, cache=cache)
        plain = encode_continuations(tokenizer, prefix, cands)
        assert cached is not None and cached.tails == plain.tails and cached.rest_ids == plain.rest_ids
        assert cached.head == plain.head
    assert calls == [403, 1, 1]  # the second and third canaries tokenize only their own secret
    assert cache._size == 405
    big = [f"{i:07d}" for i in range(300)]  # past max_entries: tokenized, returned, not kept
    prefix = "Security note for Di Ek: the account recovery code is "
    split = encode_continuations(tokenizer, prefix, big, cache=cache)
    assert split.tails == encode_continuations(tokenizer, prefix, big).tails and cache._size == 405


def test_continuations_refuse_a_prefix_without_word_boundaries(tokenizer):
    from leakaudit.models.tokenize import encode_continuations

    assert encode_continuations(tokenizer, "code:", ["1", "2"]) is None


def test_resolve_dtype():
    from leakaudit.models.target import resolve_dtype

    assert resolve_dtype("cuda") == torch.bfloat16 and resolve_dtype("cpu") == torch.float32
    assert resolve_dtype("cuda", "float32") == torch.float32 and resolve_dtype("cpu", "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("cpu", "fp16")


def test_fused_activations_keep_the_function(tokenizer, corpora):
    import copy

    from leakaudit.models import build_model
    from leakaudit.models.fused import TanhGELU, fuse_activations

    model = build_model(tokenizer, arch="gpt2", n_layer=2, n_embd=32, n_head=2, context=128).eval()
    plain = copy.deepcopy(model)
    assert fuse_activations(model) == 2 and fuse_activations(model) == 0
    assert sum(isinstance(m, TanhGELU) for m in model.modules()) == 2
    ids = torch.tensor([encode(tokenizer, [corpora[0][0]["text"]])[0].ids[:64]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    before = Target(plain, tokenizer, fuse=False).score([corpora[0][1]["text"]])[0]
    assert not any(isinstance(m, TanhGELU) for m in plain.modules())
    np.testing.assert_allclose(Target(plain, tokenizer).score([corpora[0][1]["text"]])[0], before, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_padded_head_gives_the_same_logits_and_follows_weight_changes(arch, tokenizer, corpora, monkeypatch):
    from leakaudit.models import build_model, fused
    from leakaudit.models.generate import Sampling, generate

    model = build_model(tokenizer, arch=arch, n_layer=2, n_embd=32, n_head=2, context=128).eval()
    model.resize_token_embeddings(len(tokenizer) + 5)  # an odd vocabulary, like GPT-2's 50,257
    head = model.get_output_embeddings()
    assert head.out_features % 64 != 0
    ids = torch.tensor([encode(tokenizer, [corpora[0][0]["text"]])[0].ids[:40]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with fused.padded_head(model) as ph:  # on a CPU: only when forced
            assert ph is None
        with fused.padded_head(model, force=True) as ph:
            assert ph is not None and model.get_output_embeddings() is ph
            torch.testing.assert_close(model(input_ids=ids).logits, plain)
            head.weight.add_(0.01)  # an in-place update (training) reaches the padded copy
            moved = model(input_ids=ids).logits
        assert model.get_output_embeddings() is head
        torch.testing.assert_close(moved, model(input_ids=ids).logits)
        head.weight.data.mul_(1.5)  # an edit through .data (no version bump) is seen by the next block
        scaled = model(input_ids=ids).logits
        with fused.padded_head(model, force=True):
            torch.testing.assert_close(model(input_ids=ids).logits, scaled)
        # a head something else wraps (a hook: accelerate's device placement, a user's) is left alone
        handle = head.register_forward_hook(lambda *a: None)
        with fused.padded_head(model, force=True) as ph:
            assert ph is None and model.get_output_embeddings() is head
        handle.remove()
    fused.release_padded(model)
    with torch.inference_mode(), fused.padded_head(model, force=True):  # first use in inference mode...
        model(input_ids=ids)
    with torch.no_grad(), fused.padded_head(model, force=True):  # ...then outside it
        torch.testing.assert_close(model(input_ids=ids).logits, scaled)
    fused.release_padded(model)
    # the engines with the padded head forced: scores and greedy decoding unchanged
    real = fused.padded_head
    before = Target(model, tokenizer).score([corpora[0][1]["text"]])[0]
    pad = tokenizer.pad_token_id
    prompts = [encode(tokenizer, [r["text"]])[0].ids[: 5 + i] for i, r in enumerate(corpora[0][:4])]
    greedy = Sampling(max_new_tokens=10, greedy=True)
    ref = generate(model, prompts, greedy, pad_id=pad, engine="static")
    monkeypatch.setattr(fused, "padded_head", lambda m, **k: real(m, force=True))
    calls = []
    forward = fused.PaddedHead.forward
    monkeypatch.setattr(fused.PaddedHead, "forward", lambda self, x: calls.append(1) or forward(self, x))
    np.testing.assert_allclose(Target(model, tokenizer).score([corpora[0][1]["text"]])[0], before, atol=1e-5)
    np.testing.assert_array_equal(generate(model, prompts, greedy, pad_id=pad, engine="static"), ref)
    assert len(calls) > 10  # both engines went through the padded head


@pytest.mark.gpu
def test_cuda_padded_head_scores_and_decodes_like_the_plain_head(tokenizer, corpora, monkeypatch):
    """On a GPU the engines pad an odd vocabulary's projection by themselves; results must not move."""
    import contextlib

    from leakaudit.models import build_model, fused
    from leakaudit.models.generate import Sampling, generate

    model = build_model(tokenizer, arch="gpt2", n_layer=2, n_embd=64, n_head=2, context=256)
    model.resize_token_embeddings(len(tokenizer) + 5)
    model = model.cuda().eval()
    texts = [r["text"] for r in corpora[0][:8]]
    prompts = [encode(tokenizer, [t])[0].ids[: 6 + i] for i, t in enumerate(texts)]
    greedy = Sampling(max_new_tokens=40, greedy=True)
    padded = Target(model, tokenizer).score(texts)
    out = generate(model, prompts, greedy, pad_id=tokenizer.pad_token_id)
    monkeypatch.setattr(fused, "padded_head", lambda m, **k: contextlib.nullcontext())
    from leakaudit.models import generate as engine

    engine.release_decoder()
    plain = Target(model, tokenizer).score(texts)
    for a, b in zip(padded, plain):
        np.testing.assert_allclose(a, b, atol=1e-4)
    again = generate(model, prompts, greedy, pad_id=tokenizer.pad_token_id)
    assert (again == out).mean() >= 0.98  # float32 both ways; another product kernel may break a near-tie


def test_compiled_model_scores_like_the_plain_model(tokenizer, corpora):
    """``compile_model``: the whole model through torch.compile (dynamic shapes) gives the same
    per-token values, with and without Min-K%++'s statistics, over batches of several widths."""
    from leakaudit.models import build_model

    model = build_model(tokenizer, arch="gpt2", n_layer=1, n_embd=32, n_head=2, context=256).eval()
    texts = [r["text"] for r in corpora[0][:20]] + ["hi"]
    plain = Target(model, tokenizer, token_budget=300)
    fast = Target(model, tokenizer, token_budget=300, compile_model=True)
    for a, b in zip(plain.score(texts), fast.score(texts)):
        np.testing.assert_allclose(b, a, atol=1e-5)
    for a, b in zip(plain.score_stats(texts), fast.score_stats(texts)):
        for field in ("lp", "mu", "var"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-4)
    assert fast._compiled_model is not None and fast._compile_model  # it did run compiled


def test_compiled_model_failure_warns_once_and_scores_uncompiled(tokenizer, corpora, gpt2, broken_compile):
    texts = [r["text"] for r in corpora[0][:6]]
    target = Target(gpt2, tokenizer, token_budget=300, compile_model=True)
    with pytest.warns(RuntimeWarning, match="could not be compiled .*backend compiler failed"):
        got = target.score(texts)
    for a, b in zip(Target(gpt2, tokenizer, token_budget=300).score(texts), got):
        np.testing.assert_allclose(b, a, atol=1e-6)
    assert not target._compile_model


@pytest.mark.gpu
def test_cuda_compiled_model_scores_like_the_plain_model(tokenizer, corpora):
    """bf16 on a GPU, odd vocabulary (padded head inside the compiled model), several batch widths."""
    from leakaudit.models import build_model

    model = build_model(tokenizer, arch="llama", n_layer=2, n_embd=64, n_head=4, context=256)
    model.resize_token_embeddings(len(tokenizer) + 5)
    model = model.cuda().to(torch.bfloat16).eval()
    texts = [r["text"] for r in corpora[0][:24]]
    plain = Target(model, tokenizer, token_budget=400).score_stats(texts)
    fast = Target(model, tokenizer, token_budget=400, compile_model=True)
    got = fast.score_stats(texts)
    assert fast._compile_model  # no fallback
    for a, b in zip(plain, got):
        np.testing.assert_allclose(b.lp, a.lp, atol=0.05)  # bf16: fused kernels round differently


def test_many_candidates_whose_tokens_cross_the_prefix_split_are_scored_the_general_way(gpt2, tokenizer):
    """" was" + "easyx" tokenizes as " w", "ase", ...: its first token lies wholly in the prefix. The vectorised path
    (>= 256 candidates) took every tail token after the rest's as the candidate's; it must give what the joint
    tokenization with offsets gives, for that candidate as for the others."""
    import random

    from leakaudit.models.tokenize import encode_continuations

    rng = random.Random(1)
    prefix = "the secret password was"
    cands = ["".join(rng.choice("abcdfghijk") for _ in range(5)) for _ in range(400)]
    cands[5] = "easyx"
    split = encode_continuations(tokenizer, prefix, cands)
    e = encode(tokenizer, [prefix + "easyx"])[0]
    crossing = [t for t, (a, b) in enumerate(e.offsets) if a < len(prefix) < b]
    assert split is not None and split.cut < len(prefix) and crossing  # the case is reached
    target = Target(gpt2, tokenizer, token_budget=2048)
    fast = target.secret_nll(prefix, cands)
    slow = target.secrets_nll([prefix] * len(cands), cands)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    lp = _naive(gpt2, e.ids)
    assert fast[5] == pytest.approx(-lp[secret_tokens(e, prefix, "easyx")].sum(), abs=1e-4)


def test_a_secrets_trailing_space_token_is_scored_on_every_path(gpt2, tokenizer):
    """A token of whitespace alone has a zero-width offset just after it: at a secret's end it was dropped by the
    offset rule and counted by the vectorised one, so the value depended on the number of candidates."""
    import random

    rng = random.Random(3)
    prefix = "the secret code is "
    cands = [str(rng.randrange(1000, 10000)) + " " for _ in range(300)]
    target = Target(gpt2, tokenizer, token_budget=2048)
    fast, slow = target.secret_nll(prefix, cands), target.secrets_nll([prefix] * 300, cands)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    e = encode(tokenizer, [prefix + cands[0]])[0]
    assert e.offsets[-1][0] == e.offsets[-1][1]  # the trailing space token: zero width
    assert len(e.ids) - 2 in secret_tokens(e, prefix, cands[0])  # ... and counted (index t - 1 of the last token)
    assert slow[0] == pytest.approx(-_naive(gpt2, e.ids)[secret_tokens(e, prefix, cands[0])].sum(), abs=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
def test_texts_with_no_token_to_score_give_empty_results(gpt2, tokenizer, compiled, monkeypatch):
    """Without a BOS an empty text has no token, and a one-token text nothing to predict: empty results, never
    values of a neighbour's padding (the compiled path) or a crash (a batch of them alone)."""
    import copy

    from leakaudit.models import vocab

    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    target = Target(gpt2, no_bos, token_budget=64)
    monkeypatch.setattr(target, "_compiled", compiled)
    if compiled:  # the batch-wide path of the compiled reduction, with torch.compile as the identity
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
        monkeypatch.setattr(vocab, "_fused", vocab._Compiled(vocab.fused_logprobs, "the test reduction"))
    one = next(t for t in ("the", "a", "account", "code", "is") if len(no_bos(t)["input_ids"]) == 1)
    texts = ["hello world and more of the account", "", one]
    out = target.score(texts)
    assert [len(x) for x in out] == [len(encode(no_bos, [texts[0]])[0].ids) - 1, 0, 0]
    assert [len(x) for x in target.score(["", ""])] == [0, 0]
    stats = target.score_stats(["", one])
    assert [(len(x.lp), len(x.mu), len(x.var)) for x in stats] == [(0, 0, 0), (0, 0, 0)]


def test_secrets_are_scored_after_two_leading_special_tokens(gpt2, tokenizer):
    """A tokenizer that adds two specials itself ("<bos> <pad> text"): scores start at token 2, and the secret's
    tokens are read from there on every path (the batched one read them one position off)."""
    import copy

    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    b, p = tokenizer.bos_token_id, tokenizer.pad_token_id
    bos, pad = tokenizer.convert_ids_to_tokens([b, p])
    backend.post_processor = TemplateProcessing(single=f"{bos} {pad} $A", special_tokens=[(bos, b), (pad, p)])
    two = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=bos, pad_token=pad)
    prefix, cands = "the secret code is ", ["123456", "987654", "555555"]
    assert encode(two, [prefix])[0].n_special == 2
    target = Target(gpt2, two)
    want = []
    for c in cands:
        e = encode(two, [prefix + c])[0]
        want.append(-_naive(gpt2, e.ids)[[t for t in secret_tokens(e, prefix, c) if t >= 1]].sum())
    np.testing.assert_allclose(target.secrets_nll([prefix] * 3, cands), want, atol=1e-4)
    np.testing.assert_allclose(target.secret_nll(prefix, cands), want, atol=1e-4)
