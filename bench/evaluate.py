"""Time `brats evaluate` against the official BraTS evaluation (`brats-evaluation`, built on
panoptica) on the same ten real pairs, as whole commands, side by side in one run; then compare
the numbers where the two definitions coincide (Dice and HD95 of WT, TC, ET).

The official package must live in its own virtual environment (it pins its own numpy, scipy,
pandas...); pass its `brats-evaluate` executable:

    python3 -m venv /work/venv-bench && /work/venv-bench/bin/pip install brats-evaluation
    python -m bench.evaluate --official /work/venv-bench/bin/brats-evaluate

The pairs are the real segmentations in ../shared/data/real, relabelled to the 2023 convention
(4 -> 3; the stray labels 3, 5, 6 of one file -> 0, so both tools see the same label set) and named
as BraTS 2023 cases, which is the layout the official tool expects.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
REAL = next(
    (p / "shared" / "data" / "real" for p in REPOSITORY.parents if (p / "shared" / "data" / "real").is_dir()),
    REPOSITORY.parent / "shared" / "data" / "real",
)
TCGA = "TCGA-DU-7294/segmentation"
FETS = "fets-labelfusion"
# (folder, prediction, ground truth): the seven TCGA algorithms/fusions against the majority-vote
# fusion would include it against itself, so six of them, and four FeTS outputs against STAPLE.
PAIRS = [
    (TCGA, "hnfnetv1-20", "mav"),
    (TCGA, "isen-20", "mav"),
    (TCGA, "sanet0-20", "mav"),
    (TCGA, "scan-20", "mav"),
    (TCGA, "yixinmpl-20", "mav"),
    (TCGA, "simple", "hnfnetv1-20"),
    (FETS, "unet", "baseline_staple"),
    (FETS, "resunet", "baseline_staple"),
    (FETS, "baseline", "baseline_staple"),
    (FETS, "baseline_simple", "baseline_staple"),
]
REGIONS = ("WT", "TC", "ET")


def to_2023(source: Path, target: Path) -> None:
    image = nib.load(source)
    labels = np.asarray(image.dataobj).astype(np.int64)
    converted = np.zeros(labels.shape, dtype=np.uint8)
    converted[labels == 1] = 1
    converted[labels == 2] = 2
    converted[labels == 4] = 3
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(converted, image.affine, header), target)


def case_id(index: int) -> str:
    return f"BraTS-GLI-{index:05d}-000"


def prepare(root: Path) -> list[tuple[Path, Path]]:
    """root/all/{pred,gt} with every pair, and root/<ID>/{pred,gt} with one pair each."""
    folders = []
    for index, (folder, prediction, reference) in enumerate(PAIRS):
        single = root / case_id(index)
        for base in (root / "all", single):
            (base / "pred").mkdir(parents=True, exist_ok=True)
            (base / "gt").mkdir(parents=True, exist_ok=True)
            to_2023(REAL / folder / f"{prediction}.nii.gz", base / "pred" / f"{case_id(index)}.nii.gz")
            to_2023(REAL / folder / f"{reference}.nii.gz", base / "gt" / f"{case_id(index)}-seg.nii.gz")
        folders.append((single / "pred", single / "gt"))
    return folders


def ours(prediction: Path, reference: Path, output: Path, lesion_wise: bool) -> list[str]:
    command = [sys.executable, "-m", "brats_cli", "evaluate", str(prediction), str(reference), "--csv", str(output)]
    return [*command, "--lesion-wise"] if lesion_wise else command


def official(executable: Path, prediction: Path, reference: Path, output: Path) -> list[str]:
    return [
        str(executable),
        "--ref_path",
        str(reference),
        "--pred_path",
        str(prediction),
        "--config",
        "gli",
        "--summary_json",
        str(output),
    ]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return seconds


def compare(our_csv: Path, official_json: Path) -> None:
    with open(our_csv, newline="") as handle:
        mine = {(row["case"], row["region"]): row for row in csv.DictReader(handle)}
    document = json.loads(official_json.read_text().replace("NaN", "null").replace("Infinity", "1e999"))
    differences: dict[str, list[float]] = {"dice": [], "hd95": []}
    disagreements = []
    for subject in document["metrics"]:
        case = subject["subject_name"].removesuffix("-seg.nii.gz")
        for region in REGIONS:
            theirs = subject[region.lower()]
            row = mine[(case, region)]
            for metric in ("dice", "hd95"):
                value = theirs[f"global_bin_{'dsc' if metric == 'dice' else metric}"]
                our_value = float(row[metric])
                if value is None or not math.isfinite(value):
                    # Empty masks: the official tool leaves NaN/inf where BraTS 2021 fixed a value.
                    disagreements.append(f"{case} {region} {metric}: official {value}, ours {our_value}")
                    continue
                differences[metric].append(abs(value - our_value))
    print("\nAgreement with the official tool (global binary Dice and HD95 of WT, TC, ET):")
    for metric, values in differences.items():
        exact = sum(v == 0.0 for v in values)
        print(f"  {metric}: {len(values)} values compared, {exact} identical, max |difference| {max(values):.3g}")
    for line in disagreements:
        print(f"  definitions differ: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="path of the brats-evaluate executable")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the ten-case commands")
    arguments = parser.parse_args()
    if not arguments.official.is_file():
        raise SystemExit(f"{arguments.official}: not found (install brats-evaluation in its own venv)")

    with tempfile.TemporaryDirectory(prefix="brats-bench-evaluate-") as temporary:
        root = Path(temporary)
        singles = prepare(root)
        everything = root / "all"
        tools = {
            "brats": lambda p, g, o: ours(p, g, o.with_suffix(".csv"), lesion_wise=False),
            "brats --lesion-wise": lambda p, g, o: ours(p, g, o.with_suffix(".csv"), lesion_wise=True),
            "official": lambda p, g, o: official(arguments.official, p, g, o.with_suffix(".json")),
        }
        # Warm the file cache and imports once, so the first timed command is not penalised.
        for name, build in tools.items():
            timed(build(everything / "pred", everything / "gt", root / f"warm-{name.replace(' ', '')}"))

        whole: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(arguments.rounds):
            for name, build in tools.items():
                whole[name].append(timed(build(everything / "pred", everything / "gt", root / name.replace(" ", ""))))
        per_case: dict[str, list[float]] = {name: [] for name in tools}
        for index, (prediction, reference) in enumerate(singles):
            for name, build in tools.items():
                output = root / f"single-{index}-{name.replace(' ', '')}"
                per_case[name].append(timed(build(prediction, reference, output)))

    count = len(PAIRS)
    print(f"{count} real pairs, whole commands, best of {arguments.rounds} alternating rounds (seconds)")
    print(f"{'tool':<22}{'10 cases':>10}{'per case':>10}{'1 case':>10}{'marginal/case':>15}")
    summary = {}
    for name in tools:
        best = min(whole[name])
        single = float(np.mean(per_case[name]))
        marginal = (best - single) / (count - 1)
        summary[name] = (best / count, marginal)
        print(f"{name:<22}{best:>10.2f}{best / count:>10.3f}{single:>10.2f}{marginal:>15.3f}")
    for name in ("brats", "brats --lesion-wise"):
        ratio_whole = summary["official"][0] / summary[name][0]
        ratio_marginal = summary["official"][1] / summary[name][1]
        print(f"official / {name}: {ratio_whole:.2f}x per case (whole command), {ratio_marginal:.2f}x marginal")
    print("\nper case, one-case commands (seconds, startup included):")
    print(f"{'case':<22}" + "".join(f"{name:>22}" for name in tools) + f"{'ratio':>8}")
    for index in range(count):
        times = [per_case[name][index] for name in tools]
        print(f"{case_id(index):<22}" + "".join(f"{t:>22.2f}" for t in times) + f"{times[2] / times[0]:>8.2f}")

    # The numbers, from the last ten-case run of each.
    with tempfile.TemporaryDirectory(prefix="brats-bench-evaluate-") as temporary:
        root = Path(temporary)
        prepare(root)
        subprocess.run(ours(root / "all/pred", root / "all/gt", root / "ours.csv", False), cwd=REPOSITORY, check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run(official(arguments.official, root / "all/pred", root / "all/gt", root / "official.json"),
                       cwd=REPOSITORY, check=True, capture_output=True)  # fmt: skip
        compare(root / "ours.csv", root / "official.json")


if __name__ == "__main__":
    main()
