"""The QA report's pictures, drawn on matplotlib's Agg canvas (no pyplot, no display, no GUI toolkit).

Slices are shown in the radiological convention of the released BraTS data (the patient's left on
the image's right, anterior at the top of axial slices, superior at the top of the others), from
arrays in the canonical LPS orientation `io` reads them into. Labels are drawn in the BraTS colours:
NCR red, ED green, ET yellow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brats_cli.choices import EDEMA, NECROSIS, LabelConvention
from brats_cli.errors import DependencyError

# BraTS colours, RGB in 0..1.
COLOURS: dict[str, tuple[float, float, float]] = {"NCR": (1.0, 0.0, 0.0), "ED": (0.0, 0.8, 0.0), "ET": (1.0, 1.0, 0.0)}
OVERLAY_ALPHA = 0.5
MODALITY_TITLES = ("FLAIR", "T1", "T1ce", "T2")
# Intensity window of each modality: these percentiles of its brain (nonzero) voxels.
WINDOW_PERCENTILES = (0.5, 99.5)
DPI = 80
THUMBNAIL_MARGIN = 4  # pixels of background kept around the brain in a thumbnail


def require_matplotlib() -> None:
    """A DependencyError naming the extra to install when matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError(
            "the QA report draws its pictures with matplotlib, which is not installed: "
            "pip install 'brats-resunet[report]' (or matplotlib>=3.7)"
        ) from None


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, so no GUI toolkit, no display, and a
    notebook's own matplotlib backend is left alone."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


# ---------------------------------------------------------------------------------------------
# Slices and colours (pure)


@dataclass(frozen=True)
class View:
    """A slice to show: `axis` 0 sagittal, 1 coronal, 2 axial, at `index`; `title` says which."""

    axis: int
    index: int
    title: str


def display_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D panel of a canonical (LPS) volume's slice as it is displayed (row 0 at the top):
    axial with anterior up, coronal and sagittal with superior up; the patient's left on the right."""
    if axis == 2:
        return volume[:, :, index].T
    if axis == 1:
        return volume[:, index, :].T[::-1]
    return volume[index, :, :].T[::-1]


def intensity_window(volume: np.ndarray) -> tuple[float, float]:
    """The grey-level range shown for a modality (WINDOW_PERCENTILES of its nonzero voxels)."""
    brain = volume[volume != 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(brain, WINDOW_PERCENTILES)
    return float(low), float(high if high > low else low + 1.0)


def grey(panel: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A panel scaled to 0..1 by the window, as RGB."""
    low, high = window
    scaled = np.clip((panel.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    return np.repeat(scaled[..., None], 3, axis=-1)


def overlay(background: np.ndarray | None, labels: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """RGB panel: the labels in the BraTS colours blended (OVERLAY_ALPHA) over `background` (an RGB
    panel in 0..1), or over black without one. Other labels are not drawn."""
    rgb = np.zeros((*labels.shape, 3), dtype=np.float32) if background is None else background.astype(np.float32)
    rgb = rgb.copy()
    for value, name in ((NECROSIS, "NCR"), (EDEMA, "ED"), (convention.enhancing, "ET")):
        where = labels == value
        if background is None:
            rgb[where] = COLOURS[name]
        else:
            rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(COLOURS[name])
    return rgb


def _legend_handles():
    from matplotlib.patches import Patch

    return [Patch(color=COLOURS[name], label=name) for name in ("NCR", "ED", "ET")]


# ---------------------------------------------------------------------------------------------
# A segmented case


def case_figure(
    path: Path,
    thumbnail: Path,
    labels: np.ndarray,
    convention: LabelConvention,
    views: Sequence[View],
    title: str,
    subtitle: str,
    images: np.ndarray | None = None,
    note: str | None = None,
    thumbnail_view: int = -1,
) -> None:
    """One PNG for a case: per view a row of FLAIR, T1, T1ce, T2 and the labels over FLAIR (the
    labels alone without `images`); and a small thumbnail of one view's overlay (the last: the
    slice of largest tumour area when there is a tumour).
    `labels` (X, Y, Z) and `images` (4, X, Y, Z) are canonical (LPS)."""
    windows = [intensity_window(channel) for channel in images] if images is not None else []
    columns = len(MODALITY_TITLES) + 1 if images is not None else 1
    heights = [labels.shape[1] if view.axis == 2 else labels.shape[2] for view in views]
    widths = [labels.shape[0] if view.axis != 0 else labels.shape[1] for view in views]
    width = max(widths)
    inches_per_voxel = 1.0 / DPI
    figure_width = max(columns * width * inches_per_voxel * 1.02, 6.0)
    figure_height = sum(heights) * inches_per_voxel * 1.08 + 1.1
    figure = _figure(figure_width, figure_height)
    grid = figure.add_gridspec(
        len(views),
        columns,
        height_ratios=heights,
        hspace=0.12,
        wspace=0.02,
        top=1 - 0.95 / figure_height,
        bottom=0.05 / figure_height,
        left=0.02,
        right=0.98,
    )
    for row, view in enumerate(views):
        label_panel = display_slice(labels, view.axis, view.index)
        backgrounds = (
            [grey(display_slice(channel, view.axis, view.index), windows[c]) for c, channel in enumerate(images)]
            if images is not None
            else []
        )
        panels = [*backgrounds, overlay(backgrounds[0] if backgrounds else None, label_panel, convention)]
        for column, panel in enumerate(panels):
            heading = None
            if row == 0:
                heading = (
                    MODALITY_TITLES[column]
                    if column < len(backgrounds)
                    else "labels" + (" on FLAIR" if backgrounds else "")
                )
            _panel(figure, grid[row, column], panel, view.title if column == 0 else None, heading)
    figure.suptitle(title, x=0.02, ha="left", fontsize=12, fontweight="bold", y=1 - 0.12 / figure_height)
    figure.text(0.02, 1 - 0.5 / figure_height, subtitle, fontsize=9, ha="left", va="top")
    if note:
        figure.text(0.02, 1 - 0.72 / figure_height, note, fontsize=8, ha="left", va="top", color="#a33")
    figure.legend(handles=_legend_handles(), loc="upper right", ncol=3, fontsize=8, frameon=False)
    figure.savefig(path, dpi=DPI, facecolor="white")
    _thumbnail(thumbnail, labels, convention, views[thumbnail_view], images, windows)


def _panel(figure: Any, cell: Any, panel: np.ndarray, corner: str | None, heading: str | None) -> None:
    """One image of the grid, without axes; `corner` written inside it, `heading` above it."""
    axes = figure.add_subplot(cell)
    axes.imshow(panel, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    if corner is not None:  # inside the panel: a label beside it would need a margin the grid lacks
        axes.text(4, 4, corner, color="white", fontsize=8, va="top", ha="left")
    if heading is not None:
        axes.set_title(heading, fontsize=10)


def _thumbnail(
    path: Path,
    labels: np.ndarray,
    convention: LabelConvention,
    shown: View,
    images: np.ndarray | None,
    windows: Sequence[tuple[float, float]],
) -> None:
    """The table's small picture: the labels over FLAIR (or alone) in one view."""
    background = grey(display_slice(images[0], shown.axis, shown.index), windows[0]) if images is not None else None
    panel_labels = display_slice(labels, shown.axis, shown.index)
    small = overlay(background, panel_labels, convention)
    # Cropped to the brain (or, without images, the labels) so the tumour is not a speck in the table.
    content = display_slice(images[0], shown.axis, shown.index) != 0 if images is not None else panel_labels != 0
    from matplotlib.image import imsave

    imsave(path, _crop(small, content, THUMBNAIL_MARGIN))


def _crop(rgb: np.ndarray, content: np.ndarray, margin: int) -> np.ndarray:
    """`rgb` cut to the bounding box of `content` grown by `margin` pixels (all of it without content)."""
    rows = np.flatnonzero(content.any(axis=1))
    columns = np.flatnonzero(content.any(axis=0))
    if rows.size == 0:
        return rgb
    top, bottom = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, rgb.shape[0])
    left, right = max(int(columns[0]) - margin, 0), min(int(columns[-1]) + 1 + margin, rgb.shape[1])
    return rgb[top:bottom, left:right]


# ---------------------------------------------------------------------------------------------
# An evaluation


def box_plots(path: Path, values: Mapping[str, Mapping[str, Sequence[float]]], cases: int) -> None:
    """Per metric (Dice, HD95) a panel of per-region box plots over the cases, each case a dot:
    the paper's Table 3 as a picture. `values[metric][region]` are the per-case scores."""
    metrics = list(values)
    figure = _figure(5.0 * len(metrics), 3.8)
    axes_list = figure.subplots(1, len(metrics), squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same picture for the same scores
    for axes, metric in zip(axes_list[0], metrics, strict=True):
        regions = list(values[metric])
        data = [np.asarray(values[metric][region], dtype=float) for region in regions]
        axes.boxplot(data, showfliers=False, widths=0.5, medianprops={"color": "black"})
        for position, points in enumerate(data, start=1):
            jitter = rng.uniform(-0.12, 0.12, size=points.size)
            axes.scatter(position + jitter, points, s=14, alpha=0.7, color="#1f5fa8", zorder=3)
        axes.set_xticks(range(1, len(regions) + 1), regions)
        axes.set_title(f"{metric} ({cases} cases)", fontsize=11)
        axes.grid(axis="y", alpha=0.3)
        if metric.lower().startswith("dice"):
            axes.set_ylim(-0.02, 1.02)
        else:
            axes.set_ylabel("voxels (mm)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, facecolor="white")


def comparison_figure(
    path: Path,
    prediction: np.ndarray,
    reference: np.ndarray,
    convention: LabelConvention,
    views: Sequence[View],
    title: str,
    subtitle: str,
    flair: np.ndarray | None = None,
) -> None:
    """Ground truth beside prediction, per view, over FLAIR when it is given (labels alone otherwise)."""
    window = intensity_window(flair) if flair is not None else None
    heights = [prediction.shape[1] if view.axis == 2 else prediction.shape[2] for view in views]
    width = max(prediction.shape[0] if view.axis != 0 else prediction.shape[1] for view in views)
    figure_width = max(2 * width / DPI * 1.04, 5.0)
    figure_height = sum(heights) / DPI * 1.1 + 0.9
    figure = _figure(figure_width, figure_height)
    grid = figure.add_gridspec(
        len(views),
        2,
        height_ratios=heights,
        hspace=0.1,
        wspace=0.03,
        top=1 - 0.75 / figure_height,
        bottom=0.05 / figure_height,
        left=0.04,
        right=0.98,
    )
    for row, view in enumerate(views):
        background = None
        if flair is not None and window is not None:
            background = grey(display_slice(flair, view.axis, view.index), window)
        for column, (name, labels) in enumerate((("ground truth", reference), ("prediction", prediction))):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(
                overlay(background, display_slice(labels, view.axis, view.index), convention), interpolation="nearest"
            )
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(name, fontsize=10)
            if column == 0:  # inside the panel, as in `case_figure`
                axes.text(4, 4, view.title, color="white", fontsize=8, va="top", ha="left")
    figure.suptitle(title, x=0.04, ha="left", fontsize=12, fontweight="bold", y=1 - 0.1 / figure_height)
    figure.text(0.04, 1 - 0.42 / figure_height, subtitle, fontsize=9, ha="left", va="top")
    figure.legend(handles=_legend_handles(), loc="upper right", ncol=3, fontsize=8, frameon=False)
    figure.savefig(path, dpi=DPI, facecolor="white")
