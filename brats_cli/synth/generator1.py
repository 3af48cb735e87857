"""Generator 1, the default: the series as they have always been (the default weights were
trained on them). Case `index` of seed `seed` draws everything from `default_rng([seed, index])`
in a fixed order: the template's placement, the lesions, the warp, the tumours' regions, then the
four channels at generator 1's contrasts (`tissues.CONTRAST`) with a small per-case jitter.

`compose_fixed` is that pipeline; generators 3 and 4 are it with their own lesion style, outline
and contrast draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from brats_cli.io import Naming
from brats_cli.synth.acquisition import render_fixed
from brats_cli.synth.phantom import Outline, Phantom, case_id, dominant_tissue, draw_case, tissue_fractions
from brats_cli.synth.shapes import PlacedShape
from brats_cli.synth.tissues import CONTRAST, Levels, Tissue
from brats_cli.synth.tumours import NON_ENHANCING_SHARE, label_map

# Draws a case's class contrasts (generators 3 and 4), after its tumours and before its rendering.
ContrastDraw = Callable[[np.random.Generator], dict[Tissue, Levels]]


@dataclass(frozen=True)
class ComposedCase:
    """The arrays of a case (as `Phantom` holds them) and the outline its main tumour took, if any."""

    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    shaped: PlacedShape | None


def compose_fixed(
    rng: np.random.Generator,
    naming: Naming,
    non_enhancing: float,
    style: int = 1,
    outline: Outline | None = None,
    contrast: ContrastDraw | None = None,
) -> ComposedCase:
    """One case of generator 1 (and, with their `style`, `outline` and `contrast`, of 3 and 4),
    every draw from `rng`."""
    case = draw_case(rng, non_enhancing, style, outline)
    levels = CONTRAST if contrast is None else contrast(rng)
    fractions = tissue_fractions(case.brain, case.tumours)
    image = render_fixed(rng, fractions, levels, case.tumours.heterogeneity[case.brain.inside], case.brain)
    tissue = dominant_tissue(fractions, case.brain.inside)
    return ComposedCase(image, label_map(case.tumours, naming), tissue, case.shaped)


def make_phantom_v1(
    seed: int, index: int, naming: Naming = Naming.BRATS2021, non_enhancing: float = NON_ENHANCING_SHARE
) -> Phantom:
    """Case `index` of the generator-1 series `seed`; depends only on (seed, index) and the share
    of non-enhancing lesions."""
    naming = Naming(naming)
    case = compose_fixed(np.random.default_rng([seed, index]), naming, non_enhancing)
    return Phantom(case_id(seed, index, naming), naming, case.image, case.labels, case.tissue)
