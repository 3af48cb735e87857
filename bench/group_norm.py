"""GroupNorm on the CPU in channels-last: PyTorch's kernel against the network's own.

One case's preprocessed grid through the default bundle's base model (192x192x160) and its centre
96^3 through fold 0 of the WT and TC region models, side by side in one process, in float32 and
under bf16 autocast (the default on CPUs with bf16): channels-last with PyTorch's GroupNorm kernel,
channels-last with `brats_cli.model.group_norm_channels_last` (what fp32 runs; under autocast on a
float32 copy), channels-last with one `torch.var_mean` instead (a candidate not taken), and the
contiguous layout with PyTorch's kernel (what bf16 runs). For each: the best of `--repeats`
forwards after a warm-up, and the largest probability difference and the voxels on the other side
of 0.5 against the same model in float64.

    python -m bench.group_norm [--case ../shared/data/real/BraTS-GLI-00001-000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from brats_cli import model as network
from brats_cli.bundle import load_weights
from brats_cli.choices import Stage
from brats_cli.host import usable_cpus
from brats_cli.predictors.torch_backend import load_torch_models
from brats_cli.segmenter import case_from_files, load_preprocessed

Forward = Callable[[torch.nn.GroupNorm, torch.Tensor], torch.Tensor]
REGION_WINDOW = 96


def _var_mean(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """A candidate measured and not taken: each channel's variance and mean in one `torch.var_mean`
    over the (N, X, Y, Z, C) view of a float32 tensor, combined into its group's."""
    n, channels = x.shape[0], x.shape[1]
    per_group = channels // groups
    variance, mean = torch.var_mean(x.permute(0, 2, 3, 4, 1), dim=(1, 2, 3), correction=0)
    mean, variance = mean.view(n, groups, per_group), variance.view(n, groups, per_group)
    group_mean = mean.mean(-1, keepdim=True)
    group_variance = (variance + (mean - group_mean).square()).mean(-1, keepdim=True)
    scale = torch.rsqrt(group_variance + eps) * weight.view(1, groups, per_group)
    shift = bias.view(1, groups, per_group) - group_mean * scale
    return torch.addcmul(shift.view(n, channels, 1, 1, 1), x, scale.view(n, channels, 1, 1, 1))


def _in_any_precision(function: Callable[..., torch.Tensor]) -> Forward:
    """`function` for every channels-last input, under autocast too (on a float32 copy, as
    autocast's GroupNorm runs), to measure it whatever `GroupNorm.forward` chooses."""

    def forward(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if network._channels_last_3d(x):
            return function(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return torch.nn.GroupNorm.forward(self, x)

    return forward


VARIANTS: tuple[tuple[str, torch.memory_format, Forward], ...] = (
    ("channels-last, PyTorch's kernel", torch.channels_last_3d, torch.nn.GroupNorm.forward),
    ("channels-last, group_norm_channels_last", torch.channels_last_3d,
     _in_any_precision(network.group_norm_channels_last)),
    ("channels-last, one `var_mean`", torch.channels_last_3d, _in_any_precision(_var_mean)),
    ("contiguous, PyTorch's kernel", torch.contiguous_format, torch.nn.GroupNorm.forward),
)  # fmt: skip


def _measure(name: str, model: torch.nn.Module, x: torch.Tensor, repeats: int) -> None:
    with torch.inference_mode():
        reference = torch.sigmoid(model.double()(x.double())).float()
    model.float()
    for precision in ("fp32", "bf16"):
        first = None
        for variant, layout, forward in VARIANTS:
            network.GroupNorm.forward = forward  # type: ignore[method-assign]
            net = model.to(memory_format=layout)
            image = x.contiguous(memory_format=layout)
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                probability = torch.sigmoid(net(image).float())
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    net(image)
                    times.append(time.perf_counter() - started)
            best = min(times)
            first = first or best
            error = float((probability - reference).abs().max())
            flipped = int(((probability > 0.5) != (reference > 0.5)).sum())
            print(f"| {name} | {precision} | {variant} | {best:.3f} | {best / first:.2f}x | {error:.1e} | {flipped} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=Path("../shared/data/real/BraTS-GLI-00001-000"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(usable_cpus())
    grid, _, _ = load_preprocessed(case_from_files(args.case))
    x = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None]
    start = [(size - REGION_WINDOW) // 2 for size in x.shape[2:]]
    window = x[(..., *(slice(s, s + REGION_WINDOW) for s in start))].contiguous()
    weights = load_weights(None)
    print(f"{args.case.name}, {torch.get_num_threads()} threads")
    print("| model, input | precision | layout and GroupNorm | seconds a forward | against the kernel "
          "| max abs p - fp64 | voxels across 0.5 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    accurate = network.GroupNorm.forward
    try:
        for stage, image in ((Stage.BASE, x), (Stage.WT, window), (Stage.TC, window)):
            model = load_torch_models(weights, stage, folds=[0])[0].eval()
            shape = "x".join(str(size) for size in image.shape[2:])
            _measure(f"{stage.value.upper()} fold 0, {shape}", model, image, args.repeats)
    finally:
        network.GroupNorm.forward = accurate  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
