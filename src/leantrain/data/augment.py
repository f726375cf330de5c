"""Batched, device-agnostic image augmentation on ``N×C×H×W`` tensors.

Each op works on a whole batch at once with tensor indexing (no Python loop over images), on
whatever device the batch lives on, and on uint8 as well as float data. Randomness comes from an
explicit `torch.Generator`, drawn on the generator's device and then moved to the batch, so the
same seed gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop", "crop_at", "random_flip", "flip_where", "normalize"]


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def crop_at(x: Tensor, dy: Tensor, dx: Tensor, pad: int, mode: str = "zeros") -> Tensor:
    """Pad each image by ``pad`` and crop it back to its size at a given offset.

    Equivalent to ``F.pad(x, (pad,)*4)[i, :, dy[i]:dy[i]+H, dx[i]:dx[i]+W]`` for every image.

    Args:
        x: ``N×C×H×W`` batch, any dtype.
        dy: ``N`` integer row offsets in ``[0, 2*pad]``.
        dx: ``N`` integer column offsets in ``[0, 2*pad]``.
        pad: padding in pixels on every side.
        mode: ``"zeros"`` (black border, as torchvision's RandomCrop) or ``"reflect"``.

    Returns:
        The cropped batch, same shape, dtype and device as ``x`` (standard contiguous layout).
    """
    if x.dim() != 4:
        raise ValueError(f"expected an N×C×H×W batch, got shape {tuple(x.shape)}")
    if mode not in ("zeros", "reflect"):
        raise ValueError(f"mode must be 'zeros' or 'reflect', got {mode!r}")
    n, c, h, w = x.shape
    if pad == 0 or n == 0:
        return x
    if mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding {pad} needs images larger than {pad}, got {h}×{w}")
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = F.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect").contiguous()
    # Every crop window of a padded image has the same strides and differs only in its start
    # offset dy*wp + dx. View the padded batch as N × (possible starts) × C×H×W windows (no
    # copy) and pick one window per image: a single gather, several times faster on CPU than
    # separate row/column gathers, and no masks.
    starts = 2 * pad * wp + 2 * pad + 1
    windows = padded.as_strided((n, starts, c, h, w), (c * hp * wp, 1, hp * wp, wp, 1))
    start = dy.to(x.device, torch.int64) * wp + dx.to(x.device, torch.int64)
    return windows[torch.arange(n, device=x.device), start]


def random_crop(
    x: Tensor, pad: int, generator: torch.Generator | None, mode: str = "zeros"
) -> Tensor:
    """Pad by ``pad`` then crop every image back to its size at its own random offset.

    Args:
        x: ``N×C×H×W`` batch, any dtype, any device.
        pad: padding in pixels on every side; 0 returns ``x`` unchanged.
        generator: source of the offsets (``None``: torch's global generator).
        mode: ``"zeros"`` or ``"reflect"`` padding.

    Returns:
        The augmented batch, same shape as ``x``.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return x
    n = x.shape[0]
    dev = _draw_device(generator)
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=dev)
    return crop_at(x, offsets[0], offsets[1], pad, mode)


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images of ``x`` where ``mask`` is true.

    Args:
        x: ``N×C×H×W`` batch.
        mask: ``N`` bool tensor.

    Returns:
        The batch with the selected images flipped horizontally.
    """
    mask = mask.to(x.device, torch.bool)
    if x.device.type != "cpu":
        # On accelerators select without nonzero(), which would wait for the device each batch.
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    n = x.shape[0]
    idx = mask.nonzero().squeeze(1)
    # Flip only the selected images (about half) instead of flipping all and selecting, and
    # index a 2-D view: torch's 4-D uint8 index_select/index_copy are far slower on CPU.
    flat = x.reshape(n, -1)
    # The row length is given, not -1: a batch where no coin came up (2**-N, e.g. a batch of 5
    # once in 32) selects 0 rows, and torch cannot infer -1 from 0 elements.
    flipped = flat.index_select(0, idx).view(-1, *x.shape[1:]).flip(3).reshape(
        idx.numel(), flat.shape[1])
    return flat.index_copy(0, idx, flipped).view(x.shape)


def random_flip(x: Tensor, generator: torch.Generator | None, p: float = 0.5) -> Tensor:
    """Flip each image horizontally with probability ``p``.

    Args:
        x: ``N×C×H×W`` batch, any dtype, any device.
        generator: source of the coin flips (``None``: torch's global generator).
        p: flip probability.

    Returns:
        The augmented batch.
    """
    dev = _draw_device(generator)
    mask = torch.rand(x.shape[0], generator=generator, device=dev) < p
    return flip_where(x, mask)


def normalize(
    x_uint8: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor
) -> Tensor:
    """Turn uint8 pixels into float32 ``(x/255 - mean) / std`` per channel.

    Args:
        x_uint8: ``N×C×H×W`` uint8 batch (the memory format, e.g. channels_last, is kept).
        mean: per-channel mean on the 0..1 scale.
        std: per-channel standard deviation on the 0..1 scale.

    Returns:
        A float32 batch on the same device.
    """
    c = x_uint8.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).reshape(-1)
    if mean_t.numel() != c or std_t.numel() != c:
        raise ValueError(
            f"mean/std have {mean_t.numel()}/{std_t.numel()} values but the batch has {c} channels"
        )
    # One multiply-add on a single float copy: x * (1/(255 std)) - mean/std.
    scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1)
    shift = (mean_t / std_t).view(1, c, 1, 1)
    return x_uint8.to(torch.float32).mul_(scale).sub_(shift)
