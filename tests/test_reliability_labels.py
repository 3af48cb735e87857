"""A label map that cannot be one is refused, never rounded into labels no one drew: float files
must hold whole numbers (a probability map or an interpolated label map is named as such), in
every reader (`evaluate`, `train`'s cache)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.errors import ImageReadError
from brats_cli.io import read_label_map

runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


def labels() -> np.ndarray:
    data = np.zeros((12, 12, 12), np.uint8)
    data[3:9, 3:9, 3:9] = 2
    data[4:7, 4:7, 4:7] = 4
    return data


@pytest.mark.parametrize("kind", ["float32 labels", "labels scaled by 1/4 in the header"])
def test_float_labels_with_whole_values_are_read(tmp_path, kind):
    path = tmp_path / "seg.nii.gz"
    if kind == "float32 labels":
        nib.save(nib.Nifti1Image(labels().astype(np.float32), np.eye(4)), path)
    else:
        image = nib.Nifti1Image((labels() * 4).astype(np.int16), np.eye(4))
        image.header.set_slope_inter(0.25, 0)
        nib.save(image, path)
    data, _ = read_label_map(path)
    assert data.dtype == np.int32 and np.array_equal(data, labels())


def test_a_probability_map_is_not_rounded_into_labels(tmp_path):
    probabilities = labels().astype(np.float32) / 4.0  # 0, 0.5, 1: would round to 0, 0, 1
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(probabilities, np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"seg\.nii\.gz: 189 voxel\(s\) hold non-integer values \(such as 0\.5\)"):
        read_label_map(path)


def test_evaluate_names_the_probability_map_and_scores_the_other_cases(tmp_path):
    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    predictions.mkdir()
    truth.mkdir()
    for case in ("BraTS2021_00001", "BraTS2021_00002"):
        nib.save(nib.Nifti1Image(labels(), np.eye(4)), truth / f"{case}_seg.nii.gz")
    nib.save(nib.Nifti1Image(labels(), np.eye(4)), predictions / "BraTS2021_00001.nii.gz")
    nib.save(nib.Nifti1Image(labels().astype(np.float32) / 4.0, np.eye(4)), predictions / "BraTS2021_00002.nii.gz")
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth)])
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert "BraTS2021_00002.nii.gz: 189 voxel(s) hold non-integer values (such as 0.5); a label map holds whole" in text
    assert "1 of 2 case(s) scored" in text


@pytest.mark.parametrize("side", ["prediction", "ground truth"])
def test_evaluate_a_folder_or_fifo_at_a_label_maps_name_fails_that_case(tmp_path, side):
    """Never scored as a missing prediction (Dice 0) nor ignored, never opened (a FIFO would
    block): that case fails saying what is there; the others are scored."""
    import os

    predictions, truth = tmp_path / "pred", tmp_path / "gt"
    predictions.mkdir()
    truth.mkdir()
    for case in ("BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"):
        nib.save(nib.Nifti1Image(labels(), np.eye(4)), truth / f"{case}_seg.nii.gz")
        nib.save(nib.Nifti1Image(labels(), np.eye(4)), predictions / f"{case}.nii.gz")
    folder = predictions / "BraTS2021_00001.nii.gz" if side == "prediction" else truth / "BraTS2021_00001_seg.nii.gz"
    fifo = predictions / "BraTS2021_00002.nii.gz" if side == "prediction" else truth / "BraTS2021_00002_seg.nii.gz"
    folder.unlink()
    folder.mkdir()
    fifo.unlink()
    os.mkfifo(fifo)
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth)])
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert f"error: BraTS2021_00001: {folder} is a folder, not a label map" in text
    assert f"error: BraTS2021_00002: {fifo} is not a regular file (a FIFO, socket or device?), not a label map" in text
    assert "1 of 3 case(s) scored" in text and "missing predictions" not in text
