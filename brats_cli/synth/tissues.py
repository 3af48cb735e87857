"""The tissue classes of a phantom and their mean intensities on each sequence."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Tissue classes of a phantom; `Phantom.tissue` holds the dominant class of each voxel."""

    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    NECROSIS = 4
    EDEMA = 5
    ENHANCING = 6
    NON_ENHANCING = 7  # solid tumour core that does not enhance: labelled NCR, as in BraTS
    # Generator 2 only, never labelled: what real scans show outside the tumour.
    VESSEL = 8  # veins and arteries in the sulci and the deep white matter: bright on T1ce
    CHOROID = 9  # choroid plexus in the lateral ventricles: bright on T1ce
    PERIVENTRICULAR = 10  # periventricular white-matter hyperintensity: bright on FLAIR and T2


# (FLAIR, T1, T1ce, T2) levels of one class relative to white matter, in channel order.
Levels = tuple[float, float, float, float]

# Mean intensity of each class relative to white matter, per modality (FLAIR, T1, T1ce, T2): the
# contrasts of clinical 1.5-3 T glioma MRI (T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF
# suppressed, edema brightest; T1ce: enhancing rim brightest, necrosis dark).
CONTRAST: dict[Tissue, Levels] = {
    Tissue.CSF: (0.30, 0.32, 0.34, 2.60),
    Tissue.GM: (1.12, 0.80, 0.82, 1.38),
    Tissue.WM: (1.00, 1.00, 1.00, 1.00),
    Tissue.NECROSIS: (0.95, 0.42, 0.44, 2.20),
    Tissue.EDEMA: (1.85, 0.72, 0.74, 1.90),
    Tissue.ENHANCING: (1.45, 0.80, 1.50, 1.55),
    Tissue.NON_ENHANCING: (1.55, 0.62, 0.64, 1.75),
}
TUMOUR = (Tissue.NECROSIS, Tissue.ENHANCING, Tissue.EDEMA, Tissue.NON_ENHANCING)

# Generator 2: mean intensity relative to white matter (FLAIR, T1, T1ce, T2) of the unlabelled classes.
EXTRA_CONTRAST: dict[Tissue, Levels] = {
    # Veins and slow-flow arteries: enhance strongly; dark on T2 (flow void), isointense on T1.
    Tissue.VESSEL: (0.85, 0.90, 2.30, 0.60),
    # Choroid plexus: enhances strongly; darker than the CSF around it on T2 and FLAIR-bright vs CSF.
    Tissue.CHOROID: (1.00, 0.85, 2.00, 1.40),
    # Periventricular white-matter hyperintensity (gliosis, small-vessel disease, transependymal CSF).
    Tissue.PERIVENTRICULAR: (1.50, 0.88, 0.90, 1.50),
}
CONTRAST_V2 = {**CONTRAST, **EXTRA_CONTRAST}
