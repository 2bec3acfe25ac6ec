"""IOPubThread and BackgroundSocket: the docs/compat.md sections of those names."""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import time
import warnings
from types import ModuleType
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session
from tornado.ioloop import IOLoop

import iostream
from support import KEY, Kernelish, make_receiver, push_pull_pair, run_python


def test_module_constants(impl: ModuleType) -> None:
    assert (impl.MASTER, impl.CHILD) == (0, 1)
    assert isinstance(impl.PIPE_BUFFER_SIZE, int) and impl.PIPE_BUFFER_SIZE > 0
    for name in ("OutStream", "IOPubThread", "BackgroundSocket"):
        assert isinstance(getattr(impl, name), type)


def test_constructor_signature(impl: ModuleType) -> None:
    """ipyparallel checks that ``session`` is a parameter."""
    params = inspect.signature(impl.IOPubThread).parameters
    assert list(params)[:3] == ["socket", "pipe", "session"]


def test_attributes(kernel: Kernelish) -> None:
    thread = kernel.thread
    assert thread.socket is kernel.socket and thread.session is kernel.session
    assert isinstance(thread.thread, threading.Thread)
    assert thread.thread.name == "IOPub" and thread.thread.daemon
    assert isinstance(thread.io_loop, IOLoop)
    assert isinstance(thread.background_socket, iostream.BackgroundSocket)
    assert thread.pub_socket is kernel.socket
    assert thread.pipe_in.type == zmq.PULL and thread.pipe_out.type == zmq.PUSH
    assert len(thread._events) == 0
    assert thread.closed is False
    assert thread._check_mp_mode() == iostream.MASTER
    assert thread._is_master_process()


def test_schedule_runs_fifo_on_the_io_thread_with_arguments(kernel: Kernelish) -> None:
    seen: list[tuple[int, int, str]] = []
    for i in range(200):
        kernel.thread.schedule(
            lambda i, tag: seen.append((i, threading.get_ident(), tag)), i, tag="t"
        )
    assert kernel.thread.flush(5) is True
    assert [s[0] for s in seen] == list(range(200))
    assert {s[1] for s in seen} == {kernel.thread.thread.ident}
    assert {s[2] for s in seen} == {"t"}


def test_schedule_from_many_threads_keeps_each_threads_order(kernel: Kernelish) -> None:
    seen: list[tuple[int, int]] = []

    def producer(n: int) -> None:
        for i in range(300):
            kernel.thread.schedule(seen.append, (n, i))

    workers = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert kernel.thread.flush(5)
    for n in range(8):
        assert [i for m, i in seen if m == n] == list(range(300))


def test_schedule_runs_at_once_when_not_started(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thread = impl.IOPubThread(context.socket(zmq.PUB))
    seen: list[int] = []
    thread.schedule(seen.append, 1)
    assert seen == [1]
    thread.stop()
    thread.close()
    context.term()  # must not hang: every socket created was closed


def test_exception_in_scheduled_call_is_logged_not_fatal(
    kernel: Kernelish, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("scheduled failure")

    with caplog.at_level(logging.ERROR, logger="iostream"):
        kernel.thread.schedule(boom)
        assert kernel.thread.flush(5)
    assert kernel.thread.thread.is_alive()
    assert "scheduled failure" in caplog.text


def test_flush_timeout_returns_false(kernel: Kernelish) -> None:
    release = threading.Event()
    kernel.thread.schedule(release.wait, 5)
    assert kernel.thread.flush(0.05) is False
    release.set()
    assert kernel.thread.flush(5) is True


def test_close_leaves_the_socket_to_a_thread_that_did_not_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A zmq socket must never be closed under a thread that may still use it:
    the thread sends what is queued once it can, then closes the socket."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push, pull = push_pull_pair(context)
    thread = iostream.IOPubThread(push)
    thread.stop_timeout = 0.2
    thread.start()
    release = threading.Event()
    thread.schedule(release.wait, 10)
    thread.send_multipart([b"queued behind a slow call"])
    with caplog.at_level(logging.WARNING, logger="iostream"):
        thread.close()
    assert thread.closed and not push.closed
    assert "still running" in caplog.text
    release.set()
    assert pull.poll(5000)
    assert pull.recv_multipart() == [b"queued behind a slow call"]
    thread.thread.join(5)
    assert not thread.thread.is_alive() and push.closed
    pull.close()
    context.term()


def test_a_send_the_caller_made_nonblocking_is_dropped_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``send_multipart(msg, zmq.NOBLOCK)`` on a socket that cannot take it fails
    like any failed send (logged, dropped): retrying would spin the IO thread."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.bind("tcp://127.0.0.1:*")  # no peer: nothing can be sent
    thread = iostream.IOPubThread(push)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="iostream"):
        thread.send_multipart([b"nowhere"], zmq.NOBLOCK)
        assert thread.flush(5)
        time.sleep(0.1)
    assert "dropped" in caplog.text
    assert len(thread._events) == 0
    thread.close()
    context.term()


def test_stop_runs_everything_scheduled_then_returns(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thread = impl.IOPubThread(context.socket(zmq.PUB))
    thread.start()
    seen: list[int] = []
    for i in range(500):
        thread.schedule(seen.append, i)
    thread.stop()
    assert seen == list(range(500))
    assert not thread.thread.is_alive()
    thread.stop()  # idempotent
    thread.close()
    thread.close()
    assert thread.closed
    context.term()


def test_schedule_racing_stop_never_raises_or_loses(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thread = impl.IOPubThread(context.socket(zmq.PUB))
    thread.start()
    seen: list[int] = []
    errors: list[BaseException] = []
    returned: list[int] = []

    def producer() -> None:
        try:
            for i in range(2000):
                thread.schedule(seen.append, i)
                returned.append(i)
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=producer)
    worker.start()
    time.sleep(0.005)
    thread.stop()
    worker.join()
    assert errors == []
    # every call that returned ran, in order (the rest ran inline after stop)
    assert seen == list(range(2000)) == returned
    thread.close()
    context.term()


def test_atexit_registers_the_bound_stop(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    thread = impl.IOPubThread(context.socket(zmq.PUB))
    registered: list[Any] = []
    original = atexit.register
    atexit.register = lambda f, *a, **k: registered.append(f) or f  # type: ignore[assignment]
    try:
        thread.start()
    finally:
        atexit.register = original  # type: ignore[assignment]
    assert registered == [thread.stop]
    atexit.unregister(thread.stop)  # what envisage does: must find it
    thread.stop()
    thread.close()
    context.term()


def test_session_send_through_the_thread(kernel: Kernelish) -> None:
    kernel.session.send(kernel.thread, "status", {"execution_state": "busy"})
    kernel.receiver.wait_for(lambda ms: any(m["msg_type"] == "status" for m in ms))


def test_push_socket_and_dummy_socket(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push, pull = push_pull_pair(context)
    thread = impl.IOPubThread(push, session=Session(key=KEY))
    thread.start()
    thread.send_multipart([b"a", b"b"])
    assert pull.poll(5000) and pull.recv_multipart() == [b"a", b"b"]
    thread.stop()
    thread.close()
    pull.close()

    class DummySocket:
        """Like ipykernel's in-process DummySocket: no getsockopt."""

        def __init__(self) -> None:
            self.sent: list[list[bytes]] = []

        def send_multipart(self, msg: list[bytes], *a: Any, **k: Any) -> None:
            self.sent.append(msg)

    dummy = DummySocket()
    thread = impl.IOPubThread(dummy, session=Session(key=KEY))
    thread.start()
    stream = impl.OutStream(Session(key=KEY), thread, "stdout", watchfd=False)
    stream.write("in-process\n")
    stream.flush()
    thread.stop()
    assert any(b"in-process" in b"".join(m) for m in dummy.sent)
    context.term()


# -- XPUB and JEP 65 ---------------------------------------------------------------


def test_every_xpub_subscriber_is_welcomed(kernel: Kernelish) -> None:
    """ipykernel: XPUB passes up only the first subscription to a topic, so a
    second subscriber never gets its iopub_welcome."""
    port = int(kernel.socket.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    for _ in range(3):
        receiver = make_receiver(kernel.context, port)
        receiver.wait_for(lambda ms: any(m["msg_type"] == "iopub_welcome" for m in ms), timeout=5)
        welcome = next(m for m in receiver.messages if m["msg_type"] == "iopub_welcome")
        assert welcome["content"] == {"subscription": ""}
        receiver.socket.close()


def test_xpub_without_session_sends_no_welcome(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    xpub = context.socket(zmq.XPUB)
    xpub.linger = 0
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    thread = impl.IOPubThread(xpub)  # session defaults to False
    thread.start()
    receiver = make_receiver(context, port)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        receiver.poll(0.3)
    assert receiver.messages == []
    seen: list[int] = []
    thread.schedule(seen.append, 1)
    assert thread.flush(5) and seen == [1]  # the thread survived the subscription
    thread.stop()
    thread.close()
    receiver.socket.close()
    context.term()


# -- BackgroundSocket ------------------------------------------------------------------


def test_background_socket_forwards(kernel: Kernelish) -> None:
    background = kernel.thread.background_socket
    assert background.io_thread is kernel.thread
    assert background.socket is kernel.socket
    with pytest.warns(DeprecationWarning):
        background.linger = 101
    assert kernel.socket.linger == 101
    with pytest.warns(DeprecationWarning):
        assert background.linger == 101
    with pytest.raises(AttributeError):
        background.no_such_attribute  # noqa: B018
    kernel.session.send(background, "status", {"execution_state": "idle"})
    kernel.receiver.wait_for(lambda ms: any(m["msg_type"] == "status" for m in ms))


def test_background_socket_send_single_frame(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push, pull = push_pull_pair(context)
    thread = impl.IOPubThread(push)
    thread.start()
    thread.background_socket.send(b"single")
    assert pull.poll(5000) and pull.recv_multipart() == [b"single"]
    thread.stop()
    thread.close()
    pull.close()
    context.term()


def test_background_socket_recv_and_close() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(f"tcp://127.0.0.1:{port}")
    thread = iostream.IOPubThread(pull)
    thread.start()
    background = thread.background_socket
    with pytest.raises(zmq.Again):
        background.recv(timeout=0.05)
    push.send(b"hello")
    assert background.recv(timeout=5) == b"hello"
    background.close()
    assert thread.closed and not thread.thread.is_alive()
    push.close()
    context.term()


def test_a_long_queue_lets_the_loop_run_between_passes() -> None:
    """Queued calls run a bounded batch per pass: other work of the loop (timers,
    a forked child's pipe, add_callback) gets its turn long before a queue of
    thousands is done, and the queue still runs whole and in order."""
    from iostream.iothread import CALLS_PER_PASS

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    thread = iostream.IOPubThread(socket)
    thread.start()
    order: list[Any] = []

    def flood() -> None:
        thread.io_loop.add_callback(order.append, "loop")
        for i in range(20 * CALLS_PER_PASS):
            thread.schedule(order.append, i)

    try:
        thread.schedule(flood)
        assert thread.flush(10)
    finally:
        thread.stop()
        thread.close()
        context.term()
    assert [x for x in order if x != "loop"] == list(range(20 * CALLS_PER_PASS))
    # The loop's callback comes within a few passes (which of the loop's ready
    # events asyncio runs first, the wake-up pipe or the callback, varies), long
    # before the 20 passes the queue needs: never after the whole queue.
    assert order.index("loop") <= 4 * CALLS_PER_PASS


def test_a_thread_reusing_the_dead_io_threads_ident_is_not_the_io_thread(
    kernel: Kernelish,
) -> None:
    """After stop() the system may hand the IO thread's ident to a new thread:
    that thread must not be taken for the IO thread (it would send on the socket
    beside inline senders, and could not call stop())."""
    thread = kernel.thread
    io_ident = thread.thread.ident
    thread.stop()
    results: list[tuple[bool, bool]] = []
    gate = threading.Event()

    def probe() -> None:
        if threading.get_ident() == io_ident:
            results.append((thread.on_io_thread(), thread._on_io_thread()))
        gate.wait(10)  # alive together: each takes a different ident

    for _ in range(20):  # glibc hands out the stacks (idents) of ended threads again
        gate.clear()
        workers = [threading.Thread(target=probe) for _ in range(16)]
        for worker in workers:
            worker.start()
        gate.set()
        for worker in workers:
            worker.join()
        if results:
            break
    if not results:
        pytest.skip("no new thread got the ended IO thread's ident on this system")
    assert results == [(False, False)]


STOP_WHILE_ANOTHER_THREAD_FLUSHES = """
import threading, time, zmq
from jupyter_client.session import Session
import iostream

context = zmq.Context()
pub = context.socket(zmq.PUB)
pub.bind("tcp://127.0.0.1:*")
thread = iostream.IOPubThread(pub)  # never started: calls run inline
session = Session(key=b"key")
out = iostream.OutStream(session, thread, "stdout", watchfd=False)
real_send = session.send
mode = "interrupt"
flusher = None

def send(*args, **kwargs):
    global mode, flusher
    if mode == "interrupt":  # Ctrl-C while publishing: the text is put back
        mode = None
        raise KeyboardInterrupt
    if mode == "stop" and flusher is None:
        # Another thread flushes while stop() publishes the text put back: it
        # takes what a call run inline takes, then waits for the publish lock.
        flusher = threading.Thread(target=out.flush, daemon=True)
        flusher.start()
        time.sleep(0.3)
    return real_send(*args, **kwargs)

session.send = send
try:
    out.write("put back\\n")
except KeyboardInterrupt:
    pass
mode = "stop"
stopper = threading.Thread(target=thread.stop, daemon=True)
stopper.start()
stopper.join(10)
flusher.join(10)
print("stopped" if not stopper.is_alive() and not flusher.is_alive() else "deadlocked")
"""


def test_stopping_a_thread_that_never_started_while_another_thread_flushes() -> None:
    """stop() of a thread that never started runs the stop callbacks (the streams'
    flush) on the caller; they must take the locks in the written order, or a
    flush on another thread at that moment deadlocks with it."""
    rc, out, err = run_python(STOP_WHILE_ANOTHER_THREAD_FLUSHES, timeout=60)
    assert rc == 0, err
    assert out == "stopped\n", err
