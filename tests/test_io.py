import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, ras_affine, synthetic_image, write_case

from brats_cli.errors import CaseError, InputError
from brats_cli.io import (
    BRATS_SHAPE,
    Modality,
    Naming,
    discover_cases,
    load_case,
    parse_name,
    read_label_map,
    write_label_map,
)


@pytest.mark.parametrize(
    "name, case_id, naming, modality",
    [
        ("BraTS2021_00000_flair.nii.gz", "BraTS2021_00000", Naming.BRATS2021, Modality.FLAIR),
        ("BraTS2021_00000_t1ce.nii", "BraTS2021_00000", Naming.BRATS2021, Modality.T1CE),
        ("BraTS2021_00000_t1.nii.gz", "BraTS2021_00000", Naming.BRATS2021, Modality.T1),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "BraTS-GLI-00000-000", Naming.BRATS2023, Modality.FLAIR),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000", Naming.BRATS2023, Modality.T1CE),
        ("BraTS-MET-00001-000-t2w.nii", "BraTS-MET-00001-000", Naming.BRATS2023, Modality.T2),
    ],
)
def test_both_naming_conventions_parse(name, case_id, naming, modality):
    parsed = parse_name(Path("somewhere") / name)
    assert (parsed.case_id, parsed.naming, parsed.modality) == (case_id, naming, modality)


def test_seg_and_foreign_names():
    assert parse_name(Path("BraTS2021_00000_seg.nii.gz")).modality is None
    assert parse_name(Path("TCGA-DU-7294_fla_bet.nii.gz")) is None
    assert parse_name(Path("case7/t1c.nii.gz")).case_id == "case7"


def test_discovery_of_a_folder_of_cases_a_case_folder_and_the_harness_mount(tmp_path, make_case):
    make_case("BraTS2021_00001", root=tmp_path / "many")
    make_case("BraTS-GLI-00002-000", root=tmp_path / "many", naming=Naming.BRATS2023)
    found = discover_cases(tmp_path / "many")
    assert [c.case_id for c in found.cases] == ["BraTS-GLI-00002-000", "BraTS2021_00001"]
    assert [c.naming for c in found.cases] == [Naming.BRATS2023, Naming.BRATS2021]
    assert all(c.problem is None for c in found.cases)
    # One case folder given directly: its files lie in INPUT itself (also the BraTS 2021 harness).
    single = discover_cases(tmp_path / "many" / "BraTS2021_00001")
    assert [c.case_id for c in single.cases] == ["BraTS2021_00001"]
    assert set(single.cases[0].files) == set(Modality)


def test_discovery_reports_missing_and_duplicated_modalities_and_notes_extra_files(tmp_path, make_case):
    root = tmp_path / "in"
    missing = make_case("BraTS2021_00001", root=root)
    (missing / "BraTS2021_00001_t1ce.nii.gz").unlink()
    doubled = make_case("BraTS2021_00002", root=root)
    shutil.copy(doubled / "BraTS2021_00002_t2.nii.gz", doubled / "BraTS2021_00002_t2.nii")
    extra = make_case("BraTS2021_00003", root=root)
    (extra / "notes.nii.gz").write_bytes(b"")
    found = discover_cases(root)
    problems = {c.case_id: c.problem for c in found.cases}
    assert problems["BraTS2021_00001"] == "missing modality t1ce"
    assert problems["BraTS2021_00002"].startswith("two files for t2:")
    assert problems["BraTS2021_00003"] is None
    assert any("notes.nii.gz" in note and "ignored" in note for note in found.notes)


def test_unusable_input_folders(tmp_path):
    with pytest.raises(InputError, match=r"does not exist"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no BraTS cases"):
        discover_cases(tmp_path / "empty")


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_load_case_reads_any_dtype_in_channel_order(tmp_path, make_case, dtype):
    image = synthetic_image()
    folder = make_case(image=image, dtype=dtype)
    (case,) = discover_cases(folder).cases
    loaded, geometry = load_case(case)
    assert loaded.shape == (4, *BRATS_SHAPE) and loaded.dtype == np.float32
    assert np.array_equal(loaded, image.astype(dtype).astype(np.float32))
    assert np.allclose(geometry.affine, LPS_AFFINE)


def test_ras_input_is_read_canonically_and_written_back_in_its_own_geometry(tmp_path):
    image = synthetic_image()
    # The same anatomy stored RAS: the file's voxel (i, j, k) is LPS voxel (239 - i, 239 - j, k).
    stored = image[:, ::-1, ::-1, :]
    folder = write_case(tmp_path, "BraTS2021_00001", stored, affine=ras_affine())
    assert nib.aff2axcodes(nib.load(next(folder.iterdir())).affine) == ("R", "A", "S")
    (case,) = discover_cases(folder).cases
    canonical, geometry = load_case(case)
    assert np.array_equal(canonical, image.astype(np.int16).astype(np.float32))
    labels = np.zeros(BRATS_SHAPE, dtype=np.uint8)
    labels[100:120, 90:100, 70:80] = 2
    labels[105:110, 92:95, 72:75] = 4
    out = tmp_path / "out.nii.gz"
    write_label_map(labels, geometry, out)
    written = nib.load(out)
    assert written.shape == BRATS_SHAPE
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, ras_affine())
    assert np.allclose(written.header.get_qform(), ras_affine()) and int(written.header["qform_code"]) == 1
    assert np.allclose(written.header.get_sform(), ras_affine()) and int(written.header["sform_code"]) == 1
    data = np.asarray(written.dataobj)
    assert np.array_equal(data, labels[::-1, ::-1, :])  # back in the file's own voxel order
    round_trip, _ = read_label_map(out)
    assert np.array_equal(geometry.to_canonical(round_trip), labels)


def test_lps_geometry_round_trip_is_the_identity(tmp_path, make_case):
    (case,) = discover_cases(make_case()).cases
    _, geometry = load_case(case)
    labels = np.zeros(BRATS_SHAPE, dtype=np.uint8)
    labels[10, 20, 30] = 1
    write_label_map(labels, geometry, tmp_path / "x.nii.gz")
    data, written = read_label_map(tmp_path / "x.nii.gz")
    assert np.array_equal(data, labels) and written.matches(geometry)


def _case(make_case, **kwargs):
    (case,) = discover_cases(make_case(**kwargs)).cases
    return case


def _rewrite(path: Path, data: np.ndarray, affine=LPS_AFFINE) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def test_bad_cases_fail_with_one_line_naming_the_file(tmp_path, make_case):
    case = _case(make_case, case_id="BraTS2021_00001")
    path = case.files[Modality.T2]
    _rewrite(path, np.zeros((240, 240, 154), dtype=np.int16) + 1)
    with pytest.raises(CaseError, match=r"shape mismatch: .*_flair.nii.gz is \(240, 240, 155\), .*_t2.nii.gz is"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00002")
    shifted = LPS_AFFINE.copy()
    shifted[0, 3] = 5
    _rewrite(case.files[Modality.T1], np.ones(BRATS_SHAPE, dtype=np.int16), shifted)
    with pytest.raises(CaseError, match=r"affine mismatch between BraTS2021_00002_flair.nii.gz and .*_t1.nii.gz"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00003", dtype=np.float32)
    data = np.asarray(nib.load(case.files[Modality.T1CE]).dataobj).copy()
    data[5, 5, 5] = np.nan
    _rewrite(case.files[Modality.T1CE], data)
    with pytest.raises(CaseError, match=r"NaN or Inf voxels in BraTS2021_00003_t1ce.nii.gz"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00004")
    _rewrite(case.files[Modality.FLAIR], np.zeros(BRATS_SHAPE, dtype=np.int16))
    with pytest.raises(CaseError, match=r"BraTS2021_00004_flair.nii.gz is all zero"):
        load_case(case)


def test_shapes_other_than_brats_space_are_refused(tmp_path):
    image = np.ones((4, 200, 200, 150), dtype=np.float32)
    folder = tmp_path / "BraTS2021_00009"
    folder.mkdir()
    for modality, suffix in zip(Modality, ("flair", "t1", "t1ce", "t2"), strict=True):
        del modality
        _rewrite(folder / f"BraTS2021_00009_{suffix}.nii.gz", image[0])
    (case,) = discover_cases(folder).cases
    with pytest.raises(CaseError, match=r"not BraTS space 240x240x155"):
        load_case(case)


def test_corrupt_truncated_foreign_and_4d_files(tmp_path, make_case):
    case = _case(make_case, case_id="BraTS2021_00001")
    raw = case.files[Modality.FLAIR].read_bytes()
    case.files[Modality.FLAIR].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaseError, match=r"BraTS2021_00001_flair.nii.gz: .*(corrupt|truncated|readable)"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00002")
    case.files[Modality.T1].write_bytes(b"this is not an image at all")
    with pytest.raises(CaseError, match=r"BraTS2021_00002_t1.nii.gz: not a readable NIfTI"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00003")
    case.files[Modality.T2].write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(CaseError, match=r"BraTS2021_00003_t2.nii.gz"):
        load_case(case)

    case = _case(make_case, case_id="BraTS2021_00004")
    _rewrite(case.files[Modality.T2], np.ones((*BRATS_SHAPE, 2), dtype=np.int16))
    with pytest.raises(CaseError, match=r"4D image"):
        load_case(case)

    # An RGB volume (NIfTI datatype 128; also what a fuzzed datatype code can turn into): a void
    # numpy type that cannot become float32.
    case = _case(make_case, case_id="BraTS2021_00005")
    rgb = np.zeros(BRATS_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, LPS_AFFINE), case.files[Modality.T1CE])
    with pytest.raises(CaseError, match=r"BraTS2021_00005_t1ce.nii.gz: voxel type .* is not a scalar integer or float"):
        load_case(case)
