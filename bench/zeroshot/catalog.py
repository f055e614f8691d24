"""The zero-shot tasks: lm-eval's built-in task for the hub and the local task config for local files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.zeroshot.local_data import LOCAL_SOURCES

TASK_CONFIG_DIR = Path(__file__).parent / "tasks"


@dataclass(frozen=True)
class ZeroShotTask:
    """One task of the benchmark and the two lm-eval tasks that can evaluate it."""

    name: str
    hub_task: str  # lm-eval's built-in task, reading the Hugging Face hub
    local_task: str  # the config in TASK_CONFIG_DIR, reading the data directory
    metrics: tuple[str, ...]  # what lm-eval's task definition reports
    local_notes: str = ""  # how the local prompts differ from lm-eval's, when they can

    @property
    def local_source(self) -> str:
        return LOCAL_SOURCES[self.name].label


HELLASWAG_NOTES = (
    "Local prompts rebuilt from the derived 6-lines-per-task text file. ActivityNet contexts: ctx_b "
    "guessed as the text after the last sentence end, then capitalized as lm-eval does. Endings that "
    "began with a [tag] in the original keep a leading space in lm-eval (a two-space continuation) "
    "but not here, because the file dropped it. Details in bench/zeroshot/hellaswag.py."
)

TASKS: dict[str, ZeroShotTask] = {
    task.name: task
    for task in (
        ZeroShotTask("boolq", "boolq", "boolq_local", ("acc",)),
        ZeroShotTask("piqa", "piqa", "piqa_local", ("acc", "acc_norm")),
        ZeroShotTask("hellaswag", "hellaswag", "hellaswag_local", ("acc", "acc_norm"), HELLASWAG_NOTES),
        ZeroShotTask("winogrande", "winogrande", "winogrande_local", ("acc",)),
        ZeroShotTask("arc_easy", "arc_easy", "arc_easy_local", ("acc", "acc_norm")),
        ZeroShotTask("arc_challenge", "arc_challenge", "arc_challenge_local", ("acc", "acc_norm")),
    )
}

DEFAULT_TASKS: tuple[str, ...] = tuple(TASKS)
