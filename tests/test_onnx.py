"""ONNX export (verified against PyTorch) and the ONNX Runtime backend behind the predictor seam."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from conftest import random_bundle
from typer.testing import CliRunner

from brats_cli import export as export_module
from brats_cli.bundle import MANIFEST, Architecture, Bundle, Stage, load_bundle, sha256_file, write_torch_bundle
from brats_cli.choices import Backend, Device, ExportPrecision
from brats_cli.cli.app import app
from brats_cli.errors import BratsError, ExportError, WeightsError
from brats_cli.export import TOLERANCE, export_bundle
from brats_cli.model import ResUNet3D
from brats_cli.predictors import stage_predictors
from brats_cli.predictors.onnx_backend import CPU_PROVIDER, OnnxStagePredictor, onnx_predictors, onnx_providers
from brats_cli.predictors.torch_backend import torch_predictors
from brats_cli.preprocess import MODEL_GRID
from brats_cli.settings import Settings

runner = CliRunner()
WINDOW = (64, 64, 64)
REAL_CASE = "BraTS-GLI-00001-000"
# Head-bias shifts for width-4 networks drawn like random_bundle(seed=0): on the real case the base
# model then marks one blob of ~180 voxels (its largest logits, away from the 0.5 decision by 6e-4
# in logit, far above backend differences), so one 64^3 window is localised, and the region models
# split that window into a mix of edema, necrosis and enhancing tumour. The agreement test asserts
# the tumour is there, so a change that made these networks predict nothing cannot pass unnoticed.
HEAD_SHIFT = {Stage.BASE: -7.0, Stage.WT: 0.05, Stage.TC: -0.48, Stage.ET: 0.06}


def shifted_bundle(root: Path) -> Bundle:
    torch.manual_seed(0)
    weights, architectures = {}, {}
    for stage in Stage:
        model = ResUNet3D(width=4)
        with torch.no_grad():
            model.head.bias += HEAD_SHIFT[stage]
        weights[stage] = [model.state_dict()]
        architectures[stage] = Architecture(width=4, input_size=MODEL_GRID if stage is Stage.BASE else WINDOW)
    return write_torch_bundle(root, weights, architectures, name="test")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny torch bundle and its ONNX export made through the CLI, shared by the tests here."""
    root = tmp_path_factory.mktemp("onnx")
    source = shifted_bundle(root / "torch")
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(root / "onnx")])
    assert result.exit_code == 0, result.output
    return source.root, root / "onnx", result.output


def test_export_writes_a_verified_onnx_bundle(exported) -> None:
    source, target, output = exported
    bundle = load_bundle(target)  # verifies every checksum
    manifest = bundle.manifest
    assert manifest.backend is Backend.ONNX
    data = json.loads((target / MANIFEST).read_text())
    assert data["backend"] == "onnx"
    torch_manifest = load_bundle(source).manifest
    for stage in Stage:
        spec = manifest.stages[stage]
        assert spec.input_size == torch_manifest.stages[stage].input_size
        assert spec.width == torch_manifest.stages[stage].width
        assert [f.file for f in spec.folds] == [f"{stage.value}_fold0.onnx"]
        for fold in spec.folds:
            assert sha256_file(target / fold.file) == fold.sha256
            model = onnx.load(str(target / fold.file))
            onnx.checker.check_model(model)
            assert model.opset_import[0].version >= 17
            dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            assert dims == [1, 4, *spec.input_size]
    differences = data["metadata"]["onnx"]["max_abs_difference"]
    assert set(differences) == {s.value for s in Stage}
    assert all(0 <= d <= TOLERANCE[ExportPrecision.FP32] for values in differences.values() for d in values)
    assert "base_fold0.onnx" in output
    # Atomic: nothing but the bundle itself, no temporary left beside it.
    assert sorted(p.name for p in target.iterdir()) == sorted([MANIFEST, *(f"{s.value}_fold0.onnx" for s in Stage)])
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def test_onnx_predictor_matches_torch_on_random_input(exported) -> None:
    source, target, _ = exported
    onnx_side = onnx_predictors(load_bundle(target), Settings(backend=Backend.ONNX, device=Device.CPU))
    torch_side = torch_predictors(load_bundle(source), Settings(device=Device.CPU, precision="fp32"))
    image = np.random.default_rng(1).standard_normal((4, *WINDOW), dtype=np.float32)
    for stage in (Stage.WT, Stage.ET):
        expected = torch_side[stage](image)
        got = onnx_side[stage](image)
        assert got.shape == expected.shape == (1, *WINDOW)
        assert got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4
    assert isinstance(onnx_side[Stage.WT], OnnxStagePredictor)
    assert onnx_side[Stage.WT].device == "cpu"
    with pytest.raises(ValueError, match="takes"):
        onnx_side[Stage.WT](image[:, :32])


def test_verification_fails_loudly_when_graph_and_model_differ(tmp_path, monkeypatch) -> None:
    source = random_bundle(tmp_path / "torch", window=WINDOW)
    original = export_module.exportable

    def perturbed(models, precision):
        module = original(models, precision)
        with torch.no_grad():
            module.folds[0].head.bias += 0.05  # the exported graph, not the reference, is changed
        return module

    monkeypatch.setattr(export_module, "exportable", perturbed)
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", "--weights", str(source.root), "--out", str(out)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "base fold 0 (base_fold0.onnx)" in message
    assert "differs from PyTorch by 0.01" in message  # sigmoid slope <= 1/4: a 0.05 logit shift is ~0.0125
    assert not out.exists()
    assert not list(tmp_path.glob(".onnx.partial-*"))


def test_export_refuses_a_non_empty_out_and_an_onnx_source(exported, tmp_path) -> None:
    source, target, _ = exported
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    result = runner.invoke(app, ["export", "--weights", str(source), "--out", str(tmp_path / "busy")])
    assert result.exit_code == 2
    assert "not an empty folder" in result.output
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
    with pytest.raises(ExportError, match="already an onnx bundle"):
        export_bundle(load_bundle(target), tmp_path / "again")


def test_onnx_bundle_checksums_and_file_kinds_are_enforced(exported, tmp_path) -> None:
    _, target, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    with open(copy / "et_fold0.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_bundle(copy)

    data = json.loads((target / MANIFEST).read_text())
    data["stages"]["wt"]["folds"][0]["file"] = "wt_fold0.safetensors"
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r"not a onnx weight file \(\.onnx\)"):
        load_bundle(copy, verify=False)


def test_backend_and_bundle_mismatch_is_one_clear_error(exported, make_case, tmp_path) -> None:
    source, target, _ = exported
    case = make_case()
    for weights, backend, kind in ((source, "onnx", "torch"), (target, "torch", "onnx")):
        out = tmp_path / f"out-{backend}"
        result = runner.invoke(app, ["segment", str(case), str(out), "--weights", str(weights), "--backend", backend])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        article = {"onnx": "an onnx", "torch": "a torch"}
        assert f"this is {article[kind]} bundle, not {article[backend]} one; use --backend {kind}" in message
        assert not out.exists() or not any(out.iterdir())
    with pytest.raises(WeightsError, match="this is a torch bundle"):
        stage_predictors(load_bundle(source), Settings(backend=Backend.ONNX))


def test_missing_onnxruntime_is_a_one_line_install_hint(exported, make_case, tmp_path, monkeypatch) -> None:
    _, target, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = runner.invoke(
        app, ["segment", str(make_case()), str(tmp_path / "out"), "--weights", str(target), "--backend", "onnx"]
    )
    assert result.exit_code == 2
    assert "onnxruntime is not installed" in result.output
    assert "'cpu' extra" in result.output and "'gpu' extra" in result.output


def test_provider_choice_follows_device() -> None:
    import onnxruntime

    assert onnx_providers(Device.CPU) == [CPU_PROVIDER]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert onnx_providers(Device.AUTO)[0] == "CUDAExecutionProvider"
    else:
        assert onnx_providers(Device.AUTO) == [CPU_PROVIDER]
        with pytest.raises(BratsError, match="--device cuda: ONNX Runtime has no CUDAExecutionProvider"):
            onnx_providers(Device.CUDA)


def test_info_still_lists_onnxruntime_providers() -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output
    assert "CPUExecutionProvider" in result.output


def test_segment_backends_agree_on_a_real_case(exported, real_data, tmp_path) -> None:
    source, target, _ = exported
    inputs = tmp_path / "input"
    shutil.copytree(real_data / REAL_CASE, inputs / REAL_CASE)
    labels = {}
    for backend, weights in (("torch", source), ("onnx", target)):
        out = tmp_path / backend
        result = runner.invoke(
            app,
            # fp32 on both sides: the comparison is of the backends, not of bf16.
            [
                "segment",
                str(inputs),
                str(out),
                "--weights",
                str(weights),
                "--backend",
                backend,
                "--device",
                "cpu",
                "--precision",
                "fp32",
            ],
        )
        assert result.exit_code == 0, result.output
        labels[backend] = np.asarray(nib.load(out / f"{REAL_CASE}.nii.gz").dataobj)
    torch_labels, onnx_labels = labels["torch"], labels["onnx"]
    tumour = (torch_labels > 0) | (onnx_labels > 0)
    assert tumour.sum() > 1000, "the comparison needs networks that predict some tumour"
    assert set(np.unique(torch_labels)) == {0, 1, 2, 3}  # 2023-named input: ET = 3
    differing = int((torch_labels != onnx_labels).sum())
    print(f"agreement: {differing} of {int(tumour.sum())} tumour voxels differ")
    assert differing <= 0.001 * tumour.sum()


def test_fp16_export_keeps_float32_io_and_meets_its_tolerance(tmp_path) -> None:
    torch.manual_seed(0)
    model = ResUNet3D(width=4)
    path = tmp_path / "half.onnx"
    export_module.export_model([model], WINDOW, path, precision=ExportPrecision.FP16)
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    difference, _ = export_module.verify_model(path, [model], WINDOW, ExportPrecision.FP16)
    print(f"fp16 export: max |ONNX - PyTorch fp32| = {difference:.2e}")
    assert 0 < difference <= TOLERANCE[ExportPrecision.FP16]


@pytest.mark.parametrize("record", [{"precision": "fp8"}, {"precision": 16}, ["fp16"], "fp16"])
def test_an_onnx_bundles_recorded_precision_of_another_shape_is_named(tmp_path, exported, record) -> None:
    """The free-form metadata is not validated by the manifest reader: a precision of another
    shape is a WeightsError naming the field, a record that is not a table means fp32."""
    _, target, _ = exported
    copy = tmp_path / "onnx"
    shutil.copytree(target, copy)
    data = json.loads((copy / MANIFEST).read_text())
    data.setdefault("metadata", {})["onnx"] = record
    (copy / MANIFEST).write_text(json.dumps(data))
    settings = Settings(backend=Backend.ONNX, device=Device.CPU)
    if isinstance(record, dict):
        with pytest.raises(WeightsError, match=r"metadata\.onnx\.precision must be one of fp32, fp16, got"):
            onnx_predictors(load_bundle(copy), settings)
    else:
        assert set(onnx_predictors(load_bundle(copy), settings)) == set(Stage)
