"""Load user corpora from JSONL, JSON, CSV, Parquet, plain text or a saved ``datasets`` directory."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from leakaudit.errors import LeakauditError

_TABLE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line; a bad line is named by its number."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LeakauditError(f"{path}: line {i}: not valid JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise LeakauditError(
                        f"{path}: line {i}: expected a JSON object (a record with fields), got {type(obj).__name__}"
                    )
                rows.append(obj)
    except UnicodeDecodeError as e:
        raise LeakauditError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not rows:
        raise LeakauditError(f"{path}: the corpus is empty")
    df = pd.DataFrame.from_records(rows)
    if "id" in df.columns:  # ids as written: a column with gaps would turn 7 into 7.0 and round ids past 2^53
        df["id"] = pd.Series([r.get("id") for r in rows], dtype=object)
    return df


def _mixed_field(df: pd.DataFrame) -> str | None:
    """The first field whose values are of more than one type (which a table column cannot hold)."""
    for col in df.columns:
        kinds = {type(v).__name__ for v in df[col] if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1:
            return f"field '{col}' mixes value types ({', '.join(sorted(kinds))}); give every record the same type"
    return None


def _redacted(e: BaseException) -> str:
    """The first line of a library's error with every quoted value blanked: parsers quote the offending
    cell, which may be personal data, and errors end up in logs and issue reports."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"""(['"])(?:(?!\1).)*\1""", r"\1…\1", first)


def _to_dataset(path: Path, df: pd.DataFrame) -> datasets.Dataset:
    try:
        return datasets.Dataset.from_pandas(df, preserve_index=False)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, ArrowTypeError and others
        column = re.search(r"for column (\S+)", str(e))
        detail = f"column '{column.group(1)}' holds values of different types" if column else _redacted(e)
        raise LeakauditError(f"{path}: {_mixed_field(df) or 'cannot read as a table: ' + detail}") from None


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    try:
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "json":
            return pd.read_json(path, dtype=False)
        if kind == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        if "No columns" in str(e) or "empty" in str(e).lower():
            raise LeakauditError(f"{path}: the corpus is empty") from None
        raise LeakauditError(f"{path}: cannot read as {kind}: {_redacted(e)}") from None


def load_corpus(path: str | Path, *, text_field: str = "text") -> datasets.Dataset:
    """Load a corpus as a ``datasets.Dataset`` whose rows carry ``text_field``.

    The format is chosen from the suffix (``.jsonl``, ``.json``, ``.csv``, ``.parquet``,
    ``.txt``: one record per non-empty line) or, for a directory, ``datasets.load_from_disk``.
    Errors name the file and the field: a missing file, an empty corpus, an absent text field,
    or a text field holding something other than non-empty strings.
    """
    p = Path(path)
    if not p.exists():
        raise LeakauditError(f"{p}: no such file or directory")
    if p.is_dir():
        if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
            raise LeakauditError(f"{p}: a directory must be a dataset saved with datasets.save_to_disk")
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - the library raises many types here
            raise LeakauditError(f"{p}: cannot load saved dataset: {str(e).splitlines()[0]}") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise LeakauditError(f"{p}: a DatasetDict needs a 'train' split (found {sorted(ds)})")
            ds = ds["train"]
    elif p.suffix.lower() == ".txt":
        try:
            # Records end at "\n" (or "\r\n") only: str.splitlines would also split a record at
            # form feeds, "\x1c"-"\x1e", "\x85" or U+2028/U+2029 inside it.
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").split("\n")]
        except UnicodeDecodeError as e:
            raise LeakauditError(f"{p}: not UTF-8 text (byte {e.start})") from None
        ds = datasets.Dataset.from_dict({text_field: [ln for ln in lines if ln]})
    elif p.suffix.lower() in _TABLE_SUFFIXES:
        if p.stat().st_size == 0:
            raise LeakauditError(f"{p}: the corpus is empty")
        df = _read_table(p, _TABLE_SUFFIXES[p.suffix.lower()])
        ds = _to_dataset(p, df)
    else:
        raise LeakauditError(
            f"{p}: unknown corpus format '{p.suffix}' (use .jsonl, .json, .csv, .parquet, .txt or a saved dataset)"
        )
    if len(ds) == 0:
        raise LeakauditError(f"{p}: the corpus is empty")
    if text_field not in ds.column_names:
        raise LeakauditError(
            f"{p}: text field '{text_field}' is absent (fields: {', '.join(ds.column_names)}); "
            "choose one with --text-field"
        )
    bad = [i for i, t in enumerate(ds[text_field]) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise LeakauditError(
            f"{p}: field '{text_field}' is empty or not text in {len(bad)} record(s), first at {where(p, bad[0])}"
        )
    return ds


def where(path: str | Path, i: int) -> str:
    """Where the ``i``-th record (from 0) of a corpus lies, as its user would look for it: the line of a
    JSON-lines or text file (blank lines hold no record), else the record's number counting from 1."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() in {".jsonl", ".ndjson", ".txt"}:
        with open(p, encoding="utf-8") as f:
            records = (n for n, line in enumerate(f, 1) if line.strip())
            return f"line {next(itertools.islice(records, i, None))}"
    return f"record {i + 1}"


def load_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """The text column of :func:`load_corpus` as a list of strings."""
    return list(load_corpus(path, text_field=text_field)[text_field])


def _missing(value: Any) -> bool:
    """A table cell with no value: None, or NaN (how pandas reads an empty cell)."""
    return value is None or (isinstance(value, float) and value != value)


def record_id(row: dict, i: int, prefix: str = "") -> str:
    """A record's id, or ``prefix`` + its row number when it has none."""
    return f"{prefix}{i}" if _missing(row.get("id")) else str(row["id"])


def user_of(value: Any) -> str | None:
    """A record's user id as a string, or None when it has none (None, NaN, "" or blanks; 0 is a user)."""
    if _missing(value):
        return None
    text = str(value)
    return text if text.strip() else None


def _pii_spans(value: Any, text: str, locate: Callable[[], str]) -> list[dict] | None:
    """A record's annotated PII spans ``[{"type", "start", "end"}, ...]`` checked against its text
    (a table cell may hold them as a JSON string); None when the record has none.  ``locate()`` names the
    record in an error."""
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if hasattr(value, "tolist"):  # a Parquet list column reads as an array
        value = value.tolist()
    expected = 'a list of spans {"type": str, "start": int, "end": int} into the text'
    if not isinstance(value, list):
        raise LeakauditError(f"{locate()}: field 'pii': expected {expected}")
    spans = []
    for span in value:
        ok = isinstance(span, dict) and isinstance(span.get("type"), str)
        start, end = (span.get("start"), span.get("end")) if ok else (None, None)
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end))
        if not ok or not 0 <= start < end <= len(text):
            got = ({k: type(v).__name__ for k, v in span.items()} if isinstance(span, dict) else type(span).__name__)
            if ok:
                got = f"start {start}, end {end} in a text of {len(text)} characters"
            # (the span's values are never quoted: an annotation may carry the PII value itself)
            raise LeakauditError(f"{locate()}: field 'pii': expected {expected}, got {got}")
        spans.append({"type": span["type"], "start": start, "end": end})
    # spans of one type must not overlap: reconstruction fills all of a type's spans with one candidate, and
    # two overlapping ones would garble the text (spans of different types may nest: a first name in a name)
    ordered = sorted(spans, key=lambda sp: (sp["type"], sp["start"], sp["end"]))
    for a, b in zip(ordered, ordered[1:]):
        if a["type"] == b["type"] and b["start"] < a["end"]:
            raise LeakauditError(f"{locate()}: field 'pii': two '{a['type']}' spans overlap (characters "
                                 f"{a['start']}-{a['end']} and {b['start']}-{b['end']}); annotate each value once")
    return spans


def load_records(path: str | Path, *, text_field: str = "text", id_prefix: str = "") -> list[dict]:
    """A corpus as audit records ``{"id", "text", "user_id", "pii"}``.

    ``id``: the record's own id column, or ``id_prefix`` + its row number (so that two files without
    ids do not share ids); ``user_id``: optional, see :func:`user_of`; ``pii``: optional annotated
    spans, checked here so that a malformed column fails now, naming the file and row, not after
    the scoring.
    """
    ds = load_corpus(path, text_field=text_field)
    rows = []
    first: dict[str, int] = {}
    for i, r in enumerate(ds):
        text = r[text_field]
        rid = record_id(r, i, id_prefix)
        if rid in first:  # results are kept per id: two records with one id would merge into one
            raise LeakauditError(f"{path}: field 'id': {where(path, i)} has the id of {where(path, first[rid])}; "
                                 "give every record its own id, or leave the field out to number them")
        first[rid] = i
        rows.append({"id": rid, "text": text, "user_id": user_of(r.get("user_id")),
                     "pii": _pii_spans(r.get("pii"), text, lambda i=i: f"{path}: {where(path, i)}")})
    return rows
