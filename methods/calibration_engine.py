"""The sequential calibration engine of the post-training methods (GPTQ, BiLLM, PB-LLM).

1. Capture the inputs of the first decoder layer for every calibration window, and the keyword
   arguments (attention mask, position embeddings, ...) that the model passes to each layer.
2. For each decoder layer in turn, run the calibration windows through it with hooks that
   accumulate the Hessian 2 X X^T / n of every nn.Linear inside it. Hand each linear and its
   Hessian to the method, then run the quantized layer to produce the next layer's inputs.

With true-sequential order the linears of a layer are quantized in groups: the linears that
read the same input tensor form a group (q/k/v, then o, then gate/up, then down in a Llama
layer), and each group's Hessians are collected after the groups before it were quantized. The
groups are found by watching one forward pass, so no list per model family is needed.

Decoder layers and linears are found generically (methods.modules.decoder_layers), so Llama,
Qwen2 and Gemma3 models share one path. Gemma3 and Qwen2 pass different attention masks to
sliding-window and full-attention layers, which is why the keyword arguments are captured per
layer rather than reused from layer 0.

Memory: two activation buffers of (windows, seqlen, hidden) in the model's dtype (the inputs of
the current layer and its outputs), the Hessians of one layer, and one window's activations.
Everything runs on the device the model is on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from methods.gptq_core import HessianAccumulator
from methods.modules import decoder_layers, layer_linears

logger = logging.getLogger(__name__)

# (full linear name in the model, the linear, its Hessian) -> None. Writes the quantized weight.
LinearQuantizer = Callable[[str, nn.Linear, torch.Tensor], None]


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the needed inputs were seen."""


@dataclass
class LayerCall:
    """The arguments besides the hidden states that the model passed to one decoder layer."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CapturedInputs:
    """Inputs of the first decoder layer for every window, and the call arguments of each layer."""

    hidden_states: torch.Tensor  # (windows, seqlen, hidden), the model's dtype
    layer_calls: list[LayerCall]


@dataclass
class CalibrationStats:
    """Measurements of one calibration run."""

    windows: int
    seqlen: int
    buffer_bytes: int  # bytes of one activation buffer (the engine keeps two)
    capture_seconds: float = 0.0
    layer_seconds: list[float] = field(default_factory=list)


def validate_calibration(calibration: Any, method: str) -> torch.Tensor:
    """Return `calibration` as a (windows, seqlen) LongTensor, or raise ValueError."""
    if calibration is None:
        raise ValueError(
            f"{method} is a post-training method and needs calibration windows: pass a LongTensor "
            "of token ids of shape (windows, seqlen), for example from bench.calibration.calibration_windows."
        )
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2:
        shape = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise ValueError(f"{method} calibration must be a 2-D tensor of token ids (windows, seqlen), got {shape}.")
    if calibration.dtype != torch.long:
        raise ValueError(f"{method} calibration must hold token ids as torch.long, got {calibration.dtype}.")
    if calibration.shape[0] < 1 or calibration.shape[1] < 1:
        raise ValueError(f"{method} calibration is empty: shape {tuple(calibration.shape)}.")
    return calibration


def _hidden_from_call(args: tuple, kwargs: dict) -> tuple[torch.Tensor, LayerCall]:
    """Split a decoder layer's call into its hidden states and the remaining arguments."""
    if args:
        return args[0], LayerCall(args=tuple(args[1:]), kwargs=dict(kwargs))
    rest = dict(kwargs)
    hidden = rest.pop("hidden_states")
    return hidden, LayerCall(kwargs=rest)


def _layer_output(output: Any) -> torch.Tensor:
    """Return the hidden states of a decoder layer's output (a tensor, or a tuple in older models)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _run_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    return _layer_output(layer(hidden, *call.args, **call.kwargs))


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor) -> CapturedInputs:
    """Run the model on each window up to its first decoder layer and keep that layer's inputs.

    The first window runs up to the last decoder layer, so the call arguments of every layer are
    recorded. They depend only on the window length, which all windows share.
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    calls: list[LayerCall | None] = [None] * len(layers)
    state: dict[str, Any] = {"window": 0, "buffer": None}

    def record(index: int):
        def hook(_module, args, kwargs):
            hidden, call = _hidden_from_call(args, kwargs)
            if calls[index] is None:
                calls[index] = call
            if index == 0:
                if state["buffer"] is None:
                    shape = (windows.shape[0], *hidden.shape[1:])
                    state["buffer"] = torch.empty(shape, dtype=hidden.dtype, device=hidden.device)
                state["buffer"][state["window"]] = hidden[0]
            if state["window"] > 0 or index == len(layers) - 1:
                raise _StopForward

        return hook

    handles = [layer.register_forward_pre_hook(record(index), with_kwargs=True) for index, layer in enumerate(layers)]
    try:
        for window in range(windows.shape[0]):
            state["window"] = window
            try:
                model(windows[window : window + 1].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()

    if state["buffer"] is None or any(call is None for call in calls):
        raise RuntimeError(
            "The calibration forward pass did not reach every decoder layer. This engine requires a "
            "model whose forward pass calls each of its decoder layers in order."
        )
    return CapturedInputs(hidden_states=state["buffer"], layer_calls=calls)


def _input_key(tensor: torch.Tensor) -> tuple:
    return (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))


@torch.no_grad()
def discover_linear_groups(
    layer: nn.Module, hidden: torch.Tensor, call: LayerCall, linears: dict[str, nn.Linear]
) -> list[list[str]]:
    """Group the linears of a layer by shared input tensor, in the order the forward pass uses them."""
    groups: dict[tuple, list[str]] = {}
    seen: set[str] = set()
    # Holding every observed input keeps its memory from being reused by a later tensor of the
    # same shape, so equal keys always mean the same values.
    observed: list[torch.Tensor] = []

    def observe(name: str):
        def hook(_module, args):
            observed.append(args[0])
            key = _input_key(args[0])
            groups.setdefault(key, []).append(name)
            seen.add(name)
            if len(seen) == len(linears):
                raise _StopForward

        return hook

    handles = [linear.register_forward_pre_hook(observe(name)) for name, linear in linears.items()]
    try:
        _run_layer(layer, hidden, call)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()

    ordered = list(groups.values())
    unused = [name for name in linears if name not in seen]
    if unused:
        raise RuntimeError(f"Linear layer(s) {', '.join(unused)} received no input in a forward pass of the decoder layer.")
    return ordered


@torch.no_grad()
def collect_hessians(
    layer: nn.Module, inputs: torch.Tensor, call: LayerCall, linears: dict[str, nn.Linear]
) -> dict[str, torch.Tensor]:
    """Return the Hessian 2 X X^T / n of each of `linears` over all windows in `inputs`.

    Each window's forward pass stops as soon as every requested linear has received its input.
    This assumes each linear runs once per forward pass, as in dense decoder layers.
    """
    accumulators = {
        name: HessianAccumulator(linear.in_features, device=linear.weight.device) for name, linear in linears.items()
    }
    seen: set[str] = set()
    # Linears that read the same tensor (q/k/v, gate/up) share one X X^T per window. Holding the
    # window's inputs keeps them alive, so an identity check cannot match a reused address.
    window_grams: list[tuple[torch.Tensor, torch.Tensor]] = []

    def accumulate(name: str):
        def hook(_module, args):
            inputs = args[0]
            gram = next((gram for tensor, gram in window_grams if tensor is inputs), None)
            if gram is None:
                gram = HessianAccumulator.gram(inputs)
                window_grams.append((inputs, gram))
            accumulators[name].add_gram(gram, inputs.shape[0] if inputs.dim() > 2 else 1)
            seen.add(name)
            if len(seen) == len(linears):
                raise _StopForward

        return hook

    handles = [linear.register_forward_pre_hook(accumulate(name)) for name, linear in linears.items()]
    try:
        for window in range(inputs.shape[0]):
            seen.clear()
            window_grams.clear()
            try:
                _run_layer(layer, inputs[window : window + 1], call)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()

    empty = [name for name, accumulator in accumulators.items() if accumulator.samples == 0]
    if empty:
        raise RuntimeError(f"Linear layer(s) {', '.join(empty)} received no calibration input.")
    return {name: accumulator.hessian for name, accumulator in accumulators.items()}


@torch.no_grad()
def _run_layer_outputs(layer: nn.Module, inputs: torch.Tensor, call: LayerCall, outputs: torch.Tensor) -> None:
    for window in range(inputs.shape[0]):
        outputs[window] = _run_layer(layer, inputs[window : window + 1], call)[0]


def _layer_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    return next(name for name, module in model.named_modules() if module is layers)


@torch.no_grad()
def _calibrate_layer(
    layer: nn.Module,
    prefix: str,
    inputs: torch.Tensor,
    call: LayerCall,
    quantize_linear: LinearQuantizer,
    true_sequential: bool,
) -> None:
    linears = layer_linears(layer)
    if not linears:
        logger.warning("Decoder layer %s has no nn.Linear modules; nothing to quantize.", prefix)
        return
    if true_sequential:
        groups = discover_linear_groups(layer, inputs[0:1], call, linears)
    else:
        groups = [list(linears)]

    for group in groups:
        hessians = collect_hessians(layer, inputs, call, {name: linears[name] for name in group})
        for name in group:
            quantize_linear(f"{prefix}.{name}", linears[name], hessians.pop(name))


@torch.no_grad()
def calibrate_sequentially(
    model: nn.Module,
    windows: torch.Tensor,
    quantize_linear: LinearQuantizer,
    true_sequential: bool = False,
    description: str = "calibrating",
) -> CalibrationStats:
    """Quantize every decoder linear of `model` layer by layer on calibration `windows`.

    `windows` is a (windows, seqlen) LongTensor of token ids. `quantize_linear(name, linear,
    hessian)` must write the quantized weight into `linear`; the engine then feeds the quantized
    layer's outputs to the next layer.
    """
    from bench.progress import new_progress

    layers = decoder_layers(model)
    prefix = _layer_prefix(model, layers)
    was_training = model.training
    model.eval()

    started = time.perf_counter()
    captured = capture_layer_inputs(model, windows)
    inputs = captured.hidden_states
    outputs = torch.empty_like(inputs)
    stats = CalibrationStats(
        windows=int(windows.shape[0]),
        seqlen=int(windows.shape[1]),
        buffer_bytes=inputs.numel() * inputs.element_size(),
        capture_seconds=time.perf_counter() - started,
    )
    logger.info(
        "%s: captured inputs of %d windows x %d tokens (%.1f MiB per activation buffer) in %.1f s",
        description, stats.windows, stats.seqlen, stats.buffer_bytes / 2**20, stats.capture_seconds,
    )

    with new_progress() as progress:
        task = progress.add_task(description, total=len(layers))
        for index, layer in enumerate(layers):
            layer_started = time.perf_counter()
            call = captured.layer_calls[index]
            _calibrate_layer(layer, f"{prefix}.{index}", inputs, call, quantize_linear, true_sequential)
            _run_layer_outputs(layer, inputs, call, outputs)
            inputs, outputs = outputs, inputs

            seconds = time.perf_counter() - layer_started
            stats.layer_seconds.append(seconds)
            logger.info("%s: layer %d/%d done in %.1f s", description, index + 1, len(layers), seconds)
            progress.advance(task)

    model.train(was_training)
    return stats
