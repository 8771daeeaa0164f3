"""Schemas, fake kernels and autograd registration of torch.ops.ctnode, and torch.compile over them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detector.ops import DeformConv2d, ModulatedDeformConv2dPack


def test_opcheck_deform_conv2d() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(2, 2 * 2 * 9, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 2 * 9, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.ctnode.deform_conv2d.default, (x, weight, offset, mask, bias, [1, 1], [1, 1], [1, 1], 2, 2)
    )
    torch.library.opcheck(
        torch.ops.ctnode.deform_conv2d.default, (x, weight, offset, None, None, [1, 1], [1, 1], [1, 1], 2, 2)
    )


def test_opcheck_nms() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    torch.library.opcheck(torch.ops.ctnode.nms.default, (boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dcn = ModulatedDeformConv2dPack(8, 8, 3, padding=1, offset_groups=2)
        self.dcn1 = DeformConv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcn1(F.relu(self.dcn(F.relu(self.stem(x)))))


def test_torch_compile_gives_the_eager_output_and_gradients() -> None:
    torch.manual_seed(0)
    block = _Block()
    for layer in (block.dcn, block.dcn1):  # move off the zero init, so sampling is fractional
        nn.init.normal_(layer.offset_predictor.weight, std=0.1)
    x = torch.randn(2, 3, 12, 12)
    eager = block(x)
    compiled_block = torch.compile(block, fullgraph=True)
    compiled = compiled_block(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(compiled.square().sum(), [block.dcn.weight, block.dcn.offset_predictor.weight])
    expected = torch.autograd.grad(eager.square().sum(), [block.dcn.weight, block.dcn.offset_predictor.weight])
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

