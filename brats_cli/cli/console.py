"""Shared terminal output: progress and tables on stderr, one-line errors, exit codes, and the
run log a command may keep (`--log FILE`).

Messages are printed as text, never as Rich markup: a file name or a hint like `brats[report]`
holds square brackets that markup would swallow."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

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


# The open run log, if any: every error, warning and note (and `info` line) is appended to it as
# plain text, one timestamped line each, flushed at once so a killed job's log ends where it died.
_log: TextIO | None = None


def log(kind: str, message: str) -> None:
    """Append one line to the run log (nothing when none is open)."""
    if _log is not None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for line in message.splitlines() or [""]:
            _log.write(f"{stamp} {kind}: {line}\n")
        _log.flush()


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    log("error", message)


def warning(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", markup=True, soft_wrap=True)
    log("warning", message)


def note(message: str) -> None:
    stderr.print(f"[dim]note:[/] {escape(message)}", markup=True, soft_wrap=True)
    log("note", message)


def info(message: str) -> None:
    """A plain progress line on stderr, kept in the run log."""
    stderr.print(message, markup=False, soft_wrap=True)
    log("info", message)


@contextlib.contextmanager
def log_to(path: Path | None) -> Iterator[None]:
    """Keep a run log in `path` (appended, so a resubmitted job adds to its history) for the
    duration: the messages above and Python warnings from any library (torch, nibabel, numpy).
    Raises OSError when the file cannot be opened."""
    global _log
    if path is None:
        yield
        return
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in the finally below)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        log("warning", f"{category.__name__}: {message} ({filename}:{lineno})")
        shown(message, category, filename, lineno, file, line)

    _log, warnings.showwarning = handle, show
    try:
        yield
    finally:
        _log, warnings.showwarning = None, shown
        handle.close()


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
