"""`brats synth`: phantom cases in BraTS space (layout, geometry, labels, contrasts, determinism)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
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
    SUFFIX,
    Modality,
    Naming,
    discover_cases,
    load_case,
    parse_name,
    read_label_map,
)
from brats_cli.labels import LabelConvention, Region, region_masks
from brats_cli.synth import Tissue, anatomy, fields, generator2, make_phantom, tumours

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
            Path(f"{case_id}{'_' if naming is Naming.BRATS2021 else '-'}{SUFFIX[naming][modality]}.nii.gz")
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
    monkeypatch.setattr(anatomy, "TEMPLATE_PACKAGE", "nilearn_not_installed_here")
    with pytest.raises(DependencyError, match=r"pip install 'brats-resunet\[synth\]'"):
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


# ---------------------------------------------------------------------------------------------
# Generator 2

# sha256 of make_phantom(11, 0)'s image, labels and tissue bytes, as generator 1 has always made
# them (numpy 2.4, SimpleITK 2.5; a library upgrade that moves floating-point results shows here too),
# per OpenBLAS kernel: the phantom's matrix products round differently in each (measured: the
# AVX-512 SkylakeX kernel, and the Haswell kernel that OPENBLAS_CORETYPE=Haswell selects on the
# same CPU; Zen uses Haswell's). Byte identity holds for one kernel.
V1_SHA256 = {
    "SkylakeX": "d625481acffab4e006be3ad4c1a32c1b94b978697358a8b7c815ca9e3d38a517",
    "Haswell": "083d92de931aa7c2db408b074c5a1556ed0d12752876507f2cec3fb33ed2ae4e",
    "Zen": "083d92de931aa7c2db408b074c5a1556ed0d12752876507f2cec3fb33ed2ae4e",
}
V2_DESCRIPTION = b"brats-synth v2 seed 11 index 0"


@pytest.fixture(scope="module")
def phantom_v2() -> synth.Phantom:
    return make_phantom(SEED, 0, Naming.BRATS2021, generator=2)


def _high_frequency(channel: np.ndarray, interior: np.ndarray, axis: int) -> float:
    """Mean squared second difference along `axis` over voxels whose three neighbours along it lie
    in `interior`: the high-frequency energy along that axis."""
    steps = np.diff(channel.astype(np.float64), n=2, axis=axis)
    size = interior.shape[axis]
    within = np.ones(steps.shape, bool)
    for start in range(3):
        within &= np.take(interior, range(start, size - 2 + start), axis=axis)
    return float(np.mean(steps[within] ** 2))


def _openblas_kernel() -> str:
    from threadpoolctl import threadpool_info

    kernels = [info.get("architecture", "") for info in threadpool_info() if info.get("internal_api") == "openblas"]
    return kernels[0] if kernels else "none"


def test_generator_1_is_unchanged(phantom, written):
    kernel = _openblas_kernel()
    if kernel not in V1_SHA256:
        pytest.skip(f"no reference digest of generator 1 for the OpenBLAS kernel {kernel!r}")
    digest = hashlib.sha256()
    for array in (phantom.image, phantom.labels, phantom.tissue):
        digest.update(array.tobytes())
    assert digest.hexdigest() == V1_SHA256[kernel], kernel
    assert phantom.generator == 1 and phantom.description == "" and phantom.acquisition == ()
    # Its files record no version: descrip stays empty, so they are byte for byte as before.
    (case, _) = discover_cases(written / "cases").cases
    assert all(nib.load(path).header["descrip"].item() == b"" for path in [*case.files.values(), case.segmentation])


def test_v2_arrays_background_int16_and_label_set(phantom_v2, phantom):
    assert phantom_v2.generator == 2 and phantom_v2.case_id == phantom.case_id
    assert phantom_v2.image.shape == (4, *BRATS_SHAPE) and phantom_v2.image.dtype == np.int16
    assert phantom_v2.labels.shape == BRATS_SHAPE and phantom_v2.labels.dtype == np.uint8
    brain = phantom_v2.tissue > 0
    for channel in phantom_v2.image:
        assert np.array_equal(channel != 0, brain)  # background exactly 0, brain nonzero
        assert channel.min() >= 0 and channel.max() < np.iinfo(np.int16).max  # scaled to fit, never clipped
    assert not phantom_v2.labels[~brain].any()
    assert set(np.unique(phantom_v2.labels)) == set(np.unique(phantom.labels)) == {0, 1, 2, 4}
    assert 0.9e6 < brain.sum() < 2.0e6
    # Every channel's contrast is its own: the WM-relative levels differ between channels and from v1.
    levels = [
        settings.levels[Tissue.GM] / synth.CONTRAST[Tissue.GM][c] for c, settings in enumerate(phantom_v2.acquisition)
    ]
    assert len(set(levels)) == 4


def test_v2_unlabelled_look_alikes(phantom_v2):
    """Bright vessels and choroid plexus on T1ce and periventricular FLAIR hyperintensity, all
    outside the label map: the false positives real scans offer a model."""
    for tissue in (Tissue.VESSEL, Tissue.CHOROID, Tissue.PERIVENTRICULAR):
        voxels = phantom_v2.tissue == tissue
        assert voxels.sum() > 500, tissue.name
        assert not phantom_v2.labels[voxels].any(), tissue.name
    assert _class_mean(phantom_v2, Modality.T1CE, Tissue.VESSEL) > 1.3 * _class_mean(
        phantom_v2, Modality.T1CE, Tissue.WM
    )
    # The plexus is partial-volumed into the CSF around it (and this T1ce is in 3 mm slices, shifted).
    choroid = _class_mean(phantom_v2, Modality.T1CE, Tissue.CHOROID)
    assert choroid > 1.3 * _class_mean(phantom_v2, Modality.T1CE, Tissue.CSF)
    assert choroid > _class_mean(phantom_v2, Modality.T1CE, Tissue.WM)
    assert _class_mean(phantom_v2, Modality.FLAIR, Tissue.PERIVENTRICULAR) > 1.2 * _class_mean(
        phantom_v2, Modality.FLAIR, Tissue.WM
    )


def test_v2_labels_do_not_depend_on_the_rendering(phantom_v2, monkeypatch):
    """Another rendering of the same case keeps the labels voxel for voxel (they come from the
    tumour masks, drawn from a stream the intensity draws never touch): T1, T1ce and T2 with
    inverted contrasts and gamma, unshifted, 2023 names, and FLAIR as drawn but in 5 mm slices
    along x. That FLAIR loses its high frequencies along x, far more than along y and z."""
    drawn = synth.draw_acquisition
    flair = phantom_v2.acquisition[0]
    assert flair.slice_axis is None and flair.shift == (0.0, 0.0, 0.0)

    def other(rng):
        channels = [
            replace(
                settings,
                levels={tissue: 1.0 / level for tissue, level in settings.levels.items()},
                gamma=1.0 / settings.gamma,
                shift=(0.0, 0.0, 0.0),
            )
            for settings in drawn(rng)
        ]
        channels[0] = replace(flair, slice_axis=0, slice_mm=5, slice_phase=2)
        return tuple(channels)

    monkeypatch.setattr(generator2, "draw_acquisition", other)
    rendered = make_phantom(SEED, 0, Naming.BRATS2023, generator=2)
    assert np.array_equal(rendered.labels, np.where(phantom_v2.labels == 4, 3, phantom_v2.labels))
    assert np.array_equal(rendered.tissue, phantom_v2.tissue)
    for channel in range(4):
        assert not np.array_equal(rendered.image[channel], phantom_v2.image[channel])
    interior = ndimage.binary_erosion(rendered.tissue > 0, iterations=4)
    kept = [
        _high_frequency(rendered.image[0], interior, axis) / _high_frequency(phantom_v2.image[0], interior, axis)
        for axis in range(3)
    ]
    assert kept[0] < 0.25 and kept[0] < 0.5 * min(kept[1], kept[2])


def test_thick_slices_average_blocks_and_interpolate():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((12, 10, 37)).astype(np.float32)
    for thickness, phase in ((2, 0), (3, 1), (6, 5)):
        out = synth.thick_slices(noise, 2, thickness, phase)
        assert out.shape == noise.shape
        assert np.mean(np.diff(out, axis=2) ** 2) < 0.5 * np.mean(np.diff(out, axis=0) ** 2)
        # A ramp along the axis survives between the first and last slice centres.
        ramp = np.broadcast_to(np.arange(37, dtype=np.float32), (2, 2, 37))
        kept = synth.thick_slices(ramp, 2, thickness, phase)
        inner = slice(2 * thickness, 37 - 2 * thickness)  # clear of the edge-padded slices
        assert np.allclose(kept[..., inner], ramp[..., inner], atol=1e-4)


def test_cli_generator_2_writes_the_library_case_with_its_version(tmp_path, phantom_v2):
    result = runner.invoke(app, ["synth", str(tmp_path), "--n", "1", "--seed", str(SEED), "--generator", "2"])
    assert result.exit_code == 0, result.output
    (case,) = discover_cases(tmp_path).cases
    # A second, separate run of (seed 11, index 0): generator 2 is deterministic.
    image, geometry = load_case(case)
    assert np.array_equal(image, phantom_v2.image.astype(np.float32))
    labels, _ = read_label_map(case.segmentation)
    assert np.array_equal(geometry.to_canonical(labels), phantom_v2.labels)
    for path in [*case.files.values(), case.segmentation]:
        assert nib.load(path).header["descrip"].item() == V2_DESCRIPTION


def test_unknown_generator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="generator"):
        make_phantom(SEED, 0, generator=5)
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--generator", "5"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Generator 3


@pytest.fixture(scope="module")
def phantom_v3() -> synth.Phantom:
    return make_phantom(SEED, 0, Naming.BRATS2021, non_enhancing=1.0, generator=3)


def test_v3_is_a_low_grade_glioma_with_its_version(phantom_v3, tmp_path):
    """Every lesion non-enhancing: labels NCR and edema only; the core brighter than its edema on
    T2, darker on T1 and not enhancing, as LOW_GRADE_RATIO draws it (per-class jitter 5 %, bias
    field and texture move the measured means a little more)."""
    assert phantom_v3.generator == 3 and phantom_v3.description == "brats-synth v3 seed 11 index 0"
    assert set(np.unique(phantom_v3.labels)) == {0, 1, 2}
    core = phantom_v3.tissue == Tissue.NON_ENHANCING
    # Where the margin is wide and the surface concave, core can outweigh edema just outside the
    # label boundary: the dominant class is core there, the label edema, as intended.
    assert core.sum() > 1000 and np.mean(phantom_v3.labels[core] == 1) > 0.9

    def mean(modality, tissue):
        return _class_mean(phantom_v3, modality, tissue)

    def ratio(modality):
        return mean(modality, Tissue.NON_ENHANCING) / mean(modality, Tissue.EDEMA)

    assert ratio(Modality.T2) > 1.0 and ratio(Modality.T1) < 1.0
    low, high = synth.LOW_GRADE_RATIO[Modality.T2]
    assert 0.85 * low < ratio(Modality.T2) < 1.15 * high
    assert mean(Modality.T2, Tissue.NON_ENHANCING) > 1.5 * mean(Modality.T2, Tissue.WM)
    # No enhancement: on T1ce the core is as on T1, below white matter.
    t1, t1ce = (mean(m, Tissue.NON_ENHANCING) / mean(m, Tissue.WM) for m in (Modality.T1, Modality.T1CE))
    assert t1ce < 1.0 and abs(t1ce / t1 - 1.0) < 0.2
    # The same case of generator 1 is another case: generator 3 has its own stream.
    assert not np.array_equal(phantom_v3.labels, make_phantom(SEED, 0, non_enhancing=1.0).labels)
    written = synth.write_phantom(phantom_v3, tmp_path)
    assert nib.load(next(written.glob("*_seg.nii.gz"))).header["descrip"].item() == b"brats-synth v3 seed 11 index 0"


@pytest.mark.parametrize("level", [0.5, 0.25])
def test_v3_margin_blends_core_into_edema_around_the_label_boundary(level):
    """A ball of core inside a larger whole tumour: with a 2 mm margin the core fraction is about
    `level` on the label boundary, below 1 just inside it and above 0 just outside; edema takes
    the difference, so the tumour's total fraction is as with the sharp 0.6 mm boundary, and no
    core reaches past the whole-tumour envelope."""
    grid = np.linalg.norm(np.indices((41, 41, 41)) - 20.0, axis=0)
    core, envelope = grid <= 8, grid <= 12
    sharp = {Tissue.NON_ENHANCING: fields.blur(core, 0.6), Tissue.EDEMA: fields.blur(envelope & ~core, 0.6)}
    blended = dict(sharp)
    tumours.blend_margin(blended, core, envelope, 2.0, level)
    wide, edema = blended[Tissue.NON_ENHANCING], blended[Tissue.EDEMA]
    assert wide is not None and edema is not None and sharp[Tissue.NON_ENHANCING] is not None
    # The boundary runs between the last core voxels (radius <= 8) and the first edema ones.
    last, first = (grid > 7.5) & (grid <= 8), (grid > 8) & (grid <= 8.5)
    assert wide[first].mean() < level < wide[last].mean()
    assert abs((wide[last].mean() + wide[first].mean()) / 2 - level) < 0.06
    inside, outside = (grid > 6.5) & (grid <= 7.5), (grid > 8.5) & (grid <= 9.5)
    assert wide[inside].mean() < sharp[Tissue.NON_ENHANCING][inside].mean() - 0.1
    assert wide[outside].mean() > 0.05 > sharp[Tissue.NON_ENHANCING][outside].mean()
    total = wide + edema
    assert np.allclose(total[grid <= 11], (sharp[Tissue.NON_ENHANCING] + sharp[Tissue.EDEMA])[grid <= 11], atol=0.02)
    assert wide[grid > 14].max() < 0.01


# ---------------------------------------------------------------------------------------------
# Generator 4: outlines from real label maps


def _rod_label_map(path: Path, enhancing: int = 4, spacing: float = 1.0, extra: dict | None = None) -> Path:
    """A BraTS-grid label map whose tumour is unlike any drawn ellipsoid: a core ball (ET shell,
    a little necrosis) at one end of a long thin rod of edema (70 x 14 x 14 voxels)."""
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[80:150, 113:127, 70:84] = 2
    box = (slice(80, 101), slice(110, 131), slice(67, 88))  # around the ball at (90, 120, 77)
    ball = np.linalg.norm(np.indices((21, 21, 21)) - 10.0, axis=0)
    labels[box][ball <= 9] = enhancing
    labels[box][ball <= 2] = 1
    for value, where in (extra or {}).items():
        labels[where] = value
    affine = LPS_AFFINE.copy()
    affine[:3, :3] *= spacing
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


@pytest.fixture(scope="module")
def rod(tmp_path_factory) -> Path:
    return _rod_label_map(tmp_path_factory.mktemp("shapes") / "rod_seg.nii.gz")


@pytest.fixture(scope="module")
def rod_shapes(rod) -> tuple[synth.TumourShape, ...]:
    return synth.load_tumour_shapes([rod])


def test_v4_loads_a_label_map_as_nested_masks(rod, rod_shapes):
    (shape,) = rod_shapes
    labels = np.asarray(nib.load(rod).dataobj)
    assert shape.name == "rod_seg"
    assert shape.whole.shape == (70, 19, 19)  # cut to the whole tumour's box
    assert shape.whole.sum() == (labels > 0).sum()
    assert shape.core.sum() == np.isin(labels, [1, 4]).sum() and shape.enhancing.sum() == (labels == 4).sum()
    assert (shape.enhancing <= shape.core).all() and (shape.core <= shape.whole).all()


def _principal_lengths(mask: np.ndarray) -> np.ndarray:
    """Standard deviations of a mask's voxel positions along its principal axes, largest first."""
    return np.sqrt(np.sort(np.linalg.eigvalsh(np.cov(np.argwhere(mask).T)))[::-1])


@pytest.mark.parametrize("draw", range(4))
def test_v4_placed_outline_keeps_the_shape_moved_turned_and_scaled(rod_shapes, draw):
    """Wherever and however it is turned, the placed outline is the rod's: still about five times
    longer than wide, its core centred where asked (up to the elastic warp), the masks nested, its size within the scale
    range (SHAPE_SCALE x SHAPE_STRETCH)."""
    (shape,) = rod_shapes
    centre = np.array([110.0, 130.0, 80.0])
    placed = synth.place_shape(np.random.default_rng([5, draw]), shape, centre)
    assert (placed.enhancing <= placed.core).all() and (placed.core <= placed.whole).all()
    source, moved = _principal_lengths(shape.whole), _principal_lengths(placed.whole)
    assert moved[0] / moved[2] > 0.6 * source[0] / source[2] > 2.0
    core_centre = np.argwhere(placed.core).mean(axis=0) + placed.low
    # Moved only by the elastic warp (SHAPE_WARP_MM per axis, smooth: a few mm at most).
    assert np.linalg.norm(core_centre - centre) < 3 * synth.SHAPE_WARP_MM
    low = (synth.SHAPE_SCALE[0] * (1 - synth.SHAPE_STRETCH)) ** 3
    high = (synth.SHAPE_SCALE[1] * (1 + synth.SHAPE_STRETCH)) ** 3
    assert 0.8 * low < placed.whole.sum() / shape.whole.sum() < 1.2 * high


@pytest.fixture(scope="module")
def phantom_v4(rod_shapes) -> synth.Phantom:
    return make_phantom(SEED, 0, Naming.BRATS2021, generator=4, shapes=rod_shapes)


def test_v4_takes_the_main_tumour_from_the_label_map(phantom_v4, rod_shapes):
    """The case is labelled like real data, records the outline it took, depends only on (seed,
    index, the shapes) and is not generator 3's case: its whole tumour is the rod's elongated
    outline, where generator 3 draws roughened ellipsoids (axis ratios 0.75-1.3)."""
    assert phantom_v4.generator == 4
    assert phantom_v4.description == "brats-synth v4 seed 11 index 0 shape rod_seg"
    labels = phantom_v4.labels
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and (labels == 2).any() and (labels == 1).any()
    masks = region_masks(labels, LabelConvention.BRATS2021)
    assert (masks[Region.ET] <= masks[Region.TC]).all() and (masks[Region.TC] <= masks[Region.WT]).all()
    # Labels only inside the brain, which is the nonzero voxels of every channel.
    assert (phantom_v4.image[:, masks[Region.WT]] > 0).all()
    biggest, count = ndimage.label(masks[Region.WT])
    main = biggest == 1 + int(np.argmax(ndimage.sum_labels(masks[Region.WT], biggest, range(1, count + 1))))
    lengths = _principal_lengths(main)
    assert lengths[0] / lengths[2] > 2.0
    again = make_phantom(SEED, 0, Naming.BRATS2021, generator=4, shapes=rod_shapes)
    assert np.array_equal(again.labels, labels) and np.array_equal(again.image, phantom_v4.image)
    assert not np.array_equal(make_phantom(SEED, 0, generator=3).labels, labels)


def test_v4_needs_shapes_and_only_it_takes_them(rod_shapes):
    with pytest.raises(ValueError, match="generator 4"):
        make_phantom(SEED, 0, generator=4)
    with pytest.raises(ValueError, match="generator 4"):
        make_phantom(SEED, 0, generator=3, shapes=rod_shapes)


def test_cli_generator_4_writes_the_library_case(tmp_path, rod, phantom_v4):
    result = runner.invoke(
        app, ["synth", str(tmp_path / "out"), "--n", "1", "--seed", str(SEED), "--generator", "4", "--shapes", str(rod)]
    )
    assert result.exit_code == 0, result.output
    (case,) = discover_cases(tmp_path / "out").cases
    labels, geometry = read_label_map(case.segmentation)
    assert np.array_equal(geometry.to_canonical(labels), phantom_v4.labels)
    assert nib.load(case.segmentation).header["descrip"].item() == b"brats-synth v4 seed 11 index 0 shape rod_seg"


def test_v4_2023_label_maps_and_folders_are_read(tmp_path, rod_shapes):
    """ET = 3 (2023) reads as ET = 4 does; a folder gives its NIfTI files in name order."""
    folder = tmp_path / "maps"
    folder.mkdir()
    _rod_label_map(folder / "b.nii.gz", enhancing=3)
    _rod_label_map(folder / "a.nii", enhancing=4)
    (folder / "notes.txt").write_text("not a label map")
    shapes = synth.load_tumour_shapes([folder])
    assert [shape.name for shape in shapes] == ["a", "b"]
    for shape in shapes:
        assert np.array_equal(shape.enhancing, rod_shapes[0].enhancing)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("stray", "label(s) 5 are not BraTS labels"),
        ("both", "holds both 3 and 4"),
        ("spacing", "voxels of 2 x 2 x 2 mm"),
        ("no core", "no tumour core"),
        ("not nifti", "rod_seg.nii.gz"),
    ],
)
def test_cli_refuses_an_unusable_shape_before_writing(tmp_path, kind, message):
    """One line naming the label map and what is wrong, exit 2, no output folder."""
    path = tmp_path / "rod_seg.nii.gz"
    if kind == "stray":
        _rod_label_map(path, extra={5: (slice(100, 102), slice(120, 122), slice(75, 77))})
    elif kind == "both":
        _rod_label_map(path, extra={3: (slice(100, 102), slice(120, 122), slice(75, 77))})
    elif kind == "spacing":
        _rod_label_map(path, spacing=2.0)
    elif kind == "no core":
        labels = np.zeros(BRATS_SHAPE, np.uint8)
        labels[100:120, 100:120, 70:90] = 2
        nib.save(nib.Nifti1Image(labels, LPS_AFFINE), path)
    else:
        path.write_bytes(b"not a NIfTI file")
    out = tmp_path / "out"
    result = runner.invoke(app, ["synth", str(out), "--generator", "4", "--shapes", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and str(path) in result.output
    assert not out.exists()


def test_cli_generator_4_without_shapes_or_shapes_without_it_is_refused(tmp_path, rod):
    for arguments in (["--generator", "4"], ["--generator", "3", "--shapes", str(rod)]):
        result = runner.invoke(app, ["synth", str(tmp_path / "out"), *arguments])
        assert result.exit_code == 2 and "--shapes" in result.output
        assert not (tmp_path / "out").exists()
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "--generator", "4", "--shapes", str(missing)])
    assert result.exit_code == 2 and f"{missing}: no such file or folder" in result.output
