"""Draw docs/default-weights-real.png: the default bundle's predictions on the shared real cases
beside their reference segmentations (algorithm outputs, not expert labels), for the model card.

One row per case and slice (the slice with most reference tumour, and the one with most predicted
tumour where they differ): FLAIR, T1ce, reference labels over FLAIR, predicted labels over FLAIR.

    PYTHONPATH=. python docs/make_default_weights_figure.py PRED_DIR [--out docs/default-weights-real.png]

PRED_DIR holds `brats segment` outputs named after the cases (brainlesion-demo.nii.gz,
TCGA-DU-7294.nii.gz); see weights/README.md for the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from brats_cli.io import discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention
from brats_cli.synth import show_labels, show_slice, tumour_slice

ROOT = Path(__file__).resolve().parents[1]
REAL = next(
    (p for p in (base / "shared" / "data" / "real" for base in (ROOT.parent, ROOT.parent.parent)) if p.is_dir()),
    ROOT.parent / "shared" / "data" / "real",
)
# case folder (segmented from a copy with BraTS names where needed), reference file, its convention
CASES = {
    "brainlesion-demo": ("brainlesion-demo/segmentation.nii.gz", LabelConvention.BRATS2023),
    "TCGA-DU-7294": ("TCGA-DU-7294/segmentation/mav.nii.gz", LabelConvention.BRATS2021),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path, help="folder of brats segment outputs")
    parser.add_argument("--images", type=Path, default=REAL, help="folder with the case folders (BraTS names)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "default-weights-real.png")
    args = parser.parse_args()

    rows = []
    for case_id, (reference_file, convention) in CASES.items():
        (case,) = discover_cases(args.images / case_id).cases
        image, _ = load_case(case)
        reference, _ = read_label_map(REAL / reference_file)
        predicted, _ = read_label_map(args.pred / f"{case_id}.nii.gz")
        predicted_convention = LabelConvention.BRATS2023 if predicted.max() == 3 else convention
        slices = dict.fromkeys([tumour_slice(reference), tumour_slice(predicted)])
        for z in slices:
            rows.append((case_id, z, image, reference, convention, predicted, predicted_convention))

    figure, axes = plt.subplots(len(rows), 4, figsize=(10, 2.7 * len(rows)), squeeze=False)
    for axes_row, (case_id, z, image, reference, convention, predicted, predicted_convention) in zip(
        axes, rows, strict=True
    ):
        show_slice(axes_row[0], image[0][:, :, z])
        show_slice(axes_row[1], image[2][:, :, z])
        show_labels(axes_row[2], image[0][:, :, z], reference[:, :, z], convention.enhancing)
        show_labels(axes_row[3], image[0][:, :, z], predicted[:, :, z], predicted_convention.enhancing)
        axes_row[0].set_ylabel(f"{case_id}\nz={z}", fontsize=8)
    for column, title in enumerate(["FLAIR", "T1ce", "reference (algorithm)", "default weights"]):
        axes[0][column].set_title(title)
    for axis in np.ravel(axes):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
