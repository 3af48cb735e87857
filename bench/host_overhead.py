"""The pipeline's own host work between the network forwards, with the networks taken out.

Stub predictors return fixed probability maps at once (K folds per region stage, one base map
with a tumour and a false positive), so what `segment_preprocessed` times per stage is only the
pipeline's: ensembling, pasting windows, localisation, composing. This is the part of issue 9's
overhead that does not depend on the accelerator (reading and writing are timed by `brats segment
--profile`).

    python -m bench.host_overhead [--folds 5] [--repeats 5] [--glibc-default]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from brats_cli.allocator import keep_freed_memory
from brats_cli.bundle import REGION_STAGES, Stage
from brats_cli.pipeline import PipelineConfig, segment_preprocessed
from brats_cli.preprocess import MODEL_GRID


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5, help="fold maps per region stage (the paper: 5)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--glibc-default", action="store_true", help="without brats_cli.allocator's setting")
    args = parser.parse_args()
    if not args.glibc_default:
        keep_freed_memory()  # as `brats segment` does

    rng = np.random.default_rng(0)
    model_input = rng.standard_normal((4, *MODEL_GRID), dtype=np.float32)
    base = np.zeros((1, *MODEL_GRID), dtype=np.float32)
    base[0, 60:120, 70:130, 50:110] = 0.99  # the tumour
    base[0, 10:30, 10:30, 10:30] = 0.9  # a less confident false positive
    window = rng.random((args.folds, 128, 128, 128), dtype=np.float32)
    predictors = {Stage.BASE: lambda image: base.copy()}
    # A copy per call, as a backend hands over fresh arrays.
    predictors |= {stage: (lambda image: window.copy()) for stage in REGION_STAGES}

    config = PipelineConfig()
    runs = []
    for _ in range(args.repeats + 1):
        started = time.perf_counter()
        segmentation = segment_preprocessed(model_input, predictors, config)
        runs.append({**segmentation.seconds, "total": time.perf_counter() - started})
    runs = runs[1:]  # the first run pays for first touches
    print(
        f"host work of one case, {args.folds} fold(s) per region stage, one 128^3 window, median of "
        f"{args.repeats}, {'glibc default allocator' if args.glibc_default else 'freed memory kept'}:"
    )
    for stage in runs[0]:
        print(f"  {stage:<10} {statistics.median(run[stage] for run in runs) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
