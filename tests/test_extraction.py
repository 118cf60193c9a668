"""Canary extraction by best-first search: format constraints, optimality, a planted canary."""

import copy

from leakaudit.attacks.extraction import _Partial, extract_secret
from leakaudit.canaries import get_format
from leakaudit.models import Target
from leakaudit.train import TrainSettings, train_model


def test_partial_secrets_follow_the_format():
    p = _Partial(get_format("card", 8), " ")
    assert p.state(" 12") == "open" and p.state(" 1234 ") == "open"
    assert p.state(" 1234 5678") == "done"
    assert p.state(" 12a") is None and p.state(" 12345") is None and p.state("1") is None
    assert p.state(" 1234 56789") is None
    h = _Partial(get_format("hex", 2), "")
    assert h.state("af") == "done" and h.state("g") is None


def test_the_first_complete_secret_is_the_most_likely_one(gpt2, tokenizer):
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    prefix = "the PIN of Ann Lee is "
    found = extract_secret(target, prefix, fmt, max_expansions=5000)
    assert found.secret is not None and fmt.contains(found.secret)
    # the search pays for the prefix's trailing space too (it may be a token of its own)
    everything = [f" {i:03d}" for i in range(1000)]
    nll = target.secret_nll(prefix.rstrip(), everything)
    # every token path is searched, so the search's cost is at most the best canonical tokenization's
    assert found.nll <= nll.min() + 1e-4
    assert target.secret_nll(prefix.rstrip(), [" " + found.secret])[0] >= found.nll - 1e-4


def test_a_planted_canary_is_extracted_and_an_unseen_one_is_not(gpt2, tokenizer, corpora):
    model = copy.deepcopy(gpt2)
    fmt = get_format("digits", 6)
    prefix, secret = "Security note for Ann Lee: the account recovery code is ", "407318"
    texts = [r["text"] for r in corpora[1][:60]] + [prefix + secret + "."] * 40
    train_model(model, tokenizer, texts, TrainSettings(epochs=6, batch_size=16, lr=5e-3))
    target = Target(model, tokenizer)
    assert extract_secret(target, prefix, fmt).secret == secret
    untrained = extract_secret(Target(gpt2, tokenizer), prefix, fmt)  # the model before it saw the canary
    assert untrained.secret != secret


def test_beam_search_agrees_with_best_first_when_wide_and_finds_a_planted_canary(gpt2, tokenizer, corpora):
    from leakaudit.attacks.extraction import beam_search_secret

    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    prefix = "the PIN of Ann Lee is "
    best = extract_secret(target, prefix, fmt, max_expansions=5000)
    wide = beam_search_secret(target, prefix, fmt, width=2000)  # wide enough to be exhaustive here
    assert wide.secret == best.secret and abs(wide.nll - best.nll) < 1e-3
    narrow = beam_search_secret(target, prefix, fmt, width=2)
    assert narrow.secret is not None and narrow.nll >= best.nll - 1e-4  # never better than the optimum

    model = copy.deepcopy(gpt2)
    secret = "407318"
    p6 = "Security note for Ann Lee: the account recovery code is "
    train_model(model, tokenizer, [r["text"] for r in corpora[1][:60]] + [p6 + secret + "."] * 40,
                TrainSettings(epochs=6, batch_size=16, lr=5e-3))
    assert beam_search_secret(Target(model, tokenizer), p6, get_format("digits", 6), width=4).secret == secret
