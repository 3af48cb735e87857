"""A series of phantoms: case `index` of seed `seed` of any generator version (`make_phantom`),
and cases written in the BraTS training layout, each folder whole or not at all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.errors import OutputError, first_line
from brats_cli.files import atomic_folder, atomic_path, remove_stale_temporaries
from brats_cli.io import CHANNEL_ORDER, SEGMENTATION_SUFFIX, SEPARATOR, SUFFIX, Naming, check_output_folder
from brats_cli.synth.generator1 import make_phantom_v1
from brats_cli.synth.generator2 import make_phantom_v2
from brats_cli.synth.generator3 import make_phantom_v3
from brats_cli.synth.generator4 import make_phantom_v4
from brats_cli.synth.phantom import Phantom
from brats_cli.synth.shapes import TumourShape
from brats_cli.synth.tumours import NON_ENHANCING_SHARE

GENERATORS = (1, 2, 3, 4)
# The released BraTS affine: LPS, origin at voxel (0, 239, 0).
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def make_phantom(
    seed: int,
    index: int,
    naming: Naming = Naming.BRATS2021,
    non_enhancing: float = NON_ENHANCING_SHARE,
    generator: int = 1,
    shapes: Sequence[TumourShape] = (),
) -> Phantom:
    """Case `index` of the phantom series `seed`; depends only on (seed, index), the share of
    non-enhancing lesions and the generator version (the defaults keep every series as it has
    always been). Generator 2 (`make_phantom_v2`) randomises contrast, resolution and artefacts;
    generator 3 draws non-enhancing lesions as diffuse low-grade gliomas (`LOW_GRADE_RATIO`);
    generator 4 is generator 3 with the main tumour's outline from one of `shapes` (required)."""
    if not 0.0 <= non_enhancing <= 1.0:
        raise ValueError(f"non_enhancing is a share in [0, 1], not {non_enhancing}")
    if generator not in GENERATORS:
        raise ValueError(f"generator is one of {', '.join(map(str, GENERATORS))}, not {generator}")
    if (generator == 4) != bool(shapes):
        raise ValueError("tumour shapes are for generator 4, which needs at least one")
    if generator == 4:
        return make_phantom_v4(seed, index, naming, non_enhancing, shapes)
    versions = {1: make_phantom_v1, 2: make_phantom_v2, 3: make_phantom_v3}
    return versions[generator](seed, index, naming, non_enhancing)


def _nifti(data: np.ndarray, description: str = "") -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, BRATS_AFFINE)
    image.set_qform(BRATS_AFFINE, code=1)
    image.set_sform(BRATS_AFFINE, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if description:  # generator 1 leaves descrip empty: its files stay byte for byte as before
        image.header["descrip"] = description.encode("ascii")
    return image


def write_phantom(phantom: Phantom, root: Path) -> Path:
    """Write one case folder in the BraTS training layout, whole or not at all: it is filled under
    a hidden staging name and renamed into place (a case folder already there is replaced), so an
    interrupted or failing write (a full disk: OutputError naming the case folder) never leaves a
    case with only some modalities. Files of generators 2 to 4 record the generator, seed and index
    in the NIfTI `descrip` field."""
    folder = Path(root) / phantom.case_id
    separator = SEPARATOR[phantom.naming]
    files = [
        (f"{phantom.case_id}{separator}{SUFFIX[phantom.naming][modality]}.nii.gz", phantom.image[channel])
        for channel, modality in enumerate(CHANNEL_ORDER)
    ]
    files.append((f"{phantom.case_id}{separator}{SEGMENTATION_SUFFIX}.nii.gz", phantom.labels))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)  # `root` need not exist yet, as before
        with atomic_folder(folder) as staging:
            for name, data in files:
                with atomic_path(staging / name) as temporary:  # fsync'd before the folder's rename
                    nib.save(_nifti(data, phantom.description), temporary)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write ({first_line(error)}); this case was not written") from error
    return folder


def write_phantom_cases(
    root: Path,
    n: int,
    seed: int,
    naming: Naming = Naming.BRATS2021,
    on_case: Callable[[Phantom], None] | None = None,
    non_enhancing: float = NON_ENHANCING_SHARE,
    generator: int = 1,
    shapes: Sequence[TumourShape] = (),
) -> list[Path]:
    """Write cases 0..n-1 of series `seed` under `root`; `on_case` sees each phantom once written.
    Staging folders that killed runs left in `root` are deleted first (only those of dead processes)."""
    root = check_output_folder(Path(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{root}: cannot create output folder ({first_line(error)})") from error
    remove_stale_temporaries(root)
    folders = []
    for index in range(n):
        phantom = make_phantom(seed, index, naming, non_enhancing, generator, shapes)
        folders.append(write_phantom(phantom, root))
        if on_case is not None:
            on_case(phantom)
    return folders
