"""Synthetic corpora, loading user data in every format, and member/non-member splits."""

import json

import datasets
import pandas as pd
import pytest

from leakaudit.data import PII_TYPES, check_no_overlap, load_corpus, make_corpora, split_members
from leakaudit.errors import LeakauditError


def test_pii_spans_are_annotated_and_typed():
    private, public = make_corpora(40, 40, seed=1)
    for r in private + public:
        assert r["pii"], r["text"]
        for s in r["pii"]:
            assert s["type"] in PII_TYPES
            assert r["text"][s["start"] : s["end"]].strip() == r["text"][s["start"] : s["end"]]
            assert s["end"] > s["start"]
    types = {s["type"] for r in private for s in r["pii"]}
    assert types == set(PII_TYPES)


def test_corpora_are_seeded_and_disjoint():
    a = make_corpora(50, 80, seed=7)
    b = make_corpora(50, 80, seed=7)
    assert a == b
    assert make_corpora(50, 80, seed=8)[0] != a[0]
    private, public = a
    priv_pii = {r["text"][s["start"] : s["end"]] for r in private for s in r["pii"]}
    pub_pii = {r["text"][s["start"] : s["end"]] for r in public for s in r["pii"]}
    assert not priv_pii & pub_pii
    assert not {r["text"] for r in private} & {r["text"] for r in public}
    assert len({r["user_id"] for r in private}) < len(private)  # customers write several records


@pytest.fixture()
def rows():
    return [{"id": i, "body": f"record number {i}", "other": i * 2} for i in range(5)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "txt", "saved"])
def test_load_every_format(tmp_path, rows, fmt):
    df = pd.DataFrame(rows)
    path = tmp_path / f"c.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "txt":
        path.write_text("\n".join(r["body"] for r in rows) + "\n\n")
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_pandas(df).save_to_disk(str(path))
    field = "text" if fmt == "txt" else "body"
    ds = load_corpus(path, text_field=field)
    assert ds[field] == [r["body"] for r in rows]


def test_txt_records_end_at_newlines_only(tmp_path):
    # A record holding a form feed, U+2028 or U+0085 is one record; "\r\n" ends a record as "\n" does.
    path = tmp_path / "c.txt"
    path.write_bytes("first\x0cpart\u2028still first\r\nsecond \x85 record\n".encode())
    assert load_corpus(path)["text"] == ["first\x0cpart\u2028still first", "second \x85 record"]


def test_load_errors_name_the_problem(tmp_path, rows):
    with pytest.raises(LeakauditError, match="no such file"):
        load_corpus(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LeakauditError, match="empty"):
        load_corpus(empty)
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LeakauditError, match=r"text field 'text' is absent.*body"):
        load_corpus(p)
    p.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(LeakauditError, match="empty or not text"):
        load_corpus(p)
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(LeakauditError, match="unknown corpus format"):
        load_corpus(tmp_path / "c.xlsx")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(LeakauditError, match=r"bad.jsonl: line 2: not valid JSON"):
        load_corpus(bad)
    bad.write_text(json.dumps({"text": "fine"}) + "\n[1, 2]\n")
    with pytest.raises(LeakauditError, match=r"line 2: expected a JSON object .* got list"):
        load_corpus(bad)
    bad.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(LeakauditError, match="not UTF-8 text"):
        load_corpus(bad)
    # a field whose values differ in type cannot be a table column: named, not a pyarrow traceback
    for field, values in (("id", [1, "x"]), ("text", [5, "some text"])):
        bad.write_text("".join(json.dumps({"text": "a text", field: v}) + "\n" for v in values))
        with pytest.raises(LeakauditError, match=rf"field '{field}' mixes value types \(int, str\)"):
            load_corpus(bad)


def test_split_is_seeded_recorded_and_disjoint():
    private, _ = make_corpora(100, 1, seed=2)
    private.append(dict(private[0], id="dup"))  # an exact duplicate must land on the same side
    mem, non, split = split_members(private, member_fraction=0.5, seed=4)
    assert len(mem) + len(non) == len(private)
    check_no_overlap([r["text"] for r in mem], [r["text"] for r in non])
    assert split.member_ids == [str(r["id"]) for r in mem]
    mem2, _, _ = split_members(private, member_fraction=0.5, seed=4)
    assert mem2 == mem
    assert split_members(private, member_fraction=0.5, seed=5)[0] != mem


def test_split_keeps_each_user_on_one_side():
    private, _ = make_corpora(120, 1, seed=6)
    mem, non, _ = split_members(private, member_fraction=0.5, seed=1)
    assert not {r["user_id"] for r in mem} & {r["user_id"] for r in non}
    assert 0.35 < len(mem) / len(private) < 0.65


def test_a_user_id_of_0_is_a_user_and_none_nan_or_empty_are_none():
    rows = [{"id": str(i), "text": f"record number {i} of the account", "user_id": i % 5} for i in range(40)]
    mem, non, _ = split_members(rows, member_fraction=0.5, seed=0)
    assert not {r["user_id"] for r in mem} & {r["user_id"] for r in non}  # user 0 stayed on one side
    rows = [{"id": str(i), "text": f"record number {i}", "user_id": [None, float("nan"), ""][i % 3]} for i in range(30)]
    mem, non, _ = split_members(rows, member_fraction=0.5, seed=0)
    assert 10 <= len(mem) <= 20  # no user: records split one by one, not as three "users"


def test_overlap_is_refused():
    with pytest.raises(LeakauditError, match="overlap: 1 non-member"):
        check_no_overlap(["a b", "c"], ["x", "a b "])


def test_load_records_ids_users_and_pii_spans(tmp_path):
    from leakaudit.data import load_records

    text = "Mail Ada at ada@example.com today"
    span = {"type": "email", "start": 12, "end": 27}
    csv = tmp_path / "c.csv"
    pd.DataFrame({"text": [text, "no pii here", "third"], "user_id": ["u1", "", "  "],
                  "pii": [json.dumps([span]), "", "[]"]}).to_csv(csv, index=False)
    rows = load_records(csv, id_prefix="member-")
    assert [r["id"] for r in rows] == ["member-0", "member-1", "member-2"]  # no id column: side-prefixed rows
    assert [r["user_id"] for r in rows] == ["u1", None, None]  # blank cells are no user, not a user ''
    assert rows[0]["pii"] == [span] and rows[1]["pii"] is None and rows[2]["pii"] == []
    assert text[12:27] == "ada@example.com"
    for bad in ("yes", json.dumps([{"type": "email", "start": 12, "end": 99}]), json.dumps({"type": "email"})):
        pd.DataFrame({"text": [text], "pii": [bad]}).to_csv(csv, index=False)
        with pytest.raises(LeakauditError, match=r"c.csv: record 1: field 'pii': expected a list of spans"):
            load_records(csv)


def test_load_errors_never_quote_a_records_values(tmp_path):
    from leakaudit.data import load_records

    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"text": "a record", "meta": {"n": 1}}) + "\n"
                 + json.dumps({"text": "another", "meta": {"n": "jane.doe@example.com"}}) + "\n")
    with pytest.raises(LeakauditError) as e:
        load_corpus(p)
    assert "meta" in str(e.value) and "jane.doe" not in str(e.value)
    p.write_text(json.dumps({"text": "call 555-0100", "pii": [{"type": "phone", "start": 5, "end": 40,
                                                               "value": "555-0100"}]}) + "\n")
    with pytest.raises(LeakauditError, match="start 5, end 40 in a text of 13 characters") as e:
        load_records(p)
    assert "555-0100" not in str(e.value)


def test_record_errors_are_located_as_the_user_counts(tmp_path):
    from leakaudit.data import load_records

    # JSON lines and text files: the line (blank lines hold no record); tables: the record counted from 1
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n" + json.dumps({"text": ""})
                 + "\n")
    with pytest.raises(LeakauditError, match=r"m.jsonl: field 'text' is empty or not text in 1 record\(s\), first at "
                       r"line 4$"):
        load_corpus(p)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"text": ["a", "b", " "], "user_id": ["u", "v", "w"]}).to_csv(csv, index=False)
    with pytest.raises(LeakauditError, match="first at record 3$"):
        load_corpus(csv)
    # an id given twice would merge two records' results: refused, naming both places
    p.write_text("".join(json.dumps({"id": i, "text": f"record {k}"}) + "\n" for k, i in enumerate([7, 8, 9, 8])))
    with pytest.raises(LeakauditError, match=r"m.jsonl: field 'id': line 4 has the id of line 2"):
        load_records(p)
    p.write_text("".join(json.dumps({"text": f"record {k}"}) + "\n" for k in range(3)))
    assert [r["id"] for r in load_records(p, id_prefix="member-")] == ["member-0", "member-1", "member-2"]


def test_overlapping_pii_spans_of_one_type_are_refused(tmp_path):
    from leakaudit.data import load_records

    text = "Mail Ada Lovelace at ada@example.com"
    p = tmp_path / "m.jsonl"
    same = [{"type": "email", "start": 21, "end": 36}, {"type": "name", "start": 5, "end": 17},
            {"type": "name", "start": 5, "end": 8}]
    p.write_text(json.dumps({"text": text, "pii": same}) + "\n")
    with pytest.raises(LeakauditError, match=r"m.jsonl: line 1: field 'pii': two 'name' spans overlap \(characters "
                       r"5-8 and 5-17\)") as e:
        load_records(p)
    assert "Lovelace" not in str(e.value)
    nested = [*same[:2], {"type": "first_name", "start": 5, "end": 8}]  # other types may nest; order kept
    p.write_text(json.dumps({"text": text, "pii": nested}) + "\n")
    assert load_records(p)[0]["pii"] == nested
