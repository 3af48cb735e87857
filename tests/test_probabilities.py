"""`brats segment --save-probabilities`: the ensemble's WT, TC and ET probabilities beside each
label map, in the input's geometry, and exactly the probabilities the labels were made from."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ras_affine, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli import Segmenter
from brats_cli.bundle import Stage
from brats_cli.choices import LabelConvention
from brats_cli.cli.app import app
from brats_cli.io import PROBABILITY_STEP, Naming, quantise_probabilities
from brats_cli.labels import REGIONS, apply_et_threshold, compose_labels, region_masks

runner = CliRunner()
VALIDATOR = re.compile(r"(\d{5}-\d{3})\.nii\.gz")  # the BraTS 2023+ validator's case ID


def layered_image() -> np.ndarray:
    """A synthetic case whose FLAIR tumour has three layers (about 4.9, 7 and 16 in normalised
    FLAIR) that `bundle`'s networks tell apart: the region windows' GroupNorm sees them anew."""
    image = synthetic_image(tumour_radius=(24, 20, 16))
    grid = np.indices(image.shape[1:], dtype=np.float32)

    def ellipsoid(radius: tuple[int, int, int]) -> np.ndarray:
        centre = (120, 110, 80)
        return sum(((grid[a] - centre[a]) / radius[a]) ** 2 for a in range(3)) <= 1

    image[0][ellipsoid((24, 20, 16))] -= 250
    image[0][ellipsoid((16, 13, 11))] += 50
    image[0][ellipsoid((9, 8, 7))] += 300
    return image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from conftest import flair_bundle

    # Thresholds on the region window's normalised FLAIR that split layered_image's three layers
    # into WT only (21,256 voxels), TC only (8,672) and ET (2,141).
    thresholds = {Stage.WT: 1.0, Stage.TC: 2.0, Stage.ET: 3.0}
    return flair_bundle(tmp_path_factory.mktemp("flair"), window=(64, 64, 64), thresholds=thresholds)


def test_quantising_keeps_every_voxel_on_its_side_of_the_threshold() -> None:
    rng = np.random.default_rng(0)
    thresholds = (0.5, 0.37, 0.9)
    # Values crowding each threshold within a fraction of a level, plus the extremes.
    near = np.array(thresholds)[:, None] + rng.uniform(-PROBABILITY_STEP, PROBABILITY_STEP, (3, 5000))
    probabilities = np.concatenate([near, np.array([[0.0, 1.0, 0.5]] * 3)], axis=1).astype(np.float32)
    stored = quantise_probabilities(probabilities, thresholds)
    assert stored.dtype == np.int16 and stored.min() >= 0 and stored.max() <= 2**14
    values = stored * PROBABILITY_STEP
    for channel, threshold in enumerate(thresholds):
        np.testing.assert_array_equal(values[channel] > threshold, probabilities[channel] > threshold)
    assert np.abs(values - probabilities).max() <= PROBABILITY_STEP  # at most one level from the value
    assert values[:, -3:].tolist() == [[0.0, 1.0, 0.5]] * 3  # 0, 1 and 0.5 stored exactly


def test_probabilities_round_trip_in_the_input_geometry(tmp_path: Path, bundle) -> None:
    """A RAS-stored case (not the canonical LPS): the probabilities file has the input's grid,
    affine, qform and sform, values in [0, 1], and thresholding it at the bundle's thresholds,
    composed as the pipeline composes, gives exactly the written label map."""
    case_id = "BraTS-GLI-00001-000"
    image = layered_image()
    case = write_case(tmp_path / "in", case_id, image, naming=Naming.BRATS2023, affine=ras_affine())
    out = tmp_path / "out"
    segmenter = Segmenter(bundle, probabilities=True, et_threshold=0)
    result = segmenter.segment_case(case, out)
    assert result.status.value == "done", result.message
    assert result.probabilities == out / f"{case_id}_probabilities.nii.gz"
    assert sorted(p.name for p in out.iterdir()) == [f"{case_id}.nii.gz", f"{case_id}_probabilities.nii.gz"]

    source = nib.load(case / f"{case_id}-t2f.nii.gz")
    written = nib.load(out / f"{case_id}_probabilities.nii.gz")
    assert written.shape == (*source.shape, 3)
    np.testing.assert_allclose(written.affine, source.affine)
    np.testing.assert_allclose(written.get_qform(), source.get_qform())
    np.testing.assert_allclose(written.get_sform(), source.get_sform())
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    probabilities = np.moveaxis(written.get_fdata(dtype=np.float32), -1, 0)  # WT, TC, ET
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0

    labels = np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)
    thresholds = segmenter.config(LabelConvention.BRATS2023).thresholds
    wt, tc, et = (probabilities[i] > thresholds[stage] for i, stage in enumerate(("wt", "tc", "et")))
    convention = LabelConvention.BRATS2023
    np.testing.assert_array_equal(compose_labels(wt, tc, et, convention), labels)
    # Per region, for users who threshold: WT is any of the three, TC is TC or ET.
    masks = region_masks(labels, convention)
    np.testing.assert_array_equal(masks[REGIONS[0]], wt | tc | et)
    np.testing.assert_array_equal(masks[REGIONS[1]], tc | et)
    np.testing.assert_array_equal(masks[REGIONS[2]], et)
    assert et.any() and (tc & ~et).any() and (wt & ~tc).any()  # the test saw all three regions

    # The option changes nothing about the labels.
    plain = Segmenter(bundle, et_threshold=0).segment_case(case, tmp_path / "plain")
    assert plain.probabilities is None
    np.testing.assert_array_equal(np.asarray(nib.load(plain.output).dataobj), labels)  # type: ignore[arg-type]


def test_the_et_threshold_acts_on_labels_not_probabilities(tmp_path: Path, bundle) -> None:
    """The paper's ET threshold relabels a small ET as necrosis after thresholding: the stored ET
    probabilities stay what the models said, and apply_et_threshold reproduces the labels."""
    case = write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    segmenter = Segmenter(bundle, probabilities=True, et_threshold=10**7)
    prediction = segmenter.predict(
        np.stack([nib.load(p).get_fdata(dtype=np.float32) for p in sorted(case.glob("*_flair*"))
                  + sorted(case.glob("*_t1.*")) + sorted(case.glob("*_t1ce*")) + sorted(case.glob("*_t2.*"))]),
        nib.load(next(case.glob("*_flair*"))).affine,
    )  # fmt: skip
    assert prediction.probabilities is not None and prediction.probabilities.shape == (3, 240, 240, 155)
    wt, tc, et = (prediction.probabilities[i] > 0.5 for i in range(3))
    convention = LabelConvention.BRATS2021
    assert et.any() and not (prediction.labels == convention.enhancing).any()
    expected = apply_et_threshold(compose_labels(wt, tc, et, convention), convention, 10**7)
    np.testing.assert_array_equal(expected, prediction.labels)


def test_cli_writes_probabilities_that_validators_and_evaluate_ignore(tmp_path: Path, bundle) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    image = synthetic_image()
    for case_id in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        write_case(inp, case_id, image, naming=Naming.BRATS2023, labels=np.zeros(image.shape[1:], np.uint8))
    (out).mkdir()
    # An earlier run without the option: that case is redone, not skipped.
    runner.invoke(app, ["segment", str(inp / "BraTS-GLI-00001-000"), str(out), "--weights", str(bundle.root)])
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(bundle.root), "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["BraTS-GLI-00001-000.nii.gz", "BraTS-GLI-00001-000_probabilities.nii.gz",
                     "BraTS-GLI-00002-000.nii.gz", "BraTS-GLI-00002-000_probabilities.nii.gz"]  # fmt: skip
    # The validator's pattern finds one prediction per case: the label maps.
    assert sorted(name for name in names if VALIDATOR.search(name)) == names[0::2]
    # A rerun with the option skips both cases now.
    again = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(bundle.root), "--save-probabilities"])
    assert again.output.count("skipped") == 2
    assert "2 case(s) left as they were, their output exists: --overwrite segments them again" in (
        " ".join(again.output.split())
    )
    # brats evaluate pairs the label maps with the ground truth and ignores the probabilities.
    scored = runner.invoke(app, ["evaluate", str(out), str(inp)])
    assert scored.exit_code == 0, scored.output
    assert "probabilities" not in scored.output and "2 of 2 case(s) scored" in scored.output
