"""A training run folder, and training the selected stages and folds into it.

RUN/recipe.json                      the recipe the run was started with (later commands must match)
RUN/folds.json                       the k-fold split of the case IDs
RUN/cache/                           preprocessed cases (unless --cache points elsewhere)
RUN/<stage>/fold<k>/last.pt          checkpoint after the last complete epoch
RUN/<stage>/fold<k>/best.pt          model of the best validation Dice
RUN/<stage>/fold<k>/log.csv          one row per epoch: losses, Dice, learning rate, seconds
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brats_cli.bundle import Stage
from brats_cli.choices import Precision
from brats_cli.errors import BratsError, InputError, first_line
from brats_cli.files import write_text_atomically
from brats_cli.io import Case, check_output_folder
from brats_cli.training import distributed
from brats_cli.training.cache import CachedCase, prepare_cache, training_cases
from brats_cli.training.folds import FOLDS_FILE, Folds, load_or_create_folds
from brats_cli.training.loop import (
    BEST,
    LAST,
    STAGE_ORDER,
    EpochRecord,
    FoldJob,
    FoldResult,
    InitialWeights,
    Reporter,
    configure,
    load_checkpoint,
    train_fold,
)
from brats_cli.training.recipe import Recipe

RECIPE_FILE = "recipe.json"


def fold_folder(run: Path, stage: Stage, fold: int) -> Path:
    return Path(run) / stage.value / f"fold{fold}"


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return f"{where}: {a!r} in the run, {b!r} now"


def check_recipe(run: Path, recipe: Recipe) -> bool:
    """Refuse a recipe other than the one the run was started with; False if none is recorded yet."""
    path = Path(run) / RECIPE_FILE
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable ({first_line(error)})") from error
    if stored != recipe.to_dict():
        raise InputError(
            f"{path}: this run was started with a different recipe ({_first_difference(stored, recipe.to_dict())}); "
            "use the same recipe or another --out"
        )
    return True


def record_recipe(run: Path, recipe: Recipe) -> None:
    path = Path(run) / RECIPE_FILE
    try:
        write_text_atomically(path, json.dumps(recipe.to_dict(), indent=1) + "\n")
    except OSError as error:
        raise InputError(f"{run}: cannot write to the run folder ({first_line(error)})") from error


def prepare(
    recipe: Recipe,
    data: Path,
    run: Path,
    cache: Path,
    on_case: Callable[[Case, bool], None] | None = None,
    extra: Path | None = None,
) -> tuple[list[CachedCase], Folds]:
    """Check the recipe against the run, validate and cache every case (those of `extra`, the
    training-only folder, too), and make or read the folds.

    The recipe and the folds are recorded only once every case is usable: a run refused for its
    data holds no record that would tie the next attempt to this recipe or these cases (the cache
    entries of the good cases stay, complete, for that attempt)."""
    # Everything that can refuse the run without reading an image, before the run folder exists.
    check_output_folder(run, "run folder")  # a file in the way said as such, not as "File exists"
    recorded = check_recipe(run, recipe)
    cases = training_cases(data)
    if len(cases) < recipe.folds:
        raise InputError(
            f"{data}: {len(cases)} labelled case(s) for {recipe.folds} folds; every fold needs one validation case"
        )
    extra_cases = training_cases(extra) if extra is not None else []
    try:
        Path(run).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{run}: cannot create run folder ({first_line(error)})") from error
    cached = prepare_cache(cases, cache, on_case)
    cached_extra = prepare_cache(extra_cases, cache, on_case)
    if not recorded:
        record_recipe(run, recipe)
    folds = load_or_create_folds(
        run, [c.case_id for c in cached], recipe.folds, recipe.seed, [c.case_id for c in cached_extra]
    )
    return cached + cached_extra, folds


def check_init_source(source: Path) -> None:
    """`--init-from` must name a weights bundle or a training run folder."""
    from brats_cli.bundle import MANIFEST

    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: --init-from does not exist")
    if not ((source / MANIFEST).is_file() or (source / RECIPE_FILE).is_file()):
        raise InputError(f"{source}: neither a weights bundle ({MANIFEST}) nor a training run folder ({RECIPE_FILE})")


def initial_weights(source: Path, stage: Stage, fold: int) -> InitialWeights:
    """What `brats train --init-from SOURCE` starts `stage` fold `fold` from: the bundle file of
    that split fold in a torch weights bundle (by its `fold_numbers` metadata where it has them,
    else file `<stage>_fold<fold>`; the source names the file and its checksum), or that fold's
    `best.pt` in a training run folder (the source names the file and its epoch)."""
    from brats_cli.bundle import MANIFEST, load_bundle
    from brats_cli.predictors.torch_backend import load_torch_models

    source = Path(source)
    if (source / MANIFEST).is_file():
        bundle = load_bundle(source)
        paths = bundle.fold_paths(stage)
        numbers = bundle.manifest.fold_numbers(stage)
        if fold not in numbers:
            raise InputError(f"{source}: no {stage.value} model of fold {fold} to start from (folds {numbers})")
        index = numbers.index(fold)
        (model,) = load_torch_models(bundle, stage, [index])
        # The checksum names the weights wherever the bundle lies later; the path is only a hint.
        digest = bundle.manifest.stages[stage].folds[index].sha256
        return InitialWeights(model.state_dict(), str(paths[index]), f"{paths[index]} (sha256 {digest})")
    if (source / RECIPE_FILE).is_file():
        path = fold_folder(source, stage, fold) / BEST
        if not path.is_file():
            raise InputError(f"{source}: no {stage.value} fold {fold} to start from ({path} not found)")
        state = load_checkpoint(path)
        return InitialWeights(state["model"], str(path), f"{path} (epoch {state['epoch']})")
    raise InputError(f"{source}: neither a weights bundle ({MANIFEST}) nor a training run folder ({RECIPE_FILE})")


def check_fold(recipe: Recipe, fold: int | None) -> None:
    if fold is not None and not 0 <= fold < recipe.folds:
        raise InputError(f"--fold {fold}: the recipe has folds 0..{recipe.folds - 1}")


def selected_folds(recipe: Recipe, stages: Sequence[Stage], fold: int | None) -> list[tuple[Stage, int]]:
    """The (stage, fold) pairs a command trains, base first: `fold` None means the folds each
    stage's recipe lists."""
    check_fold(recipe, fold)
    return [
        (stage, k)
        for stage in sorted(stages, key=STAGE_ORDER.index)
        for k in ([fold] if fold is not None else recipe.stages[stage].train_folds)
    ]


def plan_jobs(
    recipe: Recipe, run: Path, cached: Sequence[CachedCase], folds: Folds, stages: Sequence[Stage], fold: int | None
) -> list[FoldJob]:
    """One job per selected stage and fold (`selected_folds`)."""
    by_id = {c.case_id: c for c in cached}
    jobs = []
    for stage, k in selected_folds(recipe, stages, fold):
        train_ids, validation_ids = folds.split(k)
        jobs.append(
            FoldJob(
                stage,
                k,
                [by_id[i] for i in train_ids],
                [by_id[i] for i in validation_ids],
                fold_folder(run, stage, k),
                training_only=len(folds.training_only),
            )
        )
    return jobs


def run_training(
    recipe: Recipe,
    data: Path,
    run: Path,
    context: distributed.Context,
    *,
    stages: Sequence[Stage] = STAGE_ORDER,
    fold: int | None = None,
    resume: bool = False,
    deterministic: bool = False,
    precision: Precision = Precision.AUTO,
    cache: Path | None = None,
    on_case: Callable[[Case, bool], None] | None = None,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    init_from: Path | None = None,
    init_fold: int | None = None,
    extra: Path | None = None,
) -> list[FoldResult]:
    """Prepare the data (rank 0), then train every selected stage and fold in turn; with `init_from`
    each fold starts from that bundle's or run's weights for the same stage and fold, or for fold
    `init_fold` when given (new folds of an ensemble started from a trained one)."""
    configure(deterministic)
    run = Path(run)
    # What can be refused from the arguments alone, before any case is read or the run folder made:
    # a fold the recipe lacks, and starting weights that are not there. A fold that resumes
    # continues from its own last.pt and needs none.
    check_fold(recipe, fold)
    initial: dict[tuple[Stage, int], InitialWeights] = {}
    if init_from is not None:
        check_init_source(init_from)
        for stage, k in selected_folds(recipe, stages, fold):
            if not (resume and (fold_folder(run, stage, k) / LAST).exists()):
                initial[stage, k] = initial_weights(init_from, stage, k if init_fold is None else init_fold)
    # The records this call makes, if the run is new: removed again if no epoch of any fold ever
    # completes, so that a corrected recipe is not refused as "a different recipe" of a run that
    # never trained.
    records = [run / RECIPE_FILE, run / FOLDS_FILE]
    fresh = context.is_main and not any(path.exists() for path in records)
    prepared, error = None, None
    if context.is_main:
        try:
            prepared = prepare(recipe, data, run, cache or run / "cache", on_case, extra)
        except BratsError as failure:
            error = failure
    cached, folds = distributed.share_outcome(context, prepared, error)
    jobs: list[FoldJob] = []
    try:
        jobs = plan_jobs(recipe, run, cached, folds, stages, fold)
        results = []
        for job in jobs:
            results.append(
                train_fold(
                    job,
                    recipe,
                    context,
                    deterministic=deterministic,
                    precision=precision,
                    resume=resume,
                    reporter=reporter,
                    on_epoch_end=on_epoch_end,
                    initial=initial.get((job.stage, job.fold)),
                )
            )
    except BaseException:
        if fresh and not any((job.folder / LAST).exists() for job in jobs):
            for path in records:
                path.unlink(missing_ok=True)
        raise
    return results
