import json
import pickle

import pytest
import torch
from conftest import random_bundle

from brats_cli.bundle import FORMAT_VERSION, MANIFEST, Stage, load_bundle
from brats_cli.errors import WeightsError
from brats_cli.predictors import load_torch_models


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
    from brats_cli.predictors import cpu_has_native_bf16, resolve_precision

    assert cpu_has_native_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert resolve_precision(Precision.FP32, "cpu") is Precision.FP32
    assert resolve_precision(Precision.BF16, "cpu") is Precision.BF16
    expected = Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
    assert resolve_precision(Precision.AUTO, "cpu") is expected
