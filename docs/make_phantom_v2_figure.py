"""Draw docs/phantom-v2.png: generator-2 phantoms beside a generator-1 phantom (and the real case
../shared/data/real/brainlesion-demo when it is there).

Each row shows FLAIR, T1, T1ce, T2 and the labels over FLAIR at the axial slice with the most
tumour, and a coronal slice through the same tumour of the first channel with thick slices (FLAIR
when none has them), where slices along z show as blur. A v2 row's label lists per channel the thick
slices (axis and mm) and the gamma.

    PYTHONPATH=. python docs/make_phantom_v2_figure.py [--seed 11] [--cases 0,1,2,3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brats_cli.io import CHANNEL_ORDER, discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention
from brats_cli.synth import Phantom, draw_tumour_rows, make_phantom, show_slice

ROOT = Path(__file__).resolve().parents[1]
REAL_CANDIDATES = [base / "shared" / "data" / "real" / "brainlesion-demo" for base in (ROOT.parent, ROOT.parent.parent)]
NAMES = ["FLAIR", "T1", "T1ce", "T2"]
AXES = "xyz"


def describe(phantom: Phantom) -> str:
    parts = []
    for name, settings in zip(NAMES, phantom.acquisition, strict=True):
        thick = f"{settings.slice_mm}mm/{AXES[settings.slice_axis]}" if settings.slice_axis is not None else "1mm"
        parts.append(f"{name} {thick} g{settings.gamma:.2f}")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cases", default="0,1,2,3", help="v2 phantom indices of the series, comma-separated")
    parser.add_argument("--real", type=Path, default=next((p for p in REAL_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom-v2.png")
    args = parser.parse_args()

    enhancing = LabelConvention.BRATS2023.enhancing
    rows = []  # (name, image, labels, coronal channel)
    if args.real is not None:
        (case,) = discover_cases(args.real).cases
        image, geometry = load_case(case)
        labels, _ = read_label_map(args.real / "segmentation.nii.gz")
        rows.append((f"real: {args.real.name}", image, geometry.to_canonical(labels), 0))
    v1 = make_phantom(args.seed, 0, "2023")
    rows.append((f"generator 1\n{v1.case_id}", v1.image, v1.labels, 0))
    for index in (int(part) for part in args.cases.split(",")):
        phantom = make_phantom(args.seed, index, "2023", generator=2)
        thick = [c for c, settings in enumerate(phantom.acquisition) if settings.slice_axis is not None]
        name = f"generator 2\n{phantom.case_id}\n{describe(phantom)}"
        rows.append((name, phantom.image, phantom.labels, thick[0] if thick else 0))

    def coronal(axis, index: int, volume: np.ndarray, label_map: np.ndarray, z: int) -> None:
        channel = coronals[index]
        y = int(np.argmax((label_map > 0).sum(axis=(0, 2)))) if label_map.any() else volume.shape[2] // 2
        # Coronal: the patient's right on the left, superior up (LPS x, z).
        show_slice(axis, volume[channel, :, y, ::-1])
        axis.set_xlabel(f"{CHANNEL_ORDER[channel].name} y={y}", fontsize=8)

    titles = [*NAMES, "labels (NCR red, ED green, ET yellow)", "coronal (thick-sliced channel)"]
    coronals = [row[3] for row in rows]
    draw_tumour_rows([row[:3] for row in rows], titles, args.out, enhancing=enhancing, extra=coronal)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
