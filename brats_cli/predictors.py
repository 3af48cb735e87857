"""Predictors: the one seam between the pipeline and a backend.

A stage predictor maps a (4, X, Y, Z) float32 image to (K, X, Y, Z) float32 probabilities, one
map per fold model of the stage. Windows, ensembling, thresholds and writing are the pipeline's;
a backend only runs networks. Tests plug in plain numpy callables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from brats_cli.bundle import Bundle, Stage
from brats_cli.choices import Backend, Device, Precision
from brats_cli.errors import WeightsError

if TYPE_CHECKING:
    import torch


class StagePredictor(Protocol):
    def __call__(self, image: np.ndarray) -> np.ndarray: ...


def resolve_device(device: Device) -> str:
    import torch

    if device is Device.CUDA and not torch.cuda.is_available():
        raise WeightsError("--device cuda: no CUDA GPU is visible to PyTorch")
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.value


def resolve_precision(precision: Precision, device: str) -> Precision:
    """`auto` is bf16 on GPUs with native bf16 (Ampere and newer), fp32 elsewhere."""
    if precision is not Precision.AUTO:
        return precision
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return Precision.BF16
    return Precision.FP32


class TorchStagePredictor:
    """The K fold models of one stage, run one after the other in inference mode."""

    def __init__(self, models: Sequence[torch.nn.Module], device: str, precision: Precision) -> None:
        import torch

        self.device = torch.device(device)
        self.precision = precision
        # channels-last 3D lets oneDNN and cuDNN pick their fastest convolution layouts.
        self.models = [m.to(self.device).eval().to(memory_format=torch.channels_last_3d) for m in models]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        outputs = []
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision is Precision.BF16),
        ):
            for model in self.models:
                outputs.append(torch.sigmoid(model(x).float())[0, 0])
        return torch.stack(outputs).cpu().numpy()


def load_torch_models(bundle: Bundle, stage: Stage, folds: Sequence[int] | None = None) -> list[torch.nn.Module]:
    """The stage's fold models with their weights, loaded from safetensors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from brats_cli.model import ResUNet3D

    if bundle.manifest.backend is not Backend.TORCH:
        kind = bundle.manifest.backend.value
        raise WeightsError(f"{bundle.root}: this is an {kind} bundle, not a torch one; use --backend {kind}")
    spec = bundle.manifest.stages[stage]
    paths = bundle.fold_paths(stage)
    chosen = select_folds(len(paths), folds, stage)
    models = []
    for index in chosen:
        model = ResUNet3D(**spec.model_kwargs())
        try:
            state = load_file(str(paths[index]))
            model.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError) as error:
            raise WeightsError(f"{paths[index]}: cannot load weights ({str(error).splitlines()[0]})") from error
        models.append(model)
    return models


def select_folds(available: int, folds: Sequence[int] | None, stage: Stage) -> list[int]:
    if folds is None:
        return list(range(available))
    chosen = [f for f in folds if f < available]
    bad = [f for f in folds if f >= available or f < 0]
    if bad and not chosen:
        raise WeightsError(f"stage {stage.value}: folds {bad} not in the bundle (it has {available})")
    return chosen


def torch_predictors(
    bundle: Bundle,
    *,
    device: Device = Device.AUTO,
    precision: Precision = Precision.FP32,
    folds: Sequence[int] | None = None,
) -> Mapping[Stage, StagePredictor]:
    resolved = resolve_device(device)
    chosen = resolve_precision(precision, resolved)
    return {stage: TorchStagePredictor(load_torch_models(bundle, stage, folds), resolved, chosen) for stage in Stage}
