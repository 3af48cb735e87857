"""Segment a batch of cases: read, run the pipeline, write atomically; one bad case fails alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from brats_cli.bundle import Stage
from brats_cli.choices import LabelChoice
from brats_cli.errors import BratsError, CaseError
from brats_cli.io import Case, Geometry, Naming, load_case, write_label_map
from brats_cli.labels import REGIONS, LabelConvention, Region, region_masks
from brats_cli.pipeline import PipelineConfig, segment_preprocessed
from brats_cli.predictors import StagePredictor
from brats_cli.preprocess import preprocess


class Status(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class CaseResult:
    case_id: str
    status: Status
    seconds: float = 0.0
    message: str = ""
    volumes_ml: dict[Region, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def output_convention(case: Case, choice: LabelChoice) -> LabelConvention:
    """2023 labels for 2023-named inputs under `auto`, else what the user chose."""
    if choice is LabelChoice.AUTO:
        return LabelConvention.BRATS2023 if case.naming is Naming.BRATS2023 else LabelConvention.BRATS2021
    return LabelConvention(choice.value)


Loader = Callable[[], tuple[np.ndarray, Geometry]]  # (preprocessed model grid, geometry)


def load_preprocessed(case: Case) -> tuple[np.ndarray, Geometry]:
    """The case's model grid (`preprocess` of its four images) and its geometry."""
    image, geometry = load_case(case)
    return preprocess(image), geometry


def prefetched(cases: Sequence[Case]) -> Iterator[tuple[Case, Loader]]:
    """Each case with a loader whose reading and preprocessing started while the previous case
    was computing.

    Decompressing four NIfTI files takes a second or more, normalising them a tenth of one; one
    reader thread overlaps both with the networks (zlib and numpy release the GIL). At most two
    cases are in memory."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brats-read")
    try:
        pending: Future | None = pool.submit(load_preprocessed, cases[0]) if cases else None
        for index, case in enumerate(cases):
            current = pending
            pending = pool.submit(load_preprocessed, cases[index + 1]) if index + 1 < len(cases) else None
            assert current is not None
            yield case, current.result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def segment_case(
    case: Case,
    output: Path,
    predictors: Mapping[Stage, StagePredictor],
    config: PipelineConfig,
    on_stage: Callable[[str], None] | None = None,
    load: Loader | None = None,
) -> CaseResult:
    """Segment one case and write `output`; every failure becomes a FAILED result, never an exception.

    `load` returns the case's preprocessed model grid and geometry (default: read and preprocess it
    now); the time spent waiting for it is the case's "read" seconds."""
    started = time.perf_counter()
    try:
        if on_stage:
            on_stage("read")
        read_started = time.perf_counter()
        model_input, geometry = load() if load is not None else load_preprocessed(case)
        read_seconds = time.perf_counter() - read_started
        segmentation = segment_preprocessed(model_input, predictors, config, on_stage=on_stage)
        if on_stage:
            on_stage("write")
        write_started = time.perf_counter()
        write_label_map(segmentation.labels, geometry, output)
        write_seconds = time.perf_counter() - write_started
    except CaseError as error:
        return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, error.reason)
    except BratsError as error:
        return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, str(error))
    except Exception as error:  # a bug must not take the rest of the batch down with it
        message = f"internal error {type(error).__name__}: {error}"
        return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, message)
    voxel_ml = float(np.prod(geometry.header.get_zooms()[:3])) / 1000.0
    masks = region_masks(segmentation.labels, config.convention)
    volumes = {region: float(masks[region].sum()) * voxel_ml for region in REGIONS}
    stage_seconds = {"read": read_seconds, **segmentation.seconds, "write": write_seconds}
    return CaseResult(
        case.case_id,
        Status.DONE,
        time.perf_counter() - started,
        volumes_ml=volumes,
        stage_seconds=stage_seconds,
        warnings=segmentation.warnings,
    )
