"""The mean log-likelihood of the correct choice, computed from lm-eval's per-example log."""

import math

import pytest

from bench.zeroshot.evaluate import _gold_loglik_record


class FakeTask:
    """Stands in for an lm-eval multiple-choice task: choices and gold come from the document."""

    def __init__(self, multiple_input: bool):
        self.multiple_input = multiple_input

    def doc_to_text(self, doc):
        return doc["option"] if self.multiple_input else "question"

    def doc_to_target(self, doc):
        return doc["gold"]

    def doc_to_choice(self, doc):
        return ["yes", "no"]


def sample(loglikelihoods, **doc):
    return {"doc": doc, "filtered_resps": [(value, False) for value in loglikelihoods]}


BASE = {"task": "boolq", "metric": "acc", "value": 0.5, "stderr": 0.1, "n_samples": 2}


def test_integer_gold_picks_its_choice():
    samples = [sample([-1.0, -3.0], gold=0), sample([-2.0, -0.5], gold=0)]
    record = _gold_loglik_record("boolq", FakeTask(False), samples, BASE)
    assert record["metric"] == "gold_loglik"
    assert record["value"] == pytest.approx(-1.5)
    assert record["stderr"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert record["n_samples"] == 2
    assert record["task"] == "boolq"


def test_string_gold_is_looked_up_in_choices():
    samples = [sample([-1.0, -3.0], gold="no"), sample([-2.0, -0.5], gold="no")]
    record = _gold_loglik_record("boolq", FakeTask(False), samples, BASE)
    assert record["value"] == pytest.approx(-1.75)


def test_multiple_input_gold_comes_from_text():
    """WinoGrande varies the context, so lm-eval takes the gold index from doc_to_text."""
    samples = [sample([-4.0, -2.0], option=1, gold="ignored")]
    record = _gold_loglik_record("winogrande", FakeTask(True), samples, BASE)
    assert record["value"] == pytest.approx(-2.0)
    assert record["stderr"] is None
