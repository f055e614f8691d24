"""Distillation of a quantized student from its full-precision teacher on the HF Trainer stack.

The Trainer brings AdamW, the cosine schedule with warm-up, checkpoints and resume, and
`accelerate launch` / `torchrun` for several GPUs. This module adds the teacher forward, the
method's loss, a rich progress bar, a loss log, and a stop on a non-finite loss.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import TextColumn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from bench.progress import new_progress

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Raised when the distillation loss stops being finite."""


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that changes a distillation run; stored with the result."""

    steps: int
    seqlen: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    save_steps: int = 500
    seed: int = 0
    gradient_checkpointing: bool = False

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seqlen

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens, "optimizer": "adamw_torch_fused"}


@dataclass
class TrainingOutcome:
    steps: int
    tokens: int
    wall_time_s: float
    final_loss: float
    resumed_from_step: int | None


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.blocks[index]}


class DistillationTrainer(Trainer):
    """A Trainer whose loss is the quantizer's distillation loss against a frozen teacher."""

    def __init__(self, *args, teacher, quantizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.quantizer = quantizer
        self.last_parts: dict[str, float] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids = inputs["input_ids"]
        with torch.no_grad():
            teacher_out = self.teacher(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        student_out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        loss, parts = self.quantizer.distillation_loss(student_out, teacher_out, input_ids)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"The distillation loss became {loss.item()} at step {self.state.global_step + 1} "
                f"(parts: {parts}). Training stopped; checkpoints in {self.args.output_dir} and the loss "
                "log are kept. Lower the learning rate (--lr) or raise the warm-up."
            )
        self.last_parts = parts
        return (loss, student_out) if return_outputs else loss


class LossLogCallback(TrainerCallback):
    """Writes one JSON line per step and draws a progress bar with loss, tokens/s and time left."""

    def __init__(self, trainer: DistillationTrainer, log_path: Path, tokens_per_step: int, time_offset: float):
        self.trainer = trainer
        self.log_path = log_path
        self.tokens_per_step = tokens_per_step
        self.time_offset = time_offset
        self.started = time.perf_counter()
        self.last_step_time = self.started
        self.tokens_per_second = 0.0
        self.progress = new_progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"))
        self.task = None

    def elapsed(self) -> float:
        return self.time_offset + time.perf_counter() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress.start()
        self.task = self.progress.add_task(
            "distillation", total=state.max_steps, completed=state.global_step, loss="-", speed="-"
        )
        self.last_step_time = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.tokens_per_second = self.tokens_per_step / max(now - self.last_step_time, 1e-9)
        self.last_step_time = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        entry = {
            "step": state.global_step,
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            **self.trainer.last_parts,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "elapsed_s": round(self.elapsed(), 2),
        }
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        self.progress.update(
            self.task, completed=state.global_step, loss=f"{logs['loss']:.4g}", speed=f"{self.tokens_per_second:.0f}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.stop()


def _last_checkpoint(checkpoints: Path) -> Path | None:
    found = [path for path in checkpoints.glob("checkpoint-*") if (path / "trainer_state.json").exists()]
    return max(found, key=lambda path: int(path.name.split("-")[-1]), default=None)


def _truncate_log(log_path: Path, step: int) -> float:
    """Keep log entries up to `step` and return the elapsed time recorded at that step."""
    if not log_path.exists():
        return 0.0
    kept = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    kept = [entry for entry in kept if entry["step"] <= step]
    log_path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
    return kept[-1]["elapsed_s"] if kept else 0.0


def _set_aside(log_path: Path) -> Path:
    """Rename an earlier run's loss log to the first free `<key>.<n>.jsonl` and return the new path."""
    number = 1
    while (target := log_path.with_name(f"{log_path.stem}.{number}{log_path.suffix}")).exists():
        number += 1
    log_path.rename(target)
    return target


def training_arguments(settings: TrainingSettings, output_dir: Path) -> TrainingArguments:
    optional = {"gradient_checkpointing": True} if settings.gradient_checkpointing else {}
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        max_grad_norm=settings.max_grad_norm,
        optim="adamw_torch_fused",
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        save_only_model=False,
        seed=settings.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        **optional,
    )


def distill(student, teacher, quantizer, blocks: torch.Tensor, settings: TrainingSettings, run_dir: Path, log_path: Path) -> TrainingOutcome:
    """Train `student` against `teacher` on `blocks`, resuming from the last checkpoint in `run_dir`."""
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    quantizer.trainable_parameters(student)
    teacher.eval().requires_grad_(False)
    student.train()

    resume = _last_checkpoint(checkpoints)
    resumed_step = int(resume.name.split("-")[-1]) if resume else None
    time_offset = _truncate_log(log_path, resumed_step) if resume else 0.0
    if resume is None and log_path.exists():
        earlier_log = _set_aside(log_path)
        logger.warning("Training %s again from step 0; the earlier loss log is now %s", log_path.stem, earlier_log)
    if resume:
        logger.info("Resuming distillation from %s (step %d)", resume, resumed_step)

    trainer = DistillationTrainer(
        model=student,
        args=training_arguments(settings, checkpoints),
        train_dataset=BlockDataset(blocks),
        teacher=teacher,
        quantizer=quantizer,
    )
    # The progress bar and the loss log replace the Trainer's printing of every log line.
    trainer.remove_callback(PrinterCallback)
    callback = LossLogCallback(trainer, log_path, settings.batch_size * settings.seqlen, time_offset)
    trainer.add_callback(callback)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        callback.progress.stop()
    student.eval()
    outcome = TrainingOutcome(
        steps=settings.steps,
        tokens=settings.tokens,
        wall_time_s=round(callback.elapsed(), 2),
        final_loss=float(result.training_loss) if math.isfinite(result.training_loss) else float("nan"),
        resumed_from_step=resumed_step,
    )
    return outcome


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
