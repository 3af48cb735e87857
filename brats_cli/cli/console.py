"""Shared terminal output: progress and tables on stderr, one-line errors, exit codes, and the
run log a command may keep (`--log FILE`).

Messages are printed as text, never as Rich markup: a file name or a hint like `brats[report]`
holds square brackets that markup would swallow."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from brats_cli.errors import first_line
from brats_cli.files import is_temporary

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
_log_path: Path | None = None


def log(kind: str, message: str) -> None:
    """Append one line to the run log (nothing when none is open). A log that can no longer be
    written (a full disk) is closed with one warning on stderr; the run goes on without it, since
    its outputs do not depend on the log."""
    global _log
    if _log is None:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        for line in message.splitlines() or [""]:
            _log.write(f"{stamp} {kind}: {line}\n")
        _log.flush()
    except OSError as error:
        handle, _log = _log, None
        with contextlib.suppress(OSError):  # flushing what is buffered fails alike
            handle.close()
        warning(f"{_log_path}: cannot write the log ({first_line(error)}); the run goes on without it")


def unusable_log(
    path: Path, *, reads: Iterable[Path], writes: Iterable[Path], folders: Iterable[Path] = ()
) -> str | None:
    """Why `path` must not be the run log of a command that reads the files and folders `reads`,
    writes the files and folders `writes` and makes or writes into `folders` (a log may lie in
    one, but not be one), or None. Appending must never alter data: nothing
    in an input or a weights bundle, nothing the command writes or sweeps (an image name, a
    temporary's, its records or report), no existing file of binary data (a hard link to an image
    has another name). Links are followed: it is their target that would be appended to."""
    from brats_cli.io import is_nifti

    resolved = Path(path).resolve()
    for name in {Path(path).name, resolved.name}:
        if is_nifti(Path(name.lower())):
            return f"{path}: named like a NIfTI image, which a log must not be; name another file"
        if is_temporary(Path(name)):
            return f"{path}: named like a brats temporary file, which runs delete; name another file"
    for verb, places in (("reads", reads), ("writes", writes)):
        for place in places:
            if resolved == place.resolve() or resolved.is_relative_to(place.resolve()):
                return f"{path}: lies in {place}, which this run {verb}; a log must not alter it"
    for folder in folders:
        if resolved == folder.resolve():
            return f"{path}: is the folder {folder}, which this run writes into; name a file"
    if resolved.is_file():
        try:
            with open(resolved, "rb") as handle:
                start = handle.read(4096)
        except OSError:
            return None  # opening it for the log says why
        if b"\0" in start or start.startswith(b"\x1f\x8b"):
            return f"{path}: holds binary data (an image, weights?), not a log; name another file"
    return None


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """The frame of a command that builds one folder (`bundle`, `export`): Ctrl-C or SIGTERM inside
    says nothing was written to `out` and exits 130/143; a BratsError is its one line and exit 2."""
    import typer

    from brats_cli.errors import BratsError
    from brats_cli.interrupts import Interrupted, interruptible

    try:
        with interruptible():
            yield
    except Interrupted as interrupted:
        error(f"interrupted; nothing was written to {out}")
        raise typer.Exit(interrupted.exit_code) from None
    except BratsError as problem:
        error(str(problem))
        raise typer.Exit(EXIT_UNUSABLE) from None


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
    global _log, _log_path
    if path is None:
        yield
        return
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in the finally below)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        log("warning", f"{category.__name__}: {message} ({filename}:{lineno})")
        shown(message, category, filename, lineno, file, line)

    _log, _log_path, warnings.showwarning = handle, Path(path), show
    try:
        yield
    finally:
        _log, warnings.showwarning = None, shown
        with contextlib.suppress(OSError):  # said by `log` already, at the write that failed
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
