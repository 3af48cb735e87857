"""The Python API refuses what the command refuses: a case ID from any source passes the safe-ID
rule, `Segmenter.predict` runs the command's image checks, and a bad argument is an InputError or
SettingsError naming it at once, before any network is loaded or any voxel reoriented."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import LPS_AFFINE, flair_bundle, synthetic_image, write_case

from brats_cli import Segmenter
from brats_cli.bundle import Stage
from brats_cli.errors import InputError, SettingsError
from brats_cli.io import Case, Geometry
from brats_cli.segmenter import Status, case_from_files
from brats_cli.settings import Settings


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """Tiny networks whose base model finds nothing; nothing here should ever load them."""
    bundle = flair_bundle(tmp_path_factory.mktemp("nothing"), window=(64, 64, 64), thresholds={Stage.BASE: 1e6})
    return Segmenter(bundle, precision="fp32")


@pytest.fixture(scope="module")
def image():
    return synthetic_image()


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


def test_predict_runs_the_image_checks_of_the_command(segmenter, image):
    """The checks `brats segment` makes of each file, with the same words, before any network."""
    few = np.zeros_like(image)
    few[:, 100:110, 100:110, 70:80] = 1.0 + np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    nan = image.copy()
    nan[2, 120, 120, 77] = np.nan
    zero_t1 = image.copy()
    zero_t1[1] = 0
    for bad, message in (
        (np.zeros_like(image), "image[0] (FLAIR) is all zero"),
        (np.full_like(image, 250.0), "image[0] (FLAIR): 100% of the voxels are nonzero"),
        (few, "image[0] (FLAIR): only 1000 nonzero voxels (1.0 ml)"),
        (np.where(image > 0, 300.0, 0.0).astype(np.float32), "image[0] (FLAIR): the brain's intensities do not vary"),
        (nan, "NaN or Inf voxels in image[2] (T1CE)"),
        (zero_t1, "image[1] (T1) is all zero"),
    ):
        with pytest.raises(InputError, match=r"^" + re.escape(message)):
            segmenter.predict(bad, LPS_AFFINE)
    assert segmenter._predictors is None


def test_predict_refuses_a_bad_affine_naming_it(segmenter, image):
    nan = LPS_AFFINE.copy()
    nan[0, 0] = np.nan
    singular = LPS_AFFINE.copy()
    singular[2] = 0.0
    for bad, message in (
        (np.zeros((4, 4)), "affine is singular"),
        (singular, "affine is singular"),
        (nan, "affine holds NaN or Inf"),
        (np.eye(3), "affine of shape (3, 3), not 4x4"),
        ([["a"] * 4] * 4, "affine: not a 4x4 matrix of numbers"),
    ):
        with pytest.raises(InputError, match=r"^" + re.escape(message)):
            segmenter.predict(image, bad)
    assert segmenter._predictors is None


def test_predict_refuses_an_array_that_is_no_image_naming_it(segmenter):
    for bad, message in (
        (np.full((4, 240, 240, 155), "a"), "image: voxels of type <U1, expected integers or floats"),
        (np.zeros((4, 240, 240, 155), bool), "image: voxels of type bool"),
        ([[1.0], [1.0, 2.0]], "image: not an array"),
        (np.zeros((3, 240, 240, 155)), "image: expected a (4, X, Y, Z) image"),
    ):
        with pytest.raises(InputError, match=r"^" + re.escape(message)):
            segmenter.predict(bad)
    assert segmenter._predictors is None


def test_predict_checks_the_shape_before_reorienting(segmenter, monkeypatch):
    def reoriented(*_):
        raise AssertionError("reoriented before the shape was checked")

    monkeypatch.setattr(Geometry, "to_canonical", reoriented)
    stored_zyx = LPS_AFFINE[:, [2, 1, 0, 3]]  # voxel axes stored z, y, x
    wrong = np.ones((4, 155, 240, 200), np.float32)
    with pytest.raises(InputError, match=r"\(155, 240, 200\) voxels \(\(200, 240, 155\) in LPS\) is not BraTS space"):
        segmenter.predict(wrong, stored_zyx)
    with pytest.raises(InputError, match=r"^image: \(155, 240, 200\) voxels is not BraTS space"):
        segmenter.predict(wrong)


def test_predict_labels_must_be_a_convention(segmenter, image):
    with pytest.raises(SettingsError, match=re.escape("labels must be one of 2021, 2023, got '2022'")):
        segmenter.predict(image, labels="2022")
    assert segmenter._predictors is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mirrors": [(0.0,)]}, "mirrors must be a non-empty list of tuples of axes 0, 1, 2"),
        ({"mirrors": [(), (1.0, 2.0)]}, "mirrors must be a non-empty list of tuples of axes 0, 1, 2"),
        ({"mirrors": [(True,)]}, "mirrors must be a non-empty list of tuples of axes 0, 1, 2"),
        ({"mirrors": ["0"]}, "mirrors must be a non-empty list of tuples of axes 0, 1, 2"),
        ({"mirrors": [0, 1]}, "mirrors must be a non-empty list of tuples of axes 0, 1, 2"),
        ({"folds": [0.0]}, "folds must be non-negative fold indices"),
    ],
)
def test_settings_of_the_wrong_kind_are_refused_naming_them(changes, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings(**changes)


def test_settings_take_numpy_integers_as_integers():
    settings = Settings(mirrors=[(), (np.int64(0),)], folds=np.array([1, 0]))
    assert settings.mirrors == ((), (0,)) and settings.folds == (0, 1)
    assert all(type(axis) is int for axes in settings.mirrors for axis in axes)


def test_segment_folder_arguments_of_the_wrong_kind_are_refused_at_once(segmenter, tmp_path):
    write_case(tmp_path / "in", "BraTS2021_00001", np.zeros((4, 4, 4, 4)))
    for arguments, message in (
        ({"shard": (0, 2)}, "shard must be 'K/N' (such as '0/4') or a Shard, got (0, 2)"),
        ({"shard": 1}, "shard must be 'K/N'"),
        ({"overwrite": "no"}, "overwrite must be True or False, got 'no'"),
        ({"quality": 1}, "quality must be True or False, got 1"),
    ):
        with pytest.raises(SettingsError, match=re.escape(message)):
            segmenter.segment_folder(tmp_path / "in", tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists() and segmenter._predictors is None


@pytest.mark.parametrize("weights", [3, ["weights"], b"weights"], ids=["int", "list", "bytes"])
def test_weights_of_the_wrong_kind_are_refused_naming_them(weights):
    with pytest.raises(
        SettingsError, match=re.escape(f"weights must be a bundle folder's path, a Bundle or None, got {weights!r}")
    ):
        Segmenter(weights)
