"""Predictors: the one seam between the pipeline and a backend.

A stage predictor maps a (4, X, Y, Z) float32 image to (K, X, Y, Z) float32 probabilities, one
map per fold model of the stage. Windows, ensembling, thresholds and writing are the pipeline's;
a backend only runs networks. Tests plug in plain numpy callables.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from brats_cli.bundle import Bundle, Stage
from brats_cli.choices import Backend, Device, ExportPrecision, Precision
from brats_cli.errors import BratsError, WeightsError, first_line

if TYPE_CHECKING:
    import onnxruntime
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


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo's flags.
    Without it, bf16 convolutions are emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cgroup_cpu_quota(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` line ("<quota> <period>", quota "max" = no limit),
    e.g. 2.5 for `docker run --cpus 2.5`; None when unlimited or unreadable."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(cpu_max_path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may actually use: its affinity mask (taskset, a container's cpuset),
    capped by the cgroup's CPU quota (`docker run --cpus`), which the mask does not show.
    os.cpu_count() counts the whole machine and would oversubscribe a container."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota = cgroup_cpu_quota(cpu_max_path.read_text())
    except OSError:
        quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def auto_precision_reason(device: object) -> str:
    """Why `--precision auto` chose what it did, for the log; `device` is "cpu", "cuda", "cuda:1"
    or a torch.device (which never equals a string)."""
    import torch

    if str(device).split(":")[0] == "cuda":
        name = torch.cuda.get_device_name(torch.device(str(device)))
        return f"{name} {'computes' if torch.cuda.is_bf16_supported() else 'lacks'} bf16"
    if cpu_has_native_bf16():
        return "CPU has AVX-512 BF16 or AMX"
    return "CPU lacks AVX-512 BF16 and AMX"


def resolve_precision(precision: Precision, device: str) -> Precision:
    """`auto` is bf16 where the hardware computes it natively (Ampere and newer GPUs, CPUs with
    AVX-512 BF16 or AMX), fp32 elsewhere."""
    if precision is not Precision.AUTO:
        return precision
    import torch

    if device == "cuda":
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP32
    return Precision.BF16 if cpu_has_native_bf16() else Precision.FP32


class TorchStagePredictor:
    """The K fold models of one stage in inference mode: one after the other, or (`fuse_folds`) as
    one call over their stacked weights (`torch.func.vmap`), which turns every convolution into one
    grouped convolution with K times the channels."""

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        device: str,
        precision: Precision,
        *,
        channels_last: bool | None = None,
        fuse_folds: bool = False,
        compile: bool = False,
    ) -> None:
        import torch

        if compile and fuse_folds:
            raise BratsError("--compile and --fuse-folds do not go together: choose one")
        if compile and not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
            # Inductor's CPU code and Triton's kernel launchers are built with the system's C compiler.
            raise BratsError("--compile needs a C compiler (cc, gcc or clang) on PATH; install one or drop --compile")
        self.device = torch.device(device)
        self.precision = precision
        if self.device.type == "cuda":
            # Fixed input sizes per stage: cuDNN's autotuned algorithms are reused for every case.
            torch.backends.cudnn.benchmark = True
            # PyTorch lets cuDNN round fp32 convolution inputs to TF32 (10-bit mantissa) by default;
            # fp32 here means fp32, as in the ONNX Runtime CUDA provider (use_tf32 0).
            torch.backends.cudnn.allow_tf32 = precision is not Precision.FP32
        else:
            # PyTorch starts one thread per physical core of the machine, whatever the container
            # or taskset allows; more threads than granted cores makes every convolution wait.
            torch.set_num_threads(usable_cpus())
        # Activation layout, by what measured faster (None: per device): channels-last 3D on the
        # CPU, where oneDNN's convolutions want it (0.80x contiguous fp32, bench/cpu_pipeline.py);
        # contiguous on CUDA, where channels-last made a bf16 forward slower (H100: 177.6 against
        # 145.5 ms at width 64, 204.1 against 176.3 ms for the base model, bench/gpu_profile.py:
        # its GroupNorm layout copies cost more than cuDNN's conversions in the contiguous run),
        # and where the network's GroupNorm reshapes need it. Contiguous on the CPU is the plain
        # baseline bench/cpu_pipeline.py measures against.
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.models = [m.to(self.device).eval().to(memory_format=self.memory_format) for m in models]
        # torch.compile (inductor): one compilation per network shape, shared by the folds (they
        # are instances of one class, and their weights are graph inputs), paid at the first case.
        # H100, width 64, bf16: 19.8 against 44.9 ms a forward after 21 s of compilation
        # (bench/gpu_profile.py --compile, 2026-11-27).
        self.compile_error: str | None = None
        self.runners = [torch.compile(m) for m in self.models] if compile else self.models
        self.fused = None
        if fuse_folds and len(self.models) > 1:
            import copy

            from torch.func import functional_call, stack_module_state

            params, buffers = stack_module_state(self.models)
            # Autocast does not reach inside torch.func.vmap: bf16 here means bf16 weights and
            # activations throughout (GroupNorm included), not autocast's fp32 normalisation.
            dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float32
            params = {name: value.to(dtype) for name, value in params.items()}
            skeleton = copy.deepcopy(self.models[0]).to("meta")

            def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
                return functional_call(skeleton, (p, b), (x,))

            batched = torch.vmap(forward, in_dims=(0, 0, None))
            self.fused = lambda x: batched(params, buffers, x.to(dtype))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(self.device)
        x = x.contiguous(memory_format=self.memory_format)
        outputs = []
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision is Precision.BF16),
        ):
            if self.fused is not None:
                return torch.sigmoid(self.fused(x).float())[:, 0, 0].cpu().numpy()
            if self.compile_error:
                raise BratsError(self.compile_error)
            for model in self.runners:
                try:
                    outputs.append(torch.sigmoid(model(x).float())[0, 0])
                except torch._dynamo.exc.TorchDynamoException as error:
                    # A compilation that failed once fails for every case: one line each, no retry.
                    first = first_line(error)
                    self.compile_error = f"torch.compile failed ({first[:200]}); run without --compile"
                    raise BratsError(self.compile_error) from error
        return torch.stack(outputs).cpu().numpy()


def load_torch_models(bundle: Bundle, stage: Stage, folds: Sequence[int] | None = None) -> list[torch.nn.Module]:
    """The stage's fold models with their weights, loaded from safetensors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from brats_cli.model import ResUNet3D

    require_backend(bundle, Backend.TORCH)
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
            raise WeightsError(f"{paths[index]}: cannot load weights ({first_line(error)})") from error
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
    fuse_folds: bool = False,
    compile: bool = False,
) -> Mapping[Stage, StagePredictor]:
    resolved = resolve_device(device)
    chosen = resolve_precision(precision, resolved)
    return {
        stage: TorchStagePredictor(
            load_torch_models(bundle, stage, folds), resolved, chosen, fuse_folds=fuse_folds, compile=compile
        )
        for stage in Stage
    }


def require_backend(bundle: Bundle, backend: Backend) -> None:
    """A bundle runs only on the backend it was written for."""
    kind = bundle.manifest.backend
    if kind is not backend:
        hint = f"use --backend {kind.value}"
        if kind is Backend.TORCH:
            hint += " (or make an ONNX bundle from it with brats export)"
        raise WeightsError(f"{bundle.root}: this is {_article(kind)} bundle, not {_article(backend)} one; {hint}")


def _article(backend: Backend) -> str:
    return f"an {backend.value}" if backend is Backend.ONNX else f"a {backend.value}"


def import_onnxruntime() -> Any:
    """onnxruntime, imported only when an ONNX backend is used; a one-line error if it is missing."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BratsError(
            "onnxruntime is not installed: install the 'cpu' extra (pip install 'brats[cpu]') "
            "or, for CUDA, the 'gpu' extra (pip install 'brats[gpu]')"
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
    options.intra_op_num_threads = usable_cpus()
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


def onnx_predictors(
    bundle: Bundle,
    *,
    device: Device = Device.AUTO,
    folds: Sequence[int] | None = None,
) -> Mapping[Stage, StagePredictor]:
    """ONNX Runtime sessions for an ONNX bundle (see `brats export`); checksums are load_bundle's."""
    require_backend(bundle, Backend.ONNX)
    providers = onnx_providers(device)
    precision = ExportPrecision(str(bundle.manifest.metadata.get("onnx", {}).get("precision", "fp32")))
    predictors: dict[Stage, StagePredictor] = {}
    for stage in Stage:
        spec = bundle.manifest.stages[stage]
        paths = bundle.fold_paths(stage)
        sessions = []
        for index in select_folds(len(paths), folds, stage):
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


def stage_predictors(
    bundle: Bundle,
    backend: Backend,
    *,
    device: Device = Device.AUTO,
    precision: Precision = Precision.FP32,
    folds: Sequence[int] | None = None,
    fuse_folds: bool = False,
    compile: bool = False,
) -> Mapping[Stage, StagePredictor]:
    """The predictors of `backend`; a bundle of the other backend is a WeightsError before any case."""
    require_backend(bundle, backend)
    if backend is Backend.ONNX:
        return onnx_predictors(bundle, device=device, folds=folds)
    return torch_predictors(
        bundle, device=device, precision=precision, folds=folds, fuse_folds=fuse_folds, compile=compile
    )
