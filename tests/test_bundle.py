import json
import pickle

import numpy as np
import pytest
import torch
from conftest import random_bundle

from brats_cli.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    Architecture,
    Stage,
    load_bundle,
    manifest_from_dict,
    write_torch_bundle,
)
from brats_cli.choices import Storage
from brats_cli.errors import WeightsError
from brats_cli.model import ResUNet3D
from brats_cli.predictors.torch_backend import load_torch_models
from brats_cli.preprocess import MODEL_GRID


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return random_bundle(tmp_path_factory.mktemp("b"), folds=2, window=(64, 64, 64)).root


def _copy(bundle_dir, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


def test_a_written_bundle_loads_verifies_and_restores_weights(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.region_window == (64, 64, 64)
    assert [len(bundle.manifest.stages[s].folds) for s in Stage] == [2, 2, 2, 2]
    models = load_torch_models(bundle, Stage.WT)
    assert len(models) == 2
    # Folds are different networks, restored exactly.
    a, b = (dict(m.state_dict()) for m in models)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert len(load_torch_models(bundle, Stage.TC, folds=[1])) == 1


def test_checksum_mismatch_and_missing_file_are_refused_before_use(bundle_dir, tmp_path):
    root = _copy(bundle_dir, tmp_path)
    path = root / "tc_fold1.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"tc_fold1.safetensors: checksum mismatch"):
        load_bundle(root)
    path.unlink()
    with pytest.raises(WeightsError, match=r"tc_fold1.safetensors: weight file listed in the manifest is missing"):
        load_bundle(root)


def test_newer_format_and_malformed_manifests_are_refused(bundle_dir, tmp_path):
    root = _copy(bundle_dir, tmp_path)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"newer than this brats supports"):
        load_bundle(root)
    manifest["format_version"] = FORMAT_VERSION
    manifest["stages"]["et"]["folds"][0]["file"] = "../escape.safetensors"
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"plain file name inside the bundle"):
        load_bundle(root)
    del manifest["stages"]["base"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"missing stages base"):
        load_bundle(root)
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(WeightsError, match=r"unreadable manifest"):
        load_bundle(root)
    with pytest.raises(WeightsError, match=r"not a weights bundle"):
        load_bundle(tmp_path)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_pickled_weight_file_is_refused(bundle_dir, tmp_path, capsys):
    """Weights never go through pickle: a pickle in place of safetensors fails to load and runs nothing."""
    root = _copy(bundle_dir, tmp_path)
    path = root / "base_fold0.safetensors"
    path.write_bytes(pickle.dumps({"state": _Payload()}))
    manifest = json.loads((root / MANIFEST).read_text())
    from brats_cli.bundle import sha256_file

    manifest["stages"]["base"]["folds"][0]["sha256"] = sha256_file(path)
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"base_fold0.safetensors: cannot load weights"):
        load_torch_models(load_bundle(root), Stage.BASE)
    assert "pickled code ran" not in capsys.readouterr().out


def test_auto_precision_follows_the_hardware():
    from brats_cli.choices import Precision
    from brats_cli.host import cpu_has_native_bf16
    from brats_cli.predictors.torch_backend import resolve_precision

    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert resolve_precision(Precision.FP32, "cpu") is Precision.FP32
    assert resolve_precision(Precision.BF16, "cpu") is Precision.BF16
    expected = Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
    assert resolve_precision(Precision.AUTO, "cpu") is expected


def test_auto_precision_names_the_gpu_for_a_torch_device(monkeypatch):
    """The segment log passes the predictor's torch.device, which never equals the string "cuda":
    the reason must still name the GPU, not the CPU (seen wrong on an H100)."""
    import torch

    from brats_cli.predictors.torch_backend import auto_precision_reason

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert auto_precision_reason(torch.device("cuda")) == "NVIDIA H100 80GB HBM3 computes bf16"
    assert auto_precision_reason(torch.device("cuda", 0)) == "NVIDIA H100 80GB HBM3 computes bf16"
    assert auto_precision_reason(torch.device("cpu")).startswith("CPU ")


def test_cpu_threads_follow_the_cgroup_quota_and_the_affinity_mask(tmp_path, monkeypatch):
    import os

    from brats_cli.host import cgroup_cpu_quota, usable_cpus

    assert cgroup_cpu_quota("max 100000\n") is None
    assert cgroup_cpu_quota("250000 100000\n") == 2.5
    assert cgroup_cpu_quota("garbage") is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    limit = tmp_path / "cpu.max"
    limit.write_text("250000 100000\n")  # docker run --cpus 2.5
    assert usable_cpus(limit) == 3
    limit.write_text("50000 100000\n")  # half a core still gets one thread
    assert usable_cpus(limit) == 1
    limit.write_text("max 100000\n")
    assert usable_cpus(limit) == 8
    assert usable_cpus(tmp_path / "missing") == 8  # cgroup v1 or no cgroup file: the mask alone
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})  # taskset -c 2,3
    limit.write_text("800000 100000\n")
    assert usable_cpus(limit) == 2


def test_fused_folds_predict_what_the_folds_predict_one_by_one():
    from brats_cli.choices import Precision
    from brats_cli.model import ResUNet3D
    from brats_cli.predictors.torch_backend import TorchStagePredictor

    torch.manual_seed(0)
    models = [ResUNet3D(width=4) for _ in range(3)]
    image = np.random.default_rng(0).normal(size=(4, 32, 32, 16)).astype(np.float32)
    reference = TorchStagePredictor(models, "cpu", Precision.FP32)(image)
    fused_predictor = TorchStagePredictor(models, "cpu", Precision.FP32, fuse_folds=True)
    assert fused_predictor.fused is not None
    fused = fused_predictor(image)
    assert fused.shape == reference.shape == (3, 32, 32, 16)
    # Different kernels (grouped convolutions), the same networks: fp32 rounding only.
    assert np.abs(fused - reference).max() < 1e-4
    # In bf16 fused folds stray from fp32 no further than the folds run one by one do.
    bf16 = TorchStagePredictor(models, "cpu", Precision.BF16)(image)
    fused_bf16 = TorchStagePredictor(models, "cpu", Precision.BF16, fuse_folds=True)(image)
    assert np.abs(fused_bf16 - reference).max() < 2 * np.abs(bf16 - reference).max() + 1e-3
    # ... and do compute in bf16 (autocast does not reach inside vmap; the weights are cast instead).
    assert np.abs(fused_bf16 - reference).max() > 1e-3


def test_bundle_files_are_readable_by_others_as_the_umask_allows(tmp_path):
    """safetensors writes private (0600) files; a bundle mounted into a container run as another
    user, or shared with colleagues, must be readable."""
    import os
    import stat

    bundle = random_bundle(tmp_path / "bundle")
    umask = os.umask(0)
    os.umask(umask)
    for path in bundle.root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~umask, path


def _states(seed: int) -> tuple[dict[Stage, list[dict]], dict[Stage, Architecture]]:
    torch.manual_seed(seed)
    architectures = {s: Architecture(4, MODEL_GRID if s is Stage.BASE else (32, 32, 32)) for s in Stage}
    return {s: [ResUNet3D(width=4).state_dict()] for s in Stage}, architectures


def test_a_float16_bundle_is_half_the_bytes_and_predicts_what_float32_does(tmp_path):
    """Stored in float16, each weight file is about half as large; the weights come back as float32
    tensors holding the float16-rounded values, and the models predict what the float32 ones do."""
    weights, architectures = _states(5)
    single = write_torch_bundle(tmp_path / "fp32", weights, architectures)
    half = write_torch_bundle(tmp_path / "fp16", weights, architectures, storage=Storage.FLOAT16)
    assert single.manifest.storage is Storage.FLOAT32 and half.manifest.storage is Storage.FLOAT16
    assert json.loads((half.root / MANIFEST).read_text())["storage"] == "float16"
    for a, b in zip(single.fold_paths(Stage.TC), half.fold_paths(Stage.TC), strict=True):
        assert 0.45 < b.stat().st_size / a.stat().st_size < 0.55
    (reference,) = load_torch_models(single, Stage.TC)
    (model,) = load_torch_models(half, Stage.TC)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, weights[Stage.TC][0][key].half().float(), rtol=0, atol=0)
    torch.manual_seed(0)
    image = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        expected, got = torch.sigmoid(reference(image)), torch.sigmoid(model(image))
    assert 0 < (got - expected).abs().max() < 1e-2


def test_weights_beyond_float16_are_refused_before_anything_is_written(tmp_path):
    weights, architectures = _states(6)
    weights[Stage.ET][0]["head.bias"] = torch.tensor([1e6])
    with pytest.raises(WeightsError, match=r"stage et fold 0: head.bias holds weights up to 1e\+06, beyond float16"):
        write_torch_bundle(tmp_path / "b", weights, architectures, storage=Storage.FLOAT16)
    assert not (tmp_path / "b").exists()


def test_storage_the_files_do_not_hold_is_refused(tmp_path):
    """The manifest's `storage` must be a known precision, only torch bundles have one, and the
    weight files must hold what it says (a file swapped in with its checksum updated)."""
    weights, architectures = _states(7)
    root = write_torch_bundle(tmp_path / "b", weights, architectures, storage=Storage.FLOAT16).root
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["storage"] = "float32"
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"wt_fold0.safetensors: .* is stored in float16, but the manifest says"):
        load_torch_models(load_bundle(root), Stage.WT)
    manifest["storage"] = "int8"
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"'storage' must be one of float32, float16 \(got 'int8'\)"):
        load_bundle(root)
    onnx = {**manifest, "backend": "onnx", "storage": "float16"}
    with pytest.raises(WeightsError, match=r"'storage' is for torch bundles"):
        manifest_from_dict(onnx)
