"""Draw docs/phantom-v4.png: generator-4 phantoms, whose main tumour takes its outline from the
FeTS label-fusion segmentations in ../shared/data/real/fets-labelfusion, beside the real
glioblastoma ../shared/data/real/brainlesion-demo (with its segmentation) and a generator-3 phantom.

Each row shows FLAIR, T1, T1ce, T2 and the labels over FLAIR at the axial slice with the most
tumour. The phantoms use 2023 names (ET = 3), as the real case does.

    PYTHONPATH=. python docs/make_phantom_v4_figure.py [--seed 11] [--cases 0,1,2,3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brats_cli.io import discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention
from brats_cli.synth import draw_tumour_rows, load_tumour_shapes, make_phantom

ROOT = Path(__file__).resolve().parents[1]
SHARED_CANDIDATES = [base / "shared" / "data" / "real" for base in (ROOT.parent, ROOT.parent.parent)]
NAMES = ["FLAIR", "T1", "T1ce", "T2"]
# The fusion's distinct segmentations (the others repeat these voxel for voxel; baseline_simple
# holds labels outside the BraTS set), as train/default.sh's round seven uses them.
SHAPES = ["baseline.nii.gz", "unet.nii.gz", "baseline_staple.nii.gz"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cases", default="0,1,2,3", help="generator-4 phantom indices, comma-separated")
    parser.add_argument("--real", type=Path, default=next((p for p in SHARED_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--non-enhancing", type=float, default=0.35)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom-v4.png")
    args = parser.parse_args()
    if args.real is None:
        parser.error("the shared real cases are not there: pass --real PATH/TO/shared/data/real")

    shapes = load_tumour_shapes([args.real / "fets-labelfusion" / name for name in SHAPES])
    rows = []  # (name, image, labels)
    demo = args.real / "brainlesion-demo"
    (case,) = discover_cases(demo).cases
    image, geometry = load_case(case)
    labels, _ = read_label_map(demo / "segmentation.nii.gz")
    rows.append((f"real: {demo.name}", image, geometry.to_canonical(labels)))
    v3 = make_phantom(args.seed, 0, "2023", non_enhancing=args.non_enhancing, generator=3)
    rows.append((f"generator 3\n{v3.case_id}", v3.image, v3.labels))
    for index in (int(part) for part in args.cases.split(",")):
        phantom = make_phantom(args.seed, index, "2023", args.non_enhancing, generator=4, shapes=shapes)
        shape = phantom.description.rsplit(" shape ", 1)[-1]
        rows.append((f"generator 4\n{phantom.case_id}\nshape {shape}", phantom.image, phantom.labels))

    titles = [*NAMES, "labels (NCR red, ED green, ET yellow)"]
    draw_tumour_rows(rows, titles, args.out, enhancing=LabelConvention.BRATS2023.enhancing)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
