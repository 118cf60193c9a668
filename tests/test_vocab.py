"""Vocabulary reductions: the streaming (compilable) form equals the plain one, compiled or not."""

import shutil
import warnings

import numpy as np
import pytest
import torch

from leakaudit.errors import LeakauditError
from leakaudit.models import Target, vocab


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Float64 log-prob, mean and variance of log p under p, straight from the definitions."""
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    finite = torch.isfinite(logp)
    mu = torch.where(finite, p * logp, 0.0).sum(-1)
    var = torch.where(finite, p * (logp - mu[:, None]) ** 2, 0.0).sum(-1)
    return torch.stack([lp, mu, var]).numpy()


def _logits(n=300, V=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, V, generator=g) * torch.linspace(0.1, 12.0, n)[:, None]  # flat to very peaked rows
    x[:5, :400] = float("-inf")  # tokens a model can rule out
    return x, torch.randint(400, V, (n,), generator=g)


@pytest.mark.parametrize("form", [vocab.eager_logprobs, vocab.fused_logprobs])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_forms_equal_the_definitions(form, dtype):
    x, t = _logits()
    x = x.to(dtype)
    want = _reference(x.float(), t)
    got = form(x, t, True).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(form(x, t, False).numpy()[0], got[0])


@pytest.mark.parametrize("form", [vocab.eager_logprobs, vocab.fused_logprobs])
def test_variance_keeps_its_digits_for_nearly_flat_rows_of_a_large_vocabulary(form):
    # log p is about -log V (~ -10.8) everywhere, so E[log^2 p] and mu^2 are ~117 while the variance is ~1e-4:
    # computed as their difference in float32 it came out wrong by about its own size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 50_257, generator=g, dtype=torch.float64) * 0.01
    t = torch.randint(0, 50_257, (8,), generator=g)
    logp = torch.log_softmax(x, -1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    var = (p * (logp - mu[:, None]) ** 2).sum(-1)
    got = form(x.float(), t, True).double()
    np.testing.assert_allclose(got[2].numpy(), var.numpy(), rtol=1e-2)


def test_eager_chunks_do_not_change_the_values():
    x, t = _logits(n=50)
    np.testing.assert_array_equal(vocab.eager_logprobs(x, t, True, chunk=7).numpy(),
                                  vocab.eager_logprobs(x, t, True, chunk=4096).numpy())


def test_compile_choice_follows_the_environment(monkeypatch):
    monkeypatch.delenv(vocab.ENV, raising=False)
    assert vocab.compile_wanted(torch.device("cuda")) and not vocab.compile_wanted(torch.device("cpu"))
    monkeypatch.setenv(vocab.ENV, "0")
    assert not vocab.compile_wanted(torch.device("cuda"))
    monkeypatch.setenv(vocab.ENV, "1")
    assert vocab.compile_wanted(torch.device("cpu"))
    monkeypatch.setenv(vocab.ENV, "sometimes")
    with pytest.raises(LeakauditError, match="LEAKAUDIT_COMPILE"):
        vocab.compile_wanted(torch.device("cpu"))


def test_a_failing_compiler_warns_once_and_falls_back(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no backend here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(vocab, "_fused", vocab._Compiled(vocab.fused_logprobs, "the test reduction"))
    x, t = _logits(n=20)
    with pytest.warns(RuntimeWarning, match="the test reduction runs uncompiled.*no backend here"):
        got = vocab.token_logprobs(x, t, True, compiled=True)
    np.testing.assert_array_equal(got.numpy(), vocab.eager_logprobs(x, t, True).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        vocab.token_logprobs(x, t, True, compiled=True)


def _uncompiled(monkeypatch, fail_on=()):
    """``vocab``'s compiled reductions run through their chunking and fallback logic with ``torch.compile``
    replaced by the identity; call numbers in ``fail_on`` raise (an OOM for odd ones, an error for even)."""
    calls = [0]

    def fake_compile(fn, **kwargs):
        def run(*args):
            calls[0] += 1
            if calls[0] in fail_on:
                raise torch.OutOfMemoryError("device full") if calls[0] % 2 else RuntimeError("kernel broke")
            return fn(*args)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(vocab, "_fused", vocab._Compiled(vocab.fused_logprobs, "the test reduction"))
    monkeypatch.setattr(vocab, "_lse", vocab._Compiled(vocab._logsumexp, "the test log-sum-exp"))
    monkeypatch.setattr(vocab, "_ROWS", 7)  # 50 rows: eight calls, the last one short
    return calls


def test_rows_split_across_calls_are_put_back_in_order(monkeypatch):
    calls = _uncompiled(monkeypatch)
    x, t = _logits(n=50)
    np.testing.assert_allclose(vocab.token_logprobs(x, t, True, compiled=True).numpy(),
                               vocab.eager_logprobs(x, t, True).numpy(), atol=2e-4)
    assert calls[0] == 8
    cube = x.view(5, 10, -1)
    np.testing.assert_allclose(vocab.logsumexp(cube, compiled=True).numpy(),
                               torch.logsumexp(cube, -1).numpy(), atol=1e-5)


def test_running_out_of_memory_falls_back_for_that_call_only(monkeypatch):
    calls = _uncompiled(monkeypatch, fail_on={3})  # the third chunk of the first call
    x, t = _logits(n=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: compiling stays on
        first = vocab.token_logprobs(x, t, True, compiled=True)
    np.testing.assert_array_equal(first.numpy(), vocab.eager_logprobs(x, t, True).numpy())  # all eager, none mixed
    assert vocab._fused.failed is None
    before = calls[0]
    vocab.token_logprobs(x, t, True, compiled=True)
    assert calls[0] == before + 8  # compiled again


def test_a_failure_on_a_later_call_discards_its_partial_results(monkeypatch):
    calls = _uncompiled(monkeypatch, fail_on={10})  # the second call's second chunk
    x, t = _logits(n=50)
    vocab.token_logprobs(x, t, False, compiled=True)
    with pytest.warns(RuntimeWarning, match="kernel broke"):
        got = vocab.token_logprobs(x, t, False, compiled=True)
    assert got.shape == (1, 50)
    np.testing.assert_array_equal(got.numpy(), vocab.eager_logprobs(x, t, False).numpy())
    assert vocab._fused.failed and calls[0] == 10
    vocab.token_logprobs(x, t, False, compiled=True)
    assert calls[0] == 10  # switched off for good


needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                    reason="torch.compile on a CPU needs a C++ compiler")


@needs_compiler
def test_compiled_engine_scores_like_the_plain_one(monkeypatch, gpt2, tokenizer, corpora):
    """The whole engine with compiled reductions (forced on the CPU): scores, Min-K%++ statistics,
    secrets through the shared-prefix and candidate-tree paths, against the plain engine."""
    texts = [r["text"] for r in corpora[0][:10]] + [" ".join(r["text"] for r in corpora[0][:12])]  # + windows
    prefix = "Ticket 4 for Ann Lee: the code is "
    cands = [f"{i:03d}" for i in range(300)]  # >= 256: the candidate-tree path
    few = cands[:5]  # the shared-prefix path
    monkeypatch.setenv(vocab.ENV, "0")
    plain = Target(gpt2, tokenizer, token_budget=400)
    plain.context = 64  # the long text is scored in sliding windows (rows whose first scored token is not 1)
    want = (plain.score_stats(texts), plain.secret_nll(prefix, cands), plain.secret_nll(prefix, few))
    monkeypatch.setenv(vocab.ENV, "1")
    fast = Target(gpt2, tokenizer, token_budget=400)
    fast.context = 64
    assert fast._compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compiler failure would fall back silently here
        got = (fast.score_stats(texts), fast.secret_nll(prefix, cands), fast.secret_nll(prefix, few))
    assert vocab._fused.failed is None and vocab._lse.failed is None
    for a, b in zip(got[0], want[0]):
        np.testing.assert_allclose(a.lp, b.lp, atol=1e-4)
        np.testing.assert_allclose(a.mu, b.mu, atol=1e-4)
        np.testing.assert_allclose(a.var, b.var, atol=1e-3)
    np.testing.assert_allclose(got[1], want[1], atol=1e-3)
    np.testing.assert_allclose(got[2], want[2], atol=1e-3)


@pytest.mark.gpu
def test_cuda_compiled_reductions_equal_the_definitions_in_bf16(monkeypatch, gpt2, tokenizer, corpora):
    """On a GPU the engine compiles its reductions by default; bf16 logits, Triton kernels."""
    monkeypatch.delenv(vocab.ENV, raising=False)
    x, t = _logits(n=5000, V=50257)
    x, t = x.bfloat16().cuda(), t.cuda()
    want = _reference(x.float().cpu(), t.cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = vocab.token_logprobs(x, t, True, compiled=True).cpu().numpy()
        lse = vocab.logsumexp(x.view(50, 100, -1), compiled=True).cpu()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(lse.numpy(), torch.logsumexp(x.float(), -1).view(50, 100).cpu().numpy(), atol=1e-4)
    model = gpt2.cuda()
    texts = [r["text"] for r in corpora[0][:10]]
    fast = Target(model, tokenizer)
    assert fast._compiled
    monkeypatch.setenv(vocab.ENV, "0")
    plain = Target(model, tokenizer)
    for a, b in zip(fast.score_stats(texts), plain.score_stats(texts)):
        np.testing.assert_allclose(a.lp, b.lp, atol=1e-4)
        np.testing.assert_allclose(a.mu, b.mu, atol=1e-4)
    prefix, cands = "Ticket 4 for Ann Lee: the code is ", [f"{i:03d}" for i in range(300)]
    for few in (cands[:5], cands):  # the shared-prefix path and the candidate tree
        np.testing.assert_allclose(fast.secret_nll(prefix, few), plain.secret_nll(prefix, few), atol=1e-3)
    model.cpu()
