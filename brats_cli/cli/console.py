"""Shared terminal output: progress and tables on stderr, one-line errors, exit codes."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

# Exit codes: 0 everything done; 1 some case failed; 2 the input, weights or output cannot be used
# at all; 130/143 interrupted by SIGINT/SIGTERM.
EXIT_OK = 0
EXIT_CASE_FAILED = 1
EXIT_UNUSABLE = 2

# No markup by default: what is printed holds file names and case IDs, in which rich would take
# `[...]` for a style tag and drop it. Only the prefixes below are markup.
stderr = Console(stderr=True, highlight=False, markup=False)
stdout = Console(highlight=False, markup=False)


# The message is escaped: only the prefix is markup (`pip install 'brats[synth]'` keeps its extra).


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)


def warning(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", markup=True, soft_wrap=True)


def note(message: str) -> None:
    stderr.print(f"[dim]note:[/] {escape(message)}", markup=True, soft_wrap=True)


def progress():
    """The progress display of a batch command: description, bar, done/total, elapsed, on stderr,
    cleared when done (the command prints its own summary)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    )
