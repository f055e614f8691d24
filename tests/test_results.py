import json

import pytest

from bench.results import ResultRecord, ResultsStoreError, ResultStore, current_records, record_key


def make_record(key: str, value: float = 1.0) -> ResultRecord:
    return ResultRecord(key=key, model={"name": "m"}, method={"name": "rtn", "config": {}}, metric={"name": "ppl/wikitext2"}, value=value)


def test_append_keeps_existing_lines(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("a"))
    first = store.path.read_bytes()
    store.append(make_record("b", 2.0))
    assert store.path.read_bytes().startswith(first)
    assert [record["key"] for record in store.records()] == ["a", "b"]
    assert store.find("b")["value"] == 2.0


def test_corrupt_line_is_reported_and_nothing_written(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("a"))
    with open(store.path, "a") as handle:
        handle.write("{not json\n")
    before = store.path.read_bytes()
    with pytest.raises(ResultsStoreError, match=r"records.jsonl:2 is not valid JSON"):
        store.append(make_record("b"))
    assert store.path.read_bytes() == before
    assert not list(tmp_path.glob(".records-*"))


def test_record_key_is_order_independent():
    assert record_key({"a": 1, "b": {"c": 2}}) == record_key({"b": {"c": 2}, "a": 1})
    assert record_key({"a": 1}) != record_key({"a": 2})


def test_record_holds_environment_fields(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("a"))
    stored = json.loads(store.path.read_text())
    assert {"timestamp", "environment", "metric", "method", "model", "stage"} <= set(stored)


def versioned(version: int | None, profile: str = "quick", method: str = "binarymos") -> dict:
    identity = {"name": method, "config": {}}
    if version is not None:
        identity["version"] = version
    return {"model": {"name": "m", "revision": "r"}, "method": identity, "profile": profile}


def test_current_records_drop_older_versions():
    old, new, other_profile, other_method = versioned(None), versioned(2), versioned(None, "full"), versioned(None, method="rtn")
    assert current_records([old, new, other_profile, other_method]) == [new, other_profile, other_method]
