"""CSV text that a spreadsheet opens as data: one writer for every CSV the tool writes
(`brats evaluate --csv`, the reports' report.csv).

A text cell that begins with `=`, `+`, `-` or `@` (or a tab or carriage return, which some
spreadsheets skip before reading one of those) is run as a formula by Excel, LibreOffice and
Google Sheets; a case ID comes from a file name anyone may choose, so such a cell is written
with a leading `'`, as OWASP's "CSV injection" advice and the spreadsheet vendors recommend.
Numbers are written as numbers (a negative one stays negative)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """`value` as a CSV cell: None as empty, text that a spreadsheet would run prefixed with `'`."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    """A header of `columns`, then a line per row (keys outside `columns` are an error)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: safe_cell(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()
