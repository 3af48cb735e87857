"""CPU: plain fp32 eager PyTorch against the fast path of `brats segment`, same case, one run.

Timing. A paper-width bundle (base width 24, WT/TC/ET width 64, `--folds` per stage) of hand-set
FLAIR networks (`tests.builders.flair_bundle`: the real architecture, so the same FLOPs as
trained weights, with deterministic localisation, so every variant runs the same windows) goes
through the pipeline's `segment_image`, on the same case, once per variant, each variant in a
fresh process of its own (the allocator setting cannot be undone within a process, and no variant
inherits another's heap):
- plain: fp32, contiguous tensors, glibc's default allocator (eager PyTorch as a user's script
  would run it);
- plain-heap: the same with freed memory kept in the heap (`brats_cli.allocator`), alone;
- channels-last: fp32, channels-last 3D (the layout oneDNN's fastest 3D kernels use), heap kept
  (`brats segment --precision fp32`);
- fast-mmap: bf16 autocast with glibc's default allocator;
- fast: bf16 autocast, heap kept, the layout `brats segment` gives it (contiguous: under bf16
  autocast, channels-last's GroupNorm kernel loses digits): its default on a CPU with AVX-512 BF16
  or AMX;
- fast-channels-last: the same in channels-last 3D (the default before that was found);
- fused: fast with each stage's folds as one batched call (`--fuse-folds`);
- compiled: fast with torch.compile (`--compile`), timed after one untimed case that compiles
  (its seconds are printed apart).
It prints per-stage seconds and each variant's time as a ratio of plain (`--variants` picks some;
plain always runs). `--trained` times the trained bundle of `--weights` (default: the bundled one)
instead, whose localisation, and so its windows, may differ between variants.

Agreement (`--weights`, `--cases`): a trained bundle run in fp32 and with the fast path on every
case of a folder (phantoms), and the fraction of tumour voxels (labelled tumour by either) that get
the same label. bf16 is only a default where this is at least 99.5%.

    python -m bench.cpu_pipeline [--case DIR] [--folds 5] [--repeats 1]
    python -m bench.cpu_pipeline --no-timing --weights weights --cases runs/heldout
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from brats_cli.allocator import keep_freed_memory
from brats_cli.bundle import Stage, load_bundle, load_weights
from brats_cli.choices import Precision
from brats_cli.host import usable_cpus
from brats_cli.io import discover_cases, load_case
from brats_cli.pipeline import PipelineConfig, segment_image
from brats_cli.predictors.torch_backend import TorchStagePredictor, load_torch_models, resolve_precision
from tests.builders import flair_bundle

DEFAULT_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "BraTS-GLI-00001-000"
STAGES = ("preprocess", "base", "localise", "wt", "tc", "et", "compose")


VARIANTS = ("plain", "plain-heap", "channels-last", "fast-mmap", "fast", "fast-channels-last", "fused", "compiled")


def variants(fast: Precision, chosen: tuple[str, ...] = VARIANTS) -> dict[str, dict]:
    every = {
        "plain": ("plain fp32", {"precision": Precision.FP32, "channels_last": False, "keep_freed": False}),
        "plain-heap": ("plain fp32, heap kept", {"precision": Precision.FP32, "channels_last": False}),
        "channels-last": ("channels-last fp32", {"precision": Precision.FP32, "channels_last": True}),
        "fast-mmap": (f"{fast.value}, glibc default", {"precision": fast, "keep_freed": False}),
        "fast": (f"fast ({fast.value}, heap)", {"precision": fast}),
        "fast-channels-last": (f"{fast.value}, channels-last, heap", {"precision": fast, "channels_last": True}),
        "fused": ("fast, folds fused", {"precision": fast, "fuse_folds": True}),
        "compiled": ("fast, compiled", {"precision": fast, "compile": True}),
    }
    return dict(every[key] for key in VARIANTS if key == "plain" or key in chosen)


def predictors_for(
    bundle, precision: Precision, channels_last: bool | None = None, fuse_folds: bool = False, compile: bool = False
):
    return {
        stage: TorchStagePredictor(
            load_torch_models(bundle, stage),
            "cpu",
            precision,
            channels_last=channels_last,
            fuse_folds=fuse_folds,
            compile=compile,
        )
        for stage in Stage
    }


def run_variant(
    name: str, options: dict, bundle_root: Path, case_dir: Path, repeats: int, warmup: bool
) -> tuple[dict[str, float], np.ndarray, int]:
    """One variant in this (fresh) process: best-of-`repeats` stage seconds, labels, windows."""
    options = dict(options)
    if options.pop("keep_freed", True):
        keep_freed_memory()  # as `brats segment` does first
    (case,) = discover_cases(case_dir).cases
    image, _ = load_case(case)
    bundle = load_bundle(bundle_root)
    config = PipelineConfig.from_manifest(bundle.manifest)
    predictors = predictors_for(bundle, **options)
    if warmup or options.get("compile"):  # oneDNN (and inductor) build kernels on a shape's first call
        started = time.perf_counter()
        segment_image(image, predictors, config)
        if options.get("compile"):
            print(f"  {name}: first case (compiling) {time.perf_counter() - started:.1f} s", flush=True)
    best: dict[str, float] | None = None
    for _ in range(repeats):
        started = time.perf_counter()
        segment = segment_image(image, predictors, config)
        total = time.perf_counter() - started
        if best is None or total < best["total"]:
            best = {**segment.seconds, "total": total}
    assert best is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  {name}: {best['total']:.1f} s, peak resident {peak:.1f} GiB", flush=True)
    return best, segment.labels, len(segment.windows)


def timing(
    case_dir: Path,
    widths: dict[Stage, int],
    folds: int,
    repeats: int,
    fast: Precision,
    warmup: bool,
    chosen: tuple[str, ...] = VARIANTS,
    trained: Path | None = None,
) -> None:
    (case,) = discover_cases(case_dir).cases
    results: dict[str, dict[str, float]] = {}
    labels: dict[str, np.ndarray] = {}
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        root = trained or flair_bundle(Path(tmp) / "bundle", widths=widths, folds=folds).root
        for name, options in variants(fast, chosen).items():
            with spawn.Pool(1) as pool:
                results[name], labels[name], windows = pool.apply(
                    run_variant, (name, options, root, case_dir, repeats, warmup)
                )

    plain = next(iter(results))
    network = (
        f"bundle {trained}" if trained else f"widths {widths[Stage.BASE]}/{widths[Stage.WT]}, {folds} fold(s) per stage"
    )
    print(
        f"\nbrats segment on {case.case_id}, {network}, {windows} window(s) (last variant), "
        f"CPU {usable_cpus()} threads, torch {torch.__version__}; best of {repeats}"
        + (" after one warm-up case" if warmup else ", no warm-up")
        + "; one process per variant"
    )
    names = list(results)
    print(f"{'stage':<12}" + "".join(f"{n:>40}" for n in names))
    for stage in (*STAGES, "total"):
        row = f"{stage:<12}"
        for name in names:
            seconds = results[name].get(stage, 0.0)
            row += f"{seconds:>30.2f} s {seconds / results[plain][stage]:>6.2f}x" if results[plain].get(stage) else ""
        print(row)
    networks = sum(results[plain][s] for s in ("base", "wt", "tc", "et"))
    print(f"outside the networks (plain): {1 - networks / results[plain]['total']:.1%} of the case")
    for name in names[1:]:
        print(
            f"{name}: {results[name]['total'] / results[plain]['total']:.2f}x plain; "
            f"labels equal to plain on {agreement(labels[plain], labels[name]):.4%} of tumour voxels"
        )


def agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of the voxels that either labelling calls tumour which get the same label."""
    tumour = (reference > 0) | (other > 0)
    if not tumour.any():
        return 1.0
    return float((reference[tumour] == other[tumour]).mean())


def label_agreement(weights: Path | None, cases_dir: Path, fast: Precision) -> None:
    keep_freed_memory()
    bundle = load_weights(weights)
    config = PipelineConfig.from_manifest(bundle.manifest)
    reference = predictors_for(bundle, Precision.FP32)
    candidate = predictors_for(bundle, fast)
    same = total = 0
    seconds = {"fp32": 0.0, fast.value: 0.0}
    worst = (1.0, "")
    for case in discover_cases(cases_dir).cases:
        image, _ = load_case(case)
        started = time.perf_counter()
        a = segment_image(image, reference, config).labels
        seconds["fp32"] += time.perf_counter() - started
        started = time.perf_counter()
        b = segment_image(image, candidate, config).labels
        seconds[fast.value] += time.perf_counter() - started
        tumour = (a > 0) | (b > 0)
        same += int((a[tumour] == b[tumour]).sum())
        total += int(tumour.sum())
        worst = min(worst, (agreement(a, b), case.case_id))
        print(f"  {case.case_id}: {agreement(a, b):.4%}", flush=True)
    print(
        f"\n{bundle.root} on {cases_dir}: {fast.value} labels equal to fp32 on {same / max(total, 1):.4%} of "
        f"{total} tumour voxels (worst case {worst[1]}: {worst[0]:.4%}); "
        f"time {seconds[fast.value] / seconds['fp32']:.2f}x fp32"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--folds", type=int, default=5, help="fold models per stage (the paper: 5)")
    parser.add_argument("--widths", type=int, nargs=2, default=(24, 64), help="base and region widths (the paper's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", action="store_true", help="one untimed case per variant first")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--weights", type=Path, default=None, help="trained bundle (default: the bundled one)")
    parser.add_argument("--cases", type=Path, default=None, help="folder of cases for the label agreement")
    parser.add_argument("--trained", action="store_true", help="time the bundle of --weights, not random networks")
    parser.add_argument("--fast", choices=["auto", "bf16", "fp32"], default="auto", help="the fast path's precision")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)} (plain always runs)"
    )
    args = parser.parse_args()
    chosen = tuple(v.strip() for v in args.variants.split(","))
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    fast = resolve_precision(Precision(args.fast), "cpu")
    if args.timing:
        widths = {stage: args.widths[0] if stage is Stage.BASE else args.widths[1] for stage in Stage}
        trained = load_weights(args.weights).root if args.trained else None
        timing(args.case, widths, args.folds, args.repeats, fast, args.warmup, chosen, trained)
    if args.cases:
        label_agreement(args.weights, args.cases, fast)


if __name__ == "__main__":
    main()
