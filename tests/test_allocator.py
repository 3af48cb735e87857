"""brats_cli.allocator: large blocks freed by one forward are reused by the next without the
kernel faulting their pages in again; a user's own allocator settings are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from brats_cli.allocator import keep_freed_memory, user_tuned_allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# A forward in miniature: each round makes two new 256 MiB tensors (the size of a width-64
# activation at 128^3 in bf16) from a kept one and frees them; prints the minor page faults of the
# last eight of sixteen rounds. glibc pads PyTorch's 64-byte aligned blocks, so a kept heap may
# still grow now and then (a round that faults one tensor's pages) before the same pages serve
# every round; by default every round faults both tensors in.
PROBE = """
import resource, sys
import torch
from brats_cli.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else "default")
torch.set_num_threads(1)
x = torch.ones(64 * 2**20)  # float32
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = x * 2
    z = torch.relu(y) + x
    del y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults[8:])
"""
PAGES = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def probe(mode: str) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    first, faults = done.stdout.splitlines()
    return first, [int(n) for n in faults.split()]


def test_kept_heap_reuses_the_pages_of_a_freed_block() -> None:
    applied, faults = probe("keep")
    assert applied == "True"
    reused = [count for count in faults if count < PAGES // 10]
    assert len(reused) >= 6, faults  # most rounds fault nothing in
    assert sum(faults) <= 2 * PAGES, faults  # by default: 16 tensors' pages over these 8 rounds


def test_glibc_default_faults_every_new_block_in() -> None:
    # The other side of the comparison: without the setting every round maps fresh memory for both
    # tensors (what the setting exists to avoid; were a future glibc to stop, the setting is moot).
    applied, faults = probe("default")
    assert applied == "default"
    assert min(faults) > 2 * PAGES * 0.9, faults


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_MAX_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ],
)
def test_a_users_own_allocator_settings_win(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert user_tuned_allocator(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert keep_freed_memory() is False  # returns before touching this process's allocator


def test_unrelated_environment_is_not_a_setting() -> None:
    assert not user_tuned_allocator({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2", "LD_PRELOAD": "libfoo.so"})
