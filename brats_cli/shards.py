"""Splitting a cohort between processes: shard K of N takes every N-th case, by sorted case ID,
starting at the K-th (K counted from 0). Shards of one N are disjoint and together hold every
case, so N processes (array tasks, GPUs) writing into one output folder never write the same file.

Inside a SLURM array job the array task's position and the array's size are the natural shard;
`Shard.from_slurm` reads them from the environment SLURM sets for every array task."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from brats_cli.errors import SettingsError

_SHARD = re.compile(r"^\s*(?P<index>\d+)\s*/\s*(?P<count>\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count); `source` says where it came from, for the log."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingsError(f"shard {name} must be an integer, got {value!r}")
        if self.count < 1:
            raise SettingsError(f"shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise SettingsError(
                f"shard {self.index}/{self.count}: K must be 0 to {self.count - 1} (K/N counts K from 0)"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` as the command line gives it: `0/4` is the first of four shards."""
        match = _SHARD.match(text)
        if match is None:
            raise SettingsError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards")
        return cls(int(match["index"]), int(match["count"]))

    @classmethod
    def from_slurm(cls, environ: Mapping[str, str]) -> Shard | None:
        """The shard of this SLURM array task, or None outside an array job.

        Task IDs must form one range with one step (`--array=0-7`, `1-8`, `0-14:2`, with or
        without a `%` limit): the task at position K of the range is shard K of the range's size.
        A list such as `--array=1,4,9` has no such positions; it is refused (pass --shard)."""
        task = environ.get("SLURM_ARRAY_TASK_ID")
        if not task:
            return None
        job = environ.get("SLURM_ARRAY_JOB_ID", "?")
        task_id = _slurm_integer(environ, "SLURM_ARRAY_TASK_ID", task, low=0)
        first = _slurm_integer(environ, "SLURM_ARRAY_TASK_MIN", task, low=0)
        last = _slurm_integer(environ, "SLURM_ARRAY_TASK_MAX", task, low=first)
        # A step of 0 would divide by zero and a negative one reverse the range: neither is an
        # array SLURM makes, so the environment was set by hand and is refused, not guessed.
        step = _slurm_integer(environ, "SLURM_ARRAY_TASK_STEP", "1", low=1)
        size = (last - first) // step + 1
        count = _slurm_integer(environ, "SLURM_ARRAY_TASK_COUNT", str(size), low=1)
        if (task_id - first) % step or count != size or not first <= task_id <= last:
            raise SettingsError(
                f"SLURM array job {job}: task IDs {first}-{last}:{step} with {count} tasks are not one range, "
                "so task ID and count give no shard; pass --shard K/N (0/1: every case)"
            )
        source = f"SLURM array job {job}, task {task_id} of {first}-{last}" + (f":{step}" if step > 1 else "")
        return cls((task_id - first) // step, count, source)

    def select(self, case_ids: Iterable[str]) -> set[str]:
        """The IDs this shard takes: every `count`-th of the sorted distinct IDs from the `index`-th."""
        return set(sorted(set(case_ids))[self.index :: self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _slurm_integer(environ: Mapping[str, str], name: str, default: str, *, low: int) -> int:
    """The integer in SLURM variable `name` (`default` when it is unset or empty), at least
    `low`; a SettingsError naming the variable and its value otherwise."""
    text = environ.get(name) or default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise SettingsError(f"{name}={text!r}: expected an integer of at least {low}; pass --shard K/N instead")
    return value
