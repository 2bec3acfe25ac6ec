"""Interrupts and blocking sockets: what the caller of write() and flush() can rely on.

Only the IO thread sends while it runs, and Python runs signal handlers on the
main thread only, so Ctrl-C during write() or flush() interrupts the caller's
wait, never a message; a flush on a socket that would block returns within
``flush_timeout``. These build our module's kernel whatever ``IOSTREAM_IMPL``
says (they are about our thread's timing and bounds).
"""

from __future__ import annotations

import contextlib
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


def test_progress_bar_flushes_publish_on_the_io_thread_one_message_each(
    ours: Kernelish,
) -> None:
    """flush() after each step publishes that step as one message, in order, and
    the sending is always the IO thread's: the main thread, where Python runs
    signal handlers, never holds the socket."""
    stream, session = _recording_stream(ours, "start\n")
    for i in range(50):
        stream.write(f"\r{i}/50")
        stream.flush()
    ours.receiver.wait_for_text("start\n" + "".join(f"\r{i}/50" for i in range(50)))
    assert len(session.senders) == 50  # one message per flush
    assert set(session.senders) == {ours.thread.thread.ident}


def test_signals_during_flush_reach_their_handlers_at_once_and_untouched(
    ours: Kernelish,
) -> None:
    """Nothing holds signals back or swaps handlers: a signal that comes while
    the caller waits in flush() runs its handler (in the caller's frame), and
    the handlers are the user's own before and after."""
    stream, session = _recording_stream(ours, "start\n")
    frames: list[Any] = []

    def note(signum: int, frame: Any) -> None:
        frames.append(frame)

    previous = signal.signal(signal.SIGUSR1, note)
    try:
        session.on_send = lambda: os.kill(os.getpid(), signal.SIGUSR1)
        stream.write("signalled\n")
        stream.flush()
        session.on_send = None
        deadline = time.monotonic() + 10
        while not frames and time.monotonic() < deadline:
            time.sleep(0.01)
        handler = signal.getsignal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(frames) == 1 and frames[0] is not None
    assert handler is note
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ours.receiver.wait_for_text("start\nsignalled\n")


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
    # Sent once, whole, by the IO thread: the interrupt struck the waiting caller.
    assert session.senders == [ours.thread.thread.ident]
    stream.write("progress 2/2\n")
    stream.flush()
    ours.receiver.wait_for_text("start\nprogress 1/2\nprogress 2/2\n")
    assert ours.receiver.text() == "start\nprogress 1/2\nprogress 2/2\n"


def test_hooks_and_echo_keep_working_with_explicit_flushes(ours: Kernelish) -> None:
    """A hook registered on the IO thread sees every message of an explicit
    flush (which publishes there), and the echo target gets every write."""
    stream, session = _recording_stream(ours, "first\n")
    done = threading.Event()
    hooked: list[str] = []

    def hook(msg: dict[str, Any]) -> dict[str, Any]:
        hooked.append(msg["content"]["text"])
        return msg

    ours.thread.schedule(lambda: (stream.register_hook(hook), done.set()))
    assert done.wait(5)
    _asleep(ours)
    stream.write("hooked\n")
    stream.flush()
    assert session.senders == [ours.thread.thread.ident]
    assert hooked == ["hooked\n"]

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


def test_a_flush_meeting_a_full_nodrop_socket_stays_interruptible() -> None:
    """XPUB_NODROP blocks at the high-water mark. A flush that meets it waits
    for the IO thread as usual, and Ctrl-C still interrupts the waiting caller."""
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


def test_writes_between_explicit_flushes_wake_nobody() -> None:
    """An explicit flush keeps the timer's promise (the licence): in a progress
    bar the write after each flush schedules nothing, so each step costs the
    flush's own round trip and no second wake-up of the IO thread."""

    class CountingThread(iostream.IOPubThread):
        calls: list[str]

        def schedule(self, f: Any, *args: Any, **kwargs: Any) -> None:
            self.calls.append(getattr(f, "__name__", repr(f)))
            super().schedule(f, *args, **kwargs)

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    socket.bind("tcp://127.0.0.1:*")
    thread = CountingThread(socket, session=Session(key=KEY))
    thread.calls = []
    thread.start()
    stream = iostream.OutStream(Session(key=KEY), thread, "stdout", watchfd=False)
    stream.flush_interval = 60.0  # the timer's own flush never comes during the loop
    try:
        stream.write("start\n")  # promises the flush and licenses the fast path
        assert thread.flush(5)
        thread.calls.clear()
        for i in range(50):
            stream.write(f"\r{i}/50")
            stream.flush()
        timers = [name for name in thread.calls if name == "_io_on_timer"]
        assert timers == [], thread.calls
        assert len(thread.calls) == 2 * 50  # each flush: publish, then answer
    finally:
        stream.close()
        thread.stop()
        thread.close()
        context.term()


class InterruptRightAfterAcquire:
    """A lock that, when armed, raises KeyboardInterrupt right after it has been
    acquired on the main thread: what CPython 3.14 builds without the fix of
    gh-148874 do when Ctrl-C's signal lands just after a ``with`` statement's
    ``__enter__`` (``__exit__`` is then skipped). Reproduces that case on every
    Python, whatever its timing."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.armed = False
        self.fired = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.lock.acquire(blocking, timeout)
        if got and self.armed and threading.current_thread() is threading.main_thread():
            self.armed = False
            self.fired += 1
            raise KeyboardInterrupt
        return got

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_an_interrupt_right_after_a_lock_is_taken_never_leaves_it_held(
    ours: Kernelish,
) -> None:
    """The IO thread's queue lock and the stream group's lock, each interrupted
    right after it is taken on the main thread (a write's slow path, a flush,
    ``set_parent``): nothing may stay locked, so output goes on. Before, the
    3.14 interrupt test hung for good at ``with self._lock`` in ``_enqueue``."""
    stream = ours.stream()
    stream.write("warm\n")
    stream.flush()
    _asleep(ours)
    queue_lock, group_lock = InterruptRightAfterAcquire(), InterruptRightAfterAcquire()
    ours.thread._lock = queue_lock  # (the IO thread is idle: nothing holds the old ones)
    stream._group.lock = group_lock

    def new_parent(msg_id: str) -> None:
        stream.set_parent({"header": {"msg_id": msg_id}})

    def nothing() -> None:
        pass

    steps = [  # (the lock, what comes first, the step it is armed for)
        (queue_lock, nothing, lambda: ours.thread.schedule(nothing)),
        (group_lock, nothing, lambda: new_parent("second")),
        # (a new parent ends the fast path's licence: the next write takes the lock)
        (group_lock, lambda: new_parent("third"), lambda: stream.write("after\n")),
        (queue_lock, nothing, stream.flush),
    ]
    for lock, before, step in steps:
        before()
        lock.armed = True
        with contextlib.suppress(KeyboardInterrupt):
            step()
        number = steps.index((lock, before, step))
        assert not lock.armed, f"step {number} never took the lock"
        assert not lock.lock._is_owned(), f"step {number} left its lock held"
        assert ours.thread.flush(5), "the IO thread is stuck on a lock left held"
    stream.write("still alive\n")
    stream.flush()
    ours.receiver.wait_for_text("warm\nstill alive\n")
    assert queue_lock.fired == 2 and group_lock.fired == 2
    assert ours.receiver.text().startswith("warm\n")
    assert ours.receiver.text().endswith("still alive\n")
