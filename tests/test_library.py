"""The library API as a researcher uses it from Python: `Segmenter`, `Settings`, `evaluate`, and
the README's example run as written."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, ras_affine, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli import Segmenter, Settings, evaluate
from brats_cli.choices import Backend, LabelConvention, Precision
from brats_cli.cli.app import app
from brats_cli.errors import InputError, SettingsError, WeightsError
from brats_cli.segmenter import Status, case_from_files

ROOT = Path(__file__).resolve().parents[1]
REAL_CASE = "BraTS-GLI-00001-000"
runner = CliRunner()


def readme_blocks() -> list[str]:
    """The python blocks of the README's Python section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_the_readme_example_gives_the_labels_of_brats_segment(real_data, tmp_path, monkeypatch):
    blocks = readme_blocks()
    assert len(blocks) == 2
    shutil.copytree(real_data / REAL_CASE, tmp_path / "cases" / REAL_CASE)
    # What a user would compare with: the command line's output of the same case, as ground truth.
    result = runner.invoke(app, ["segment", str(tmp_path / "cases"), str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    expected = labels_of(tmp_path / "cli" / f"{REAL_CASE}.nii.gz")
    assert (expected > 0).sum() > 20_000  # a real tumour, so equal labels mean something
    (tmp_path / "ground-truth").mkdir()
    shutil.copy(tmp_path / "cli" / f"{REAL_CASE}.nii.gz", tmp_path / "ground-truth" / f"{REAL_CASE}-seg.nii.gz")

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (Python)", "exec"), namespace)
    for written in (tmp_path / "predictions" / f"{REAL_CASE}.nii.gz", tmp_path / "single" / f"{REAL_CASE}.nii.gz"):
        np.testing.assert_array_equal(labels_of(written), expected)
    np.testing.assert_array_equal(namespace["prediction"].labels, expected)
    assert namespace["result"].status is Status.DONE

    exec(compile(blocks[1], "README.md (Python, evaluate)", "exec"), namespace)
    evaluation = namespace["evaluation"]
    assert {row["region"]: row["dice"] for row in evaluation.rows()} == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert (tmp_path / "scores.json").is_file() and evaluation.failures == []


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    from conftest import flair_bundle

    bundle = flair_bundle(tmp_path_factory.mktemp("flair"), window=(64, 64, 64))
    return Segmenter(bundle, precision="fp32")


def test_predict_returns_labels_on_the_input_grid_whatever_its_orientation(segmenter):
    image = synthetic_image()  # LPS, as the released BraTS files
    lps = segmenter.predict(image, LPS_AFFINE).labels
    assert lps.shape == (240, 240, 155) and lps.dtype == np.uint8
    assert set(np.unique(lps).tolist()) <= {0, 1, 2, 4} and (lps > 0).sum() > 1000
    np.testing.assert_array_equal(segmenter.predict(image).labels, lps)  # no affine: taken as LPS
    # The same brain stored RAS (x and y flipped): the labels come back flipped the same way.
    ras = segmenter.predict(image[:, ::-1, ::-1, :], ras_affine()).labels
    np.testing.assert_array_equal(ras, lps[::-1, ::-1, :])
    in_2023 = segmenter.predict(image, labels="2023")
    assert in_2023.convention is LabelConvention.BRATS2023
    np.testing.assert_array_equal(in_2023.labels == 3, lps == 4)


def test_predict_refuses_arrays_that_are_not_a_brats_case(segmenter):
    with pytest.raises(InputError, match=r"expected a \(4, X, Y, Z\) image"):
        segmenter.predict(np.zeros((3, 240, 240, 155), np.float32))
    with pytest.raises(InputError, match="not BraTS space"):
        segmenter.predict(np.zeros((4, 128, 128, 128), np.float32))
    image = synthetic_image()
    image[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        segmenter.predict(image)


def test_segment_case_takes_a_folder_four_files_or_a_mapping(segmenter, tmp_path):
    folder = write_case(tmp_path / "in", "BraTS2021_00007", synthetic_image())
    from_folder = segmenter.segment_case(folder, tmp_path / "a")
    assert from_folder.status is Status.DONE and from_folder.output == tmp_path / "a" / "BraTS2021_00007.nii.gz"
    assert set(from_folder.stage_seconds) >= {"read", "base", "wt", "tc", "et", "write"}
    assert from_folder.volumes_ml[next(iter(from_folder.volumes_ml))] > 0
    names = {m: folder / f"BraTS2021_00007_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")}
    from_list = segmenter.segment_case(list(names.values()), tmp_path / "b")
    from_mapping = segmenter.segment_case(names, tmp_path / "c", case_id="renamed")
    assert from_mapping.output == tmp_path / "c" / "renamed.nii.gz"
    expected = labels_of(from_folder.output)
    for result in (from_list, from_mapping):
        np.testing.assert_array_equal(labels_of(result.output), expected)
    # Files without BraTS names take the case ID from their folder.
    plain = tmp_path / "plain" / "patient-3"
    plain.mkdir(parents=True)
    for modality, path in names.items():
        shutil.copy(path, plain / f"{modality}.nii.gz")
    assert case_from_files([plain / f"{m}.nii.gz" for m in names]).case_id == "patient-3"


def test_segment_case_reports_a_broken_case_as_a_failed_result(segmenter, tmp_path):
    folder = write_case(tmp_path / "in", "BraTS2021_00008", synthetic_image())
    (folder / "BraTS2021_00008_t1.nii.gz").write_bytes(b"not a nifti")
    result = segmenter.segment_case(folder, tmp_path / "out")
    assert result.status is Status.FAILED and "BraTS2021_00008_t1.nii.gz" in result.message
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(InputError, match="expected four image files"):
        segmenter.segment_case([folder / "BraTS2021_00008_t1.nii.gz"], tmp_path / "out")
    with pytest.raises(InputError, match="missing modality t2"):
        segmenter.segment_case({"flair": folder / "a", "t1": folder / "b", "t1ce": folder / "c"}, tmp_path / "out")


def test_segment_folder_yields_results_skips_finished_cases_and_knows_what_it_wrote(segmenter, tmp_path):
    for number in (1, 2, 3):
        write_case(tmp_path / "in", f"BraTS2021_0000{number}", synthetic_image())
    (tmp_path / "out").mkdir()
    earlier = tmp_path / "out" / "BraTS2021_00002.nii.gz"  # an earlier run's complete label map
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 155), np.uint8), LPS_AFFINE), earlier)
    before = earlier.read_bytes()
    batch = segmenter.segment_folder(tmp_path / "in", tmp_path / "out")
    assert len(batch) == 3
    statuses = [(r.case_id, r.status) for r in batch]
    assert statuses == [
        ("BraTS2021_00001", Status.DONE),
        ("BraTS2021_00002", Status.SKIPPED),
        ("BraTS2021_00003", Status.DONE),
    ]
    assert batch.finished() == ["BraTS2021_00001", "BraTS2021_00003"] and not batch.failed
    assert earlier.read_bytes() == before
    again = segmenter.segment_folder(tmp_path / "in", tmp_path / "out", overwrite=True).run()
    assert [r.status for r in again] == [Status.DONE] * 3


def test_segment_folder_refuses_a_missing_input_before_loading_networks(tmp_path):
    segmenter = Segmenter(precision="fp32")  # the default bundle, read and verified, nothing loaded
    assert segmenter._predictors is None
    with pytest.raises(InputError, match="input folder does not exist"):
        segmenter.segment_folder(tmp_path / "nowhere", tmp_path / "out")
    assert segmenter._predictors is None and not (tmp_path / "out").exists()


def test_settings_are_validated_once_and_accept_strings():
    settings = Settings(backend="onnx", precision="bf16", folds=[2, 0, 2], labels="2023", et_threshold=0)
    assert settings.backend is Backend.ONNX and settings.precision is Precision.BF16
    assert settings.folds == (0, 2) and settings.labels is LabelConvention.BRATS2023
    assert settings.ignored() == [
        "--precision is ignored with --backend onnx: an ONNX bundle's precision is set at export"
    ]
    for bad, message in (
        ({"precision": "fp64"}, "precision must be one of fp32, bf16, auto"),
        ({"folds": [-1]}, "folds must be non-negative"),
        ({"folds": []}, "folds must be non-negative"),
        ({"et_threshold": -5}, "et_threshold must be a non-negative integer"),
        ({"et_threshold": True}, "et_threshold must be a non-negative integer"),
        ({"min_component": -1}, "min_component must be a non-negative integer"),
        ({"min_component": 3.0}, "min_component must be a non-negative integer"),
        ({"fill_core_holes": 1}, "fill_core_holes must be True, False or None"),
        ({"mirrors": [(3,)]}, "mirrors must be a non-empty list"),
        ({"compile": True, "fuse_folds": True}, "do not go together"),
    ):
        with pytest.raises(SettingsError, match=re.escape(message)):
            Settings(**bad)
    with pytest.raises(ValueError, match="unknown setting 'precison'"):
        Settings().with_changes(precison="fp32")
    with pytest.raises(SettingsError, match="unknown setting"):
        Segmenter(precison="fp32")


def test_a_segmenter_refuses_a_bundle_of_the_other_backend(tmp_path):
    with pytest.raises(WeightsError, match="this is a torch bundle, not an onnx one"):
        Segmenter(ROOT / "weights", backend="onnx")


def test_evaluate_scores_pairs_like_the_command(tmp_path):
    labels = np.zeros((240, 240, 155), np.uint8)
    labels[100:120, 100:120, 70:90] = 2
    labels[105:115, 105:115, 75:85] = 4
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), tmp_path / "gt" / "BraTS2021_00001_seg.nii.gz")
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), tmp_path / "pred" / "BraTS2021_00001.nii.gz")
    nib.save(nib.Nifti1Image(labels, LPS_AFFINE), tmp_path / "gt" / "BraTS2021_00002_seg.nii.gz")
    evaluation = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert evaluation.missing == ["BraTS2021_00002"]
    dice = {(row["case"], row["region"]): row["dice"] for row in evaluation.rows()}
    assert dice[("BraTS2021_00001", "ET")] == 1.0 and dice[("BraTS2021_00002", "WT")] == 0.0
    assert evaluation.summary()["WT"]["dice"]["mean"] == 0.5
    document = evaluation.document()
    assert document["missing"] == ["BraTS2021_00002"] and document["labels"]["BraTS2021_00001"] == "2021"
    cli = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", "cli.json"])
    assert cli.exit_code == 0, cli.output
    import json

    assert json.loads(Path("cli.json").read_text()) == json.loads(json.dumps(document))
    os.remove("cli.json")
