"""`brats segment` as a user runs it: exit codes, messages, outputs, resumption."""

import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, flair_bundle, ras_affine, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli import __version__
from brats_cli.cli.app import app
from brats_cli.io import TEMP_MARKER, Naming

runner = CliRunner()


def segment(*args):
    return runner.invoke(app, ["segment", *map(str, args)])


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if TEMP_MARKER in p.name]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"brats {__version__}"


def test_batch_with_broken_cases_fails_them_alone(tmp_path, background_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    image = synthetic_image()
    write_case(inp, "BraTS2021_00001", image)
    write_case(inp, "BraTS-GLI-00002-000", image, naming=Naming.BRATS2023, dtype=np.float32)
    missing = write_case(inp, "BraTS2021_00003", image)
    (missing / "BraTS2021_00003_t2.nii.gz").unlink()
    corrupt = write_case(inp, "BraTS2021_00004", image)
    raw = (corrupt / "BraTS2021_00004_t1.nii.gz").read_bytes()
    (corrupt / "BraTS2021_00004_t1.nii.gz").write_bytes(raw[:5000])

    result = segment(inp, out, "--weights", background_bundle.root)
    assert result.exit_code == 1
    assert "error: BraTS2021_00003: missing modality t2" in result.output
    assert "error: BraTS2021_00004: " in result.output and "BraTS2021_00004_t1.nii.gz" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00002-000.nii.gz", "BraTS2021_00001.nii.gz"]
    assert leftovers(out) == []
    for name in ("BraTS-GLI-00002-000.nii.gz", "BraTS2021_00001.nii.gz"):
        written = nib.load(out / name)
        assert written.shape == (240, 240, 155) and written.get_data_dtype() == np.uint8
        assert np.allclose(written.affine, LPS_AFFINE)
    assert "found no tumour" in result.output


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, background_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "BraTS2021_00001", synthetic_image())
    out.mkdir()
    earlier = np.zeros((240, 240, 155), np.uint8)
    earlier[100:110, 100:110, 70:80] = 2  # an earlier run's complete label map (a foreign file is not one)
    nib.save(nib.Nifti1Image(earlier, LPS_AFFINE), out / "BraTS2021_00001.nii.gz")
    before = (out / "BraTS2021_00001.nii.gz").read_bytes()
    (out / f".BraTS2021_00001{TEMP_MARKER}99999.nii.gz").write_bytes(b"left by a killed run")
    result = segment(inp, out, "--weights", background_bundle.root)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output
    assert (out / "BraTS2021_00001.nii.gz").read_bytes() == before
    assert leftovers(out) == []
    result = segment(inp, out, "--weights", background_bundle.root, "--overwrite")
    assert result.exit_code == 0
    assert nib.load(out / "BraTS2021_00001.nii.gz").shape == (240, 240, 155)


def test_the_log_says_what_precision_auto_chose_and_why(tmp_path, background_bundle, monkeypatch):
    import brats_cli.host
    from brats_cli.predictors.torch_backend import auto_precision_reason

    monkeypatch.setattr(brats_cli.host, "cpu_has_native_bf16", lambda: True)
    assert auto_precision_reason("cpu") == "CPU has AVX-512 BF16 or AMX"
    monkeypatch.setattr(brats_cli.host, "cpu_has_native_bf16", lambda: False)
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = segment(tmp_path / "in", tmp_path / "out", "--weights", background_bundle.root, "--precision", "auto")
    assert result.exit_code == 0, result.output
    threads = brats_cli.host.usable_cpus()
    expected = f"device cpu ({threads} threads), precision fp32 (auto: CPU lacks AVX-512 BF16 and AMX)"
    assert expected in " ".join(result.output.split())


def test_harness_mount_and_ras_input_keep_the_input_geometry(tmp_path, background_bundle):
    inp = tmp_path / "mount"
    stored = synthetic_image()[:, ::-1, ::-1, :]
    write_case(tmp_path, "mount", stored, affine=ras_affine())
    # The BraTS 2021 harness: the four files directly in /input, the ID from their names.
    for path in (tmp_path / "mount").iterdir():
        path.rename(inp / path.name.replace("mount", "BraTS2021_01234"))
    out = tmp_path / "out"
    result = segment(inp, out, "--weights", background_bundle.root)
    assert result.exit_code == 0, result.output
    written = nib.load(out / "BraTS2021_01234.nii.gz")
    assert np.allclose(written.affine, ras_affine())
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")


def test_unusable_input_weights_and_output_exit_2(tmp_path, background_bundle):
    result = segment(tmp_path / "missing", tmp_path / "out", "--weights", background_bundle.root)
    assert result.exit_code == 2 and "input folder does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = segment(tmp_path / "empty", tmp_path / "out", "--weights", background_bundle.root)
    assert result.exit_code == 2 and "no BraTS cases found" in result.output
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = segment(tmp_path / "in", tmp_path / "out", "--weights", tmp_path)
    assert result.exit_code == 2 and "not a weights bundle" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = segment(tmp_path / "in", blocker / "out", "--weights", background_bundle.root)
    assert result.exit_code == 2 and "cannot create output folder" in result.output
    result = segment(tmp_path / "in", tmp_path / "out", "--weights", background_bundle.root, "--folds", "x")
    assert result.exit_code == 2


def test_compile_refusals_are_one_line_before_any_case(tmp_path, background_bundle, monkeypatch):
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    options = ("--weights", background_bundle.root, "--compile")
    result = segment(tmp_path / "in", tmp_path / "out", *options, "--fuse-folds")
    assert result.exit_code == 2
    assert "error: --compile and --fuse-folds do not go together: choose one" in " ".join(result.output.split())
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # no cc, gcc or clang
    result = segment(tmp_path / "in", tmp_path / "out", *options)
    assert result.exit_code == 2
    assert "--compile needs a C compiler (cc, gcc or clang) on PATH" in " ".join(result.output.split())
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
def test_compiled_networks_give_the_eager_labels(tmp_path, flair_test_bundle):
    """torch.compile (inductor, here on the CPU; on CUDA in tests/test_gpu.py): the same labels."""
    inp = tmp_path / "in"
    write_case(inp, "BraTS-GLI-00007-000", synthetic_image(), naming=Naming.BRATS2023)
    labels = {}
    for name, options in {"eager": (), "compiled": ("--compile",)}.items():
        result = segment(
            inp,
            tmp_path / name,
            "--weights",
            flair_test_bundle.root,
            "--precision",
            "fp32",
            "--et-threshold",
            "0",
            *options,
        )
        assert result.exit_code == 0, result.output
        labels[name] = np.asarray(nib.load(tmp_path / name / "BraTS-GLI-00007-000.nii.gz").dataobj)
    tumour = (labels["eager"] > 0) | (labels["compiled"] > 0)
    assert tumour.sum() > 10_000
    assert (labels["eager"][tumour] == labels["compiled"][tumour]).mean() >= 0.999


def test_synthetic_tumour_is_segmented_with_nested_labels(tmp_path, flair_test_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "BraTS-GLI-00007-000", synthetic_image(), naming=Naming.BRATS2023)
    result = segment(inp, out, "--weights", flair_test_bundle.root, "--et-threshold", "0")
    assert result.exit_code == 0, result.output
    labels = np.asarray(nib.load(out / "BraTS-GLI-00007-000.nii.gz").dataobj)
    assert set(np.unique(labels)) == {0, 3}  # a uniformly bright tumour: all of it past the ET threshold
    grid = np.indices((240, 240, 155))
    truth = (
        sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip((120, 110, 80), (18, 14, 12), strict=True))) <= 1
    )
    assert 2 * (truth & (labels > 0)).sum() / (truth.sum() + (labels > 0).sum()) > 0.95
    result = segment(inp, tmp_path / "out2", "--weights", flair_test_bundle.root, "--labels", "2021")
    labels = np.asarray(nib.load(tmp_path / "out2" / "BraTS-GLI-00007-000.nii.gz").dataobj)
    assert set(np.unique(labels)) == {0, 4}


def test_real_cases_end_to_end(tmp_path, real_data, flair_test_bundle):
    """The main job on real BraTS-space cases (2023 names, BraTS-Toolkit names renamed to 2021
    ones) with a tiny random bundle, plus a broken case: valid outputs, the broken one named."""
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(real_data / "BraTS-GLI-00001-000", inp / "BraTS-GLI-00001-000")
    tcga = inp / "TCGA-DU-7294"
    tcga.mkdir()
    for ours, theirs in (("flair", "fla"), ("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2")):
        shutil.copy(
            real_data / "TCGA-DU-7294" / f"TCGA-DU-7294_{theirs}_bet.nii.gz", tcga / f"TCGA-DU-7294_{ours}.nii.gz"
        )
    broken = inp / "BraTS2021_00666"
    broken.mkdir()
    for suffix in ("flair", "t1", "t1ce"):
        shutil.copy(tcga / f"TCGA-DU-7294_{suffix}.nii.gz", broken / f"BraTS2021_00666_{suffix}.nii.gz")
    result = segment(inp, out, "--weights", flair_test_bundle.root, "--et-threshold", "0", "--profile")
    assert result.exit_code == 1, result.output
    assert "error: BraTS2021_00666: missing modality t2" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["BraTS-GLI-00001-000.nii.gz", "TCGA-DU-7294.nii.gz"]
    for case_id, source, allowed in (
        ("BraTS-GLI-00001-000", "BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz", {0, 1, 2, 3}),
        ("TCGA-DU-7294", "TCGA-DU-7294/TCGA-DU-7294_fla_bet.nii.gz", {0, 1, 2, 4}),
    ):
        reference = nib.load(real_data / source)
        written = nib.load(out / f"{case_id}.nii.gz")
        labels = np.asarray(written.dataobj)
        assert written.shape == (240, 240, 155) and labels.dtype == np.uint8
        assert np.allclose(written.affine, reference.affine)
        assert int(written.header["sform_code"]) == int(reference.header["sform_code"])
        assert set(np.unique(labels).tolist()) <= allowed
        assert {1, 2} <= set(np.unique(labels).tolist())  # the full path ran: nested regions found
        assert not labels[:24].any() and not labels[216:].any()  # nothing outside the 192 crop
    assert "seconds per stage" in result.output
    assert leftovers(out) == []


def test_a_missing_default_bundle_is_a_one_line_error(tmp_path, monkeypatch):
    import brats_cli.bundle

    monkeypatch.setattr(brats_cli.bundle, "default_bundle_path", lambda backend: tmp_path / f"none-{backend.value}")
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    result = segment(tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 2
    assert "none-torch: the default weights bundle is missing (no manifest.json); reinstall brats" in result.output
    # A pip install has no default ONNX bundle (the image exports one): the error says how to make it.
    result = segment(tmp_path / "in", tmp_path / "out", "--backend", "onnx")
    assert result.exit_code == 2
    assert "none-onnx: no default ONNX bundle in this installation" in result.output
    assert "brats export --out DIR" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tta_mirrors_every_stage_and_refuses_unknown_axes(tmp_path):
    write_case(tmp_path / "in", "BraTS2021_00001", synthetic_image())
    bundle = flair_bundle(tmp_path / "bundle", window=(64, 64, 64))
    plain = segment(tmp_path / "in", tmp_path / "plain", "--weights", bundle.root, "--precision", "fp32")
    assert plain.exit_code == 0, plain.output
    mirrored = segment(tmp_path / "in", tmp_path / "tta", "--weights", bundle.root, "--precision", "fp32", "--tta")
    assert mirrored.exit_code == 0, mirrored.output
    assert "test-time mirroring 8 flips" in " ".join(mirrored.output.split())
    # The FLAIR networks are voxel-wise functions of FLAIR, so mirroring cannot change their labels.
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "tta" / "BraTS2021_00001.nii.gz").dataobj),
        np.asarray(nib.load(tmp_path / "plain" / "BraTS2021_00001.nii.gz").dataobj),
    )
    refused = segment(tmp_path / "in", tmp_path / "x", "--weights", bundle.root, "--tta", "--tta-axes", "3")
    assert refused.exit_code == 2 and "--tta-axes" in refused.output
