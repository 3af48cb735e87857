"""The PyTorch backend: a stage's fold models as one predictor, on the CPU or a CUDA GPU, in
fp32 or bf16 autocast, optionally fused (vmap over stacked weights) or compiled."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from brats_cli import host
from brats_cli.bundle import Bundle, stored_dtype_problem
from brats_cli.choices import Backend, Device, Precision, Stage
from brats_cli.errors import BratsError, WeightsError, first_line
from brats_cli.predictors import StagePredictor, require_backend, select_folds
from brats_cli.settings import Settings

if TYPE_CHECKING:
    import torch


def resolve_device(device: Device) -> str:
    import torch

    if device is Device.CUDA and not torch.cuda.is_available():
        raise WeightsError("--device cuda: no CUDA GPU is visible to PyTorch")
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.value


def auto_precision_reason(device: object) -> str:
    """Why `--precision auto` chose what it did, for the log; `device` is "cpu", "cuda", "cuda:1"
    or a torch.device (which never equals a string)."""
    import torch

    if str(device).split(":")[0] == "cuda":
        name = torch.cuda.get_device_name(torch.device(str(device)))
        return f"{name} {'computes' if torch.cuda.is_bf16_supported() else 'lacks'} bf16"
    if host.cpu_has_native_bf16():
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
    return Precision.BF16 if host.cpu_has_native_bf16() else Precision.FP32


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

        if compile and fuse_folds:  # Settings refuses this pair first; here for direct callers
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
            torch.set_num_threads(host.usable_cpus())
        # Activation layout (None: by device and precision; bench/RESULTS.md): channels-last 3D for
        # float32 on the CPU, where oneDNN's convolutions want it and the network's GroupNorm keeps
        # its digits in that layout. Contiguous under CPU bf16 autocast, whose GroupNorm runs
        # PyTorch's float32 kernel: in channels-last that kernel loses digits (1494 voxels across
        # 0.5 on a real case's base model), and the contiguous layout cured it at less cost than
        # the network's own function ('GroupNorm on the CPU in channels-last'). Contiguous on CUDA,
        # where the GroupNorm reshapes need it and channels-last's copies cost more than cuDNN's.
        if channels_last is None:
            channels_last = self.device.type == "cpu" and precision is Precision.FP32
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        # nn.Module.to takes memory_format; its type stubs do not say so.
        self.models = [m.to(self.device).eval().to(memory_format=self.memory_format) for m in models]  # type: ignore[call-overload]
        # torch.compile (inductor): one compilation per network shape, shared by the folds (they
        # are instances of one class, and their weights are graph inputs), paid at the first case
        # (its cost and gain: bench/RESULTS.md, "torch.compile").
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
    models: list[torch.nn.Module] = []
    for index in chosen:
        model = ResUNet3D(**spec.model_kwargs())
        try:
            state = load_file(str(paths[index]))
            model.load_state_dict(state, strict=True)  # float16-stored weights are cast to float32 here
        except (SafetensorError, RuntimeError, OSError) as error:
            raise WeightsError(f"{paths[index]}: cannot load weights ({first_line(error)})") from error
        problem = stored_dtype_problem(state, bundle.manifest.storage)
        if problem:
            raise WeightsError(f"{paths[index]}: {problem}")
        models.append(model)
    return models


def torch_predictors(bundle: Bundle, settings: Settings) -> Mapping[Stage, StagePredictor]:
    """One TorchStagePredictor per stage, on the settings' device and in their precision."""
    resolved = resolve_device(settings.device)
    chosen = resolve_precision(settings.precision, resolved)
    return {
        stage: TorchStagePredictor(
            load_torch_models(bundle, stage, settings.folds),
            resolved,
            chosen,
            fuse_folds=settings.fuse_folds,
            compile=settings.compile,
        )
        for stage in Stage
    }
