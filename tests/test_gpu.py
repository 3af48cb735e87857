"""`brats segment` on a CUDA GPU (marker `gpu`; run on the GPU machine with `pytest -m gpu`): the
same labels as the CPU in fp32, bf16 chosen by `--precision auto` and said in the log, and
`--compile` agreeing with eager."""

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.io import Naming

pytestmark = pytest.mark.gpu
runner = CliRunner()


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def segment_labels(inp, out, bundle, *options) -> tuple[np.ndarray, np.ndarray, str]:
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(bundle.root), *options])
    assert result.exit_code == 0, result.output
    image = nib.load(out / "BraTS-GLI-00007-000.nii.gz")
    return np.asarray(image.dataobj), image.affine, " ".join(result.output.split())  # rich wraps lines


def test_cuda_fp32_labels_equal_the_cpu_labels(cuda, tmp_path, flair_test_bundle):
    inp = tmp_path / "in"
    write_case(inp, "BraTS-GLI-00007-000", synthetic_image(), naming=Naming.BRATS2023)
    options = ("--precision", "fp32", "--et-threshold", "0")
    on_gpu, gpu_affine, log = segment_labels(inp, tmp_path / "gpu", flair_test_bundle, "--device", "cuda", *options)
    on_cpu, cpu_affine, _ = segment_labels(inp, tmp_path / "cpu", flair_test_bundle, "--device", "cpu", *options)
    assert "device cuda" in log and "precision fp32" in log
    np.testing.assert_array_equal(gpu_affine, cpu_affine)
    tumour = (on_gpu > 0) | (on_cpu > 0)
    assert tumour.sum() > 10_000
    assert (on_gpu[tumour] == on_cpu[tumour]).mean() >= 0.999


def test_cuda_auto_precision_is_bf16_and_says_why(cuda, tmp_path, flair_test_bundle):
    inp = tmp_path / "in"
    write_case(inp, "BraTS-GLI-00007-000", synthetic_image(), naming=Naming.BRATS2023)
    fast, _, log = segment_labels(inp, tmp_path / "auto", flair_test_bundle, "--device", "cuda", "--et-threshold", "0")
    reference, _, _ = segment_labels(
        inp, tmp_path / "fp32", flair_test_bundle, "--device", "cuda", "--precision", "fp32", "--et-threshold", "0"
    )
    assert f"precision bf16 (auto: {torch.cuda.get_device_name()} computes bf16)" in log
    assert set(np.unique(reference)) == {0, 3}
    assert set(np.unique(fast)) <= {0, 1, 2, 3}  # bf16 may move voxels near a threshold
    dice = 2 * ((fast > 0) & (reference > 0)).sum() / ((fast > 0).sum() + (reference > 0).sum())
    assert dice > 0.98


def test_cuda_compiled_bf16_agrees_with_eager(cuda, tmp_path, flair_test_bundle):
    inp = tmp_path / "in"
    write_case(inp, "BraTS-GLI-00007-000", synthetic_image(), naming=Naming.BRATS2023)
    options = ("--device", "cuda", "--precision", "bf16", "--et-threshold", "0")
    eager, _, _ = segment_labels(inp, tmp_path / "eager", flair_test_bundle, *options)
    compiled, _, _ = segment_labels(inp, tmp_path / "compiled", flair_test_bundle, *options, "--compile")
    tumour = (eager > 0) | (compiled > 0)
    assert tumour.sum() > 10_000
    assert (eager[tumour] == compiled[tumour]).mean() >= 0.995
