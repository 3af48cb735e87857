"""No confident answer on an image that cannot be right: each modality must be a skull-stripped
brain on a zero background with intensities that vary; a few absurd voxels are clipped (and said)
instead of setting the normalisation of the whole channel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import flair_bundle, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.labels import LabelConvention, Region, region_masks
from brats_cli.metrics import dice
from brats_cli.preprocess import normalise

runner = CliRunner()


def one_line(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return flair_bundle(tmp_path_factory.mktemp("flair"), window=(64, 64, 64))


def segment(inp, out, bundle):
    return runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(bundle.root), "--precision", "fp32"])


def test_normalisation_is_unchanged_without_outliers_and_robust_with_them():
    image = synthetic_image()[:, 24:216, 24:216, :].copy()
    counted: list[int] = []
    clean = normalise(image, counted)
    brain = image[0] != 0
    values = image[0][brain].astype(np.float64)
    np.testing.assert_allclose(clean[0][brain], (values - values.mean()) / values.std(), rtol=1e-6, atol=1e-6)
    assert counted == [0, 0, 0, 0]
    spiked = image.copy()
    where = np.argwhere(brain)[:2]
    spiked[0][tuple(where.T)] = 1e30
    counted = []
    robust = normalise(spiked, counted)
    assert counted == [2, 0, 0, 0]
    others = brain.copy()
    others[tuple(where.T)] = False
    # Clipped to the edge of the plausible range, the two voxels move the rest by a few hundredths
    # of a standard deviation; unclipped they would squash every other voxel to about 0.
    assert np.abs(robust[0][others] - clean[0][others]).max() < 0.1
    assert clean[0][others].std() > 0.9 and robust[0][others].std() > 0.9


def test_two_absurd_voxels_are_clipped_and_said_and_the_labels_hold(tmp_path, bundle):
    image = synthetic_image()
    write_case(tmp_path / "in", "BraTS2021_00001", image, dtype=np.float32)
    spiked = image.copy()
    spiked[0, 120, 110, 80] = spiked[0, 100, 100, 60] = 1e30
    write_case(tmp_path / "in", "BraTS2021_00002", spiked, dtype=np.float32)
    result = segment(tmp_path / "in", tmp_path / "out", bundle)
    assert result.exit_code == 0, result.output
    assert (
        "warning: BraTS2021_00002: BraTS2021_00002_flair.nii.gz: 2 voxel(s) of implausible intensity clipped"
        in one_line(result.output)
    )
    masks = [
        region_masks(np.asarray(nib.load(tmp_path / "out" / f"BraTS2021_0000{n}.nii.gz").dataobj),
                     LabelConvention.BRATS2021)[Region.WT]
        for n in (1, 2)
    ]  # fmt: skip
    assert masks[0].sum() > 1000 and dice(masks[1], masks[0]) > 0.99


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda v: np.where(v != 0, 500.0, 0.0), "the brain's intensities do not vary (99.8% of them are 500)"),
        (lambda v: np.pad(np.full((2, 5, 1), 300.0), [(100, 138), (100, 135), (70, 84)]), "only 10 nonzero voxels"),
        (lambda v: v + 100.0, "100% of the voxels are nonzero; BraTS images are skull-stripped"),
    ],
    ids=["constant", "ten voxels", "intercept"],
)
def test_an_image_that_cannot_be_a_brain_fails_its_case_alone(tmp_path, bundle, damage, message):
    image = synthetic_image()
    write_case(tmp_path / "in", "BraTS2021_00001", image)
    bad = image.copy()
    bad[2] = damage(bad[2])
    write_case(tmp_path / "in", "BraTS2021_00002", bad, dtype=np.float32)
    result = segment(tmp_path / "in", tmp_path / "out", bundle)
    assert result.exit_code == 1, result.output
    assert f"error: BraTS2021_00002: BraTS2021_00002_t1ce.nii.gz: {message}" in one_line(result.output)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["BraTS2021_00001.nii.gz"]
