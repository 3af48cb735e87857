"""GPU benchmark of the paper-width networks: per-forward time of each execution variant, the
model compute of a full case (1 base forward + 3 regions x K folds on one 128^3 window), accuracy
of the fast variants against fp32, and peak GPU memory. Random weights; no downloads.

    python -m bench.gpu [--folds 5] [--repeats 10] [--compile] [--json OUT.json]
    python -m bench.gpu --smoke          # tiny sizes on the CPU, to check the script itself

Prints a table; writes the numbers as JSON when asked. No pass/fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

from bench.flops import forward_flop
from brats_cli.model import ResUNet3D


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs (device events on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference.float()).norm() / reference.float().norm())


def variants(model: ResUNet3D, x: torch.Tensor, device: torch.device, compile_models: bool):
    """(name, callable) for each way of running one forward."""
    fp32 = model.to(device).eval()
    x32 = x.to(device)
    yield "fp32 eager", lambda: fp32(x32)
    channels_last = ResUNet3D(width=model_width(model)).to(device).eval()
    channels_last.load_state_dict(fp32.state_dict())
    channels_last = channels_last.to(memory_format=torch.channels_last_3d)
    x_cl = x32.contiguous(memory_format=torch.channels_last_3d)
    yield "fp32 channels-last", lambda: channels_last(x_cl)
    if device.type == "cuda":

        def tf32() -> torch.Tensor:
            # PyTorch's own default for cuDNN convolutions; `brats segment --precision fp32` turns
            # it off (fp32 means fp32 there), so it is a variant here, not the baseline.
            torch.backends.cudnn.allow_tf32 = True
            try:
                return channels_last(x_cl)
            finally:
                torch.backends.cudnn.allow_tf32 = False

        yield "tf32 channels-last", tf32
    if device.type == "cuda" or torch.backends.mkldnn.is_available():

        def bf16_autocast() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return channels_last(x_cl)

        yield "bf16 autocast channels-last", bf16_autocast
    if compile_models:
        compiled = torch.compile(channels_last)

        def bf16_compiled() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return compiled(x_cl)

        yield "bf16 autocast channels-last compiled", bf16_compiled


def model_width(model: ResUNet3D) -> int:
    return model.stem.conv1.out_channels


def fold_batching(width: int, size: tuple[int, int, int], folds: int, device: torch.device, repeats: int):
    """K fold models on one input: K sequential calls vs one vmapped call over stacked weights."""
    models = [ResUNet3D(width=width).to(device).eval().to(memory_format=torch.channels_last_3d) for _ in range(folds)]
    x = torch.randn(1, 4, *size, device=device).contiguous(memory_format=torch.channels_last_3d)
    params, buffers = stack_module_state(models)
    base = ResUNet3D(width=width).to("meta")

    def one(p, b, inp):
        return functional_call(base, (p, b), (inp,))

    batched = torch.vmap(one, in_dims=(0, 0, None))

    def sequential() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return torch.stack([m(x) for m in models])

    def vmapped() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return batched(params, buffers, x)

    with torch.inference_mode():
        error = relative_error(vmapped(), sequential())
        return measure(sequential, device, repeats), measure(vmapped, device, repeats), error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU to check the script")
    args = parser.parse_args()

    if args.smoke:
        device = torch.device("cpu")
        stages = {"base": (8, (32, 32, 32)), "region": (8, (32, 32, 32))}
        repeats = 2
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # fp32 rows are fp32, as in `brats segment`
        stages = {"base": (24, (192, 192, 160)), "region": (64, (128, 128, 128))}
        repeats = args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}", flush=True)
    results: dict[str, dict] = {"device": name, "torch": torch.__version__, "stages": {}}

    torch.manual_seed(0)
    for stage, (width, size) in stages.items():
        model = ResUNet3D(width=width).eval()
        flop = forward_flop(ResUNet3D(width=width), size)
        x = torch.randn(1, 4, *size)
        rows = {}
        reference = None
        with torch.inference_mode():
            for variant, fn in variants(model, x, device, args.compile):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                started = time.perf_counter()
                out = fn()
                sync(device)
                first = time.perf_counter() - started
                reference = out if reference is None else reference
                seconds = measure(fn, device, repeats)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                rows[variant] = {
                    "seconds": seconds,
                    "first_call_seconds": first,
                    "tflop_per_s": flop / seconds / 1e12,
                    "relative_error_vs_fp32": relative_error(out, reference),
                    "peak_gib": peak,
                }
                print(
                    f"{stage:>6} w{width} {size}: {variant:<38} {seconds * 1000:9.1f} ms "
                    f"{flop / seconds / 1e12:7.1f} TFLOP/s  err {rows[variant]['relative_error_vs_fp32']:.1e}  "
                    f"peak {peak:5.1f} GiB  (first call {first:.1f} s)",
                    flush=True,
                )
        results["stages"][stage] = {"width": width, "size": size, "tflop": flop / 1e12, "variants": rows}

    sequential, vmapped, error = fold_batching(*stages["region"], args.folds, device, max(2, repeats // 2))
    results["fold_batching"] = {"folds": args.folds, "sequential_s": sequential, "vmapped_s": vmapped, "error": error}
    print(
        f"region x{args.folds} folds: sequential {sequential * 1000:.1f} ms, vmapped {vmapped * 1000:.1f} ms "
        f"(ratio {vmapped / sequential:.2f}, rel. difference {error:.1e})",
        flush=True,
    )

    print("\nmodel compute per case (1 base + 3 regions x folds, one window), by variant:")
    base_rows = results["stages"]["base"]["variants"]
    region_rows = results["stages"]["region"]["variants"]
    per_case = {}
    for variant in base_rows:
        total = base_rows[variant]["seconds"] + 3 * args.folds * region_rows[variant]["seconds"]
        per_case[variant] = total
        print(f"  {variant:<38} {total:7.3f} s")
    results["per_case_seconds"] = per_case
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
