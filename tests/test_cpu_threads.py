"""The torch runner's thread count follows CPU pressure: one thread while the host is crowded, all cores when quiet."""

import torch

from jupyter_tt.serving.backends.torch import threads
from jupyter_tt.serving.backends.torch.threads import CpuThreads


class Host:
    """A fake clock and PSI counter: ``advance(seconds, waiting)`` passes time with that share of it stalled."""

    def __init__(self):
        self.now, self.stall_us = 100.0, 0

    def advance(self, seconds, waiting):
        self.now += seconds
        self.stall_us += int(seconds * waiting * 1e6)


def test_threads_drop_to_one_under_pressure_hold_and_come_back_when_quiet(monkeypatch):
    monkeypatch.setattr(threads, "allowed_cores", lambda: 4)
    host = Host()
    before = torch.get_num_threads()
    try:
        cpu = CpuThreads(read_stall=lambda: host.stall_us, clock=lambda: host.now)
        assert cpu.adaptive and cpu.threads == 4 == torch.get_num_threads()
        host.advance(1.5, 0.02)
        assert cpu.adjust() == 4  # quiet: every core
        host.advance(0.5, 0.9)
        assert cpu.adjust() == 4  # not a whole window yet
        host.advance(0.6, 0.9)
        assert cpu.adjust() == 1 == torch.get_num_threads()  # crowded: one thread
        host.advance(2, 0.0)
        assert cpu.adjust() == 1  # quiet again, but held for HOLD seconds
        host.advance(threads.HOLD, 0.0)
        assert cpu.adjust() == 4 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_without_psi_or_with_omp_num_threads_the_count_stays_fixed(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert not CpuThreads(read_stall=lambda: None).adaptive  # no /proc/pressure/cpu
        fixed = CpuThreads(2, read_stall=lambda: 0)
        assert not fixed.adaptive and fixed.adjust() == 2 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        from jupyter_tt.serving.backends.torch.runner import fixed_threads

        assert fixed_threads() == 1
    finally:
        torch.set_num_threads(before)
