"""What each training augmentation costs beside a training step, measured side by side in one run.

    python -m bench.augmentation [--recipe train/default.toml] [--repeats 5] [--threads 1]

On a 4x96^3 crop (the default recipe's region window; random values in a brain ball with a cubic
tumour), times each of nnU-Net's steps alone at probability 1 (MONAI's transforms,
`brats_cli.training.data.library_augmentation`), the recipe's whole augmentation at its own
probabilities (mean over draws), and one training step of the recipe's WT network (forward,
backward, Adam; fp32 on the CPU), then prints each as a share of the step. One thread by default,
as each lane of train/default.sh has one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from brats_cli.bundle import Stage
from brats_cli.model import ResUNet3D
from brats_cli.training.data import augment, library_augmentation
from brats_cli.training.losses import compute_loss
from brats_cli.training.recipe import LIBRARY_STEPS, Augmentation, load_recipe


def crop(size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices(size) - np.array(size).reshape(3, 1, 1, 1) // 2
    brain = (grid**2).sum(0) < (min(size) // 2 - 4) ** 2
    target = (np.abs(grid) < min(size) // 6).all(0)
    rng = np.random.default_rng(0)
    image = np.where(brain, rng.normal(0, 1, (4, *size)) + 2.0 * target, 0).astype(np.float32)
    return image, target[None].astype(np.float32)


def seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="train/default.toml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    image, target = crop(recipe.region_window)
    rng = np.random.default_rng(1)

    spec = recipe.stages[Stage.WT]
    model = ResUNet3D(width=spec.width, levels=spec.levels, norm_groups=spec.norm_groups)
    model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    x = torch.from_numpy(image)[None].contiguous(memory_format=torch.channels_last_3d)
    y = torch.from_numpy(target)[None]

    def step() -> None:
        loss = compute_loss(spec.loss, model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    step_seconds = seconds(step, args.repeats)
    rows = [("training step (WT network)", step_seconds)]
    rows.append(
        (
            "flips + scale/shift (own code)",
            seconds(lambda: augment(image, target, rng, recipe.augmentation), args.repeats),
        )
    )
    for name in LIBRARY_STEPS:
        transform = library_augmentation(replace(Augmentation(), **{name: 1.0}))
        rows.append(
            (
                name.removesuffix("_probability") + " (MONAI, always on)",
                seconds(lambda t=transform: t(image, target, rng), args.repeats),
            )
        )
    whole = library_augmentation(recipe.augmentation)
    rows.append(
        (
            f"{args.recipe}'s MONAI steps at its probabilities (mean of 20 draws)",
            statistics.mean(seconds(lambda: whole(image, target, rng), 1) for _ in range(20)),
        )
    )
    print(f"crop 4x{'x'.join(map(str, recipe.region_window))}, {args.threads} thread(s), torch {torch.__version__}")
    print("| what | seconds | share of a training step |")
    print("|---|---|---|")
    for what, value in rows:
        print(f"| {what} | {value:.3f} | {value / step_seconds:.2f} |")


if __name__ == "__main__":
    main()
