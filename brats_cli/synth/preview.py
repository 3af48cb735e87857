"""Pictures of phantoms: `brats synth --preview` (a row per case at its slice with the most tumour)
and the documentation figures (`draw_tumour_rows`, docs/make_phantom_figure.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brats_cli.errors import DependencyError, OutputError, first_line
from brats_cli.files import atomic_path
from brats_cli.labels import EDEMA, NECROSIS, LabelConvention
from brats_cli.synth.anatomy import EXTRA_HINT
from brats_cli.synth.phantom import Phantom

LABEL_COLOURS = {NECROSIS: (1.0, 0.2, 0.2), EDEMA: (0.2, 0.9, 0.2)}


def tumour_slice(labels: np.ndarray) -> int:
    """The axial slice with the most tumour voxels (the middle slice when there is no tumour)."""
    counts = (labels > 0).sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else labels.shape[2] // 2


@dataclass(frozen=True)
class PreviewRow:
    case_id: str
    slices: np.ndarray  # (4, 240, 240) FLAIR, T1, T1ce, T2 at the slice
    labels: np.ndarray  # (240, 240)
    enhancing: int
    z: int


def preview_row(phantom: Phantom) -> PreviewRow:
    z = tumour_slice(phantom.labels)
    convention = LabelConvention.of_naming(phantom.naming)
    return PreviewRow(
        phantom.case_id, phantom.image[:, :, :, z].copy(), phantom.labels[:, :, z].copy(), convention.enhancing, z
    )


def require_preview() -> None:
    """DependencyError unless matplotlib (for --preview) is installed: checked before any case."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise DependencyError(f"--preview needs matplotlib: {EXTRA_HINT}") from error


def _pyplot() -> Any:
    """matplotlib.pyplot drawing off screen, or DependencyError."""
    require_preview()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_preview(rows: list[PreviewRow], path: Path) -> None:
    """One PNG, a row per case: FLAIR, T1, T1ce, T2 and the labels over FLAIR, radiological view."""
    plt = _pyplot()
    titles = ["FLAIR", "T1", "T1ce", "T2", "labels"]
    figure, axes = plt.subplots(len(rows), 5, figsize=(12.5, 2.7 * len(rows)), squeeze=False)
    for row, (case, axes_row) in enumerate(zip(rows, axes, strict=True)):
        for column in range(4):
            show_slice(axes_row[column], case.slices[column])
        show_labels(axes_row[4], case.slices[0], case.labels, case.enhancing)
        axes_row[0].set_ylabel(f"{case.case_id}\nz={case.z}", fontsize=8)
        for column, axis in enumerate(axes_row):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column])
    figure.tight_layout()
    try:
        with atomic_path(Path(path)) as temporary:
            figure.savefig(temporary, dpi=80, format="png")
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({first_line(error)})") from error
    finally:
        plt.close(figure)


def show_slice(axis: Any, data: np.ndarray) -> None:
    """An axial LPS slice in radiological view: anterior up, the patient's right on the left."""
    values = data[data > 0]
    top = float(np.percentile(values, 99.5)) if values.size else 1.0
    axis.imshow(data.T, cmap="gray", vmin=0, vmax=top, interpolation="nearest")


def show_labels(axis: Any, background: np.ndarray, labels: np.ndarray, enhancing: int) -> None:
    """`background` as `show_slice` shows it, the labels over it (NCR red, ED green, ET yellow)."""
    show_slice(axis, background)
    overlay = np.zeros((*labels.T.shape, 4), np.float32)
    colours = {**LABEL_COLOURS, enhancing: (1.0, 0.9, 0.1)}
    for label, colour in colours.items():
        overlay[label == labels.T] = (*colour, 0.6)
    axis.imshow(overlay, interpolation="nearest")


# Draws a sixth column for one row: (axis, row index, image, labels, axial slice z).
ExtraColumn = Callable[[Any, int, np.ndarray, np.ndarray, int], None]


def draw_tumour_rows(
    rows: list[tuple[str, np.ndarray, np.ndarray]],
    titles: list[str],
    out: Path,
    *,
    enhancing: int,
    label_channel: int = 0,
    extra: ExtraColumn | None = None,
    extra_ticks: bool = False,
    name_size: int = 7,
) -> None:
    """The documentation figures: a row per (name, image (4, X, Y, Z), labels) at its axial slice
    with the most tumour, with the four channels, the labels over channel `label_channel` and,
    given `extra`, a sixth column (with its ticks where `extra_ticks`); PNG at 70 dpi."""
    plt = _pyplot()
    columns = 6 if extra is not None else 5
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.0 * columns - 1, 3.0 * len(rows)), squeeze=False)
    for index, ((name, image, labels), axes_row) in enumerate(zip(rows, axes, strict=True)):
        z = tumour_slice(labels)
        for column in range(4):
            show_slice(axes_row[column], image[column, :, :, z])
        show_labels(axes_row[4], image[label_channel, :, :, z], labels[:, :, z], enhancing)
        if extra is not None:
            extra(axes_row[5], index, image, labels, z)
        axes_row[0].set_ylabel(f"{name}\naxial z={z}", fontsize=name_size)
        for column, axis in enumerate(axes_row):
            if index == 0:
                axis.set_title(titles[column], fontsize=10)
            if column < 5 or not extra_ticks:
                axis.set_xticks([])
                axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(out, dpi=70)
    plt.close(figure)
