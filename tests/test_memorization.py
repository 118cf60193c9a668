"""Discoverable memorization and untargeted extraction on a model that memorised a few records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leakaudit.attacks.memorization import bleu4, discoverable_memorization, edit_similarity
from leakaudit.attacks.untargeted import NgramIndex, Samples, dedupe, precision_at, sample_texts, untargeted_extraction
from leakaudit.models import build_model
from leakaudit.models.target import Target
from leakaudit.models.tokenize import encode


@pytest.fixture(scope="module")
def memorised(corpora, tokenizer):
    """A tiny GPT-2 trained until it recites 8 private records (members); 8 others are held out."""
    private, _ = corpora
    members, non_members = private[:8], private[8:16]
    torch.manual_seed(0)
    model = build_model(tokenizer, arch="gpt2", n_layer=2, n_embd=64, n_head=2, context=256)
    enc = encode(tokenizer, [r["text"] for r in members])
    width = max(len(e.ids) for e in enc)
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return Target(model, tokenizer), members, non_members


def test_bleu_and_edit_similarity_known_values():
    assert bleu4([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert bleu4([9, 9, 9], [1, 2, 3]) == 0.0
    assert 0 < bleu4([1, 2, 3, 4, 9], [1, 2, 3, 4, 5]) < 1
    # brevity penalty: a correct but short candidate scores below 1
    assert bleu4([1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]) < 0.5
    assert edit_similarity([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert edit_similarity([1, 2, 3, 4], [1, 9, 3, 4]) == pytest.approx(0.75)
    assert edit_similarity([1, 2, 3, 4], [2, 3, 4]) == pytest.approx(0.75)  # one deletion
    assert edit_similarity([], []) == 1.0


def test_discoverable_memorization_finds_members_not_non_members(memorised):
    target, members, non_members = memorised
    rows = members + non_members
    result, table = discoverable_memorization(
        target, [r["id"] for r in rows], [r["text"] for r in rows], [True] * 8 + [False] * 8, k=8, n=16
    )
    assert result.members.n_records == 8 and result.non_members.n_records == 8
    assert result.members.exact_match_rate >= 0.75
    # a held-out record can still be completed from the shared template (hence the baseline)
    assert result.non_members.exact_match_rate <= 0.25
    assert result.members.token_match_mean > result.non_members.token_match_mean + 0.3
    lo, hi = result.members.exact_match_ci
    assert lo <= result.members.exact_match_rate <= hi
    assert set(table.columns) == {"id", "member", "exact", "token_match", "bleu", "edit_similarity"}
    # too-short records are skipped and counted
    result, _ = discoverable_memorization(target, ["a"], ["Hi."], [True], k=8, n=16)
    assert result.skipped_short == 1 and result.members.n_records == 0


def test_memorization_past_the_model_context_is_refused_naming_k_and_n(tokenizer, corpora):
    from leakaudit.errors import LeakauditError

    model = build_model(tokenizer, arch="gpt2", n_layer=1, n_embd=16, n_head=2, context=64).eval()
    texts = [r["text"] * 4 for r in corpora[0][:4]]  # long enough for 40 + 32 tokens
    with pytest.raises(LeakauditError, match=r"^memorization 40:32 \(k:n\): prompts of 41 tokens and 32 new "):
        discoverable_memorization(Target(model, tokenizer), ["a", "b", "c", "d"], texts, [True, True, False, False],
                                  k=40, n=32)
    result, _ = discoverable_memorization(Target(model, tokenizer), ["a", "b", "c", "d"], texts,
                                          [True, True, False, False], k=16, n=16)
    assert result.members.n_records == 2 and result.non_members.n_records == 2


def test_sampling_past_the_model_context_is_refused_before_any_sample_is_drawn(tokenizer, corpora, monkeypatch):
    from leakaudit.attacks import untargeted
    from leakaudit.errors import LeakauditError

    model = build_model(tokenizer, arch="gpt2", n_layer=1, n_embd=16, n_head=2, context=32).eval()
    calls = []
    monkeypatch.setattr(untargeted, "generate", lambda *a, **k: calls.append(a))
    # BOS prompts fit 31 new tokens; public prompts (1 + 5 to 10 tokens) do not
    with pytest.raises(LeakauditError, match=r"^untargeted sampling, sample_tokens 31: prompts of \d+ tokens"):
        sample_texts(Target(model, tokenizer), 9, length=31, public_texts=[r["text"] for r in corpora[1][:20]])
    assert calls == []


def test_ngram_index_lookup_and_dedupe():
    idx = NgramIndex([[1, 2, 3, 4, 5], [7, 8, 9]], 3)
    assert len(idx) == 4
    np.testing.assert_array_equal(idx.lookup([0, 2, 3, 4, 7, 8, 9]), [-1, 0, -1, -1, 1])
    assert idx.lookup([1, 2]).size == 0
    kept = dedupe([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [9, 8, 7, 6]])
    np.testing.assert_array_equal(kept, [0, 2])  # the second shares 2 of its 3 trigrams with the first
    assert precision_at(np.array([1, 0, 1, 0], bool), np.array([4.0, 3.0, 2.0, 1.0]), [1, 2, 10]) == {
        "1": 1.0, "2": 0.5, "4": 0.5
    }


def test_untargeted_extraction_verifies_memorised_samples(memorised, corpora):
    target, members, non_members = memorised
    _, public = corpora
    samples = sample_texts(target, 48, length=24, public_texts=[r["text"] for r in public[:50]], seed=0)
    assert sorted(set(samples.strategy)) == ["public_prompt", "temperature_decay", "top_k"]
    again = sample_texts(target, 48, length=24, public_texts=[r["text"] for r in public[:50]], seed=0)
    assert again.new == samples.new
    summary, table = untargeted_extraction(
        target, samples, [r["text"] for r in members], public_texts=[r["text"] for r in public],
        non_member_texts=[r["text"] for r in non_members], reference=None, ngram=12, ks=(5, 10),
    )
    assert summary.n_samples == 48 and 0 < summary.n_unique <= 48
    assert summary.n_memorized >= 1 and summary.n_training_records_reproduced >= 1
    assert summary.n_non_member_matches == 0
    assert summary.precision_at_k["perplexity"]["5"] > summary.baseline_precision_at_k["perplexity"]["5"]
    assert {"perplexity", "zlib", "lowercase", "window"} <= set(summary.precision_at_k)
    assert "text" not in table.columns
    dumped = summary.model_dump_json()
    assert not any(r["text"][:20] in dumped for r in members)


def test_records_written_checks_every_record_alike_whichever_side():
    """A record is written out when some kept sample holds one of its non-public n-grams that the sample wrote:
    text two records share counts for both, public text and text inside a prompt for neither."""
    from leakaudit.attacks.untargeted import records_written

    template, mine, theirs, public_text = [1, 2, 3, 4], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43]
    records = [template + [7], mine, template + [9], theirs, public_text, [50, 51, 52, 53]]
    samples = Samples(prompts=[[1], [20], [40], [50, 51, 52], [30]],
                      new=[[2, 3, 4], [21, 22, 23], [41, 42, 43], [60, 61], [31, 32, 33]],
                      strategy=["bos"] * 5)
    public = NgramIndex([public_text], 3)
    kept = [0, 1, 2, 3]  # the last sample was dropped as a near duplicate: it does not count
    table = records_written(samples, kept, records, 3, public)
    # both records sharing the template; mine; not theirs (only the dropped sample wrote it); not the public
    # text; not the record whose n-gram lay inside the prompt ([50, 51, 52] with 60 after it)
    np.testing.assert_array_equal(table["written"], [True, True, True, False, False, False])
    np.testing.assert_array_equal(records_written(samples, [0, 1, 2, 3, 4], records, 3, public)["written"],
                                  [True, True, True, True, False, False])
    # each record's trigrams and those the public corpus holds: the public text alone has no other
    np.testing.assert_array_equal(table["ngrams"], [3, 2, 3, 2, 2, 2])
    np.testing.assert_array_equal(table["public_ngrams"], [0, 0, 0, 0, 2, 0])
    assert records_written(samples, kept, records, 3)["public_ngrams"].sum() == 0  # no public corpus


def test_public_skew_warning_only_when_the_public_corpus_covers_held_out_text_more():
    from leakaudit.attacks.untargeted import public_skew_warning

    rng = np.random.default_rng(0)
    ngrams = rng.integers(40, 60, size=400)
    member = np.arange(400) < 200

    def shares(member_share, held_share):
        return rng.binomial(ngrams, np.where(member, member_share, held_share)) / ngrams

    assert public_skew_warning(shares(0.1, 0.1), member) is None  # alike on both sides
    assert public_skew_warning(shares(0.3, 0.1), member) is None  # members covered more: hides leaks, no warning
    w = public_skew_warning(shares(0.1, 0.3), member, "person")
    assert w is not None and "30% of a held-out person's token n-grams" in w and "10% of a training person's" in w
    few = np.array([0, 1, 200, 201])
    assert public_skew_warning(shares(0.1, 0.3)[few], member[few]) is None  # four units: too few to tell
    assert public_skew_warning(np.array([0.5]), np.array([False])) is None  # no member unit


def test_the_audit_checks_public_coverage_over_tested_records_and_people(tmp_path):
    """The bias check looks at the records the test keeps (not those left out) and, under a per-person split,
    at people: a few people whose records are alike are not hundreds of independent records."""
    import pandas as pd

    from leakaudit.audit import _public_skew

    f = tmp_path / "untargeted_records.parquet"
    member = [True] * 90 + [False] * 90
    share = [0.1] * 90 + [0.3] * 90  # three held-out people of 30 alike records, more covered
    ids = [str(i) for i in range(180)]
    table = pd.DataFrame({"id": ids, "member": member, "written": False, "testable": True, "ngrams": 100,
                          "public_ngrams": [round(100 * x) for x in share]})
    table.to_parquet(f)
    assert len(_public_skew(f, None)) == 1  # as records: 90 against 90, p far below 0.001
    person = {(i, m): f"{'m' if m else 'n'}{int(i) // 30}" for i, m in zip(ids, member)}
    assert _public_skew(f, person) == []  # as people: 3 against 3, p >= 0.05 at best
    # held-out records wholly public are left out of the test, and of the check
    table.assign(public_ngrams=[10] * 90 + [10] * 60 + [100] * 30,
                 testable=[True] * 150 + [False] * 30).to_parquet(f)
    assert _public_skew(f, None) == []
    table.drop(columns=["ngrams", "public_ngrams"]).to_parquet(f)  # a table of an earlier version
    assert _public_skew(f, None) == [] and _public_skew(None, None) == []


def test_untargeted_extraction_counts_records_written_on_each_side(memorised, corpora):
    target, members, non_members = memorised
    samples = sample_texts(target, 32, length=24, seed=1)
    per_record: list[dict] = []
    summary, _ = untargeted_extraction(
        target, samples, [r["text"] for r in members], non_member_texts=[r["text"] for r in non_members],
        member_texts=[r["text"] for r in members], per_record=per_record, ngram=12,
    )
    found = [r["written"] for r in per_record]
    assert len(found) == len(members) + len(non_members) and all(r["testable"] for r in per_record)
    assert summary.n_member_records == len(members) and summary.n_held_out_records == len(non_members)
    assert summary.n_member_records_untestable == summary.n_held_out_records_untestable == 0
    assert summary.n_member_records_written == sum(found[: len(members)]) >= 1  # a memorised model writes them
    assert summary.n_held_out_records_written == sum(found[len(members):])
    assert all(r["ngrams"] > 0 and r["public_ngrams"] == 0 for r in per_record)  # no public corpus
    bare, _ = untargeted_extraction(target, samples, [r["text"] for r in members], ngram=12)
    assert bare.n_member_records is None  # no records given: no counts


def test_held_out_records_in_the_public_corpus_are_left_out_and_warned_about(memorised):
    """A public corpus holding the held-out records (non-members taken from a public dataset, that dataset
    given as --public): their text can never count as written out, so they leave the test."""
    target, members, non_members = memorised
    samples = sample_texts(target, 32, length=24, seed=1)
    held = [r["text"] for r in non_members]
    per_record: list[dict] = []
    summary, _ = untargeted_extraction(
        target, samples, [r["text"] for r in members], public_texts=held, non_member_texts=held,
        member_texts=[r["text"] for r in members], per_record=per_record, ngram=12,
    )
    assert summary.n_held_out_records == 0 and summary.n_held_out_records_untestable == len(non_members)
    assert summary.n_member_records + summary.n_member_records_untestable == len(members)
    assert [r["testable"] for r in per_record[len(members):]] == [False] * len(non_members)
    assert all(r["public_ngrams"] == r["ngrams"] for r in per_record[len(members):])


def test_verification_ignores_ngrams_inside_the_prompt(memorised):
    target, members, _ = memorised
    ids = encode(target.tokenizer, [members[0]["text"]])[0].ids
    # a prompt copied from a training record followed by unrelated tokens is not an extraction
    junk = [target.pad_id] * 12
    samples = Samples(prompts=[ids[:30]], new=[junk], strategy=["public_prompt"])
    summary, _ = untargeted_extraction(target, samples, [members[0]["text"]], ngram=8)
    assert summary.n_memorized == 0


def test_template_text_shared_by_members_and_non_members_counts_on_both_sides():
    """The baseline is the same test against held-out records: a sample of text that both sides share
    (a template) is a training match and a held-out match alike, not a leak beyond the baseline."""
    from leakaudit.attacks.untargeted import verify

    template, member_only, held_only = [1, 2, 3, 4, 5, 6], [20, 21, 22, 23], [30, 31, 32, 33]
    train = NgramIndex([template + [7, 8], member_only], 3)
    held = NgramIndex([template + [9, 9], held_only], 3)
    samples = Samples(prompts=[[1], [20], [30]], new=[[2, 3, 4, 5], [21, 22, 23], [31, 32, 33]],
                      strategy=["bos"] * 3)
    got = verify(samples, train, non_members=held)
    assert got["memorized"].tolist() == [True, True, False]
    assert got["non_member_match"].tolist() == [True, False, True]


def test_the_audits_rate_test_relabels_people_and_survives_ids_numbered_alike_on_both_sides(tmp_path):
    """A members' file and a non-members' file may both number their records 0..n-1: the per-record tables are
    keyed by (id, side), never by id alone (which merged a member with a non-member and failed the audit)."""
    import pandas as pd

    from leakaudit.audit import AuditOptions, _rates_test
    from leakaudit.errors import LeakauditError

    ids = [str(i) for i in range(40)] * 2
    member = [True] * 40 + [False] * 40
    exact = [i < 12 for i in range(40)] + [False] * 40  # members 0..11 completed, no held-out record
    f = tmp_path / "memorization-k8-n8.parquet"
    pd.DataFrame({"id": ids, "member": member, "exact": exact}).to_parquet(f)
    opts = AuditOptions(permutations=999)

    def outcomes(rows):
        return {"exact": rows["exact"].to_numpy(float)}

    by_records = _rates_test(f, outcomes, None, opts)
    assert by_records.unit == "record" and by_records.p_values["exact"] < 1e-3
    # people of four records each: 3 of 10 member people completed against 0 of 10: a weak signal
    person = {(i, m): f"{'m' if m else 'n'}{int(i) // 4}" for i, m in zip(ids, member)}
    by_people = _rates_test(f, outcomes, person, opts)
    # exact: the 3 completed people all among the 10 drawn of 20, C(17, 7) / C(20, 10) = 0.105
    assert by_people.unit == "user" and by_people.p_values["exact"] == pytest.approx(0.105, abs=0.03)
    with pytest.raises(LeakauditError, match="absent from the score table"):
        _rates_test(f, outcomes, {k: v for k, v in list(person.items())[1:]}, opts)
    assert _rates_test(tmp_path / "missing.parquet", outcomes, None, opts) is None
    # rows marked untestable are left out: here every completed member, leaving nothing to find
    pd.DataFrame({"id": ids, "member": member, "exact": exact,
                  "testable": [not e for e in exact]}).to_parquet(f)
    assert _rates_test(f, outcomes, None, opts).p_values["exact"] == 1.0


def _dedupe_by_definition(samples, threshold):
    """Keep a sample unless an earlier kept one holds more than ``threshold`` of its distinct trigrams."""
    kept, grams = [], []
    for i, s in enumerate(samples):
        g = {tuple(s[j: j + 3]) for j in range(len(s) - 2)}
        if g and not any(len(g & grams[k]) > threshold * len(g) for k in kept):
            kept.append(i)
        grams.append(g)
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_dedupe_equals_its_definition_on_overlapping_samples(seed):
    """The prefix-filtered search keeps exactly the samples the pairwise definition keeps: copies, partial
    copies, repeats within a sample, short and empty samples, a small vocabulary sharing many trigrams."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(300):
        kind = rng.integers(0, 5)
        if kind == 0 and samples:  # an earlier sample with some tokens changed
            s = list(samples[rng.integers(0, len(samples))])
            for j in rng.integers(0, max(len(s), 1), size=rng.integers(0, 6)):
                if s:
                    s[j] = int(rng.integers(0, 8))
        elif kind == 1 and samples:  # part of an earlier sample, then new tokens
            s = list(samples[rng.integers(0, len(samples))])
            s = s[: rng.integers(0, len(s) + 1)] + rng.integers(0, 8, size=rng.integers(0, 20)).tolist()
        elif kind == 2:  # short: fewer than three tokens has no trigram
            s = rng.integers(0, 8, size=rng.integers(0, 4)).tolist()
        else:
            s = rng.integers(0, 8, size=rng.integers(3, 40)).tolist()
        samples.append(s)
    for threshold in (0.0, 0.25, 0.5, 0.8, 1.0):
        np.testing.assert_array_equal(dedupe(samples, threshold), _dedupe_by_definition(samples, threshold))


def test_dedupe_of_copies_and_padded_samples_equals_its_definition():
    """Samples as a memorising model that stops early writes them: many near-copies of one text, padding."""
    rng = np.random.default_rng(3)
    text = rng.integers(0, 1000, 60).tolist()
    samples = []
    for i in range(240):
        s = list(text) if i % 2 else rng.integers(0, 1000, rng.integers(0, 20)).tolist() + [7] * 40
        s[rng.integers(0, len(s))] = int(rng.integers(0, 1000))
        samples.append(s)
    np.testing.assert_array_equal(dedupe(samples), _dedupe_by_definition(samples, 0.5))
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        dedupe(samples, float("nan"))


def test_ngram_hashes_of_many_sequences_equal_each_one_hashed_alone():
    from leakaudit.attacks.untargeted import ngram_hashes

    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 50_000, size=k).tolist() for k in (0, 1, 5, 6, 40, 2, 17)]
    h, owner = ngram_hashes(seqs, 5)
    for i, s in enumerate(seqs):
        alone = np.array([NgramIndex([s[j: j + 5]], 5)._h[0] for j in range(len(s) - 4)], dtype=np.uint64)
        np.testing.assert_array_equal(h[owner == i], alone)
    assert owner.tolist() == sorted(owner.tolist())
    with pytest.raises(ValueError, match="n must be"):
        ngram_hashes(seqs, 0)


def test_verify_equals_a_per_sample_check():
    """Each sample's flags and first matched document, against sets of n-gram tuples built sample by sample."""
    from leakaudit.attacks.untargeted import verify

    rng = np.random.default_rng(2)
    train_docs = [rng.integers(0, 6, size=30).tolist() for _ in range(20)]
    held_docs = [rng.integers(0, 6, size=30).tolist() for _ in range(20)]
    public_docs = [rng.integers(0, 6, size=30).tolist() for _ in range(5)]
    prompts = [rng.integers(0, 6, size=rng.integers(1, 6)).tolist() for _ in range(60)]
    new = [rng.integers(0, 6, size=rng.integers(0, 25)).tolist() for _ in range(60)]
    samples = Samples(prompts, new, ["top_k"] * 60)
    n = 4
    got = verify(samples, NgramIndex(train_docs, n), public=NgramIndex(public_docs, n),
                 non_members=NgramIndex(held_docs, n))

    def grams(s):
        return [tuple(s[j: j + n]) for j in range(len(s) - n + 1)]

    first_doc = {}
    for d, doc in enumerate(train_docs):
        for g in grams(doc):
            first_doc.setdefault(g, d)
    pub = {g for doc in public_docs for g in grams(doc)}
    held = {g for doc in held_docs for g in grams(doc)}
    for i, (p, g) in enumerate(zip(prompts, new)):
        mine = grams(p[-(n - 1):] + g)
        private = [x for x in mine if x in first_doc and x not in pub]
        assert got.memorized[i] == bool(private)
        assert got.train_doc[i] == (first_doc[private[0]] if private else -1)
        assert got.in_public[i] == any(x in pub for x in mine)
        assert got.non_member_match[i] == any(x in held and x not in pub for x in mine)
    assert got.memorized.any() and (~got.memorized).any() and got.non_member_match.any()
