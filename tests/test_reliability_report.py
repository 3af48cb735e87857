"""The QA and evaluation reports against what a real folder may hold: `--save-probabilities` files
beside the label maps, QA records of any shape or a linked QA folder, case IDs that a browser or a
spreadsheet would read as something else, an input folder given in place of the output, and
flags that only the segmenting run can know."""

from __future__ import annotations

import csv
import json
import re
from html import unescape
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nibabel as nib
import numpy as np
import pytest
from builders import nested_labels
from conftest import LPS_AFFINE, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli.cli.app import app
from brats_cli.files import sha256_file
from brats_cli.quality import EnsembleQuality
from brats_cli.report import QA_FOLDER, CaseRecord, write_report
from brats_cli.report.records import read_records, write_record

runner = CliRunner()
SHAPE = (40, 36, 30)


def _label_map(path: Path, shift: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(nested_labels(shift, SHAPE), LPS_AFFINE), path)
    return path


def _document(output: Path) -> dict:
    return json.loads((output / "report" / "report.json").read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# --save-probabilities


def test_probability_maps_beside_the_label_maps_are_not_cases(tmp_path):
    out = tmp_path / "out"
    for index, case_id in enumerate(("BraTS2021_00001", "BraTS2021_00002")):
        _label_map(out / f"{case_id}.nii.gz", index)
        probabilities = np.zeros((*SHAPE, 3), np.float32)
        nib.save(nib.Nifti1Image(probabilities, LPS_AFFINE), out / f"{case_id}_probabilities.nii.gz")
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    document = _document(out)
    assert [case["case"] for case in document["cases"]] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert document["summary"]["failed"] == 0 and all(c["status"] == "done" for c in document["cases"])
    assert [row["case"] for row in _rows(out / "report" / "report.csv")] == ["BraTS2021_00001", "BraTS2021_00002"]


# ---------------------------------------------------------------------------------------------
# QA records


def _valid_record(output: Path, case_id: str) -> CaseRecord:
    quality = EnsembleQuality(windows=2, disagreement=0.1, entropy=0.2, touches_window_border=True)
    digest = sha256_file(output / f"{case_id}.nii.gz")
    return CaseRecord(case_id, "done", seconds=3.0, convention="2021", output_sha256=digest, quality=quality)


BAD_RECORDS: dict[str, str | bytes] = {
    "list": "[1, 2, 3]",
    "string": '"done"',
    "number": "7",
    "deep-list": "[" * 200_000 + "]" * 200_000,
    "deep-object": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "not-utf8": b"\xff\xfe\x00{",
    "too-large": '{"version": 1, "status": "done", "case_id": "too-large", "message": "' + "x" * (2 << 20) + '"}',
    "huge-integer": '{"version": 1, "status": "done", "case_id": "huge-integer", "seconds": 1' + "0" * 400 + "}",
    "stage-overflow": '{"version": 1, "status": "done", "case_id": "stage-overflow", '
    '"stage_seconds": {"WT": 1' + "0" * 400 + "}}",
    "infinite": '{"version": 1, "status": "done", "case_id": "infinite", "seconds": 1e999}',
    "nested-fields": '{"version": 1, "status": "done", "case_id": "nested-fields", "message": {"a": [1]}, '
    '"warnings": [{"b": 2}], "convention": [3]}',
    "quality-shape": '{"version": 1, "status": "done", "case_id": "quality-shape", "quality": {"windows": "two"}}',
    "quality-overflow": '{"version": 1, "status": "done", "case_id": "quality-overflow", '
    '"quality": {"windows": 1, "entropy": 1' + "0" * 400 + "}}",
    "missing-status": '{"version": 1, "case_id": "missing-status"}',
    "other-case": '{"version": 1, "status": "failed", "case_id": "BraTS2021_00002", "message": "not mine"}',
}


def test_qa_records_of_any_other_shape_are_notes_never_a_traceback(tmp_path):
    out = tmp_path / "out"
    _label_map(out / "BraTS2021_00001.nii.gz")
    _label_map(out / "BraTS2021_00002.nii.gz", 3)
    write_record(out, _valid_record(out, "BraTS2021_00001"))
    (out / QA_FOLDER / "BraTS2021_00002.json").write_text("[]")  # its own record, of the wrong shape
    for name, content in BAD_RECORDS.items():
        path = out / QA_FOLDER / f"{name}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (out / QA_FOLDER / "a-folder.json").mkdir()

    records, notes = read_records(out)
    assert list(records) == ["BraTS2021_00001"]
    for name in [*BAD_RECORDS, "a-folder", "BraTS2021_00002"]:
        assert any(f"{name}.json: unreadable QA record" in note for note in notes), name

    result = runner.invoke(app, ["report", str(out)])
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    cases = {case["case"]: case for case in _document(out)["cases"]}
    assert set(cases) == {"BraTS2021_00001", "BraTS2021_00002"}  # a bad record adds no case
    # The good record still counts; the case with a bad one is shown from its label map alone.
    assert cases["BraTS2021_00001"]["measured"] and "window border" in cases["BraTS2021_00001"]["flags"]
    assert not cases["BraTS2021_00002"]["measured"] and cases["BraTS2021_00002"]["disagreement"] is None


def test_a_linked_qa_folder_is_replaced_never_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "BraTS2021_00001.json").write_text("precious")
    out = tmp_path / "out"
    _label_map(out / "BraTS2021_00001.nii.gz")
    (out / QA_FOLDER).symlink_to(elsewhere, target_is_directory=True)

    records, notes = read_records(out)  # what a link holds is not this tool's record
    assert records == {} and any("a link" in note for note in notes)
    write_record(out, _valid_record(out, "BraTS2021_00001"))
    assert (elsewhere / "BraTS2021_00001.json").read_text() == "precious"
    assert [p.name for p in elsewhere.iterdir()] == ["BraTS2021_00001.json"]
    assert (out / QA_FOLDER).is_dir() and not (out / QA_FOLDER).is_symlink()
    assert list(read_records(out)[0]) == ["BraTS2021_00001"]


def test_segment_report_with_a_linked_qa_folder_and_a_bad_record(tmp_path, background_bundle):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "BraTS2021_00001", synthetic_image())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "BraTS2021_00001.json").write_text("precious")
    out.mkdir()
    (out / QA_FOLDER).symlink_to(elsewhere, target_is_directory=True)
    command = ["segment", str(inp), str(out), "--weights", str(background_bundle.root), "--report"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert (elsewhere / "BraTS2021_00001.json").read_text() == "precious"
    assert not (out / QA_FOLDER).is_symlink() and (out / QA_FOLDER / "BraTS2021_00001.json").is_file()

    (out / QA_FOLDER / "BraTS2021_00007.json").write_text('["a", "list"]')  # another run's, or anyone's
    result = runner.invoke(app, command)
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "BraTS2021_00007.json: unreadable QA record" in " ".join(result.output.split())
    assert [case["case"] for case in _document(out)["cases"]] == ["BraTS2021_00001"]


# ---------------------------------------------------------------------------------------------
# Case IDs a browser or a spreadsheet reads as something else


def _resolves(folder: Path, reference: str) -> bool:
    """Whether a browser, following this href or src from folder/index.html, finds a file."""
    parts = urlsplit(unescape(reference))
    return not parts.scheme and (folder / unquote(parts.path)).is_file()


def _references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


URL_IDS = ("case#1", "case%252", "case?3", "case 4")


def test_pictures_and_links_resolve_for_ids_with_url_characters(tmp_path):
    out = tmp_path / "out"
    for index, case_id in enumerate(URL_IDS):
        _label_map(out / f"{case_id}.nii.gz", index)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    html = (out / "report" / "index.html").read_text()
    references = _references(html)
    assert len(references) == 2 * len(URL_IDS)  # a thumbnail and a link each
    assert all(_resolves(out / "report", reference) for reference in references), references

    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    for index, case_id in enumerate(URL_IDS):
        _label_map(truth / f"{case_id}_seg.nii.gz")
        _label_map(predictions / f"{case_id}.nii.gz", index)
    folder = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth), "--report", str(folder)])
    assert result.exit_code == 0, result.output
    references = [r for r in _references((folder / "index.html").read_text()) if r != "boxplots.png"]
    assert len(references) >= len(URL_IDS)
    assert all(_resolves(folder, reference) for reference in references), references


FORMULA_IDS = ("=1+2", "+3", "-4", "@SUM(1)")


def test_case_ids_that_start_a_formula_are_text_in_every_csv(tmp_path):
    out = tmp_path / "out"
    for index, case_id in enumerate(FORMULA_IDS):
        _label_map(out / f"{case_id}.nii.gz", index)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    rows = _rows(out / "report" / "report.csv")
    assert sorted(row["case"] for row in rows) == sorted(f"'{case_id}" for case_id in FORMULA_IDS)
    assert all(float(row["WT_ml"]) > 0 for row in rows)  # numbers stay numbers

    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    for index, case_id in enumerate(FORMULA_IDS):
        _label_map(truth / f"{case_id}_seg.nii.gz")
        _label_map(predictions / f"{case_id}.nii.gz", index)
    scores, folder = tmp_path / "scores.csv", tmp_path / "evaluation"
    result = runner.invoke(
        app, ["evaluate", str(predictions), str(truth), "--csv", str(scores), "--report", str(folder)]
    )
    assert result.exit_code == 0, result.output
    for path in (scores, folder / "report.csv"):
        rows = _rows(path)
        assert {row["case"] for row in rows} == {f"'{case_id}" for case_id in FORMULA_IDS}, path
        assert all(0 <= float(row["dice"]) <= 1 for row in rows)


# ---------------------------------------------------------------------------------------------
# An input folder given as the output


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) % 7, LPS_AFFINE), path)


@pytest.mark.parametrize("layout", ["case folders", "one case's files", "2023 ground truth", "empty"])
def test_a_folder_without_label_maps_is_refused_and_nothing_is_written(tmp_path, layout):
    folder = tmp_path / "data"
    folder.mkdir()
    if layout == "case folders":
        for suffix in ("flair", "t1", "t1ce", "t2", "seg"):
            _image(folder / "BraTS2021_00001" / f"BraTS2021_00001_{suffix}.nii.gz")
    elif layout == "one case's files":
        for suffix in ("flair", "t1", "t1ce", "t2"):
            _image(folder / f"BraTS2021_00001_{suffix}.nii.gz")
    elif layout == "2023 ground truth":
        _image(folder / "BraTS-GLI-00001-000-seg.nii.gz")
    before = _tree(folder)
    result = runner.invoke(app, ["report", str(folder)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "no label maps" in result.output and "brats segment" in result.output
    assert _tree(folder) == before


# ---------------------------------------------------------------------------------------------
# Flags only the segmenting run can know


def test_the_report_says_which_flags_it_cannot_know_without_the_runs_records(tmp_path):
    out = tmp_path / "out"
    _label_map(out / "BraTS2021_00001.nii.gz")
    _label_map(out / "BraTS2021_00002.nii.gz", 2)
    write_record(out, _valid_record(out, "BraTS2021_00001"))
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "1 of 2 case(s) have no QA record" in said
    for flag in ("window border", "several windows", "ET removed", "disagreement outlier"):
        assert f'"{flag}"' in said
    assert "--report --overwrite" in said
    document = _document(out)
    assert document["summary"]["unmeasured"] == 1
    assert document["measured_flags"] == ["window border", "several windows", "ET removed", "disagreement outlier"]
    cases = {case["case"]: case for case in document["cases"]}
    assert cases["BraTS2021_00001"]["measured"] and not cases["BraTS2021_00002"]["measured"]
    assert "cannot be known afterwards" in (out / "report" / "index.html").read_text()

    # Every case measured: no such note.
    write_record(out, _valid_record(out, "BraTS2021_00002"))
    report = write_report(out)
    assert not any("no QA record" in note for note in report.notes)
    assert all(case.measured for case in report.cases)
