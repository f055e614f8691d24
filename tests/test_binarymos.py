import pytest
import torch
from torch import nn

import methods
from methods.binarymos import BinaryMoSLinear
from methods.modules import decoder_linears
from methods.primitives import binary_sign, rank1_svd_scales


def rank1_binarized_output(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The OneBit-style rank-1 (SVID) binarized linear: ((x * b) sign(W)^T) * a with |W| ~ a b^T."""
    out_scale, in_scale = rank1_svd_scales(linear.weight)
    return (x * in_scale) @ binary_sign(linear.weight).T * out_scale


def test_quantize_replaces_every_decoder_linear(tiny_llama):
    names = list(decoder_linears(tiny_llama))
    methods.create("binarymos").quantize(tiny_llama)
    replaced = {name: type(tiny_llama.get_submodule(name)) for name in names}
    assert len(names) == 2 * 7
    assert set(replaced.values()) == {BinaryMoSLinear}
    assert isinstance(tiny_llama.lm_head, nn.Linear)
    assert isinstance(tiny_llama.model.embed_tokens, nn.Embedding)


def test_forward_shapes(tiny_llama):
    methods.create("binarymos").quantize(tiny_llama)
    layer = tiny_llama.model.layers[0].mlp.down_proj
    assert layer.in_scale.shape == (4, 96)
    assert layer.out_scale.shape == (4, 64)
    assert layer.router.weight.shape == (4, 96)
    assert layer(torch.randn(3, 5, 96)).shape == (3, 5, 64)
    logits = tiny_llama(input_ids=torch.randint(0, 256, (2, 7))).logits
    assert logits.shape == (2, 7, 256)


def test_init_equals_rank1_binarized_layer_for_any_router():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40, bias=False)
    layer = BinaryMoSLinear.from_linear(linear, num_experts=4)
    x = torch.randn(2, 6, 48)
    expected = rank1_binarized_output(linear, x)
    for _ in range(3):
        nn.init.normal_(layer.router.weight, std=5.0)  # sharp, token-dependent expert weights
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_init_matches_rank1_on_real_layer(default_model):
    linear = default_model.model.model.layers[3].self_attn.q_proj
    layer = BinaryMoSLinear.from_linear(linear, num_experts=4)
    nn.init.normal_(layer.router.weight, std=1.0)
    x = torch.randn(1, 16, linear.in_features)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), rank1_binarized_output(linear, x), rtol=1e-4, atol=1e-4)


def test_rank1_scales_are_nonnegative_best_fit():
    torch.manual_seed(1)
    weight = torch.randn(30, 20)
    out_scale, in_scale = rank1_svd_scales(weight)
    assert (out_scale >= 0).all() and (in_scale >= 0).all()
    approximation = torch.outer(out_scale, in_scale)
    u, s, vh = torch.linalg.svd(weight.abs())
    torch.testing.assert_close(approximation, s[0] * torch.outer(u[:, 0], vh[0]), rtol=1e-4, atol=1e-5)


def test_sign_maps_zero_to_plus_one():
    assert binary_sign(torch.tensor([-2.0, -0.0, 0.0, 3.0])).tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_straight_through_gradient_is_clipped():
    torch.manual_seed(2)
    layer = BinaryMoSLinear(6, 5, num_experts=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-1.5, -0.5, 0.0, 0.5, 1.5, 0.9]]).repeat(5, 1))
        layer.in_scale.uniform_(0.5, 1.5)
        layer.out_scale.uniform_(0.5, 1.5)
    x = torch.randn(4, 6)
    grad_output = torch.randn(4, 5)
    layer(x).backward(grad_output)

    gates = torch.softmax(layer.router(x), dim=-1).detach()
    scaled_input = x * (gates @ layer.in_scale).detach()
    scaled_grad = grad_output * (gates @ layer.out_scale).detach()
    inside = (layer.weight.abs() < 1).float()
    expected = (scaled_grad.T @ scaled_input) * inside
    torch.testing.assert_close(layer.weight.grad, expected)
    assert (layer.weight.grad[:, [0, 4]] == 0).all()


def test_trainable_parameters_exclude_embeddings_and_norms(tiny_llama):
    quantizer = methods.create("binarymos")
    quantizer.quantize(tiny_llama)
    trainable = {id(parameter) for parameter in quantizer.trainable_parameters(tiny_llama)}
    assert id(tiny_llama.model.embed_tokens.weight) not in trainable
    assert id(tiny_llama.model.norm.weight) not in trainable
    layer = tiny_llama.model.layers[1].self_attn.o_proj
    for parameter in (layer.weight, layer.router.weight, layer.in_scale, layer.out_scale):
        assert parameter.requires_grad and id(parameter) in trainable


def test_storage_bits_match_formula(tiny_llama):
    quantizer = methods.create("binarymos")
    quantizer.quantize(tiny_llama)
    report = quantizer.storage_report(tiny_llama)
    # Per layer: o*i sign bits + 16 * (E*(o+i) scale values + E*i router weights), E = 4.
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]
    signs = 2 * sum(o * i for o, i in shapes)
    side = 2 * sum(16 * (4 * (o + i) + 4 * i) for o, i in shapes)
    assert report.components["signs"] == signs
    assert report.components["scales"] + report.components["router"] == side
    assert report.quantized_weights == signs
    assert report.bits_per_weight_linear == pytest.approx((signs + side) / signs)


def test_fused_layer_gradients_equal_composed_formula():
    torch.manual_seed(4)
    layer = BinaryMoSLinear(12, 10, num_experts=3, bias=True).double()
    with torch.no_grad():
        layer.weight.uniform_(-1.5, 1.5)
        layer.in_scale.uniform_(0.2, 1.0)
        layer.out_scale.uniform_(0.2, 1.0)
        layer.bias.normal_()
    x = torch.randn(2, 5, 12, dtype=torch.double, requires_grad=True)
    grad_output = torch.randn(2, 5, 10, dtype=torch.double)

    parameters = [x, *layer.parameters()]
    fused = torch.autograd.grad(layer(x), parameters, grad_output)
    composed = torch.autograd.grad(layer.reference_forward(x), parameters, grad_output)
    torch.testing.assert_close(layer(x), layer.reference_forward(x))
    for fused_grad, composed_grad in zip(fused, composed):
        torch.testing.assert_close(fused_grad, composed_grad)


def test_sign_cache_follows_weight_updates():
    torch.manual_seed(5)
    layer = BinaryMoSLinear.from_linear(nn.Linear(8, 6, bias=False), num_experts=2)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        layer.weight.neg_()
        after = layer(x)
    torch.testing.assert_close(after, layer.reference_forward(x).detach())
    assert not torch.allclose(before, after)


def test_sign_cache_cleared_after_fused_adamw_step():
    torch.manual_seed(6)
    layer = BinaryMoSLinear.from_linear(nn.Linear(8, 6, bias=False), num_experts=2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=True)
    x = torch.randn(3, 8)
    layer.eval()
    with torch.no_grad():
        layer(x)  # fills the cache
    layer.train()
    layer(x).sum().backward()
    optimizer.step()  # a fused step does not bump the weight's version counter
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.reference_forward(x))


def test_sign_cache_cleared_on_state_dict_load():
    torch.manual_seed(7)
    layer = BinaryMoSLinear.from_linear(nn.Linear(8, 6, bias=False), num_experts=2).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)
        state = {key: value.clone() for key, value in layer.state_dict().items()}
        state["weight"] = -state["weight"]
        layer.load_state_dict(state)
        torch.testing.assert_close(layer(x), layer.reference_forward(x))
