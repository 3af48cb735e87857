"""Draw docs/phantom-v3.png: generator-3 low-grade-glioma phantoms beside the real low-grade glioma
../shared/data/real/TCGA-DU-7294 (with its `mav` fusion) and a generator-1 non-enhancing phantom.

Each row shows FLAIR, T1, T1ce, T2 and the labels over T2 at the axial slice with the most tumour,
and T2 along a line through the core's centre, coloured by label (grey outside the tumour).

    PYTHONPATH=. python docs/make_phantom_v3_figure.py [--seed 11] [--cases 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.labels import LabelConvention
from brats_cli.synth import draw_tumour_rows, make_phantom

ROOT = Path(__file__).resolve().parents[1]
REAL_CANDIDATES = [base / "shared" / "data" / "real" / "TCGA-DU-7294" for base in (ROOT.parent, ROOT.parent.parent)]
NAMES = ["FLAIR", "T1", "T1ce", "T2"]
REAL_FILES = ["fla", "t1", "t1c", "t2"]


def read_real(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The case's four channels and the mav labels. Its affine is diag(-1, -1, 1), the phantoms'
    LPS voxel order, so the arrays are shown as stored."""
    image = np.stack([np.asarray(nib.load(folder / f"{folder.name}_{name}_bet.nii.gz").dataobj) for name in REAL_FILES])
    labels = np.asarray(nib.load(folder / "segmentation" / "mav.nii.gz").dataobj).astype(np.uint8)
    return image.astype(np.float32), labels


def profile(axis, t2: np.ndarray, labels: np.ndarray, z: int) -> None:
    """T2 (relative to the brain's median) along x through the core's centre on slice z, coloured
    by label: the core's edge is a step in generator 1 and a ramp in generator 3 and the real case."""
    core = labels[:, :, z] == 1
    if not core.any():
        core = labels[:, :, z] > 0
    y = round(float(np.argwhere(core)[:, 1].mean()))
    xs = np.nonzero(labels[:, y, z] > 0)[0]
    low, high = max(int(xs.min()) - 12, 0), min(int(xs.max()) + 13, labels.shape[0])
    brain = t2[t2 > 0]
    values = t2[low:high, y, z] / np.median(brain)
    colours = {0: "0.5", 1: "red", 2: "green"}
    for label, colour in colours.items():
        shown = np.where(labels[low:high, y, z] == label, values, np.nan)
        axis.plot(np.arange(low, high), shown, ".-", color=colour, markersize=3, linewidth=1)
    axis.set_xlabel(f"T2 / brain median along x, y={y}", fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cases", default="0,1,2", help="generator-3 phantom indices, comma-separated")
    parser.add_argument("--real", type=Path, default=next((p for p in REAL_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom-v3.png")
    args = parser.parse_args()

    rows = []  # (name, image, labels)
    if args.real is not None:
        image, labels = read_real(args.real)
        rows.append((f"real: {args.real.name}\n(mav fusion)", image, labels))
    v1 = make_phantom(args.seed, 2, non_enhancing=1.0)
    rows.append((f"generator 1\n{v1.case_id}", v1.image.astype(np.float32), v1.labels))
    for index in (int(part) for part in args.cases.split(",")):
        phantom = make_phantom(args.seed, index, non_enhancing=1.0, generator=3)
        rows.append((f"generator 3\n{phantom.case_id}", phantom.image.astype(np.float32), phantom.labels))

    titles = [*NAMES, "labels over T2 (NCR red, ED green)", "T2 across the core"]
    draw_tumour_rows(
        rows,
        titles,
        args.out,
        enhancing=LabelConvention.BRATS2021.enhancing,
        label_channel=3,
        extra=lambda axis, _, volume, label_map, z: profile(axis, volume[3], label_map, z),
        extra_ticks=True,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
