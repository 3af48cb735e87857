"""How a run segments: one frozen, validated object that travels from the command line (or a
notebook) to the predictors and the pipeline, instead of a flag per layer.

Free of heavy imports, like `choices`, so that building it costs nothing."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from brats_cli.choices import Backend, Device, Ensemble, LabelConvention, Precision
from brats_cli.errors import SettingsError

# Axis flips for test-time augmentation: each entry mirrors the image along these spatial axes
# (0, 1, 2 of a canonical (X, Y, Z) volume); () is the image as it is.
ALL_MIRRORS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


def mirrors_of(axes: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """Every combination of flips along `axes` (nnU-Net's mirroring): 2**len(axes) images, the
    unflipped one first. Axis 0 is left-right in the canonical LPS orientation."""
    chosen = set(axes)
    return tuple(m for m in ALL_MIRRORS if set(m) <= chosen)


@dataclass(frozen=True)
class Settings:
    """Everything a user may choose about a segmentation run besides the weights.

    Strings are accepted where an enum is expected (`Settings(backend="onnx")`), and every value is
    checked here, once: a wrong one is a SettingsError (a ValueError) naming it."""

    backend: Backend = Backend.TORCH
    device: Device = Device.AUTO
    # auto: bf16 where the hardware computes it natively, fp32 elsewhere.
    precision: Precision = Precision.AUTO
    # The fold models to use, by index in the bundle; None: all of them.
    folds: tuple[int, ...] | None = None
    ensemble: Ensemble = Ensemble.MEAN
    # Fewer ET voxels than this become necrosis (paper section 2.6); None: the bundle's value.
    et_threshold: int | None = None
    # Tumour components smaller than this many voxels are removed, all but the largest; None: the
    # bundle's value, 0: none.
    min_component: int | None = None
    # Fill the tumour core's holes in 2D slices as necrosis; None: the bundle's choice.
    fill_core_holes: bool | None = None
    # Output labels; None: by the input's file names (ET = 3 for 2023 names, 4 otherwise).
    labels: LabelConvention | None = None
    # Test-time augmentation: the axis flips whose probabilities are averaged in every stage.
    mirrors: tuple[tuple[int, ...], ...] = ((),)
    # torch only: the folds of a stage as one batched call over stacked weights.
    fuse_folds: bool = False
    # torch only: torch.compile the networks.
    compile: bool = False
    # Also keep the ensemble's WT, TC and ET probabilities (`Prediction.probabilities`), written
    # beside each label map as `<ID>_probabilities.nii.gz` by `segment_case` and `segment_folder`.
    probabilities: bool = False

    def __post_init__(self) -> None:
        for name, kind in (
            ("backend", Backend),
            ("device", Device),
            ("precision", Precision),
            ("ensemble", Ensemble),
        ):
            object.__setattr__(self, name, member_of(kind, getattr(self, name), name))
        if self.labels is not None:
            object.__setattr__(self, "labels", member_of(LabelConvention, self.labels, "labels"))
        if self.folds is not None:
            object.__setattr__(self, "folds", _folds(self.folds))
        for name in ("et_threshold", "min_component"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise SettingsError(f"{name} must be a non-negative integer, got {value!r}")
        object.__setattr__(self, "mirrors", _mirrors(self.mirrors))
        for name in ("fuse_folds", "compile", "probabilities"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fill_core_holes is not None and not isinstance(self.fill_core_holes, bool):
            raise SettingsError(f"fill_core_holes must be True, False or None, got {self.fill_core_holes!r}")
        if self.backend is Backend.TORCH and self.compile and self.fuse_folds:
            raise SettingsError("--compile and --fuse-folds do not go together: choose one")

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some values replaced (validated like a new one)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SettingsError(f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return replace(self, **changes)

    def ignored(self) -> list[str]:
        """What these settings ask for that their backend does not do, one sentence each."""
        notes = []
        if self.backend is Backend.ONNX and self.precision is Precision.BF16:
            notes.append("--precision is ignored with --backend onnx: an ONNX bundle's precision is set at export")
        if self.backend is Backend.ONNX and (self.compile or self.fuse_folds):
            notes.append("--compile and --fuse-folds are for --backend torch; ignored with --backend onnx")
        return notes


def member_of(kind: type[Enum], value: object, name: str) -> Any:
    """`value` (a member or its value) as a member of `kind`; a SettingsError naming `name` and the
    allowed values otherwise."""
    try:
        return kind(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise SettingsError(f"{name} must be one of {choices}, got {value!r}") from None


def _index(value: object) -> int:
    """An integer (numpy's included) as an int; TypeError for anything else, floats and bools
    too: `0.0 in (0, 1, 2)` is true, so a float would pass a membership test."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"{value!r} is not an integer")
    return operator.index(value)  # type: ignore[arg-type]


def _folds(folds: Iterable[int]) -> tuple[int, ...]:
    message = f"folds must be non-negative fold indices like (0, 1), got {folds!r}"
    try:
        chosen = sorted({_index(fold) for fold in folds})
    except TypeError:  # not iterable, or not integers (a string's characters are not)
        raise SettingsError(message) from None
    if not chosen or chosen[0] < 0:
        raise SettingsError(message)
    return tuple(chosen)


def _mirrors(mirrors: Iterable[Iterable[int]]) -> tuple[tuple[int, ...], ...]:
    message = f"mirrors must be a non-empty list of tuples of axes 0, 1, 2 like [(), (0,)], got {mirrors!r}"
    try:
        chosen = [tuple(sorted({_index(axis) for axis in axes})) for axes in mirrors]
    except TypeError:  # not iterable, or not integers (a string's characters are not)
        raise SettingsError(message) from None
    if not chosen or any(axis not in (0, 1, 2) for axes in chosen for axis in axes):
        raise SettingsError(message)
    return tuple(dict.fromkeys(chosen))
