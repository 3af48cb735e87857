"""`brats evaluate` as a user runs it: layouts, missing predictions, label conventions, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE
from medpy.metric import binary as medpy
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.errors import SettingsError
from brats_cli.metrics import MISSING_HD95, hd95
from brats_cli.scoring import evaluate

runner = CliRunner()
SHAPE = (40, 36, 30)
HEADER = "case,region,dice,hd95,sensitivity,specificity"


def _labels(et: int = 4, shift: int = 0) -> np.ndarray:
    """A small tumour: edema shell, necrotic core, enhancing rim; `shift` moves it along x."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    grid = np.indices(SHAPE)
    radius = np.sqrt((grid[0] - 20 - shift) ** 2 + (grid[1] - 18) ** 2 + (grid[2] - 15) ** 2)
    labels[radius <= 10] = 2
    labels[radius <= 6] = et
    labels[radius <= 4] = 1
    return labels


def _write(path: Path, labels: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def _invoke(*args: str):
    return runner.invoke(app, ["evaluate", *map(str, args)])


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_layout_2021_with_a_missing_prediction(tmp_path):
    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    for case in ("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"):
        _write(truth / case / f"{case}_seg.nii.gz", _labels())
        _write(truth / case / f"{case}_flair.nii.gz", np.ones(SHAPE, dtype=np.int16))  # images beside: ignored
    _write(predictions / "BraTS2021_00001.nii.gz", _labels())
    _write(predictions / "BraTS2021_00002.nii.gz", _labels(shift=2))
    result = _invoke(predictions, truth, "--csv", tmp_path / "scores.csv", "--json", tmp_path / "scores.json")
    assert result.exit_code == 0, result.output
    assert "labels 2021" in result.output
    assert "missing" in result.output and "BraTS2021_00003" in result.output

    text = (tmp_path / "scores.csv").read_text()
    assert text.splitlines()[0] == HEADER
    rows = _read_csv(tmp_path / "scores.csv")
    assert [(r["case"], r["region"]) for r in rows][:3] == [("BraTS2021_00001", r) for r in ("WT", "TC", "ET")]
    assert len(rows) == 9
    perfect = [r for r in rows if r["case"] == "BraTS2021_00001"]
    assert all(float(r["dice"]) == 1.0 and float(r["hd95"]) == 0.0 for r in perfect)
    missing = [r for r in rows if r["case"] == "BraTS2021_00003"]
    assert all(float(r["dice"]) == 0.0 and float(r["hd95"]) == MISSING_HD95 for r in missing)

    shifted = {r["region"]: r for r in rows if r["case"] == "BraTS2021_00002"}
    prediction, reference = _labels(shift=2) > 0, _labels() > 0
    assert float(shifted["WT"]["dice"]) == pytest.approx(medpy.dc(prediction, reference), abs=1e-12)
    assert float(shifted["WT"]["hd95"]) == pytest.approx(medpy.hd95(prediction, reference), abs=1e-9)

    document = json.loads((tmp_path / "scores.json").read_text())
    assert document["missing"] == ["BraTS2021_00003"]
    assert document["cases"] == [{k: _number(v) for k, v in r.items()} for r in rows]
    dice_wt = [float(r["dice"]) for r in rows if r["region"] == "WT"]
    summary = document["summary"]["WT"]["dice"]
    assert summary["mean"] == pytest.approx(np.mean(dice_wt))
    assert summary["median"] == pytest.approx(np.median(dice_wt))
    assert summary["25quantile"] == pytest.approx(np.percentile(dice_wt, 25))
    assert not list(tmp_path.glob("**/.*partial*"))


def _number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def test_flat_2023_layout_scores_et_label_3(tmp_path):
    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    case = "BraTS-GLI-00001-000"
    _write(truth / f"{case}-seg.nii.gz", _labels(et=3))
    prediction = _labels(et=3)
    prediction[prediction == 3] = 1  # ET predicted as necrosis: TC perfect, ET missed
    _write(predictions / f"{case}.nii.gz", prediction)
    result = _invoke(predictions, truth, "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "labels 2023" in result.output and "-seg" in result.output
    rows = {r["region"]: r for r in _read_csv(tmp_path / "s.csv")}
    assert float(rows["TC"]["dice"]) == 1.0
    assert float(rows["ET"]["dice"]) == 0.0 and float(rows["ET"]["hd95"]) == pytest.approx(373.13)


def test_file_against_file_picks_the_convention_from_labels(tmp_path):
    reference = _write(tmp_path / "reference.nii.gz", _labels(et=3))
    prediction = _write(tmp_path / "prediction.nii.gz", _labels(et=3, shift=1))
    result = _invoke(prediction, reference, "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "label 3 present" in result.output
    rows = {r["region"]: r for r in _read_csv(tmp_path / "s.csv")}
    et = _labels(et=3, shift=1) == 3, _labels(et=3) == 3
    assert float(rows["ET"]["hd95"]) == pytest.approx(hd95(*et))
    assert float(rows["ET"]["dice"]) > 0.5

    forced = _invoke(prediction, reference, "--labels", "2021", "--csv", tmp_path / "f.csv")
    assert forced.exit_code == 0
    assert "labels 3 are not in the 2021 convention" in forced.output
    rows = {r["region"]: r for r in _read_csv(tmp_path / "f.csv")}
    assert float(rows["ET"]["dice"]) == 1.0  # no label 4 anywhere: ET empty on both sides


def test_stray_labels_warn_and_count_as_background(tmp_path):
    reference = _write(tmp_path / "gt" / "case1_seg.nii.gz", _labels())
    stray = _labels()
    stray[0:3, 0:3, 0:3] = 6
    _write(tmp_path / "pred" / "case1.nii.gz", stray)
    result = _invoke(tmp_path / "pred", reference.parent, "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "labels 6 are not in the 2021 convention" in result.output
    assert all(float(r["dice"]) == 1.0 for r in _read_csv(tmp_path / "s.csv"))


def test_shape_or_affine_mismatch_is_an_error_for_that_case(tmp_path):
    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    for case in ("a", "b", "c"):
        _write(truth / f"{case}_seg.nii.gz", _labels())
    _write(predictions / "a.nii.gz", _labels())
    _write(predictions / "b.nii.gz", np.zeros((40, 36, 31), dtype=np.uint8))
    moved = LPS_AFFINE.copy()
    moved[0, 3] += 5
    _write(predictions / "c.nii.gz", _labels(), affine=moved)
    result = _invoke(predictions, truth, "--csv", tmp_path / "s.csv")
    assert result.exit_code == 1
    assert "b: shape (40, 36, 31) of b.nii.gz differs from the ground truth's (40, 36, 30)" in result.output
    assert "c: affine of c.nii.gz differs" in result.output
    assert {r["case"] for r in _read_csv(tmp_path / "s.csv")} == {"a"}


def test_lesion_wise_columns_only_when_asked(tmp_path):
    reference = _write(tmp_path / "r_seg.nii.gz", _labels())
    prediction = _write(tmp_path / "p.nii.gz", _labels(shift=1))
    result = _invoke(prediction, reference, "--lesion-wise", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == HEADER + ",lesion_wise_dice,lesion_wise_hd95"
    rows = _read_csv(tmp_path / "s.csv")
    # One lesion per region, matched: the lesion-wise scores are the plain ones.
    assert all(r["lesion_wise_dice"] == r["dice"] and r["lesion_wise_hd95"] == r["hd95"] for r in rows)
    assert "Lesion-wise Dice" in result.output


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda t: (t / "nowhere", t / "gt"), "prediction path does not exist"),
        (lambda t: (t / "pred", t / "empty"), "no ground truth found"),
        (lambda t: (t / "pred", t / "gt" / "x_seg.nii.gz"), "give two folders or two files"),
        (lambda t: (t / "other", t / "gt"), "no prediction matches a ground-truth case ID"),
        (lambda t: (t / "text.nii.gz", t / "gt" / "x_seg.nii.gz"), "not a readable NIfTI"),
    ],
    ids=["missing-path", "no-ground-truth", "folder-vs-file", "no-match", "corrupt-file"],
)
def test_unusable_input_exits_non_zero_with_the_reason(tmp_path, setup, message):
    _write(tmp_path / "gt" / "x_seg.nii.gz", _labels())
    _write(tmp_path / "pred" / "x.nii.gz", _labels())
    _write(tmp_path / "other" / "y.nii.gz", _labels())
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.nii.gz").write_text("not an image")
    prediction, reference = setup(tmp_path)
    result = _invoke(prediction, reference, "--csv", tmp_path / "s.csv")
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "s.csv").exists() or message == "not a readable NIfTI"


def test_real_pair_through_the_command_matches_medpy(tmp_path, real_data):
    folder = real_data / "fets-labelfusion"
    shutil.copy(folder / "baseline_simple.nii.gz", tmp_path / "case_seg.nii.gz")  # int32, stray 3/5/6
    result = _invoke(folder / "unet.nii.gz", tmp_path / "case_seg.nii.gz", "--csv", tmp_path / "s.csv")
    assert result.exit_code == 0, result.output
    assert "labels 3, 5, 6 are not in the 2021 convention" in result.output
    rows = {r["region"]: r for r in _read_csv(tmp_path / "s.csv")}
    prediction = np.asarray(nib.load(folder / "unet.nii.gz").dataobj)
    reference = np.asarray(nib.load(folder / "baseline_simple.nii.gz").dataobj)
    tc = np.isin(prediction, (1, 4)), np.isin(reference, (1, 4))
    assert float(rows["TC"]["dice"]) == pytest.approx(medpy.dc(*tc), abs=1e-9)
    assert float(rows["TC"]["sensitivity"]) == pytest.approx(medpy.sensitivity(*tc), abs=1e-9)
    assert float(rows["TC"]["specificity"]) == pytest.approx(medpy.specificity(*tc), abs=1e-9)
    assert float(rows["TC"]["hd95"]) == pytest.approx(medpy.hd95(*tc), abs=1e-6)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"task": "bogus"}, "task must be one of gli2023, ssa2023, ped2023, men2023, met2023, gli2024, got 'bogus'"),
        ({"task": ["gli2023"]}, "task must be one of gli2023"),
        ({"labels": "2022"}, "labels must be one of 2021, 2023, got '2022'"),
    ],
)
def test_evaluate_from_python_names_a_bad_choice(tmp_path, arguments, message):
    """A SettingsError (a ValueError too) naming the argument and its values, before any file is read."""
    with pytest.raises(SettingsError) as raised:
        evaluate(tmp_path / "absent", tmp_path / "absent", **arguments)
    assert str(raised.value).startswith(message)
