"""`brats segment INPUT OUTPUT`: every case in INPUT segmented into OUTPUT/<ID>.nii.gz."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from brats_cli.choices import Backend, Device, Ensemble, LabelChoice, Precision
from brats_cli.cli import console


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
        typer.Option(help="torch: run each stage's fold models as one batched call on their stacked weights."),
    ] = False,
    compile: Annotated[
        bool,
        typer.Option(
            help="torch: compile the networks with torch.compile (needs a C compiler): about 20 s per network "
            "shape at the first case, then faster forwards (H100: 0.44x the time); pays off over many cases."
        ),
    ] = False,
    ensemble: Annotated[
        Ensemble, typer.Option(help="mean: average fold probabilities (paper's RVE); vote: majority.")
    ] = Ensemble.MEAN,
    et_threshold: Annotated[
        int | None,
        typer.Option(min=0, help="Relabel ET as necrosis when fewer voxels remain (default: the bundle's, 600)."),
    ] = None,
    labels: Annotated[
        LabelChoice, typer.Option(help="Output label convention: ET = 4 (2021) or 3 (2023); auto by input names.")
    ] = LabelChoice.AUTO,
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose output exists (default: skip them).")] = False,
    profile: Annotated[
        bool,
        typer.Option(
            help="Print per-stage seconds for each case (read: waiting for the reader thread, which reads "
            "and preprocesses each case while the one before computes), and peak GPU memory with PyTorch on a GPU."
        ),
    ] = False,
) -> None:
    """Segment every case in INPUT; write OUTPUT/<ID>.nii.gz (uint8, the input's geometry)."""
    options = SegmentOptions(
        input=input,
        output=output,
        weights=weights,
        backend=backend,
        device=device,
        precision=precision,
        folds=_parse_folds(folds),
        fuse_folds=fuse_folds,
        compile=compile,
        ensemble=ensemble,
        et_threshold=et_threshold,
        labels=labels,
        overwrite=overwrite,
        profile=profile,
    )
    raise typer.Exit(run_segment(options))


@dataclass(frozen=True)
class SegmentOptions:
    input: Path
    output: Path
    weights: Path | None
    device: Device
    precision: Precision
    folds: list[int] | None
    ensemble: Ensemble
    et_threshold: int | None
    labels: LabelChoice
    overwrite: bool
    profile: bool
    backend: Backend = Backend.TORCH
    fuse_folds: bool = False
    compile: bool = False


class Interrupted(BaseException):
    """SIGTERM or SIGINT: unwind (removing temporary files on the way) and report."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.exit_code = 128 + signal_number


def _raise_interrupted(signal_number: int, _frame: object) -> None:
    raise Interrupted(signal_number)


def run_segment(options: SegmentOptions) -> int:
    """Resolve weights and cases, segment each, render progress and the summary; the exit code."""
    import signal

    from brats_cli.allocator import keep_freed_memory
    from brats_cli.batch import CaseResult, Status, output_convention, prefetched, segment_case
    from brats_cli.bundle import load_weights
    from brats_cli.errors import BratsError
    from brats_cli.io import discover_cases, ensure_output_folder, remove_stale_temporaries
    from brats_cli.pipeline import PipelineConfig
    from brats_cli.predictors import auto_precision_reason, require_backend, stage_predictors, usable_cpus

    keep_freed_memory()  # before the first large allocation: every case reuses the pages of the last
    results: list[CaseResult] = []
    in_progress: Path | None = None  # the output of the case being segmented
    # From the start, so that a signal during set-up (loading weights) also ends with a one-line
    # message and the signal's exit code rather than a traceback.
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            bundle = load_weights(options.weights, backend=options.backend)
            require_backend(bundle, options.backend)
            discovery = discover_cases(options.input)
            output = ensure_output_folder(options.output)
            remove_stale_temporaries(output)
            predictors = stage_predictors(
                bundle,
                options.backend,
                device=options.device,
                precision=options.precision,
                folds=options.folds,
                fuse_folds=options.fuse_folds,
                compile=options.compile,
            )
        except BratsError as error:
            console.error(str(error))
            return console.EXIT_UNUSABLE
        for message in discovery.notes:
            console.note(message)
        if options.backend is Backend.ONNX and options.precision is Precision.BF16:
            console.note("--precision is ignored with --backend onnx: an ONNX bundle's precision is set at export")
        if options.backend is Backend.ONNX and (options.compile or options.fuse_folds):
            console.note("--compile and --fuse-folds are for --backend torch; ignored with --backend onnx")
        first = next(iter(predictors.values()))
        device = f"cpu ({usable_cpus()} threads)" if str(first.device) == "cpu" else str(first.device)
        precision = first.precision.value
        if options.precision is Precision.AUTO and options.backend is Backend.TORCH:
            precision += f" (auto: {auto_precision_reason(first.device)})"
        console.stderr.print(
            f"brats: {len(discovery.cases)} case(s), weights {bundle.root}, backend {options.backend.value}, "
            f"device {device}, precision {precision}"
        )
        progress = console.progress()
        with progress:
            task = progress.add_task("cases", total=len(discovery.cases))

            # Decided once, so the prefetched list and this loop cannot disagree.
            skipped = {
                case.case_id
                for case in discovery.cases
                if (output / case.output_name).exists() and not options.overwrite
            }
            # The next case is read while the current one computes.
            loaders = prefetched([case for case in discovery.cases if case.case_id not in skipped])
            for case in discovery.cases:
                target = output / case.output_name
                if case.case_id in skipped:
                    results.append(CaseResult(case.case_id, Status.SKIPPED, message="output exists"))
                    progress.advance(task)
                    continue
                _, load = next(loaders)
                convention = output_convention(case, options.labels)
                config = PipelineConfig.from_manifest(
                    bundle.manifest, convention=convention, ensemble=options.ensemble, et_threshold=options.et_threshold
                )

                def on_stage(name: str, case_id: str = case.case_id) -> None:
                    progress.update(task, description=f"{case_id}: {name}")

                in_progress = None if target.exists() else target  # --overwrite: cannot tell
                result = segment_case(case, target, predictors, config, on_stage, load)
                results.append(result)
                in_progress = None
                if result.status is Status.FAILED:
                    console.error(f"{case.case_id}: {result.message}")
                for message in result.warnings:
                    console.warning(f"{case.case_id}: {message}")
                progress.advance(task)
    except Interrupted as interrupted:
        done = [r.case_id for r in results if r.status is Status.DONE]
        if in_progress is not None and in_progress.exists():  # written, interrupted before its summary
            done.append(in_progress.name.removesuffix(".nii.gz"))
        console.error(
            f"interrupted; {len(done)} case(s) finished and written"
            + (f" ({', '.join(done)})" if done else "")
            + "; rerun the same command to continue"
        )
        return interrupted.exit_code
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    _render_summary(results, options.profile)
    if options.profile and options.backend is Backend.TORCH and str(first.device).startswith("cuda"):
        import torch

        console.stderr.print(f"peak GPU memory {torch.cuda.max_memory_allocated(first.device) / 2**30:.2f} GiB")
    return console.EXIT_CASE_FAILED if any(r.status is Status.FAILED for r in results) else console.EXIT_OK


def _render_summary(results: list, profile: bool) -> None:
    from rich.table import Table

    from brats_cli.labels import REGIONS

    table = Table(title="brats segment")
    table.add_column("case")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for region in REGIONS:
        table.add_column(f"{region.value} ml", justify="right")
    for result in results:
        volumes = [f"{result.volumes_ml[r]:.1f}" if result.volumes_ml else "" for r in REGIONS]
        status = result.status.value if not result.message else f"{result.status.value}: {result.message}"
        table.add_row(result.case_id, status, f"{result.seconds:.1f}", *volumes)
    console.stderr.print(table)
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


_STAGE_ORDER = ("read", "preprocess", "base", "localise", "wt", "tc", "et", "compose", "write")


def _stage_order(name: str) -> int:
    return _STAGE_ORDER.index(name) if name in _STAGE_ORDER else len(_STAGE_ORDER)
