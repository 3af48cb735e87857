"""The submission image's entrypoint (`brats-container`) and the MLCube files, without a container:
the three invocations become the same `brats segment`, and MLCube's `infer` writes the same files
as the plain /input -> /output run. The image itself is run the three ways in test_container.py."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import flair_bundle, synthetic_image, write_case

from brats_cli.bundle import Stage
from brats_cli.cli import container
from brats_cli.cli.container import PARAMETERS, UsageError, parameter_options, segment_arguments
from brats_cli.cli.segment import segment
from brats_cli.io import Naming

ROOT = Path(__file__).resolve().parents[1]
MLCUBE = ROOT / "mlcube" / "mlcube.yaml"
PARAMETERS_FILE = ROOT / "mlcube" / "workspace" / "parameters.yaml"
VALIDATOR = re.compile(r"(\d{5}-\d{3})\.nii\.gz")  # how the 2023+ validator finds a prediction's case


def test_no_arguments_segment_input_into_output() -> None:
    assert segment_arguments([]) == ["segment", "/input", "/output"]
    assert segment_arguments(["--folds", "0"]) == ["segment", "/input", "/output", "--folds", "0"]


def test_infer_as_mlcube_calls_it(tmp_path: Path) -> None:
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text("folds: [0, 1]\ntta: true\nfuse_folds: false\net_threshold: 300\nweights: null\n")
    arguments = ["infer", "--data_path=/mlcube_io0", f"--parameters_file={parameters}", "--output_path=/mlcube_io2"]
    assert segment_arguments(arguments) == [
        "segment", "/mlcube_io0", "/mlcube_io2", "--folds", "0,1", "--tta", "--no-fuse-folds", "--et-threshold", "300",
    ]  # fmt: skip
    # The space-separated form, and no parameters file.
    assert segment_arguments(["infer", "--data_path", "/d", "--output_path", "/o"]) == ["segment", "/d", "/o"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["infer", "--data_path=/d"], "missing --output_path"),
        (["infer", "--data_path=/d", "--output_path=/o", "--checkpoint=/c"], "unexpected argument '--checkpoint=/c'"),
        (["infer", "--data_path=/d", "--output_path"], "--output_path needs a value"),
    ],
)
def test_a_wrong_infer_command_line_is_named(arguments: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        segment_arguments(arguments)


def test_a_wrong_parameters_file_is_named(tmp_path: Path) -> None:
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text("overwrite: true\n")
    with pytest.raises(UsageError, match=r"parameters.yaml: unknown option 'overwrite'"):
        parameter_options(parameters)
    parameters.write_text("folds: [0\n")
    with pytest.raises(UsageError, match=r"parameters\.yaml: not a YAML file"):
        parameter_options(parameters)
    with pytest.raises(UsageError, match="cannot read the parameters file"):
        parameter_options(tmp_path / "absent.yaml")


def test_the_shipped_parameters_are_the_segment_options() -> None:
    """Every option the parameters file may set is a `brats segment` option, and the shipped file
    lists them all with their defaults (so it changes nothing)."""
    options = set(inspect.signature(segment).parameters)
    assert set(PARAMETERS) <= options
    shipped = yaml.safe_load(PARAMETERS_FILE.read_text())
    assert list(shipped) == list(PARAMETERS)
    defaults = {name: p.default for name, p in inspect.signature(segment).parameters.items()}
    for name, value in shipped.items():
        default = defaults[name]
        assert value == getattr(default, "value", default), name


def test_the_mlcube_declares_infer_over_this_repository() -> None:
    cube = yaml.safe_load(MLCUBE.read_text())
    parameters = cube["tasks"]["infer"]["parameters"]
    assert parameters["inputs"]["data_path"] == {"type": "directory", "default": "data", "opts": "ro"}
    assert parameters["inputs"]["parameters_file"]["default"] == "parameters.yaml"
    assert parameters["outputs"]["output_path"]["type"] == "directory"
    docker = cube["docker"]
    assert (MLCUBE.parent / docker["build_context"] / docker["build_file"]).resolve() == ROOT / "Dockerfile"
    assert docker["--network"] == "none" and "-u $(id -u):$(id -g)" in docker["cpu_args"]
    assert (MLCUBE.parent / "workspace" / parameters["inputs"]["parameters_file"]["default"]).is_file()


def test_infer_writes_what_the_plain_run_writes(tmp_path: Path, monkeypatch) -> None:
    """A folder of several 2023-named cases: `infer` with the shipped parameters file (weights
    pointed at a test bundle) and the plain /input -> /output form write the same files, named so
    that the validator finds every case."""
    bundle = flair_bundle(tmp_path / "bundle", window=(64, 64, 64), thresholds={Stage.BASE: 1e6})
    data = tmp_path / "data"
    ids = ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00017-001"]
    for case_id in ids:
        write_case(data, case_id, synthetic_image(), naming=Naming.BRATS2023)
    parameters = tmp_path / "parameters.yaml"
    shipped = yaml.safe_load(PARAMETERS_FILE.read_text())
    parameters.write_text(yaml.safe_dump({**shipped, "weights": str(bundle.root)}))

    def run(arguments: list[str]) -> int:
        with pytest.raises(SystemExit) as exited:
            container.main(arguments)
        return int(exited.value.code or 0)

    mlcube_out = tmp_path / "predictions"
    arguments = ["infer", f"--data_path={data}", f"--parameters_file={parameters}", f"--output_path={mlcube_out}"]
    assert run(arguments) == 0
    # The plain form reads /input and writes /output: here, folders of those names in a scratch root.
    plain_root = tmp_path / "root"
    shutil.copytree(data, plain_root / "input")
    monkeypatch.setattr(container, "segment_arguments", _rooted(plain_root))
    assert run(["--weights", str(bundle.root)]) == 0

    names = sorted(p.name for p in mlcube_out.iterdir())
    assert names == sorted(p.name for p in (plain_root / "output").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(VALIDATOR.search(name).group(1) for name in names) == ["00001-000", "00002-000", "00017-001"]  # type: ignore[union-attr]
    for name in names:
        ours, plain = nib.load(mlcube_out / name), nib.load(plain_root / "output" / name)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(plain.dataobj))
        np.testing.assert_array_equal(ours.affine, plain.affine)


def _rooted(root: Path):
    """segment_arguments with /input and /output under `root`."""
    original = segment_arguments

    def arguments(given):
        command = original(given)
        return [str(root / part.lstrip("/")) if part in ("/input", "/output") else part for part in command]

    return arguments
