"""Where a paper-width forward spends its GPU time: bf16 autocast with contiguous (NCDHW) and
channels-last (NDHWC) activations, GroupNorm as PyTorch's kernel and as the network's reductions
(brats_cli.model.GroupNorm), side by side; the heaviest CUDA kernels of each by torch.profiler;
and K folds run one by one against one vmapped call. Random weights.

    python -m bench.gpu_profile [--stage region|base] [--folds 5] [--top 12]
    python -m bench.gpu_profile --compile   # torch.compile (inductor) against eager, both GroupNorms
    python -m bench.gpu_profile --smoke     # tiny sizes on the CPU, to check the script itself

Prints tables; no pass/fail. bench/gpu.py times the fp32 / TF32 / bf16 variants.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.flops import forward_flop
from bench.gpu import measure, sync
from brats_cli.choices import Precision
from brats_cli.model import ResUNet3D
from brats_cli.predictors.torch_backend import TorchStagePredictor

STAGES = {"base": (24, (192, 192, 160)), "region": (64, (128, 128, 128))}
NORMS = ("reductions", "native")  # brats_cli.model.GroupNorm as float32 reductions, or PyTorch's kernel


def build_model(width: int, norm: str, device: torch.device) -> ResUNet3D:
    """The same random weights (seed 0) for either GroupNorm."""
    torch.manual_seed(0)
    return ResUNet3D(width=width, reduce_norm_on_cuda=norm == "reductions").to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="region")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--compile", action="store_true", help="only time torch.compile against eager")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU to check the script")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cudnn.benchmark = True
    width, size = (4, (32, 32, 32)) if args.smoke else STAGES[args.stage]
    flop = forward_flop(ResUNet3D(width=width), size)
    torch.manual_seed(0)
    x = torch.randn(1, 4, *size, device=device)
    name = "CPU" if args.smoke else torch.cuda.get_device_name(device)
    print(f"{name}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}")
    if args.compile:
        compare_compiled(width, x, device, args.repeats, f"{args.stage} w{width} {size} bf16 contiguous")
        return
    variants = [
        (norm, layout, memory_format)
        for norm in NORMS
        for layout, memory_format in (
            ("contiguous", torch.contiguous_format),
            ("channels-last", torch.channels_last_3d),
        )
    ]
    for norm, layout, memory_format in variants:
        model = build_model(width, norm, device).to(memory_format=memory_format)
        inp = x.contiguous(memory_format=memory_format)

        def forward(model=model, inp=inp) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return model(inp)

        with torch.inference_mode():
            seconds = measure(forward, device, args.repeats)
            rate = flop / seconds / 1e12
            print(
                f"\n{args.stage} w{width} {size} bf16 {layout}, GroupNorm {norm}: "
                f"{seconds * 1000:.1f} ms, {rate:.1f} TFLOP/s"
            )
            activity = ProfilerActivity.CPU if args.smoke else ProfilerActivity.CUDA
            with profile(activities=[activity]) as prof:
                forward()
                if not args.smoke:
                    torch.cuda.synchronize(device)
        sort = "cpu_time_total" if args.smoke else "cuda_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=70))

    # The folds as `brats segment` runs them: TorchStagePredictor one by one, and fused (vmap over
    # stacked bf16 weights), host array in and out.
    if args.folds < 2:
        return
    models = [ResUNet3D(width=width) for _ in range(args.folds)]
    image = torch.randn(4, *size).numpy()
    seconds, outputs = {}, {}
    for fused in (False, True):
        predictor = TorchStagePredictor(models, device.type, Precision.BF16, fuse_folds=fused)
        seconds[fused] = measure(lambda predictor=predictor: torch.from_numpy(predictor(image)), device, args.repeats)
        outputs[fused] = torch.from_numpy(predictor(image))
    difference = float((outputs[True] - outputs[False]).abs().max())
    print(
        f"{args.stage} x{args.folds} folds bf16 (TorchStagePredictor): one by one {seconds[False] * 1000:.1f} ms, "
        f"fused {seconds[True] * 1000:.1f} ms (ratio {seconds[True] / seconds[False]:.2f}, "
        f"max probability difference {difference:.1e})"
    )


def compare_compiled(width: int, x: torch.Tensor, device: torch.device, repeats: int, what: str) -> None:
    """Eager against torch.compile (inductor, default mode) for each GroupNorm; the first compiled
    call's seconds are the compilation a `brats segment` process would pay once per network shape."""
    for norm in NORMS:
        model = build_model(width, norm, device)
        torch._dynamo.reset()
        compiled = torch.compile(model)

        def run(network) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                return network(x)

        eager_seconds = measure(lambda model=model: run(model), device, repeats)
        started = time.perf_counter()
        out = run(compiled)
        sync(device)
        compile_seconds = time.perf_counter() - started
        seconds = measure(lambda compiled=compiled: run(compiled), device, repeats)
        reference = run(model).float()
        error = float((out.float() - reference).abs().max() / reference.abs().max())
        print(
            f"{what}, GroupNorm {norm}: eager {eager_seconds * 1000:.1f} ms, compiled {seconds * 1000:.1f} ms "
            f"(ratio {seconds / eager_seconds:.2f}; compilation {compile_seconds:.0f} s; "
            f"max difference {error:.1e} of the largest output)",
            flush=True,
        )


if __name__ == "__main__":
    main()
