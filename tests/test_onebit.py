import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM

import methods
from methods.onebit import OneBitLinear
from methods.primitives import TanhSignSTE, binary_sign, rank1_nmf_scales, rank1_svd_scales
from tests.conftest import tiny_llama_config


def test_layer_forward_formula():
    torch.manual_seed(0)
    linear = nn.Linear(32, 24, bias=True)
    layer = OneBitLinear.from_linear(linear, methods.create("onebit").config)
    x = torch.randn(2, 5, 32)
    pre_norm = (x * layer.in_scale) @ binary_sign(layer.weight).T * layer.out_scale
    expected = F.layer_norm(pre_norm, (24,)) + layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert layer(x).shape == (2, 5, 24)


def test_latent_weight_restarts_at_scaled_sign():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8, bias=False)
    layer = OneBitLinear.from_linear(linear, methods.create("onebit").config)
    torch.testing.assert_close(layer.weight, binary_sign(linear.weight) * 0.01)


def test_nmf_init_agrees_with_rank1_svd():
    torch.manual_seed(3)
    weight = torch.randn(40, 30)
    nmf_out, nmf_in = rank1_nmf_scales(weight, iterations=300)
    svd_out, svd_in = rank1_svd_scales(weight)
    assert (nmf_out >= 0).all() and (nmf_in >= 0).all()
    torch.testing.assert_close(torch.outer(nmf_out, nmf_in), torch.outer(svd_out, svd_in), rtol=1e-3, atol=1e-4)


def test_tanh_straight_through_gradient():
    weight = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.0], requires_grad=True)
    TanhSignSTE.apply(weight).sum().backward()
    torch.testing.assert_close(weight.grad, 1.001 - torch.tanh(weight.detach()) ** 2)


def test_tied_lm_head_stays_frozen(tiny_llama):
    quantizer = methods.create("onebit")
    quantizer.quantize(tiny_llama)
    trainable = {id(parameter) for parameter in quantizer.trainable_parameters(tiny_llama)}
    assert id(tiny_llama.model.embed_tokens.weight) not in trainable
    assert id(tiny_llama.model.norm.weight) in trainable
    assert id(tiny_llama.model.layers[0].mlp.up_proj.in_scale) in trainable


def test_untied_lm_head_trains():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tie=False))
    quantizer = methods.create("onebit")
    quantizer.quantize(model)
    trainable = {id(parameter) for parameter in quantizer.trainable_parameters(model)}
    assert id(model.lm_head.weight) in trainable
    assert id(model.model.embed_tokens.weight) not in trainable


def test_forward_shapes_on_model(tiny_llama):
    methods.create("onebit").quantize(tiny_llama)
    assert isinstance(tiny_llama.model.layers[0].self_attn.k_proj, OneBitLinear)
    assert tiny_llama(input_ids=torch.randint(0, 256, (2, 9))).logits.shape == (2, 9, 256)


@pytest.mark.slow
def test_real_layer_init_is_rank1_fit(default_model):
    linear = default_model.model.model.layers[5].mlp.gate_proj
    layer = OneBitLinear.from_linear(linear, methods.create("onebit").config)
    approximation = torch.outer(layer.out_scale.detach(), layer.in_scale.detach())
    svd_out, svd_in = rank1_svd_scales(linear.weight)
    relative = (approximation - torch.outer(svd_out, svd_in)).norm() / torch.outer(svd_out, svd_in).norm()
    assert relative < 0.01


def test_storage_bits_match_formula(tiny_llama):
    quantizer = methods.create("onebit")
    quantizer.quantize(tiny_llama)
    report = quantizer.storage_report(tiny_llama)
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]
    assert report.components["signs"] == 2 * sum(o * i for o, i in shapes)
    assert report.components["scales"] == 2 * sum(16 * (o + i) for o, i in shapes)
