"""What a phantom is (`Phantom`) and the steps every generator version composes the same way:
draw a case's brain and tumours (`draw_case`), mix their tissue fractions at the brain voxels
(`tissue_fractions`) and record the dominant class of each voxel (`dominant_tissue`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from brats_cli.io import BRATS_SHAPE, Naming
from brats_cli.synth.acquisition import Acquisition
from brats_cli.synth.anatomy import Placement, WarpedBrain, draw_placement, load_anatomy, warp_brain
from brats_cli.synth.shapes import PlacedShape
from brats_cli.synth.tissues import Tissue
from brats_cli.synth.tumours import Lesion, TumourMaps, draw_lesions, draw_tumours

DESCRIPTION_BYTES = 79  # the NIfTI descrip field holds 80 bytes, NUL-terminated


@dataclass(frozen=True)
class Phantom:
    """One synthetic case in canonical LPS orientation.

    image: (4, 240, 240, 155) int16, channels FLAIR, T1, T1ce, T2, background exactly 0.
    labels: (240, 240, 155) uint8 in the convention of `naming` (ET = 4 for 2021, 3 for 2023).
    tissue: (240, 240, 155) uint8 `Tissue` value of the class with the largest fraction per voxel.
    generator: the generator version that made it (1 to 4).
    description: what `write_phantom` records in each file's NIfTI `descrip` ("" for generator 1,
        whose files stay byte for byte as they always were).
    acquisition: generator 2: how each channel was rendered (FLAIR, T1, T1ce, T2); () for generator 1.
    """

    case_id: str
    naming: Naming
    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    generator: int = 1
    description: str = ""
    acquisition: tuple[Acquisition, ...] = ()


def case_id(seed: int, index: int, naming: Naming) -> str:
    if naming is Naming.BRATS2021:
        return f"Synth2021_s{seed}_{index:05d}"
    return f"Synth-GLI-s{seed}-{index:05d}"


def description(generator: int, seed: int, index: int, shape: str = "") -> str:
    """The `descrip` of a generator-2 to -4 case: version, seed, index and (4) the outline's label
    map, ASCII (anything else replaced by '?') and cut to the field."""
    text = f"brats-synth v{generator} seed {seed} index {index}"
    if not shape:
        return text
    name = shape.encode("ascii", "replace").decode("ascii")
    return f"{text} shape {name}"[:DESCRIPTION_BYTES]


# Generator 4's step between drawing the lesions and warping: the lesions (resized to it) and the
# real outline placed for the first one.
Outline = Callable[[np.random.Generator, list[Lesion]], tuple[list[Lesion], PlacedShape]]


@dataclass(frozen=True)
class DrawnCase:
    """A case's geometry: the template's placement, the warped brain and the tumours in it, and
    (generator 4) the real outline the main tumour took."""

    placement: Placement
    brain: WarpedBrain
    tumours: TumourMaps
    shaped: PlacedShape | None = None


def draw_case(
    rng: np.random.Generator,
    non_enhancing: float,
    style: int,
    outline: Outline | None = None,
    template: Any = None,
) -> DrawnCase:
    """The brain and tumours of one case, drawn from `rng` in a fixed order: the placement, the
    lesions (`style`: 1, 2 or 3, as `draw_lesions` takes it), the outline, the warp, the regions.
    `template`: the template image to warp (`anatomy.warp_anatomy`)."""
    anatomy = load_anatomy()
    placement = draw_placement(rng)
    lesions = draw_lesions(rng, anatomy, placement, non_enhancing, generator=style)
    shaped = None
    if outline is not None:
        lesions, shaped = outline(rng, lesions)
    brain = warp_brain(rng, anatomy, placement, lesions, template)
    tumours = draw_tumours(rng, lesions, brain, generator=style, shaped=shaped)
    return DrawnCase(placement, brain, tumours, shaped)


def tissue_fractions(brain: WarpedBrain, tumours: TumourMaps) -> dict[Tissue, np.ndarray]:
    """Each class's fraction at the brain voxels (`brain.inside`): CSF, GM and WM from the warped
    template, the tumour classes from their soft masks, normal tissue giving way to tumour."""
    inside = brain.inside
    fractions = {Tissue.GM: brain.grey[inside], Tissue.WM: brain.white[inside]}
    fractions[Tissue.CSF] = np.clip(brain.brain_soft[inside] - fractions[Tissue.GM] - fractions[Tissue.WM], 0, None)
    # Skull-stripped images have a hard edge: within the brain the fractions are renormalised.
    total = fractions[Tissue.CSF] + fractions[Tissue.GM] + fractions[Tissue.WM] + 1e-6
    tumour_total = np.zeros(len(inside[0]), np.float32)
    for tissue, soft in tumours.soft.items():
        fractions[tissue] = soft[inside] if soft is not None else np.zeros_like(tumour_total)
        tumour_total += fractions[tissue]
    tumour_total = np.clip(tumour_total, 0, 1)
    for tissue in (Tissue.CSF, Tissue.GM, Tissue.WM):
        fractions[tissue] = fractions[tissue] / total * (1.0 - tumour_total)
    return fractions


def dominant_tissue(fractions: dict[Tissue, np.ndarray], inside: tuple[np.ndarray, ...]) -> np.ndarray:
    """(240, 240, 155) uint8: the class with the largest fraction at each brain voxel, 0 elsewhere
    (ties go to the class first in `fractions`)."""
    order = list(fractions)
    dominant = np.argmax(np.stack([fractions[t] for t in order]), axis=0)
    tissue_map = np.zeros(BRATS_SHAPE, np.uint8)
    tissue_map[inside] = np.array([int(t) for t in order], np.uint8)[dominant]
    return tissue_map
