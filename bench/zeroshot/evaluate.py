"""Zero-shot accuracy through lm-eval, in the same process as the (quantized) model.

The in-memory model is wrapped in lm-eval's HFLM, so whatever modules a method swapped in are
what gets evaluated, with no reload and no second copy of the weights. With a data directory the
local task configs in `tasks/` read its files; without one, lm-eval's built-in tasks read the hub.

Protocol: 0-shot, lm-eval's prompts and metrics (acc; acc_norm where lm-eval defines it), its
analytic standard errors, no chat template. A `limit` evaluates the same seeded subset of each
task every time: `sorted(random.Random(seed).sample(range(n), limit))` over the task's n
examples, passed to lm-eval as `samples`, which the `lm_eval --samples` option also accepts.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.data import DATA_DIR_VARIABLE, DataNotFoundError
from bench.progress import new_progress
from bench.zeroshot.catalog import DEFAULT_TASKS, TASK_CONFIG_DIR, TASKS
from bench.zeroshot.local_data import read_local_rows, resolve_data_dir

logger = logging.getLogger(__name__)

SUBSET_RULE = "sorted(random.Random(seed).sample(range(n_total), limit))"


def installed_lm_eval_version() -> str:
    return importlib.metadata.version("lm_eval")


@dataclass(frozen=True)
class ZeroShotProtocol:
    """Every setting that changes a zero-shot accuracy."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    num_fewshot: int = 0
    limit: int | None = None  # None: every example; else a seeded subset of this many per task
    seed: int = 0  # picks the subset when `limit` is set
    batch_size: int = 8  # padding in a batch can move log-likelihoods by float rounding
    lm_eval_version: str = field(default_factory=installed_lm_eval_version)

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ValueError(f"Zero-shot tasks must not be empty. Choose from: {', '.join(TASKS)}.")
        for task in self.tasks:
            if task not in TASKS:
                close = difflib.get_close_matches(task, list(TASKS), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"Unknown zero-shot task '{task}'.{hint} Known tasks: {', '.join(TASKS)}.")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"Zero-shot tasks contain duplicates: {', '.join(self.tasks)}.")
        if self.num_fewshot != 0:
            raise ValueError(
                f"num_fewshot is {self.num_fewshot}, but only 0-shot is supported: the local task "
                "configs have no training split to draw examples from."
            )
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"Zero-shot limit must be a positive integer or None for all examples, got {self.limit!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"Zero-shot batch_size must be a positive integer, got {self.batch_size!r}.")
        installed = installed_lm_eval_version()
        if self.lm_eval_version != installed:
            raise ValueError(
                f"The protocol names lm-eval {self.lm_eval_version}, but {installed} is installed. "
                f"Install lm-eval=={self.lm_eval_version} or leave lm_eval_version at its default."
            )


def select_examples(n_total: int, limit: int | None, seed: int) -> list[int] | None:
    """Return the sorted example indices of a seeded subset, or None when every example is used."""
    if limit is None or limit >= n_total:
        return None
    return sorted(random.Random(seed).sample(range(n_total), limit))


def task_sources(protocol: ZeroShotProtocol, data_dir=None) -> dict[str, str]:
    """Return where each task's examples come from: "local:<files>" or "hub:<lm-eval task>"."""
    directory = resolve_data_dir(data_dir)
    if directory is None:
        return {name: f"hub:{TASKS[name].hub_task}" for name in protocol.tasks}
    return {name: TASKS[name].local_source for name in protocol.tasks}


def check_zeroshot_data(protocol: ZeroShotProtocol, data_dir=None) -> None:
    """Read and validate every local file the protocol needs; raise naming the first bad file.

    Does nothing when no data directory is set, because the hub tasks are used then.
    """
    directory = resolve_data_dir(data_dir)
    if directory is None:
        logger.info("No data directory set (%s): zero-shot tasks will load from the hub", DATA_DIR_VARIABLE)
        return
    for name in protocol.tasks:
        read_local_rows(name, directory)


def _task_manager(directory: Path | None):
    from lm_eval.tasks import TaskManager

    if directory is None:
        return TaskManager()
    # Only the local configs are needed, and skipping lm-eval's own index saves seconds.
    return TaskManager(include_path=str(TASK_CONFIG_DIR), include_defaults=False, metadata={"data_dir": str(directory)})


def _load_tasks(protocol: ZeroShotProtocol, directory: Path | None) -> tuple[object, dict]:
    """Build the lm-eval task objects (this loads their datasets) keyed by lm-eval task name."""
    manager = _task_manager(directory)
    names = [TASKS[name].local_task if directory else TASKS[name].hub_task for name in protocol.tasks]
    # NOTE: the hub path has only run offline, where it fails with the error below; with the hub
    # reachable it relies on lm-eval's built-in tasks downloading their datasets.
    try:
        loaded = manager.load(names)
    except Exception as error:  # datasets raises many types for offline, missing or renamed data
        if directory is not None:
            raise
        raise DataNotFoundError(
            f"lm-eval could not load the hub datasets of {', '.join(names)} ({type(error).__name__}: {error}). "
            f"Point --data-dir or ${DATA_DIR_VARIABLE} at a directory with the local files."
        ) from error
    return manager, loaded["tasks"]


def _progress_lm_class():
    """Return an HFLM subclass that draws a progress bar over loglikelihood requests."""
    from lm_eval.models.huggingface import HFLM

    class _ProgressHook:
        """Stands in for lm-eval's cache hook, which HFLM calls once per finished request."""

        def __init__(self, inner, advance):
            self.inner = inner
            self.advance = advance

        def add_partial(self, attr, request, result):
            self.inner.add_partial(attr, request, result)
            self.advance()

    class ProgressHFLM(HFLM):
        progress_label = "zero-shot"

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            inner = self.cache_hook
            with new_progress() as progress:
                bar = progress.add_task(f"{self.progress_label} requests", total=len(requests))
                self.cache_hook = _ProgressHook(inner, lambda: progress.advance(bar))
                try:
                    return super().loglikelihood(requests, disable_tqdm=True)
                finally:
                    self.cache_hook = inner

    return ProgressHFLM


@contextmanager
def _preserved_random_state():
    """Restore Python's, NumPy's and torch's global RNG states, which lm-eval reseeds and draws from."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _records(protocol, results: dict, tasks: dict, lm_names: dict, sources: dict, details: dict) -> list[dict]:
    records = []
    for name in protocol.tasks:
        lm_name = lm_names[name]
        metrics = results["results"][lm_name]
        counts = results["n-samples"][lm_name]
        task_config = tasks[lm_name].config
        for metric in TASKS[name].metrics:
            key = f"{metric},none"
            if key not in metrics:
                raise RuntimeError(f"lm-eval returned no {metric} for {lm_name}; it returned {sorted(metrics)}.")
            stderr = metrics.get(f"{metric}_stderr,none")
            record = {
                "task": name,
                "metric": metric,
                "value": float(metrics[key]),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "n_samples": int(counts["effective"]),
                "n_total": int(counts["original"]),
                "lm_eval_version": protocol.lm_eval_version,
                "limit": protocol.limit,
                "task_source": sources[name],
                "lm_eval_task": lm_name,
                "lm_eval_task_version": (task_config.metadata or {}).get("version"),
                "subset": "all examples" if counts["effective"] == counts["original"] else f"{SUBSET_RULE}, seed {protocol.seed}",
                **details,
            }
            if sources[name].startswith("local:") and TASKS[name].local_notes:
                record["prompt_notes"] = TASKS[name].local_notes
            records.append(record)
        records.append(_gold_loglik_record(name, tasks[lm_name], results["samples"][lm_name], records[-1]))
    return records


def _gold_index(task, doc) -> int:
    """Return the index of the correct choice, found the way lm-eval's multiple-choice scoring finds it."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = task.doc_to_choice(doc).index(gold)
    return int(gold)


def _gold_loglik_record(name: str, task, samples: list[dict], accuracy_record: dict) -> dict:
    """Summarize the log-likelihood of each example's correct choice: mean and standard error over examples.

    It moves with small changes to a model even where a small sample leaves the accuracy unchanged.
    """
    values = []
    for sample in samples:
        loglikelihoods = [float(response[0]) for response in sample["filtered_resps"]]
        values.append(loglikelihoods[_gold_index(task, sample["doc"])])
    array = np.asarray(values, dtype=np.float64)
    stderr = float(array.std(ddof=1) / np.sqrt(array.size)) if array.size > 1 else None
    return {
        **accuracy_record,
        "metric": "gold_loglik",
        "value": float(array.mean()),
        "stderr": stderr,
        "n_samples": int(array.size),
        "unit": "nats, summed over the tokens of the correct continuation",
    }


def _prepare_tasks(protocol: ZeroShotProtocol, directory: Path | None):
    """Load the lm-eval tasks and pick each one's subset; return (manager, tasks, lm-eval names, samples)."""
    manager, tasks = _load_tasks(protocol, directory)
    lm_names = {name: TASKS[name].local_task if directory else TASKS[name].hub_task for name in protocol.tasks}
    samples = {}
    for name in protocol.tasks:
        lm_name = lm_names[name]
        indices = select_examples(len(tasks[lm_name].eval_docs), protocol.limit, protocol.seed)
        if indices is not None:
            samples[lm_name] = indices
    return manager, tasks, lm_names, samples


def _run_lm_eval(model, tokenizer, protocol: ZeroShotProtocol, manager, tasks: list, samples: dict):
    """Wrap the model in HFLM and run lm-eval's evaluator on `tasks`; return (results, HFLM)."""
    from lm_eval.evaluator import simple_evaluate

    was_training = model.training
    try:
        # A copy, because HFLM may set a pad token on the tokenizer it is given.
        lm = _progress_lm_class()(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=protocol.batch_size)
        lm.progress_label = "zero-shot " + ", ".join(protocol.tasks)
        results = simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=None,  # 0 is the default for these tasks; passing it only logs a warning
            samples=samples or None,
            task_manager=manager,
            log_samples=True,  # the per-example log-likelihoods give the gold log-likelihood
        )
    finally:
        model.train(was_training)
    return results, lm


def evaluate_zeroshot(model, tokenizer, protocol: ZeroShotProtocol, data_dir=None) -> list[dict]:
    """Measure zero-shot accuracy of the in-memory model; return one record per (task, metric).

    Each record contains task, metric ("acc" or "acc_norm", value 0..1; or "gold_loglik", the mean
    log-likelihood of the correct choice in nats), stderr, n_samples,
    n_total, lm_eval_version, limit, task_source, and the lm-eval settings used. The model's
    train/eval mode and the global random states are restored afterwards.
    """
    directory = resolve_data_dir(data_dir)
    check_zeroshot_data(protocol, directory)
    sources = task_sources(protocol, directory)

    with _preserved_random_state():
        manager, tasks, lm_names, samples = _prepare_tasks(protocol, directory)
        ordered = [tasks[lm_names[name]] for name in protocol.tasks]
        results, lm = _run_lm_eval(model, tokenizer, protocol, manager, ordered, samples)

    details = {
        "num_fewshot": protocol.num_fewshot,
        "seed": protocol.seed,
        "batch_size": protocol.batch_size,
        "chat_template": False,
        "add_bos_token": lm.add_bos_token,
        "max_length": lm.max_length,
    }
    records = _records(protocol, results, tasks, lm_names, sources, details)
    for record in records:
        logger.info("%s %s = %.4f (n=%d)", record["task"], record["metric"], record["value"], record["n_samples"])
    return records


def average_accuracy(records: list[dict], metric: str = "acc") -> float | None:
    """Return the unweighted mean of `metric` over the tasks in `records`, or None if none has it."""
    values = [record["value"] for record in records if record["metric"] == metric]
    return sum(values) / len(values) if values else None
