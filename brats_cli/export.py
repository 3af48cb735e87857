"""Export a torch weights bundle to an ONNX bundle, verified against PyTorch.

Every fold model of every stage becomes `<stage>_fold<k>.onnx`: input `image` (1, 4, X, Y, Z)
float32 at the stage's fixed `input_size`, output `probabilities` (1, 1, X, Y, Z) float32. The
sigmoid is part of the graph, so an ONNX predictor returns probabilities as they come.

Two choices that keep ONNX Runtime within the stated tolerance of PyTorch:
- GroupNorm is exported as explicit reductions, not as the legacy exporter's InstanceNormalization:
  ONNX Runtime's InstanceNormalization sums millions of voxels in one float32 accumulator (errors
  of 5e-5 per layer on 64^3, 1e-3 on 192x192x160, which compound to 4e-4 in probabilities at width 4),
  and it is slower than the reductions. Here the mean and mean square are summed in two levels
  (over the last axes, then over the rest), which is as accurate as PyTorch's kernel.
- In the fp16 export the convolutions run in half precision but every GroupNorm and the sigmoid run
  in float32 (as torch.autocast does): the variance of millions of voxels does not survive fp16.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brats_cli.bundle import (
    WEIGHT_SUFFIX,
    Bundle,
    FoldFile,
    Manifest,
    Stage,
    StageSpec,
    external_data_files,
    load_bundle,
    sha256_file,
    write_manifest,
)
from brats_cli.choices import Backend, ExportPrecision
from brats_cli.errors import ExportError, WeightsError, first_line
from brats_cli.files import atomic_path, remove_stale_staging, staging_folder

if TYPE_CHECKING:
    import torch

MIN_OPSET = 17
# The TorchScript exporter (the one that needs no onnxscript) goes up to opset 20.
MAX_OPSET = 20
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# Max absolute difference on probabilities between ONNX Runtime and PyTorch (float32 reference).
TOLERANCE = {
    ExportPrecision.FP32: 1e-4,
    # fp16 keeps 11 significant bits (unit roundoff 4.9e-4); through ~40 convolutions the logits
    # drift by a few 1e-3 and a probability by up to a quarter of that times the slope. 1e-2 still
    # moves a 0.5 threshold decision only for voxels already within 0.01 of it.
    ExportPrecision.FP16: 1e-2,
}


@dataclass(frozen=True)
class Verification:
    stage: Stage
    fold: int
    file: str
    max_abs_difference: float
    tolerance: float
    provider: str

    @property
    def passed(self) -> bool:
        return self.max_abs_difference <= self.tolerance


@dataclass
class ExportResult:
    bundle: Bundle
    verifications: list[Verification] = field(default_factory=list)


def _group_norm_module() -> type:
    from torch import nn

    from brats_cli.model import group_norm_by_reductions

    class ReducedGroupNorm(nn.Module):
        """nn.GroupNorm as two-level float32 reductions (see the module docstring for why)."""

        def __init__(self, norm: nn.GroupNorm) -> None:
            super().__init__()
            self.groups = norm.num_groups
            self.eps = norm.eps
            self.weight = nn.Parameter(norm.weight.detach().float().clone(), requires_grad=False)
            self.bias = nn.Parameter(norm.bias.detach().float().clone(), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return group_norm_by_reductions(x, self.groups, self.weight, self.bias, self.eps)

    return ReducedGroupNorm


def exportable(models: Sequence[torch.nn.Module], precision: ExportPrecision) -> torch.nn.Module:
    """The graph that is exported: image (1,4,X,Y,Z) float32 -> (1,K,X,Y,Z) float32 probabilities
    of the K models (K = 1 per file; more when folds are fused for measurement)."""
    import torch
    from torch import nn

    reduced = _group_norm_module()
    dtype = torch.float16 if precision is ExportPrecision.FP16 else torch.float32

    def convert(model: nn.Module) -> nn.Module:
        model = copy.deepcopy(model).eval()
        norms = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.GroupNorm)]
        model = model.to(dtype)
        for name, module in norms:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, reduced(module))
        return model

    class Exported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.folds = nn.ModuleList(convert(m) for m in models)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.to(dtype)
            return torch.cat([torch.sigmoid(model(x).float()) for model in self.folds], dim=1)

    return Exported().eval()


TRACE_SIZE = (16, 16, 16)


def export_model(
    models: Sequence[torch.nn.Module],
    input_size: tuple[int, int, int],
    path: Path,
    *,
    precision: ExportPrecision = ExportPrecision.FP32,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
) -> None:
    """Write one ONNX graph of `models` to `path` and check it with onnx.checker.

    The graph is traced on a small image with symbolic spatial axes (tracing runs the network once,
    which at 192x192x160 costs more than the export itself), then, unless `dynamic`, its input and
    output are pinned to `input_size` so ONNX Runtime plans every buffer for that size."""
    import onnx
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} not supported: choose {MIN_OPSET} to {MAX_OPSET}")
    module = exportable(models, precision)
    example = torch.zeros(1, 4, *TRACE_SIZE, dtype=torch.float32)
    axes = {2: "x", 3: "y", 4: "z"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript;
        # this one exports ResUNet3D exactly and needs nothing more.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    if not dynamic:
        for value, channels in ((graph.graph.input[0], 4), (graph.graph.output[0], len(models))):
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, (1, channels, *input_size), strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    with atomic_path(path) as temporary:
        onnx.save(graph, str(temporary))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"{path.name}: exported graph fails onnx.checker ({error})") from error


def torch_probabilities(models: Sequence[torch.nn.Module], image: np.ndarray) -> np.ndarray:
    """The float32 PyTorch reference on CPU: (1,4,X,Y,Z) -> (1,K,X,Y,Z) probabilities."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(image)
        return torch.cat([torch.sigmoid(m.float().eval()(x)) for m in models], dim=1).numpy()


def verification_providers(precision: ExportPrecision) -> list[str]:
    """fp32 is checked on the CPU provider (exact float32 everywhere); fp16 where it is meant to run,
    CUDA, if this ONNX Runtime has it, else the CPU provider."""
    import onnxruntime

    if precision is ExportPrecision.FP16 and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def verify_model(
    path: Path,
    models: Sequence[torch.nn.Module],
    input_size: tuple[int, int, int],
    precision: ExportPrecision,
    *,
    seed: int = 0,
) -> tuple[float, str]:
    """Max absolute difference of probabilities, ONNX Runtime vs PyTorch, on one random image
    (standard normal, like a normalised MRI), and the provider that ran the graph."""
    from brats_cli.predictors.onnx_backend import onnx_session

    image = np.random.default_rng(seed).standard_normal((1, 4, *input_size), dtype=np.float32)
    session = onnx_session(path, verification_providers(precision))
    onnx_output = session.run([OUTPUT_NAME], {INPUT_NAME: image})[0]
    reference = torch_probabilities(models, image)
    if onnx_output.shape != reference.shape:
        raise ExportError(f"{path.name}: output shape {onnx_output.shape}, PyTorch gives {reference.shape}")
    return float(np.abs(onnx_output.astype(np.float32) - reference).max()), session.get_providers()[0]


def export_bundle(
    source: Bundle,
    out: Path,
    *,
    precision: ExportPrecision = ExportPrecision.FP32,
    opset: int = DEFAULT_OPSET,
    on_model: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export every fold model of a torch bundle into a new ONNX bundle at `out`, verifying each.

    The bundle is built in a hidden sibling folder and renamed to `out` only when every model has
    passed, so `out` is either a complete verified bundle or untouched. `out` must not exist or be an
    empty folder. A model beyond tolerance raises ExportError naming it and its difference."""
    if source.manifest.backend is not Backend.TORCH:
        kind = source.manifest.backend.value
        raise ExportError(f"{source.root}: is already an {kind} bundle; export needs a torch one")
    out = Path(out)
    staging = _staging_for(out)
    verifications: list[Verification] = []
    try:
        stages = {
            stage: _export_stage(source, stage, staging, out, precision, opset, on_model, verifications)
            for stage in Stage
        }
        write_manifest(staging, _onnx_manifest(source, stages, verifications, precision, opset))
        load_bundle(staging)
        try:
            os.replace(staging, out)
        except OSError as error:
            raise ExportError(f"{out}: cannot move the exported bundle into place ({first_line(error)})") from error
    except OSError as error:  # a disk filling up, a folder made read-only
        shutil.rmtree(staging, ignore_errors=True)
        where = error.filename or staging
        raise ExportError(f"{where}: cannot write ({first_line(error)}); nothing was written to {out}") from error
    except BaseException:  # including a signal turned into Interrupted by the command
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        bundle = load_bundle(out)
    except WeightsError as error:
        raise ExportError(f"{out}: exported bundle does not load back ({error})") from error
    return ExportResult(bundle, verifications)


def _staging_for(out: Path) -> Path:
    """A fresh, empty hidden sibling of `out` to build the bundle in; refuses an `out` that is not
    new or an empty folder, and removes what killed exports left beside it (never a live one's)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty folder; choose a new --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"{out.parent}: cannot create ({first_line(error)})") from error
    remove_stale_staging(out)
    staging = staging_folder(out)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
    except OSError as error:
        raise ExportError(f"{staging.parent}: cannot write ({first_line(error)})") from error
    return staging


def _export_stage(
    source: Bundle,
    stage: Stage,
    staging: Path,
    out: Path,
    precision: ExportPrecision,
    opset: int,
    on_model: Callable[[str], None] | None,
    verifications: list[Verification],
) -> StageSpec:
    """Every fold model of one stage exported into `staging` and verified against PyTorch (each
    check appended to `verifications`); the stage's manifest entry for the ONNX files."""
    from brats_cli.predictors.torch_backend import load_torch_models

    spec = source.manifest.stages[stage]
    folds: list[FoldFile] = []
    for index, model in enumerate(load_torch_models(source, stage)):
        file = f"{stage.value}_fold{index}{WEIGHT_SUFFIX[Backend.ONNX]}"
        if on_model:
            on_model(file)
        path = staging / file
        export_model([model], spec.input_size, path, precision=precision, opset=opset)
        difference, provider = verify_model(path, [model], spec.input_size, precision)
        check = Verification(stage, index, file, difference, TOLERANCE[precision], provider)
        verifications.append(check)
        if not check.passed:
            raise ExportError(
                f"{stage.value} fold {index} ({file}): ONNX Runtime differs from PyTorch by "
                f"{difference:.3g} in probability, more than the {precision.value} tolerance "
                f"{check.tolerance:g}; nothing was written to {out}"
            )
        # A graph too large for one protobuf keeps tensors in files beside it: checksum them too.
        data = tuple(FoldFile(name, sha256_file(staging / name)) for name in external_data_files(path))
        folds.append(FoldFile(file, sha256_file(path), data))
    return StageSpec(spec.width, spec.input_size, tuple(folds), spec.levels, spec.norm_groups, spec.threshold)


def _onnx_manifest(
    source: Bundle,
    stages: dict[Stage, StageSpec],
    verifications: list[Verification],
    precision: ExportPrecision,
    opset: int,
) -> Manifest:
    """The exported bundle's manifest: the source's settings and metadata, the ONNX files, and
    what the export was and how far each stage's models differ from PyTorch."""
    metadata: dict[str, Any] = dict(source.manifest.metadata)
    metadata["onnx"] = {
        "source": source.manifest.name or str(source.root),
        "opset": opset,
        "precision": precision.value,
        "input": f"{INPUT_NAME}: (1, 4, X, Y, Z) float32 at the stage's input_size",
        "output": f"{OUTPUT_NAME}: (1, 1, X, Y, Z) float32, sigmoid included",
        "tolerance": TOLERANCE[precision],
        "max_abs_difference": {
            stage.value: [v.max_abs_difference for v in verifications if v.stage is stage] for stage in Stage
        },
    }
    return Manifest(
        backend=Backend.ONNX,
        labels=source.manifest.labels,
        stages=stages,
        et_threshold=source.manifest.et_threshold,
        min_component=source.manifest.min_component,
        fill_core_holes=source.manifest.fill_core_holes,
        name=source.manifest.name,
        description=source.manifest.description,
        metadata=metadata,
    )
