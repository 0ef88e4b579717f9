"""What keeps the sweep driver from holding up the trials waiting on it: W&B's calls run on a thread of
their own (hero_bench.sweep.background)."""
import threading
import time

import pytest

from hero_bench.sweep.background import Serial


def test_work_handed_off_runs_in_order_on_another_thread_and_wait_returns_when_it_is_done():
    done, threads = [], set()
    serial = Serial("test")

    def work(i):
        time.sleep(0.01 * (3 - i))  # the first given is the slowest: order is kept anyway
        threads.add(threading.current_thread().name)
        done.append(i)

    started = time.perf_counter()
    for i in range(3):
        serial.submit(work, i)
    assert time.perf_counter() - started < 0.01  # the caller went on at once
    serial.wait()
    assert done == [0, 1, 2] and threads == {"test"}


def test_a_failure_handed_off_is_a_warning_and_the_work_after_it_still_runs():
    done = []
    serial = Serial("test")
    serial.submit(lambda: 1 / 0)
    serial.submit(done.append, "after")
    with pytest.warns(UserWarning, match="test: ZeroDivisionError"):
        serial.wait()
    assert done == ["after"]
