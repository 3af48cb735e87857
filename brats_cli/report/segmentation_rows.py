"""The segmentation report's rows: one `CaseReport` per case (what its label map holds, what the
run recorded, the flags, where its picture is), and the `Report` as written, with the batch's
summary. Plain data, filled by `segmentation` and shown by `segmentation_page`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_cli.report import numbers
from brats_cli.report.folder import INDEX
from brats_cli.report.numbers import Flag


@dataclass
class CaseReport:
    """One row of the segmentation report: what the label map holds, what the run recorded, the
    flags, and where the picture is (relative to the report folder)."""

    case_id: str
    status: str  # "done", "failed" (with `message`), or "missing" (an input case without output)
    message: str = ""
    convention: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    components: int | None = None  # 26-connected components of the whole tumour
    region_components: dict[str, int] = field(default_factory=dict)
    windows: int | None = None
    et_removed_voxels: int | None = None
    components_removed_voxels: int | None = None
    core_filled_voxels: int | None = None
    seconds: float | None = None
    disagreement: float | None = None
    region_disagreement: dict[str, float | None] = field(default_factory=dict)
    entropy: float | None = None
    region_entropy: dict[str, float | None] = field(default_factory=dict)
    touches_window_border: bool | None = None
    measured: bool = False  # the run's QA record holds what it measured (numbers.MEASURED_FLAGS)
    flags: list[Flag] = field(default_factory=list)
    figure: str | None = None
    thumbnail: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "case": self.case_id,
            "status": self.status,
            "message": self.message,
            "flags": [flag.value for flag in self.flags],
            "labels": self.convention,
            "volumes_ml": self.volumes_ml,
            "components": self.components,
            "region_components": self.region_components,
            "windows": self.windows,
            "et_removed_voxels": self.et_removed_voxels,
            "components_removed_voxels": self.components_removed_voxels,
            "core_filled_voxels": self.core_filled_voxels,
            "seconds": self.seconds,
            "disagreement": self.disagreement,
            "region_disagreement": self.region_disagreement,
            "entropy": self.entropy,
            "region_entropy": self.region_entropy,
            "touches_window_border": self.touches_window_border,
            "measured": self.measured,
            "figure": self.figure,
            "notes": self.notes,
        }

    def csv_row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "case": self.case_id,
            "status": self.status,
            "flags": "; ".join(flag.value for flag in self.flags),
            "message": self.message,
        }
        for name in numbers.VOLUMES:
            row[f"{name}_ml"] = self.volumes_ml.get(name)
        row.update(
            components=self.components,
            windows=self.windows,
            et_removed_voxels=self.et_removed_voxels,
            components_removed_voxels=self.components_removed_voxels,
            core_filled_voxels=self.core_filled_voxels,
            seconds=self.seconds,
            disagreement=self.disagreement,
            entropy=self.entropy,
            touches_window_border=self.touches_window_border,
            figure=self.figure,
        )
        return row


CSV_COLUMNS = (
    "case",
    "status",
    "flags",
    "message",
    *(f"{name}_ml" for name in numbers.VOLUMES),
    "components",
    "windows",
    "et_removed_voxels",
    "components_removed_voxels",
    "core_filled_voxels",
    "seconds",
    "disagreement",
    "entropy",
    "touches_window_border",
    "figure",
)


@dataclass
class Report:
    """A written segmentation report: its folder, the cases in page order, and the batch's notes."""

    folder: Path
    cases: list[CaseReport]
    notes: list[str]

    @property
    def index(self) -> Path:
        return self.folder / INDEX

    @property
    def flagged(self) -> list[CaseReport]:
        return [case for case in self.cases if case.flags]

    @property
    def failed(self) -> list[CaseReport]:
        return [case for case in self.cases if case.status == "failed"]

    def summary(self) -> dict[str, object]:
        done = [case for case in self.cases if case.status == "done"]

        def median(values: Sequence[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return float(np.median(known)) if known else None

        seconds = [case.seconds for case in self.cases if case.seconds is not None]
        return {
            "cases": len(self.cases),
            "done": len(done),
            "failed": len(self.failed),
            "missing": sum(case.status == "missing" for case in self.cases),
            "flagged": len(self.flagged),
            "unmeasured": sum(case.status == "done" and not case.measured for case in self.cases),
            "median_volumes_ml": {name: median([c.volumes_ml.get(name) for c in done]) for name in ("WT", "TC", "ET")},
            "median_disagreement": median([c.disagreement for c in done]),
            "median_entropy": median([c.entropy for c in done]),
            "seconds": float(sum(seconds)) if seconds else None,
        }
