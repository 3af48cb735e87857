"""Generator 3: generator 1 with its non-enhancing lesions drawn as diffuse low-grade gliomas:
larger, with little edema (`tumours.draw_lesions`, style 3), a core brighter than edema on T2 and
often darker than it on FLAIR (the T2-FLAIR mismatch), and an infiltrative margin over which core
and edema intensities blend (`tumours.blend_margin`). Its cases come from
`default_rng([seed, index, 3])`."""

from __future__ import annotations

import numpy as np

from brats_cli.io import CHANNEL_ORDER, Modality, Naming
from brats_cli.synth.generator1 import compose_fixed
from brats_cli.synth.phantom import Phantom, case_id, description
from brats_cli.synth.tissues import CONTRAST, Levels, Tissue
from brats_cli.synth.tumours import NON_ENHANCING_SHARE

# The edema's levels relative to white matter (FLAIR, T1, T2), drawn uniformly per case around
# generator 1's (1.85, 0.72, 1.90). Vasogenic edema next to a glioblastoma can be as dark on T1 and
# as bright on T2 as a low-grade tumour's core, and BraTS labels it edema all the same: what tells
# the two apart is the enhancing rim it surrounds, or a core darker on T1 and brighter on T2 than
# the edema around it, so the TC model has to learn that context instead of an intensity.
EDEMA_RANGE = {Modality.FLAIR: (1.5, 2.3), Modality.T1: (0.55, 0.85), Modality.T2: (1.6, 2.3)}
# A diffuse low-grade glioma's solid core relative to the case's edema: markedly T2-hyperintense,
# brighter than the edema; darker on T1; on FLAIR often no brighter than the edema (the T2-FLAIR
# mismatch of IDH-mutant astrocytomas, Patel et al., Clin Cancer Res 2017). It does not enhance:
# T1ce is T1 within 10 %.
LOW_GRADE_RATIO = {Modality.FLAIR: (0.7, 1.05), Modality.T1: (0.6, 0.85), Modality.T2: (1.1, 1.4)}
UNENHANCED = (Modality.FLAIR, Modality.T1, Modality.T2)


def _levels(flair: float, t1: float, t2: float, rng: np.random.Generator) -> Levels:
    """(FLAIR, T1, T1ce, T2) in channel order for a class that does not enhance: T1ce is T1 within 10 %."""
    levels = {
        Modality.FLAIR: flair,
        Modality.T1: t1,
        Modality.T1CE: t1 * float(rng.uniform(0.95, 1.1)),
        Modality.T2: t2,
    }
    first, second, third, fourth = (levels[modality] for modality in CHANNEL_ORDER)
    return (first, second, third, fourth)


def _edema_contrast(rng: np.random.Generator) -> Levels:
    flair, t1, t2 = (float(rng.uniform(*EDEMA_RANGE[m])) for m in UNENHANCED)
    return _levels(flair, t1, t2, rng)


def _low_grade_contrast(rng: np.random.Generator, edema: Levels) -> Levels:
    flair, t1, t2 = (edema[CHANNEL_ORDER.index(m)] * float(rng.uniform(*LOW_GRADE_RATIO[m])) for m in UNENHANCED)
    return _levels(flair, t1, t2, rng)


def draw_contrast(rng: np.random.Generator) -> dict[Tissue, Levels]:
    """Generator 1's contrasts with the case's edema and low-grade core levels drawn."""
    contrast = dict(CONTRAST)
    contrast[Tissue.EDEMA] = _edema_contrast(rng)
    contrast[Tissue.NON_ENHANCING] = _low_grade_contrast(rng, contrast[Tissue.EDEMA])
    return contrast


def make_phantom_v3(
    seed: int, index: int, naming: Naming = Naming.BRATS2021, non_enhancing: float = NON_ENHANCING_SHARE
) -> Phantom:
    """Case `index` of the generator-3 series `seed`; depends only on (seed, index) and the share
    of non-enhancing lesions (use a high one: low-grade gliomas are the non-enhancing lesions)."""
    naming = Naming(naming)
    rng = np.random.default_rng([seed, index, 3])
    case = compose_fixed(rng, naming, non_enhancing, style=3, contrast=draw_contrast)
    detail = description(3, seed, index)
    return Phantom(case_id(seed, index, naming), naming, case.image, case.labels, case.tissue, 3, detail)
