"""runtime/session.py: the wait for a spinning pool to go idle between timed sessions."""

from __future__ import annotations

import os
import sys

import pytest

from redcompile.runtime import session


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_cpu_time_of_a_process_is_read_and_grows():
    before = session.cpu_nanoseconds(os.getpid())
    sum(i * i for i in range(200_000))  # some CPU work of this thread
    after = session.cpu_nanoseconds()
    assert before is not None and after > before


def test_the_wait_ends_once_a_window_passes_without_cpu_use(monkeypatch):
    window_ns = session.IDLE_WINDOW_S * 1e9
    # a pool thread spinning at a full core for two windows, then asleep
    readings = iter([0, window_ns, 2 * window_ns, 2 * window_ns + 1000, 10 * window_ns])
    slept = []
    monkeypatch.setattr(session, "cpu_nanoseconds", lambda pid=None: next(readings))
    monkeypatch.setattr(session.time, "sleep", slept.append)
    session.wait_until_idle(1234)
    assert len(slept) == 3  # two busy windows, then the idle one
    assert next(readings) == 10 * window_ns  # stopped reading there


def test_the_wait_gives_up_where_cpu_time_cannot_be_read(monkeypatch):
    monkeypatch.setattr(session, "cpu_nanoseconds", lambda pid=None: None)
    monkeypatch.setattr(session.time, "sleep", lambda _s: pytest.fail("it waited"))
    session.wait_until_idle()


def test_the_wait_is_bounded_while_a_process_stays_busy(monkeypatch):
    clock = iter(range(0, 100))
    counter = iter(range(0, 10**12, 10**9))  # a full core, always
    monkeypatch.setattr(session, "cpu_nanoseconds", lambda pid=None: next(counter))
    monkeypatch.setattr(session.time, "sleep", lambda _s: None)
    monkeypatch.setattr(session.time, "perf_counter", lambda: next(clock) * 0.1)
    session.wait_until_idle(timeout=0.5)  # returns: the deadline passed
