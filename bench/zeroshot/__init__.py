"""Zero-shot accuracy on BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy and ARC-Challenge via lm-eval."""

from bench.zeroshot.catalog import DEFAULT_TASKS, TASK_CONFIG_DIR, TASKS, ZeroShotTask
from bench.zeroshot.evaluate import (
    ZeroShotProtocol,
    average_accuracy,
    check_zeroshot_data,
    evaluate_zeroshot,
    select_examples,
    task_sources,
)
from bench.zeroshot.local_data import MalformedDataError

__all__ = [
    "DEFAULT_TASKS",
    "MalformedDataError",
    "TASKS",
    "TASK_CONFIG_DIR",
    "ZeroShotProtocol",
    "ZeroShotTask",
    "average_accuracy",
    "check_zeroshot_data",
    "evaluate_zeroshot",
    "select_examples",
    "task_sources",
]
