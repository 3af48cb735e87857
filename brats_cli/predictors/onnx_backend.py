"""The ONNX Runtime backend: a stage's fold graphs (made by `brats export`) as inference
sessions, on the CUDA provider where it is installed and usable, else the CPU one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brats_cli import host
from brats_cli.bundle import Bundle
from brats_cli.choices import Backend, Device, ExportPrecision, Stage
from brats_cli.errors import BratsError, WeightsError, first_line
from brats_cli.predictors import StagePredictor, require_backend, select_folds
from brats_cli.settings import Settings

if TYPE_CHECKING:
    import onnxruntime


def import_onnxruntime() -> Any:
    """onnxruntime, imported only when an ONNX backend is used; a one-line error if it is missing."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BratsError(
            "onnxruntime is not installed: install the 'cpu' extra (pip install 'brats-resunet[cpu]') "
            "or, for CUDA, the 'gpu' extra (pip install 'brats-resunet[gpu]')"
        ) from error
    return onnxruntime


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def onnx_providers(device: Device) -> list[str]:
    """CUDA then CPU, as available: `cpu` forces the CPU provider, `cuda` requires the CUDA one."""
    available = import_onnxruntime().get_available_providers()
    if device is Device.CPU:
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device is Device.CUDA:
        raise BratsError(
            f"--device cuda: ONNX Runtime has no {CUDA_PROVIDER} (it has {', '.join(available)}); "
            "install the 'gpu' extra (onnxruntime-gpu) instead of the 'cpu' one"
        )
    return [CPU_PROVIDER]


def onnx_session(path: Path, providers: Sequence[str]) -> onnxruntime.InferenceSession:
    """An inference session using every core this process may run on and all graph optimisations."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = host.usable_cpus()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # fp32 means fp32 on GPUs too (ONNX Runtime would otherwise use TF32 for float32 convolutions).
    chosen: list[Any] = [(p, {"use_tf32": 0}) if p == CUDA_PROVIDER else p for p in providers]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise WeightsError(f"{path}: ONNX Runtime cannot load this model ({first_line(error)})") from error


class OnnxStagePredictor:
    """The K fold graphs of one stage as ONNX Runtime sessions, run one after the other."""

    def __init__(
        self,
        sessions: Sequence[onnxruntime.InferenceSession],
        input_size: tuple[int, int, int],
        precision: ExportPrecision = ExportPrecision.FP32,
    ) -> None:
        self.sessions = list(sessions)
        self.input_size = tuple(input_size)
        self.precision = precision
        provider = self.sessions[0].get_providers()[0]
        self.device = "cuda" if provider == CUDA_PROVIDER else "cpu"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if tuple(image.shape) != (4, *self.input_size):
            raise ValueError(f"this ONNX stage takes (4, {self.input_size}) images, got {image.shape}")
        x = np.ascontiguousarray(image, dtype=np.float32)[None]
        outputs = [session.run(None, {session.get_inputs()[0].name: x})[0][0] for session in self.sessions]
        return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def _check_graph(session: onnxruntime.InferenceSession, path: Path, input_size: tuple[int, int, int]) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = [1, 4, *input_size]
    if len(inputs) != 1 or len(outputs) != 1:
        raise WeightsError(f"{path}: expected one input and one output, the graph has {len(inputs)} and {len(outputs)}")
    shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    if any(s is not None and s != e for s, e in zip(shape, expected, strict=False)) or len(shape) != 5:
        raise WeightsError(f"{path}: input shape {inputs[0].shape} does not match the manifest's {expected}")
    if inputs[0].type != "tensor(float)" or outputs[0].type != "tensor(float)":
        raise WeightsError(f"{path}: input and output must be float32 tensors")


def _export_precision(bundle: Bundle) -> ExportPrecision:
    """The precision `brats export` recorded in the free-form metadata; fp32 where it recorded none."""
    record = bundle.manifest.metadata.get("onnx")
    value = record.get("precision", "fp32") if isinstance(record, dict) else "fp32"
    try:
        return ExportPrecision(value)
    except ValueError:
        choices = ", ".join(p.value for p in ExportPrecision)
        raise WeightsError(f"{bundle.root}: metadata.onnx.precision must be one of {choices}, got {value!r}") from None


def onnx_predictors(bundle: Bundle, settings: Settings) -> Mapping[Stage, StagePredictor]:
    """ONNX Runtime sessions for an ONNX bundle (see `brats export`); checksums are load_bundle's."""
    require_backend(bundle, Backend.ONNX)
    device = settings.device
    providers = onnx_providers(device)
    precision = _export_precision(bundle)
    predictors: dict[Stage, StagePredictor] = {}
    for stage in Stage:
        spec = bundle.manifest.stages[stage]
        paths = bundle.fold_paths(stage)
        sessions = []
        for index in select_folds(len(paths), settings.folds, stage):
            session = onnx_session(paths[index], providers)
            if device is Device.CUDA and CUDA_PROVIDER not in session.get_providers():
                raise BratsError(
                    f"--device cuda: ONNX Runtime could not start {CUDA_PROVIDER} for {paths[index]} "
                    "(CUDA or cuDNN libraries missing?)"
                )
            _check_graph(session, paths[index], spec.input_size)
            sessions.append(session)
        predictors[stage] = OnnxStagePredictor(sessions, spec.input_size, precision)
    return predictors
