"""Readers that turn the local zero-shot data files into rows in the Hugging Face hub's schema.

Each reader validates its files and raises an error that names the file and the line, so a
missing or malformed file fails before any model work. The rows have the fields and value types
of the dataset that lm-eval's built-in task loads from the hub, so the local task configs can use
the built-in prompt templates unchanged:

    boolq       dev.jsonl              -> aps/super_glue boolq: passage is "<title> -- <passage>",
                                          label 1 for true
    piqa        valid.jsonl + labels   -> baber/piqa: goal, sol1, sol2, label
    winogrande  dev.jsonl + labels     -> allenai/winogrande winogrande_xl: sentence, option1,
                                          option2, answer ("1" or "2")
    arc_*       test.json[l]           -> allenai/ai2_arc: id, question, choices{text,label},
                                          answerKey (numeric labels such as "1" kept)
    hellaswag   derived text (.bz2)    -> see bench.zeroshot.hellaswag; the hub fields that the
                                          file lost are rebuilt where possible
"""

from __future__ import annotations

import bz2
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.data import DATA_DIR_VARIABLE, DataNotFoundError, data_dir
from bench.zeroshot.hellaswag import HELLASWAG_LINES_PER_TASK, parse_hellaswag_task

logger = logging.getLogger(__name__)


class MalformedDataError(ValueError):
    """Raised when a local data file exists but does not have the expected format."""


@dataclass(frozen=True)
class LocalSource:
    """The local files of one task, relative to the data directory, and how to read them."""

    files: tuple[str, ...]
    split: str  # the split name the built-in lm-eval task evaluates on
    read: Callable[[list[Path]], list[dict]]

    @property
    def label(self) -> str:
        return "local:" + "+".join(self.files)


def _malformed(path: Path, line: int | None, problem: str) -> MalformedDataError:
    where = f"{path}:{line}" if line is not None else str(path)
    return MalformedDataError(
        f"{where}: {problem}. Replace the file with an intact copy of the original, or unset "
        f"${DATA_DIR_VARIABLE} / --data-dir to use the hub copy."
    )


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise _malformed(path, None, f"not UTF-8 text ({error})") from error


def _read_jsonl(path: Path, required: dict[str, type | tuple[type, ...]]) -> list[dict]:
    """Parse a JSON-lines file, checking that each object has the required fields and types."""
    records = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise _malformed(path, number, f"invalid JSON ({error})") from error
        _check_fields(path, number, record, required)
        records.append(record)
    if not records:
        raise _malformed(path, None, "the file contains no records")
    return records


def _check_fields(path: Path, line: int | None, record, required: dict[str, type | tuple[type, ...]]) -> None:
    if not isinstance(record, dict):
        raise _malformed(path, line, f"expected a JSON object, got {type(record).__name__}")
    for name, expected in required.items():
        if name not in record:
            raise _malformed(path, line, f"missing field '{name}'")
        if not isinstance(record[name], expected):
            raise _malformed(path, line, f"field '{name}' has type {type(record[name]).__name__}")


def _read_labels(path: Path, allowed: set[str], count: int, data_path: Path) -> list[str]:
    """Read a one-label-per-line file that must align with `count` records of `data_path`."""
    labels = [line.strip() for line in _read_lines(path)]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != count:
        raise _malformed(path, None, f"has {len(labels)} labels but {data_path.name} has {count} records")
    for number, label in enumerate(labels, start=1):
        if label not in allowed:
            raise _malformed(path, number, f"label {label!r} is not one of {sorted(allowed)}")
    return labels


def read_boolq(paths: list[Path]) -> list[dict]:
    """Read the BoolQ dev file into super_glue's boolq schema, which joins title and passage with " -- "."""
    (path,) = paths
    records = _read_jsonl(path, {"question": str, "title": str, "passage": str, "answer": bool})
    return [
        {
            "question": record["question"],
            "passage": f"{record['title']} -- {record['passage']}",
            "idx": index,
            "label": int(record["answer"]),
        }
        for index, record in enumerate(records)
    ]


def read_piqa(paths: list[Path]) -> list[dict]:
    """Read PIQA's questions and its separate labels file into one row per question."""
    data_path, labels_path = paths
    records = _read_jsonl(data_path, {"goal": str, "sol1": str, "sol2": str})
    labels = _read_labels(labels_path, {"0", "1"}, len(records), data_path)
    return [
        {"goal": record["goal"], "sol1": record["sol1"], "sol2": record["sol2"], "label": int(label)}
        for record, label in zip(records, labels)
    ]


def read_winogrande(paths: list[Path]) -> list[dict]:
    """Read WinoGrande dev; the labels file must agree with each record's own answer."""
    data_path, labels_path = paths
    records = _read_jsonl(data_path, {"sentence": str, "option1": str, "option2": str, "answer": str})
    labels = _read_labels(labels_path, {"1", "2"}, len(records), data_path)
    rows = []
    for number, (record, label) in enumerate(zip(records, labels), start=1):
        if record["answer"] != label:
            raise _malformed(
                data_path, number, f"answer {record['answer']!r} disagrees with line {number} of {labels_path.name} ({label!r})"
            )
        if "_" not in record["sentence"]:
            raise _malformed(data_path, number, "the sentence has no '_' blank")
        rows.append(
            {
                "sentence": record["sentence"],
                "option1": record["option1"],
                "option2": record["option2"],
                "answer": record["answer"],
            }
        )
    return rows


def _arc_row(path: Path, line: int | None, record) -> dict:
    _check_fields(path, line, record, {"id": str, "question": str, "choices": dict, "answerKey": str})
    choices = record["choices"]
    _check_fields(path, line, choices, {"text": list, "label": list})
    if len(choices["text"]) != len(choices["label"]) or len(choices["text"]) < 2:
        raise _malformed(path, line, f"choices of {record['id']} need matching 'text' and 'label' lists of two or more")
    if record["answerKey"] not in choices["label"]:
        raise _malformed(path, line, f"answerKey {record['answerKey']!r} of {record['id']} is not among its labels")
    return {
        "id": record["id"],
        "question": record["question"],
        "choices": {"text": list(choices["text"]), "label": list(choices["label"])},
        "answerKey": record["answerKey"],
    }


def read_arc(paths: list[Path]) -> list[dict]:
    """Read an ARC split stored as a JSON array (.json) or as JSON lines (.jsonl)."""
    (path,) = paths
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _malformed(path, number, f"invalid JSON ({error})") from error
            rows.append(_arc_row(path, number, record))
    else:
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _malformed(path, None, f"invalid JSON ({error})") from error
        if not isinstance(records, list):
            raise _malformed(path, None, f"expected a JSON array of questions, got {type(records).__name__}")
        rows = [_arc_row(path, None, record) for record in records]
    if not rows:
        raise _malformed(path, None, "the file contains no questions")
    return rows


def read_hellaswag(paths: list[Path]) -> list[dict]:
    """Read the 6-lines-per-task HellaSwag text file (bz2) into rows; see bench.zeroshot.hellaswag."""
    (path,) = paths
    try:
        with bz2.open(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise _malformed(path, None, f"not a readable bz2-compressed UTF-8 text file ({error})") from error
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or len(lines) % HELLASWAG_LINES_PER_TASK:
        raise _malformed(
            path, None, f"has {len(lines)} lines, expected a non-zero multiple of {HELLASWAG_LINES_PER_TASK} (context, label, 4 endings)"
        )
    rows = []
    for start in range(0, len(lines), HELLASWAG_LINES_PER_TASK):
        try:
            rows.append(parse_hellaswag_task(lines[start : start + HELLASWAG_LINES_PER_TASK]))
        except ValueError as error:
            raise _malformed(path, start + 1, str(error)) from error
    return rows


LOCAL_SOURCES: dict[str, LocalSource] = {
    "boolq": LocalSource(("boolq/dev.jsonl",), "validation", read_boolq),
    "piqa": LocalSource(("piqa/valid.jsonl", "piqa/valid-labels.lst"), "validation", read_piqa),
    "hellaswag": LocalSource(("hellaswag/hellaswag_val_full.txt.bz2",), "validation", read_hellaswag),
    "winogrande": LocalSource(("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), "validation", read_winogrande),
    "arc_easy": LocalSource(("arc/ARC-Easy/test.json",), "test", read_arc),
    "arc_challenge": LocalSource(("arc/ARC-Challenge/test.jsonl",), "test", read_arc),
}

_ROWS_CACHE: dict[tuple, list[dict]] = {}


def local_paths(task: str, directory: Path) -> list[Path]:
    """Return the task's local files under `directory`, raising DataNotFoundError naming a missing one."""
    source = LOCAL_SOURCES[task]
    paths = [directory / name for name in source.files]
    for path in paths:
        if not path.is_file():
            raise DataNotFoundError(
                f"{task}: local data file {path} not found. Put the file there, point --data-dir or "
                f"${DATA_DIR_VARIABLE} at a directory that has it, or unset both to use the hub copy."
            )
    return paths


def read_local_rows(task: str, directory: str | os.PathLike) -> list[dict]:
    """Return the task's rows in the hub schema, read from the data directory (cached per file version)."""
    if task not in LOCAL_SOURCES:
        raise KeyError(f"No local source for zero-shot task '{task}'. Known tasks: {', '.join(LOCAL_SOURCES)}.")
    paths = local_paths(task, Path(directory))
    key = (task, *((str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in paths))
    if key not in _ROWS_CACHE:
        _ROWS_CACHE[key] = LOCAL_SOURCES[task].read(paths)
        logger.info("Read %d %s examples from %s", len(_ROWS_CACHE[key]), task, ", ".join(map(str, paths)))
    return _ROWS_CACHE[key]


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """Return the data directory (explicit, else $BENCH_DATA_DIR), raising if it is set but absent."""
    directory = data_dir(explicit)
    if directory is not None and not directory.is_dir():
        raise DataNotFoundError(f"Data directory {directory} does not exist. Fix --data-dir or ${DATA_DIR_VARIABLE}.")
    return directory


def load_local_dataset(task: str, data_dir_value: str | os.PathLike | None = None):
    """Return a datasets.DatasetDict with the task's local rows under the split lm-eval evaluates.

    This is the `custom_dataset` of the local lm-eval task configs. The data directory comes
    from the task metadata (`data_dir`), else from $BENCH_DATA_DIR.
    """
    import datasets

    directory = resolve_data_dir(data_dir_value)
    if directory is None:
        raise DataNotFoundError(
            f"The local lm-eval task for {task} needs a data directory: pass metadata data_dir "
            f"(lm_eval --metadata '{{\"data_dir\": \"/path/to/data\"}}') or set ${DATA_DIR_VARIABLE}."
        )
    rows = read_local_rows(task, directory)
    return datasets.DatasetDict({LOCAL_SOURCES[task].split: datasets.Dataset.from_list(rows)})
