"""SIGTERM and SIGINT as an exception that unwinds: temporaries are removed on the way out (the
atomic writes' `finally`), and the command reports what it finished and exits 128 + the signal."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, so that `except Exception` in a case's error
    handling does not swallow it and the batch stops."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


def _raise_interrupted(signal_number: int, _frame: object) -> None:
    raise Interrupted(signal_number)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside: SIGTERM and SIGINT raise Interrupted (in the main thread, where Python delivers
    signals). The previous handlers are restored on the way out."""
    previous = {number: signal.signal(number, _raise_interrupted) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def in_worker(_worker_id: int = 0) -> None:
    """For a data-loading worker process forked inside `interruptible()`: the main process alone
    turns a signal into Interrupted and shuts its workers down; a worker ignores Ctrl-C (sent to
    the whole process group) and ends on SIGTERM without a traceback. A DataLoader's worker_init_fn."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
