"""Floating-point operations of a ResUNet3D forward, counted from the layers it runs.

Convolutions dominate: a multiply-add counts as 2 operations; normalisation, activations and
pooling (under 1% of the total) are left out."""

from __future__ import annotations

import torch
from torch import nn


def forward_flop(model: nn.Module, input_size: tuple[int, int, int], in_channels: int = 4) -> int:
    """Operations of one forward pass on a (1, in_channels, *input_size) input, on the meta device
    (no memory for activations, no arithmetic)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.weight.shape[2:].numel()
        if isinstance(module, nn.ConvTranspose3d):
            total += 2 * inputs[0].shape[2:].numel() * module.in_channels * module.out_channels * kernel
        else:
            total += 2 * output.shape[2:].numel() * module.in_channels * module.out_channels * kernel

    meta = model.to("meta") if next(model.parameters()).device.type != "meta" else model
    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            meta(torch.empty(1, in_channels, *input_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


if __name__ == "__main__":
    from brats_cli.model import ResUNet3D

    for width, size in ((24, (192, 192, 160)), (64, (128, 128, 128))):
        with torch.device("meta"):
            model = ResUNet3D(width=width)
        print(f"width {width} at {size}: {forward_flop(model, size) / 1e12:.2f} TFLOP")
