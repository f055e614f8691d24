import math
from types import SimpleNamespace

import pytest
import torch

import methods
from methods.losses import hidden_mse_sum, logits_kl_batchmean, normalized_hidden_distance_sum


def outputs(logits, hidden):
    return SimpleNamespace(logits=torch.tensor(logits), hidden_states=tuple(torch.tensor(h) for h in hidden))


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


TEACHER = outputs([[[1.0, 0.0], [0.0, 2.0]]], [[[[1.0, 0.0]]], [[[0.0, 2.0]]], [[[3.0, 4.0]]]])
STUDENT = outputs([[[0.0, 0.0], [1.0, 1.0]]], [[[[1.0, 0.0]]], [[[1.0, 1.0]]], [[[3.0, 0.0]]]])


def test_kl_is_summed_over_positions_per_sequence():
    expected = kl(softmax([1, 0]), softmax([0, 0])) + kl(softmax([0, 2]), softmax([1, 1]))
    assert logits_kl_batchmean(STUDENT.logits, TEACHER.logits).item() == pytest.approx(expected, rel=1e-5)


def test_kl_divides_by_batch_only():
    batch_of_two = torch.cat([STUDENT.logits, STUDENT.logits]), torch.cat([TEACHER.logits, TEACHER.logits])
    assert logits_kl_batchmean(*batch_of_two).item() == pytest.approx(
        logits_kl_batchmean(STUDENT.logits, TEACHER.logits).item(), rel=1e-6
    )


def test_binarymos_loss_by_hand():
    loss, parts = methods.create("binarymos").distillation_loss(STUDENT, TEACHER, None)
    kl_term = kl(softmax([1, 0]), softmax([0, 0])) + kl(softmax([0, 2]), softmax([1, 1]))
    # hidden_states[1:]: layer 1 mse = ((1-0)^2 + (1-2)^2)/2 = 1; layer 2 = (0 + 16)/2 = 8.
    assert parts["hidden_mse"] == pytest.approx(9.0)
    assert loss.item() == pytest.approx(kl_term + 10 * 9.0, rel=1e-5)


def test_onebit_loss_by_hand():
    loss, parts = methods.create("onebit").distillation_loss(STUDENT, TEACHER, None)
    kl_term = kl(softmax([1, 0]), softmax([0, 0])) + kl(softmax([0, 2]), softmax([1, 1]))
    # hidden_states[:-1]: embedding output identical (0), layer 1: |(1,1)/sqrt2 - (0,1)|^2 = 2 - sqrt2.
    assert parts["hidden_distance"] == pytest.approx(2 - math.sqrt(2), rel=1e-5)
    assert loss.item() == pytest.approx(0.01 * kl_term + (2 - math.sqrt(2)), rel=1e-5)


def test_onebit_cross_entropy_term_when_alpha_below_one():
    quantizer = methods.create("onebit", {"kd_alpha": 0.5})
    input_ids = torch.tensor([[0, 1]])
    loss, parts = quantizer.distillation_loss(STUDENT, TEACHER, input_ids)
    # Position 0 predicts token 1 from logits (0, 0): CE = log 2.
    assert parts["cross_entropy"] == pytest.approx(math.log(2), rel=1e-5)
    expected = 0.5 * 0.01 * parts["kl"] + parts["hidden_distance"] + 0.5 * math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_hidden_helpers_are_zero_for_identical_states():
    states = (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    assert hidden_mse_sum(states, states).item() == 0
    assert normalized_hidden_distance_sum(states, states).item() == pytest.approx(0, abs=1e-6)
