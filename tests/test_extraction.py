"""Canary extraction by best-first search: format constraints, optimality, a planted canary, the ranked
guesses (known answers from a stand-in model whose distribution the test sets) and the audit's record."""

import copy
import heapq
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from leakaudit.attacks.extraction import Extraction, _Partial, _setup, beam_search_secret, extract_secret
from leakaudit.audit import extraction_fields
from leakaudit.canaries import get_format
from leakaudit.canaries.manifest import Canary, CanaryManifest
from leakaudit.canaries.spec import load_spec
from leakaudit.io import sha256_text
from leakaudit.models import Target
from leakaudit.models.tokenize import encode
from leakaudit.train import TrainSettings, train_model

TINY_SPEC = Path(__file__).parent / "data" / "canaries_tiny.yaml"


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


def _planted(gpt2, tokenizer, corpora):
    """A copy of the tiny model trained on a canary repeated 40 times: (model, target, fmt, prefix, secret)."""
    model = copy.deepcopy(gpt2)
    fmt = get_format("digits", 6)
    prefix, secret = "Security note for Ann Lee: the account recovery code is ", "407318"
    texts = [r["text"] for r in corpora[1][:60]] + [prefix + secret + "."] * 40
    train_model(model, tokenizer, texts, TrainSettings(epochs=6, batch_size=16, lr=5e-3))
    return model, Target(model, tokenizer), fmt, prefix, secret


def test_a_planted_canary_is_extracted_and_an_unseen_one_is_not(gpt2, tokenizer, corpora):
    model, target, fmt, prefix, secret = _planted(gpt2, tokenizer, corpora)
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


# --------------------------------------------------------------------------- ranked guesses


class _TableLM(torch.nn.Module):
    """A stand-in causal LM that spells the strings of ``weights`` with known probabilities.

    After the context (its first ``n_context`` ids), the next token ``t`` of the text ``x`` generated
    so far gets probability proportional to ``EPS + sum of the weights of the strings that begin with
    x + t``, over the ``allowed`` token ids (every other token: negligible).  With single-character
    tokens the product telescopes: a string of the table costs ``-log(weight / total weight)``.
    """

    EPS = 1e-9

    def __init__(self, tokenizer, n_context: int, weights: dict[str, float], allowed: list[int]):
        super().__init__()
        self.strings = [tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in range(len(tokenizer))]
        self.n_context, self.weights, self.allowed = n_context, weights, allowed
        self.calls = 0

    def logprobs(self, text: str) -> dict[int, float]:
        mass = {t: self.EPS + sum(w for s, w in self.weights.items() if s.startswith(text + self.strings[t]))
                for t in self.allowed}
        total = sum(mass.values())
        return {t: math.log(m / total) for t, m in mass.items()}

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        b, width = input_ids.shape
        logits = torch.full((b, width, len(self.strings)), -60.0)
        ends = attention_mask.sum(1).tolist() if attention_mask is not None else [width] * b
        for row, end in enumerate(ends):
            text = "".join(self.strings[i] for i in input_ids[row, self.n_context : end].tolist())
            for t, lp in self.logprobs(text).items():
                logits[row, end - 1, t] = lp
        return SimpleNamespace(logits=logits)


def _stand_in(tokenizer, prefix: str, weights: dict[str, float], *, multi: tuple[str, ...] = ()):
    """A Target-like object over :class:`_TableLM`: single characters allowed, plus the tokens ``multi``."""
    chars = set("0123456789 ")
    strings = [tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in range(len(tokenizer))]
    allowed = [t for t, s in enumerate(strings) if s and set(s) <= chars and (len(s) == 1 or s in multi)]
    assert {strings[t] for t in allowed} >= {" ", "0", "9", *multi}  # the fixture's tokenizer has them
    n_context = len(encode(tokenizer, [prefix.rstrip()])[0].ids)
    model = _TableLM(tokenizer, n_context, weights, allowed)
    return SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"), pad_id=tokenizer.pad_token_id)


PIN = "the PIN of Ann Lee is "
WEIGHTS = {" 42": 0.5, " 07": 0.3, " 13": 0.15}  # the rest of the mass (0.05) is spread thinly by EPS


def test_guesses_come_in_the_model_s_order_with_their_costs(tokenizer):
    target = _stand_in(tokenizer, PIN, WEIGHTS)
    fmt = get_format("digits", 2)
    found = extract_secret(target, PIN, fmt, max_expansions=500, guesses=3)
    assert found.guesses == ("42", "07", "13")
    total = sum(WEIGHTS.values())
    expected = [-math.log(w / total) for w in WEIGHTS.values()]
    assert all(abs(a - b) < 1e-5 for a, b in zip(found.guess_nlls, expected))
    assert (found.secret, found.nll) == (found.guesses[0], found.guess_nlls[0])
    # the first guess costs 3 passes (context, " ", " 4"); the next two, one pass each (" 0", " 1")
    assert found.expansions == 3 and found.total_expansions == 5
    one = extract_secret(target, PIN, fmt, max_expansions=500)
    assert one.guesses == ("42",) and one.expansions == one.total_expansions == 3
    # the budget ends the search, but a complete secret already at the top of the queue still pops (no pass):
    # the 4th pass finds " 07", cheaper than the open " 1", so it counts; " 13" would need a 5th pass
    assert extract_secret(target, PIN, fmt, max_expansions=4, guesses=3).guesses == ("42", "07")
    assert extract_secret(target, PIN, fmt, max_expansions=3, guesses=3).guesses == ("42",)
    short = extract_secret(target, PIN, fmt, max_expansions=5, guesses=3)
    assert short.guesses == ("42", "07", "13") and short.total_expansions == 5  # " 13" popped free
    assert extract_secret(target, PIN, fmt, max_expansions=2, guesses=3) == Extraction(None, None, 2, (), (), 2)


def _path_cost(target, prefix: str, tokens: list[str]) -> float:
    """-log p of a token path under the stand-in model."""
    text, cost = "", 0.0
    ids = {s: t for t, s in enumerate(target.model.strings) if t in target.model.allowed}
    for s in tokens:
        cost -= target.model.logprobs(text)[ids[s]]
        text += s
    return cost


def test_a_secret_reached_by_two_token_paths_is_one_guess(tokenizer):
    # " 4" is a token of its own: " 42" is spelt " " "4" "2" and " 4" "2", both likelier than " 07"
    target = _stand_in(tokenizer, PIN, WEIGHTS, multi=(" 4",))
    fmt = get_format("digits", 2)
    split, merged = _path_cost(target, PIN, [" ", "4", "2"]), _path_cost(target, PIN, [" 4", "2"])
    second = _path_cost(target, PIN, [" ", "0", "7"])
    assert max(split, merged) < second  # so both paths are popped before the second secret
    found = extract_secret(target, PIN, fmt, max_expansions=500, guesses=3)
    assert found.guesses == ("42", "07", "13")
    assert abs(found.guess_nlls[0] - min(split, merged)) < 1e-6  # float32 logits
    beam = beam_search_secret(target, PIN, fmt, width=50, guesses=3)
    assert beam.guesses == ("42", "07", "13")
    assert all(abs(a - b) < 1e-6 for a, b in zip(beam.guess_nlls, found.guess_nlls))


def test_guesses_must_be_positive(tokenizer):
    target = _stand_in(tokenizer, PIN, WEIGHTS)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="^guesses must be a positive integer"):
            extract_secret(target, PIN, get_format("digits", 2), guesses=bad)
    with pytest.raises(ValueError, match="^guesses must be a positive integer"):
        beam_search_secret(target, PIN, get_format("digits", 2), guesses=0)


def _first_secret_only(target, prefix, fmt, max_expansions):
    """The search as it was before guesses: stop at the first complete secret popped."""
    base, lead, partial, tok_ids, tok_strs = _setup(target, prefix, fmt)
    heap, expansions = [(0.0, "", ())], 0
    while heap and expansions < max_expansions:
        cost, text, path = heapq.heappop(heap)
        if text and partial.state(text) == "done":
            return text[len(lead):], cost, expansions
        expansions += 1
        logits = target.model(input_ids=torch.tensor([base + list(path)])).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)[torch.as_tensor(tok_ids)].detach().numpy()
        for tid, s, lp in zip(tok_ids, tok_strs, logp):
            if partial.state(text + s) is not None:
                heapq.heappush(heap, (cost - float(lp), text + s, path + (int(tid),)))
    return None, None, expansions


def test_one_guess_is_the_search_as_before_and_more_guesses_keep_the_first(gpt2, tokenizer):
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    for budget in (3, 40, 5000):
        old = _first_secret_only(target, PIN, fmt, budget)
        one = extract_secret(target, PIN, fmt, max_expansions=budget)
        assert (one.secret, one.nll, one.expansions) == old
        assert one.total_expansions == old[2] and one.guesses == (() if old[0] is None else (old[0],))
        many = extract_secret(target, PIN, fmt, max_expansions=budget, guesses=10)
        assert (many.secret, many.nll, many.expansions) == old
        assert many.total_expansions >= one.total_expansions
    assert old[0] is not None and len(many.guesses) == 10


def test_the_k_th_guess_is_the_rank_k_secret(gpt2, tokenizer):
    """Against every secret of the space: no secret outside the guesses is likelier than the last guess."""
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    found = extract_secret(target, PIN, fmt, max_expansions=5000, guesses=10)
    assert len(set(found.guesses)) == 10 and list(found.guess_nlls) == sorted(found.guess_nlls)
    everything = [f"{i:03d}" for i in range(1000)]
    nll = dict(zip(everything, target.secret_nll(PIN.rstrip(), [" " + s for s in everything])))
    # a secret's cost is that of its cheapest token path: never above its canonical tokenization's NLL
    assert all(c <= nll[s] + 1e-4 for s, c in zip(found.guesses, found.guess_nlls))
    outside = min(v for s, v in nll.items() if s not in found.guesses)
    assert outside >= found.guess_nlls[-1] - 1e-4


def test_beam_guesses_are_sorted_distinct_and_one_guess_is_unchanged(gpt2, tokenizer):
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    best = extract_secret(target, PIN, fmt, max_expansions=5000, guesses=5)
    wide = beam_search_secret(target, PIN, fmt, width=2000, guesses=5)  # exhaustive here
    assert wide.guesses == best.guesses
    assert all(abs(a - b) < 1e-3 for a, b in zip(wide.guess_nlls, best.guess_nlls))
    one = beam_search_secret(target, PIN, fmt, width=4)
    assert one.guesses == (one.secret,) and one.secret == beam_search_secret(target, PIN, fmt, width=4,
                                                                             guesses=3).secret


# --------------------------------------------------------------------------- the audit's record


CODE = "Security note for {}: the account recovery code is "


def _manifest() -> CanaryManifest:
    def canary(i: str, name: str, secret: str, reps: int) -> Canary:
        return Canary(id=i, prefix=CODE.format(name), secret=secret, suffix=".", repetitions=reps,
                      inserted=reps > 0, sha256=sha256_text(CODE.format(name) + secret + "."))

    canaries = [canary("a", "Vanessa Harris", "111111", 32), canary("b", "Katie Haynes", "222222", 32),
                canary("r", "Ann Lee", "333333", 0)]
    return CanaryManifest(spec=load_spec(TINY_SPEC), space_size=10**6, canaries=canaries)


def _search(tokenizer, canary: Canary, weights: dict[str, float], budget: int = 500) -> Extraction:
    target = _stand_in(tokenizer, canary.prefix, weights)
    return extract_secret(target, canary.prefix, get_format("digits", 6), max_expansions=budget, guesses=10)


def test_audit_record_gives_the_guess_and_another_canary_s_secret_first(tokenizer):
    m = _manifest()
    a, b, r = m.canaries
    prefers_b = {" 222222": 0.6, " 111111": 0.3, " 333333": 0.1}
    fields = extraction_fields(_search(tokenizer, a, prefers_b), a, m, 10)
    assert fields == {"extracted": False, "extraction_expansions": 7, "extraction_guesses": 10,
                      "extraction_guesses_found": 10, "extraction_guess": 2, "extraction_first_guess_inserted": True}
    # b's own secret first: extracted, no other canary's secret
    fields = extraction_fields(_search(tokenizer, b, prefers_b), b, m, 10)
    assert (fields["extracted"], fields["extraction_guess"], fields["extraction_first_guess_inserted"]) == (
        True, 1, False)
    # a reference canary whose search gives an inserted canary's secret first: that is a leak too
    fields = extraction_fields(_search(tokenizer, r, prefers_b), r, m, 10)
    assert (fields["extracted"], fields["extraction_guess"], fields["extraction_first_guess_inserted"]) == (
        False, 3, True)
    # a reference canary's secret first is not an inserted one
    prefers_r = {" 333333": 0.6, " 111111": 0.4}
    fields = extraction_fields(_search(tokenizer, a, prefers_r), a, m, 10)
    assert (fields["extraction_guess"], fields["extraction_first_guess_inserted"]) == (2, False)
    # the own secret beyond the guesses found within the budget (7 passes reach the first only)
    fields = extraction_fields(_search(tokenizer, a, prefers_b, budget=9), a, m, 10)
    assert (fields["extracted"], fields["extraction_guess"], fields["extraction_first_guess_inserted"]) == (
        False, None, True) and fields["extraction_guesses_found"] == 1
    # nothing found at all: no first guess, so "another's secret first" is not measured (None), not "no"
    fields = extraction_fields(_search(tokenizer, a, prefers_b, budget=3), a, m, 10)
    assert (fields["extracted"], fields["extraction_guess"], fields["extraction_first_guess_inserted"]) == (
        False, None, None) and fields["extraction_guesses_found"] == 0


def test_audit_record_holds_no_secret(tokenizer):
    m = _manifest()
    a = m.canaries[0]
    fields = extraction_fields(_search(tokenizer, a, {" 222222": 0.6, " 111111": 0.4}), a, m, 10)
    assert all(isinstance(v, (bool, int)) or v is None for v in fields.values())
    assert not any(c.secret in str(fields) for c in m.canaries)


def test_search_works_with_a_sentencepiece_style_tokenizer(corpora):
    """Metaspace decoders drop a token's leading space when it starts the text: decoded alone, no token could
    spell the space before the secret and the search found nothing. Decoded after a context, ``▁4`` is " 4"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from leakaudit.attacks.extraction import _candidate_tokens

    texts = [r["text"] for r in corpora[1]] + [f"the PIN of Ann Lee is {i:02d}" for i in range(100)]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "<unk>"]))
    sp = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="<s>", pad_token="<pad>",
                                 unk_token="<unk>")
    assert sp.decode([sp.convert_tokens_to_ids("▁4")]) == "4"  # the leading space is gone when decoded alone
    fmt = get_format("digits", 2)
    ids, strings = _candidate_tokens(SimpleNamespace(tokenizer=sp), fmt, " ")
    assert " 4" in strings and "2" in strings
    # a stand-in model spelling " 42" (p 0.5), " 07" (0.3), " 13" (0.15) over those tokens, as they read in context
    model = _TableLM(sp, len(encode(sp, [PIN.rstrip()])[0].ids), WEIGHTS, ids.tolist())
    in_context = dict(zip(ids.tolist(), strings))
    model.strings = [in_context.get(t, "\x00") for t in range(len(sp))]
    target = SimpleNamespace(model=model, tokenizer=sp, device=torch.device("cpu"), pad_id=sp.pad_token_id)
    assert extract_secret(target, PIN, fmt, max_expansions=500, guesses=3).guesses == ("42", "07", "13")


def test_looking_ahead_batches_the_passes_without_changing_what_is_found(gpt2, tokenizer):
    """The same expansions, guesses and costs whatever the lookahead; fewer forward passes with it."""
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    prefix = "the PIN of Ann Lee is "
    calls = []
    forward = gpt2.forward

    def counting(*a, **kw):
        calls.append(1)
        return forward(*a, **kw)

    gpt2.forward = counting
    try:
        for budget, guesses in ((7, 3), (60, 5), (400, 12)):
            runs = {}
            for la in (1, 3, 16):
                calls.clear()
                runs[la] = (extract_secret(target, prefix, fmt, max_expansions=budget, guesses=guesses,
                                           lookahead=la), len(calls))
            one, passes_one = runs[1]
            assert passes_one == one.total_expansions  # one pass a node without lookahead
            for la in (3, 16):
                found, passes = runs[la]
                assert (found.secret, found.guesses, found.expansions, found.total_expansions) == (
                    one.secret, one.guesses, one.expansions, one.total_expansions), (budget, la)
                np.testing.assert_allclose(found.guess_nlls, one.guess_nlls, rtol=1e-5, atol=1e-5)
                assert passes < passes_one or passes_one <= 1, (budget, la, passes, passes_one)
    finally:
        del gpt2.forward
    with pytest.raises(ValueError, match="lookahead"):
        extract_secret(target, prefix, fmt, lookahead=0)


def test_looking_ahead_computes_few_distributions_the_search_does_not_use(gpt2, tokenizer, corpora):
    """A memorized canary: the search walks straight to it, and the siblings computed ahead are never
    expanded; at most lookahead - 1 of them are ever waiting, so the extra rows stay below that."""
    model, target, fmt, prefix, secret = _planted(gpt2, tokenizer, corpora)
    rows = []
    forward = model.forward

    def counting(*a, **kw):
        rows.append(int(kw["input_ids"].shape[0]))
        return forward(*a, **kw)

    model.forward = counting
    for budget in (7, 40, 200):
        rows.clear()
        one = extract_secret(target, prefix, fmt, max_expansions=budget, guesses=3, lookahead=1)
        rows_one = list(rows)
        rows.clear()
        ahead = extract_secret(target, prefix, fmt, max_expansions=budget, guesses=3, lookahead=16)
        assert ahead == one or (ahead.guesses == one.guesses and ahead.total_expansions == one.total_expansions)
        assert sum(rows_one) == one.total_expansions <= budget
        assert sum(rows) <= one.total_expansions + 15 and len(rows) <= len(rows_one), (budget, rows, rows_one)
    assert one.secret == secret


def test_candidate_tokens_are_decoded_once_per_tokenizer_format_and_lead(gpt2, tokenizer, monkeypatch):
    from leakaudit.attacks import extraction as ex

    decoded = []
    real = ex._decode_candidates
    monkeypatch.setattr(ex, "_decode_candidates", lambda *a: decoded.append(a[1:]) or real(*a))
    monkeypatch.setattr(ex, "_CANDIDATES", ex.weakref.WeakKeyDictionary())
    target = Target(gpt2, tokenizer)
    fmt = get_format("digits", 3)
    first = extract_secret(target, "the PIN of Ann Lee is ", fmt, max_expansions=20)
    again = extract_secret(target, "the PIN of Bo Park is ", fmt, max_expansions=20)  # same format and lead
    beam_search_secret(target, "the PIN of Ann Lee is ", fmt, width=4)
    assert decoded == [(fmt, " ")] and first.total_expansions == again.total_expansions == 20
    ids, strings = ex._candidate_tokens(target, fmt, " ")
    ids[:] = -1  # a caller changing its copy leaves the memo alone
    strings.clear()
    assert (ex._candidate_tokens(target, fmt, " ")[0] >= 0).all() and ex._candidate_tokens(target, fmt, " ")[1]
    extract_secret(target, "the PIN of Ann Lee is", fmt, max_expansions=5)  # no trailing space: another lead
    ex._candidate_tokens(target, get_format("digits", 4), " ")  # another format
    assert decoded == [(fmt, " "), (fmt, ""), (get_format("digits", 4), " ")]
