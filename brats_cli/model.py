"""The residual 3D U-Net of the paper (section 2.2), after Lee et al.'s SNEMI3D network.

Where the text is ambiguous, this file chooses:
- A residual block has three 3x3x3 "same" convolutions. The first two are preceded by GroupNorm
  and followed by ReLU; the third is preceded by GroupNorm only. The residual is the output of the
  first convolution (so a block may change the channel count without a projection), added after
  the third convolution, then ReLU. This is the SNEMI3D block as in pytorch-3dunet's
  ExtResNetBlock, the implementation the paper's description follows.
- GroupNorm uses 8 groups, or 1 where a layer has fewer than 8 channels (the 4 input modalities).
  On a GPU it runs as plain reductions (`GroupNorm` below says why).
- Four levels of widths w, 2w, 4w, 8w; MaxPool3d(2) down; ConvTranspose3d(kernel 3, stride 2,
  padding 1, output padding 1) up, halving the channels; skip joined by concatenation.
That gives 5.26 M parameters at width 24 and 37.40 M at width 64.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def group_count(channels: int, norm_groups: int) -> int:
    """GroupNorm's groups for a layer of `channels`: `norm_groups`, or 1 where they do not divide it."""
    return norm_groups if channels >= norm_groups and channels % norm_groups == 0 else 1


def group_norm_by_reductions(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """GroupNorm of (N, C, X, Y, Z) as float32 reductions in two levels (over Y*Z, then over the
    rest of the group), then one multiply-add per voxel with a per-channel scale and shift.

    The same function as nn.GroupNorm, in the precision of PyTorch's own kernel or better (the
    two-level sums keep each float32 accumulator short; a single one over millions of voxels is
    where ONNX Runtime's InstanceNormalization and PyTorch's CPU kernel lose digits). The output
    has `x`'s dtype. Reshapes assume a contiguous layout; a channels-last input is copied."""
    n, channels = x.shape[0], x.shape[1]
    per_group = channels // groups
    grouped = x.float().reshape(n, groups, per_group * x.shape[2], -1)
    mean = grouped.mean(-1, keepdim=True).mean(-2, keepdim=True)
    square = (grouped * grouped).mean(-1, keepdim=True).mean(-2, keepdim=True)
    inverse_std = torch.rsqrt((square - mean * mean).clamp_min(0) + eps)
    scale = inverse_std.reshape(n, groups, 1) * weight.float().reshape(1, groups, per_group)
    shift = bias.float().reshape(1, groups, per_group) - mean.reshape(n, groups, 1) * scale
    out = x.float() * scale.reshape(n, channels, 1, 1, 1) + shift.reshape(n, channels, 1, 1, 1)
    return out.to(x.dtype)


def group_norm_channels_last(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """GroupNorm of a float32 (N, C, X, Y, Z) tensor in the channels-last 3D layout, kept in that
    layout: each channel's mean, then the mean squared deviation from its group's mean, both as
    PyTorch's own (pairwise-summed) reductions over the contiguous (N, X, Y, Z, C) view, then one
    multiply-add per voxel.

    PyTorch's CPU kernel for this layout accumulates a group's moments in a way that loses digits
    over millions of voxels: on the default base model's 192x192x160 grid of a real case its
    probabilities were off by up to 0.05 against float64 (1460 voxels on the other side of 0.5);
    this is off by under 1e-5, at 1.2-1.3x the kernel's time in the whole forward (bench/RESULTS.md,
    'GroupNorm on the CPU in channels-last')."""
    n, channels = x.shape[0], x.shape[1]
    per_group = channels // groups
    voxels = x.permute(0, 2, 3, 4, 1)  # a view: channels-last memory is (N, X, Y, Z, C)
    mean = voxels.mean(dim=(1, 2, 3)).view(n, groups, per_group).mean(-1, keepdim=True)
    centred = voxels - mean.expand(n, groups, per_group).reshape(n, 1, 1, 1, channels)
    variance = centred.square_().mean(dim=(1, 2, 3)).view(n, groups, per_group).mean(-1, keepdim=True)
    scale = torch.rsqrt(variance + eps) * weight.view(1, groups, per_group)
    shift = bias.view(1, groups, per_group) - mean * scale
    return torch.addcmul(shift.view(n, channels, 1, 1, 1), x, scale.view(n, channels, 1, 1, 1))


def _channels_last_3d(x: torch.Tensor) -> bool:
    try:
        return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    except RuntimeError:  # inside torch.func.vmap (--fuse-folds) the layout cannot be asked
        return False


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters, same state-dict keys) that runs as `group_norm_by_reductions`
    on CUDA tensors without gradients. PyTorch's CUDA kernel gives each (sample, group) pair one
    thread block, so a batch of one with 8 groups leaves nearly all of a GPU's multiprocessors idle,
    and that kernel dominated a forward (measured in bench/ARCHIVE.md, 'GPU machine, second session';
    the reductions in bench/RESULTS.md, 'GPU machine, third session'). On the CPU the native kernel
    is the faster one, so it stays (bench/ARCHIVE.md, 'After these measurements'). Training
    (gradients on) keeps the native kernel too: its backward is fused and keeps no float32 copies of
    the activations, and the reductions' effect on a training step has not been measured.

    On the CPU, float32 inference in the channels-last layout (`--precision fp32`, the default on
    CPUs without bf16) runs as `group_norm_channels_last`, whose statistics keep float32's digits
    where the native kernel's do not. Under bf16 autocast the native kernel stays: CPU bf16
    inference runs in the contiguous layout instead (`TorchStagePredictor`), where the kernel is
    accurate and which cost less there than this function (bench/RESULTS.md).

    `reduce_on_cuda=False` keeps the native kernel on CUDA as well, to time one against the other
    (bench/gpu_profile.py). Other keywords are nn.GroupNorm's."""

    def __init__(self, num_groups: int, num_channels: int, *, reduce_on_cuda: bool = True, **kwargs) -> None:
        super().__init__(num_groups, num_channels, **kwargs)
        self.reduce_on_cuda = reduce_on_cuda

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reduce_on_cuda else ", reduce_on_cuda=False")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.reduce_on_cuda and not torch.is_grad_enabled():
            return group_norm_by_reductions(x, self.num_groups, self.weight, self.bias, self.eps)
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and _channels_last_3d(x)
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        ):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


class ResidualBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, norm_groups: int, *, reduce_norm_on_cuda: bool = True
    ) -> None:
        super().__init__()
        reduce = reduce_norm_on_cuda
        self.norm1 = GroupNorm(group_count(in_channels, norm_groups), in_channels, reduce_on_cuda=reduce)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(group_count(out_channels, norm_groups), out_channels, reduce_on_cuda=reduce)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.norm3 = GroupNorm(group_count(out_channels, norm_groups), out_channels, reduce_on_cuda=reduce)
        self.conv3 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.relu(self.conv1(self.norm1(x)))
        out = self.relu(self.conv2(self.norm2(residual)))
        out = self.conv3(self.norm3(out))
        return self.relu(out + residual)


class EncodingBlock(nn.Module):
    """ERB: MaxPool3d(2) then a residual block."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_groups: int, *, reduce_norm_on_cuda: bool = True
    ) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(2)
        self.block = ResidualBlock(in_channels, out_channels, norm_groups, reduce_norm_on_cuda=reduce_norm_on_cuda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max_pool3d is on CPU autocast's float32 list: under bf16 autocast it would copy the block
        # output to float32, pool, and hand the next GroupNorm float32 activations that the next
        # convolution copies back to bf16, time wasted on every encoder (measured in
        # bench/RESULTS.md, 'CPU, fifth session'). The maximum of bf16 values is a bf16 value, so
        # pool in x's own dtype. Autocast does not know the meta device, on which bench/flops.py
        # counts a forward's operations; nothing is cast there.
        if x.device.type == "meta":
            return self.block(self.pool(x))
        with torch.autocast(x.device.type, enabled=False):
            pooled = self.pool(x)
        return self.block(pooled)


class DecodingBlock(nn.Module):
    """DRB: ConvTranspose3d up to the skip's size, concatenation with the skip, residual block."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_groups: int, *, reduce_norm_on_cuda: bool = True
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.block = ResidualBlock(2 * out_channels, out_channels, norm_groups, reduce_norm_on_cuda=reduce_norm_on_cuda)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class ResUNet3D(nn.Module):
    """Residual 3D U-Net returning logits (apply a sigmoid for region probabilities).

    Spatial input sizes must be multiples of 2**(levels-1). `reduce_norm_on_cuda=False` keeps
    PyTorch's GroupNorm kernel on CUDA (see `GroupNorm`); it changes no parameter."""

    def __init__(
        self,
        *,
        in_channels: int = 4,
        out_channels: int = 1,
        width: int = 24,
        levels: int = 4,
        norm_groups: int = 8,
        reduce_norm_on_cuda: bool = True,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("width", width, 1),
            ("levels", levels, 2),
            ("norm_groups", norm_groups, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"ResUNet3D: {name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(reduce_norm_on_cuda, bool):
            raise ValueError(f"ResUNet3D: reduce_norm_on_cuda must be a bool, got {reduce_norm_on_cuda!r}")
        self.levels = levels
        widths = [width * 2**level for level in range(levels)]
        reduce = reduce_norm_on_cuda
        self.stem = ResidualBlock(in_channels, widths[0], norm_groups, reduce_norm_on_cuda=reduce)
        self.encoders = nn.ModuleList(
            EncodingBlock(a, b, norm_groups, reduce_norm_on_cuda=reduce) for a, b in itertools.pairwise(widths)
        )
        self.decoders = nn.ModuleList(
            DecodingBlock(a, b, norm_groups, reduce_norm_on_cuda=reduce)
            for a, b in zip(widths[::-1], widths[::-1][1:], strict=False)
        )
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for encoder in self.encoders:
            skips.append(encoder(skips[-1]))
        out = skips.pop()
        for decoder in self.decoders:
            out = decoder(out, skips.pop())
        return self.head(out)
