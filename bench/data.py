"""The dataset catalog: each dataset has a local file layout and a Hugging Face hub source.

The local layout is the one of a data directory given by `--data-dir` or `$BENCH_DATA_DIR`:

    wikitext2/wiki.test.raw
    c4_validation_sample/c4_validation_2k.jsonl.gz
    redpajama_sample/c4-rp/sample_c4-rp1.jsonl.gz, sample_c4-rp2.jsonl.gz
    wikipedia_extract/AA/wiki_00.gz ... (WikiExtractor output)

A local file wins; otherwise the hub copy is loaded with `datasets`.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

DATA_DIR_VARIABLE = "BENCH_DATA_DIR"


class DataNotFoundError(FileNotFoundError):
    """Raised when neither the data directory nor the hub has a dataset."""


@dataclass(frozen=True)
class TextDataset:
    """Documents of one dataset and where they came from."""

    name: str
    texts: list[str]
    source: str  # "local:<path>" or "hub:<id>"
    local: bool


@dataclass(frozen=True)
class DatasetSpec:
    """How to find one dataset locally and on the hub."""

    name: str
    description: str
    local_files: tuple[str, ...]  # relative to the data directory; glob patterns allowed
    read_local: Callable[[list[Path]], list[str]]
    hub: Callable[[], list[str]] | None
    hub_id: str


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """Return the local data directory: the explicit one, else $BENCH_DATA_DIR, else None."""
    value = explicit if explicit is not None else os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else None


def _read_jsonl_texts(paths: list[Path]) -> list[str]:
    texts = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError) as error:
                    raise ValueError(f"{path}:{number}: expected a JSON object with a 'text' field ({error}).") from error
    return texts


def _read_wikitext_rows(paths: list[Path]) -> list[str]:
    """Return WikiText rows as the hub has them: one per line, whitespace-only lines as ""."""
    rows = []
    for path in paths:
        with open(path, encoding="utf-8", newline="") as handle:
            for line in handle:
                rows.append(line if line.strip() else "")
    return rows


_DOC_PATTERN = re.compile(r"<doc [^>]*>\n(.*?)</doc>", re.DOTALL)


def _read_wikiextractor(paths: list[Path]) -> list[str]:
    """Parse WikiExtractor output: drop the title line and empty bodies, unescape HTML entities."""
    texts = []
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            content = handle.read()
        for match in _DOC_PATTERN.finditer(content):
            _title, _, body = match.group(1).partition("\n")
            body = html.unescape(body.strip())
            if body:
                texts.append(body)
    return texts


def _hub_texts(path: str, name: str | None, split: str, field: str, data_files: str | None = None) -> Callable[[], list[str]]:
    def load() -> list[str]:
        import datasets

        dataset = datasets.load_dataset(path, name, split=split, data_files=data_files)
        return list(dataset[field])

    return load


CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "wikitext2_test",
            "WikiText-2 raw, test split",
            ("wikitext2/wiki.test.raw",),
            _read_wikitext_rows,
            _hub_texts("wikitext", "wikitext-2-raw-v1", "test", "text"),
            "wikitext/wikitext-2-raw-v1 (test)",
        ),
        DatasetSpec(
            "wikitext2_train",
            "WikiText-2 raw, train split",
            ("wikitext2/wiki.train.raw",),
            _read_wikitext_rows,
            _hub_texts("wikitext", "wikitext-2-raw-v1", "train", "text"),
            "wikitext/wikitext-2-raw-v1 (train)",
        ),
        DatasetSpec(
            "c4_validation",
            "C4 en validation (local: a 2000-document sample)",
            ("c4_validation_sample/c4_validation_2k.jsonl.gz",),
            _read_jsonl_texts,
            _hub_texts(
                "allenai/c4", None, "validation", "text", data_files="en/c4-validation.00000-of-00008.json.gz"
            ),
            "allenai/c4 en/c4-validation.00000-of-00008",
        ),
        DatasetSpec(
            "c4_train",
            "C4 en train (local: 2000 documents, the first 1000 of shard 00000 and 1000 more)",
            ("redpajama_sample/c4-rp/sample_c4-rp1.jsonl.gz", "redpajama_sample/c4-rp/sample_c4-rp2.jsonl.gz"),
            _read_jsonl_texts,
            _hub_texts("allenai/c4", None, "train", "text", data_files="en/c4-train.00000-of-01024.json.gz"),
            "allenai/c4 en/c4-train.00000-of-01024",
        ),
        DatasetSpec(
            "wikipedia",
            "English Wikipedia articles (local: WikiExtractor output, empty documents dropped)",
            ("wikipedia_extract/AA/wiki_*.gz",),
            _read_wikiextractor,
            _hub_texts("wikimedia/wikipedia", "20231101.en", "train[:1%]", "text"),
            "wikimedia/wikipedia 20231101.en (first 1%)",
        ),
    )
}


def _local_paths(spec: DatasetSpec, directory: Path) -> list[Path] | None:
    """Return the dataset's files under `directory`, or None when any of them is missing."""
    paths: list[Path] = []
    for pattern in spec.local_files:
        matches = sorted(directory.glob(pattern))
        if not matches:
            return None
        paths.extend(matches)
    return paths


def load_texts(name: str, directory: str | os.PathLike | None = None) -> TextDataset:
    """Load a catalog dataset from the data directory, else from the hub."""
    if name not in CATALOG:
        raise KeyError(f"Unknown dataset '{name}'. Known datasets: {', '.join(CATALOG)}.")
    spec = CATALOG[name]
    local_dir = data_dir(directory)
    if local_dir is not None:
        if not local_dir.is_dir():
            raise DataNotFoundError(
                f"Data directory {local_dir} does not exist. Fix --data-dir or ${DATA_DIR_VARIABLE}."
            )
        paths = _local_paths(spec, local_dir)
        if paths is not None:
            texts = spec.read_local(paths)
            logger.info("Loaded %s: %d documents from %s", name, len(texts), local_dir)
            return TextDataset(name, texts, f"local:{'+'.join(spec.local_files)}", local=True)

    expected = ", ".join(spec.local_files)
    where = f"the data directory {local_dir}" if local_dir else f"no data directory (--data-dir or ${DATA_DIR_VARIABLE} is unset)"
    if spec.hub is None:
        raise DataNotFoundError(f"{spec.description} not found: expected {expected} in {where}.")
    try:
        texts = spec.hub()
    except Exception as error:  # datasets raises many types for offline, missing or renamed data
        raise DataNotFoundError(
            f"{spec.description} not found: expected {expected} in {where}, and the hub copy "
            f"{spec.hub_id} could not be loaded ({type(error).__name__}: {error}). Point --data-dir or "
            f"${DATA_DIR_VARIABLE} at a directory with that file."
        ) from error
    logger.info("Loaded %s: %d documents from the hub (%s)", name, len(texts), spec.hub_id)
    return TextDataset(name, texts, f"hub:{spec.hub_id}", local=False)
