"""Shared checks of the own-model and timm tests: a sliced DCP step equals the masked step."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from leantrain.methods.base import Progress
from leantrain.methods.dcp import DCP


def select_randomly(method: DCP, model: nn.Module, seed: int = 1) -> None:
    """Random utilities, then one selection step past the warm-up."""
    method.setup(model, Progress(0, 100, 10))
    g = torch.Generator().manual_seed(seed)
    for u in method.utilities.values():
        u.copy_(torch.rand(len(u), generator=g))
    method.step(model, Progress(50, 100, 10))


def assert_close(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    """Equal up to summation order (the sliced and the full convolution add their terms in
    different orders), relative to the tensor's largest value."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(b.abs().max()), 1e-3) if b.numel() else 1.0
    assert float((a - b).abs().max()) <= 1e-9 * scale, (what, float((a - b).abs().max()), scale)


def assert_sliced_step_equals_masked(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One DCP step computed on the selected channels only, and the authors' masked step on a
    copy: outputs, gradients, buffers (BN statistics) and utilities agree. In float64: deep
    nets at 32 px end in 1×1 maps whose batch statistics over 4 samples amplify float32
    summation-order differences (ResNet-50: 7e-4 relative); in float64 they vanish."""
    sliced = model.double()
    masked = copy.deepcopy(sliced)
    m_slice, m_mask = DCP(p=0.5, mode="slice"), DCP(p=0.5, mode="mask")
    select_randomly(m_slice, sliced)
    select_randomly(m_mask, masked)
    assert any(k is not None for k in m_slice.kept.values())
    x = x.double()
    outs = []
    for net, method in ((sliced, m_slice), (masked, m_mask)):
        net.train()
        torch.manual_seed(0)  # the same dropout masks in both (VGG's classifier)
        out = net(x)
        F.cross_entropy(out, y).backward()
        method.after_backward(net, Progress(51, 100, 10))
        outs.append(out)
    assert_close(outs[0], outs[1], "output")
    for (n, p1), (_, p2) in zip(sliced.named_parameters(), masked.named_parameters()):
        assert_close(p1.grad, p2.grad, n)
    for (n, b1), (_, b2) in zip(sliced.named_buffers(), masked.named_buffers()):
        assert_close(b1, b2, n)
    for key in m_slice.utilities:
        assert_close(m_slice.utilities[key], m_mask.utilities[key], key)


def gated_and_compact(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, DCP]:
    """The outputs (eval mode) of a randomly selected DCP network, gated and then cut to its
    compact form by `DCP.finish`, checking that the cut removed channels and parameters; and
    the method (for its kept channels)."""
    method = DCP(p=0.5)
    select_randomly(method, model)
    model.eval()
    with torch.no_grad():
        gated = model(x)
    before = sum(p.numel() for p in model.parameters())
    change = method.finish(model)
    assert change is not None and change.removed
    with torch.no_grad():
        compact = model(x)
    assert sum(p.numel() for p in model.parameters()) < before
    return gated, compact, method
