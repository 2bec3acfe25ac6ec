"""IOPubThread.run_exclusive: the caller does the IO thread's work while it sleeps.

These are ours only (ipykernel has no such shortcut), so they build our module's
kernel whatever ``IOSTREAM_IMPL`` says.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import iostream
from support import Kernelish, started_kernel


@pytest.fixture
def ours() -> Iterator[Kernelish]:
    yield from started_kernel(iostream, zmq.XPUB)


def _asleep(kernel: Kernelish) -> None:
    """Let the IO thread finish what it was doing and go back to waiting."""
    assert kernel.thread.flush(5)
    time.sleep(0.05)


def _hold_wakeups(kernel: Kernelish) -> None:
    """Make ``schedule`` queue without waking the thread (forces the race in
    which a call is queued while the thread still sleeps)."""
    with kernel.thread._lock:
        kernel.thread._wake_pending = True


def _wake(kernel: Kernelish) -> None:
    with kernel.thread._lock:
        kernel.thread._wake_locked()


def test_runs_on_the_caller_while_the_thread_sleeps(ours: Kernelish) -> None:
    _asleep(ours)
    ran: list[int] = []
    assert ours.thread.run_exclusive(lambda: ran.append(threading.get_ident())) is True
    assert ran == [threading.get_ident()]


def test_never_beside_a_call_the_io_thread_is_running(ours: Kernelish) -> None:
    busy, release = threading.Event(), threading.Event()
    ours.thread.schedule(lambda: (busy.set(), release.wait(10)))
    assert busy.wait(5)
    try:
        assert ours.thread.run_exclusive(lambda: pytest.fail("ran beside the IO thread")) is False
    finally:
        release.set()
    assert ours.thread.flush(5)


def test_never_overtakes_an_ordered_call(ours: Kernelish) -> None:
    _asleep(ours)
    order: list[str] = []
    _hold_wakeups(ours)
    ours.thread.schedule(order.append, "scheduled")
    assert ours.thread.run_exclusive(lambda: order.append("exclusive")) is False
    _wake(ours)
    assert ours.thread.flush(5)
    assert order == ["scheduled"]


def test_overtakes_an_overtakable_call(ours: Kernelish) -> None:
    _asleep(ours)
    order: list[str] = []
    _hold_wakeups(ours)
    ours.thread.schedule_overtakable(lambda: order.append("timer check"))
    assert ours.thread.run_exclusive(lambda: order.append("exclusive")) is True
    _wake(ours)
    assert ours.thread.flush(5)
    assert order == ["exclusive", "timer check"]


def test_refused_on_the_io_thread_inside_itself_and_once_stopped(ours: Kernelish) -> None:
    _asleep(ours)
    answers: list[bool] = []
    ours.thread.schedule(lambda: answers.append(ours.thread.run_exclusive(lambda: None)))
    assert ours.thread.flush(5)
    assert ours.thread.run_exclusive(
        lambda: answers.append(ours.thread.run_exclusive(lambda: None))
    )
    assert answers == [False, False]
    ours.thread.stop()
    assert ours.thread.run_exclusive(lambda: pytest.fail("ran after stop")) is False


class Timeout(Exception):
    pass


def _raise_timeout(signum: int, frame: Any) -> None:
    raise Timeout


def test_signals_wait_until_the_run_is_done(ours: Kernelish) -> None:
    """A handler that raises (a SIGALRM timeout, Ctrl-C's KeyboardInterrupt) must
    not cut the work short; the signal is delivered right after."""
    _asleep(ours)
    steps: list[str] = []

    def work() -> None:
        os.kill(os.getpid(), signal.SIGALRM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # (a sleep runs pending handlers)
        steps.append("finished")

    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    try:
        with pytest.raises((Timeout, KeyboardInterrupt)):
            ours.thread.run_exclusive(work)
        assert steps == ["finished"]
        assert signal.getsignal(signal.SIGALRM) is _raise_timeout
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert ours.thread.flush(5)
    assert ours.thread.run_exclusive(lambda: steps.append("again"))
    assert steps == ["finished", "again"]


def test_ctrl_c_during_an_explicit_flush_publishes_the_text_once(ours: Kernelish) -> None:
    stream = ours.stream()
    stream.write("warm up\n")
    stream.flush()
    interrupted: list[bool] = []

    def interrupt_once(msg: dict[str, Any]) -> dict[str, Any]:
        if not interrupted:
            interrupted.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return msg

    done = threading.Event()
    ours.thread.schedule(lambda: (stream.register_hook(interrupt_once), done.set()))
    assert done.wait(5)
    _asleep(ours)
    stream.write("progress 1/2\n")
    with pytest.raises(KeyboardInterrupt):
        stream.flush()
    stream.write("progress 2/2\n")
    stream.flush()
    ours.receiver.wait_for_text("warm up\nprogress 1/2\nprogress 2/2\n")
    assert ours.receiver.text() == "warm up\nprogress 1/2\nprogress 2/2\n"


def test_progress_bar_flushes_run_on_the_calling_thread(ours: Kernelish) -> None:
    """flush() after each step publishes on the caller, without a round trip
    through the IO thread (its hooks still apply)."""
    stream = ours.stream()
    publishers: list[int] = []

    def note(msg: dict[str, Any]) -> dict[str, Any]:
        publishers.append(threading.get_ident())
        return msg

    done = threading.Event()
    ours.thread.schedule(lambda: (stream.register_hook(note), done.set()))
    assert done.wait(5)
    stream.write("start\n")
    stream.flush()
    _asleep(ours)
    publishers.clear()
    for i in range(50):
        stream.write(f"\r{i}/50")
        stream.flush()
    ours.receiver.wait_for_text("start\n" + "".join(f"\r{i}/50" for i in range(50)))
    assert len(publishers) == 50  # one message per flush, each through the hook
    on_caller = publishers.count(threading.get_ident())
    assert on_caller >= 25, f"only {on_caller} of 50 flushes ran on the caller"


def test_a_caller_flushing_in_a_tight_loop_does_not_starve_the_io_thread(
    ours: Kernelish,
) -> None:
    """Work that reaches the IO thread by other ways than ``schedule`` (timers,
    a forked child's pipe, ``add_callback``) still runs promptly."""
    stream = ours.stream()
    stream.write("start\n")
    stream.flush()
    stop = threading.Event()
    waits: list[float] = []

    def probe() -> None:
        while not stop.is_set():
            ran = threading.Event()
            started = time.monotonic()
            ours.thread.io_loop.add_callback(ran.set)
            if not ran.wait(10):
                waits.append(10.0)
                return
            waits.append(time.monotonic() - started)
            time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    deadline = time.monotonic() + 1.0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        stream.write(f"\r{i}")
        stream.flush()
    stop.set()
    prober.join(15)
    assert waits, "the probe never ran"
    assert max(waits) < 0.5, f"the IO thread waited up to {max(waits):.3f} s for its turn"
