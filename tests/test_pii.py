"""PII detection, extraction and reconstruction (leakaudit.attacks.pii): known-answer tests."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from leakaudit.attacks.pii import (
    PII_TYPES,
    PIIDetector,
    PIIExtraction,
    PIIMatch,
    detect_pii,
    iban_valid,
    luhn_valid,
    normalise,
    pii_extraction,
    pii_extraction_values,
    pii_reconstruction,
    ssn_valid,
    training_pii,
)
from leakaudit.data import make_corpora
from leakaudit.models.target import Target


def _found(text: str, pii_type: str, **kw) -> list[str]:
    return [m.value for m in detect_pii(text, **kw) if m.type == pii_type]


# -- detectors -------------------------------------------------------------------------------------

VALID = {
    "email": ["first.last12@mail.com", "a_b+tag@sub.example.org", "X.Y@Inbox.NET"],
    "phone": [
        "(415) 555-0123",
        "415-555-0123",
        "415.555.0123",
        "415 555 0123",
        "+1 415 555 0123",
        "+1-415-555-0123",
        "1-800-555-0123",
        "+44 20 7946 0958",
        "+49 30 1234567",
    ],
    "card_number": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        "3782 822463 10005",  # Amex 4-6-5
        "4222222222222",  # 13 digits
    ],
    "ssn": ["123-45-6789", "665-01-0001", "899 99 9999"],
    "iban": [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
    ],
    "ipv4": ["192.168.0.1", "10.0.0.255", "0.0.0.0", "255.255.255.255"],
    "ipv6": ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:0000:0000:0000:ff00:0042:8329", "::ffff:192.0.2.1"],
    "address": [
        "123 Main St",
        "42 Elm Avenue",
        "7 N Oak Blvd Apt. 4",
        "350 5th Ave, New York, NY 10118",
        "123 Main St, Springfield, CA 12345",
        "2841 John Via Suite 485, Taylorside, AR 18835",
        "9 Lake Shore Drive, Chicago, IL 60611-1234",
        "10 Rue Lane",
    ],
    "account_number": ["ACC-01234567", "ACC-00000000"],
}

INVALID = {
    "email": ["bad..dots@mail.com", "no-at-sign.mail.com", "x@nodot"],
    "phone": ["(115) 555-0123", "415-155-0123", "555-0123", "+44 12", "4155550123"],
    "card_number": [
        "4111 1111 1111 1112",  # Luhn fails
        "4111111111111112",
        "1234 5678 9012 3456",
        "0000 0000 0000 0000",
        "411111111111",  # 12 digits
    ],
    "ssn": ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "123-456-789"],
    "iban": ["GB83 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 33", "DE89370400440532013001", "GB82"],
    "ipv4": ["256.1.1.1", "1.2.3.999", "192.168.01.1", "1.2.3"],
    "ipv6": ["12:30:45", "1::2", "2001:db8::g1", "1:2:3:4:5:6:7:8:9", "fe80:::1"],
    "address": ["123 main street", "12 Main", "Main Street", "1234567 Main St"],
    "account_number": ["ACC-1234567", "ACC-123456789", "acc-01234567", "XACC-01234567"],
}


@pytest.mark.parametrize("pii_type,value", [(t, v) for t, vs in VALID.items() for v in vs])
def test_detector_finds_valid(pii_type, value):
    text = f"Details: {value} (see above)."
    assert _found(text, pii_type) == [value]
    m = [m for m in detect_pii(text) if m.type == pii_type][0]
    assert text[m.start : m.end] == m.value


@pytest.mark.parametrize("pii_type,value", [(t, v) for t, vs in INVALID.items() for v in vs])
def test_detector_rejects_invalid(pii_type, value):
    assert _found(f"Details: {value} (see above).", pii_type) == []


def test_validators():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert iban_valid("gb82 west 1234 5698 7654 32")
    assert not iban_valid("GB82 WEST 1234 5698 7654 3")  # too short by a character: checksum fails
    assert ssn_valid("078-05-1120") and not ssn_valid("078-05-112")


def test_validated_match_is_trimmed_from_a_longer_run():
    # an expiry after a card, a word after an IBAN: the prefix that validates is kept
    assert _found("card 4111 1111 1111 1111 12 exp", "card_number") == ["4111 1111 1111 1111"]
    assert _found("iban GB82 WEST 1234 5698 7654 32 THEN", "iban") == ["GB82 WEST 1234 5698 7654 32"]


def test_numbers_inside_longer_numbers_are_not_detected():
    assert detect_pii("ref 12-415-555-0123-9 and 1.192.168.0.1.5 and 9123-45-6789") == []


def test_names_from_a_known_list():
    names = ["Ann Lee", "Mary-Jo  O'Neil"]
    text = "Ann Lee met Mary-Jo O'Neil, not Ann Leeds nor Joann Lee; ANN LEE again."
    found = detect_pii(text, names=names)
    assert [m.value for m in found] == ["Ann Lee", "Mary-Jo O'Neil", "ANN LEE"]
    assert all(m.type == "name" for m in found)
    strict = PIIDetector(names, name_case_sensitive=True).detect(text)
    assert [m.value for m in strict] == ["Ann Lee", "Mary-Jo O'Neil"]
    assert detect_pii(text) == []  # no names known, none found
    assert detect_pii("Ann\nLee", names=names)[0].value == "Ann\nLee"  # any whitespace between words


def test_names_before_a_possessive_and_names_whose_case_folding_adds_a_word():
    names = ["Jane Doe", "İpek Yılmaz"]  # 'İpek'.casefold() is 'i̇pek': two words to the word pattern
    text = "Jane Doe's card and Jane Doe’s account; JANE DOE'S too. İpek Yılmaz called; Jane Does not."
    assert [m.value for m in detect_pii(text, names=names)] == ["Jane Doe", "Jane Doe", "JANE DOE", "İpek Yılmaz"]
    assert [m.value for m in PIIDetector(names, name_case_sensitive=True).detect(text)] == [
        "Jane Doe", "Jane Doe", "İpek Yılmaz"]
    # a training record written back verbatim with its possessive is a leak found
    train = [{"id": "a", "text": "Jane Doe's card was declined.", "pii": [{"type": "name", "start": 0, "end": 8}]}]
    assert pii_extraction(["Jane Doe's card was declined."], [], train).overall.n_true == 1


def test_an_email_with_an_apostrophe_is_read_whole_and_quotes_stay_outside():
    text = "Write to o'connor12@mail.com or 'ann.lee@mail.com' (quoted)."
    assert [m.value for m in detect_pii(text)] == ["o'connor12@mail.com", "ann.lee@mail.com"]


def test_generated_records_are_decoded_a_paragraph_each(tokenizer):
    """A model trained on records ending in EOS writes EOS between records; decoded with special tokens skipped,
    one record's phone number ran into the next record's name and was no phone number. A name split over two
    records is no name."""
    from leakaudit.attacks.untargeted import RECORD_BREAK, decode_records

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    a, b = ids("Callback note: call (415) 555-0123"), ids("John Doe wrote")
    eos = tokenizer.eos_token_id
    text = decode_records(tokenizer, [eos, *a, eos, eos, *b, eos])
    assert text.split(RECORD_BREAK) == [tokenizer.decode(a), tokenizer.decode(b)]
    assert [m.value for m in detect_pii(text, names=["John Doe"])] == ["(415) 555-0123", "John Doe"]
    assert decode_records(tokenizer, a) == tokenizer.decode(a) and decode_records(tokenizer, [eos]) == ""
    split = decode_records(tokenizer, [*ids("Refund approved by John"), eos, *ids("Doe wrote the ticket")])
    assert detect_pii(split, names=["John Doe"]) == []
    assert [m.value for m in detect_pii("approved by John\nDoe", names=["John Doe"])] == ["John\nDoe"]  # wrapped


def test_overlaps_prefer_longer_and_results_are_sorted():
    text = "Write to Ann Lee at 12 Ann Lee Road, Springfield, CA 12345 or ann.lee@mail.com; SSN 123-45-6789."
    found = detect_pii(text, names=["Ann Lee"])
    assert [(m.type, m.value) for m in found] == [
        ("name", "Ann Lee"),
        ("address", "12 Ann Lee Road, Springfield, CA 12345"),
        ("email", "ann.lee@mail.com"),
        ("ssn", "123-45-6789"),
    ]
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))


def test_types_filter():
    text = "Ann Lee, (415) 555-0123, ann.lee@mail.com"
    assert [m.type for m in detect_pii(text, names=["Ann Lee"], types=["phone", "email"])] == ["phone", "email"]
    with pytest.raises(ValueError, match="unknown PII types"):
        detect_pii(text, types=["passport"])


def test_detect_pii_recovers_synthetic_annotations_exactly():
    private, _ = make_corpora(40, 0, seed=3)
    names = [r["text"][s["start"] : s["end"]] for r in private for s in r["pii"] if s["type"] == "name"]
    detector = PIIDetector(names)
    kinds = {"email", "phone", "card_number", "account_number", "address"}
    n_spans = 0
    for r in private:
        want = {(s["type"], s["start"], s["end"]) for s in r["pii"]}
        n_spans += len(want)
        assert {(m.type, m.start, m.end) for m in detect_pii(r["text"])} == {w for w in want if w[0] in kinds}
        found = detector.detect(r["text"])
        assert {(m.type, m.start, m.end) for m in found} == want  # names too, and nothing else
        assert all(r["text"][m.start : m.end] == m.value for m in found)
    assert n_spans > 150
    assert {s["type"] for r in private for s in r["pii"]} == kinds | {"name"}


def test_normalise():
    assert normalise("phone", "(415) 555-0123") == normalise("phone", "+1 415.555.0123") == "4155550123"
    assert normalise("card_number", "4111-1111 1111-1111") == "4111111111111111"
    assert normalise("ssn", "123 45 6789") == "123456789"
    assert normalise("email", " First.Last@Mail.COM ") == "first.last@mail.com"
    assert normalise("iban", "gb82 west 1234 5698 7654 32") == "GB82WEST12345698765432"
    assert normalise("address", "12  Main St,\nSpringfield") == "12 main st, springfield"
    assert normalise("name", "Ann  LEE") == "ann lee"
    assert normalise("ipv6", "2001:0DB8:0:0:0:0:0:1") == "2001:db8::1"
    assert normalise("account_number", "acc-01234567") == "ACC-01234567"


# -- training PII and extraction -------------------------------------------------------------------


def _record(rid: str, text: str, spans: list[tuple[str, str]]) -> dict:
    pii = []
    for kind, value in spans:
        start = text.index(value)
        pii.append({"type": kind, "start": start, "end": start + len(value)})
    return {"id": rid, "user_id": rid, "text": text, "pii": pii}


RECORDS = [
    _record(
        "r1",
        "Customer Ann Lee, email ann.lee@mail.com, phone (415) 555-0123.",
        [("name", "Ann Lee"), ("email", "ann.lee@mail.com"), ("phone", "(415) 555-0123")],
    ),
    _record(
        "r2",
        "Ann Lee called again from (415) 555-0123 about ACC-00000001.",
        [("name", "Ann Lee"), ("phone", "(415) 555-0123"), ("account_number", "ACC-00000001")],
    ),
    _record(
        "r3",
        "Bob Stone paid with 4111 1111 1111 1111.",
        [("name", "Bob Stone"), ("card_number", "4111 1111 1111 1111")],
    ),
]
GENERATED = [
    "Hi Ann Lee, your number (415) 555-0123 is on file.",
    "Contact ann.lee@mail.com or zed@mail.com.",
    "Call 415-555-0123 now. Card 4111-1111-1111-1111.",
    "Account ACC-99999999.",
]
BASELINE = ["Bob Stone paid with card 4111 1111 1111 1111; write to zed@mail.com."]
SECRETS = [
    "Ann Lee", "ann lee", "Bob Stone", "bob stone", "ann.lee@mail.com", "zed@mail.com", "4155550123", "555-0123",
    "4111 1111 1111 1111", "4111111111111111", "ACC-00000001", "ACC-99999999", "00000001", "99999999",
]  # fmt: skip


def test_training_pii_is_distinct_and_normalised():
    train = training_pii(RECORDS)
    assert train == {
        "name": {"ann lee", "bob stone"},
        "email": {"ann.lee@mail.com"},
        "phone": {"4155550123"},
        "account_number": {"ACC-00000001"},
        "card_number": {"4111111111111111"},
    }
    assert training_pii(RECORDS, types=["phone"]) == {"phone": {"4155550123"}}


def test_pii_extraction_known_answer():
    res = pii_extraction(GENERATED, BASELINE, RECORDS)
    assert isinstance(res, PIIExtraction)
    assert res.types == ["account_number", "card_number", "email", "name", "phone"]
    assert (res.n_generated, res.n_baseline_generated) == (4, 1)
    o = res.overall
    # generated: ann lee, (415) 555-0123 twice in two formats (one value), two emails, the card, a fake account
    assert (o.n_generated_pii, o.n_mentions, o.n_baseline_pii) == (6, 7, 3)
    # the baseline also wrote the card and zed@mail.com: both filtered, the card being training PII
    assert (o.n_filtered, o.n_filtered_true, o.n_baseline_true) == (2, 1, 2)
    # leaked: ann lee, the phone, ann.lee@mail.com (real) and ACC-99999999 (not); 6 distinct training values
    assert (o.n_leaked, o.n_true, o.n_training) == (4, 3, 6)
    assert o.precision == pytest.approx(3 / 4) and o.recall == pytest.approx(3 / 6)
    assert o.precision_unfiltered == pytest.approx(4 / 6) and o.recall_unfiltered == pytest.approx(4 / 6)

    t = res.by_type
    assert (t["name"].n_true, t["name"].n_training, t["name"].precision, t["name"].recall) == (1, 2, 1.0, 0.5)
    assert (t["phone"].n_generated_pii, t["phone"].n_mentions, t["phone"].recall) == (1, 2, 1.0)
    assert (t["email"].n_generated_pii, t["email"].n_filtered, t["email"].precision) == (2, 1, 1.0)
    assert (t["card_number"].n_leaked, t["card_number"].precision, t["card_number"].recall) == (0, None, 0.0)
    assert t["card_number"].n_filtered_true == 1 and t["card_number"].recall_unfiltered == 1.0
    assert (t["account_number"].n_leaked, t["account_number"].precision) == (1, 0.0)


def test_pii_extraction_baseline_filter_and_types():
    without = pii_extraction(GENERATED, [], RECORDS)
    assert (without.overall.n_leaked, without.overall.n_true) == (6, 4)
    assert without.overall.precision == without.overall.precision_unfiltered
    only = pii_extraction(GENERATED, BASELINE, RECORDS, types=["email", "card_number"])
    assert only.types == ["email", "card_number"] and set(only.by_type) == {"email", "card_number"}
    assert (only.overall.n_leaked, only.overall.n_true, only.overall.n_training) == (1, 1, 2)
    nothing = pii_extraction([], [], RECORDS)
    assert nothing.overall.precision is None and nothing.overall.recall == 0.0


def test_pii_extraction_extra_names_and_duplicates():
    gen = ["Ann Lee", "ann  lee", "ANN LEE and Carl Moe"] * 3
    res = pii_extraction(gen, [], RECORDS, types=["name"], extra_names=["Carl Moe"])
    n = res.by_type["name"]
    assert (n.n_generated_pii, n.n_mentions, n.n_leaked, n.n_true) == (2, 12, 2, 1)
    assert n.precision == 0.5 and n.recall == 0.5
    assert not any("by construction" in n for n in res.notes)
    assert any("by construction" in n for n in pii_extraction(gen, [], RECORDS, types=["name"]).notes)  # said so


HELD_OUT = [
    _record("h1", "Dee Park wrote from dee.park@mail.com.", [("name", "Dee Park"), ("email", "dee.park@mail.com")]),
    _record("h2", "Ann Lee referred Eve Ray, phone (212) 555-0199.",
            [("name", "Ann Lee"), ("name", "Eve Ray"), ("phone", "(212) 555-0199")]),
]


def test_pii_extraction_counts_the_units_found_on_each_side_alike():
    """One detector for both sides, the baseline model's values removed from both, and a value two units share
    (Ann Lee) counts for both: r1 and r2 are found (Bob Stone's card is filtered), h1 by Dee Park, h2 by Ann Lee."""
    gen, base = [*GENERATED, "Dee Park says hi", "Eve Ray too"], [*BASELINE, "Eve Ray"]
    res = pii_extraction(gen, base, RECORDS, held_out=HELD_OUT)
    assert (res.units, res.n_member_units, res.n_member_units_found) == ("person", 3, 2)
    assert (res.n_held_out_units, res.n_held_out_units_found) == (2, 2)
    plain = pii_extraction(gen, base, RECORDS)
    assert res.overall == plain.overall  # the training figures do not depend on the held-out records
    assert plain.units is None and any("held-out" in n for n in plain.notes)
    assert "dee" not in res.model_dump_json().lower()


def test_the_held_out_test_holds_its_level_for_a_model_that_never_saw_either_side():
    """Names drawn unevenly (common names recur across records), split at random, and a "model" writing names
    from the same distribution: Fisher's test on units found keeps to its 5% (4.7% here).  Counting distinct values
    with the shared ones on the training side only (an earlier version) gave p < 0.05 in 18% of these draws."""
    from leakaudit.report.stats import fisher_greater

    rng = np.random.default_rng(4)
    first = [f"Ann{c}" for c in "abcdefghijklmnopqrst"]
    last = [f"Lee{c}" for c in "abcdefghijklmnopqrst"]
    weights = 1 / np.arange(1, 21)
    weights /= weights.sum()

    def name() -> str:
        return f"{first[rng.choice(20, p=weights)]} {last[rng.choice(20, p=weights)]}"

    draws, low = 150, 0
    for _ in range(draws):
        records = [_record(f"r{i}", f"Customer {n} called.", [("name", n)]) for i, n in enumerate(
            name() for _ in range(80))]
        side = rng.permutation(80) < 40
        mem = [r for r, s in zip(records, side) if s]
        held = [r for r, s in zip(records, side) if not s]
        res = pii_extraction([f"Dear {name()}," for _ in range(60)], [], mem, held_out=held)
        p = fisher_greater(res.n_member_units_found, res.n_member_units, res.n_held_out_units_found,
                           res.n_held_out_units)
        low += p < 0.05
    assert low / draws <= 0.08


def test_pii_extraction_values_reveal():
    vals = pii_extraction_values(GENERATED, BASELINE, RECORDS)
    assert vals["email"] == {"leaked": ["ann.lee@mail.com"], "true": ["ann.lee@mail.com"], "filtered_true": []}
    assert vals["card_number"] == {"leaked": [], "true": [], "filtered_true": ["4111111111111111"]}
    assert vals["account_number"]["leaked"] == ["ACC-99999999"] and vals["account_number"]["true"] == []


def test_extraction_result_holds_no_pii():
    res = pii_extraction(GENERATED, BASELINE, RECORDS, extra_names=["Carl Moe"])
    dumped = res.model_dump_json()
    json.loads(dumped)
    for secret in SECRETS + ["Carl Moe", "carl moe"]:
        assert secret.lower() not in dumped.lower()


# -- reconstruction --------------------------------------------------------------------------------


class _Fake:
    """A scorer from a function of the text; records every call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[list[str]] = []

    def score(self, texts):
        self.calls.append(list(texts))
        return [np.full(3, self.fn(t), dtype=np.float32) for t in texts]


@pytest.fixture(scope="module")
def private40():
    return make_corpora(40, 0, seed=3)[0]


def test_reconstruction_prefers_true_values(private40):
    originals = {r["text"] for r in private40}
    fake = _Fake(lambda t: 0.0 if t in originals else -5.0)
    res = pii_reconstruction(fake, private40, pii_type="name", n_candidates=8)
    assert res.n_queries == 40 and res.n_candidates == 8
    assert (res.top1_accuracy, res.mrr, res.mean_rank, res.tie_rate) == (1.0, 1.0, 1.0, 0.0)
    assert res.chance_top1 == 1 / 8 and res.chance_mean_rank == 4.5
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 40 * 8  # one batched call
    # each query: the original record first, then 7 distinct texts with another name in its place
    for k, r in enumerate(private40):
        group = fake.calls[0][8 * k : 8 * k + 8]
        assert group[0] == r["text"] and len(set(group)) == 8


def test_reconstruction_reports_each_querys_record_and_outcome(private40):
    """The per-query table the audit's permutation test needs: one row per query, the record's id, the
    (ties split) top-1 success, averaging to the reported accuracy."""
    win = {r["text"] for r in private40[:20]}  # the first 20 records' true names win, the rest lose
    lose = {r["text"] for r in private40[20:]}
    asked: list[dict] = []
    res = pii_reconstruction(_Fake(lambda t: 0.0 if t in win else (-5.0 if t in lose else -1.0)), private40,
                             pii_type="name", n_candidates=8, per_query=asked)
    assert [q["id"] for q in asked] == [str(r["id"]) for r in private40]
    assert [q["top1"] for q in asked] == [1.0] * 20 + [0.0] * 20
    assert np.mean([q["top1"] for q in asked]) == res.top1_accuracy == 0.5
    ties: list[dict] = []
    pii_reconstruction(_Fake(lambda t: -1.0), private40, pii_type="name", n_candidates=8, per_query=ties)
    assert {q["top1"] for q in ties} == {1 / 8}  # every candidate ties: the expected success


def test_reconstruction_prefers_wrong_values(private40):
    originals = {r["text"] for r in private40}
    res = pii_reconstruction(_Fake(lambda t: -5.0 if t in originals else 0.0), private40, n_candidates=8)
    assert (res.top1_accuracy, res.mean_rank, res.mrr) == (0.0, 8.0, 1 / 8)


def test_reconstruction_constant_scores_give_chance(private40):
    # every candidate ties: ties are broken uniformly at random, in expectation, so chance exactly
    res = pii_reconstruction(_Fake(lambda t: -1.0), private40, pii_type="phone", n_candidates=5)
    assert res.tie_rate == 1.0
    assert res.top1_accuracy == pytest.approx(res.chance_top1) == pytest.approx(0.2)
    assert res.mrr == pytest.approx(res.chance_mrr) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 5)
    assert res.mean_rank == pytest.approx(res.chance_mean_rank) == pytest.approx(3.0)


def test_reconstruction_random_scores_near_chance(private40):
    def noise(t):
        return -int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) / 2**32

    res = pii_reconstruction(_Fake(noise), private40, pii_type="email", n_candidates=10, seed=1)
    assert res.tie_rate == 0.0
    assert 0.0 <= res.top1_accuracy <= 0.35
    assert 3.5 <= res.mean_rank <= 7.5


def test_reconstruction_batches_seeds_and_subsets(private40):
    fake = _Fake(lambda t: 0.0)
    pii_reconstruction(fake, private40, pii_type="card_number", n_candidates=4, batch_texts=10)
    n_card = sum(any(s["type"] == "card_number" for s in r["pii"]) for r in private40)
    assert [len(c) for c in fake.calls] == [10] * (4 * n_card // 10) + ([4 * n_card % 10] if 4 * n_card % 10 else [])
    full = [t for c in fake.calls for t in c]
    # a query's candidates depend on the seed and its record, not on which other records are attacked
    sub = _Fake(lambda t: 0.0)
    res = pii_reconstruction(sub, private40, pii_type="card_number", n_candidates=4, max_records=3)
    assert res.n_queries == 3 and sub.calls[0] == full[:12]
    other = _Fake(lambda t: 0.0)
    pii_reconstruction(other, private40, pii_type="card_number", n_candidates=4, max_records=3, seed=5)
    assert other.calls[0] != sub.calls[0]


def test_reconstruction_explicit_pool_and_errors(private40):
    fake = _Fake(lambda t: 0.0)
    pool = ["Zed Alpha", "Zed Beta", "Zed Gamma"]
    res = pii_reconstruction(fake, private40, n_candidates=4, candidate_pool=pool, max_records=2)
    assert res.n_queries == 2
    texts = fake.calls[0]
    assert all(any(p in t for p in pool) for t in texts[1:4] + texts[5:8])
    with pytest.raises(ValueError, match="candidate pool"):
        pii_reconstruction(fake, private40, n_candidates=5, candidate_pool=pool)
    with pytest.raises(ValueError, match="no record"):
        pii_reconstruction(fake, private40, pii_type="iban")
    with pytest.raises(ValueError, match="at least 2"):
        pii_reconstruction(fake, private40, n_candidates=1)


def test_reconstruction_result_holds_no_pii(private40):
    res = pii_reconstruction(_Fake(lambda t: -len(t)), private40, pii_type="address", n_candidates=6)
    dumped = res.model_dump_json()
    values = {r["text"][s["start"] : s["end"]] for r in private40 for s in r["pii"]}
    assert not any(v.lower() in dumped.lower() for v in values)
    assert set(json.loads(dumped)) >= {"top1_accuracy", "mrr", "chance_top1", "n_queries"}


def test_reconstruction_with_tiny_model(corpora, gpt2, tokenizer):
    private, _ = corpora
    res = pii_reconstruction(Target(gpt2, tokenizer), private, pii_type="phone", n_candidates=4, max_records=5)
    assert res.n_queries == 5 and res.n_candidates == 4
    assert 0.0 <= res.top1_accuracy <= 1.0
    assert 0.25 <= res.mrr <= 1.0 and 1.0 <= res.mean_rank <= 4.0
    assert res.chance_top1 == 0.25 and 0.0 <= res.tie_rate <= 1.0


def test_public_names():
    assert PIIMatch("email", "a@b.co", 0, 6).end == 6
    assert set(PII_TYPES) >= {"name", "email", "phone", "address", "account_number", "card_number"}


def test_samples_are_decoded_by_the_tokenizer_of_the_model_that_drew_them(tmp_path, corpora):
    """The PII baseline reads a reference model's samples beside the audited model's: each model's samples
    must be decoded with its own tokenizer (decoded with another, a baseline's text was garbage)."""
    import torch

    from leakaudit.attacks.untargeted import decode_records
    from leakaudit.extraction import ExtractionOptions, _generated_texts, load_samples, sample_stage
    from leakaudit.models import build_model, train_tokenizer
    from leakaudit.runs import EventLog

    public = [r["text"] for r in corpora[1]]
    other = train_tokenizer(public, vocab_size=300)  # not the audited model's 400-token vocabulary
    torch.manual_seed(0)
    model = build_model(other, arch="gpt2", n_layer=1, n_embd=16, n_head=2, context=64)
    ref_dir = tmp_path / "reference"
    model.save_pretrained(ref_dir, safe_serialization=True)
    other.save_pretrained(ref_dir)
    opts = ExtractionOptions(memorization=[], samples=4, sample_tokens=12, batch_size=4)
    d = sample_stage(tmp_path / "run", "reference", ref_dir, opts, public[:20], device="cpu", dtype=torch.float32,
                     token_budget=None, trust_remote_code=False, log=EventLog(tmp_path / "run"))
    assert _generated_texts(d) == [decode_records(other, g) for g in load_samples(d).new]


def test_names_that_differ_only_in_case_are_one_candidate_for_reconstruction(tmp_path):
    """The stage counted names as written, the reconstruction as people (case-folded): 32 spellings of 31 people
    passed the stage's check for 32 candidates, and the reconstruction raised, failing the whole stage."""
    from leakaudit.extraction import ExtractionOptions, _pii

    class Flat:  # every candidate equally likely
        def score(self, texts):
            return [np.zeros(3) for _ in texts]

    names = [f"Person Number{i}" for i in range(31)] + ["PERSON NUMBER0"]
    records = [{"id": f"r{i}", "text": f"Hi {n}.", "pii": [{"type": "name", "start": 3, "end": 3 + len(n)}]}
               for i, n in enumerate(names)]
    for k, made in ((32, False), (31, True)):
        out = tmp_path / str(k)
        out.mkdir()
        _pii(out, Flat(), records, 16, ExtractionOptions(pii_candidates=k), None, None)
        assert (out / "pii_reconstruction.json").is_file() == made, k
