"""Distillation losses of the QAT methods, computed in float32 from teacher and student outputs.

Both take Hugging Face model outputs produced with `output_hidden_states=True`, whose
`hidden_states` tuple holds the embedding output, then each decoder layer's output, the last
one after the final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_kl_batchmean(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature 1, summed over positions and averaged over the batch.

    This is `F.kl_div(log_softmax(s), softmax(t), reduction="batchmean")`: "batchmean" divides
    by the first dimension only, so the term grows with the sequence length.
    """
    student_log_probs = F.log_softmax(student_logits.float(), dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def hidden_mse_sum(student_hidden, teacher_hidden) -> torch.Tensor:
    """Sum over layers of the element-mean squared error between hidden states."""
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_hidden, teacher_hidden, strict=True):
        total = total + F.mse_loss(student.float(), teacher.float())
    return total


def normalized_hidden_distance_sum(student_hidden, teacher_hidden) -> torch.Tensor:
    """Sum over layers of the token-mean squared L2 distance between L2-normalised hidden states."""
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_hidden, teacher_hidden, strict=True):
        difference = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
        total = total + difference.pow(2).sum(dim=-1).mean()
    return total
