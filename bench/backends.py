"""PyTorch vs ONNX Runtime on the same case, stage by stage, side by side in one run.

Random weights (one fold per stage) at the given widths; each stage's network runs once per backend
on the real case's preprocessed input: the base model on the 192x192x160 grid, the region models on
one 128^3 window at the centre of the grid (the size every localised window has). Prints seconds
per stage for each backend, the ratio, and the largest probability difference between the two.

    python -m bench.backends                                  # paper widths 24/64, CPU
    python -m bench.backends --device cuda --fp16 --torch-precision bf16
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brats_cli.bundle import REGION_STAGES, Stage
from brats_cli.choices import Device, ExportPrecision, Precision
from brats_cli.export import export_model
from brats_cli.io import discover_cases, load_case
from brats_cli.model import ResUNet3D
from brats_cli.predictors.onnx_backend import OnnxStagePredictor, import_onnxruntime, onnx_providers, onnx_session
from brats_cli.predictors.torch_backend import TorchStagePredictor, resolve_device
from brats_cli.preprocess import MODEL_GRID, preprocess

REAL_CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "BraTS-GLI-00001-000"
REGION_WINDOW = (128, 128, 128)


def timed(predictor, image: np.ndarray, warmup: int, synchronise: bool) -> tuple[float, np.ndarray]:
    for _ in range(warmup):
        predictor(image)
    started = time.perf_counter()
    probabilities = predictor(image)  # returns numpy: the GPU work is finished when it returns
    if synchronise:
        torch.cuda.synchronize()
    return time.perf_counter() - started, probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=REAL_CASE, help="a case folder")
    parser.add_argument("--width-base", type=int, default=24)
    parser.add_argument("--width-region", type=int, default=64)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fp16", action="store_true", help="export the ONNX graphs in fp16 (GPU)")
    parser.add_argument("--torch-precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls before the timed one (0: cold)")
    args = parser.parse_args()

    device = Device(args.device)
    torch_device = resolve_device(device)
    providers = onnx_providers(device)
    precision = ExportPrecision.FP16 if args.fp16 else ExportPrecision.FP32
    ort = import_onnxruntime()
    image, _ = load_case(discover_cases(args.case).cases[0])
    model_input = preprocess(image)
    centre = tuple(slice((g - w) // 2, (g - w) // 2 + w) for g, w in zip(MODEL_GRID, REGION_WINDOW, strict=True))
    inputs = {
        Stage.BASE: model_input,
        **{s: np.ascontiguousarray(model_input[(slice(None), *centre)]) for s in REGION_STAGES},
    }

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for stage in Stage:
            width = args.width_base if stage is Stage.BASE else args.width_region
            size = tuple(inputs[stage].shape[1:])
            model = ResUNet3D(width=width).eval()
            path = Path(folder) / f"{stage.value}.onnx"
            export_model([model], size, path, precision=precision)
            onnx_side = OnnxStagePredictor([onnx_session(path, providers)], size, precision)
            torch_side = TorchStagePredictor([model], torch_device, Precision(args.torch_precision))
            sync = torch_device == "cuda"
            t_torch, p_torch = timed(torch_side, inputs[stage], args.warmup, sync)
            t_onnx, p_onnx = timed(onnx_side, inputs[stage], args.warmup, sync)
            difference = float(np.abs(p_torch - p_onnx).max())
            masks_differ = float(((p_torch > 0.5) != (p_onnx > 0.5)).mean())
            rows.append((stage.value, width, size, t_torch, t_onnx, difference, masks_differ))
            print(
                f"{stage.value:4} w{width:<3} {size}: torch {t_torch:7.2f} s  onnx {t_onnx:7.2f} s  "
                f"onnx/torch {t_onnx / t_torch:5.2f}  max|dp| {difference:.1e}  mask differs {masks_differ:.1e}",
                flush=True,
            )
    total_torch = sum(r[3] for r in rows)
    total_onnx = sum(r[4] for r in rows)
    where = torch.cuda.get_device_name() if torch_device == "cuda" else platform.processor() or platform.machine()
    print(
        f"all stages: torch {total_torch:.2f} s, onnx {total_onnx:.2f} s, onnx/torch {total_onnx / total_torch:.2f} "
        f"({where}; torch {torch.__version__} {args.torch_precision}; onnxruntime {ort.__version__} "
        f"{providers[0]} {precision.value}; warm-up calls {args.warmup})"
    )


if __name__ == "__main__":
    main()
