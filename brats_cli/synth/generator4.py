"""Generator 4: generator 3 with the main tumour's outline taken from real BraTS-space
segmentations instead of a noisy ellipsoid: each case picks one of the given label maps, rotates,
flips, scales and elastically deforms its regions and centres the core on a tumour site
(`shapes.place_shape`). Its cases come from `default_rng([seed, index, 4])` and also depend on the
label maps, in the order given."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from brats_cli.io import Naming
from brats_cli.synth.generator1 import compose_fixed
from brats_cli.synth.generator3 import draw_contrast
from brats_cli.synth.phantom import Phantom, case_id, description
from brats_cli.synth.shapes import PlacedShape, TumourShape, equivalent_radius, place_shape
from brats_cli.synth.tumours import NON_ENHANCING_SHARE, Lesion


def place_outline(
    rng: np.random.Generator, lesions: list[Lesion], shapes: Sequence[TumourShape]
) -> tuple[list[Lesion], PlacedShape]:
    """One of `shapes` placed on the main lesion's centre, and the lesions with the main one's
    mass effect sized from the placed outline instead of the ellipsoid drawn for it."""
    shaped = place_shape(rng, shapes[int(rng.integers(len(shapes)))], lesions[0].centre)
    core_radius = equivalent_radius(shaped.core)
    main = replace(
        lesions[0],
        core_radius=core_radius,
        edema_radius=equivalent_radius(shaped.whole),
        push=min(0.6, 0.15 + 0.02 * core_radius),
    )
    return [main, *lesions[1:]], shaped


def make_phantom_v4(
    seed: int,
    index: int,
    naming: Naming = Naming.BRATS2021,
    non_enhancing: float = NON_ENHANCING_SHARE,
    shapes: Sequence[TumourShape] = (),
) -> Phantom:
    """Case `index` of the generator-4 series `seed` with outlines from `shapes` (at least one);
    depends only on (seed, index), the share of non-enhancing lesions and the shapes in order."""
    if not shapes:
        raise ValueError("generator 4 needs at least one tumour shape")
    naming = Naming(naming)
    rng = np.random.default_rng([seed, index, 4])
    outline = functools.partial(place_outline, shapes=shapes)
    case = compose_fixed(rng, naming, non_enhancing, style=3, outline=outline, contrast=draw_contrast)
    assert case.shaped is not None  # the outline step placed one
    detail = description(4, seed, index, case.shaped.name)
    return Phantom(case_id(seed, index, naming), naming, case.image, case.labels, case.tissue, 4, detail)
