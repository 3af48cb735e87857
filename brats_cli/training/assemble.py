"""`brats bundle`: the best checkpoint of every trained stage and fold of a run, as a weights bundle.

The manifest's metadata records the recipe, the fold split, and per stage and fold the validation
Dice and loss of the chosen epoch and how many of the planned epochs ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_cli import __version__
from brats_cli.bundle import Architecture, Bundle, Stage, check_bundle_target, write_torch_bundle
from brats_cli.errors import InputError, first_line
from brats_cli.preprocess import MODEL_GRID
from brats_cli.training.folds import FOLDS_FILE, read_folds
from brats_cli.training.loop import BEST, LAST, load_checkpoint
from brats_cli.training.recipe import recipe_from_dict
from brats_cli.training.run import RECIPE_FILE, fold_folder


@dataclass(frozen=True)
class TrainedFold:
    stage: Stage
    fold: int
    val_dice: float
    val_loss: float
    epoch: int
    epochs_done: int
    epochs_planned: int
    init_from: str | None = None  # the weights the fold started from (brats train --init-from)
    training_only: int = 0  # training-only cases it trained on (brats train --extra)


def assemble_bundle(run: Path, out: Path) -> tuple[Bundle, list[TrainedFold]]:
    """Write a torch bundle to `out` from `run`'s best checkpoints; every stage needs one fold."""
    run = Path(run)
    check_bundle_target(Path(out))
    recipe_path = run / RECIPE_FILE
    if not recipe_path.is_file():
        raise InputError(f"{run}: not a training run folder (no {RECIPE_FILE})")
    try:
        recipe_data = json.loads(recipe_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{recipe_path}: unreadable ({first_line(error)})") from error
    recipe = recipe_from_dict(recipe_data, str(recipe_path))
    folds = read_folds(run / FOLDS_FILE)

    weights: dict[Stage, list[dict[str, Any]]] = {}
    trained: list[TrainedFold] = []
    for stage in Stage:
        states = []
        for k in range(recipe.folds):
            folder = fold_folder(run, stage, k)
            if not (folder / BEST).is_file():
                continue
            best = load_checkpoint(folder / BEST)
            if best.get("recipe") != recipe.fingerprint():
                raise InputError(f"{folder / BEST}: written with a different recipe than {recipe_path}")
            last = load_checkpoint(folder / LAST) if (folder / LAST).is_file() else best
            try:
                states.append(dict(best["model"]))
                item = TrainedFold(
                    stage,
                    k,
                    float(best["val_dice"]),
                    float(best["val_loss"]),
                    int(best["epoch"]),
                    int(last["epoch"]),
                    recipe.stages[stage].epochs,
                    best.get("init_from"),
                    int(best.get("training_only", 0)),
                )
            except (KeyError, TypeError, ValueError) as error:  # a checkpoint edited or made by hand
                what = f"no {error}" if isinstance(error, KeyError) else first_line(error)
                raise InputError(f"{folder}: not a complete brats checkpoint pair ({what})") from error
            trained.append(item)
        if not states:
            raise InputError(f"{run}: stage {stage.value} has no trained fold (run brats train --stage {stage.value})")
        weights[stage] = states

    architectures = {
        stage: Architecture(
            width=recipe.stages[stage].width,
            input_size=MODEL_GRID if stage is Stage.BASE else recipe.region_window,
            levels=recipe.stages[stage].levels,
            norm_groups=recipe.stages[stage].norm_groups,
        )
        for stage in Stage
    }
    validation: dict[str, dict[str, Any]] = {}
    for item in trained:
        validation.setdefault(item.stage.value, {})[f"fold{item.fold}"] = {
            "val_dice": item.val_dice,
            "val_loss": item.val_loss,
            "best_epoch": item.epoch,
            "epochs_done": item.epochs_done,
            "epochs_planned": item.epochs_planned,
        }
        if item.init_from:
            validation[item.stage.value][f"fold{item.fold}"]["init_from"] = item.init_from
        if item.training_only:
            validation[item.stage.value][f"fold{item.fold}"]["training_only"] = item.training_only
    metadata = {
        "trained_with": f"brats {__version__}",
        "recipe": recipe.to_dict(),
        "folds": folds.to_dict(),
        # Bundle file <stage>_fold<i> holds the model of k-fold split fold_numbers[stage][i].
        "fold_numbers": {s.value: [t.fold for t in trained if t.stage is s] for s in Stage},
        "validation": validation,
    }
    bundle = write_torch_bundle(
        out,
        weights,
        architectures,
        labels=recipe.labels,
        et_threshold=recipe.et_threshold,
        name=recipe.name,
        description=recipe.description or f"trained with recipe {recipe.name}",
        metadata=metadata,
    )
    return bundle, trained
