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
from brats_cli.bundle import (
    Architecture,
    Bundle,
    Stage,
    check_bundle_target,
    state_problem,
    stored_dtype_problem,
    write_torch_bundle,
)
from brats_cli.choices import Checkpoint, Storage
from brats_cli.errors import InputError, first_line
from brats_cli.preprocess import MODEL_GRID
from brats_cli.training.folds import FOLDS_FILE, read_folds
from brats_cli.training.loop import BEST, LAST, load_checkpoint
from brats_cli.training.recipe import Recipe, recipe_from_dict
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
    # What its epochs' forward passes computed in, in the order first used ("bfloat16"; "float32,
    # bfloat16" for a run resumed on other hardware); "" for checkpoints older than the record.
    forward: str = ""


@dataclass(frozen=True)
class Borrowed:
    """Stages a bundle takes from another, finished torch bundle instead of from the run: a round
    of training that improved some stages and not others keeps the earlier models of the others."""

    bundle: Path
    stages: frozenset[Stage]


def assemble_bundle(
    run: Path,
    out: Path,
    borrowed: Borrowed | None = None,
    checkpoint: Checkpoint = Checkpoint.BEST,
    storage: Storage = Storage.FLOAT32,
) -> tuple[Bundle, list[TrainedFold]]:
    """Write a torch bundle to `out` from `run`'s best (or last) checkpoints, its weights stored in
    `storage`'s precision; every stage needs one fold, except the stages `borrowed` takes from
    another bundle (its files verified, its architecture, threshold and validation record kept, and
    where they came from recorded)."""
    run = Path(run)
    check_bundle_target(Path(out))
    recipe_path = run / RECIPE_FILE
    if not recipe_path.is_file():
        raise InputError(f"{run}: not a training run folder (no {RECIPE_FILE})")
    try:
        recipe_data = json.loads(recipe_path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{recipe_path}: unreadable ({first_line(error)})") from error
    except RecursionError:  # thousands of nested brackets
        raise InputError(f"{recipe_path}: unreadable (nested too deeply to be a recipe)") from None
    recipe = recipe_from_dict(recipe_data, str(recipe_path))
    folds = read_folds(run / FOLDS_FILE)

    weights: dict[Stage, list[dict[str, Any]]] = {}
    trained: list[TrainedFold] = []
    source = _borrow(borrowed, recipe) if borrowed else None
    for stage in Stage:
        if source is not None and stage in borrowed.stages:  # type: ignore[union-attr]
            weights[stage] = source.states[stage]
            continue
        states = []
        for k in range(recipe.folds):
            folder = fold_folder(run, stage, k)
            if not (folder / BEST).is_file():
                continue
            best = load_checkpoint(folder / BEST)
            if best.get("recipe") != recipe.fingerprint():
                raise InputError(f"{folder / BEST}: written with a different recipe than {recipe_path}")
            if checkpoint is Checkpoint.LAST and not (folder / LAST).is_file():
                raise InputError(f"{folder}: no {LAST} to take (--checkpoint last)")
            last = load_checkpoint(folder / LAST) if (folder / LAST).is_file() else best
            if last.get("recipe") != recipe.fingerprint():
                raise InputError(f"{folder / LAST}: written with a different recipe than {recipe_path}")
            try:
                chosen = best if checkpoint is Checkpoint.BEST else {**last, **_last_scores(last["history"])}
                states.append(dict(chosen["model"]))
                item = TrainedFold(
                    stage,
                    k,
                    float(chosen["val_dice"]),
                    float(chosen["val_loss"]),
                    int(chosen["epoch"]),
                    int(last["epoch"]),
                    recipe.stages[stage].epochs,
                    best.get("init_from"),
                    int(best.get("training_only", 0)),
                    _forwards(last.get("history", [])),
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
    if source is not None:
        architectures.update(source.architectures)
    validation: dict[str, dict[str, Any]] = {}
    for item in trained:
        validation.setdefault(item.stage.value, {})[f"fold{item.fold}"] = {
            "val_dice": item.val_dice,
            "val_loss": item.val_loss,
            ("best_epoch" if checkpoint is Checkpoint.BEST else "epoch"): item.epoch,
            "epochs_done": item.epochs_done,
            "epochs_planned": item.epochs_planned,
        }
        if item.init_from:
            validation[item.stage.value][f"fold{item.fold}"]["init_from"] = item.init_from
        if item.training_only:
            validation[item.stage.value][f"fold{item.fold}"]["training_only"] = item.training_only
        if item.forward:
            validation[item.stage.value][f"fold{item.fold}"]["forward"] = item.forward
        if checkpoint is Checkpoint.LAST:
            validation[item.stage.value][f"fold{item.fold}"]["checkpoint"] = checkpoint.value
    fold_numbers = {s.value: [t.fold for t in trained if t.stage is s] for s in Stage}
    if source is not None:
        validation.update(source.validation)
        fold_numbers.update(source.fold_numbers)
    metadata = {
        "trained_with": f"brats {__version__}",
        "recipe": recipe.to_dict(),
        "folds": folds.to_dict(),
        # Bundle file <stage>_fold<i> holds the model of k-fold split fold_numbers[stage][i].
        "fold_numbers": fold_numbers,
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
        storage=storage,
    )
    return bundle, trained


@dataclass(frozen=True)
class _Source:
    states: dict[Stage, list[dict[str, Any]]]
    architectures: dict[Stage, Architecture]
    validation: dict[str, Any]
    fold_numbers: dict[str, list[int]]


def _last_scores(history: Any) -> dict[str, Any]:
    """The validation scores of `last.pt`'s epoch, from its history's last record."""
    if not isinstance(history, list) or not history or not isinstance(history[-1], dict):
        raise TypeError("its history has no epoch record")
    return {key: history[-1][key] for key in ("val_dice", "val_loss")}


def _forwards(history: Any) -> str:
    """The distinct forward precisions of a checkpoint's epoch records, in the order first used."""
    if not isinstance(history, list):
        return ""
    names = [row.get("forward") for row in history if isinstance(row, dict)]
    return ", ".join(dict.fromkeys(name for name in names if isinstance(name, str) and name))


def _borrow(borrowed: Borrowed, recipe: Recipe) -> _Source:
    """The borrowed stages' weights and records, after checking that they fit the run's pipeline:
    a torch bundle with the same label convention, ET threshold and region window."""
    from brats_cli.bundle import load_bundle
    from brats_cli.choices import Backend

    other = load_bundle(borrowed.bundle)  # every checksum verified
    manifest = other.manifest
    where = f"{borrowed.bundle}"
    if manifest.backend is not Backend.TORCH:
        raise InputError(f"{where}: stages can only be taken from a torch bundle, not an {manifest.backend.value} one")
    if manifest.labels is not recipe.labels or manifest.et_threshold != recipe.et_threshold:
        raise InputError(
            f"{where}: labels {manifest.labels.value} and ET threshold {manifest.et_threshold} differ from the "
            f"run's recipe ({recipe.labels.value}, {recipe.et_threshold})"
        )
    for stage in borrowed.stages:
        spec = manifest.stages[stage]
        if stage is not Stage.BASE and spec.input_size != recipe.region_window:
            raise InputError(
                f"{where}: stage {stage.value} runs on {spec.input_size} windows, the run's recipe on "
                f"{recipe.region_window}"
            )
    # Metadata is free-form: records of another shape (a hand edit, another tool) are left out.
    records = _table(manifest.metadata.get("validation"))
    states: dict[Stage, list[dict[str, Any]]] = {}
    architectures: dict[Stage, Architecture] = {}
    validation: dict[str, Any] = {}
    fold_numbers: dict[str, list[int]] = {}
    for stage in sorted(borrowed.stages, key=list(Stage).index):
        spec = manifest.stages[stage]
        architectures[stage] = Architecture(spec.width, spec.input_size, spec.levels, spec.norm_groups, spec.threshold)
        states[stage] = [
            _borrowed_state(path, architectures[stage], manifest.storage) for path in other.fold_paths(stage)
        ]
        validation[stage.value] = {"from_bundle": where, **_table(records.get(stage.value))}
        fold_numbers[stage.value] = manifest.fold_numbers(stage)
    return _Source(states, architectures, validation, fold_numbers)


def _borrowed_state(path: Path, architecture: Architecture, storage: Storage) -> dict[str, Any]:
    """A borrowed fold's tensors, refused here, naming the file, unless they are stored as its
    manifest says and load into the model it describes (as `segment` would load them)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = dict(load_file(str(path)))
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path}: cannot load weights ({first_line(error)})") from error
    problem = stored_dtype_problem(state, storage) or state_problem(state, architecture)
    if problem:
        raise InputError(f"{path}: {problem}")
    return state


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
