"""Is one ONNX graph holding a stage's K folds faster than K graphs run one after the other?

Both variants are exported from the same random ResUNet3D folds and run side by side on the same
random image with the predictor's session options; prints seconds per stage call and the ratio.

    python -m bench.fused_folds --width 4 --size 64 --folds 5
    python -m bench.fused_folds --width 64 --size 128 --folds 2 --repeats 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brats_cli.export import OUTPUT_NAME, export_model
from brats_cli.model import ResUNet3D
from brats_cli.predictors.onnx_backend import CPU_PROVIDER, onnx_session


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up: ONNX Runtime plans its buffers on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="cubic input edge (multiple of 8)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = [ResUNet3D(width=args.width) for _ in range(args.folds)]
    size = (args.size,) * 3
    image = np.random.default_rng(0).standard_normal((1, 4, *size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        separate = []
        for index, model in enumerate(models):
            export_model([model], size, root / f"fold{index}.onnx")
            separate.append(onnx_session(root / f"fold{index}.onnx", [CPU_PROVIDER]))
        export_model(models, size, root / "fused.onnx")
        fused = onnx_session(root / "fused.onnx", [CPU_PROVIDER])

        def run_separate() -> np.ndarray:
            return np.concatenate([s.run([OUTPUT_NAME], {"image": image})[0] for s in separate], axis=1)

        def run_fused() -> np.ndarray:
            return fused.run([OUTPUT_NAME], {"image": image})[0]

        difference = float(np.abs(run_separate() - run_fused()).max())
        t_separate = best_seconds(run_separate, args.repeats)
        t_fused = best_seconds(run_fused, args.repeats)
    print(f"width {args.width}, {size}, {args.folds} folds, best of {args.repeats}:")
    ratio = t_fused / t_separate
    print(f"  separate graphs {t_separate:.3f} s, fused graph {t_fused:.3f} s, fused/separate {ratio:.2f}")
    print(f"  max abs difference between the two {difference:.2e}")


if __name__ == "__main__":
    main()
