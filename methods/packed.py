"""Packed linear layers: the stored form of every method, dequantized on the fly in forward.

A packed layer holds only uint8 bit streams (methods.packing), float16 side data and, where a
format needs them, small integer index arrays, all as persistent buffers, so its state dict is
exactly what an artifact stores. `forward` rebuilds the float weight of one layer at a time and
drops it afterwards, so the evaluated model never keeps the dense weights of all layers.

Each class lists in `COMPONENTS` the storage component of every buffer, named as in the
method's storage formula (methods.storage), so measured bytes can be set next to the formula.
Constructor arguments are plain numbers and strings (`metadata()`), which is all a loader needs
to rebuild an empty layer whose buffer shapes it can check against a file.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from methods.packing import pack_signs, packed_size, unpack_signs

STORAGE_DTYPE = torch.float16

# Version of the packed forward code, part of each latency record's key so that new unpacking is timed
# again. Version 1 unpacked with bit shifts, version 2 through byte lookup tables.
FORWARD_VERSION = 2


class PackedLinear(nn.Module):
    """Base of the packed layers: shape, optional float16 bias, and the forward through `dequantize`."""

    kind: ClassVar[str]
    COMPONENTS: ClassVar[dict[str, str]] = {}

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=STORAGE_DTYPE))
        else:
            self.bias = None

    def metadata(self) -> dict:
        """Return the constructor arguments that rebuild this layer's empty shell, plus its kind."""
        return {"kind": self.kind, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, **self.extra_metadata()}

    def extra_metadata(self) -> dict:
        return {}

    def component_of(self, buffer_name: str) -> str:
        if buffer_name == "bias":
            return "bias"
        return self.COMPONENTS[buffer_name]

    def set_bias(self, bias: torch.Tensor | None) -> None:
        """Store `bias` in float16, adding the buffer when the layer was built without one."""
        if bias is None:
            return
        if self.bias is None:
            del self.bias
            self.register_buffer("bias", torch.zeros(self.out_features, dtype=STORAGE_DTYPE))
        self.bias.copy_(bias.detach().to(STORAGE_DTYPE))

    def dequantize(self) -> torch.Tensor:
        """Return the dense float32 weight (out_features, in_features) the stored data encodes."""
        raise NotImplementedError

    def bias_for(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias_for(x))

    def signs_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return unpack_signs(self.signs, self.out_features * self.in_features, dtype).view(
            self.out_features, self.in_features
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.metadata().items() if key != "kind")


def _float16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(STORAGE_DTYPE)


class PackedSignLinear(PackedLinear):
    """Sign binarization with one scale per output row: W = sign * scale (the `rtn` method)."""

    kind = "sign"
    COMPONENTS = {"signs": "signs", "scales": "scales"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("signs", torch.zeros(packed_size(out_features * in_features), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, dtype=STORAGE_DTYPE))

    @classmethod
    def from_binarized_linear(cls, linear: nn.Linear) -> "PackedSignLinear":
        """Pack a linear whose weight is already sign(W) * s per row, so every |w| of a row equals s."""
        weight = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.signs.copy_(pack_signs(weight))
        layer.scales.copy_(_float16(weight.abs().amax(dim=1)))
        layer.set_bias(linear.bias)
        return layer

    def dequantize(self) -> torch.Tensor:
        return self.signs_matrix() * self.scales.float().unsqueeze(1)


class PackedBinaryMoSLinear(PackedLinear):
    """BinaryMoS: signs, a float16 router and E experts of input and output scales."""

    kind = "binarymos"
    COMPONENTS = {"signs": "signs", "router": "router", "in_scale": "scales", "out_scale": "scales"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, num_experts: int = 4):
        super().__init__(in_features, out_features, bias)
        self.num_experts = num_experts
        self.register_buffer("signs", torch.zeros(packed_size(out_features * in_features), dtype=torch.uint8))
        self.register_buffer("router", torch.zeros(num_experts, in_features, dtype=STORAGE_DTYPE))
        self.register_buffer("in_scale", torch.zeros(num_experts, in_features, dtype=STORAGE_DTYPE))
        self.register_buffer("out_scale", torch.zeros(num_experts, out_features, dtype=STORAGE_DTYPE))

    def extra_metadata(self) -> dict:
        return {"num_experts": self.num_experts}

    @classmethod
    def from_module(cls, module) -> "PackedBinaryMoSLinear":
        layer = cls(module.in_features, module.out_features, module.bias is not None, module.num_experts)
        layer.signs.copy_(pack_signs(module.weight.detach()))
        layer.router.copy_(_float16(module.router.weight))
        layer.in_scale.copy_(_float16(module.in_scale))
        layer.out_scale.copy_(_float16(module.out_scale))
        layer.set_bias(module.bias)
        return layer

    def dequantize(self) -> torch.Tensor:
        return self.signs_matrix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same operations as BinaryMoSLinear's evaluation path, on the stored values.
        dtype = x.dtype
        gates = F.softmax(F.linear(x, self.router.to(dtype)).float(), dim=-1).to(dtype)
        in_scale = gates @ self.in_scale.to(dtype)
        out_scale = gates @ self.out_scale.to(dtype)
        output = F.linear(x * in_scale, self.signs_matrix(dtype)) * out_scale
        bias = self.bias_for(x)
        return output if bias is None else output + bias


class PackedOneBitLinear(PackedLinear):
    """OneBit: signs, input and output scale vectors, and a non-affine LayerNorm on the output."""

    kind = "onebit"
    COMPONENTS = {"signs": "signs", "in_scale": "scales", "out_scale": "scales"}

    def __init__(self, in_features: int, out_features: int, bias: bool = False, norm_eps: float = 1e-5):
        super().__init__(in_features, out_features, bias)
        self.norm_eps = norm_eps
        self.register_buffer("signs", torch.zeros(packed_size(out_features * in_features), dtype=torch.uint8))
        self.register_buffer("in_scale", torch.zeros(in_features, dtype=STORAGE_DTYPE))
        self.register_buffer("out_scale", torch.zeros(out_features, dtype=STORAGE_DTYPE))

    def extra_metadata(self) -> dict:
        return {"norm_eps": self.norm_eps}

    @classmethod
    def from_module(cls, module) -> "PackedOneBitLinear":
        layer = cls(module.in_features, module.out_features, module.bias is not None, module.norm.eps)
        layer.signs.copy_(pack_signs(module.weight.detach()))
        layer.in_scale.copy_(_float16(module.in_scale))
        layer.out_scale.copy_(_float16(module.out_scale))
        layer.set_bias(module.bias)
        return layer

    def dequantize(self) -> torch.Tensor:
        return self.signs_matrix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        output = F.linear(x * self.in_scale.to(dtype), self.signs_matrix(dtype)) * self.out_scale.to(dtype)
        output = F.layer_norm(output, (self.out_features,), eps=self.norm_eps)
        bias = self.bias_for(x)
        return output if bias is None else output + bias


def select(mask: torch.Tensor, where_true: torch.Tensor, where_false: torch.Tensor) -> torch.Tensor:
    """Return `torch.where(mask, where_true, where_false)` for float32 tensors of one shape, bit for bit.

    On the CPU torch.where took about 20 times as long as a multiply of the same size (torch
    2.13, 1536 x 576 float32, 2 threads). This blends the bit patterns of the two tensors with
    integer operations instead: f ^ ((t ^ f) & -mask). That runs at the speed of a multiply.
    """
    if where_true.dtype != torch.float32 or where_false.dtype != torch.float32:
        return torch.where(mask, where_true, where_false)
    true_bits, false_bits = where_true.view(torch.int32), where_false.view(torch.int32)
    blended = (true_bits ^ false_bits).bitwise_and_(mask.to(torch.int32).neg_())
    return blended.bitwise_xor_(false_bits).view(torch.float32)


def groups_of(columns: int, group_size: int) -> int:
    return math.ceil(columns / group_size)


PACKED_KINDS: dict[str, type[PackedLinear]] = {}


def register_kind(cls: type[PackedLinear]) -> type[PackedLinear]:
    PACKED_KINDS[cls.kind] = cls
    return cls


for _cls in (PackedSignLinear, PackedBinaryMoSLinear, PackedOneBitLinear):
    register_kind(_cls)


def build_from_metadata(metadata: dict) -> PackedLinear:
    """Build an empty packed layer from `metadata()` output; raise KeyError for an unknown kind."""
    import methods.packed_ptq  # noqa: F401  (registers the post-training kinds)

    arguments = dict(metadata)
    kind = arguments.pop("kind")
    return PACKED_KINDS[kind](**arguments)
