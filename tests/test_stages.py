"""Cached stages: built once per key, rebuilt for another key, and never over a user's own files."""

import pytest

from leakaudit.errors import LeakauditError
from leakaudit.runs import EventLog, stage


def _writer(text: str):
    def build(tmp):
        (tmp / "out.txt").write_text(text)
    return build


def test_a_stage_is_cached_by_key_and_rebuilt_for_another(tmp_path):
    log = EventLog(tmp_path)
    out = stage(tmp_path, "data", {"v": 1}, _writer("one"), log)
    assert (out / "out.txt").read_text() == "one" and (out / "stage.json").is_file()
    assert (stage(tmp_path, "data", {"v": 1}, _writer("two"), log) / "out.txt").read_text() == "one"  # cached
    assert (stage(tmp_path, "data", {"v": 2}, _writer("two"), log) / "out.txt").read_text() == "two"  # rebuilt


def test_a_users_own_folder_in_the_way_is_never_replaced(tmp_path):
    """'demo --out proj' over a project with its own data/ folder deleted the folder's files."""
    log = EventLog(tmp_path)
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "precious.csv").write_text("x")
    with pytest.raises(LeakauditError, match=r"data: exists and is not a leakaudit output.*'data' stage"):
        stage(tmp_path, "data", {"v": 1}, _writer("one"), log)
    assert (mine / "precious.csv").read_text() == "x" and not (mine / "out.txt").exists()
    (tmp_path / "canaries").write_text("a file where a stage goes")
    with pytest.raises(LeakauditError, match="not a leakaudit output"):
        stage(tmp_path, "canaries", {"v": 1}, _writer("one"), log)
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    assert (stage(tmp_path, "empty", {"v": 1}, _writer("one"), log) / "out.txt").is_file()
