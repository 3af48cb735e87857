"""Per-stage seconds and achieved GFLOP/s of `brats segment` at the paper's widths, on one real case.

Random weights (timing does not depend on them), one fold per stage: the base model (width 24) on
192x192x160 and one 128^3 window for each region model (width 64), as for a tumour that fits one
window. Prints a table; no pass/fail.

    python -m bench.segment [--case DIR] [--device cpu|cuda] [--precision fp32|bf16] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.flops import forward_flop
from brats_cli.bundle import Architecture, Stage, load_bundle, write_torch_bundle
from brats_cli.choices import Device, Precision
from brats_cli.io import discover_cases, load_case, write_label_map
from brats_cli.labels import LabelConvention, apply_et_threshold, compose_labels
from brats_cli.localise import localise_windows, tumour_box
from brats_cli.model import ResUNet3D
from brats_cli.predictors.torch_backend import torch_predictors
from brats_cli.preprocess import MODEL_GRID, preprocess, uncrop_from_model_grid
from brats_cli.settings import Settings

DEFAULT_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "BraTS-GLI-00001-000"
WIDTHS = {Stage.BASE: 24, Stage.WT: 64, Stage.TC: 64, Stage.ET: 64}
WINDOW = (128, 128, 128)


def paper_width_bundle(root: Path, folds: int = 1):
    torch.manual_seed(0)
    weights = {s: [ResUNet3D(width=w).state_dict() for _ in range(folds)] for s, w in WIDTHS.items()}
    archs = {s: Architecture(width=w, input_size=MODEL_GRID if s is Stage.BASE else WINDOW) for s, w in WIDTHS.items()}
    return write_torch_bundle(root, weights, archs, labels=LabelConvention.BRATS2021, name="bench-random")


def timed(fn, repeats: int, device: str):
    best = float("inf")
    result = None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per stage (the best is shown)")
    args = parser.parse_args()

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(paper_width_bundle(Path(tmp) / "bundle").root)
        predictors = torch_predictors(bundle, Settings(device=Device(args.device), precision=Precision(args.precision)))
        (case,) = discover_cases(args.case).cases
        rows = []
        (image, geometry), seconds = timed(lambda: load_case(case), 1, args.device)
        rows.append(("read", seconds, 0))
        model_input, seconds = timed(lambda: preprocess(image), 1, args.device)
        rows.append(("preprocess", seconds, 0))
        # Warm-up: allocator, oneDNN/cuDNN algorithm choice.
        predictors[Stage.BASE](model_input)
        base, seconds = timed(lambda: predictors[Stage.BASE](model_input), args.repeats, args.device)
        rows.append(("base (w24, 192x192x160)", seconds, forward_flop(ResUNet3D(width=24), MODEL_GRID)))
        mask = base[0] > 0.5
        box, seconds = timed(lambda: tumour_box(mask), 1, args.device)
        rows.append(("localise", seconds, 0))
        # The timing must not depend on what random weights found: one window at the grid centre.
        (window,) = localise_windows(((32, 160), (32, 160), (16, 144)), MODEL_GRID, WINDOW)
        crop = np.ascontiguousarray(model_input[(slice(None), *window)])
        region_flop = forward_flop(ResUNet3D(width=64), WINDOW)
        predictors[Stage.WT](crop)
        masks = {}
        for stage in (Stage.WT, Stage.TC, Stage.ET):
            probabilities, seconds = timed(lambda s=stage: predictors[s](crop), args.repeats, args.device)
            full = np.zeros(MODEL_GRID, dtype=bool)
            full[window] = probabilities[0] > 0.5
            masks[stage] = full
            rows.append((f"{stage.value} (w64, 128^3)", seconds, region_flop))

        def compose():
            labels = compose_labels(masks[Stage.WT], masks[Stage.TC], masks[Stage.ET], LabelConvention.BRATS2021)
            return uncrop_from_model_grid(apply_et_threshold(labels, LabelConvention.BRATS2021, 600))

        labels, seconds = timed(compose, 1, args.device)
        rows.append(("compose", seconds, 0))
        _, seconds = timed(lambda: write_label_map(labels, geometry, Path(tmp) / "out.nii.gz"), 1, args.device)
        rows.append(("write", seconds, 0))
        del box

    total = sum(r[1] for r in rows)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {threads} threads"
    print(f"brats segment stages, paper widths, one fold each, {args.precision}, {name}, torch {torch.__version__}")
    print(f"{'stage':<26}{'seconds':>10}{'share':>8}{'TFLOP':>8}{'GFLOP/s':>10}")
    for stage, seconds, flop in rows:
        rate = f"{flop / seconds / 1e9:10.1f}" if flop else f"{'':>10}"
        tflop = f"{flop / 1e12:8.2f}" if flop else f"{'':>8}"
        print(f"{stage:<26}{seconds:10.2f}{seconds / total:8.1%}{tflop}{rate}")
    print(f"{'total':<26}{total:10.2f}")


if __name__ == "__main__":
    main()
