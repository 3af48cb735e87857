"""`brats segment INPUT OUTPUT`: every case in INPUT segmented into OUTPUT/<ID>.nii.gz."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from brats_cli.choices import Backend, Device, Ensemble, Precision
from brats_cli.cli import console
from brats_cli.cli.options import LabelWord, label_convention
from brats_cli.errors import SettingsError, first_line
from brats_cli.settings import Settings, mirrors_of
from brats_cli.shards import Shard

if TYPE_CHECKING:
    from collections.abc import Sequence

    from brats_cli.report import Report
    from brats_cli.segmenter import CaseResult


def _parse_folds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        folds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter("expected fold indices like 0,1,2", param_hint="--folds") from None
    if not folds or min(folds) < 0:
        raise typer.BadParameter("expected non-negative fold indices like 0,1,2", param_hint="--folds")
    return folds


def _parse_axes(text: str) -> list[int]:
    try:
        axes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        axes = []
    if not axes or not set(axes) <= {0, 1, 2}:
        raise typer.BadParameter("expected axes of 0, 1, 2 like 0,1,2", param_hint="--tta-axes")
    return axes


def segment(
    input: Annotated[Path, typer.Argument(help="A folder of case folders, one case folder, or one case's files.")],
    output: Annotated[Path, typer.Argument(help="Folder for <ID>.nii.gz label maps (created if needed).")],
    weights: Annotated[
        Path | None, typer.Option(help="Weights bundle folder. Default: the bundle shipped with brats.")
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="torch, or onnx for a bundle made by `brats export` (ONNX Runtime).")
    ] = Backend.TORCH,
    device: Annotated[Device, typer.Option(help="Where the networks run.")] = Device.AUTO,
    precision: Annotated[
        Precision, typer.Option(help="Network arithmetic; auto = bf16 where the hardware has it natively.")
    ] = Precision.AUTO,
    folds: Annotated[
        str | None, typer.Option(help="Use only these fold models, e.g. 0,1 (default: all in the bundle).")
    ] = None,
    fuse_folds: Annotated[
        bool,
        typer.Option(
            help="torch: run each stage's fold models as one batched call on their stacked weights. Slower on "
            "both machines measured (README, Performance); in bf16 it casts the weights."
        ),
    ] = False,
    compile: Annotated[
        bool,
        typer.Option(
            help="torch: compile the networks with torch.compile (needs a C compiler). On a GPU it pays only "
            "after several hundred cases, for the compilation at the first; on a CPU it made cases slower "
            "(README, Performance)."
        ),
    ] = False,
    tta: Annotated[
        bool,
        typer.Option(
            help="Test-time augmentation: average every stage's probabilities over the flips along "
            "--tta-axes (all three: 8 forwards per model instead of 1)."
        ),
    ] = False,
    tta_axes: Annotated[
        str,
        typer.Option(help="Axes --tta flips, of 0 (left-right), 1 (front-back), 2 (up-down), e.g. 0 or 0,1,2."),
    ] = "0,1,2",
    ensemble: Annotated[
        Ensemble, typer.Option(help="mean: average fold probabilities (paper's RVE); vote: majority.")
    ] = Ensemble.MEAN,
    et_threshold: Annotated[
        int | None,
        typer.Option(min=0, help="Relabel ET as necrosis when fewer voxels remain (default: the bundle's, 600)."),
    ] = None,
    min_component: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Remove tumour components smaller than this many voxels, all but the largest; 0: none "
            "(default: the bundle's).",
        ),
    ] = None,
    fill_core_holes: Annotated[
        bool | None,
        typer.Option(
            "--fill-core-holes/--no-fill-core-holes",
            help="Relabel what the tumour core encloses in a 2D slice (a cystic cavity read as edema) as necrosis "
            "(default: the bundle's choice).",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        LabelWord,
        typer.Option(help="Output label convention: ET = 4 (2021) or 3 (2023); auto by input names."),
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose output exists (default: skip them).")] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N",
            help="Segment only every N-th case by sorted ID, from the K-th (0-based): N processes with "
            "0/N ... N-1/N share one input and output. Default in a SLURM array job: the task's position and "
            "the array's size (said in the log).",
        ),
    ] = None,
    save_probabilities: Annotated[
        bool,
        typer.Option(
            "--save-probabilities",
            help="Also write the ensemble's WT, TC, ET probabilities as OUTPUT/<ID>_probabilities.nii.gz.",
        ),
    ] = False,
    log: Annotated[
        Path | None,
        typer.Option(help="Append every note, warning and error of the run, timestamped, to this file."),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            help="After the batch, write the visual QA report OUTPUT/report/ (as `brats report`), with fold "
            "disagreement and entropy measured while segmenting; keeps each case's QA data in the hidden "
            "OUTPUT/.brats-qa. Needs matplotlib (the report extra)."
        ),
    ] = False,
    profile: Annotated[
        bool,
        typer.Option(
            help="Print per-stage seconds for each case (read: waiting for the reader thread, which reads "
            "and preprocesses each case while the one before computes), and peak GPU memory with PyTorch on a GPU."
        ),
    ] = False,
) -> None:
    """Segment every case in INPUT; write OUTPUT/<ID>.nii.gz (uint8, the input's geometry)."""
    chosen_folds = _parse_folds(folds)
    mirrors = mirrors_of(_parse_axes(tta_axes)) if tta else ((),)
    try:
        chosen_shard = Shard.parse(shard) if shard is not None else Shard.from_slurm(os.environ)
        settings = Settings(
            backend=backend,
            device=device,
            precision=precision,
            folds=None if chosen_folds is None else tuple(chosen_folds),
            fuse_folds=fuse_folds,
            compile=compile,
            ensemble=ensemble,
            et_threshold=et_threshold,
            min_component=min_component,
            fill_core_holes=fill_core_holes,
            labels=label_convention(labels),
            mirrors=mirrors,
            probabilities=save_probabilities,
        )
    except SettingsError as error:
        console.error(str(error))
        raise typer.Exit(console.EXIT_UNUSABLE) from None
    options = SegmentOptions(
        input,
        output,
        weights,
        settings,
        overwrite=overwrite,
        profile=profile,
        shard=chosen_shard,
        log=log,
        report=report,
    )
    raise typer.Exit(run_segment(options))


@dataclass(frozen=True)
class SegmentOptions:
    """What the command line asked for: the files, the settings, and how to report."""

    input: Path
    output: Path
    weights: Path | None
    settings: Settings
    overwrite: bool = False
    profile: bool = False
    shard: Shard | None = None
    log: Path | None = None
    report: bool = False


def run_segment(options: SegmentOptions) -> int:
    """`_run_segment` with the run log open when one is asked for."""
    problem = None if options.log is None else _unusable_log(options)
    if problem is not None:
        console.error(problem)
        return console.EXIT_UNUSABLE
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(console.log_to(options.log))
        except OSError as error:
            console.error(f"{options.log}: cannot write the log ({first_line(error)})")
            return console.EXIT_UNUSABLE
        return _run_segment(options)


def _unusable_log(options: SegmentOptions) -> str | None:
    """`console.unusable_log` for this run: it reads INPUT and the weights, writes OUTPUT's label
    maps (named like images), records and report."""
    from brats_cli.bundle import default_bundle_path
    from brats_cli.report import QA_FOLDER, REPORT_FOLDER

    assert options.log is not None
    weights = options.weights or default_bundle_path(options.settings.backend)
    return console.unusable_log(
        options.log,
        reads=[options.input, weights],
        writes=[options.output / REPORT_FOLDER, options.output / QA_FOLDER],
        folders=[options.output],
    )


def _run_segment(options: SegmentOptions) -> int:
    """Set up, segment each case while rendering progress, render the summary; the exit code."""
    from brats_cli.allocator import keep_freed_memory
    from brats_cli.errors import BratsError
    from brats_cli.interrupts import Interrupted, interruptible
    from brats_cli.segmenter import Batch, Segmenter, Status

    keep_freed_memory()  # before the first large allocation: every case reuses the pages of the last
    batch: Batch | None = None
    # From the start, so that a signal during set-up (loading weights) also ends with a one-line
    # message and the signal's exit code rather than a traceback.
    try:
        with interruptible():
            try:
                settings = options.settings
                segmenter = Segmenter(options.weights, settings)
                batch = segmenter.segment_folder(
                    options.input,
                    options.output,
                    overwrite=options.overwrite,
                    shard=options.shard,
                    quality=options.report,
                )
                if options.report:  # before any case: a missing extra or a blocked folder is said now
                    from brats_cli.report import REPORT_FOLDER, check_report_folder

                    check_report_folder(options.output / REPORT_FOLDER)
                segmenter.load()
            except BratsError as error:
                console.error(str(error))
                return console.EXIT_UNUSABLE
            for message in [*batch.notes, *segmenter.notes, *settings.ignored()]:
                console.note(message)
            device = segmenter.device if segmenter.threads is None else f"cpu ({segmenter.threads} threads)"
            reason = segmenter.precision_reason
            precision = segmenter.precision + (f" (auto: {reason})" if reason else "")
            mirrors = len(settings.mirrors)
            console.info(
                f"brats: {len(batch)} case(s), weights {segmenter.bundle.root}, backend {settings.backend.value}, "
                f"device {device}, precision {precision}"
                + (f", test-time mirroring {mirrors} flips" if mirrors > 1 else "")
            )
            progress = console.progress()
            with progress:
                task = progress.add_task("cases", total=len(batch))

                def on_stage(case_id: str, name: str) -> None:
                    progress.update(task, description=f"{case_id}: {name}")

                try:
                    results = batch.segment(on_stage)
                except BratsError as error:  # the output folder, checked before, cannot be made now
                    console.error(str(error))
                    return console.EXIT_UNUSABLE
                for result in results:
                    if result.status is Status.FAILED:
                        console.error(f"{result.case_id}: {result.message}")
                    else:
                        console.log(result.status.value, f"{result.case_id} ({result.seconds:.1f} s) {result.output}")
                    for message in result.warnings:
                        console.warning(f"{result.case_id}: {message}")
                    for message in result.notes:
                        console.note(f"{result.case_id}: {message}")
                    progress.advance(task)
            written = _write_report(options) if options.report else None
    except Interrupted as interrupted:
        done = batch.finished() if batch is not None else []
        console.error(
            f"interrupted; {len(done)} case(s) finished and written"
            + (f" ({', '.join(done)})" if done else "")
            + "; rerun the same command to continue"
        )
        return interrupted.exit_code
    _render_summary(batch.results, options.profile)
    peak = segmenter.peak_gpu_memory_gib() if options.profile else None
    if peak is not None:
        console.stderr.print(f"peak GPU memory {peak:.2f} GiB")
    if written is not None:
        if isinstance(written, str):  # the cases stand: a case-level failure, not "nothing written"
            console.error(f"{written}; the segmented cases are kept, only the report is missing")
            return console.EXIT_CASE_FAILED
        from brats_cli.cli.report import render_report

        render_report(written)
    return console.EXIT_CASE_FAILED if batch.failed else console.EXIT_OK


def _write_report(options: SegmentOptions) -> Report | str:
    """The QA report of the output folder, or the one-line reason it could not be written."""
    from brats_cli.errors import BratsError
    from brats_cli.report import REPORT_FOLDER, write_report

    progress = console.progress()
    try:
        with progress:
            task = progress.add_task("report", total=None)
            return write_report(
                options.output,
                options.input,
                on_case=lambda case_id: progress.update(task, description=f"report: {case_id}"),
            )
    except BratsError as error:
        return str(error)
    except OSError as error:  # outside the report's own writes (reading the records back)
        return f"{options.output / REPORT_FOLDER}: cannot write the report ({first_line(error)})"


def _render_summary(results: Sequence[CaseResult], profile: bool) -> None:
    from rich.table import Table

    from brats_cli.labels import REGIONS
    from brats_cli.segmenter import Status

    table = Table(title="brats segment")
    table.add_column("case")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for region in REGIONS:
        table.add_column(f"{region.value} ml", justify="right")
    for result in results:
        volumes = [f"{result.volumes_ml[r]:.1f}" if result.volumes_ml else "" for r in REGIONS]
        status = result.status.value if not result.message else f"{result.status.value}: {_short(result.message)}"
        table.add_row(result.case_id, status, f"{result.seconds:.1f}", *volumes)
    console.stderr.print(table)
    skipped = sum(result.status is Status.SKIPPED for result in results)
    if skipped:
        console.stderr.print(
            f"{skipped} case(s) left as they were, their output exists: --overwrite segments them again"
        )
    if profile:
        stages = sorted({name for r in results for name in r.stage_seconds}, key=_stage_order)
        timing = Table(title="seconds per stage")
        timing.add_column("case")
        for name in stages:
            timing.add_column(name, justify="right")
        for result in results:
            if result.stage_seconds:
                timing.add_row(result.case_id, *(f"{result.stage_seconds.get(n, 0.0):.2f}" for n in stages))
        console.stderr.print(timing)


def _short(message: str, limit: int = 60) -> str:
    """A failure as the summary table shows it: the error line above it has the whole message."""
    return message if len(message) <= limit else message[: limit - 1].rstrip() + "…"


_STAGE_ORDER = ("read", "preprocess", "base", "localise", "wt", "tc", "et", "compose", "write")


def _stage_order(name: str) -> int:
    return _STAGE_ORDER.index(name) if name in _STAGE_ORDER else len(_STAGE_ORDER)
