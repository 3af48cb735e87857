"""Training throughput of a region model (the WT stage of a recipe: by default train/paper.toml's,
width 64 on 128^3 crops) in each precision, and the data loader's share of a step, measured side by
side in one run.

    python -m bench.train [--recipe train/paper.toml] [--steps 2] [--batch 1] [--device cpu|cuda]
                          [--precisions fp32,bf16]

Makes a few labelled synthetic cases, caches them (as `brats train` does), then times
- loader: seconds to produce one batch of augmented crops from the memory-mapped cache;
- step: seconds of one forward + backward + Adam step of the recipe's WT model on those batches,
  for each precision in turn, with the autocast dtype and memory layout `brats train --precision`
  uses (brats_cli.training.loop.autocast_dtype, training_memory_format);
and prints each precision's time against the first's, and the ratio step / loader: how many loader
workers keep the model fed (> 1 means one in-process loader already outpaces the model).
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
from brats_cli.choices import Precision
from brats_cli.io import BRATS_SHAPE
from brats_cli.model import ResUNet3D
from brats_cli.training.cache import prepare_cache, training_cases
from brats_cli.training.data import CropDataset
from brats_cli.training.loop import autocast_dtype, training_memory_format
from brats_cli.training.losses import compute_loss
from brats_cli.training.recipe import load_recipe
from tests.builders import synthetic_image, write_case

ROOT = Path(__file__).resolve().parents[1]


def make_cases(root: Path, count: int) -> None:
    for index in range(count):
        centre = (110 + 5 * index, 105 + 3 * index, 75)
        radius = (20, 16, 14)
        image = synthetic_image(index, centre, radius)
        grid = np.indices(BRATS_SHAPE, dtype=np.float32)
        distance = np.sqrt(sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip(centre, radius, strict=True))))
        labels = np.select([distance <= 0.35, distance <= 0.6, distance <= 1], [1, 4, 2], 0).astype(np.uint8)
        write_case(root, f"BraTS2021_{index:05d}", image, labels=labels, extension=".nii")


def time_steps(
    batches: list[tuple[torch.Tensor, torch.Tensor]], width: int, loss_kind, precision: Precision, device
) -> list[float]:
    """Seconds of each training step after the first (which warms up allocations and autotuning)."""
    amp = autocast_dtype(device, precision)
    layout = training_memory_format(device, amp)
    torch.manual_seed(0)
    model = ResUNet3D(width=width).to(device, memory_format=layout)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    seconds = []
    for step, (image, target) in enumerate(batches):
        started = time.perf_counter()
        image = image.to(device).contiguous(memory_format=layout)
        target = target.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(image)
        loss = compute_loss(loss_kind, logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        print(f"{precision.value} step {step}{' (warm-up)' if not step else ''}: {elapsed:.3f} s", flush=True)
        if step:
            seconds.append(elapsed)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "train" / "paper.toml")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="crops per step (per GPU in the paper: 1)")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, auto")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    spec = recipe.stages[Stage.WT]
    precisions = [Precision(word) for word in args.precisions.split(",")]
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_cases(root / "data", args.cases)
        cached = prepare_cache(training_cases(root / "data"), root / "cache")
        dataset = CropDataset(cached, Stage.WT, recipe, training=True, stream=0)
        batches, loads = [], []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            items = [dataset[(step, (step * args.batch + i) % len(dataset))] for i in range(args.batch)]
            batches.append((torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])))
            loads.append(time.perf_counter() - started)
    crop = "x".join(str(n) for n in batches[0][0].shape[2:])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; recipe {recipe.name}: width {spec.width}, crops {crop}, batch {args.batch}")
    medians = {}
    for precision in precisions:
        medians[precision] = statistics.median(time_steps(batches, spec.width, spec.loss, precision, device))
    load = statistics.median(loads[1:])
    first = medians[precisions[0]]
    for precision, seconds in medians.items():
        amp = autocast_dtype(device, precision)
        print(
            f"training {precision.value} ({amp or torch.float32}, {training_memory_format(device, amp)}): "
            f"{seconds:.3f} s/step, {seconds / first:.2f}x {precisions[0].value}'s"
        )
    print(f"data loading: {load:.3f} s/batch in one process")
    fastest = min(medians.values())
    verdict = "never" if fastest > load else "possibly"
    print(f"ratio fastest step/load: {fastest / load:.1f} (loader is {verdict} the bottleneck)")


if __name__ == "__main__":
    main()
