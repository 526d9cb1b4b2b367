"""CPU threads for training, fitted to the cores other processes leave free.

torch runs each CPU operation on a team of OpenMP threads (one per core by default) that wait for one
another at the end of the operation. When another busy process shares the cores, one of the team is
often descheduled, and the others spin waiting for it: a training step then takes several times
longer than with fewer threads (measured on 2 cores beside one busy process: 1 thread 1.4 to 5 times
faster than 2). ``CpuThreadGovernor`` measures, at every optimizer step, how many cores the *other*
processes kept busy since the last step (``/proc/stat`` minus this process's own time) and sets
torch's thread count to the cores left, at least 1 and never more than torch started with. On an
idle machine it keeps every thread. A thread count the user chose with ``OMP_NUM_THREADS`` is kept as
it is. It reads Linux's ``/proc``; elsewhere it does nothing. The thread count is process-wide: train
inside ``thread_count_restored()``, so that it is back as it was however training ends.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import TrainerCallback


def threads_for(free_cores: float, most: int) -> int:
    """Threads for ``free_cores`` idle cores, between 1 and ``most``. A core counts as free when others use less
    than a quarter of it: a thread sharing a core half the time already holds the whole team back."""
    return max(1, min(most, int(free_cores + 0.25)))


def threads_chosen_by_user() -> bool:
    return bool(os.environ.get("OMP_NUM_THREADS"))


@contextmanager
def thread_count_restored() -> Iterator[None]:
    """torch's thread count as it was before the block, however the block ends (an exception included)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CpuUsage:
    """Cores kept busy by other processes between two calls of ``others_since_last``."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        """(all CPU time, busy CPU time, this process's CPU time), in clock ticks, or None without /proc."""
        try:
            fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        total = sum(fields)  # user nice system idle iowait irq softirq steal, over all CPUs
        busy = total - fields[3] - fields[4]
        return total, busy, int(own[11]) + int(own[12])  # utime and stime, fields 14 and 15 of /proc/self/stat

    def others_since_last(self) -> float | None:
        now = self._read()
        before, self._last = self._last, now
        if now is None or before is None or now[0] <= before[0]:
            return None
        elapsed = (now[0] - before[0]) / self.cores  # ticks of one CPU
        return max(0.0, (now[1] - before[1]) - (now[2] - before[2])) / elapsed


class CpuThreadGovernor(TrainerCallback):
    """Before training and after every optimizer step, torch's thread count := the cores other processes left
    idle since the last look (before training: over a quarter of a second). Use it inside
    ``thread_count_restored()``, which puts the count back."""

    def __init__(self) -> None:
        self.most = torch.get_num_threads()
        self.usage: CpuUsage | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.most = torch.get_num_threads()
        self.usage = CpuUsage()
        time.sleep(0.25)
        self._fit()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._fit()

    def _fit(self) -> None:
        others = self.usage.others_since_last() if self.usage else None
        if others is None:
            return
        threads = threads_for(self.usage.cores - others, self.most)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
