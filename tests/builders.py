"""Hand-made data and networks for tests and benchmarks: synthetic BraTS-space cases with known
geometry, tiny random bundles, and hand-set "FLAIR networks" that find bright tumours through the
real architecture. Not part of the product: pytest finds this file on its path (tests/ has no
__init__.py), benchmarks import it as `tests.builders` from the repository root."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brats_cli.bundle import Architecture, Bundle, Stage, write_torch_bundle
from brats_cli.io import BRATS_SHAPE, SEPARATOR, SUFFIX, Modality, Naming
from brats_cli.labels import LabelConvention
from brats_cli.model import ResUNet3D
from brats_cli.preprocess import MODEL_GRID

# The released BraTS affine: LPS, origin at voxel (0, 239, 0) as stored in the public files.
LPS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def ras_affine() -> np.ndarray:
    """The same grid stored RAS: x and y flipped, so voxel (i, j, k) of a RAS file is voxel
    (239 - i, 239 - j, k) of the LPS one."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = 239.0
    flip[1, 3] = 239.0
    return LPS_AFFINE @ flip


def nested_labels(shift: int = 0, shape=(40, 36, 30)) -> np.ndarray:
    """A small BraTS 2021 label map: nested spheres of edema, enhancing tumour and necrosis,
    centred `shift` voxels along the first axis from the middle (a prediction against a reference)."""
    labels = np.zeros(shape, dtype=np.uint8)
    grid = np.indices(shape)
    radius = np.sqrt((grid[0] - 20 - shift) ** 2 + (grid[1] - 18) ** 2 + (grid[2] - 15) ** 2)
    labels[radius <= 10] = 2
    labels[radius <= 6] = 4
    labels[radius <= 4] = 1
    return labels


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


def flair_network(threshold: float, width: int = 4) -> ResUNet3D:
    """A hand-set ResUNet3D whose logit is a monotonic function of FLAIR minus `threshold`.

    All weights are zero except an identity path from the FLAIR channel through the stem block and
    the last decoder's skip connection to the head, so the network marks the brightest FLAIR voxels
    (tumour, in the synthetic images and in real cases): meaningful, deterministic predictions
    through the real architecture, with one localisation window."""
    model = ResUNet3D(width=width)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)
        # FLAIR into every channel of the decoder's GroupNorm group that holds skip channel 0, so
        # that group normalises it exactly as a one-channel group would, at any width.
        norm = model.decoders[-1].block.norm1
        model.stem.conv1.weight[: norm.num_channels // norm.num_groups, 0, 1, 1, 1] = 1.0
        model.decoders[-1].block.conv1.weight[0, width, 1, 1, 1] = 1.0  # skip channel 0, after the up channels
        model.head.weight[0, 0] = 1.0
        model.head.bias.fill_(-threshold)
    return model


# Thresholds of `flair_network` per stage: nested regions (ET brightest) on synthetic and real cases.
FLAIR_THRESHOLDS = {Stage.BASE: 5.0, Stage.WT: 4.0, Stage.TC: 6.0, Stage.ET: 8.0}


def flair_bundle(
    root: Path,
    *,
    window=(128, 128, 128),
    thresholds: dict[Stage, float] | None = None,
    folds: int | dict[Stage, int] = 1,
    widths: dict[Stage, int] | None = None,
) -> Bundle:
    """A bundle of `flair_network`s: finds bright FLAIR tumours (one window per case). Tiny by
    default; `widths` gives paper-sized networks for benchmarks with realistic localisation, and
    `folds` per stage the paper's ensembles (base 1, regions 5)."""
    thresholds = {**FLAIR_THRESHOLDS, **(thresholds or {})}
    widths = {stage: 4 for stage in Stage} | (widths or {})
    counts = folds if isinstance(folds, dict) else {stage: folds for stage in Stage}
    weights = {
        stage: [flair_network(thresholds[stage], widths[stage]).state_dict()] * counts.get(stage, 1) for stage in Stage
    }
    architectures = {
        stage: Architecture(width=widths[stage], input_size=MODEL_GRID if stage is Stage.BASE else window)
        for stage in Stage
    }
    return write_torch_bundle(root, weights, architectures, labels=LabelConvention.BRATS2021, name="flair-test")


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
