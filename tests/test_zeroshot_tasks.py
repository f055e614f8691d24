"""The local zero-shot task configs against lm-eval's own task definitions, and data file checks.

For a seeded sample of documents of each task, the tests build the hub-schema record of each
document straight from the raw local files. They run it through the built-in lm-eval task as
installed (its YAML, with only the dataset swapped). The resulting (context, continuation)
requests must equal those of the local config. HellaSwag's derived file cannot give exact
equality, so its tests pin what matches and what differs.
"""

from __future__ import annotations

import bz2
import json
import random
from pathlib import Path

import pytest

from bench.data import DataNotFoundError
from bench.zeroshot import TASK_CONFIG_DIR, TASKS, ZeroShotProtocol, check_zeroshot_data, evaluate_zeroshot, select_examples
from bench.zeroshot.local_data import LOCAL_SOURCES, MalformedDataError

SAMPLE_SIZE = 40

# ---------------------------------------------------------------------------------------------
# Building lm-eval tasks


def _builtin_task(manager, name: str, docs: list[dict]):
    """Return lm-eval's built-in task `name` (its installed YAML) with `docs` as every split."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        config.pop(key, None)
    dataset = datasets.Dataset.from_list(docs)
    splits = datasets.DatasetDict({"train": dataset, "validation": dataset, "test": dataset})
    config["custom_dataset"] = lambda **_: splits
    return ConfigurableTask(config=config)


def _local_task(name: str, data_dir):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASK_CONFIG_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)})
    return manager.load([name])["tasks"][name]


def _requests(task, samples: list[int] | None = None) -> list[tuple[str, str]]:
    task.build_all_requests(samples=samples, rank=0, world_size=1)
    return [instance.arguments for instance in task.instances]


def _targets(task, samples: list[int] | None = None) -> list:
    docs = list(task.eval_docs)
    chosen = docs if samples is None else [docs[index] for index in samples]
    return [task.doc_to_target(doc) for doc in chosen]


@pytest.fixture(scope="module")
def builtin_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()


# ---------------------------------------------------------------------------------------------
# Hub-schema records built directly from the raw files (independently of bench.zeroshot)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def hub_boolq(data: Path) -> list[dict]:
    # super_glue's boolq joins the article title and the passage with " -- "; label 1 is true.
    rows = _jsonl(data / "boolq" / "dev.jsonl")
    return [
        {"question": row["question"], "passage": row["title"] + " -- " + row["passage"], "idx": index, "label": int(row["answer"])}
        for index, row in enumerate(rows)
    ]


def hub_piqa(data: Path) -> list[dict]:
    rows = _jsonl(data / "piqa" / "valid.jsonl")
    labels = _labels(data / "piqa" / "valid-labels.lst")
    return [{**row, "label": int(label)} for row, label in zip(rows, labels)]


def hub_winogrande(data: Path) -> list[dict]:
    rows = _jsonl(data / "winogrande" / "dev.jsonl")
    return [{key: row[key] for key in ("sentence", "option1", "option2", "answer")} for row in rows]


def hub_arc_easy(data: Path) -> list[dict]:
    return json.loads((data / "arc" / "ARC-Easy" / "test.json").read_text(encoding="utf-8"))


def hub_arc_challenge(data: Path) -> list[dict]:
    return _jsonl(data / "arc" / "ARC-Challenge" / "test.jsonl")


HUB_READERS = {
    "boolq": hub_boolq,
    "piqa": hub_piqa,
    "winogrande": hub_winogrande,
    "arc_easy": hub_arc_easy,
    "arc_challenge": hub_arc_challenge,
}


# ---------------------------------------------------------------------------------------------
# Exact equality for the five tasks with lossless local files


@pytest.mark.parametrize("name", sorted(HUB_READERS))
def test_local_requests_equal_builtin(data_dir, builtin_manager, name):
    hub_docs = HUB_READERS[name](data_dir)
    # The sample always contains the first and last documents and a seeded spread between them.
    middle = random.Random(1).sample(range(1, len(hub_docs) - 1), SAMPLE_SIZE - 2)
    sample = sorted({0, len(hub_docs) - 1, *middle})

    local = _local_task(TASKS[name].local_task, data_dir)
    builtin = _builtin_task(builtin_manager, TASKS[name].hub_task, [hub_docs[index] for index in sample])

    assert len(local.eval_docs) == len(hub_docs)
    assert _requests(local, sample) == _requests(builtin)
    assert _targets(local, sample) == _targets(builtin)


@pytest.mark.parametrize("name", sorted(HUB_READERS))
def test_local_metrics_equal_builtin(data_dir, builtin_manager, name):
    hub_docs = HUB_READERS[name](data_dir)
    local = _local_task(TASKS[name].local_task, data_dir)
    builtin = _builtin_task(builtin_manager, TASKS[name].hub_task, hub_docs[:2])

    assert sorted(local.aggregation()) == sorted(builtin.aggregation())
    assert local.higher_is_better() == builtin.higher_is_better()
    assert sorted(local.aggregation()) == sorted(TASKS[name].metrics)
    assert local.config.target_delimiter == builtin.config.target_delimiter
    assert local.config.fewshot_delimiter == builtin.config.fewshot_delimiter
    assert local.config.metadata["version"] == builtin.config.metadata["version"]


def test_arc_numeric_labels_kept(data_dir):
    rows = hub_arc_easy(data_dir) + hub_arc_challenge(data_dir)
    numeric = [row for row in rows if row["choices"]["label"][0] == "1"]
    local_rows = LOCAL_SOURCES["arc_easy"].read([data_dir / "arc/ARC-Easy/test.json"])
    local_rows += LOCAL_SOURCES["arc_challenge"].read([data_dir / "arc/ARC-Challenge/test.jsonl"])
    local_numeric = [row for row in local_rows if row["choices"]["label"][0] == "1"]

    assert len(numeric) == 97 + 22
    assert [row["answerKey"] for row in local_numeric] == [row["answerKey"] for row in numeric]
    assert all(row["answerKey"] in {"1", "2", "3", "4", "5"} for row in local_numeric)


def test_first_documents_match_hub(data_dir):
    """Values of the first validation/test documents as the hub datasets have them."""
    boolq = LOCAL_SOURCES["boolq"].read([data_dir / "boolq/dev.jsonl"])[0]
    assert boolq["question"] == "does ethanol take more energy make that produces"
    assert boolq["passage"].startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert boolq["label"] == 0

    piqa = LOCAL_SOURCES["piqa"].read([data_dir / "piqa/valid.jsonl", data_dir / "piqa/valid-labels.lst"])[0]
    assert piqa["goal"] == "How do I ready a guinea pig cage for it's new occupants?"
    assert piqa["label"] == 0

    winogrande = LOCAL_SOURCES["winogrande"].read([data_dir / "winogrande/dev.jsonl", data_dir / "winogrande/dev-labels.lst"])[0]
    assert winogrande["sentence"] == "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert winogrande["answer"] == "2"

    arc = LOCAL_SOURCES["arc_easy"].read([data_dir / "arc/ARC-Easy/test.json"])[0]
    assert (arc["id"], arc["answerKey"]) == ("Mercury_417466", "A")


# ---------------------------------------------------------------------------------------------
# HellaSwag: the derived text file

# The first ten rows of rowanz/hellaswag data/hellaswag_val.jsonl (MIT licence), the source of
# both the hub dataset Rowan/hellaswag and the local text file. All are ActivityNet tasks.
HELLASWAG_VAL_HEAD = [
    ("Roof shingle removal", "A man is sitting on a roof.", "he", 3,
     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
      "starts pulling up roofing on a roof."]),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady", 3,
     ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
      "stands and lifts the weight over her head."]),
    ("Canoeing", "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, "
     "with other individuals visible in the background.", "the child and a different man", 2,
     ["are then shown paddling down a river in a boat while a woman talks.",
      "are driving the canoe, they go down the river flowing side to side.", "sit in a canoe while the man paddles.",
      "walking go down the rapids, while the man in his helicopter almost falls and goes out of canoehood."]),
    ("High jump", "A boy is running down a track.", "the boy", 2,
     ["runs into a car.", "gets in a mat.", "lifts his body above the height of a pole.", "stands on his hands and springs."]),
    ("High jump", "The boy lifts his body above the height of a pole. The boy lands on his back on to a red mat.", "the boy", 1,
     ["turns his body around on the mat.", "gets up from the mat.", "continues to lift his body over the pole.",
      "wiggles out of the mat."]),
    ("High jump", "The boy lands on his back on to a red mat. The boy gets up from the mat.", "the boy", 1,
     ["starts doing spins.", "celebrates by clapping and flexing both arms.", "is dancing on the mat.",
      "does jump jacks on his stick."]),
    ("Playing harmonica", "A man is standing in front of a camera. He starts playing a harmonica for the camera.", "he", 2,
     ["begins to play the harmonica with his body while looking at the camera.",
      "seems to be singing while playing the harmonica.", "rocks back and forth to the music as he goes.",
      "painted a fence in front of the camera."]),
    ("Sumo", "A cartoon animation video is shown with people wandering around and rockets being shot.", "two men", 0,
     ["fight robots of evil and ends with a to be continued.", "are then shown in closeups shooting a shot put.",
      "push a child in a speedboat in the water.", "look in the cameraman's eye and smile."]),
    ("Sharpening knives", "A man is holding a pocket knife while sitting on some rocks in the wilderness.", "then he", 1,
     ["opens a can of oil put oil on the knife, and puts oil on a knife and press it through a can filled with oil "
      "then cuts several pieces from the sandwiches.",
      "takes a small stone from the flowing river and smashes it on another stone.", "uses the knife to shave his leg.",
      "sand the rocks and tops them by using strong pressure."]),
    ("Sharpening knives", "Then he takes a small stone from the flowing river and smashes it on another stone. "
     "He starts to crush the small stone to smaller pieces.", "he", 1,
     ["cuts the center stone in half and blow it on to make it bigger.", "grind it hard to make the pieces smaller.",
      "eventually brings it back into view and adds it to the smaller ones to make a small triangular shaped piece.",
      "starts to party with them and throw the pieces by hand while they celebrate."]),
]


def hub_hellaswag_row(activity_label, ctx_a, ctx_b, label, endings) -> dict:
    """Return a row in the schema of Rowan/hellaswag (label is a string there)."""
    ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
    return {
        "ind": 0, "activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx, "endings": endings,
        "source_id": "", "split": "val", "split_type": "indomain", "label": str(label),
    }


def extractor_cleanup(text: str) -> str:
    """Port of preprocess_data in klosax/hellaswag_text_data extract_hellaswag.cpp, which made the local file."""
    for search, replacement in (
        ("[header]", ""), ("[step]", ""), ("[substeps]", ""), (" [title]", ". "), ("[title] ", ""), ("[title].", ""), ("  ", " "),
    ):
        text = text.replace(search, replacement)
    if text.startswith(" "):
        text = text[1:]
    if text.endswith(" "):
        text = text[:-1]
    return text


def write_hellaswag_file(directory: Path, rows: list[dict]) -> None:
    """Write hub rows in the local 6-lines-per-task format, as the extractor does."""
    lines = []
    for row in rows:
        lines.append(extractor_cleanup(row["activity_label"]) + ": " + extractor_cleanup(row["ctx"]))
        lines.append(row["label"])
        lines += [extractor_cleanup(ending) for ending in row["endings"]]
    path = directory / LOCAL_SOURCES["hellaswag"].files[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    with bz2.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_hellaswag_extractor_port_matches_file(data_dir):
    """The port reproduces the first ten tasks of the local file from their hub rows."""
    with bz2.open(data_dir / LOCAL_SOURCES["hellaswag"].files[0], "rt", encoding="utf-8") as handle:
        head = [next(handle).rstrip("\n") for _ in range(6 * len(HELLASWAG_VAL_HEAD))]
    for number, fields in enumerate(HELLASWAG_VAL_HEAD):
        row = hub_hellaswag_row(*fields)
        expected = [f"{row['activity_label']}: {extractor_cleanup(row['ctx'])}", row["label"], *map(extractor_cleanup, row["endings"])]
        assert head[6 * number : 6 * number + 6] == expected


def test_hellaswag_real_rows_equal_builtin(data_dir, builtin_manager):
    """On the first ten validation rows (ActivityNet) the local file gives lm-eval's exact requests."""
    rows = [hub_hellaswag_row(*fields) for fields in HELLASWAG_VAL_HEAD]
    sample = list(range(len(rows)))
    local = _local_task("hellaswag_local", data_dir)
    builtin = _builtin_task(builtin_manager, "hellaswag", rows)

    local_requests = _requests(local, sample)
    assert local_requests == _requests(builtin)
    assert _targets(local, sample) == _targets(builtin)
    assert local_requests[0] == ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis.")


# Rows in the hub schema that exercise what the derived file keeps and loses.
WIKIHOW_ROW = hub_hellaswag_row(
    "Home and Garden",
    "[header] How to clean a window [title] Mix warm water and dish soap. [step] Fill a bucket with warm water.",
    "",
    0,
    [
        "[substeps] Add a few drops of dish soap and stir.",
        "Add a cup of vinegar to the water. [substeps] Vinegar cuts through grease.",
        "[title] Wipe the window with a squeegee. [step] Start at the top.",
        "Visit a site like [www.example.org] for more tips.",
    ],
)
ACTIVITYNET_ROW_EXACT = hub_hellaswag_row(
    "Playing guitar", "A man sits on a stool holding a guitar.", "then John", 1,
    ["plays a song.", "eats the guitar.", "jumps off the roof.", "sleeps on the stool."],
)
ACTIVITYNET_ROW_PERIOD_IN_CTX_B = hub_hellaswag_row(
    "Playing guitar", "A man waves at the camera.", "the man in the st. louis shirt", 2,
    ["walks away.", "sings.", "plays the guitar.", "sits down."],
)


def test_hellaswag_documented_differences(tmp_path, builtin_manager):
    rows = [WIKIHOW_ROW, ACTIVITYNET_ROW_EXACT, ACTIVITYNET_ROW_PERIOD_IN_CTX_B]
    write_hellaswag_file(tmp_path, rows)
    local = _requests(_local_task("hellaswag_local", tmp_path), [0, 1, 2])
    builtin = _requests(_builtin_task(builtin_manager, "hellaswag", rows))
    assert len(local) == len(builtin) == 12

    wikihow_query = "Home and Garden: How to clean a window. Mix warm water and dish soap. Fill a bucket with warm water."
    assert [context for context, _ in local[:4]] == [wikihow_query] * 4
    assert [context for context, _ in builtin[:4]] == [wikihow_query] * 4
    # Endings that began with a tag: lm-eval keeps the space after the deleted tag, the file does not.
    assert builtin[0][1] == "  Add a few drops of dish soap and stir."
    assert local[0][1] == " Add a few drops of dish soap and stir."
    assert builtin[2][1] == "  Wipe the window with a squeegee. Start at the top."
    assert local[2][1] == " Wipe the window with a squeegee. Start at the top."
    # Tags inside an ending and other brackets come out the same.
    assert local[1] == builtin[1]
    assert local[3] == builtin[3]
    assert builtin[3][1] == " Visit a site like for more tips."

    # ctx_b after the last sentence end is rebuilt exactly, capitalize() lowercasing included.
    assert local[4:8] == builtin[4:8]
    assert local[4][0] == "Playing guitar: A man sits on a stool holding a guitar. Then john"

    # A sentence end inside ctx_b misplaces the split, and the case differs.
    assert builtin[8][0] == "Playing guitar: A man waves at the camera. The man in the st. louis shirt"
    assert local[8][0] == "Playing guitar: A man waves at the camera. the man in the st. Louis shirt"
    assert [continuation for _, continuation in local[8:]] == [continuation for _, continuation in builtin[8:]]


def test_hellaswag_file_shape(data_dir):
    rows = LOCAL_SOURCES["hellaswag"].read([data_dir / LOCAL_SOURCES["hellaswag"].files[0]])
    sources = [row["source"] for row in rows]
    assert len(rows) == 10042
    # The validation set lists its 3243 ActivityNet tasks first, then the WikiHow ones.
    assert sources == ["activitynet"] * 3243 + ["wikihow"] * (10042 - 3243)
    assert all(row["query"] and len(row["choices"]) == 4 for row in rows)


# ---------------------------------------------------------------------------------------------
# Missing or malformed data files fail before any model work


class UntouchableModel:
    """A model stand-in that fails the test if evaluation gets as far as using it."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used (attribute {name!r}) before the data check failed")


def _linked_data_dir(data_dir: Path, tmp_path: Path, replace: dict[str, str | bytes | None]) -> Path:
    """Build a data directory of symbolic links to the real files, with some files replaced or removed."""
    root = tmp_path / "data"
    for source in LOCAL_SOURCES.values():
        for name in source.files:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in replace:
                content = replace[name]
                if content is None:
                    continue
                if isinstance(content, bytes):
                    target.write_bytes(content)
                else:
                    target.write_text(content, encoding="utf-8")
            else:
                target.symlink_to(data_dir / name)
    return root


BROKEN_FILES = [
    ("piqa/valid-labels.lst", None, DataNotFoundError, "valid-labels.lst"),
    ("piqa/valid-labels.lst", "0\n1\n", MalformedDataError, "has 2 labels"),
    ("boolq/dev.jsonl", '{"question": "q", "title": "t", "passage": "p", "answer": true}\n{not json\n', MalformedDataError, "dev.jsonl:2"),
    ("boolq/dev.jsonl", '{"question": "q", "title": "t", "passage": "p", "answer": "yes"}\n', MalformedDataError, "'answer'"),
    ("winogrande/dev.jsonl", None, DataNotFoundError, "winogrande/dev.jsonl"),
    ("arc/ARC-Easy/test.json", '{"id": "x"}', MalformedDataError, "JSON array"),
    (
        "arc/ARC-Challenge/test.jsonl",
        '{"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"}\n',
        MalformedDataError,
        "answerKey 'C'",
    ),
    ("hellaswag/hellaswag_val_full.txt.bz2", b"plain text, not bz2", MalformedDataError, "bz2"),
    ("hellaswag/hellaswag_val_full.txt.bz2", bz2.compress(b"Label: ctx\n7\na\nb\nc\nd\n"), MalformedDataError, "gold label '7'"),
    ("hellaswag/hellaswag_val_full.txt.bz2", bz2.compress(b"Label: ctx\n1\na\nb\n"), MalformedDataError, "multiple of 6"),
]


@pytest.mark.parametrize("name, content, error, message", BROKEN_FILES)
def test_broken_file_fails_before_model(data_dir, tmp_path, name, content, error, message):
    data = _linked_data_dir(data_dir, tmp_path, {name: content})
    with pytest.raises(error) as raised:
        evaluate_zeroshot(UntouchableModel(), None, ZeroShotProtocol(), data)
    assert name in str(raised.value)
    assert message in str(raised.value)


def test_check_reads_only_protocol_tasks(data_dir, tmp_path):
    data = _linked_data_dir(data_dir, tmp_path, {"boolq/dev.jsonl": None})
    check_zeroshot_data(ZeroShotProtocol(tasks=("piqa", "winogrande")), data)
    with pytest.raises(DataNotFoundError, match="boolq/dev.jsonl"):
        check_zeroshot_data(ZeroShotProtocol(tasks=("piqa", "boolq")), data)


def test_missing_data_directory_fails(tmp_path):
    with pytest.raises(DataNotFoundError, match="does-not-exist"):
        check_zeroshot_data(ZeroShotProtocol(), tmp_path / "does-not-exist")


def test_no_data_directory_checks_nothing(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    assert check_zeroshot_data(ZeroShotProtocol()) is None


def test_hub_unreachable_names_data_dir(monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        evaluate_zeroshot(UntouchableModel(), None, ZeroShotProtocol(tasks=("piqa",)))


# ---------------------------------------------------------------------------------------------
# Protocol and subset selection


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tasks": ("piqa", "hellaswagg")}, "Did you mean 'hellaswag'"),
        ({"tasks": ()}, "must not be empty"),
        ({"tasks": ("piqa", "piqa")}, "duplicates"),
        ({"num_fewshot": 5}, "only 0-shot"),
        ({"limit": 0}, "positive integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"lm_eval_version": "0.0.1"}, "0.0.1"),
    ],
)
def test_protocol_rejects_invalid(settings, message):
    with pytest.raises(ValueError, match=message):
        ZeroShotProtocol(**settings)


def test_protocol_defaults_to_six_tasks():
    protocol = ZeroShotProtocol(tasks=["piqa"])
    assert protocol.tasks == ("piqa",)
    assert ZeroShotProtocol().tasks == ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge")


def test_subset_is_seeded_and_sorted():
    first = select_examples(1838, 200, seed=0)
    assert first == select_examples(1838, 200, seed=0)
    assert first == sorted(set(first))
    assert len(first) == 200
    assert first != select_examples(1838, 200, seed=1)
    assert select_examples(1838, None, seed=0) is None
    assert select_examples(100, 100, seed=0) is None
    assert select_examples(100, 500, seed=0) is None
