"""GroupNorm on the CPU in channels-last: PyTorch's kernel against the network's own.

One case's preprocessed grid through the default bundle's base model (192x192x160), side by side
in one process, in float32 and under bf16 autocast (the default on CPUs with bf16): channels-last
with PyTorch's GroupNorm kernel (what `brats segment` ran before in both), channels-last with
`brats_cli.model.group_norm_channels_last` (what fp32 runs now; bf16 keeps the kernel), and the
plain contiguous layout. For each: the best of `--repeats` forwards after a warm-up,
and the largest probability difference and the voxels on the other side of 0.5 against the same
model in float64.

    python -m bench.group_norm [--case ../shared/data/real/BraTS-GLI-00001-000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from brats_cli import model as network
from brats_cli.bundle import load_weights
from brats_cli.choices import Stage
from brats_cli.host import usable_cpus
from brats_cli.predictors.torch_backend import load_torch_models
from brats_cli.segmenter import case_from_files, load_preprocessed


def _ours_in_any_precision(self: network.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """`group_norm_channels_last` for every channels-last input, under autocast too (in float32,
    as autocast's GroupNorm runs), to measure it where `GroupNorm.forward` does not use it yet."""
    if network._channels_last_3d(x):
        return network.group_norm_channels_last(x.float(), self.num_groups, self.weight, self.bias, self.eps)
    return torch.nn.GroupNorm.forward(self, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=Path("../shared/data/real/BraTS-GLI-00001-000"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(usable_cpus())
    grid, _, _ = load_preprocessed(case_from_files(args.case))
    x = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None]
    model = load_torch_models(load_weights(None), Stage.BASE)[0].eval()
    with torch.inference_mode():
        reference = torch.sigmoid(model.double()(x.double())).float()
    model.float()
    accurate = network.GroupNorm.forward
    variants = (
        ("channels-last, PyTorch's GroupNorm kernel", torch.channels_last_3d, torch.nn.GroupNorm.forward),
        ("channels-last, group_norm_channels_last", torch.channels_last_3d, _ours_in_any_precision),
        ("contiguous, PyTorch's GroupNorm kernel", torch.contiguous_format, accurate),
    )
    print(f"{args.case.name}: base model, 192x192x160, {torch.get_num_threads()} threads")
    print("| precision | layout and GroupNorm | seconds a forward | against the kernel | max abs p - fp64 "
          "| voxels across 0.5 |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    try:
        for precision in ("fp32", "bf16"):
            first = None
            for name, layout, forward in variants:
                network.GroupNorm.forward = forward  # type: ignore[method-assign]
                net = model.to(memory_format=layout)
                image = x.contiguous(memory_format=layout)
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    probability = torch.sigmoid(net(image).float())
                    times = []
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        net(image)
                        times.append(time.perf_counter() - started)
                best = min(times)
                first = first or best
                error = float((probability - reference).abs().max())
                flipped = int(((probability > 0.5) != (reference > 0.5)).sum())
                print(f"| {precision} | {name} | {best:.3f} | {best / first:.2f}x | {error:.1e} | {flipped} |")
    finally:
        network.GroupNorm.forward = accurate  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
