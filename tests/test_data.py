import gzip
import json

import pytest

from bench.data import DataNotFoundError, load_texts
from bench.training_data import interleave_documents, training_blocks


def test_wikitext_rows_match_hub_layout(data_dir):
    rows = load_texts("wikitext2_test", data_dir).texts
    assert len(rows) == 4358
    assert rows[0] == ""
    assert rows[1] == " = Robert Boulter = \n"
    assert all(row == "" or row.endswith("\n") for row in rows)


def test_c4_validation_sample(data_dir):
    dataset = load_texts("c4_validation", data_dir)
    assert len(dataset.texts) == 2000
    assert dataset.local and dataset.source.startswith("local:")


def test_c4_train_is_both_files(data_dir):
    texts = load_texts("c4_train", data_dir).texts
    assert len(texts) == 2000
    assert texts[0].startswith("Beginners BBQ Class Taking Place in Missoula!")


def test_wikipedia_drops_empty_and_unescapes(data_dir):
    texts = load_texts("wikipedia", data_dir).texts
    assert len(texts) == 36183
    assert all(text.strip() for text in texts)
    assert not any("&amp;" in text for text in texts[:5000])
    assert not any(text.startswith("<doc") for text in texts[:100])


def test_missing_file_names_directory_and_file(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_texts("wikitext2_test", tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "wikitext2/wiki.test.raw" in message


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match=f"Data directory {missing} does not exist"):
        load_texts("c4_train", missing)


def test_malformed_jsonl_names_line(tmp_path):
    target = tmp_path / "c4_validation_sample"
    target.mkdir()
    with gzip.open(target / "c4_validation_2k.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "fine"}) + "\n" + "{broken\n")
    with pytest.raises(ValueError, match=r"c4_validation_2k.jsonl.gz:2: expected a JSON object"):
        load_texts("c4_validation", tmp_path)


def test_interleave_alternates_sources():
    mixed = interleave_documents([["a1", "a2", "a3"], ["b1"]], seed=0)
    assert sorted(mixed) == ["a1", "a2", "a3", "b1"]
    assert mixed[1] == "b1"
    assert interleave_documents([["a1", "a2", "a3"], ["b1"]], seed=0) == mixed


@pytest.mark.slow
def test_training_blocks_from_real_text(default_model, data_dir):
    blocks, description = training_blocks(default_model.tokenizer, ("c4_train", "wikipedia"), 64, 5, 0, data_dir)
    assert blocks.shape == (5, 64)
    assert description["blocks"] == 5
    assert set(description["datasets"]) == {"c4_train", "wikipedia"}
