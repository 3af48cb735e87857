"""Training recipes: every hyperparameter of a run, loaded from TOML and validated on load.

A recipe is plain data (frozen dataclasses); each problem in a file is an InputError naming the
file and the field, e.g. `paper.toml: stages.tc.learning_rate must be a number > 0`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from brats_cli.bundle import LEVELS as BUNDLE_LEVELS
from brats_cli.bundle import MAX_WIDTH as BUNDLE_MAX_WIDTH
from brats_cli.bundle import Stage
from brats_cli.errors import InputError, first_line
from brats_cli.labels import LabelConvention
from brats_cli.preprocess import MODEL_GRID

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published separately before Python 3.11
    import tomli as tomllib


class Loss(str, Enum):
    BCE_DICE = "bce_dice"  # paper 2.4: BCE + soft Dice, equal weights (base, WT, TC)
    BCE = "bce"  # paper 2.4: BCE alone for ET, "as it requires more stability"


@dataclass(frozen=True)
class Plateau:
    """ReduceLROnPlateau on the validation loss (paper 3.1)."""

    factor: float = 0.4
    patience: int = 2
    cooldown: int = 2


# The probabilities of the augmentation steps that run in MONAI (`data.library_augmentation`).
LIBRARY_STEPS = (
    "affine_probability",
    "elastic_probability",
    "noise_probability",
    "blur_probability",
    "brightness_probability",
    "contrast_probability",
    "low_resolution_probability",
    "gamma_probability",
)


@dataclass(frozen=True)
class Augmentation:
    """What is done to each training crop (the paper is silent): random flips and a per-channel
    intensity scale and shift, then, each with its own probability, nnU-Net's set (Isensee et al.
    2021, its default probabilities and ranges where a recipe takes them): rotation and scaling
    (one affine resampling), elastic deformation, Gaussian noise, Gaussian blur, brightness,
    contrast, low-resolution simulation and gamma. A probability of 0 leaves that step out."""

    flip_axes: tuple[int, ...] = (0, 1, 2)
    flip_probability: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    affine_probability: float = 0.0
    rotation_degrees: float = 30.0  # about each axis, uniform in [-r, r]
    scaling: float = 0.3  # zoom uniform in [1 - s, 1 + s]
    elastic_probability: float = 0.0
    noise_probability: float = 0.0
    noise_std: float = 0.1  # of the z-scored intensities, uniform in [0, std]
    blur_probability: float = 0.0
    brightness_probability: float = 0.0  # multiply by U(0.75, 1.25)
    contrast_probability: float = 0.0  # stretch around the mean by U(0.75, 1.25)
    low_resolution_probability: float = 0.0  # down to U(0.5, 1) of the resolution and back
    gamma_probability: float = 0.0  # gamma U(0.7, 1.5) on intensities rescaled to [0, 1]

    @property
    def uses_library(self) -> bool:
        """Whether any step beyond flips and scale/shift is on (those run in MONAI)."""
        return any(getattr(self, name) > 0 for name in LIBRARY_STEPS)


@dataclass(frozen=True)
class StageRecipe:
    width: int
    loss: Loss
    learning_rate: float
    epochs: int
    # Folds of the k-fold split this stage trains when `--fold all` (the paper's base is one model).
    train_folds: tuple[int, ...]
    levels: int = 4
    norm_groups: int = 8
    # Base only: the training patch (random position) and the validation crop (centred on the
    # tumour); both default to the full model grid. Region stages use `Recipe.region_window`.
    patch: tuple[int, int, int] | None = None
    validation_size: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    folds: int
    batch_size: int  # global: split evenly over the ranks of a distributed run
    region_window: tuple[int, int, int]
    jitter: int
    stages: dict[Stage, StageRecipe]
    labels: LabelConvention = LabelConvention.BRATS2021
    et_threshold: int = 600
    workers: int = 2
    description: str = ""
    plateau: Plateau = Plateau()
    augmentation: Augmentation = Augmentation()
    # Region stages: the share of training crops placed anywhere in the model grid instead of on
    # the tumour (nnU-Net forces a third onto the foreground and places the rest anywhere), so the
    # region models also see healthy tissue, as they do in a window that localisation misplaced.
    random_crops: float = 0.0

    def crop_size(self, stage: Stage, *, training: bool) -> tuple[int, int, int]:
        """The spatial size of the crops a stage trains (or validates) on."""
        if stage is not Stage.BASE:
            return self.region_window
        spec = self.stages[stage]
        size = spec.patch if training else spec.validation_size
        return size or MODEL_GRID

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = self.labels.value
        # Fields added after runs were recorded are left out at their defaults, so a recorded
        # run's recipe.json and its checkpoints' fingerprints still match the recipe it names.
        for key, default in LATER_FIELDS.items():
            if data[key] == default:
                del data[key]
        augmentation_defaults = asdict(Augmentation())
        for key in LATER_AUGMENTATION_FIELDS:
            if data["augmentation"][key] == augmentation_defaults[key]:
                del data["augmentation"][key]
        # Unset optional sizes are left out, so the dict reads back through `recipe_from_dict`.
        data["stages"] = {
            stage.value: {k: v for k, v in {**asdict(spec), "loss": spec.loss.value}.items() if v is not None}
            for stage, spec in self.stages.items()
        }
        return json.loads(json.dumps(data))  # tuples -> lists, so it equals its JSON round trip

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


LATER_FIELDS: dict[str, Any] = {"random_crops": 0.0}
_FIRST_AUGMENTATION_FIELDS = ("flip_axes", "flip_probability", "intensity_scale", "intensity_shift")
LATER_AUGMENTATION_FIELDS = tuple(n for n in Augmentation.__dataclass_fields__ if n not in _FIRST_AUGMENTATION_FIELDS)


# Upper bounds of a recipe's integers, so that a typo is refused before anything is recorded rather
# than failing as an allocation deep in a run. The widths and levels are those a weights bundle
# may hold (bundle.MAX_WIDTH, bundle.LEVELS); the seed is what numpy's and torch's seeding take.
MAX_WIDTH = BUNDLE_MAX_WIDTH
MAX_LEVELS = BUNDLE_LEVELS[1]
MAX_EPOCHS = 100_000
MAX_FOLDS = 100
MAX_BATCH = 1024
MAX_WORKERS = 256
MAX_SEED = 2**32 - 1


class _Fields:
    """Typed access to one TOML table that reports the file and the dotted field name."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, dict):
            raise InputError(f"{source}: {where or 'the recipe'} must be a table")
        self.data = dict(data)
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> InputError:
        return InputError(f"{self.source}: {self.name(key)} {message}")

    def get(self, key: str, default: Any = ..., *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required or default is ...:
                raise self.fail(key, "is missing")
            return default
        return self.data[key]

    def integer(self, key: str, default: Any = ..., minimum: int = 0, maximum: int | None = None) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum} (got {value!r})")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be an integer from {minimum} to {maximum} (got {value!r})")
        return value

    def number(self, key: str, default: Any = ..., *, low: float = 0.0, high: float | None = None) -> float:
        value = self.get(key, default)
        # NaN compares false with everything, so it is refused by name rather than slipping through.
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= low:
            raise self.fail(key, f"must be a number > {low}, and finite (got {value!r})")
        if high is not None and value > high:
            raise self.fail(key, f"must be <= {high} (got {value!r})")
        return float(value)

    def fraction(self, key: str, default: Any = ...) -> float:
        value = self.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise self.fail(key, f"must be a number in [0, 1] (got {value!r})")
        return float(value)

    def size(self, key: str, default: Any = ..., *, divisor: int = 8) -> tuple[int, int, int] | None:
        value = self.get(key, default)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise self.fail(key, f"must be three positive integers (got {value!r})")
        if any(v % divisor for v in value):
            raise self.fail(key, f"must be multiples of {divisor} (three 2x poolings; got {value})")
        if any(v > g for v, g in zip(value, MODEL_GRID, strict=True)):
            raise self.fail(key, f"must fit in the model grid {list(MODEL_GRID)} (got {value})")
        return (value[0], value[1], value[2])

    def table(self, key: str, *, required: bool = False) -> _Fields:
        return _Fields(self.get(key, ... if required else {}), self.name(key), self.source)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a recipe field (misspelt?)")


def _stage(fields: _Fields, stage: Stage, folds: int) -> StageRecipe:
    levels = fields.integer("levels", 4, minimum=2, maximum=MAX_LEVELS)
    try:
        loss = Loss(fields.get("loss"))
    except ValueError:
        choices = ", ".join(loss.value for loss in Loss)
        raise fields.fail("loss", f"must be one of {choices} (got {fields.data['loss']!r})") from None
    train_folds = fields.get("train_folds", list(range(folds)))
    if (
        not isinstance(train_folds, list)
        or not train_folds
        or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < folds for f in train_folds)
        or len(set(train_folds)) != len(train_folds)
    ):
        raise fields.fail("train_folds", f"must list distinct fold indices in 0..{folds - 1} (got {train_folds!r})")
    divisor = 2 ** (levels - 1)
    patch = validation_size = None
    if stage is Stage.BASE:
        patch = fields.size("patch", None, divisor=divisor)
        validation_size = fields.size("validation_size", None, divisor=divisor)
    recipe = StageRecipe(
        width=fields.integer("width", minimum=1, maximum=MAX_WIDTH),
        loss=loss,
        learning_rate=fields.number("learning_rate", high=1.0),
        epochs=fields.integer("epochs", minimum=1, maximum=MAX_EPOCHS),
        train_folds=tuple(sorted(train_folds)),
        levels=levels,
        norm_groups=fields.integer("norm_groups", 8, minimum=1, maximum=MAX_WIDTH),
        patch=patch,
        validation_size=validation_size,
    )
    fields.finish()
    return recipe


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; every problem is an InputError naming `source` and the field."""
    top = _Fields(data, "", source)
    name = top.get("name")
    if not isinstance(name, str) or not name:
        raise top.fail("name", "must be a non-empty string")
    description = top.get("description", "")
    if not isinstance(description, str):
        raise top.fail("description", "must be a string")
    folds = top.integer("folds", minimum=2, maximum=MAX_FOLDS)
    try:
        labels = LabelConvention(str(top.get("labels", "2021")))
    except ValueError:
        raise top.fail("labels", f"must be '2021' or '2023' (got {top.data['labels']!r})") from None

    plateau_fields = top.table("plateau")
    plateau = Plateau(
        factor=plateau_fields.number("factor", 0.4, high=0.999),
        patience=plateau_fields.integer("patience", 2, maximum=MAX_EPOCHS),
        cooldown=plateau_fields.integer("cooldown", 2, maximum=MAX_EPOCHS),
    )
    plateau_fields.finish()

    augmentation_fields = top.table("augmentation")
    flip_axes = augmentation_fields.get("flip_axes", [0, 1, 2])
    if not isinstance(flip_axes, list) or not all(a in (0, 1, 2) and not isinstance(a, bool) for a in flip_axes):
        raise augmentation_fields.fail("flip_axes", f"must list spatial axes among 0, 1, 2 (got {flip_axes!r})")
    augmentation = Augmentation(
        flip_axes=tuple(sorted(set(flip_axes))),
        flip_probability=augmentation_fields.fraction("flip_probability", 0.5),
        intensity_scale=augmentation_fields.fraction("intensity_scale", 0.1),
        intensity_shift=augmentation_fields.fraction("intensity_shift", 0.1),
        affine_probability=augmentation_fields.fraction("affine_probability", 0.0),
        rotation_degrees=augmentation_fields.number("rotation_degrees", 30.0, high=180.0),
        scaling=augmentation_fields.fraction("scaling", 0.3),
        elastic_probability=augmentation_fields.fraction("elastic_probability", 0.0),
        noise_probability=augmentation_fields.fraction("noise_probability", 0.0),
        noise_std=augmentation_fields.number("noise_std", 0.1, high=10.0),
        blur_probability=augmentation_fields.fraction("blur_probability", 0.0),
        brightness_probability=augmentation_fields.fraction("brightness_probability", 0.0),
        contrast_probability=augmentation_fields.fraction("contrast_probability", 0.0),
        low_resolution_probability=augmentation_fields.fraction("low_resolution_probability", 0.0),
        gamma_probability=augmentation_fields.fraction("gamma_probability", 0.0),
    )
    augmentation_fields.finish()

    stages_fields = top.table("stages", required=True)
    stages = {}
    for stage in Stage:
        stages[stage] = _stage(stages_fields.table(stage.value, required=True), stage, folds)
    stages_fields.finish()
    region_levels = {stages[s].levels for s in Stage if s is not Stage.BASE}
    divisor = 2 ** (max(region_levels) - 1)
    region_window = top.size("region_window", divisor=divisor)
    if region_window is None:  # a JSON null (recipe.json); TOML has none
        raise top.fail("region_window", "must be three positive integers (got None)")
    recipe = Recipe(
        name=name,
        description=description,
        seed=top.integer("seed", maximum=MAX_SEED),
        folds=folds,
        batch_size=top.integer("batch_size", minimum=1, maximum=MAX_BATCH),
        region_window=region_window,
        jitter=top.integer("jitter", 16, maximum=min(MODEL_GRID)),
        stages=stages,
        labels=labels,
        et_threshold=top.integer("et_threshold", 600, maximum=math.prod(MODEL_GRID)),
        workers=top.integer("workers", 2, maximum=MAX_WORKERS),
        plateau=plateau,
        augmentation=augmentation,
        random_crops=top.fraction("random_crops", 0.0),
    )
    top.finish()
    return recipe


# A recipe may name another recipe file it starts from (`extends = "default.toml"`, relative to its
# own folder): its tables are merged into that one's, key by key, so a training round states only
# what it changes. Chains are short; a loop or a long chain is a mistake in the files.
EXTENDS = "extends"
MAX_EXTENDS = 8


def load_recipe(path: Path) -> Recipe:
    """Read and validate a TOML recipe file (and the recipes it `extends`)."""
    path = Path(path)
    return recipe_from_dict(_resolved_table(path, ()), path.name)


def _resolved_table(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    data = _read_toml(path)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise InputError(f"{path}: {EXTENDS} must name a recipe file, got {parent!r}")
    parent_path = path.parent / parent
    here = path.resolve()
    if here in chain or parent_path.resolve() in (*chain, here):
        raise InputError(f"{path}: {EXTENDS} = {parent!r} makes a loop of recipes")
    if len(chain) >= MAX_EXTENDS:
        raise InputError(f"{path}: more than {MAX_EXTENDS} recipes extend one another")
    return _merged(_resolved_table(parent_path, (*chain, here)), data)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override`'s values over `base`'s; tables merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read recipe ({first_line(error)})") from error
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({first_line(error)})") from error
