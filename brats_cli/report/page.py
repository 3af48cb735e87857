"""The report's one static page: inline CSS, a few lines of inline JavaScript to sort the table by a
column, and relative links to the pictures beside it. No server, no network, nothing fetched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.summary { display: flex; flex-wrap: wrap; gap: .6em; margin: .6em 0; }
.summary div { background: #f3f4f6; border-radius: 6px; padding: .35em .8em; }
.summary b { display: block; font-size: 1.25em; }
.notes { color: #8a4b00; margin: .4em 0; padding-left: 1.2em; }
table { border-collapse: collapse; margin-top: .4em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .25em .55em; text-align: right; vertical-align: middle; }
th { background: #fafafa; cursor: pointer; position: sticky; top: 0; white-space: nowrap; }
th:hover { background: #eef; }
td.text, th.text { text-align: left; }
td img { display: block; height: 96px; }
tr.flagged { background: #fff8e6; } tr.failed { background: #fdecec; }
.flag { display: inline-block; border-radius: 4px; padding: 0 .4em; margin: 1px; font-size: .85em;
        background: #f5c26b; color: #3b2600; white-space: nowrap; }
.flag.failed, .flag.no-output { background: #d9534f; color: white; }
.legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .25em 0 .8em; vertical-align: -.1em; }
.muted { color: #888; } .small { font-size: .85em; }
"""

# Click a header to sort by it (again to reverse); numbers compare as numbers, the rest as text,
# empty cells last. `data-v` holds a cell's sort value where its text is not (a flags column).
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, i) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], dir = th.dataset.dir = th.dataset.dir === "1" ? "-1" : "1";
  const key = r => { const c = r.cells[i], v = c.dataset.v ?? c.textContent.trim(); return v === "" ? null : v; };
  [...body.rows].sort((a, b) => { const p = key(a), q = key(b);
    if (p === null || q === null) return (p === null) - (q === null);
    return dir * (isNaN(p) || isNaN(q) ? p.localeCompare(q) : p - q); }).forEach(r => body.append(r)); }));
"""


@dataclass(frozen=True)
class Cell:
    """A table cell: its HTML (already escaped), and a sort value where the text is not one."""

    html: str
    sort: str | None = None
    text: bool = False  # left-aligned


@dataclass
class Table:
    columns: list[tuple[str, str, bool]]  # (heading, tooltip, left-aligned)
    rows: list[tuple[list[Cell], str]] = field(default_factory=list)  # (cells, row class)


def number(value: float | int | None, digits: int = 1) -> Cell:
    if value is None:
        return Cell("")
    if isinstance(value, int):
        return Cell(str(value))
    return Cell(f"{value:.{digits}f}", repr(float(value)))


def percent(value: float | None) -> Cell:
    """A share as a percentage, sorted by its value."""
    return Cell("") if value is None else Cell(f"{100 * value:.1f}%", repr(value))


def text(value: str) -> Cell:
    return Cell(escape(value), text=True)


def flags_cell(flags: Sequence[tuple[str, str]], order: int) -> Cell:
    """Flags as badges, (name, explanation) each; sorted by `order` (the most serious first)."""
    badges = "".join(
        f'<span class="flag {escape(name.replace(" ", "-"))}" title="{escape(why)}">{escape(name)}</span>'
        for name, why in flags
    )
    return Cell(badges, f"{order:03d}", text=True)


def url(path: str) -> str:
    """A relative file path as an href or src value: percent-encoded, since a case ID in a file
    name may hold `#`, `?` or `%`, which a browser would read as a fragment, a query or an escape."""
    return escape(quote(path, safe="/"))


def image_link(full: str | None, thumbnail: str | None, alt: str) -> Cell:
    if full is None:
        return Cell('<span class="muted small">no picture</span>', text=True)
    shown = f'<img src="{url(thumbnail)}" alt="{escape(alt)}">' if thumbnail else escape(alt)
    return Cell(f'<a href="{url(full)}">{shown}</a>', text=True)


def render(
    title: str,
    subtitle: str,
    summary: Sequence[tuple[str, str]],
    notes: Sequence[str],
    table: Table,
    *,
    before_table: str = "",
    after_table: str = "",
    legend: bool = True,
) -> str:
    """The whole page as one HTML string."""
    tiles = "".join(f"<div>{escape(label)}<b>{escape(value)}</b></div>" for label, value in summary)
    note_items = "".join(f"<li>{escape(note)}</li>" for note in notes)
    headings = "".join(
        f'<th class="{"text" if left else ""}" title="{escape(tip)}">{escape(heading)}</th>'
        for heading, tip, left in table.columns
    )
    body = []
    for cells, row_class in table.rows:
        tds = "".join(
            f'<td class="{"text" if cell.text else ""}"'
            + (f' data-v="{escape(cell.sort)}"' if cell.sort is not None else "")
            + f">{cell.html}</td>"
            for cell in cells
        )
        body.append(f'<tr class="{row_class}">{tds}</tr>')
    colours = (("NCR", "#ff0000"), ("ED", "#00cc00"), ("ET", "#ffff00"))
    legend_html = (
        '<p class="legend small">Labels: '
        + "".join(f'<span style="background:{c}"></span>{n}' for n, c in colours)
        + " &nbsp; Slices in the radiological convention (the patient's left on the right).</p>"
        if legend
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<div class="muted">{escape(subtitle)}</div>
<div class="summary">{tiles}</div>
{f'<ul class="notes">{note_items}</ul>' if note_items else ""}
{legend_html}
{before_table}
<table class="sortable">
<thead><tr>{headings}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
{after_table}
<script>{_SCRIPT}</script>
</body>
</html>
"""
