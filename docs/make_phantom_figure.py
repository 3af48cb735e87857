"""Draw a phantom figure of docs/phantoms.md: phantoms of one generator beside real cases from
../shared/data/real. Each row shows FLAIR, T1, T1ce, T2 and the labels at the axial slice with the
most tumour.

    --generator 1  docs/phantom-vs-real.png: phantoms beside the real case brainlesion-demo.
    --generator 2  docs/phantom-v2.png: generator-2 phantoms beside brainlesion-demo (when it is
                   there) and a generator-1 phantom, with a coronal slice through the tumour of the
                   first thick-sliced channel (FLAIR when none is), where slices along z show as
                   blur; each row lists per channel its thick slices (axis and mm) and gamma.
    --generator 3  docs/phantom-v3.png: low-grade-glioma phantoms beside the real low-grade glioma
                   TCGA-DU-7294 (its `mav` fusion; when it is there) and a generator-1
                   non-enhancing phantom; labels over T2, and T2 along a line through the core's
                   centre, coloured by label (grey outside the tumour).
    --generator 4  docs/phantom-v4.png: phantoms whose main tumour takes its outline from the FeTS
                   label-fusion segmentations (fets-labelfusion), beside brainlesion-demo and a
                   generator-3 phantom.

    PYTHONPATH=. python docs/make_phantom_figure.py --generator N [--seed 11] [--cases 0,1,2]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brats_cli.io import CHANNEL_ORDER, Naming, discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention
from brats_cli.synth import Phantom, draw_tumour_rows, load_tumour_shapes, make_phantom, show_slice

ROOT = Path(__file__).resolve().parents[1]
# The shared data folder sits beside the repository (../shared), or beside a worktree's parent.
REAL_CANDIDATES = [base / "shared" / "data" / "real" for base in (ROOT.parent, ROOT.parent.parent)]
NAMES = ["FLAIR", "T1", "T1ce", "T2"]
LABELS_TITLE = "labels (NCR red, ED green, ET yellow)"
# Per generator: the figure, the phantom indices drawn by default, whether it needs the real cases.
FIGURES = {1: ("phantom-vs-real.png", "0,1,3", True), 2: ("phantom-v2.png", "0,1,2,3", False)}
FIGURES |= {3: ("phantom-v3.png", "0,1,2", False), 4: ("phantom-v4.png", "0,1,2,3", True)}
# Generator 4: the fusion's distinct segmentations (the others repeat these voxel for voxel;
# baseline_simple holds labels outside the BraTS set), as training round seven used them.
SHAPES = ["baseline.nii.gz", "unet.nii.gz", "baseline_staple.nii.gz"]
AXES = "xyz"

Row = tuple[str, np.ndarray, np.ndarray]


def demo_row(real: Path) -> Row:
    """The real glioblastoma brainlesion-demo with its segmentation, in canonical orientation."""
    demo = real / "brainlesion-demo"
    (case,) = discover_cases(demo).cases
    image, geometry = load_case(case)
    labels, _ = read_label_map(demo / "segmentation.nii.gz")
    return (f"real: {demo.name}", image, geometry.to_canonical(labels))


def low_grade_row(real: Path) -> Row:
    """The real low-grade glioma TCGA-DU-7294 and its mav labels. Its affine is diag(-1, -1, 1),
    the phantoms' LPS voxel order, so the arrays are shown as stored."""
    folder = real / "TCGA-DU-7294"
    files = ["fla", "t1", "t1c", "t2"]
    read = nib.Nifti1Image.from_filename
    image = np.stack([np.asarray(read(folder / f"{folder.name}_{name}_bet.nii.gz").dataobj) for name in files])
    labels = np.asarray(read(folder / "segmentation" / "mav.nii.gz").dataobj).astype(np.uint8)
    return (f"real: {folder.name}\n(mav fusion)", image.astype(np.float32), labels)


def phantom_row(label: str, phantom: Phantom, detail: str = "") -> Row:
    name = f"{label}\n{phantom.case_id}" + (f"\n{detail}" if detail else "")
    return (name, phantom.image, phantom.labels)


def describe(phantom: Phantom) -> str:
    """A generator-2 phantom's channels: thick slices (mm/axis, or 1mm) and gamma."""
    parts = []
    for name, settings in zip(NAMES, phantom.acquisition, strict=True):
        thick = f"{settings.slice_mm}mm/{AXES[settings.slice_axis]}" if settings.slice_axis is not None else "1mm"
        parts.append(f"{name} {thick} g{settings.gamma:.2f}")
    return "\n".join(parts)


def coronal_column(channels: list[int]) -> Callable[..., None]:
    """A sixth column: a coronal slice through the tumour of channel `channels[row]`."""

    def coronal(axis: Any, index: int, volume: np.ndarray, label_map: np.ndarray, z: int) -> None:
        channel = channels[index]
        y = int(np.argmax((label_map > 0).sum(axis=(0, 2)))) if label_map.any() else volume.shape[2] // 2
        # Coronal: the patient's right on the left, superior up (LPS x, z).
        show_slice(axis, volume[channel, :, y, ::-1])
        axis.set_xlabel(f"{CHANNEL_ORDER[channel].name} y={y}", fontsize=8)

    return coronal


def profile(axis: Any, t2: np.ndarray, labels: np.ndarray, z: int) -> None:
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


def figure_1(seed: int, cases: list[int], real: Path | None, out: Path) -> None:
    assert real is not None
    rows = [demo_row(real)]
    for index in cases:
        phantom = make_phantom(seed, index, Naming.BRATS2023)
        rows.append((phantom.case_id, phantom.image, phantom.labels))
    titles = [*NAMES, LABELS_TITLE]
    draw_tumour_rows(rows, titles, out, enhancing=LabelConvention.BRATS2023.enhancing, name_size=9)


def figure_2(seed: int, cases: list[int], real: Path | None, out: Path) -> None:
    rows = [demo_row(real)] if real is not None else []
    rows.append(phantom_row("generator 1", make_phantom(seed, 0, Naming.BRATS2023)))
    channels = [0] * len(rows)
    for index in cases:
        phantom = make_phantom(seed, index, Naming.BRATS2023, generator=2)
        thick = [c for c, settings in enumerate(phantom.acquisition) if settings.slice_axis is not None]
        rows.append(phantom_row("generator 2", phantom, describe(phantom)))
        channels.append(thick[0] if thick else 0)
    titles = [*NAMES, LABELS_TITLE, "coronal (thick-sliced channel)"]
    enhancing = LabelConvention.BRATS2023.enhancing
    draw_tumour_rows(rows, titles, out, enhancing=enhancing, extra=coronal_column(channels))


def figure_3(seed: int, cases: list[int], real: Path | None, out: Path) -> None:
    rows = [low_grade_row(real)] if real is not None else []
    rows.append(phantom_row("generator 1", make_phantom(seed, 2, non_enhancing=1.0)))
    for index in cases:
        rows.append(phantom_row("generator 3", make_phantom(seed, index, non_enhancing=1.0, generator=3)))
    titles = [*NAMES, "labels over T2 (NCR red, ED green)", "T2 across the core"]
    draw_tumour_rows(
        [(name, image.astype(np.float32), labels) for name, image, labels in rows],
        titles,
        out,
        enhancing=LabelConvention.BRATS2021.enhancing,
        label_channel=3,
        extra=lambda axis, _, volume, label_map, z: profile(axis, volume[3], label_map, z),
        extra_ticks=True,
    )


def figure_4(seed: int, cases: list[int], real: Path | None, out: Path, non_enhancing: float = 0.35) -> None:
    assert real is not None
    shapes = load_tumour_shapes([real / "fets-labelfusion" / name for name in SHAPES])
    rows = [demo_row(real)]
    v3 = make_phantom(seed, 0, Naming.BRATS2023, non_enhancing=non_enhancing, generator=3)
    rows.append(phantom_row("generator 3", v3))
    for index in cases:
        phantom = make_phantom(seed, index, Naming.BRATS2023, non_enhancing, generator=4, shapes=shapes)
        shape = phantom.description.rsplit(" shape ", 1)[-1]
        rows.append(phantom_row("generator 4", phantom, f"shape {shape}"))
    titles = [*NAMES, LABELS_TITLE]
    draw_tumour_rows(rows, titles, out, enhancing=LabelConvention.BRATS2023.enhancing)


DRAW = {1: figure_1, 2: figure_2, 3: figure_3, 4: figure_4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=int, choices=sorted(FIGURES), required=True)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--cases", help="phantom indices of the series, comma-separated (default per generator)")
    parser.add_argument("--real", type=Path, default=next((p for p in REAL_CANDIDATES if p.is_dir()), None))
    parser.add_argument("--out", type=Path, help="the PNG (default: the generator's docs/phantom-*.png)")
    args = parser.parse_args()

    name, default_cases, needs_real = FIGURES[args.generator]
    if needs_real and args.real is None:
        parser.error("the shared real cases are not there: pass --real PATH/TO/shared/data/real")
    if args.real is not None and not args.real.is_dir():
        parser.error(f"{args.real}: not a folder")
    cases = [int(part) for part in (args.cases or default_cases).split(",")]
    out = args.out or ROOT / "docs" / name
    DRAW[args.generator](args.seed, cases, args.real, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
