"""The trainer's thread count follows the load other processes put on the machine."""

from __future__ import annotations

import pytest
import torch

from trainer import cpu_threads
from trainer.cpu_threads import ThreadGovernor


class Clock:
    """A fake machine: wall time, CPU busy time of all cores, and this process's CPU time, advanced by hand."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = 100.0, 50.0, 10.0

    def read(self) -> tuple[float, float, float]:
        return self.wall, self.busy, self.own

    def advance(self, seconds: float, own_cores: float, others_cores: float) -> None:
        self.wall += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + others_cores)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ThreadGovernor, "_read", staticmethod(clock.read))
    monkeypatch.setattr(cpu_threads.time, "sleep", lambda seconds: clock.advance(seconds, 0.0, 0.0))
    threads = torch.get_num_threads()
    yield clock
    torch.set_num_threads(threads)


def test_all_cores_when_idle_one_fewer_while_another_process_is_busy(clock: Clock) -> None:
    governor = ThreadGovernor(cores=2)
    assert governor.start() == 2 and torch.get_num_threads() == 2

    clock.advance(2.0, own_cores=1.2, others_cores=0.9)  # the chat decodes a reply on one core
    assert governor.update() == 1 and torch.get_num_threads() == 1
    clock.advance(2.0, own_cores=1.0, others_cores=0.35)  # between the thresholds: keep what we have
    assert governor.update() == 1
    clock.advance(2.0, own_cores=1.0, others_cores=0.05)  # the reply is done: take the core back
    assert governor.update() == 2 and torch.get_num_threads() == 2
    clock.advance(2.0, own_cores=2.0, others_cores=0.3)
    assert governor.update() == 2
    assert governor.history == [2, 1, 1, 2] and governor.most_used() in (1, 2)


def test_a_busy_machine_at_start_leaves_cores_free(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_threads.time, "sleep", lambda seconds: clock.advance(seconds, 0.0, 3.0))
    governor = ThreadGovernor(cores=4)
    assert governor.start() == 1  # three other cores busy: one thread
    clock.advance(1.0, own_cores=1.0, others_cores=1.0)
    assert governor.update() == 3


def test_without_a_load_reading_one_core_stays_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ThreadGovernor, "_read", staticmethod(lambda: None))
    threads = torch.get_num_threads()
    try:
        governor = ThreadGovernor(cores=2)
        assert governor.start() == 1
        assert governor.update() == 1 and governor.history == [1]
    finally:
        torch.set_num_threads(threads)


def test_the_machine_busy_time_is_read_from_proc_stat() -> None:
    busy = cpu_threads.machine_busy_seconds()
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert busy > 0
