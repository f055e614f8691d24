"""`bench eval` on a checkpoint in the official BinaryMoS layout: imported, packed, measured."""

import shutil

from bench.cli import main
from bench.results import ResultStore
from tests.test_binarymos_official import official_tensors, tiny_llama_config, write_checkpoint

SETTINGS = """
[settings]
ppl_seqlen = 32
ppl_windows = 1
"""


def official_checkpoint(directory, tiny_model_dir):
    """Write a 2-layer official checkpoint with the default model's tokenizer and vocabulary."""
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    config = tiny_llama_config(vocab_size=vocab_size, tie=True)
    write_checkpoint(directory, config, official_tensors(config))
    for path in tiny_model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, directory / path.name)
    return directory


def test_eval_official_packs_and_records(tmp_path, tiny_model_dir, isolated_cache, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(SETTINGS)
    checkpoint = official_checkpoint(tmp_path / "Tiny-BinaryMoS-E4", tiny_model_dir)
    arguments = ["eval", str(checkpoint), "--config", "tiny.toml", "--metrics", "ppl"]

    assert main(arguments) == 0
    records = ResultStore(tmp_path / "results").records()
    assert sorted(record["metric"]["name"] for record in records) == ["ppl/c4", "ppl/wikitext2"]
    record = records[0]
    assert record["method"]["name"] == "binarymos"
    assert record["method"]["config"]["num_experts"] == 4
    assert record["model"]["name"] == "Tiny-BinaryMoS-E4"
    assert record["storage_measured"]["source"] == "artifact"
    assert abs(record["storage_measured"]["total_bytes"] / record["storage"]["total_bytes"] - 1) < 0.03
    assert record["value"] > 1

    assert main(arguments) == 0
    assert ResultStore(tmp_path / "results").records() == records


def test_eval_official_without_tokenizer(tmp_path, isolated_cache, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tiny_llama_config(tie=True)
    checkpoint = write_checkpoint(tmp_path / "checkpoint", config, official_tensors(config))

    assert main(["eval", str(checkpoint), "--metrics", "ppl"]) == 2
    assert "no tokenizer files" in capsys.readouterr().out
