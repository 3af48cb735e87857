"""Hostile small inputs that once cost gigabytes or hours: an MLCube parameters file of YAML
aliases ("billion laughs"), undecodable bytes or deep nesting is refused on one line (exit 2)
before it is expanded; `evaluate --lesion-wise` on many tiny lesions works inside each lesion's
own box and scores exactly what the whole-volume definition scores."""

from __future__ import annotations

import os
import signal
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from brats_cli.cli import container
from brats_cli.cli.container import MAX_PARAMETERS_BYTES
from brats_cli.metrics import BRATS2023_LESION_RULES, LESION_STRUCTURE, LesionWiseRules, dice, hd95, lesion_wise

# ---------------------------------------------------------------------------------------------
# The MLCube parameters file


def run_infer(parameters: Path, capsys) -> tuple[int, str]:
    """`brats-container infer` with this parameters file: its exit code and its stderr."""
    arguments = ["infer", "--data_path=/absent-data", "--output_path=/absent-out", f"--parameters_file={parameters}"]
    with pytest.raises(SystemExit) as exited:
        container.main(arguments)
    return int(exited.value.code), capsys.readouterr().err


LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "folds: *i",
    ]
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (LAUGHS.encode(), "line 2: YAML aliases (*name) are not allowed"),
        # One alias, harmless in size, is refused all the same: the rule is "no aliases", not a guess at size.
        (b"folds: &f [0, 1]\nweights: *f\n", "line 2: YAML aliases (*name) are not allowed"),
        (b"folds: [0, 1]\ntta: \xff\xfe\n", "not UTF-8 text (byte 19)"),
        (b"folds: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than"),
        (b"- " * 20000 + b"x\n", "nested deeper than"),
        (b"# padding\n" * (MAX_PARAMETERS_BYTES // 10 + 1), "larger than 64 KiB"),
        (b"folds: [[0, 1]]\n", "nested deeper than"),
        (b"folds: {first: 0}\n", "folds: expected a value, a list of values or null"),
        (b"folds: 2024-01-01\n", "folds: expected a value, a list of values or null"),
        (b"folds: [true]\n", "folds: expected a value, a list of values or null"),
    ],
    ids=[
        "billion laughs",
        "one alias",
        "undecodable",
        "deep lists",
        "deep block",
        "oversized",
        "list of lists",
        "mapping",
        "date",
        "list of switches",
    ],
)
def test_a_hostile_parameters_file_is_one_line_exit_2(tmp_path, capsys, content, message):
    parameters = tmp_path / "parameters.yaml"
    parameters.write_bytes(content)
    code, err = run_infer(parameters, capsys)
    assert code == 2
    assert message in err and str(parameters) in " ".join(err.split())
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not Path("/absent-out").exists()


def test_a_fifo_as_parameters_file_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "parameters.yaml"
    os.mkfifo(fifo)
    code, err = run_infer(fifo, capsys)
    assert code == 2 and "not a regular file" in err


def test_plain_parameters_still_become_segment_options(tmp_path):
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text("folds: [0, 1]\ntta: false\net_threshold: 300\nweights: null\nlabels: '2023'\n")
    assert container.parameter_options(parameters) == [
        "--folds", "0,1", "--no-tta", "--et-threshold", "300", "--labels", "2023",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Lesion-wise scoring of many lesions


def whole_volume_lesion_wise(prediction: np.ndarray, reference: np.ndarray, rules: LesionWiseRules) -> tuple:
    """The lesion-wise definition as first written here, every lesion over the whole volume (its
    cost grew with lesions x volume): the reference the box-bounded one must reproduce exactly."""
    element = ndimage.generate_binary_structure(3, rules.dilation_connectivity)
    dilated = ndimage.binary_dilation(reference, structure=element, iterations=rules.dilations)
    dilated_lesions, lesion_count = ndimage.label(dilated, structure=LESION_STRUCTURE)
    components, _ = ndimage.label(prediction, structure=LESION_STRUCTURE)
    matched_components: set[int] = set()
    dice_sum = hd95_sum = 0.0
    scored = found = 0
    for lesion_label in range(1, lesion_count + 1):
        region = dilated_lesions == lesion_label
        lesion = region & reference
        touching = np.unique(components[region])
        touching = touching[touching != 0]
        matched_components.update(int(c) for c in touching)
        if int(np.count_nonzero(lesion)) <= rules.ignore_at_most_voxels:
            continue
        scored += 1
        if touching.size == 0:
            dice_sum, hd95_sum = dice_sum + rules.unmatched_dice, hd95_sum + rules.unmatched_hd95
            continue
        found += 1
        matched = np.isin(components, touching)
        dice_sum, hd95_sum = dice_sum + dice(matched, lesion), hd95_sum + hd95(matched, lesion)
    false_positives = len(set(np.unique(components).tolist()) - {0} - matched_components)
    total = scored + false_positives
    if total == 0:
        return (rules.nothing_to_score_dice, rules.nothing_to_score_hd95, 0, 0, 0)
    dice_sum += false_positives * rules.unmatched_dice
    hd95_sum += false_positives * rules.unmatched_hd95
    return (dice_sum / total, hd95_sum / total, found, scored - found, false_positives)


def random_lesions(seed: int, shape: tuple[int, int, int] = (48, 40, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A reference of scattered blobs of several sizes and a prediction that finds most of them
    shifted by a few voxels, misses parts, and adds blobs of its own."""
    rng = np.random.default_rng(seed)
    reference = ndimage.binary_dilation(rng.random(shape) < 0.002, iterations=int(rng.integers(1, 4)))
    moved = np.roll(reference, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3)))
    extra = ndimage.binary_dilation(rng.random(shape) < 0.0005, iterations=1)
    return (moved & (rng.random(shape) < 0.9)) | extra, reference


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rules", [BRATS2023_LESION_RULES, LesionWiseRules(dilations=1, ignore_at_most_voxels=2),
                                   LesionWiseRules(dilations=3, ignore_at_most_voxels=20)],
                         ids=["GLI", "MET", "GLI 2024"])  # fmt: skip
def test_box_bounded_lesion_wise_scores_what_the_whole_volume_scores(seed, rules):
    prediction, reference = random_lesions(seed)
    scores = lesion_wise(prediction, reference, rules=rules)
    expected = whole_volume_lesion_wise(prediction, reference, rules)
    assert astuple(scores) == expected  # exactly: the same voxels are compared, only in a smaller box


def test_many_tiny_lesions_score_in_seconds_not_hours():
    """Tens of thousands of one-voxel lesions over a whole BraTS volume (a ground truth of a few
    tens of KB): each costs its own box. The whole-volume loop took minutes here (hours for the
    42 KB file of the report); the budget is far above what the box-bounded loop needs."""
    reference = np.zeros((240, 240, 155), dtype=bool)
    reference[5:235:6, 5:235:6, 5:150:6] = True
    prediction = np.roll(reference, 1, axis=0)
    prediction[8:235:12, 5:235:12, 8:150:12] = True  # false positives between the lesions
    met = LesionWiseRules(dilations=1, ignore_at_most_voxels=0)

    def too_slow(signum, frame):
        raise TimeoutError("lesion-wise scoring of many tiny lesions took more than 60 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        scores = lesion_wise(prediction, reference, rules=met)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    lesions = int(reference.sum())
    assert scores.true_positive_lesions == lesions  # each found by its shifted copy
    assert scores.false_positive_components > 0
