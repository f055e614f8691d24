"""Time a BinaryMoS distillation step against a plain training step of the unquantized model.

All steps use the same batch (1 x 512 tokens of training text by default) and fused AdamW, the
optimizer the trainer uses:
- plain: forward with labels (cross-entropy), backward, optimizer step, all parameters training;
- distill: teacher forward, student forward, BinaryMoS loss (KL + 10 x hidden MSE), backward,
  optimizer step on the parameters BinaryMoS trains. It runs twice: with the harness's fused
  layer, and with the layer formula composed from autograd operations as the official code
  writes it.
Steps rotate plain, fused, composed after a warm-up round, so drift in machine speed hits all
alike. The script prints each step's median time and the median of the per-round ratios.

    python benchmarks/distill_step.py --pairs 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import methods
from bench.models import load_model
from methods.binarymos import BinaryMoSLinear
from bench.training_data import training_blocks


def plain_step(model, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    loss.backward()
    optimizer.step()


def distill_step(student, teacher, quantizer, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        teacher_out = teacher(input_ids=batch, output_hidden_states=True, use_cache=False)
    student_out = student(input_ids=batch, output_hidden_states=True, use_cache=False)
    loss, _ = quantizer.distillation_loss(student_out, teacher_out, batch)
    loss.backward()
    optimizer.step()


class ComposedBinaryMoSLinear(BinaryMoSLinear):
    forward = BinaryMoSLinear.reference_forward


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=6, help="timed A/B pairs after one warm-up pair")
    parser.add_argument("--data-dir", default=None, help="local data directory (default: $BENCH_DATA_DIR)")
    args = parser.parse_args()

    loaded = load_model(args.model)
    teacher = loaded.model.eval().requires_grad_(False)
    blocks, _ = training_blocks(loaded.tokenizer, ("c4_train",), args.seqlen, 1, 0, args.data_dir)
    batch = blocks[:1]

    reference = copy.deepcopy(teacher).train().requires_grad_(True)
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-5, fused=True)

    quantizer = methods.create("binarymos")
    students = {}
    for variant in ("fused", "composed"):
        student = quantizer.quantize(copy.deepcopy(teacher)).train()
        if variant == "composed":
            for module in student.modules():
                if isinstance(module, BinaryMoSLinear):
                    module.__class__ = ComposedBinaryMoSLinear
        optimizer = torch.optim.AdamW(quantizer.trainable_parameters(student), lr=1e-5, fused=True)
        students[variant] = (student, optimizer)

    times = {"plain": [], "fused": [], "composed": []}
    ratios = {"fused": [], "composed": []}
    for round_index in range(args.pairs + 1):
        plain = timed(lambda: plain_step(reference, reference_optimizer, batch))
        measured = {
            variant: timed(lambda: distill_step(student, teacher, quantizer, optimizer, batch))
            for variant, (student, optimizer) in students.items()
        }
        if round_index == 0:
            continue  # warm-up
        times["plain"].append(plain)
        for variant, seconds in measured.items():
            times[variant].append(seconds)
            ratios[variant].append(seconds / plain)

    print(f"device: {torch.get_num_threads()} CPU threads, torch {torch.__version__}, batch 1 x {args.seqlen}, {args.pairs} rounds")
    print(f"plain step (forward + backward + AdamW, unquantized): median {statistics.median(times['plain']):.2f} s")
    for variant, label in (("fused", "harness layer"), ("composed", "official layer formula")):
        values = ratios[variant]
        print(
            f"BinaryMoS distillation step, {label}: median {statistics.median(times[variant]):.2f} s, "
            f"ratio to plain: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"
        )


if __name__ == "__main__":
    main()
