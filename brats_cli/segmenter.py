"""Segmentation from Python: a `Segmenter` built once from a weights bundle and `Settings`, then
used on arrays (`predict`), one case (`segment_case`) or a folder of cases (`segment_folder`).

`brats segment` is `Segmenter.segment_folder` with a progress bar and a table; everything a
run decides (which cases to skip, the label convention of each, prefetching the next case, atomic
writes, what an interrupted run finished) is decided here.

    from brats_cli import Segmenter
    segmenter = Segmenter()                        # the bundled default weights, default settings
    result = segmenter.segment_case("BraTS2021_00000/", "predictions/")
    labels = segmenter.predict(image, affine).labels
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brats_cli import host
from brats_cli.bundle import Bundle, load_weights
from brats_cli.choices import REGION_STAGES, Backend, LabelConvention, Naming, Precision, Stage
from brats_cli.errors import BratsError, CaseError, ImageReadError, InputError, SettingsError, WeightsError, first_line
from brats_cli.io import (
    BRATS_SHAPE,
    CHANNEL_ORDER,
    Case,
    Geometry,
    Modality,
    affine_problem,
    case_id_problem,
    check_output_folder,
    discover_cases,
    ensure_output_folder,
    folder_name,
    load_case,
    modality_problem,
    parse_name,
    read_label_map,
    remove_stale_temporaries,
    write_label_map,
    write_probabilities,
)
from brats_cli.labels import REGIONS, Region, region_masks
from brats_cli.pipeline import PipelineConfig, Segmentation, segment_image, segment_preprocessed
from brats_cli.predictors import StagePredictor, fold_numbers, require_backend, require_device, stage_predictors
from brats_cli.preprocess import preprocess
from brats_cli.quality import EnsembleQuality
from brats_cli.settings import Settings, member_of
from brats_cli.shards import Shard

__all__ = ["Batch", "CaseResult", "Prediction", "Segmenter", "Settings", "Shard", "Status", "case_from_files"]


class Status(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class CaseResult:
    """What became of one case: DONE (written to `output`), SKIPPED (its output existed) or
    FAILED (`message` says why, in one line)."""

    case_id: str
    status: Status
    seconds: float = 0.0
    message: str = ""
    volumes_ml: dict[Region, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what a user should look into
    notes: list[str] = field(default_factory=list)  # information (a tumour that needed several windows)
    output: Path | None = None
    # With Settings(probabilities=True): the `<ID>_probabilities.nii.gz` written beside `output`.
    probabilities: Path | None = None
    convention: LabelConvention | None = None  # the labels written (DONE only)
    # Measured when asked (`quality=True`): fold disagreement, entropy, windows, ET threshold.
    quality: EnsembleQuality | None = None


@dataclass
class Prediction:
    """A label map from arrays: `labels` on the input's own voxel grid, uint8."""

    labels: np.ndarray
    convention: LabelConvention
    seconds: dict[str, float]
    warnings: list[str]
    # With Settings(probabilities=True): (3, X, Y, Z) float32 WT, TC, ET probabilities on the
    # input's grid (the mean over folds and flips; `labels` are these thresholded and composed).
    probabilities: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


OnStage = Callable[[str, str], None]  # (case ID, stage name) as each stage starts
Loader = Callable[[], tuple[np.ndarray, Geometry, list[str]]]  # (model grid, geometry, warnings)


def load_preprocessed(case: Case) -> tuple[np.ndarray, Geometry, list[str]]:
    """The case's model grid (`preprocess` of its four images), its geometry, and warnings about
    its intensities (outliers the normalisation clipped)."""
    image, geometry = load_case(case)
    clipped: list[int] = []
    grid = preprocess(image, clipped)
    warnings = [
        f"{case.files[modality].name}: {count} voxel(s) of implausible intensity clipped before normalising"
        for modality, count in zip(CHANNEL_ORDER, clipped, strict=True)
        if count
    ]
    return grid, geometry, warnings


def prefetched(cases: Sequence[Case]) -> Generator[tuple[Case, Loader], None, None]:
    """Each case with a loader whose reading and preprocessing started while the previous case
    was computing.

    Decompressing four NIfTI files takes longer than normalising them; one reader thread overlaps
    both with the networks (zlib and numpy release the GIL). At most two cases are in memory."""
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


CaseFiles = str | Path | Case | Sequence[str | Path] | Mapping[Modality | str, str | Path]


def case_from_files(files: CaseFiles, case_id: str | None = None) -> Case:
    """A case from what a user has at hand: a case folder; the four image files in the paper's
    channel order (FLAIR, T1, T1ce, T2); or a mapping from modality (`"flair"`, `"t1"`, `"t1ce"`,
    `"t2"`) to file. The case ID is `case_id`, else the one in BraTS file names, else the folder's
    name; the naming (and so the default label convention) follows the file names. A `case_id`
    that is no plain file name is an InputError: it names the output file."""
    if case_id is not None:
        problem = case_id_problem(case_id)
        if problem:
            raise InputError(f"case_id: {problem}")
    if isinstance(files, Case):
        return files if case_id is None else _renamed(files, case_id)
    if isinstance(files, (str, Path)):
        folder = Path(files)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a case folder (give a folder or the four image files)")
        cases = discover_cases(folder).cases
        if len(cases) != 1:
            found = ", ".join(case.case_id for case in cases)
            raise InputError(f"{folder}: holds {len(cases)} cases ({found}), not one; use segment_folder")
        return cases[0] if case_id is None else _renamed(cases[0], case_id)
    if isinstance(files, Mapping):
        try:
            paths = {Modality(getattr(key, "value", key)): Path(path) for key, path in files.items()}
        except ValueError as error:
            raise InputError(f"unknown modality in {sorted(map(str, files))}: {error}") from None
    elif isinstance(files, Sequence):
        listed = [Path(path) for path in files]
        if len(listed) != len(CHANNEL_ORDER):
            raise InputError(f"expected four image files (FLAIR, T1, T1ce, T2), got {len(listed)}")
        paths = dict(zip(CHANNEL_ORDER, listed, strict=True))
    else:
        raise InputError(f"files: expected a case folder, four image files or a modality->file mapping, got {files!r}")
    missing = [m.value for m in CHANNEL_ORDER if m not in paths]
    if missing:
        raise InputError(f"missing modality {', '.join(missing)}")
    parsed = [parse_name(path) for path in paths.values()]
    namings = {p.naming for p in parsed if p is not None}
    naming = Naming.BRATS2023 if Naming.BRATS2023 in namings else Naming.BRATS2021
    if case_id is None:
        ids = {p.case_id for p in parsed if p is not None}
        case_id = ids.pop() if len(ids) == 1 else folder_name(paths[Modality.FLAIR].parent)
    return Case(case_id, naming, paths)


def _renamed(case: Case, case_id: str) -> Case:
    """`case` under another ID; a problem its old ID had (a folder name that is no file name)
    goes with the old ID."""
    problem = None if case.problem == case_id_problem(case.case_id) else case.problem
    return replace(case, case_id=case_id, problem=problem)


def _flag(value: object, name: str) -> bool:
    """A yes/no argument: True or False, not a truthy string such as "no"."""
    if not isinstance(value, (bool, np.bool_)):
        raise SettingsError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _checked_input(image: object, affine: object) -> tuple[np.ndarray, Geometry | None]:
    """`predict`'s image as float32 and the geometry `affine` gives it, or an InputError naming the
    argument: checked in the order `load_case` checks a case's files (shape, then geometry, then
    voxels), before anything is reoriented or computed."""
    try:
        array = np.asarray(image)
    except (ValueError, TypeError) as error:  # ragged nested lists, objects numpy cannot hold
        raise InputError(f"image: not an array ({first_line(error)})") from None
    if array.ndim != 4 or array.shape[0] != len(CHANNEL_ORDER):
        raise InputError(f"image: expected a (4, X, Y, Z) image (FLAIR, T1, T1ce, T2), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InputError(f"image: voxels of type {array.dtype}, expected integers or floats")
    stored = tuple(array.shape[1:])
    geometry = None if affine is None else Geometry(_checked_affine(affine), nib.Nifti1Header(), stored)
    shape = stored if geometry is None else geometry.canonical_shape
    if shape != BRATS_SHAPE:
        voxels = f"{stored} voxels" + ("" if shape == stored else f" ({shape} in LPS)")
        raise InputError(
            f"image: {voxels} is not BraTS space {'x'.join(map(str, BRATS_SHAPE))}; "
            "register and resample to SRI24 first"
        )
    volume = array.astype(np.float32, copy=False)
    for channel, modality in enumerate(CHANNEL_ORDER):
        problem = modality_problem(volume[channel], f"image[{channel}] ({modality.name})")
        if problem:
            raise InputError(problem)
    return volume, geometry


def _checked_affine(affine: object) -> np.ndarray:
    try:
        matrix = np.asarray(affine, dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise InputError(f"affine: not a 4x4 matrix of numbers ({first_line(error)})") from None
    problem = affine_problem(matrix)
    if problem:
        raise InputError(f"affine {problem}: give the image's voxel-to-world matrix (nibabel's img.affine)")
    return matrix


def _volumes_ml(labels: np.ndarray, convention: LabelConvention, voxel_ml: float) -> dict[Region, float]:
    masks = region_masks(labels, convention)
    return {region: float(masks[region].sum()) * voxel_ml for region in REGIONS}


class Segmenter:
    """The paper's pipeline with one weights bundle and one set of `Settings`.

    The bundle is read and checked when the Segmenter is made; the networks are loaded at the
    first prediction (or by `load()`), so a wrong input is reported before that cost is paid.
    Settings can be given whole or as keywords: `Segmenter(precision="fp32", folds=(0,))`."""

    def __init__(
        self, weights: str | Path | Bundle | None = None, settings: Settings | None = None, **changes: Any
    ) -> None:
        settings = settings or Settings()
        self.settings = settings.with_changes(**changes) if changes else settings
        if isinstance(weights, Bundle):
            self.bundle = weights
        elif weights is not None and not isinstance(weights, str | os.PathLike):
            raise SettingsError(f"weights must be a bundle folder's path, a Bundle or None, got {weights!r}")
        else:
            self.bundle = load_weights(None if weights is None else Path(weights), backend=self.settings.backend)
        require_backend(self.bundle, self.settings.backend)
        require_device(self.settings)
        self.notes = self._check_folds()
        self._predictors: Mapping[Stage, StagePredictor] | None = None

    def _check_folds(self) -> list[str]:
        """Refuse fold indices no stage has; say which stages use fewer (a bundle's base stage
        often has one fold where the regions have five)."""
        chosen = self.settings.folds
        if chosen is None:
            return []
        counts = {stage: len(spec.folds) for stage, spec in self.bundle.manifest.stages.items()}
        has = "; ".join(f"{stage.value} has {fold_numbers(count)}" for stage, count in counts.items())
        most = max(counts.values())
        absent = [fold for fold in chosen if fold >= most]
        if absent:
            raise WeightsError(
                f"{self.bundle.root}: --folds {','.join(map(str, absent))}: no stage has such a fold ({has})"
            )
        notes = []
        for stage, count in counts.items():
            used = [fold for fold in chosen if fold < count]
            if not used:  # a stage that would have no model at all
                raise WeightsError(
                    f"{self.bundle.root}: --folds {','.join(map(str, chosen))}: stage {stage.value} has no "
                    f"such fold (it has {fold_numbers(count)})"
                )
            if len(used) < len(chosen):
                using = ",".join(map(str, used))
                notes.append(f"stage {stage.value} has {fold_numbers(count)}: using {using} of --folds")
        return notes

    # -- networks --------------------------------------------------------------------------

    def load(self) -> Segmenter:
        """Load every network now (at most once): set-up errors surface here, before any case."""
        if self._predictors is None:
            self._predictors = stage_predictors(self.bundle, self.settings)
        return self

    @property
    def predictors(self) -> Mapping[Stage, StagePredictor]:
        return self.load()._predictors  # type: ignore[return-value]

    @property
    def device(self) -> str:
        """Where the networks run: "cpu", "cuda", "cuda:1"."""
        return str(next(iter(self.predictors.values())).device)

    @property
    def precision(self) -> str:
        """The networks' arithmetic as resolved (`auto` decided): "fp32", "bf16" or "fp16"."""
        precision = next(iter(self.predictors.values())).precision
        return precision.value if isinstance(precision, Enum) else str(precision)

    @property
    def threads(self) -> int | None:
        """CPU threads the networks use on the CPU; None on a GPU."""
        return host.usable_cpus() if self.device == "cpu" else None

    @property
    def precision_reason(self) -> str | None:
        """Why `precision="auto"` chose what it did (torch only); None when it was not left to auto."""
        if self.settings.precision is not Precision.AUTO or self.settings.backend is not Backend.TORCH:
            return None
        from brats_cli.predictors.torch_backend import auto_precision_reason

        return auto_precision_reason(self.device)

    def peak_gpu_memory_gib(self) -> float | None:
        """PyTorch's peak allocated GPU memory so far, on a CUDA device; None elsewhere."""
        if self.settings.backend is not Backend.TORCH or not self.device.startswith("cuda"):
            return None
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def config(self, convention: LabelConvention | None = None) -> PipelineConfig:
        """The pipeline's settings for a case whose file names imply `convention`."""
        return PipelineConfig.from_manifest(self.bundle.manifest, self.settings, convention=convention)

    # -- arrays ----------------------------------------------------------------------------

    def predict(
        self,
        image: np.ndarray,
        affine: np.ndarray | None = None,
        *,
        labels: LabelConvention | str | None = None,
    ) -> Prediction:
        """The label map of one case held in memory: `image` is (4, 240, 240, 155) float, channels
        FLAIR, T1, T1ce, T2 (the paper's order), on the voxel grid `affine` describes (as
        nibabel's `img.affine`); without an affine the image must already be in the LPS
        orientation of the released BraTS data. The labels come back on the input's own grid."""
        chosen = None if labels is None else member_of(LabelConvention, labels, "labels")
        image, geometry = _checked_input(image, affine)
        canonical = image if geometry is None else geometry.to_canonical(image)
        config = self.config(chosen)
        segmentation: Segmentation = segment_image(canonical, self.predictors, config)
        result = segmentation.labels if geometry is None else geometry.from_canonical(segmentation.labels)
        probabilities = segmentation.probabilities
        if probabilities is not None and geometry is not None:
            probabilities = geometry.from_canonical(probabilities)
        return Prediction(result.astype(np.uint8, copy=False), config.convention, segmentation.seconds,
                          segmentation.warnings, probabilities, segmentation.notes)  # fmt: skip

    # -- files -----------------------------------------------------------------------------

    def segment_case(
        self,
        files: CaseFiles,
        output: str | Path,
        *,
        case_id: str | None = None,
        on_stage: OnStage | None = None,
        quality: bool = False,
    ) -> CaseResult:
        """Segment one case (a case folder, its four files, or a {modality: file} mapping) into
        `output/<ID>.nii.gz` (and `<ID>_probabilities.nii.gz` with Settings(probabilities=True)),
        overwriting them. Problems with the case become a FAILED result; problems with `output`
        (not creatable, not writable) raise OutputError. `quality`: measure the ensemble's
        confidence into `CaseResult.quality` (nothing is written for it)."""
        quality = _flag(quality, "quality")
        case = case_from_files(files, case_id)
        folder = ensure_output_folder(Path(output))
        return self._segment(case, folder / case.output_name, on_stage, quality=quality)

    def segment_folder(
        self,
        input: str | Path,
        output: str | Path,
        *,
        overwrite: bool = False,
        shard: Shard | str | None = None,
        quality: bool = False,
    ) -> Batch:
        """A batch over every case under `input` (a folder of case folders, one case folder, or
        one case's files): its cases found and its output checked now (InputError, OutputError),
        the output folder made and the cases segmented as it is iterated (`for result in batch`,
        or `batch.run()`). `shard` ("K/N" or a Shard) keeps every N-th case by sorted ID from the
        K-th, so that N processes share one input and output folder. `quality`: measure each
        case's ensemble confidence and keep it, with the case's status, for the QA report
        (`write_report`) in the hidden OUTPUT/.brats-qa (see `brats_cli.report.records` for why
        there)."""
        chosen: Shard | None
        if isinstance(shard, str):
            chosen = Shard.parse(shard)
        elif shard is None or isinstance(shard, Shard):
            chosen = shard
        else:
            raise SettingsError(f"shard must be 'K/N' (such as '0/4') or a Shard, got {shard!r}")
        overwrite, quality = _flag(overwrite, "overwrite"), _flag(quality, "quality")
        return Batch(self, Path(input), Path(output), overwrite=overwrite, shard=chosen, quality=quality)

    def _segment(
        self,
        case: Case,
        target: Path,
        on_stage: OnStage | None = None,
        load: Loader | None = None,
        quality: bool = False,
    ) -> CaseResult:
        """Segment one case and write `target`; every failure becomes a FAILED result, never an
        exception. `load` returns the case's preprocessed grid and geometry (default: read it now);
        the time spent waiting for it is the case's "read" seconds."""
        started = time.perf_counter()
        config = self.config(LabelConvention.of_naming(case.naming))
        if quality:
            config = dataclasses.replace(config, quality=True)

        def announce(name: str) -> None:
            if on_stage:
                on_stage(case.case_id, name)

        try:
            announce("read")
            read_started = time.perf_counter()
            model_input, geometry, read_warnings = load() if load is not None else load_preprocessed(case)
            read_seconds = time.perf_counter() - read_started
            segmentation = segment_preprocessed(model_input, self.predictors, config, on_stage=announce)
            announce("write")
            write_started = time.perf_counter()
            probabilities_path = None
            if segmentation.probabilities is not None:
                # Before the label map: a label map on disk means its case is complete.
                probabilities_path = target.with_name(case.probabilities_name)
                thresholds = tuple(config.thresholds[stage] for stage in REGION_STAGES)
                write_probabilities(segmentation.probabilities, geometry, thresholds, probabilities_path)
            write_label_map(segmentation.labels, geometry, target)
            write_seconds = time.perf_counter() - write_started
        except CaseError as error:
            return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, error.reason)
        except BratsError as error:
            return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, str(error))
        except OSError as error:  # a file gone or a disk failing under the run: said in words
            where = f"{error.filename}: " if error.filename else ""
            return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, where + first_line(error))
        except Exception as error:  # a bug must not take the rest of the batch down with it
            message = f"internal error {type(error).__name__}: {error}"
            return CaseResult(case.case_id, Status.FAILED, time.perf_counter() - started, message)
        voxel_ml = float(np.prod(geometry.header.get_zooms()[:3])) / 1000.0
        return CaseResult(
            case.case_id,
            Status.DONE,
            time.perf_counter() - started,
            volumes_ml=_volumes_ml(segmentation.labels, config.convention, voxel_ml),
            stage_seconds={"read": read_seconds, **segmentation.seconds, "write": write_seconds},
            warnings=[*read_warnings, *segmentation.warnings],
            notes=segmentation.notes,
            output=target,
            probabilities=probabilities_path,
            convention=config.convention,
            quality=segmentation.quality,
        )


DONE_OUTPUT = "done"
MAX_LABEL = 4  # 0 background and the tumour labels of both conventions (ET is 3 or 4)


def _existing_output(target: Path, overwrite: bool) -> str | None:
    """None if a case's output is to be written (nothing at its name, or a file that --overwrite
    replaces); DONE_OUTPUT for a complete label map there; else why the case fails."""
    if not target.exists():  # nothing, or a dangling link: the rename replaces the link itself
        return None
    if target.is_dir():
        return f"{target} is a folder, not a label map; remove it to segment this case"
    if not target.is_file():
        return f"{target} is not a regular file (a FIFO or device?); remove it to segment this case"
    if overwrite:  # replaced by a rename, a link included (never written through)
        return None
    problem = _incomplete_label_map(target)
    return DONE_OUTPUT if problem is None else f"{target} {problem}; remove it or rerun with --overwrite"


def _incomplete_label_map(target: Path) -> str | None:
    """Why the file at a case's output name is not a finished output, or None if it is. Our own
    writes are atomic, but a file copied in and cut short, another tool's file or a link out of
    the folder is not this tool's complete output; it is read whole (a label map is small; the
    reader checks a .nii.gz to its gzip CRC) and must be a BraTS-space map of BraTS labels."""
    if target.stat().st_size == 0:
        return "is an empty file, not a label map"
    resolved, folder = target.resolve(), target.parent.resolve()
    if target.is_symlink() and not resolved.is_relative_to(folder):
        return f"is a link to {resolved}, outside the output folder, not a label map of this output"
    try:
        labels, geometry = read_label_map(target)
    except ImageReadError as error:
        return f"is not a complete label map ({str(error).removeprefix(f'{target}: ')})"
    if geometry.canonical_shape != BRATS_SHAPE:
        shape = "x".join(map(str, geometry.shape))
        return f"is not a complete label map (a {shape} image, not BraTS space {'x'.join(map(str, BRATS_SHAPE))})"
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):  # integers: 0..4 are labels
        stray = labels[(labels < 0) | (labels > MAX_LABEL)][0]
        return f"is not a complete label map (it holds {int(stray)}, not a BraTS label)"
    return None


class Batch:
    """One run over a folder: its cases are found and the output folder checked when the Batch
    is made; the folder is made (and swept of a dead run's temporaries) when segmenting starts,
    which segments every case whose output
    does not exist yet (all of them with `overwrite`), reading the next case while the current one
    computes, and yields each case's result as it finishes. A failed case fails alone.

    With a `shard` the batch holds only that shard's cases (`Shard.select`); it sweeps only their
    temporaries, so shards on other machines sharing the output folder keep theirs."""

    def __init__(
        self,
        segmenter: Segmenter,
        input: Path,
        output: Path,
        *,
        overwrite: bool = False,
        shard: Shard | None = None,
        quality: bool = False,
    ) -> None:
        self.segmenter = segmenter
        discovery = discover_cases(input)
        self.cases: list[Case] = discovery.cases
        self.notes: list[str] = discovery.notes
        if segmenter.settings.probabilities:
            # Before sharding, so every shard decides alike: case X's probabilities file is named as
            # case "X_probabilities"'s label map would be.
            labels = {case.output_name for case in self.cases}
            self.cases = [
                replace(case, problem=f"its {case.probabilities_name} would overwrite another case's label map")
                if case.probabilities_name in labels and not case.problem
                else case
                for case in self.cases
            ]
        self.shard = shard
        if shard is not None:
            total = len({case.case_id for case in self.cases})
            chosen = shard.select(case.case_id for case in self.cases)
            self.cases = [case for case in self.cases if case.case_id in chosen]
            self.notes.append(f"shard {shard} ({shard.source}): {len(chosen)} of {total} case(s)")
        # Checked now, made at the first case: a run refused before it (the networks do not load)
        # leaves no empty output folder.
        self.output = check_output_folder(output)
        self.overwrite = overwrite
        self.quality = quality
        if quality:
            from brats_cli.report.records import QA_FOLDER, record_path

            qa = self.output / QA_FOLDER
            if qa.is_dir() and not qa.is_symlink():  # a linked one is replaced, never swept through
                records = None if shard is None else [record_path(self.output, c.case_id).name for c in self.cases]
                remove_stale_temporaries(qa, records)  # a shard sweeps its own cases' records only
        self.results: list[CaseResult] = []
        self._in_progress: Path | None = None  # the output of the case being segmented, if new

    def __len__(self) -> int:
        return len(self.cases)

    def _output_names(self) -> list[str]:
        names = [case.output_name for case in self.cases]
        if self.segmenter.settings.probabilities:
            names += [case.probabilities_name for case in self.cases]
        return names

    def _existing(self, case: Case) -> str | None:
        """`_existing_output` of the case's label map; with probabilities asked for, a label map
        without its probabilities file (an earlier run without them) is redone."""
        found = _existing_output(self.output / case.output_name, self.overwrite)
        wanted = self.segmenter.settings.probabilities
        if found == DONE_OUTPUT and wanted and not (self.output / case.probabilities_name).is_file():
            return None
        return found

    def __iter__(self) -> Iterator[CaseResult]:
        return self.segment()

    def segment(self, on_stage: OnStage | None = None) -> Iterator[CaseResult]:
        """Make the output folder (OutputError) and sweep a dead run's temporaries from it now;
        the iterator returned segments the cases in order, yielding each result as it finishes.
        `on_stage` is told each stage as it starts (for a progress display)."""
        ensure_output_folder(self.output)
        remove_stale_temporaries(self.output, None if self.shard is None else self._output_names())
        return self._segment_cases(on_stage)

    def _segment_cases(self, on_stage: OnStage | None) -> Iterator[CaseResult]:
        # Decided once, so the prefetched list and this loop cannot disagree.
        existing = {case.case_id: self._existing(case) for case in self.cases}
        blocked = {case_id: problem for case_id, problem in existing.items() if problem not in (None, DONE_OUTPUT)}
        skipped = {case_id for case_id, problem in existing.items() if problem == DONE_OUTPUT and not self.overwrite}
        loaders = prefetched([case for case in self.cases if case.case_id not in skipped | blocked.keys()])
        try:
            for case in self.cases:
                target = self.output / case.output_name
                if case.case_id in blocked:
                    result = CaseResult(case.case_id, Status.FAILED, message=blocked[case.case_id], output=target)
                elif case.case_id in skipped:
                    result = CaseResult(case.case_id, Status.SKIPPED, message="output exists", output=target)
                else:
                    _, load = next(loaders)
                    self._in_progress = None if target.exists() else target  # --overwrite: cannot tell
                    result = self.segmenter._segment(case, target, on_stage, load, self.quality)
                    self._in_progress = None
                if self.quality and result.status is not Status.SKIPPED:
                    result = self._record(result)
                self.results.append(result)
                yield result
        finally:
            loaders.close()

    def _record(self, result: CaseResult) -> CaseResult:
        """Keep the case's QA record; a record that cannot be written costs the report its
        numbers, never the segmentation: it becomes a warning of the case."""
        from brats_cli.report.records import CaseRecord, write_record

        try:
            write_record(self.output, CaseRecord.of_result(result))
        except (BratsError, OSError) as error:
            return dataclasses.replace(result, warnings=[*result.warnings, f"QA record not kept: {error}"])
        return result

    def finished(self) -> list[str]:
        """IDs of the cases this run wrote, including one written and then interrupted before its
        result was yielded: what an interrupted run can tell its user is done."""
        done = [r.case_id for r in self.results if r.status is Status.DONE]
        if self._in_progress is not None and self._in_progress.exists():
            done.append(self._in_progress.name.removesuffix(".nii.gz"))
        return done

    @property
    def failed(self) -> bool:
        return any(r.status is Status.FAILED for r in self.results)

    def run(self) -> list[CaseResult]:
        """Segment every case; the results in case order."""
        for _ in self:
            pass
        return self.results
