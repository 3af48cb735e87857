"""Generator 2: domain randomisation, after SynthSeg (Billot et al., Medical Image Analysis 2023).

Same anatomy, warp and tumour drawing as generator 1, from streams of its own
(`SeedSequence([seed, index, 2])`), with:
- per case and channel a random Gaussian mixture: a log-normal mean per class around CONTRAST, a
  random within-class spread, random gamma, bias field strength, noise level and scale;
- per channel, at random, thick slices along one axis and a sub-voxel mis-registration
  (`acquisition.draw_acquisition`);
- tumours with edema grown through white matter and uneven, nodular rims (lesion style 2);
- unlabelled look-alikes: enhancing vessels and choroid plexus on T1ce, periventricular
  hyperintensity on FLAIR and T2 (`lookalikes`).
Anatomy and tumours come from one child stream, the rendering from another, so the labels do not
depend on any intensity draw.
"""

from __future__ import annotations

import numpy as np

from brats_cli.io import Naming
from brats_cli.synth.acquisition import draw_acquisition, render_randomised
from brats_cli.synth.anatomy import template_image_v2
from brats_cli.synth.lookalikes import add_lookalikes
from brats_cli.synth.phantom import Phantom, case_id, description, dominant_tissue, draw_case, tissue_fractions
from brats_cli.synth.tumours import NON_ENHANCING_SHARE, label_map


def make_phantom_v2(
    seed: int, index: int, naming: Naming = Naming.BRATS2021, non_enhancing: float = NON_ENHANCING_SHARE
) -> Phantom:
    """Case `index` of the generator-2 series `seed`; depends only on (seed, index) and the share
    of non-enhancing lesions."""
    naming = Naming(naming)
    geometry_seed, render_seed = np.random.SeedSequence([seed, index, 2]).spawn(2)
    rng = np.random.default_rng(geometry_seed)
    case = draw_case(rng, non_enhancing, style=2, template=template_image_v2())
    brain = case.brain
    fractions = tissue_fractions(brain, case.tumours)
    add_lookalikes(rng, fractions, brain, case.tumours, case.placement)

    render = np.random.default_rng(render_seed)
    acquisition = draw_acquisition(render)
    image = render_randomised(render, acquisition, fractions, case.tumours.heterogeneity[brain.inside], brain)
    return Phantom(
        case_id(seed, index, naming),
        naming,
        image,
        label_map(case.tumours, naming),
        dominant_tissue(fractions, brain.inside),
        generator=2,
        description=description(2, seed, index),
        acquisition=acquisition,
    )
