"""IOPubThread.run_exclusive: the caller does the IO thread's work while it sleeps.

These are ours only (ipykernel has no such shortcut), so they build our module's
kernel whatever ``IOSTREAM_IMPL`` says.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

import iostream
from support import KEY, Kernelish, run_python, started_kernel


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


@pytest.fixture
def handlers() -> Iterator[dict[str, list[int]]]:
    """SIGALRM raises Timeout, SIGUSR1 is recorded; both restored afterwards."""
    seen: dict[str, list[int]] = {"alrm": [], "usr1": []}

    def alarm(signum: int, frame: Any) -> None:
        seen["alrm"].append(signum)
        raise Timeout

    previous = {
        signal.SIGALRM: signal.signal(signal.SIGALRM, alarm),
        signal.SIGUSR1: signal.signal(signal.SIGUSR1, lambda n, f: seen["usr1"].append(n)),
    }
    yield seen
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_signals_wait_until_the_run_is_done(
    ours: Kernelish, handlers: dict[str, list[int]]
) -> None:
    """A handler that raises (a SIGALRM timeout, Ctrl-C's KeyboardInterrupt) must
    not cut the work short; every signal is delivered right after, once each,
    and the first exception is raised."""
    _asleep(ours)
    steps: list[str] = []
    alarm = signal.getsignal(signal.SIGALRM)

    def work() -> None:
        os.kill(os.getpid(), signal.SIGALRM)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # (a sleep runs pending handlers)
        assert handlers == {"alrm": [], "usr1": []}
        steps.append("finished")

    with pytest.raises(Timeout):
        ours.thread.run_exclusive(work)
    assert steps == ["finished"]
    assert handlers == {"alrm": [signal.SIGALRM], "usr1": [signal.SIGUSR1]}
    assert signal.getsignal(signal.SIGALRM) is alarm
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert ours.thread.flush(5)
    assert ours.thread.run_exclusive(lambda: steps.append("again"))
    assert steps == ["finished", "again"]


def test_a_held_back_signal_reaches_a_wakeup_fd_once(
    ours: Kernelish, handlers: dict[str, list[int]]
) -> None:
    """asyncio's add_signal_handler counts bytes on the wakeup fd: a deferred
    signal must not be announced twice."""
    _asleep(ours)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    old_fd = signal.set_wakeup_fd(write_end)
    try:
        assert ours.thread.run_exclusive(lambda: os.kill(os.getpid(), signal.SIGUSR1))
        os.set_blocking(read_end, False)
        assert os.read(read_end, 100) == bytes([signal.SIGUSR1])
    finally:
        signal.set_wakeup_fd(old_fd)
        os.close(read_end)
        os.close(write_end)
    assert handlers["usr1"] == [signal.SIGUSR1]


def test_declines_where_c_code_stacked_its_own_handler(ours: Kernelish, tmp_path: Any) -> None:
    """faulthandler (or cysignals) chained over Python's handler: putting
    Python's back would silently remove theirs, so the flush goes the long way."""
    import faulthandler

    _asleep(ours)
    previous = signal.signal(signal.SIGUSR2, lambda n, f: None)
    with open(tmp_path / "dump.txt", "w+") as dump:
        faulthandler.register(signal.SIGUSR2, file=dump, chain=True)
        try:
            assert ours.thread.run_exclusive(lambda: None) is False
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
        finally:
            faulthandler.unregister(signal.SIGUSR2)
            signal.signal(signal.SIGUSR2, previous)
        dump.seek(0)
        assert "File" in dump.read()  # faulthandler still dumped the traceback
    scheduled: list[str] = []
    ours.thread.schedule(scheduled.append, "still works")
    assert ours.thread.flush(5) and scheduled == ["still works"]


def test_a_child_forked_meanwhile_gets_its_signal_handlers_back(ours: Kernelish) -> None:
    _asleep(ours)
    read_end, write_end = os.pipe()

    def fork_from_another_thread() -> None:
        pid = os.fork()
        if pid == 0:
            ok = signal.getsignal(signal.SIGINT) is signal.default_int_handler
            os.write(write_end, b"ok" if ok else b"no")
            os._exit(0)
        os.waitpid(pid, 0)

    def work() -> None:
        forker = threading.Thread(target=fork_from_another_thread)
        forker.start()
        forker.join(10)

    try:
        assert ours.thread.run_exclusive(work)
        assert os.read(read_end, 2) == b"ok"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_socket_whose_send_can_block_keeps_flush_bounded(tmp_path: Any) -> None:
    """PUSH without a peer blocks its sender: that must stay on the IO thread,
    where flush_timeout bounds the wait, never on the caller."""
    code = """
import time, zmq, iostream
from jupyter_client.session import Session
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.bind("tcp://127.0.0.1:*")  # no peer: a send blocks
thread = iostream.IOPubThread(push, session=Session(key=b"k"))
thread.start()
stream = iostream.OutStream(Session(key=b"k"), thread, "stdout", watchfd=False)
stream.flush_timeout = 1.0
time.sleep(0.1)
started = time.monotonic()
stream.write("nobody reads this\\n")
stream.flush()
print("returned after", round(time.monotonic() - started, 1))
import os
os._exit(0)
"""
    code_rc, out, err = run_python(code, timeout=60)
    assert code_rc == 0, err
    assert "returned after" in out and "IOStream.flush timed out" in err


class RecordingSession(Session):
    """A real keyed Session that notes which thread sends each stream message."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(key=KEY, **kwargs)
        self.senders: list[int] = []
        self.on_send: Any = None

    def send(self, stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(msg_or_type, dict) and msg_or_type.get("msg_type") == "stream":
            self.senders.append(threading.get_ident())
            if self.on_send is not None:
                self.on_send()
        return super().send(stream, msg_or_type, *args, **kwargs)


def _recording_stream(kernel: Kernelish, text: str) -> tuple[Any, RecordingSession]:
    session = RecordingSession()
    stream = iostream.OutStream(session, kernel.thread, "stdout", watchfd=False)
    kernel.streams.append(stream)
    stream.write(text)
    stream.flush()
    kernel.receiver.wait_for_text(text)
    _asleep(kernel)
    session.senders.clear()
    return stream, session


def test_progress_bar_flushes_run_on_the_calling_thread(ours: Kernelish) -> None:
    """flush() after each step publishes on the caller, without a round trip
    through the IO thread."""
    stream, session = _recording_stream(ours, "start\n")
    for i in range(50):
        stream.write(f"\r{i}/50")
        stream.flush()
    ours.receiver.wait_for_text("start\n" + "".join(f"\r{i}/50" for i in range(50)))
    assert len(session.senders) == 50  # one message per flush
    on_caller = session.senders.count(threading.get_ident())
    assert on_caller >= 25, f"only {on_caller} of 50 flushes ran on the caller"


def test_ctrl_c_during_an_explicit_flush_publishes_the_text_once(ours: Kernelish) -> None:
    stream, session = _recording_stream(ours, "start\n")

    def interrupt_once() -> None:
        session.on_send = None
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)

    session.on_send = interrupt_once
    stream.write("progress 1/2\n")
    with pytest.raises(KeyboardInterrupt):
        stream.flush()
    assert session.senders == [threading.get_ident()]  # it ran here, and was not cut
    stream.write("progress 2/2\n")
    stream.flush()
    ours.receiver.wait_for_text("start\nprogress 1/2\nprogress 2/2\n")
    assert ours.receiver.text() == "start\nprogress 1/2\nprogress 2/2\n"


def test_hooks_and_echo_keep_publishing_on_the_io_thread(ours: Kernelish) -> None:
    """User code (a hook, an echo target) may block; with signals held back
    Ctrl-C could not stop it, so such streams never publish on the caller."""
    stream, session = _recording_stream(ours, "first\n")
    done = threading.Event()
    ours.thread.schedule(lambda: (stream.register_hook(lambda msg: msg), done.set()))
    assert done.wait(5)
    _asleep(ours)
    stream.write("hooked\n")
    stream.flush()
    assert session.senders == [ours.thread.thread.ident]

    echoed, echo_session = _recording_stream(ours, "second\n")
    echoed.echo = io.StringIO()
    _asleep(ours)
    echoed.write("echoed\n")
    echoed.flush()
    assert echo_session.senders == [ours.thread.thread.ident]
    assert echoed.echo.getvalue() == "echoed\n"


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


def test_held_back_handlers_get_the_callers_frame(
    ours: Kernelish, handlers: dict[str, list[int]]
) -> None:
    """pdb's SIGINT handler stops in the frame it is given: that must be the
    user's code, not the library's."""
    _asleep(ours)
    frames: list[Any] = []
    previous = signal.signal(signal.SIGUSR2, lambda n, f: frames.append(f))
    try:
        assert ours.thread.run_exclusive(lambda: os.kill(os.getpid(), signal.SIGUSR2))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(frames) == 1 and frames[0] is not None
    assert frames[0].f_code.co_name == "test_held_back_handlers_get_the_callers_frame"


def test_a_recorder_left_installed_repairs_itself() -> None:
    """If putting the handlers back is cut short (a handler put back raised),
    the recorder still installed acts as the real handler when its signal comes,
    and puts it back: Ctrl-C keeps working."""
    from iostream.exclusive import SignalsDeferred

    deferral = SignalsDeferred()
    assert deferral.begin()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    deferral._ending = True  # as if end() had been cut short before SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    deferral.end()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_probing_for_pythons_handler_never_touches_a_c_handler() -> None:
    """The probe signal (SIGRTMAX) may carry a handler installed from C that
    Python does not know of: it must be left alone (else the next such signal
    kills the process)."""
    code = """
import faulthandler, os, signal, sys
faulthandler.register(signal.SIGRTMAX, file=sys.stderr)
from iostream.exclusive import SignalsDeferred
deferral = SignalsDeferred()
print("begin", deferral.begin())
deferral.end()
os.kill(os.getpid(), signal.SIGRTMAX)
print("survived")
"""
    code_rc, out, err = run_python(code, timeout=60)
    assert code_rc == 0, (code_rc, err)
    assert "begin False" in out and "survived" in out


def test_a_socket_that_would_block_hands_the_send_to_the_io_thread() -> None:
    """XPUB_NODROP blocks at the high-water mark, and pyzmq cannot tell that
    the option is set. A flush that meets it must stay interruptible: the send
    goes to the IO thread and the caller waits as usual (Ctrl-C works)."""
    code = """
import os, signal, threading, time, zmq, iostream
from jupyter_client.session import Session
ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.linger = 0
pub.setsockopt(zmq.XPUB_NODROP, 1)
pub.sndhwm = 1
port = pub.bind_to_random_port("tcp://127.0.0.1")
sub = ctx.socket(zmq.SUB)
sub.rcvhwm = 1
sub.connect(f"tcp://127.0.0.1:{port}")
sub.subscribe(b"")
pub.recv()  # subscribed; sub never reads again
thread = iostream.IOPubThread(pub, session=Session(key=b"k"))
thread.start()
out = iostream.OutStream(Session(key=b"k"), thread, "stdout", watchfd=False)
out.flush_interval = 60.0  # no timer flush: the flushes below meet the full socket
threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
try:
    for i in range(100_000):
        out.write("x" * 65536 + "\\n")
        out.flush()
    print("never blocked")
except KeyboardInterrupt:
    print("interrupted after", round(time.monotonic() - started, 1))
os._exit(0)
"""
    code_rc, out, err = run_python(code, timeout=30)
    assert code_rc == 0, err
    assert "interrupted after" in out, (out, err)
