"""The visual QA report of a run: `write_report(OUTPUT, INPUT)` after `brats segment` (a picture
per case, the numbers and the flags a reviewer should see first, on one static page) and
`write_evaluation_report(evaluation, DIR)` after `brats evaluate`.

The numbers are pure functions in `numbers`, the ensemble's confidence is measured during
segmentation (`brats_cli.quality`) and kept in `records`; `figures` draws with matplotlib (the
`report` extra), imported only when a report is written."""

from brats_cli.report.build import (
    REPORT_FOLDER,
    CaseReport,
    EvaluationReport,
    Report,
    check_report_folder,
    write_evaluation_report,
    write_report,
)
from brats_cli.report.numbers import Flag
from brats_cli.report.records import QA_FOLDER, CaseRecord

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
