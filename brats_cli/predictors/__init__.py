"""Predictors: the one seam between the pipeline and a backend.

A stage predictor maps a (4, X, Y, Z) float32 image to (K, X, Y, Z) float32 probabilities, one
map per fold model of the stage. Windows, mirroring, ensembling, thresholds and writing are the
pipeline's; a backend only runs networks (`torch_backend`, `onnx_backend`). Tests plug in plain
numpy callables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from brats_cli.bundle import Bundle
from brats_cli.choices import Backend, Stage
from brats_cli.errors import WeightsError
from brats_cli.settings import Settings


class StagePredictor(Protocol):
    """What the pipeline calls, and what a run's log reads of it."""

    @property
    def device(self) -> object:
        """Where the networks run: "cpu", "cuda", or a torch.device (str() gives the name)."""

    @property
    def precision(self) -> str:
        """The arithmetic of the forwards: "fp32", "bf16" or "fp16" (a str Enum)."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


def require_backend(bundle: Bundle, backend: Backend) -> None:
    """A bundle runs only on the backend it was written for."""
    kind = bundle.manifest.backend
    if kind is not backend:
        hint = f"use --backend {kind.value}"
        if kind is Backend.TORCH:
            hint += " (or make an ONNX bundle from it with brats export)"
        raise WeightsError(f"{bundle.root}: this is {_article(kind)} bundle, not {_article(backend)} one; {hint}")


def require_device(settings: Settings) -> None:
    """Refuse a device the backend cannot use here (`--device cuda` without a GPU, or without
    ONNX Runtime's CUDA provider) before anything is loaded or written."""
    if settings.backend is Backend.ONNX:
        from brats_cli.predictors.onnx_backend import onnx_providers

        onnx_providers(settings.device)
    else:
        from brats_cli.predictors.torch_backend import resolve_device

        resolve_device(settings.device)


def _article(backend: Backend) -> str:
    return f"an {backend.value}" if backend is Backend.ONNX else f"a {backend.value}"


def select_folds(available: int, folds: Sequence[int] | None, stage: Stage) -> list[int]:
    """The fold indices of a stage to load: all, or those of `folds` the stage has (a bundle may
    have fewer folds for the base stage than for the regions)."""
    if folds is None:
        return list(range(available))
    chosen = [f for f in folds if f < available]
    bad = [f for f in folds if f >= available or f < 0]
    if bad and not chosen:
        raise WeightsError(
            f"--folds {','.join(map(str, folds))}: stage {stage.value} has no such fold "
            f"(it has {fold_numbers(available)})"
        )
    return chosen


def fold_numbers(count: int) -> str:
    """The fold numbers a stage of `count` folds has, as a user would type them: "fold 0",
    "folds 0, 1", "folds 0-4"."""
    if count == 1:
        return "fold 0"
    if count == 2:
        return "folds 0, 1"
    return f"folds 0-{count - 1}"


def stage_predictors(bundle: Bundle, settings: Settings) -> Mapping[Stage, StagePredictor]:
    """The predictors of the settings' backend; a bundle of the other backend is a WeightsError
    before any case."""
    require_backend(bundle, settings.backend)
    if settings.backend is Backend.ONNX:
        from brats_cli.predictors.onnx_backend import onnx_predictors

        return onnx_predictors(bundle, settings)
    from brats_cli.predictors.torch_backend import torch_predictors

    return torch_predictors(bundle, settings)
