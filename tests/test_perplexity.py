import math
from types import SimpleNamespace

import pytest
import torch

from bench.data import load_texts
from bench.perplexity import PerplexityProtocol, build_windows, evaluate_perplexity, window_nll


def test_uniform_logits_give_vocab_size(tiny_llama):
    with torch.no_grad():
        tiny_llama.lm_head.weight.zero_()  # tied: the embedding is zero too, so logits are all 0
    windows = torch.randint(0, 256, (3, 17))
    nll, predicted = window_nll(tiny_llama, windows, batch_size=2, description="test")
    assert predicted == 3 * 16
    assert math.exp(nll / predicted) == pytest.approx(256, rel=1e-5)


class FixedDistributionModel(torch.nn.Module):
    """Predicts the same next-token distribution at every position."""

    def __init__(self, probabilities):
        super().__init__()
        self.log_probabilities = torch.nn.Parameter(torch.log(torch.tensor(probabilities)))

    def forward(self, input_ids):
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.log_probabilities.expand(batch, length, -1))


def test_fixed_distribution_gives_known_perplexity():
    model = FixedDistributionModel([0.5, 0.25, 0.25])
    # Targets 1, 2, 1 and 0, 0, 0: NLL = 3 log 4 + 3 log 2 over 6 predictions, so PPL = sqrt(8).
    windows = torch.tensor([[0, 1, 2, 1], [0, 0, 0, 0]])
    nll, predicted = window_nll(model, windows, batch_size=1, description="test")
    assert predicted == 6
    assert math.exp(nll / predicted) == pytest.approx(math.sqrt(8), rel=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"dataset": "ptb"}, "Unknown perplexity dataset 'ptb'"),
        ({"dataset": "wikitext2", "seqlen": 1}, "seqlen must be >= 2"),
        ({"dataset": "c4", "windows": 0}, "windows must be >= 1"),
    ],
)
def test_invalid_protocol_is_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        PerplexityProtocol(**arguments)


@pytest.mark.slow
def test_wikitext_windows_are_contiguous(default_model, data_dir):
    tokenizer = default_model.tokenizer
    windows, details = build_windows(PerplexityProtocol("wikitext2", seqlen=128, windows=3), tokenizer, data_dir)
    assert windows.shape == (3, 128)
    assert details["join"] == "\n\n"
    text = "\n\n".join(load_texts("wikitext2_test", data_dir).texts)
    assert details["total_tokens"] > 280_000
    assert text.startswith(tokenizer.decode(windows[0]) + tokenizer.decode(windows[1]))


@pytest.mark.slow
def test_default_model_reference_perplexity(default_model, data_dir):
    protocol = PerplexityProtocol("wikitext2", seqlen=256, windows=2)
    result = evaluate_perplexity(default_model.model, default_model.tokenizer, protocol, data_dir)
    assert 10 < result.value < 80
    assert result.protocol["windows_used"] == 2
    assert result.predicted_tokens == 2 * 255


def test_seqlen_above_context_is_rejected(tiny_llama, data_dir):
    class Tokenizer:
        pass

    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        evaluate_perplexity(tiny_llama, Tokenizer(), PerplexityProtocol("wikitext2", seqlen=512), data_dir)
