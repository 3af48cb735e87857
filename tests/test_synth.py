"""`brats synth`: phantom cases in BraTS space (layout, geometry, labels, contrasts, determinism)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE
from scipy import ndimage
from typer.testing import CliRunner

from brats_cli import synth
from brats_cli.cli.app import app
from brats_cli.errors import DependencyError
from brats_cli.io import (
    BRATS_SHAPE,
    CHANNEL_ORDER,
    Modality,
    Naming,
    discover_cases,
    load_case,
    parse_name,
    read_label_map,
)
from brats_cli.labels import LabelConvention, Region, region_masks
from brats_cli.synth import Tissue, make_phantom

SEED = 11
runner = CliRunner()


@pytest.fixture(scope="module")
def phantom() -> synth.Phantom:
    return make_phantom(SEED, 0, Naming.BRATS2021)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """`brats synth OUT --n 2 --seed 11 --preview` run once for the file-level tests."""
    out = tmp_path_factory.mktemp("synth")
    result = runner.invoke(
        app, ["synth", str(out / "cases"), "--n", "2", "--seed", str(SEED), "--preview", str(out / "preview.png")]
    )
    assert result.exit_code == 0, result.output
    return out


def test_phantom_arrays(phantom):
    assert phantom.case_id == "Synth2021_s11_00000"
    assert phantom.image.shape == (4, *BRATS_SHAPE) and phantom.image.dtype == np.int16
    assert phantom.labels.shape == BRATS_SHAPE and phantom.labels.dtype == np.uint8
    assert set(np.unique(phantom.labels)) <= {0, 1, 2, 4}
    assert (phantom.labels > 0).sum() > 1000


def test_background_exactly_zero_and_shared_brain_mask(phantom):
    brain = phantom.tissue > 0
    for channel in phantom.image:
        assert np.array_equal(channel != 0, brain)
    assert not phantom.labels[~brain].any()
    # A BraTS-sized brain (the real cases hold 1.0-1.6 million voxels).
    assert 0.9e6 < brain.sum() < 2.0e6


def test_labels_nested_like_real_data(phantom):
    masks = region_masks(phantom.labels, LabelConvention.BRATS2021)
    brain = phantom.tissue > 0
    core = masks[Region.TC]
    # The core lies inside the edema envelope: one voxel around it is tumour (or outside the brain).
    assert not (ndimage.binary_dilation(core) & brain & ~masks[Region.WT]).any()
    necrosis = phantom.labels == 1
    assert necrosis.any() and masks[Region.ET].any(), "case 0 of seed 11 should have a necrotic, enhancing core"
    # Enhancing tumour surrounds the necrosis: almost no necrotic voxel touches edema directly.
    touching_edema = ndimage.binary_dilation(phantom.labels == 2) & necrosis
    assert touching_edema.sum() < 0.02 * necrosis.sum()


def _class_mean(phantom: synth.Phantom, channel: Modality, tissue: Tissue) -> float:
    values = phantom.image[CHANNEL_ORDER.index(channel)][phantom.tissue == tissue]
    assert values.size > 100, f"too few {tissue.name} voxels"
    return float(values.mean())


def test_tissue_contrast_of_each_sequence(phantom):
    def mean(modality, tissue):
        return _class_mean(phantom, modality, tissue)

    assert mean(Modality.T1, Tissue.WM) > mean(Modality.T1, Tissue.GM) > mean(Modality.T1, Tissue.CSF)
    assert mean(Modality.T2, Tissue.CSF) > mean(Modality.T2, Tissue.GM) > mean(Modality.T2, Tissue.WM)
    assert mean(Modality.FLAIR, Tissue.CSF) < mean(Modality.FLAIR, Tissue.WM) < mean(Modality.FLAIR, Tissue.EDEMA)
    assert mean(Modality.FLAIR, Tissue.EDEMA) > mean(Modality.FLAIR, Tissue.GM)
    assert mean(Modality.T1CE, Tissue.ENHANCING) > mean(Modality.T1CE, Tissue.WM) > mean(Modality.T1CE, Tissue.NECROSIS)
    # Contrast agent: the rim is brighter after contrast than before, relative to white matter.
    t1_ratio = mean(Modality.T1, Tissue.ENHANCING) / mean(Modality.T1, Tissue.WM)
    t1ce_ratio = mean(Modality.T1CE, Tissue.ENHANCING) / mean(Modality.T1CE, Tissue.WM)
    assert t1ce_ratio > 1.3 * t1_ratio


def test_naming_changes_only_the_enhancing_label(phantom):
    other = make_phantom(SEED, 0, Naming.BRATS2023)
    assert other.case_id == "Synth-GLI-s11-00000"
    assert np.array_equal(other.image, phantom.image)
    expected = np.where(phantom.labels == 4, 3, phantom.labels)
    assert np.array_equal(other.labels, expected)


@pytest.mark.parametrize("naming", list(Naming))
def test_case_ids_parse_as_brats_names(naming):
    case_id = synth.case_id(7, 123, naming)
    for modality in CHANNEL_ORDER:
        parsed = parse_name(
            Path(f"{case_id}{'_' if naming is Naming.BRATS2021 else '-'}{synth.SUFFIX[naming][modality]}.nii.gz")
        )
        assert parsed is not None and parsed.case_id == case_id and parsed.naming is naming
        assert parsed.modality is modality


def test_case_mix_over_a_series():
    """Sizes from small to large, some non-enhancing, some solid, an occasional satellite."""
    anatomy = synth.load_anatomy()
    series = []
    for index in range(300):
        rng = np.random.default_rng([SEED, index])
        series.append(synth.draw_lesions(rng, anatomy, synth.draw_placement(rng)))
    cores = np.array([lesions[0].core_radius for lesions in series])
    assert cores.min() < 6 and cores.max() > 18
    main = [lesions[0] for lesions in series]
    assert 0.05 < np.mean([not lesion.enhancing for lesion in main]) < 0.3
    assert 0.05 < np.mean([lesion.enhancing and not lesion.necrosis for lesion in main]) < 0.6
    assert 0.03 < np.mean([len(lesions) > 1 for lesions in series]) < 0.3


@pytest.mark.parametrize("share", [0.0, 0.6, 1.0])
def test_non_enhancing_share_sets_the_lesion_mix(share):
    """A training set rich in lower-grade looking cores: the share is honoured and, among the
    enhancing lesions, solid and necrotic keep their default proportions."""
    anatomy = synth.load_anatomy()
    main = []
    for index in range(300):
        rng = np.random.default_rng([SEED, index])
        main.append(synth.draw_lesions(rng, anatomy, synth.draw_placement(rng), non_enhancing=share)[0])
    non_enhancing = np.mean([not lesion.enhancing for lesion in main])
    assert abs(non_enhancing - share) < 0.08
    enhancing = [lesion for lesion in main if lesion.enhancing]
    if enhancing:
        solid = np.mean([not lesion.necrosis for lesion in enhancing if lesion.core_radius > 7.0])
        assert abs(solid - synth.SOLID_SHARE) < 0.12


def test_fully_non_enhancing_phantom_has_no_et_label():
    phantom = make_phantom(SEED, 0, Naming.BRATS2021, non_enhancing=1.0)
    assert 4 not in np.unique(phantom.labels) and 1 in np.unique(phantom.labels)


def test_cli_rejects_a_share_outside_0_1(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--non-enhancing", "1.5"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


def test_cli_writes_brats_layout_with_geometry(written, phantom):
    discovery = discover_cases(written / "cases")
    assert [case.case_id for case in discovery.cases] == ["Synth2021_s11_00000", "Synth2021_s11_00001"]
    case = discovery.cases[0]
    assert case.naming is Naming.BRATS2021 and case.problem is None and case.segmentation is not None
    for path in [*case.files.values(), case.segmentation]:
        image = nib.load(path)
        assert image.shape == BRATS_SHAPE
        assert np.allclose(image.affine, LPS_AFFINE)
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        assert image.get_data_dtype() == (np.uint8 if path == case.segmentation else np.int16)
    # The files hold the library's phantom bit for bit: case 0 of a 2-case run is the case made
    # alone, so `--n 1` reproduces the first case of any longer series.
    image, geometry = load_case(case)
    assert np.array_equal(image, phantom.image.astype(np.float32))
    labels, _ = read_label_map(case.segmentation)
    assert np.array_equal(geometry.to_canonical(labels), phantom.labels)
    assert not list((written / "cases" / case.case_id).glob(".*"))  # no temporary files left


def test_cli_preview_is_a_png(written):
    assert (written / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cases_differ_between_indices_and_seeds(written, phantom, tmp_path):
    second, _ = load_case(discover_cases(written / "cases").cases[1])
    assert not np.array_equal(second, phantom.image)
    result = runner.invoke(app, ["synth", str(tmp_path), "--n", "1", "--seed", "12", "--naming", "2023"])
    assert result.exit_code == 0, result.output
    (case,) = discover_cases(tmp_path).cases
    assert case.case_id == "Synth-GLI-s12-00000" and case.naming is Naming.BRATS2023
    assert sorted(p.name for p in (tmp_path / case.case_id).iterdir()) == [
        f"{case.case_id}-{suffix}.nii.gz" for suffix in ("seg", "t1c", "t1n", "t2f", "t2w")
    ]
    image, _ = load_case(case)
    assert not np.array_equal(image, phantom.image)
    labels, _ = read_label_map(case.segmentation)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_missing_extra_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(synth, "TEMPLATE_PACKAGE", "nilearn_not_installed_here")
    with pytest.raises(DependencyError, match=r"pip install 'brats\[synth\]'"):
        synth.template_paths()
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--n", "1"])
    assert result.exit_code == 2
    assert "synth extra" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_preview_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DependencyError, match="matplotlib"):
        synth.save_preview([], tmp_path / "preview.png")


def test_cli_refuses_a_preview_that_is_not_png(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--preview", str(tmp_path / "p.jpg")])
    assert result.exit_code == 2
    assert "png" in result.output
    assert not (tmp_path / "out").exists()
