"""Perplexity over non-overlapping windows of a tokenized evaluation text.

Protocol: the evaluation text is tokenized once and cut into windows of `seqlen` tokens; the
remainder is dropped. Each window is scored independently (no context carried over), and
PPL = exp(total NLL / number of predicted tokens), where a window of n tokens predicts n - 1.

- WikiText-2: the raw test rows joined with "\\n\\n".
- C4 from the local 2000-document sample: documents joined with " " (as GPTQ's "c4-new").
- C4 from the hub: GPTQ's "c4" protocol, one random window from each of `windows` random
  validation documents longer than `seqlen`, seeded.

A profile may take only the first `windows` windows; the count is part of the protocol.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from bench.data import load_texts
from bench.progress import track

logger = logging.getLogger(__name__)

DATASETS = {"wikitext2": "wikitext2_test", "c4": "c4_validation"}


@dataclass(frozen=True)
class PerplexityProtocol:
    """Every setting that changes a perplexity number."""

    dataset: str  # "wikitext2" or "c4"
    seqlen: int = 2048
    windows: int | None = None  # None: every window of the text
    batch_size: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"Unknown perplexity dataset '{self.dataset}'. Use one of: {', '.join(DATASETS)}.")
        if self.seqlen < 2:
            raise ValueError(f"Perplexity seqlen must be >= 2, got {self.seqlen}.")
        if self.windows is not None and self.windows < 1:
            raise ValueError(f"Perplexity windows must be >= 1 or None for all, got {self.windows}.")


@dataclass
class PerplexityResult:
    value: float
    nll_sum: float
    predicted_tokens: int
    wall_time_s: float
    protocol: dict = field(default_factory=dict)


_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


def _tokenize_once(tokenizer, key: tuple, text: str) -> torch.Tensor:
    cache_key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), *key)
    if cache_key not in _TOKEN_CACHE:
        _TOKEN_CACHE[cache_key] = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    return _TOKEN_CACHE[cache_key]


def _contiguous_windows(tokens: torch.Tensor, seqlen: int, limit: int | None) -> torch.Tensor:
    count = tokens.numel() // seqlen
    if limit is not None:
        count = min(count, limit)
    return tokens[: count * seqlen].view(count, seqlen)


def _random_document_windows(tokenizer, texts: list[str], seqlen: int, count: int, seed: int) -> torch.Tensor:
    """GPTQ's "c4" sampling: a random window from each of `count` random documents longer than seqlen."""
    rng = random.Random(seed)
    windows = []
    attempts = 0
    while len(windows) < count:
        attempts += 1
        if attempts > 100 * count:
            raise ValueError(f"Found only {len(windows)} documents longer than {seqlen} tokens; lower seqlen or windows.")
        ids = tokenizer(texts[rng.randint(0, len(texts) - 1)])["input_ids"]
        if len(ids) <= seqlen:
            continue
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(torch.tensor(ids[start : start + seqlen]))
    return torch.stack(windows)


def build_windows(protocol: PerplexityProtocol, tokenizer, data_dir=None) -> tuple[torch.Tensor, dict]:
    """Return the (windows, seqlen) token tensor for a protocol and the facts that describe it."""
    dataset = load_texts(DATASETS[protocol.dataset], data_dir)
    details = {"text_source": dataset.source}
    if protocol.dataset == "wikitext2":
        join = "\n\n"
        tokens = _tokenize_once(tokenizer, (dataset.source, join), join.join(dataset.texts))
        windows = _contiguous_windows(tokens, protocol.seqlen, protocol.windows)
        details.update(variant="wikitext2-raw-test", join=join, total_tokens=tokens.numel())
    elif dataset.local:
        join = " "
        tokens = _tokenize_once(tokenizer, (dataset.source, join), join.join(dataset.texts))
        windows = _contiguous_windows(tokens, protocol.seqlen, protocol.windows)
        details.update(
            variant="c4-validation-2k-sample, documents joined (c4-new style); not GPTQ's c4 subset",
            join=join,
            total_tokens=tokens.numel(),
        )
    else:
        count = protocol.windows or 256
        windows = _random_document_windows(tokenizer, dataset.texts, protocol.seqlen, count, protocol.seed)
        details.update(variant="gptq-c4: one random window per random validation document", join=None)
    if windows.shape[0] == 0:
        raise ValueError(f"{protocol.dataset} has fewer than {protocol.seqlen} tokens; lower seqlen.")
    first_token = int(windows[0, 0])
    details["bos_at_window_start"] = first_token == getattr(tokenizer, "bos_token_id", None)
    return windows, details


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int, description: str) -> tuple[float, int]:
    """Return the summed next-token NLL over all windows and the number of predicted tokens."""
    device = next(model.parameters()).device
    total = 0.0
    predicted = 0
    batches = list(torch.split(windows, batch_size))
    for batch in track(batches, description, total=len(batches)):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        predicted += targets.numel()
    return total, predicted


def evaluate_perplexity(model, tokenizer, protocol: PerplexityProtocol, data_dir=None) -> PerplexityResult:
    """Measure perplexity under `protocol` and return it with the full protocol description."""
    started = time.perf_counter()
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and protocol.seqlen > context:
        raise ValueError(f"seqlen {protocol.seqlen} exceeds the model's context of {context} tokens.")
    windows, details = build_windows(protocol, tokenizer, data_dir)
    was_training = model.training
    model.eval()
    nll_sum, predicted = window_nll(model, windows, protocol.batch_size, f"perplexity {protocol.dataset}")
    model.train(was_training)
    value = math.exp(nll_sum / predicted)
    description = {
        **asdict(protocol),
        **details,
        "windows_used": int(windows.shape[0]),
        "overlap": False,
        "ppl": "exp(total NLL / predicted tokens)",
    }
    logger.info("%s perplexity %.4g over %d windows", protocol.dataset, value, windows.shape[0])
    return PerplexityResult(value, nll_sum, predicted, time.perf_counter() - started, description)
