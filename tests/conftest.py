"""Shared fixtures: synthetic BraTS-space cases with known geometry, tiny random weight bundles,
and the real public cases in ../shared/data/real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_cli.bundle import Architecture, Bundle, Stage, write_torch_bundle
from brats_cli.io import BRATS_SHAPE, SEPARATOR, SUFFIX, Modality, Naming
from brats_cli.labels import LabelConvention
from brats_cli.model import ResUNet3D
from brats_cli.preprocess import MODEL_GRID

# ../shared/data/real beside the checkout; a git worktree one level deeper (wt/<name>) finds it
# one more level up.
REAL_DATA = next(
    (
        folder / "shared" / "data" / "real"
        for folder in Path(__file__).resolve().parents[1].parents
        if (folder / "shared" / "data" / "real").is_dir()
    ),
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real",
)

# The released BraTS affine: LPS, origin at voxel (0, 239, 0) as stored in the public files.
LPS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def ras_affine() -> np.ndarray:
    """The same grid stored RAS: x and y flipped, so voxel (i, j, k) of a RAS file is voxel
    (239 - i, 239 - j, k) of the LPS one."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = 239.0
    flip[1, 3] = 239.0
    return LPS_AFFINE @ flip


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real cases not found at {REAL_DATA} (the project's shared data folder)")
    return REAL_DATA


def synthetic_image(seed: int = 0, tumour_centre=(120, 110, 80), tumour_radius=(18, 14, 12)) -> np.ndarray:
    """(4, 240, 240, 155) float image: an ellipsoidal 'brain' with a brighter ellipsoidal 'tumour'."""
    rng = np.random.default_rng(seed)
    grid = np.indices(BRATS_SHAPE, dtype=np.float32)
    brain = (((grid[0] - 120) / 75) ** 2 + ((grid[1] - 120) / 90) ** 2 + ((grid[2] - 77) / 65) ** 2) <= 1
    tumour = (
        sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip(tumour_centre, tumour_radius, strict=True))) <= 1
    )
    image = np.zeros((4, *BRATS_SHAPE), dtype=np.float32)
    for channel in range(4):
        values = 300 + 50 * channel + rng.normal(0, 10, BRATS_SHAPE)
        values[tumour] += 400
        image[channel][brain] = values[brain]
    return image


def write_case(
    folder: Path,
    case_id: str,
    image: np.ndarray,
    *,
    naming: Naming = Naming.BRATS2021,
    affine: np.ndarray = LPS_AFFINE,
    dtype=np.int16,
    extension: str = ".nii.gz",
    labels: np.ndarray | None = None,
) -> Path:
    """Write a case folder; `image` is in the stored (file) orientation."""
    case_folder = folder / case_id
    case_folder.mkdir(parents=True, exist_ok=True)
    separator = SEPARATOR[naming]
    for channel, modality in enumerate((Modality.FLAIR, Modality.T1, Modality.T1CE, Modality.T2)):
        data = image[channel].astype(dtype)
        nifti = nib.Nifti1Image(data, affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nib.save(nifti, case_folder / f"{case_id}{separator}{SUFFIX[naming][modality]}{extension}")
    if labels is not None:
        seg = nib.Nifti1Image(labels.astype(np.uint8), affine)
        nib.save(seg, case_folder / f"{case_id}{separator}seg{extension}")
    return case_folder


def random_bundle(
    root: Path,
    *,
    width: int = 4,
    folds: int = 1,
    window: tuple[int, int, int] = (128, 128, 128),
    head_bias: dict[Stage, float] | None = None,
    seed: int = 0,
    et_threshold: int = 600,
) -> Bundle:
    """A bundle of randomly initialised tiny networks. `head_bias` shifts a stage's final layer
    bias, to make its models predict (large positive) or not predict (large negative) tumour."""
    torch.manual_seed(seed)
    weights = {}
    architectures = {}
    for stage in Stage:
        size = MODEL_GRID if stage is Stage.BASE else window
        architectures[stage] = Architecture(width=width, input_size=size)
        states = []
        for _ in range(folds):
            model = ResUNet3D(width=width)
            if head_bias and stage in head_bias:
                with torch.no_grad():
                    model.head.weight.zero_()
                    model.head.bias.fill_(head_bias[stage])
            states.append(model.state_dict())
        weights[stage] = states
    return write_torch_bundle(
        root, weights, architectures, labels=LabelConvention.BRATS2021, et_threshold=et_threshold, name="test"
    )


@pytest.fixture
def tiny_bundle(tmp_path_factory) -> Bundle:
    return random_bundle(tmp_path_factory.mktemp("bundle"), window=(64, 64, 64))


@pytest.fixture
def make_case(tmp_path) -> Callable[..., Path]:
    def make(case_id: str = "BraTS2021_00001", root: Path | None = None, **kwargs) -> Path:
        image = kwargs.pop("image", None)
        if image is None:
            image = synthetic_image()
        return write_case(root or tmp_path / "input", case_id, image, **kwargs)

    return make
