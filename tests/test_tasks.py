"""`brats evaluate --task`: the label set and lesion-wise settings of each BraTS 2023-2024 task,
on hand-built lesions whose answers follow from the official scripts' rules (README, Evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE
from typer.testing import CliRunner

from brats_cli import evaluate
from brats_cli.cli.app import app
from brats_cli.labels import Region
from brats_cli.metrics import MISSING_HD95, LesionWiseRules, dice, lesion_wise
from brats_cli.tasks import TASKS, Task, task_rules

runner = CliRunner()
SHAPE = (48, 40, 40)


def _box(corner: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = True
    return mask


def test_the_dilation_has_no_corners_as_in_the_official_scripts() -> None:
    """scipy's generate_binary_structure(3, 2), three times: a voxel 3 steps away along every axis
    (a corner) is out of reach, one 3 steps along two axes is in reach."""
    lesion = _box((10, 10, 10), (4, 4, 4))
    corner = _box((16, 16, 16), (1, 1, 1))  # (+3, +3, +3) from the lesion's last voxel
    edge = _box((16, 16, 12), (1, 1, 1))  # (+3, +3, 0)
    assert lesion_wise(corner, lesion).false_positive_components == 1
    assert lesion_wise(edge, lesion).true_positive_lesions == 1
    # The 26-neighbourhood element would have matched the corner.
    everywhere = LesionWiseRules(dilation_connectivity=3)
    assert lesion_wise(corner, lesion, rules=everywhere).true_positive_lesions == 1


@pytest.mark.parametrize(
    ("task", "dilations", "smallest"),
    [("gli2023", 3, 50), ("ssa2023", 3, 50), ("ped2023", 3, 50), ("men2023", 1, 50), ("met2023", 1, 2)],
)
def test_2023_tasks_dilate_and_ignore_as_their_scripts(task: str, dilations: int, smallest: int) -> None:
    rules = task_rules(task)
    assert {(r.dilations, r.ignore_at_most_voxels) for r in rules.lesion_rules.values()} == {(dilations, smallest)}
    assert rules.convention is None and rules.other_labels == {}
    lesion = _box((10, 10, 10), (4, 4, 4))
    # A prediction two voxels beyond the lesion is found with 3 dilations, a false positive with 1.
    near = _box((16, 10, 10), (4, 4, 4))
    found = lesion_wise(near, lesion, rules=rules.lesion_rules[Region.WT])
    assert (found.true_positive_lesions == 1) is (dilations == 3)
    # A 3-voxel lesion missed: scored (a false negative) only where lesions of 2 or fewer are ignored.
    tiny = _box((30, 30, 30), (3, 1, 1))
    missed = lesion_wise(lesion, lesion | tiny, rules=rules.lesion_rules[Region.WT])
    assert missed.false_negative_lesions == (1 if smallest == 2 else 0)
    assert missed.dice == (0.5 if smallest == 2 else 1.0)


def test_gli2024_ignores_up_to_20_voxels_except_et_up_to_10() -> None:
    rules = task_rules(Task.GLI2024)
    lesion = _box((10, 10, 10), (4, 4, 4))
    fifteen = _box((30, 30, 30), (5, 3, 1))  # 15 voxels, never predicted
    wt = lesion_wise(lesion, lesion | fifteen, rules=rules.lesion_rules[Region.WT])
    et = lesion_wise(lesion, lesion | fifteen, rules=rules.lesion_rules[Region.ET])
    assert (wt.dice, wt.false_negative_lesions) == (1.0, 0)  # ignored: 15 <= 20
    assert (et.dice, et.hd95, et.false_negative_lesions) == (0.5, MISSING_HD95 / 2, 1)  # scored: 15 > 10


def _write(path: Path, labels: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), LPS_AFFINE), path)


def _post_treatment_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 2024 post-treatment case: NETC, SNFH, ET and a resection cavity (4) beside them; the
    prediction misses a slab of edema and calls part of the cavity cavity, part edema."""
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[_box((8, 8, 8), (16, 16, 16))] = 2
    truth[_box((12, 12, 12), (8, 8, 8))] = 1
    truth[_box((14, 14, 14), (4, 4, 4))] = 3
    truth[_box((28, 8, 8), (10, 10, 10))] = 4  # the cavity, apart from the tumour
    prediction = truth.copy()
    prediction[_box((8, 8, 8), (2, 16, 16))] = 0
    prediction[_box((28, 8, 8), (3, 10, 10))] = 2  # cavity predicted as edema
    for name in ("pred", "gt"):
        (folder / name).mkdir()
    _write(folder / "gt" / "BraTS-GLI-00001-100-seg.nii.gz", truth)
    _write(folder / "pred" / "BraTS-GLI-00001-100.nii.gz", prediction)
    return truth, prediction


def test_gli2024_scores_the_cavity_in_no_region(tmp_path: Path) -> None:
    truth, prediction = _post_treatment_pair(tmp_path)
    scored = evaluate(tmp_path / "pred", tmp_path / "gt", task="gli2024")
    (case,) = scored.scores
    assert case.warnings == []  # label 4 is the task's own
    assert case.convention_reason == "--task gli2024"
    for region, labels in ((Region.WT, (1, 2, 3)), (Region.TC, (1, 3)), (Region.ET, (3,))):
        expected = dice(np.isin(prediction, labels), np.isin(truth, labels))
        assert case.regions[region].dice == pytest.approx(expected)
    assert case.regions[Region.WT].dice < 1.0 and case.regions[Region.TC].dice == 1.0
    # The 2023 glioma rules know no label 4: a warning, and it counts as background.
    plain = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert any("labels 4 are not in the 2023 convention" in w for w in plain.scores[0].warnings)


def test_cli_task_option_and_its_conflict_with_labels(tmp_path: Path) -> None:
    _post_treatment_pair(tmp_path)
    out = tmp_path / "scores.json"
    pair = [str(tmp_path / "pred"), str(tmp_path / "gt")]
    result = runner.invoke(app, ["evaluate", *pair, "--task", "gli2024", "--lesion-wise", "--json", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the terminal may wrap the line
    assert "task gli2024 (lesion-wise: WT 3 dilations, <= 20 voxels ignored; TC 3 dilations, <= 20" in said
    assert "ET 3 dilations, <= 10 voxels ignored)" in said
    assert json.loads(out.read_text())["task"] == "gli2024"
    conflict = runner.invoke(
        app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--task", "gli2024", "--labels", "2021"]
    )
    assert conflict.exit_code == 2
    assert "--labels 2021 contradicts --task gli2024" in conflict.output


def test_every_task_has_rules_for_every_region() -> None:
    assert set(TASKS) == set(Task)
    for rules in TASKS.values():
        assert set(rules.lesion_rules) == set(Region)
