"""The visual QA report of a run: `write_report(OUTPUT, INPUT)` after `brats segment` (a picture
per case, the numbers and the flags a reviewer should see first, on one static page) and
`write_evaluation_report(evaluation, DIR)` after `brats evaluate`.

`segmentation` builds the QA report (its rows in `segmentation_rows`, its files in
`segmentation_page`) and `evaluation` the evaluation report; both write into a `folder` of the
same shape, lay out one static `page` and draw with `figures` (matplotlib, the `report` extra,
imported only when a report is written). The numbers are pure functions in `numbers`; the
ensemble's confidence is measured during segmentation (`brats_cli.quality`) and kept in
`records`."""

from brats_cli.report.evaluation import EvaluationReport, write_evaluation_report
from brats_cli.report.folder import REPORT_FOLDER, check_report_folder
from brats_cli.report.numbers import Flag
from brats_cli.report.records import QA_FOLDER, CaseRecord
from brats_cli.report.segmentation import write_report
from brats_cli.report.segmentation_rows import CaseReport, Report

__all__ = [
    "QA_FOLDER",
    "REPORT_FOLDER",
    "CaseRecord",
    "CaseReport",
    "EvaluationReport",
    "Flag",
    "Report",
    "check_report_folder",
    "write_evaluation_report",
    "write_report",
]
