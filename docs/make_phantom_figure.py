"""Draw docs/phantom-vs-real.png: the real case ../shared/data/real/brainlesion-demo beside phantoms.

Each row shows FLAIR, T1, T1ce, T2 and the labels over FLAIR at the axial slice with the most tumour.

    PYTHONPATH=. python docs/make_phantom_figure.py [--seed 11] [--cases 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brats_cli.io import discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention
from brats_cli.synth import draw_tumour_rows, make_phantom

ROOT = Path(__file__).resolve().parents[1]
# The shared data folder sits beside the repository (../shared), or beside a worktree's parent.
REAL_CANDIDATES = [base / "shared" / "data" / "real" / "brainlesion-demo" for base in (ROOT.parent, ROOT.parent.parent)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cases", default="0,1,3", help="phantom indices of the series, comma-separated")
    parser.add_argument("--real", type=Path, default=next((p for p in REAL_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom-vs-real.png")
    args = parser.parse_args()

    if args.real is None:
        parser.error("real case brainlesion-demo not found; pass --real FOLDER")
    (case,) = discover_cases(args.real).cases
    image, geometry = load_case(case)
    labels, _ = read_label_map(args.real / "segmentation.nii.gz")
    labels = geometry.to_canonical(labels)
    rows = [(f"real: {args.real.name}", image, labels)]
    for index in (int(part) for part in args.cases.split(",")):
        phantom = make_phantom(args.seed, index, "2023")
        rows.append((phantom.case_id, phantom.image, phantom.labels))

    titles = ["FLAIR", "T1", "T1ce", "T2", "labels (NCR red, ED green, ET yellow)"]
    draw_tumour_rows(rows, titles, args.out, enhancing=LabelConvention.BRATS2023.enhancing, name_size=9)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
