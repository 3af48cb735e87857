"""Labelled phantom cases in BraTS space, built on a real brain (the MNI ICBM152 2009 templates).

Each case warps the template's grey- and white-matter probability maps into the 240x240x155 LPS grid
with a random similarity transform, a smooth elastic deformation and the mass effect of its tumour,
then renders four contrasts from tissue fractions (CSF, GM, WM, necrosis, edema, enhancing tumour)
with partial volume, a smooth bias field, Rician noise and a per-case intensity scale. Case `index`
of seed `seed` depends only on (seed, index) and the generator version: every random draw comes
from a stream of its own, in a fixed order.

The modules, in the order a case is made:
  anatomy      the templates, placed and warped into the grid (`WarpedBrain`)
  tumours      lesions and their regions, drawn or from a placed real outline; the label map
  shapes       real outlines from label maps (generator 4): read, checked and placed
  tissues      the tissue classes and their contrasts
  acquisition  the channels from the fractions: contrast, texture, bias, noise, thick slices
  lookalikes   unlabelled vessels, choroid plexus and periventricular signal (generator 2)
  phantom      `Phantom` and the steps every version composes alike
  generator1   the default series (and the pipeline generators 3 and 4 reuse)
  generator2   domain randomisation (`SeedSequence([seed, index, 2])`)
  generator3   diffuse low-grade gliomas (`default_rng([seed, index, 3])`)
  generator4   generator 3 with outlines from real label maps (`default_rng([seed, index, 4])`)
  series       `make_phantom` for any version, and the case folders on disk
  preview      `--preview` and the documentation figures
"""

from brats_cli.synth.acquisition import (
    INT16_PEAK,
    LEVEL_SPREAD,
    SHIFT_SHARE,
    SHIFT_VOXELS,
    THICK_AXIS_SHARE,
    THICK_MM,
    THICK_SHARE,
    Acquisition,
    bias_field,
    draw_acquisition,
    thick_slices,
)
from brats_cli.synth.anatomy import (
    EXTRA_HINT,
    FIELD_SPACING,
    GRID_ANCHOR,
    PROXIMITY_MM,
    TEMPLATE_ANCHOR,
    TEMPLATE_FOLDER,
    TEMPLATE_NAME,
    TEMPLATE_PACKAGE,
    TEMPLATE_SCALE,
    Anatomy,
    Placement,
    WarpedBrain,
    displacement_field,
    draw_placement,
    load_anatomy,
    output_box,
    template_image,
    template_image_v2,
    template_paths,
    ventricle_proximity,
    warp_anatomy,
    warp_brain,
)
from brats_cli.synth.generator2 import make_phantom_v2
from brats_cli.synth.generator3 import EDEMA_RANGE, LOW_GRADE_RATIO
from brats_cli.synth.lookalikes import draw_choroid, draw_periventricular, draw_vessels
from brats_cli.synth.phantom import DESCRIPTION_BYTES, Phantom, case_id
from brats_cli.synth.preview import (
    LABEL_COLOURS,
    ExtraColumn,
    PreviewRow,
    draw_tumour_rows,
    preview_row,
    require_preview,
    save_preview,
    show_labels,
    show_slice,
    tumour_slice,
)
from brats_cli.synth.series import BRATS_AFFINE, GENERATORS, make_phantom, write_phantom, write_phantom_cases
from brats_cli.synth.shapes import (
    SHAPE_SCALE,
    SHAPE_SPACING_TOLERANCE,
    SHAPE_STRETCH,
    SHAPE_WARP_MM,
    SHAPE_WARP_SCALE,
    PlacedShape,
    TumourShape,
    load_tumour_shape,
    load_tumour_shapes,
    place_shape,
    shape_files,
)
from brats_cli.synth.tissues import CONTRAST, CONTRAST_V2, EXTRA_CONTRAST, TUMOUR, Tissue
from brats_cli.synth.tumours import (
    NON_ENHANCING_SHARE,
    OWN_NECROSIS,
    SOLID_SHARE,
    Lesion,
    Regions,
    TumourMaps,
    draw_lesions,
    draw_tumours,
)

__all__ = [
    "BRATS_AFFINE",
    "CONTRAST",
    "CONTRAST_V2",
    "DESCRIPTION_BYTES",
    "EDEMA_RANGE",
    "EXTRA_CONTRAST",
    "EXTRA_HINT",
    "FIELD_SPACING",
    "GENERATORS",
    "GRID_ANCHOR",
    "INT16_PEAK",
    "LABEL_COLOURS",
    "LEVEL_SPREAD",
    "LOW_GRADE_RATIO",
    "NON_ENHANCING_SHARE",
    "OWN_NECROSIS",
    "PROXIMITY_MM",
    "SHAPE_SCALE",
    "SHAPE_SPACING_TOLERANCE",
    "SHAPE_STRETCH",
    "SHAPE_WARP_MM",
    "SHAPE_WARP_SCALE",
    "SHIFT_SHARE",
    "SHIFT_VOXELS",
    "SOLID_SHARE",
    "TEMPLATE_ANCHOR",
    "TEMPLATE_FOLDER",
    "TEMPLATE_NAME",
    "TEMPLATE_PACKAGE",
    "TEMPLATE_SCALE",
    "THICK_AXIS_SHARE",
    "THICK_MM",
    "THICK_SHARE",
    "TUMOUR",
    "Acquisition",
    "Anatomy",
    "ExtraColumn",
    "Lesion",
    "Phantom",
    "PlacedShape",
    "Placement",
    "PreviewRow",
    "Regions",
    "Tissue",
    "TumourMaps",
    "TumourShape",
    "WarpedBrain",
    "bias_field",
    "case_id",
    "displacement_field",
    "draw_acquisition",
    "draw_choroid",
    "draw_lesions",
    "draw_periventricular",
    "draw_placement",
    "draw_tumour_rows",
    "draw_tumours",
    "draw_vessels",
    "load_anatomy",
    "load_tumour_shape",
    "load_tumour_shapes",
    "make_phantom",
    "make_phantom_v2",
    "output_box",
    "place_shape",
    "preview_row",
    "require_preview",
    "save_preview",
    "shape_files",
    "show_labels",
    "show_slice",
    "template_image",
    "template_image_v2",
    "template_paths",
    "thick_slices",
    "tumour_slice",
    "ventricle_proximity",
    "warp_anatomy",
    "warp_brain",
    "write_phantom",
    "write_phantom_cases",
]
