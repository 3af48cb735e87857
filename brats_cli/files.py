"""Writing files so that a reader never sees half of one: a hidden temporary beside the target,
fsync, one rename. Used for every file the tool writes (label maps, bundles, checkpoints, caches,
logs); a run killed midway leaves only a temporary that the next run removes.

A temporary's name says who writes it: `.<target>.partial-<pid>-<machine>-<run>[.<extension>]`.
A process ID alone names no one in a folder shared by several containers (each run is PID 1 in its
own) or nodes, so `<machine>` hashes the host name, boot ID and PID namespace, and `<run>` is
random per process (a PID that came round again is another run). A sweep asks the writer's
liveness where it can (same machine and namespace) and otherwise goes by age."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from brats_cli import host

TEMP_MARKER = ".partial-"
# Names written before the owner was added (`.partial-<pid>`) are still recognised and swept.
_TEMPORARY = re.compile(
    rf"^\..+{re.escape(TEMP_MARKER)}(?P<pid>[0-9]+)(?:-(?P<machine>[0-9a-f]{{12}})-(?P<run>[0-9a-f]{{8}}))?"
    r"(?:\.[A-Za-z.]+)?$"
)
# How long a temporary whose writer this process cannot ask about (another node's or container's)
# counts as in use. Writers touch their temporaries as they fill them, and no label map, record,
# report or bundle takes a day to write, so only a killed run's is ever that old.
FOREIGN_STALE_AFTER_S = 24 * 3600
_RUN = secrets.token_hex(4)  # this process's; a dead run that had the same PID had another


@functools.cache
def machine() -> str:
    """This machine and PID namespace, as 12 hex digits (`host.machine_identity` hashed)."""
    return hashlib.sha256(host.machine_identity().encode()).hexdigest()[:12]


def _owner() -> str:
    return f"{os.getpid()}-{machine()}-{_RUN}"


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of `atomic_path`'s temporaries: hidden, and named `.<target>.partial-<owner>...`.
    A visible name that merely contains the marker (a case ID like `A.partial-1`) is not one."""
    return _TEMPORARY.match(Path(path).name) is not None


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same folder (so the final rename is atomic) that starts with the
    target's name and ends with its extension (nibabel and numpy pick the format from it):
    `out/case.nii.gz` -> `out/.case.nii.gz.partial-<pid>-<machine>-<run>.nii.gz`."""
    extension = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}{TEMP_MARKER}{_owner()}{extension}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path` in one rename, on any
    failure it is removed, so `path` is never seen half-written."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        # Created here, exclusively and not through a link, so that writing by name never follows
        # a symlink planted at the temporary name out of the folder; the name is this process's
        # alone, so whatever holds it (a planted link) is no one's work.
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        mode = os.stat(temporary).st_mode & 0o777  # 0644 less the umask
        yield temporary
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        # Some writers replace the file with a private one (safetensors' save_file leaves 0600),
        # which a container run as another user, or a colleague, could not read.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` in one rename."""
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(text)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, OSError):
        return False
    return True


def _newest_change(path: Path) -> float:
    """The latest mtime of `path` and, for a folder, of everything in it (links not followed)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, folders, files in os.walk(path):
            for name in [*folders, *files]:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def in_use(path: Path) -> bool:
    """Whether the temporary `path` may still be being written: its writer is alive where this
    process can ask (same machine and PID namespace; ours is in use), else it changed within
    FOREIGN_STALE_AFTER_S. Names of older versions carry a PID alone and are judged by it, as
    they then were (our own PID on one is a dead run's). False for a name that is not a temporary."""
    match = _TEMPORARY.match(path.name)
    if match is None:
        return False
    pid = int(match["pid"])
    if match["machine"] is None:
        return pid != os.getpid() and _process_alive(pid)
    if match["machine"] != machine():
        try:
            return time.time() - _newest_change(path) < FOREIGN_STALE_AFTER_S
        except OSError:  # gone already
            return False
    if pid == os.getpid():
        return match["run"] == _RUN
    return _process_alive(pid)


def staging_folder(target: Path) -> Path:
    """A hidden sibling folder to build `target` in before one rename: `.<name>.partial-<owner>`."""
    return target.parent / f".{target.name}{TEMP_MARKER}{_owner()}"


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging folders of `target` that killed runs left behind: only those no live
    writer may still be filling (`in_use`)."""
    import glob
    import shutil

    removed = []
    for path in Path(target).parent.glob(f".{glob.escape(Path(target).name)}{TEMP_MARKER}*"):
        if not path.is_dir() or path.is_symlink() or not is_temporary(path) or in_use(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_stale_temporaries(folder: Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete temporary files and staging folders that killed runs left behind in `folder`: only
    those no live writer may still be filling (`in_use`), so a run never deletes a concurrent
    run's work, whether on this machine, in another container or on another node.

    `targets` limits the sweep to the temporaries of these file names: a shard sweeps only its own
    cases' (another shard's dead temporaries are that shard's to sweep when it reruns)."""
    prefixes = None if targets is None else tuple(f".{name}{TEMP_MARKER}" for name in targets)
    removed = []
    for path in Path(folder).glob(f".*{TEMP_MARKER}*"):
        if prefixes is not None and not path.name.startswith(prefixes):
            continue
        if not is_temporary(path) or in_use(path):
            continue
        with contextlib.suppress(OSError):
            _remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staged_folder(target: Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """`atomic_folder`, for a folder the tool owns by name (a report): an existing `target` is
    replaced only if `replaceable(target)` says it is an earlier folder of the same kind, never a
    user's folder that happens to have the name; otherwise FileExistsError, before anything is made."""
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not (target.is_dir() and replaceable(target)):
        raise FileExistsError(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target) as staging:
        yield staging


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a hidden staging folder to fill; on success it becomes `target` by rename (a `target`
    already there is replaced: moved aside, the new one renamed in, the old one deleted), on any
    failure or signal it is deleted. A reader sees the old folder, the new one whole, or (only
    between two renames) none; never part of one. Staging that killed runs left for `target` is
    swept first (`remove_stale_temporaries` on the parent sweeps any target's)."""
    target = Path(target)
    replaced = target.with_name(f"{target.name}.replaced")
    staging, aside = staging_folder(target), staging_folder(replaced)
    remove_stale_staging(target)  # what killed runs left, never a live one's
    remove_stale_staging(replaced)
    for leftover in (staging, aside):  # names of this process alone: an earlier attempt's
        _remove(leftover)
    staging.mkdir()
    try:
        yield staging
        if target.exists() or target.is_symlink():
            os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            if aside.exists() and not target.exists():
                os.replace(aside, target)  # put the old one back
            raise
    except BaseException:
        _remove(staging)
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree if it is there; never follow a link."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
