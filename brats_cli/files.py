"""Writing files so that a reader never sees half of one: a hidden temporary beside the target,
fsync, one rename. Used for every file the tool writes (label maps, bundles, checkpoints, caches,
logs); a run killed midway leaves only a temporary that the next run removes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

TEMP_MARKER = ".partial-"
_TEMPORARY_PID = re.compile(rf"^\..+{re.escape(TEMP_MARKER)}(?P<pid>[0-9]+)(?:\.[A-Za-z.]+)?$")


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of `atomic_path`'s temporaries: hidden, and named `.<target>.partial-<pid>...`.
    A visible name that merely contains the marker (a case ID like `A.partial-1`) is not one."""
    return _TEMPORARY_PID.match(Path(path).name) is not None


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same folder (so the final rename is atomic) that starts with the
    target's name and ends with its extension (nibabel and numpy pick the format from it):
    `out/case.nii.gz` -> `out/.case.nii.gz.partial-<pid>.nii.gz`."""
    extension = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}{extension}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path` in one rename, on any
    failure it is removed, so `path` is never seen half-written."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        # Created here, exclusively and not through a link, so that writing by name never follows
        # a symlink planted at the temporary name out of the folder; only a file of this process's
        # (or a dead one's, with a reused PID) can hold the name.
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
    if pid == os.getpid():
        # A file named with our own PID before we wrote anything is a dead run's whose PID came
        # round again (in a container every run may have the same PID).
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, OSError):
        return False
    return True


def staging_folder(target: Path) -> Path:
    """A hidden sibling folder to build `target` in before one rename: `.<name>.partial-<pid>`."""
    return target.parent / f".{target.name}{TEMP_MARKER}{os.getpid()}"


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging folders of `target` that killed runs left behind: only those whose
    writing process (the PID in the name) is gone."""
    import glob
    import shutil

    removed = []
    for path in Path(target).parent.glob(f".{glob.escape(Path(target).name)}{TEMP_MARKER}*"):
        pid = path.name.rsplit(TEMP_MARKER, 1)[1]
        if not path.is_dir() or not pid.isdigit() or _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_stale_temporaries(folder: Path, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete temporary files and staging folders that killed runs left behind in `folder`: only
    those whose writing process (the PID in the name) is gone, so a run never deletes a
    concurrent run's work.

    `targets` limits the sweep to the temporaries of these file names. Processes on other machines
    (shards of a cluster job sharing a folder) have PIDs this machine cannot see, so a shard must
    only sweep the outputs no other shard writes: its own."""
    prefixes = None if targets is None else tuple(f".{name}{TEMP_MARKER}" for name in targets)
    removed = []
    for path in Path(folder).glob(f".*{TEMP_MARKER}*"):
        match = _TEMPORARY_PID.match(path.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        if prefixes is not None and not path.name.startswith(prefixes):
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
    for leftover in (staging, aside):  # a dead run's, whose PID came round again
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
