"""Training and validation crops from the cache.

Every random draw of a sample (crop position, jitter, flips, intensity) comes from a generator
seeded by (recipe seed, stage/fold stream, epoch, case index) rather than from a process-global
state. The crops of an epoch are therefore the same whatever the number of loader workers or ranks,
and a resumed run sees exactly the samples the uninterrupted one would have seen.

Crops, per stage (paper 2.3):
- base: a `patch`-sized crop at a uniformly random position (the full 192x192x160 grid in the
  paper's recipe, where the position is fixed); validation on a `validation_size` crop centred on the
  tumour (the full grid by default).
- wt, tc, et: a `region_window` crop centred on the ground-truth whole tumour, shifted by a uniform
  random jitter of up to `jitter` voxels per axis and clamped inside the grid, so the models train on
  what stage-1 localisation gives them at inference, with its imprecision; a share `random_crops` of
  them anywhere in the grid instead, as nnU-Net samples, so that they also learn healthy tissue far
  from a tumour. Validation: centred, no jitter.

Augmentation beyond flips and intensity scale/shift runs in MONAI's transforms (a well-kept
library; its affine and elastic resampling run on torch), seeded per sample like everything else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from brats_cli.bundle import Stage
from brats_cli.labels import Region, region_masks
from brats_cli.preprocess import MODEL_GRID
from brats_cli.training.cache import CachedCase
from brats_cli.training.recipe import Augmentation, Recipe

STAGE_REGION: dict[Stage, Region] = {
    Stage.BASE: Region.WT,
    Stage.WT: Region.WT,
    Stage.TC: Region.TC,
    Stage.ET: Region.ET,
}
Start = tuple[int, int, int]


def centred_start(
    box: tuple[tuple[int, int], ...] | None,
    grid: Sequence[int],
    size: Sequence[int],
    offset: Sequence[int] = (0, 0, 0),
) -> Start:
    """Start of a `size` crop centred on `box` (the grid's centre when there is no box), shifted by
    `offset` and clamped so the crop lies inside `grid`."""
    starts = []
    for axis in range(3):
        centre = (box[axis][0] + box[axis][1]) / 2 if box else grid[axis] / 2
        start = round(centre - size[axis] / 2) + int(offset[axis])
        starts.append(min(max(start, 0), grid[axis] - size[axis]))
    return (starts[0], starts[1], starts[2])


def random_start(grid: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> Start:
    """Start of a `size` crop at a uniformly random position inside `grid`."""
    values = [int(rng.integers(0, g - s + 1)) for g, s in zip(grid, size, strict=True)]
    return (values[0], values[1], values[2])


def crop_slices(start: Start, size: Sequence[int]) -> tuple[slice, slice, slice]:
    return (
        slice(start[0], start[0] + size[0]),
        slice(start[1], start[1] + size[1]),
        slice(start[2], start[2] + size[2]),
    )


def augment(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator, settings: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips (image and target alike) and per-channel intensity scale and shift of the brain
    voxels; the background stays 0, as `preprocess` leaves it. `image` (C, X, Y, Z), `target` (1, X, Y, Z)."""
    for axis in settings.flip_axes:
        if rng.random() < settings.flip_probability:
            image = np.flip(image, axis=axis + 1)
            target = np.flip(target, axis=axis + 1)
    image = np.ascontiguousarray(image)
    target = np.ascontiguousarray(target)
    channels = image.shape[0]
    scale = 1 + np.asarray(rng.uniform(-settings.intensity_scale, settings.intensity_scale, channels))
    shift = np.asarray(rng.uniform(-settings.intensity_shift, settings.intensity_shift, channels))
    for channel in range(channels):
        brain = image[channel] != 0
        image[channel][brain] = image[channel][brain] * scale[channel] + shift[channel]
    return image, target


@dataclass(frozen=True)
class LibraryAugmentation:
    """nnU-Net's augmentations as two MONAI Composes over {"image": (C, X, Y, Z), "target": (1, X, Y, Z)}:
    `spatial` moves image and target alike (the target by nearest neighbour), `intensity` changes
    the image only."""

    spatial: Any
    intensity: Any

    def __call__(
        self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One crop, seeded from `rng`. Voxels outside the brain after the spatial steps (0 in every
        channel, as `preprocess` leaves the background) are 0 again after the intensity steps:
        inference never sees anything else there."""
        self.spatial.set_random_state(seed=int(rng.integers(2**31)))
        self.intensity.set_random_state(seed=int(rng.integers(2**31)))
        with torch.no_grad():
            moved = self.spatial({"image": torch.from_numpy(image), "target": torch.from_numpy(target)})
            moved_image = torch.as_tensor(moved["image"]).float()
            brain = (moved_image != 0).any(dim=0, keepdim=True)
            changed = torch.as_tensor(self.intensity({"image": moved_image})["image"]).float() * brain
        target_out = torch.as_tensor(moved["target"]).float()
        return (
            np.ascontiguousarray(changed.numpy(), dtype=np.float32),
            np.ascontiguousarray(target_out.numpy(), dtype=np.float32),
        )


def library_augmentation(settings: Augmentation) -> LibraryAugmentation:
    """The MONAI transforms of `settings`' probabilities (ranges as nnU-Net's defaults)."""
    from monai import transforms as mt

    return LibraryAugmentation(mt.Compose(_spatial_steps(settings)), mt.Compose(_intensity_steps(settings)))


def _spatial_steps(settings: Augmentation) -> list[Any]:
    """Steps that move image and target alike (the target by nearest neighbour)."""
    from monai import transforms as mt

    both = ["image", "target"]
    spatial: list[Any] = []
    if settings.affine_probability:
        angle = float(np.deg2rad(settings.rotation_degrees))
        spatial.append(
            mt.RandAffined(
                both,
                prob=settings.affine_probability,
                rotate_range=(angle, angle, angle),
                scale_range=(settings.scaling,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if settings.elastic_probability:
        # A smooth displacement field of a few voxels (sigma and magnitude in voxels, as nnU-Net's).
        spatial.append(
            mt.Rand3DElasticd(
                both,
                sigma_range=(9, 13),
                magnitude_range=(50, 150),
                prob=settings.elastic_probability,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    return spatial


def _intensity_steps(settings: Augmentation) -> list[Any]:
    """Steps that change the image only."""
    from monai import transforms as mt

    image = ["image"]
    intensity: list[Any] = []
    if settings.noise_probability:
        intensity.append(
            mt.RandGaussianNoised(image, prob=settings.noise_probability, std=settings.noise_std, sample_std=True)
        )
    if settings.blur_probability:
        sigma = (0.5, 1.0)
        intensity.append(
            mt.RandGaussianSmoothd(image, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=settings.blur_probability)
        )
    if settings.brightness_probability:
        intensity.append(mt.RandScaleIntensityd(image, factors=0.25, prob=settings.brightness_probability))
    if settings.contrast_probability:
        intensity.append(
            mt.RandScaleIntensityFixedMeand(
                image, factors=0.25, preserve_range=True, prob=settings.contrast_probability, channel_wise=True
            )
        )
    if settings.low_resolution_probability:
        intensity.append(
            mt.RandSimulateLowResolutiond(image, prob=settings.low_resolution_probability, zoom_range=(0.5, 1.0))
        )
    if settings.gamma_probability:
        intensity.append(
            mt.RandAdjustContrastd(image, prob=settings.gamma_probability, gamma=(0.7, 1.5), retain_stats=True)
        )
    return intensity


def sample_generator(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, epoch, index])


class CropDataset(Dataset):
    """Items are (epoch, case index) pairs (see `EpochSampler`); returns (image, target) tensors,
    image (4, X, Y, Z) float32 and target (1, X, Y, Z) float32 in {0, 1}."""

    def __init__(
        self, cases: Sequence[CachedCase], stage: Stage, recipe: Recipe, *, training: bool, stream: int
    ) -> None:
        self.cases = list(cases)
        self.stage = stage
        self.recipe = recipe
        self.training = training
        self.stream = stream
        self.size = recipe.crop_size(stage, training=training)
        uses_library = training and recipe.augmentation.uses_library
        self.library = library_augmentation(recipe.augmentation) if uses_library else None

    def __len__(self) -> int:
        return len(self.cases)

    def start(self, case: CachedCase, rng: np.random.Generator) -> Start:
        if self.stage is Stage.BASE:
            if self.training:
                return random_start(MODEL_GRID, self.size, rng)
            return centred_start(case.tumour_box, MODEL_GRID, self.size)
        # Drawn only when the recipe asks for random crops, so recipes without them draw as before.
        if self.training and self.recipe.random_crops and rng.random() < self.recipe.random_crops:
            return random_start(MODEL_GRID, self.size, rng)
        offset = (0, 0, 0)
        if self.training and self.recipe.jitter:
            jitter = self.recipe.jitter
            values = rng.integers(-jitter, jitter + 1, 3)
            offset = (int(values[0]), int(values[1]), int(values[2]))
        return centred_start(case.tumour_box, MODEL_GRID, self.size, offset)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        case = self.cases[index]
        rng = sample_generator(self.recipe.seed, self.stream, epoch, index)
        window = crop_slices(self.start(case, rng), self.size)
        image = np.array(case.image()[(slice(None), *window)], dtype=np.float32)
        labels = np.asarray(case.labels()[window])
        target = region_masks(labels, case.convention)[STAGE_REGION[self.stage]].astype(np.float32)[None]
        if self.training:
            image, target = augment(image, target, rng, self.recipe.augmentation)
            if self.library is not None:
                image, target = self.library(image, target, rng)
        return torch.from_numpy(image), torch.from_numpy(target)


class EpochSampler(Sampler[tuple[int, int]]):
    """A DistributedSampler (this rank's share of a seeded per-epoch shuffle) whose items carry the
    epoch, so the dataset can seed each sample's random draws from (epoch, index)."""

    def __init__(self, size: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        # DistributedSampler only needs len() of its dataset; a range of indices is one.
        indices: Any = range(size)
        self.inner: DistributedSampler = DistributedSampler(
            indices, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.inner:
            yield (self.epoch, index)
