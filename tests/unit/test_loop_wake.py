"""The loop is woken by a hash worker's result only while it waits in select() (issue 15).

Outside select() the result is drained right after the next select(), which then does not wait:
each needless wake-up cost two system calls per piece (a send by the worker, a recv by the loop).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from minibt.loop import EventLoop
from minibt.session import Session
from minibt.settings import SessionConfig
from minibt.workers import Hasher
from tests.helpers import FakeClock


@pytest.fixture
def parts(clock: FakeClock) -> Iterator[tuple[EventLoop, Hasher, list[tuple[float, list[str]]]]]:
    box: list[EventLoop] = []
    hasher = Hasher(threads=1, notify=lambda: box[0].wake_for_result())
    lp = EventLoop(Session(rng=random.Random(1), config=SessionConfig(encryption="none")), clock=clock,
                   hasher=hasher, bind="127.0.0.1", port=0)
    box.append(lp)
    lp.open()
    calls: list[tuple[float, list[str]]] = []  # (timeout, kinds of the events select() returned)
    real = lp.sel.select

    def select(timeout: float | None = None) -> list:  # type: ignore[type-arg]
        events = real(timeout)
        calls.append((timeout or 0.0, [key.data[0] for key, _ in events]))
        return events

    lp.sel.select = select  # type: ignore[method-assign]
    try:
        yield lp, hasher, calls
    finally:
        lp.close()
        hasher.close()


def test_a_result_while_the_loop_runs_is_drained_without_a_wakeup(parts) -> None:  # type: ignore[no-untyped-def]
    lp, hasher, calls = parts
    lp.run_once()  # settle the first tick: from now on select() would wait for TICK_S
    hasher.run(lambda: 7, tag="job")
    while not hasher.has_results():  # the worker's notify came while the loop was not in select()
        threading.Event().wait(0.001)
    lp.run_once()
    assert calls[-1] == (0.0, [])  # no wake-up was sent, and select() did not wait for one
    assert not hasher.has_results()  # drained in that iteration


def test_a_result_while_the_loop_waits_wakes_it(parts) -> None:  # type: ignore[no-untyped-def]
    lp, hasher, calls = parts
    lp.run_once()  # settle the first tick
    gate = threading.Event()
    real = lp.sel.select

    def select(timeout: float | None = None) -> list:  # type: ignore[type-arg]
        gate.set()  # the job finishes while the loop is in select()
        return real(timeout)

    lp.sel.select = select  # type: ignore[method-assign]
    hasher.run(lambda: gate.wait(10), tag="job")
    lp.run_once()
    timeout, kinds = calls[-1]
    assert timeout > 0 and kinds == ["wake"]  # it would have waited: the worker woke it
    assert not hasher.has_results()
