"""`brats report`, `brats segment --report` and `brats evaluate --report` as a user runs them, on
tiny hand-set networks and synthetic cases: what the folder holds, that its numbers are the label
maps' own, and what bad input does (no images, a corrupt label map, a blocked or interrupted
report, matplotlib missing)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from builders import nested_labels
from conftest import FLAIR_THRESHOLDS, LPS_AFFINE, flair_network, synthetic_image, write_case
from typer.testing import CliRunner

from brats_cli.bundle import Architecture, Stage, write_torch_bundle
from brats_cli.cli.app import app
from brats_cli.files import TEMP_MARKER
from brats_cli.labels import LabelConvention
from brats_cli.preprocess import MODEL_GRID
from brats_cli.report import QA_FOLDER, write_report

runner = CliRunner()
IDS = ("BraTS2021_00001", "BraTS2021_00002")


@pytest.fixture(scope="module")
def two_fold_bundle(tmp_path_factory):
    """Two folds per region at different thresholds: they disagree on the tumour's rim."""
    root = tmp_path_factory.mktemp("two-fold")
    shifts = {Stage.BASE: (0.0,), Stage.WT: (-0.5, 0.5), Stage.TC: (-0.5, 0.5), Stage.ET: (-0.5, 0.5)}
    weights = {
        stage: [flair_network(FLAIR_THRESHOLDS[stage] + shift).state_dict() for shift in shifts[stage]]
        for stage in Stage
    }
    architectures = {
        stage: Architecture(width=4, input_size=MODEL_GRID if stage is Stage.BASE else (64, 64, 64)) for stage in Stage
    }
    return write_torch_bundle(root, weights, architectures, labels=LabelConvention.BRATS2021, name="two-fold")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, two_fold_bundle):
    """Two cases (tumours of different sizes) and a broken one, segmented with --report."""
    root = tmp_path_factory.mktemp("segmented")
    inp, out = root / "in", root / "out"
    for index, case_id in enumerate(IDS):
        image = synthetic_image(seed=index, tumour_radius=(10 + 4 * index, 9 + 3 * index, 8 + 2 * index))
        write_case(inp, case_id, image)
    broken = write_case(inp, "BraTS2021_00009", synthetic_image())
    (broken / "BraTS2021_00009_t2.nii.gz").unlink()
    result = runner.invoke(app, ["segment", str(inp), str(out), "--weights", str(two_fold_bundle.root), "--report"])
    return inp, out, result


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html) + re.findall(r'<a href="([^"]+)"', html)


def test_segment_report_writes_the_page_pictures_and_numbers_of_every_case(segmented):
    _, out, result = segmented
    assert result.exit_code == 1, result.output  # the broken case failed; the others are done
    assert "report: " in result.output and "index.html" in result.output
    # Beside the predictions only the report and the hidden QA folder: nothing a validator globs.
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i}.nii.gz" for i in IDS] + ["report", QA_FOLDER])
    report = out / "report"
    html = (report / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<link" not in html
    for reference in _images(html):
        assert (report / reference).is_file(), reference
    document = json.loads((report / "report.json").read_text())
    cases = {case["case"]: case for case in document["cases"]}
    assert set(cases) == {*IDS, "BraTS2021_00009"}
    assert cases["BraTS2021_00009"]["status"] == "failed"
    assert "missing modality t2" in cases["BraTS2021_00009"]["message"]
    assert document["cases"][0]["case"] == "BraTS2021_00009"  # flags first: a failure before all
    assert "missing modality t2" in html

    rows = {row["case"]: row for row in _rows(report / "report.csv")}
    for case_id in IDS:
        labels = np.asarray(nib.load(out / f"{case_id}.nii.gz").dataobj)
        case = cases[case_id]
        # The numbers are the label map's own (1 mm voxels: 1000 per ml).
        assert case["volumes_ml"]["WT"] == pytest.approx(np.count_nonzero(labels) / 1000)
        assert case["volumes_ml"]["TC"] == pytest.approx(np.isin(labels, (1, 4)).sum() / 1000)
        assert case["volumes_ml"]["ED"] == pytest.approx((labels == 2).sum() / 1000)
        assert float(rows[case_id]["WT_ml"]) == pytest.approx(case["volumes_ml"]["WT"])
        assert case["windows"] == 1 and case["components"] >= 1
        # Measured while segmenting: two folds at different thresholds disagree somewhere.
        assert 0 < case["disagreement"] < 1 and 0 < case["entropy"] < 1
        assert float(rows[case_id]["disagreement"]) == pytest.approx(case["disagreement"])
        # The bundle removes no components and fills no holes: recorded as nothing changed.
        assert case["components_removed_voxels"] == case["core_filled_voxels"] == 0
        assert rows[case_id]["components_removed_voxels"] == rows[case_id]["core_filled_voxels"] == "0"
        assert case["seconds"] > 0
        assert (report / case["figure"]).is_file()
    small, large = cases[IDS[0]]["volumes_ml"]["WT"], cases[IDS[1]]["volumes_ml"]["WT"]
    assert small < large


def test_report_afterwards_flags_as_segment_report_did(tmp_path, segmented):
    inp, out, _ = segmented
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    result = runner.invoke(app, ["report", str(copy), "--input", str(inp)])
    assert result.exit_code == 1, result.output  # the broken case, as segment counted it
    during = json.loads((out / "report" / "report.json").read_text())
    after = json.loads((copy / "report" / "report.json").read_text())
    assert [(c["case"], c["flags"], c["measured"]) for c in after["cases"]] == [
        (c["case"], c["flags"], c["measured"]) for c in during["cases"]
    ]
    assert all(c["measured"] for c in after["cases"] if c["status"] == "done")
    recorded = ("et_removed_voxels", "components_removed_voxels", "core_filled_voxels")
    assert [[c.get(k) for k in recorded] for c in after["cases"]] == [
        [c.get(k) for k in recorded] for c in during["cases"]
    ]
    assert after["summary"]["unmeasured"] == 0 and "no QA record" not in result.output


def test_default_segment_output_is_untouched_by_the_report_option(tmp_path, segmented, two_fold_bundle):
    inp, out, _ = segmented
    plain = tmp_path / "plain"
    case_id = IDS[0]
    result = runner.invoke(app, ["segment", str(inp / case_id), str(plain), "--weights", str(two_fold_bundle.root)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in plain.iterdir()] == [f"{case_id}.nii.gz"]  # no QA folder, no report
    with_report, without = nib.load(out / f"{case_id}.nii.gz"), nib.load(plain / f"{case_id}.nii.gz")
    assert np.array_equal(np.asarray(with_report.dataobj), np.asarray(without.dataobj))
    assert with_report.header.binaryblock == without.header.binaryblock


def test_report_without_input_or_with_a_missing_input_shows_labels_alone(tmp_path, segmented):
    _, out, _ = segmented
    copy = tmp_path / "out"
    copy.mkdir()
    for case_id in IDS:
        (copy / f"{case_id}.nii.gz").write_bytes((out / f"{case_id}.nii.gz").read_bytes())
    result = runner.invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    html = (copy / "report" / "index.html").read_text()
    assert "no input folder given" in html and "labels alone" in result.output
    for reference in _images(html):
        assert (copy / "report" / reference).is_file()

    result = runner.invoke(app, ["report", str(copy), "--input", str(tmp_path / "nowhere")])
    assert result.exit_code == 0, result.output
    html = (copy / "report" / "index.html").read_text()
    assert "input folder does not exist: the pictures show the labels alone" in html
    # No QA records here: what only the run knows is blank, what the labels say is there.
    document = json.loads((copy / "report" / "report.json").read_text())
    assert all(case["disagreement"] is None and case["volumes_ml"]["WT"] > 0 for case in document["cases"])


def test_a_corrupt_label_map_is_listed_as_failed_and_a_stale_record_is_ignored(tmp_path, segmented):
    inp, out, _ = segmented
    copy = tmp_path / "out"
    copy.mkdir()
    (copy / QA_FOLDER).mkdir()
    for case_id in IDS:
        (copy / f"{case_id}.nii.gz").write_bytes((out / f"{case_id}.nii.gz").read_bytes())
        (copy / QA_FOLDER / f"{case_id}.json").write_bytes((out / QA_FOLDER / f"{case_id}.json").read_bytes())
    (copy / "BraTS2021_00004.nii.gz").write_bytes((out / f"{IDS[0]}.nii.gz").read_bytes()[:300])
    # A later run without --report rewrote case 2: its record no longer describes it.
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 155), np.uint8), LPS_AFFINE), copy / f"{IDS[1]}.nii.gz")
    result = runner.invoke(app, ["report", str(copy), "--input", str(inp)])
    assert result.exit_code == 1, result.output
    cases = {c["case"]: c for c in json.loads((copy / "report" / "report.json").read_text())["cases"]}
    assert (
        cases["BraTS2021_00004"]["status"] == "failed"
        and "BraTS2021_00004.nii.gz" in cases["BraTS2021_00004"]["message"]
    )
    assert cases["BraTS2021_00009"]["status"] == "missing"  # in the input, no output
    assert cases[IDS[1]]["disagreement"] is None and cases[IDS[1]]["flags"] == ["empty"]
    assert cases[IDS[0]]["disagreement"] is not None
    html = (copy / "report" / "index.html").read_text()
    assert "BraTS2021_00004" in html and "failed" in html


def test_the_report_is_replaced_whole_or_not_at_all(tmp_path, segmented, monkeypatch):
    _, out, _ = segmented
    copy = tmp_path / "out"
    copy.mkdir()
    for case_id in IDS:
        (copy / f"{case_id}.nii.gz").write_bytes((out / f"{case_id}.nii.gz").read_bytes())
    first = write_report(copy)
    before = {p.relative_to(copy): p.read_bytes() for p in (copy / "report").rglob("*") if p.is_file()}

    from brats_cli.report import figures

    drawn = []

    def interrupted_midway(*args, **kwargs):
        drawn.append(1)
        if len(drawn) == 2:
            raise KeyboardInterrupt  # as a signal arrives: after one picture, before the page
        return original(*args, **kwargs)

    original = figures.case_figure
    monkeypatch.setattr(figures, "case_figure", interrupted_midway)
    with pytest.raises(KeyboardInterrupt):
        write_report(copy)
    after = {p.relative_to(copy): p.read_bytes() for p in (copy / "report").rglob("*") if p.is_file()}
    assert after == before and first.index.is_file()
    assert [p.name for p in copy.iterdir() if TEMP_MARKER in p.name] == []

    # A folder of the user's under the report's name is never replaced.
    monkeypatch.undo()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report").mkdir()
    (theirs / "report" / "notes.txt").write_text("mine")
    (theirs / f"{IDS[0]}.nii.gz").write_bytes((out / f"{IDS[0]}.nii.gz").read_bytes())
    result = runner.invoke(app, ["report", str(theirs)])
    assert result.exit_code == 2
    assert "exists and is not a brats segmentation report" in result.output
    assert [p.name for p in (theirs / "report").iterdir()] == ["notes.txt"]


def test_without_matplotlib_a_one_line_error_names_the_extra(tmp_path, segmented, monkeypatch):
    _, out, _ = segmented
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    assert "pip install 'brats-resunet[report]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_evaluate_report_has_box_plots_the_table_and_the_worst_cases_side_by_side(tmp_path):
    truth, predictions = tmp_path / "gt", tmp_path / "pred"
    for index in range(7):
        case_id = f"BraTS2021_0000{index}"
        (truth / case_id).mkdir(parents=True)
        nib.save(nib.Nifti1Image(nested_labels(), LPS_AFFINE), truth / case_id / f"{case_id}_seg.nii.gz")
        flair = (100 + 10 * np.indices((40, 36, 30))[0]).astype(np.int16)
        nib.save(nib.Nifti1Image(flair, LPS_AFFINE), truth / case_id / f"{case_id}_flair.nii.gz")
        if index != 6:  # case 6 has no prediction
            predictions.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(nested_labels(shift=index), LPS_AFFINE), predictions / f"{case_id}.nii.gz")
    folder = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth), "--report", str(folder)])
    assert result.exit_code == 0, result.output
    html = (folder / "index.html").read_text()
    assert (folder / "boxplots.png").is_file() and 'src="boxplots.png"' in html
    for reference in _images(html):
        assert (folder / reference).is_file(), reference
    document = json.loads((folder / "report.json").read_text())
    # The worst by mean Dice: the largest shifts first; the missing prediction is in the table.
    assert document["worst"] == [f"BraTS2021_0000{i}" for i in (5, 4, 3, 2, 1)]
    assert all((folder / "cases" / f"{case_id}.png").is_file() for case_id in document["worst"])
    assert "BraTS2021_00006" in document["missing"] and "no prediction" in html
    rows = _rows(folder / "report.csv")
    assert len(rows) == 7 * 3 and rows[0].keys() >= {"case", "region", "dice", "hd95"}

    # Asked again, an earlier evaluation report is replaced; a folder of the user's is not.
    assert runner.invoke(app, ["evaluate", str(predictions), str(truth), "--report", str(folder)]).exit_code == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.txt").write_text("mine")
    result = runner.invoke(app, ["evaluate", str(predictions), str(truth), "--report", str(theirs)])
    assert result.exit_code == 2 and "is not a brats evaluation report" in result.output
    assert [p.name for p in theirs.iterdir()] == ["data.txt"]
