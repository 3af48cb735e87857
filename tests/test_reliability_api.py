"""The Python API refuses what the command refuses: a case ID from any source passes the safe-ID
rule, `Segmenter.predict` runs the command's image checks, and a bad argument is an InputError or
SettingsError naming it at once, before any network is loaded or any voxel reoriented."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import flair_bundle, write_case

from brats_cli import Segmenter
from brats_cli.bundle import Stage
from brats_cli.errors import InputError
from brats_cli.io import Case
from brats_cli.segmenter import Status, case_from_files


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """Tiny networks whose base model finds nothing; nothing here should ever load them."""
    bundle = flair_bundle(tmp_path_factory.mktemp("nothing"), window=(64, 64, 64), thresholds={Stage.BASE: 1e6})
    return Segmenter(bundle, precision="fp32")


def files_under(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("case_id", "message"),
    [
        ("../evil", "case ID '../evil' is not a safe file name"),
        ("sub/evil", "case ID 'sub/evil' is not a safe file name"),
        ("/tmp/evil", "case ID '/tmp/evil' is not a safe file name"),
        ("..", "case ID '..' is not a safe file name"),
        (".hidden", "case ID '.hidden' is not a safe file name"),
        ("", "no case ID: name the files <ID>_flair.nii.gz"),
        ("A" * 201, "case ID is 201 characters long"),
        (7, "case ID must be a string, got 7"),
    ],
)
def test_a_case_id_given_from_python_passes_the_safe_id_rule(segmenter, tmp_path, case_id, message):
    folder = write_case(tmp_path / "in", "BraTS2021_00001", np.zeros((4, 4, 4, 4)))
    before = files_under(tmp_path)
    with pytest.raises(InputError, match=r"^case_id: " + re.escape(message)):
        segmenter.segment_case(folder, tmp_path / "out" / "inner", case_id=case_id)
    assert files_under(tmp_path) == before  # nothing beside, above or in the output folder
    assert segmenter._predictors is None


def test_a_case_made_by_hand_with_an_unsafe_id_fails_and_writes_nothing(segmenter, tmp_path):
    folder = write_case(tmp_path / "in", "BraTS2021_00001", np.zeros((4, 4, 4, 4)))
    files = case_from_files(folder).files
    before = files_under(tmp_path)
    result = segmenter.segment_case(Case("../evil", case_from_files(folder).naming, files), tmp_path / "out")
    assert result.status is Status.FAILED
    assert "case ID '../evil' is not a safe file name" in result.message
    assert files_under(tmp_path) == [*before, "out"]  # the (empty) output folder alone


def test_a_case_id_from_a_folder_name_passes_the_same_rule(tmp_path):
    folder = tmp_path / "patient 3"  # files without BraTS names take the folder's name
    folder.mkdir()
    paths = [folder / f"{modality}.nii.gz" for modality in ("flair", "t1", "t1ce", "t2")]
    case = case_from_files(paths)
    assert case.case_id == "patient 3" and "is not a safe file name" in (case.problem or "")
    renamed = case_from_files(paths, case_id="patient-3")  # a safe ID given instead clears it
    assert renamed.case_id == "patient-3" and renamed.problem is None
