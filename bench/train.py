"""Training throughput of a region model (width 64, 128^3 crops, the paper's WT/TC/ET setting) and
the data loader's share of each step, measured side by side in one run.

    python -m bench.train [--steps 2] [--batch 1] [--workers 0] [--device cpu|cuda]

Makes a few labelled synthetic cases, caches them (as `brats train` does), then times
- loader: seconds to produce one batch of augmented 128^3 crops from the memory-mapped cache;
- step: seconds of one forward + backward + Adam step of ResUNet3D(width=64) on that batch
  (bf16 autocast on CUDA, fp32 on CPU; channels-last 3D),
and prints the ratio step / loader: how many loader workers keep the model fed (> 1 means one
in-process loader already outpaces the model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brats_cli.bundle import Stage
from brats_cli.io import BRATS_SHAPE
from brats_cli.model import ResUNet3D
from brats_cli.training.cache import prepare_cache, training_cases
from brats_cli.training.data import CropDataset
from brats_cli.training.loop import autocast_dtype
from brats_cli.training.losses import compute_loss
from brats_cli.training.recipe import load_recipe
from tests.builders import synthetic_image, write_case


def make_cases(root: Path, count: int) -> None:
    for index in range(count):
        centre = (110 + 5 * index, 105 + 3 * index, 75)
        radius = (20, 16, 14)
        image = synthetic_image(index, centre, radius)
        grid = np.indices(BRATS_SHAPE, dtype=np.float32)
        distance = np.sqrt(sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip(centre, radius, strict=True))))
        labels = np.select([distance <= 0.35, distance <= 0.6, distance <= 1], [1, 4, 2], 0).astype(np.uint8)
        write_case(root, f"BraTS2021_{index:05d}", image, labels=labels, extension=".nii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="crops per step (per GPU in the paper: 1)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "train" / "paper.toml")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_cases(root / "data", args.cases)
        cached = prepare_cache(training_cases(root / "data"), root / "cache")
        dataset = CropDataset(cached, Stage.WT, recipe, training=True, stream=0)

        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
            started = time.perf_counter()
            items = [dataset[(step, (step * args.batch + i) % len(dataset))] for i in range(args.batch)]
            image = torch.stack([i[0] for i in items])
            target = torch.stack([i[1] for i in items])
            return image, target, time.perf_counter() - started

        model = ResUNet3D(width=recipe.stages[Stage.WT].width).to(device, memory_format=torch.channels_last_3d)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        amp = autocast_dtype(device)
        loads, steps = [], []
        for step in range(args.steps + 1):  # the first step warms up (allocations, cuDNN autotuning)
            image, target, load_seconds = batch(step)
            started = time.perf_counter()
            image = image.to(device).contiguous(memory_format=torch.channels_last_3d)
            target = target.to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(image)
            loss = compute_loss(recipe.stages[Stage.WT].loss, logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_seconds = time.perf_counter() - started
            if step:
                loads.append(load_seconds)
                steps.append(step_seconds)
            print(
                f"step {step}{' (warm-up)' if not step else ''}: load {load_seconds:.3f} s, train {step_seconds:.3f} s"
            )
    load, train = statistics.median(loads), statistics.median(steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; width 64, 128^3, batch {args.batch}, precision {amp or torch.float32}")
    print(f"training: {1 / train:.4f} steps/s ({train:.3f} s/step, median of {len(steps)})")
    print(f"data loading: {load:.3f} s/batch in one process")
    print(f"ratio step/load: {train / load:.1f} (loader is {'never' if train > load else 'possibly'} the bottleneck)")


if __name__ == "__main__":
    main()
