"""Canary specs, secret formats, generation, insertion and the manifest."""

import random
from pathlib import Path

import pytest

from leakaudit.canaries import CanaryManifest, generate_canaries, get_format, insert_canaries, load_spec
from leakaudit.errors import LeakauditError
from tests.conftest import TINY_SPEC


def test_formats_space_and_enumeration():
    f = get_format("digits", 3)
    assert f.space_size == 1000
    assert list(f.enumerate())[:3] == ["000", "001", "002"] and f.from_index(999) == "999"
    h = get_format("hex", 2)
    assert len(set(h.enumerate())) == 256 and h.contains("af") and not h.contains("ag")
    c = get_format("card", 8)
    s = c.sample(random.Random(0))
    assert len(s) == 9 and s[4] == " " and c.contains(s)
    assert get_format("alnum", 2).space_size == 36**2
    with pytest.raises(LeakauditError, match="unknown secret format 'base99'"):
        get_format("base99", 4)


def test_every_shipped_spec_loads():

    specs = sorted((Path(__file__).parents[1] / "canaries").glob("*.yaml"))
    assert specs
    for p in specs:
        spec = load_spec(p)
        assert spec.secret_format.space_size > 1


def test_bad_specs_name_the_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\ntemplate: 'code {secret}'\nsecret: {format: emoji, length: 4}\nrepetitions: [1]\n")
    with pytest.raises(LeakauditError, match=r"s.yaml: field 'secret.format': unknown secret format 'emoji'"):
        load_spec(p)
    p.write_text("name: x\ntemplate: 'no placeholder'\nsecret: {format: digits, length: 4}\nrepetitions: [1]\n")
    with pytest.raises(LeakauditError, match="exactly one {secret}"):
        load_spec(p)
    p.write_text("name: x\ntemplate: 'a {secret}'\nsecret: {format: digits, length: 4}\nrepetitions: [0]\n")
    with pytest.raises(LeakauditError, match="repetitions"):
        load_spec(p)
    with pytest.raises(LeakauditError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    # more canaries than the secret space holds, and styled placeholders: refused when the spec is read
    p.write_text("name: x\ntemplate: 'a {secret}'\nsecret: {format: digits, length: 1}\nrepetitions: [1, 2]\n"
                 "canaries_per_repetition: 4\nreference_canaries: 4\n")
    with pytest.raises(LeakauditError, match="asks for 12 distinct secrets but its secret format has only 10"):
        load_spec(p)
    for template in ("a {secret:>8}", "a {secret!r}", "{name!s}: {secret}"):
        p.write_text(f"name: x\ntemplate: '{template}'\nsecret: {{format: digits, length: 4}}\nrepetitions: [1]\n")
        with pytest.raises(LeakauditError, match="write placeholders bare"):
            load_spec(p)
    p.write_text("name: x\ntemplate: 'the {{secret}} of {name} is {secret}'\nsecret: {format: digits, length: 4}\n"
                 "repetitions: [1]\n")
    with pytest.raises(LeakauditError, match=r"write \{secret\} once"):
        load_spec(p)
    # a letter, digit or field touching the secret: a tokenizer may merge it into the secret's first or last token
    # for some candidates only (a reviewer: ' is sk' + hex merged for 210 of 4,096 secrets, ranks 1.8 bits apart)
    for template in ("key sk{secret}.", "code {name}{secret}", "pin {secret}th", "id 7{secret}", "pin {secret}{name}"):
        p.write_text(f"name: x\ntemplate: '{template}'\nsecret: {{format: digits, length: 4}}\nrepetitions: [1]\n")
        with pytest.raises(LeakauditError, match=r"put a space or punctuation on both sides of \{secret\}"):
            load_spec(p)
    for template in ("API_KEY={secret}", "pin: {secret}.", "({secret})", "{name}: {secret}, {{ok}}"):
        p.write_text(f"name: x\ntemplate: '{template}'\nsecret: {{format: digits, length: 4}}\nrepetitions: [1]\n")
        assert load_spec(p).template == template
    # a one-run audit inserts each canary once: with k copies its bound would be compared with the wrong eps
    p.write_text("name: x\ndesign: one_run\ntemplate: 'a {secret}'\nsecret: {format: digits, length: 6}\n"
                 "repetitions: [1, 4]\n")
    with pytest.raises(LeakauditError, match=r"s.yaml: .*one_run spec inserts each canary once \(repetitions: \[1\]\)"):
        load_spec(p)
    # the name becomes part of file names (manifest-NAME.json): nothing that could leave the run directory
    for name in ("x/../../../ESCAPED", "../x", "a b", "-x"):
        p.write_text(f"name: '{name}'\ntemplate: 'a {{secret}}'\nsecret: {{format: digits, length: 4}}\n"
                     "repetitions: [1]\n")
        with pytest.raises(LeakauditError, match=r"s.yaml: field 'name'"):
            load_spec(p)


def test_generation_is_seeded_distinct_and_hashed():
    spec = load_spec(TINY_SPEC)
    m = generate_canaries(spec)
    assert m == generate_canaries(spec)
    secrets = [c.secret for c in m.canaries]
    assert len(set(secrets)) == len(secrets)
    assert len({c.prefix for c in m.canaries}) == len(m.canaries)  # {name} makes prefixes distinct
    assert sum(not c.inserted for c in m.canaries) == spec.reference_canaries
    assert sorted({c.repetitions for c in m.inserted}) == spec.repetitions
    for c in m.canaries:
        assert spec.secret_format.contains(c.secret)
        assert c.text.startswith("Security note for ") and c.secret in c.text


def test_insertion_counts_and_manifest_roundtrip(tmp_path):
    m = generate_canaries(load_spec(TINY_SPEC))
    records = [{"id": str(i), "text": f"record {i}"} for i in range(50)]
    out = insert_canaries(records, m, seed=1)
    assert [r for r in out if "canary_id" not in r] == records
    for c in m.canaries:
        assert sum(r["text"] == c.text for r in out) == c.repetitions
    m.save(tmp_path / "m.json")
    assert CanaryManifest.load(tmp_path / "m.json") == m
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o600  # the secrets: readable by their owner only


def test_preflight_flags_truncated_missing_and_leaked_canaries(tokenizer):
    from leakaudit.canaries.preflight import preflight

    m = generate_canaries(load_spec(TINY_SPEC))
    records = [f"record {i}" for i in range(20)]
    train = [r["text"] for r in insert_canaries([{"id": str(i), "text": t} for i, t in enumerate(records)], m)]
    assert preflight(m, train, tokenizer, max_length=256) == []
    warnings = preflight(m, train, tokenizer, max_length=8)  # every canary's secret is cut off
    assert len(warnings) == len(m.inserted) and all("truncates at 8 tokens" in w for w in warnings)
    first = m.inserted[0]
    dropped = list(train)
    dropped.remove(first.text)
    assert any(w.startswith(f"{first.id}: inserted {first.repetitions}") for w in preflight(m, dropped, tokenizer,
                                                                                        max_length=256))
    ref = next(c for c in m.canaries if not c.inserted)
    assert any("reference canary occurs 1" in w for w in preflight(m, train + [ref.text], tokenizer, max_length=256))


def test_one_run_design_flips_a_fair_coin_per_canary():
    from scipy.stats import binomtest

    spec = load_spec(Path(__file__).parents[1] / "canaries" / "one_run_audit.yaml")
    m = generate_canaries(spec)
    assert m == generate_canaries(spec) and len(m.canaries) == 1000
    assert all(c.randomized for c in m.canaries)
    assert {c.repetitions for c in m.canaries} == {0, 1}
    k = len(m.inserted)
    assert binomtest(k, 1000, 0.5).pvalue > 0.001  # a fair coin, not a fixed half
    # the coin is its own stream: another seed changes who is in, and the secrets stay distinct
    other = generate_canaries(spec.model_copy(update={"seed": 3}))
    assert [c.inserted for c in other.canaries] != [c.inserted for c in m.canaries]
    assert len({c.secret for c in m.canaries}) == 1000


@pytest.mark.parametrize("name,length", [("digits", 6), ("hex", 4), ("alnum", 3), ("card", 6), ("card", 8)])
def test_from_indices_equals_from_index(name, length):
    from leakaudit.canaries.formats import get_format

    fmt = get_format(name, length)
    n = fmt.space_size
    for start, stop in ((0, min(n, 3000)), (n - 50, n), (n // 3, n // 3 + 7), (5, 5)):
        assert fmt.from_indices(start, stop) == [fmt.from_index(i) for i in range(start, stop)]
    with pytest.raises(IndexError):
        fmt.from_indices(0, n + 1)


def test_a_spec_without_a_seed_draws_unguessable_secrets_recorded_in_the_manifest_only(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\ntemplate: 'token {secret}'\nsecret: {format: hex, length: 12}\nrepetitions: [1, 2]\n")
    spec = load_spec(p)
    assert spec.seed is None
    a, b = generate_canaries(spec), generate_canaries(spec)
    assert {c.secret for c in a.canaries}.isdisjoint({c.secret for c in b.canaries})
    assert isinstance(a.spec.seed, int)  # what was drawn, kept in the manifest (private) ...
    again = generate_canaries(a.spec)  # ... regenerates the same canaries
    assert [c.secret for c in again.canaries] == [c.secret for c in a.canaries]


def test_a_manifest_edited_out_of_shape_is_refused(tmp_path):
    import json

    m = generate_canaries(load_spec(TINY_SPEC))
    m.save(tmp_path / "m.json")
    good = json.loads((tmp_path / "m.json").read_text())

    def broken(edit):
        data = json.loads(json.dumps(good))
        edit(data["canaries"])
        (tmp_path / "b.json").write_text(json.dumps(data))
        with pytest.raises(ValueError) as e:
            CanaryManifest.load(tmp_path / "b.json")
        assert data["canaries"][0]["secret"] not in str(e.value)  # named by id, never by secret
        return str(e.value)

    assert "the id is given twice" in broken(lambda cs: cs[1].update(id=cs[0]["id"]))
    assert "not of the spec's format" in broken(lambda cs: cs[0].update(secret=cs[0]["secret"][:-1] + "X"))
    assert "disagree" in broken(lambda cs: cs[0].update(repetitions=-3))
    assert "sha256" in broken(lambda cs: cs[0].update(prefix="changed "))


def test_a_manifest_of_a_spec_named_before_names_were_restricted_still_loads(tmp_path):
    m = generate_canaries(load_spec(TINY_SPEC))
    old = m.model_copy(update={"spec": m.spec.model_copy(update={"name": "recovery codes (2024)"})})
    old.save(tmp_path / "m.json")
    assert CanaryManifest.load(tmp_path / "m.json").spec.name == "recovery codes (2024)"
