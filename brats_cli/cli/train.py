"""`brats train`: the paper's k-fold training of the four stages into a run folder, resumable,
on one process or under torchrun (one process per GPU, on one node or several)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brats_cli.choices import Device, Precision, Stage
from brats_cli.cli import console
from brats_cli.cli.options import StageWord, stage_of

if TYPE_CHECKING:
    from rich.progress import TaskID


@dataclass(frozen=True)
class TrainOptions:
    """What `brats train` was asked to train, as given on the command line (the recipe as its
    file; `fold` None: the folds the recipe lists for each stage)."""

    recipe: Path
    data: Path
    out: Path
    stage: Stage | None = None  # None: all four, base first
    fold: int | None = None
    resume: bool = False
    deterministic: bool = False
    precision: Precision = Precision.AUTO
    device: Device = Device.AUTO
    cache: Path | None = None
    init_from: Path | None = None
    init_fold: int | None = None  # None: each fold starts from the same fold of init_from
    extra: Path | None = None

    def __post_init__(self) -> None:
        # The command never builds a bad one (typer and _parse_fold check first): these catch another
        # caller's mistake here rather than deep inside a run.
        if self.fold is not None and self.fold < 0:
            raise ValueError(f"fold must be a non-negative index or None (got {self.fold})")
        if self.init_fold is not None and (self.init_from is None or self.init_fold < 0):
            raise ValueError(f"init_fold needs init_from and a non-negative index (got {self.init_fold})")
        if self.stage is not None and not isinstance(self.stage, Stage):
            raise TypeError(f"stage must be a Stage or None (got {self.stage!r})")
        if not isinstance(self.device, Device):
            raise TypeError(f"device must be a Device (got {self.device!r})")
        if not isinstance(self.precision, Precision):
            raise TypeError(f"precision must be a Precision (got {self.precision!r})")


def _parse_fold(text: str) -> int | None:
    if text == "all":
        return None
    try:
        fold = int(text)
    except ValueError:
        raise typer.BadParameter("expected a fold index (0, 1, ...) or 'all'", param_hint="--fold") from None
    if fold < 0:
        raise typer.BadParameter("expected a non-negative fold index or 'all'", param_hint="--fold")
    return fold


def train(
    recipe: Annotated[Path, typer.Option(help="Recipe TOML (train/paper.toml, train/smoke.toml).")],
    data: Annotated[Path, typer.Option(help="BraTS training folder: case folders with the four images and seg.")],
    out: Annotated[Path, typer.Option(help="Run folder: folds, cache, checkpoints and logs (created if needed).")],
    stage: Annotated[StageWord, typer.Option(help="Stage to train; all = base, wt, tc, et in turn.")] = ("all"),
    fold: Annotated[
        str, typer.Option(help="Fold index 0..k-1, or all = the folds the recipe lists for each stage.")
    ] = "all",
    resume: Annotated[bool, typer.Option(help="Continue from each fold's last complete epoch.")] = False,
    deterministic: Annotated[
        bool, typer.Option(help="Exactly reproducible: deterministic kernels, no cuDNN autotuning (slower).")
    ] = False,
    device: Annotated[Device, typer.Option(help="Where to train; under torchrun each rank takes one GPU.")] = (
        Device.AUTO
    ),
    precision: Annotated[
        Precision,
        typer.Option(
            help="What the forward pass computes in (weights and optimiser stay fp32): auto = bf16 where the "
            "GPU or CPU computes it natively (fp16 on older GPUs), fp32 elsewhere."
        ),
    ] = Precision.AUTO,
    cache: Annotated[
        Path | None, typer.Option(help="Folder for preprocessed cases, shareable between runs (default RUN/cache).")
    ] = None,
    prepare_only: Annotated[
        bool, typer.Option(help="Only validate and cache the data and write folds.json (e.g. before an array job).")
    ] = False,
    extra: Annotated[
        Path | None,
        typer.Option(
            help="A second folder of labelled cases that join the training side of every fold and are never "
            "validated on (external or synthetic data); the split of the --data cases stays as it was."
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start each fold from the same stage and fold of a weights bundle (weights/) or a run folder "
            "instead of random weights: to fine-tune, or to train on from a finished run. Weights of a network "
            "an integer factor narrower than the recipe's are widened first, computing the same function "
            "(Net2WiderNet). Validation stays clean only if those weights never trained on this run's "
            "validation cases."
        ),
    ] = None,
    init_fold: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="With --init-from: start every fold from this fold of the source instead of the same fold, "
            "e.g. to grow a 2-fold ensemble to 5. Its weights trained on the new folds' held-out cases, so "
            "their validation Dice (the best-epoch choice) is optimistic.",
        ),
    ] = None,
) -> None:
    """Train the selected stages and folds; checkpoints every epoch, logs RUN/<stage>/fold<k>/log.csv."""
    chosen_fold = _parse_fold(fold)
    if init_fold is not None and init_from is None:
        raise typer.BadParameter("needs --init-from (the weights whose fold to start from)", param_hint="--init-fold")
    if prepare_only:
        raise typer.Exit(run_prepare(recipe, data, out, cache, extra))
    options = TrainOptions(
        recipe=recipe,
        data=data,
        out=out,
        stage=stage_of(stage),
        fold=chosen_fold,
        resume=resume,
        deterministic=deterministic,
        precision=precision,
        device=device,
        cache=cache,
        init_from=init_from,
        init_fold=init_fold,
        extra=extra,
    )
    raise typer.Exit(run_train(options))


def run_prepare(recipe_path: Path, data: Path, out: Path, cache: Path | None, extra: Path | None = None) -> int:
    from brats_cli.errors import BratsError
    from brats_cli.training.recipe import load_recipe
    from brats_cli.training.run import prepare

    try:
        recipe = load_recipe(recipe_path)
        cached, folds = prepare(recipe, data, out, cache or out / "cache", _print_case, extra)
    except BratsError as error:
        report(error)
        return console.EXIT_UNUSABLE
    sizes = ", ".join(str(len(f)) for f in folds.folds)
    console.stderr.print(
        f"prepared {len(cached)} case(s); {len(folds.folds)} folds of {sizes}"
        + (f", {len(folds.training_only)} training-only" if folds.training_only else "")
        + f" in {out / 'folds.json'}"
    )
    return console.EXIT_OK


def report(error: Exception) -> None:
    """One error line; for unusable cases one line per case (`<ID>: <problem>`, every one of them,
    so a single run shows all there is to fix) and then the count."""
    problems = getattr(error, "problems", None)
    if not problems:
        console.error(str(error))
        return
    for problem in problems:
        console.error(problem)
    where = getattr(error, "where", None)
    where = f"{where}: " if where else ""
    console.error(f"{where}{len(problems)} case(s) unusable for training; nothing was trained")


def _print_case(case, reused: bool) -> None:
    console.stderr.print(f"cache: {case.case_id} {'reused' if reused else 'preprocessed'}")


def run_train(options: TrainOptions) -> int:
    import signal

    from brats_cli.errors import BratsError, first_line
    from brats_cli.interrupts import Interrupted, interruptible
    from brats_cli.predictors.torch_backend import resolve_device
    from brats_cli.training import distributed
    from brats_cli.training.loop import STAGE_ORDER, autocast_dtype, forward_name
    from brats_cli.training.recipe import load_recipe
    from brats_cli.training.run import run_training

    try:
        recipe = load_recipe(options.recipe)
        context = distributed.start(resolve_device(options.device))
    except BratsError as error:
        console.error(str(error))
        return console.EXIT_UNUSABLE
    stages = list(STAGE_ORDER) if options.stage is None else [options.stage]
    amp_dtype = autocast_dtype(context.device, options.precision)
    reporter = RichReporter() if context.is_main else None

    if context.is_main:
        console.stderr.print(
            f"brats train: recipe {recipe.name}, {len(stages)} stage(s), device {context.device}, "
            f"{context.world} rank(s), global batch {recipe.batch_size}, "
            f"{forward_name(amp_dtype)} forward"
            + (", deterministic" if options.deterministic else "")
            + (f", starting from {options.init_from}" if options.init_from else "")
            + (f" fold {options.init_fold}" if options.init_fold is not None else "")
            + (f", training-only cases from {options.extra}" if options.extra else "")
        )
    try:
        with interruptible(), reporter or _nothing():
            results = run_training(
                recipe,
                options.data,
                options.out,
                context,
                stages=stages,
                fold=options.fold,
                resume=options.resume,
                deterministic=options.deterministic,
                precision=options.precision,
                cache=options.cache,
                on_case=_print_case,
                reporter=reporter,
                init_from=options.init_from,
                init_fold=options.init_fold,
                extra=options.extra,
            )
    except BratsError as error:
        report(error)
        return console.EXIT_UNUSABLE
    except (Interrupted, KeyboardInterrupt) as interrupted:  # SIGTERM or Ctrl-C (SIGINT) while training
        console.error("interrupted; the last complete epoch is checkpointed: rerun with --resume to continue")
        return getattr(interrupted, "exit_code", 128 + signal.SIGINT)
    except OSError as error:  # a disk filling up or a folder made read-only during training
        where = f"{error.filename}: " if error.filename else ""
        console.error(
            f"{where}cannot write ({first_line(error)}); the last complete epoch is checkpointed: "
            "free the space or fix the folder, then rerun with --resume"
        )
        return console.EXIT_UNUSABLE
    except (MemoryError, RuntimeError) as error:  # out of memory on the host or the GPU, above all
        console.error(
            f"training stopped: {first_line(error)[:300]}; the last complete epoch is checkpointed: "
            "a smaller recipe (width, batch_size, patch) or --resume after freeing memory"
        )
        return console.EXIT_CASE_FAILED
    finally:
        distributed.stop(context)
    if context.is_main:
        _render_summary(results)
    return console.EXIT_OK


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class RichReporter:
    """Progress on stderr: one bar per stage and fold over all its steps (so the ETA is the
    fold's), with the epoch, the running loss and the learning rate; one line per epoch."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console.stderr,
            transient=True,
        )
        self.task: TaskID | None = None
        self.name = ""
        self.epochs = 0

    def __enter__(self) -> RichReporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def fold_started(self, job, first_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.name = f"{job.stage.value} fold {job.fold}"
        self.epochs = epochs
        remaining = (epochs - first_epoch) * steps_per_epoch
        self.task = self.progress.add_task(
            f"{self.name} epoch {first_epoch + 1}/{epochs}", total=remaining, loss=float("nan"), lr=float("nan")
        )
        if first_epoch:
            console.stderr.print(f"{self.name}: resuming after epoch {first_epoch}")

    def step(self, epoch: int, loss: float, learning_rate: float) -> None:
        assert self.task is not None, "step before fold_started"
        self.progress.update(
            self.task,
            advance=1,
            description=f"{self.name} epoch {epoch + 1}/{self.epochs}",
            loss=loss,
            lr=learning_rate,
        )

    def epoch_finished(self, job, record, epochs: int) -> None:
        console.stderr.print(
            f"{self.name} epoch {record.epoch}/{epochs}: train loss {record.train_loss:.4f}, "
            f"val loss {record.val_loss:.4f}, val Dice {record.val_dice:.4f}, lr {record.learning_rate:.2e}, "
            f"{record.seconds:.1f} s (data {record.data_seconds:.1f} s)" + ("  best" if record.best else "")
        )


def _render_summary(results: list) -> None:
    from rich.table import Table

    table = Table(title="brats train")
    for column in ("stage", "fold", "epochs", "best val Dice", "best epoch"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for result in results:
        table.add_row(
            result.stage.value,
            str(result.fold),
            f"{result.epochs_done}/{result.epochs_planned}",
            f"{result.best_dice:.4f}" if result.best_epoch else "-",
            str(result.best_epoch or "-"),
        )
    console.stderr.print(table)
