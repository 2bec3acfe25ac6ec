"""The IOPub thread: one daemon thread that owns the IOPub socket.

Thread affinity, stated once: methods whose names start with ``_io_`` run on the
IO thread only, and so do the timers (:meth:`IOPubThread.call_later`,
:meth:`IOPubThread.cancel_timer`: the loop is not thread-safe). :meth:`IOPubThread.stop`
and :meth:`IOPubThread.close` may be called from any thread but the IO thread.
Every other public method may be called from any thread.

The one cross-thread primitive is :meth:`IOPubThread.schedule`. Its guarantee:

* calls run in the order ``schedule`` was called (FIFO), one at a time, on the
  IO thread while it runs, else at once on the caller's thread (serialised by a
  lock, so two threads never use the socket together);
* every ``schedule`` call that has returned runs before :meth:`IOPubThread.stop`
  returns, unless a scheduled call blocks past ``stop_timeout`` (30 s): ``stop``
  then logs an error and returns;
* it never blocks on the IO thread: it appends to a deque under a short lock and
  wakes the thread through an inproc pipe only if the thread is not already awake;
* an exception raised by a scheduled call is logged, never propagated.

Only the IO thread ever sends on the socket while the thread runs, so a signal
handler (Ctrl-C's KeyboardInterrupt), which Python runs on the main thread, can
never cut a message in half.

A forked child never touches the parent's ZeroMQ context, sockets, loop or thread,
nor makes its own: with ``pipe=True`` its stream text and messages go to the
parent over a :class:`~iostream.childchannel.ChildChannel` (a socketpair the
parent makes at :meth:`IOPubThread.start`), synchronously, on the writing thread.

:class:`BackgroundSocket` is the socket-like proxy whose sends go through the thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import warnings
import weakref
from binascii import b2a_hex
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from itertools import repeat
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from . import forksafety, platform
from .childchannel import READ_BATCH, ChildChannel, Fallback, TextHandler
from .completion import Completion
from .inlets import BusyMark
from .locking import locked, new_lock

__all__ = ["CHILD", "MASTER", "PIPE_BUFFER_SIZE", "BackgroundSocket", "IOPubThread", "send_frames"]

#: The most batches (of :data:`~iostream.childchannel.READ_BATCH` datagrams) one
#: take-in of children's text reads: all that a child that printed and exited
#: left, in a few milliseconds, but never the IO thread held for long by
#: children that keep sending (what they send meanwhile has no order to keep).
TAKE_IN_BATCHES = 8

logger = logging.getLogger("iostream")

#: Queued calls the IO thread runs in one pass before other work gets its turn.
CALLS_PER_PASS = 64

# -- ipykernel compatibility: names that exist only because consumers use them.
#: ipykernel's size of a read from a captured descriptor; imported by some
#: consumers, used by nothing here (fdcapture reads in blocks of its own).
PIPE_BUFFER_SIZE = 1000

#: What ``_check_mp_mode`` returns in the parent (ipykernel's constants).
MASTER = 0
#: What ``_check_mp_mode`` returns in a forked child that pipes to its parent.
CHILD = 1

#: A queued call: function, args, kwargs.
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


# pyzmq's compiled send, when its backend is the compiled one (not cffi).
_compiled_send: Any = (
    None if type(zmq.backend.Socket.send).__name__ == "function" else zmq.backend.Socket.send
)
_more_flags: dict[int, tuple[int, ...]] = {}


def send_frames(socket: Any, frames: Sequence[Any], copy: bool = True) -> None:
    """Send ``frames`` as one multipart message on ``socket``. Caller owns the socket.

    For a plain ``zmq.Socket`` and ``bytes`` frames, every frame is handed to
    pyzmq's compiled ``send`` from C (``map`` consumed by a ``deque``), which
    skips the per-frame flag arithmetic of ``Socket.send_multipart`` (about
    15 us a message). Anything else goes through ``send_multipart``. Like it,
    this is not atomic for signals (pyzmq runs pending signal handlers after
    each frame), which is why only the IO thread, which Python never runs a
    signal handler on, calls it while the thread runs.
    """
    kind = type(socket)
    if (
        _compiled_send is None
        or kind.send_multipart is not zmq.Socket.send_multipart
        or kind.send is not zmq.Socket.send
        or not frames
        or not set(map(type, frames)) <= {bytes}
    ):
        socket.send_multipart(frames, copy=copy)
        return
    count = len(frames)
    flags = _more_flags.get(count)
    if flags is None:
        flags = _more_flags[count] = (int(zmq.SNDMORE),) * (count - 1) + (0,)
    deque(map(_compiled_send, repeat(socket, count), frames, flags, repeat(copy, count)), 0)


def add_reader(
    io_loop: IOLoop,
    sock: zmq.Socket[bytes],
    on_message: Callable[[list[bytes]], None],
    after: Callable[[], None] | None = None,
) -> None:
    """Call ``on_message`` for every message ``sock`` receives, then ``after``.

    On ``io_loop``'s thread only (the IO thread).
    """

    def on_event(_fd: Any, _events: int) -> None:
        # zmq's FD is edge-triggered: read until no message is left, but at
        # most a batch at a time, so busy children cannot starve the loop.
        for _ in range(READ_BATCH):
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                break
            on_message(sock.recv_multipart(zmq.NOBLOCK))
        else:
            io_loop.add_callback(on_event, None, 0)  # the edge is spent
        if after is not None:
            after()

    io_loop.add_handler(sock, on_event, IOLoop.READ)
    on_event(sock, 0)


def _socket_type(socket: Any) -> int | None:
    if not hasattr(socket, "getsockopt"):
        return None
    try:
        return int(socket.getsockopt(zmq.TYPE))
    except zmq.ZMQError:
        return None


class _State(Enum):
    NEW = "new"  # not started: calls run inline
    FORKED = "forked"  # a forked child: calls run inline, no thread is ever started
    RUNNING = "running"  # calls are queued for the IO thread
    STOPPING = "stopping"  # still queued; the thread drains, then stops
    STOPPED = "stopped"  # calls run inline


class IOPubThread:
    """Sends IOPub messages from a background thread.

    ``IOPubThread(socket).background_socket`` is a socket-like object whose sends
    always happen on this thread. ``socket`` may be a zmq PUB, XPUB or PUSH socket,
    or any object with ``send_multipart`` (such as ipykernel's in-process
    DummySocket).
    """

    #: Seconds :meth:`stop` waits for the thread to finish the queued calls.
    stop_timeout = 30.0
    #: Every call scheduled before :meth:`stop` runs before the thread stops (the
    #: thread protocol of :mod:`iostream.threadlink`).
    drains_before_stop = True

    def __init__(self, socket: Any, pipe: bool = False, session: Any = False) -> None:
        self.socket: Any = socket
        self.session: Any = session
        self.background_socket = BackgroundSocket(self)
        self._master_pid = os.getpid()  # (ipykernel's attribute; forksafety detects forks)
        #: This process is a forked child of the one that made the thread.
        self.forked = False
        # (Without fork there are no forked children to pipe.)
        self._pipe_flag = bool(pipe) and platform.CAN_FORK
        self._events: deque[Call] = deque()
        self._stop_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._stopped_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._warned_no_socket = False
        # The channel from forked children (made by start() with pipe=True), and
        # the mark held while the IO thread reads it (see iostream.inlets).
        self._channel: ChildChannel | None = None
        self._children_busy: BusyMark | None = None
        self._child_text_handler: TextHandler | None = None
        self._child_text_publish: Callable[[], None] | None = None
        self._is_xpub = _socket_type(socket) == zmq.XPUB
        self._close_when_stopped = False  # close() left the socket to the thread
        if self._is_xpub:
            # Without VERBOSE, XPUB passes up only the first subscription to a
            # topic, and later subscribers would never get their welcome.
            socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._init_locks()
        self._state = _State.NEW
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._context.setsockopt(zmq.LINGER, 0)
        address = "inproc://iostream-" + b2a_hex(os.urandom(8)).decode()
        self.pipe_in: zmq.Socket[bytes] = self._context.socket(zmq.PULL)
        self.pipe_in.bind(address)
        self.pipe_out: zmq.Socket[bytes] = self._context.socket(zmq.PUSH)
        self.pipe_out.connect(address)
        selector_loop = asyncio.SelectorEventLoop()
        self.io_loop: IOLoop = IOLoop(make_current=False, asyncio_loop=selector_loop)
        self.thread = threading.Thread(target=self._io_main, name="IOPub", daemon=True)
        self.thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
        self.thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
        forksafety.register(self)

    def _init_locks(self) -> None:
        # (Taken on interruptible threads through locking.locked: see there.)
        self._lock = new_lock()
        self._inline_lock = threading.RLock()
        self._wake_pending = False

    def _after_fork_in_child(self) -> None:
        """(forksafety) Renew the locks and run calls inline from now on.

        Plain Python state only: a forked child never touches the parent's ZeroMQ
        context, sockets, loop or thread, nor makes its own; its output goes to
        the parent through the inherited channel (:mod:`iostream.childchannel`).
        """
        self.forked = True
        self._events = deque()
        self._init_locks()
        self._state = _State.FORKED

    # -- ipykernel compatibility: names only consumers use ----------------------

    @property
    def pub_socket(self) -> Any:
        """The socket messages are published on (same as ``socket``)."""
        return self.socket

    def _on_io_thread(self) -> bool:
        """:meth:`on_io_thread` under the name ipykernel-era callers use."""
        return self.on_io_thread()

    def _is_master_process(self) -> bool:
        """ipykernel's check; the library itself uses the fork flag of forksafety."""
        return os.getpid() == self._master_pid

    def _check_mp_mode(self) -> int:
        """``CHILD`` in a forked child that pipes to its parent, else ``MASTER``."""
        if self._pipe_flag and self.forked:
            return CHILD
        return MASTER

    # -- state -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self.socket is None or self._close_when_stopped

    @property
    def running(self) -> bool:
        """Whether scheduled calls are queued for the IO thread (started, not stopped).

        A hint, read without the lock: :meth:`schedule` decides again under it.

        Unlike ``thread.is_alive()``, reading this is safe when a
        KeyboardInterrupt strikes: CPython 3.11 marks a running thread as
        stopped if ``is_alive()`` is interrupted (the bpo-45274 handling).
        """
        state = self._state
        return state is _State.RUNNING or state is _State.STOPPING

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun (timers armed now would never fire)."""
        return self._state is _State.STOPPING or self._state is _State.STOPPED

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the IO thread and register :meth:`stop` with ``atexit``. Any thread."""
        with self._lock:
            if self._state is not _State.NEW:
                return
            failed: OSError | None = None
            if self._pipe_flag:
                try:
                    self._channel = ChildChannel()
                except OSError as error:  # (out of descriptors): no child output
                    failed = error
            self._state = _State.RUNNING
            self._wake_pending = bool(self._events)
        if failed is not None:  # (logged outside _lock, a leaf: a handler may print)
            logger.error("iostream: no channel for forked children: %s", failed)
        self.thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Run everything scheduled so far, then stop the thread. Idempotent.

        Returns within about ``stop_timeout`` seconds even if a scheduled call
        blocks; that case is logged. Any thread but the IO thread.
        """
        if self.on_io_thread():
            raise RuntimeError("IOPubThread.stop() cannot be called from the IO thread")
        with self._lock:
            if self._state is _State.NEW or self._state is _State.FORKED:
                self._state = _State.STOPPED
            if self._state is not _State.RUNNING:
                running = False
            else:
                running = True
                # What children sent before the stop is published with the rest.
                self._events.append((self._io_read_all_children, (), {}))
                self._events.append((self._run_callbacks, (self._stop_callbacks,), {}))
                self._state = _State.STOPPING
                self._wake_locked()
        if running or self.thread.is_alive():
            self.thread.join(self.stop_timeout)
            if self.thread.is_alive():
                logger.error("iostream: IOPub thread did not stop in %ss", self.stop_timeout)
                self._run_callbacks(self._stopped_callbacks)
                return
        elif self._state is _State.STOPPED:
            # As any call run inline: under _inline_lock, which the lock order
            # puts before the streams' publish lock that these callbacks take.
            with self._inline_lock:
                self._run_callbacks(self._stop_callbacks)
            if self.forked and self._channel is not None:
                # (A forked child at exit: its text is in the parent's hands first.)
                self._channel.sync(self._channel.send_timeout)
        # The stopped callbacks first: a stream stops watching the channel (epoll
        # forgets a descriptor only once every copy is closed, and forked
        # children may hold copies) before it is closed.
        self._run_callbacks(self._stopped_callbacks)
        self._close_pipes()

    def close(self) -> None:
        """Stop the thread if needed, then close the IOPub socket. Idempotent.

        If the thread did not stop (a scheduled call blocks past ``stop_timeout``)
        the socket stays with it, as it may still be using it: the thread sends
        what is queued once it can, then closes the socket as it ends. Any thread.
        """
        if self.closed:
            return
        if not self.on_io_thread():
            self.stop()
        if self.thread.is_alive() and not self.on_io_thread():
            logger.warning("iostream: IOPub thread still running: it closes the socket")
            self._close_when_stopped = True
            return
        self._close_socket()

    def _close_socket(self) -> None:
        socket, self.socket = self.socket, None
        # (A forked child's copy is the parent's: closing it would use libzmq here.)
        if socket is not None and hasattr(socket, "close") and not self.forked:
            socket.close()

    def add_stop_callback(self, callback: Callable[[], None]) -> None:
        """Have the bound method ``callback`` run when stopping: on the IO thread,
        or, for a thread that never ran, on the thread calling :meth:`stop`, as a
        call run inline (under the lock that serialises those).

        Held weakly: it is forgotten when its object is collected. Any thread.
        """
        with self._lock:
            self._stop_callbacks.append(weakref.WeakMethod(callback))

    def add_stopped_callback(self, callback: Callable[[], None]) -> None:
        """Have the bound method ``callback`` run once the thread has stopped, on
        the thread calling :meth:`stop` (and before :meth:`close` closes the
        socket); also if the thread did not stop in time. Held weakly. Any thread.
        """
        with self._lock:
            self._stopped_callbacks.append(weakref.WeakMethod(callback))

    # -- the cross-thread primitive ------------------------------------------

    def on_io_thread(self) -> bool:
        """Whether the caller is the IO thread. Any thread.

        Compared by Thread object, never by ident: once the IO thread has ended,
        the system may give its ident to a new thread, which is not the IO thread.
        """
        return threading.current_thread() is self.thread

    def call_later(self, delay: float, f: Callable[[], None]) -> object:
        """Run ``f()`` on the IO thread in ``delay`` seconds; return a handle for
        :meth:`cancel_timer`. IO thread only (the loop is not thread-safe)."""
        return self.io_loop.call_later(delay, f)

    def cancel_timer(self, handle: object) -> None:
        """Cancel a timer of :meth:`call_later` that has not run. IO thread only."""
        self.io_loop.remove_timeout(handle)

    def schedule(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``f(*args, **kwargs)`` on the IO thread, or at once if it is not running.

        See the module docstring for the ordering and completion guarantee.
        Exceptions raised by ``f`` are logged, never propagated. Any thread.
        """
        self._enqueue((f, args, kwargs))

    def _enqueue(self, call: Call) -> None:
        if locked(self._lock, self._queue_if_running, call):
            return
        f, args, kwargs = call
        with self._inline_lock:
            self._call(f, args, kwargs)

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until everything scheduled so far has run. Any thread.

        Returns whether it did within ``timeout`` seconds. On the IO thread
        itself nothing can be waited for: returns whether the queue is empty.
        """
        if self.on_io_thread():
            return not self._events
        if self.forked:
            return self.wait_delivered(timeout)  # (calls ran inline already)
        done = Completion()
        self.schedule(done.set)
        return done.wait(timeout)

    # -- internals: any thread -------------------------------------------------

    def _queue_if_running(self, call: Call) -> bool:
        """Queue ``call`` for the IO thread if it runs; whether it did. ``_lock`` held."""
        if self._state is _State.RUNNING or self._state is _State.STOPPING:
            self._events.append(call)
            if not self._wake_pending:
                self._wake_locked()
            return True
        return False

    def _wake_locked(self) -> None:
        """Wake the IO thread. Caller holds ``_lock`` (which serialises pipe_out).

        The flag is set only once the wake-up is sent: a KeyboardInterrupt in
        between costs one spare wake-up, never a thread that sleeps forever.
        """
        self.pipe_out.send(b"", zmq.NOBLOCK)
        self._wake_pending = True

    def _call(self, f: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        try:
            f(*args, **kw)
        except Exception:
            logger.exception("iostream: a call scheduled on the IOPub thread failed")

    def _run_callbacks(self, refs: list[weakref.WeakMethod[Callable[[], None]]]) -> None:
        """Run the live callbacks of ``refs`` here.

        The stopped callbacks never run under ``_inline_lock``: a stream ending its
        fd capture there waits for its reader, which may be running a call inline.
        (The stop callbacks of a thread that never ran do: see :meth:`stop`.)"""
        with self._lock:
            alive = [ref() for ref in refs]
        for callback in alive:
            if callback is not None:
                self._call(callback, (), {})

    def _close_pipes(self) -> None:
        """Close what this object created. Called once the thread is gone; never
        in a forked child, whose copies are the parent's."""
        if self.forked:
            return
        with self._lock:
            for sock in (self.pipe_out, self.pipe_in):
                sock.close(linger=0)
            if self._channel is not None:
                self._channel.close()
            if self._children_busy is not None:
                self._children_busy.close()
        with contextlib.suppress(zmq.ZMQError):
            self._context.term()

    # -- IO thread -------------------------------------------------------------

    def _io_main(self) -> None:
        self.io_loop.add_callback(self._io_setup)
        try:
            self.io_loop.start()
        finally:
            self._io_teardown()
            if self._close_when_stopped:  # close() gave up waiting for us
                self._close_socket()

    def _io_setup(self) -> None:
        add_reader(self.io_loop, self.pipe_in, lambda _frames: None, after=self._io_run_pending)
        if self._channel is not None:
            self.io_loop.add_handler(
                self._channel.reader.fileno(), self._io_on_children_readable, IOLoop.READ
            )
        if self._is_xpub and not self.forked:
            self.io_loop.add_handler(self.socket, self._io_on_socket_event, IOLoop.READ)
            self._io_read_subscriptions()
        self._io_run_pending()

    def _io_teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.io_loop.remove_handler(self.pipe_in)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self.io_loop.remove_handler(self._channel.reader.fileno())
        if self._is_xpub and self.socket is not None:
            with contextlib.suppress(Exception):
                self.io_loop.remove_handler(self.socket)
        self.io_loop.close(all_fds=False)

    def _io_run_pending(self) -> None:
        """Run queued calls in FIFO order: at most ``CALLS_PER_PASS``, then let the
        loop run its other work (timers, sockets, a forked child's pipe) before
        the next pass, as trio runs its entry queue. ``_wake_pending`` stays set
        until the queue is seen empty, so schedulers meanwhile wake nobody."""
        for _ in range(CALLS_PER_PASS):
            with self._lock:
                if not self._events:
                    self._wake_pending = False
                    if self._state is _State.STOPPING:
                        self._state = _State.STOPPED
                        self.io_loop.stop()
                    return
                f, args, kwargs = self._events.popleft()
            self._call(f, args, kwargs)
        self.io_loop.add_callback(self._io_run_pending)  # the rest in the next pass

    def _io_on_children_readable(self, _fd: Any, _events: int) -> None:
        self._io_read_children()

    def _io_read_children(self) -> bool:
        """Hand what forked children sent to the streams (text) or the socket, a
        batch at most; whether more may be waiting."""
        channel, busy = self._channel, self._children_busy
        if channel is None:
            return False
        if busy is not None:
            busy.set()  # (what is read is not yet delivered)
        try:
            return channel.read(self._child_text_handler, self._io_forward_child_message)
        finally:
            if busy is not None:
                busy.clear()

    def _io_read_all_children(self) -> None:
        """Hand on everything forked children sent so far (the thread is stopping);
        from now on their sends fail at once, to their terminal."""
        if self._channel is not None:
            self._channel.stop_reading()
            self._channel.read(self._child_text_handler, self._io_forward_child_message, None)

    def _io_forward_child_message(self, frames: list[bytes]) -> None:
        """Publish a child's message, after the text the child wrote before it."""
        if self._child_text_publish is not None:
            self._child_text_publish()
        self._send_on_socket(frames)

    # -- sends ----------------------------------------------------------------

    def send_multipart(self, *args: Any, **kwargs: Any) -> None:
        """Send a multipart message on the IO thread (socket-like). Any thread.

        Called on the IO thread, it sends at once; a forked child hands the
        message to the parent's channel on the calling thread.
        """
        if self.forked:
            self._send_from_child(*args)
        elif self.on_io_thread():
            self._really_send(*args, **kwargs)
        else:
            self.schedule(self._really_send, *args, **kwargs)

    def _really_send(self, msg: list[Any], *args: Any, **kwargs: Any) -> None:
        """Perform one send: on the socket, or to the parent from a forked child.

        Runs where :meth:`schedule` runs its calls. Never raises: a missing or
        closed socket is logged once and the message dropped.
        """
        if self.forked:
            self._send_from_child(msg)
        else:
            self._send_on_socket(msg, *args, **kwargs)

    def _send_from_child(self, msg: list[Any], *_args: Any) -> None:
        """In a forked child: hand ``msg`` to the parent's channel (never libzmq)."""
        channel = self._channel
        if channel is None:
            self._warn_dropped("a forked child without pipe=True cannot reach the socket")
        elif not channel.send_message([bytes(part) for part in msg]):
            self._warn_dropped("the parent process does not take a forked child's output")

    def _send_on_socket(self, msg: list[Any], *args: Any, **kwargs: Any) -> None:
        socket = self.socket
        if socket is None:
            self._warn_dropped("the IOPub socket is closed")
            return
        try:
            if args or set(kwargs) - {"copy"}:
                socket.send_multipart(msg, *args, **kwargs)
            else:
                send_frames(socket, msg, kwargs.get("copy", True))
        except (zmq.ZMQError, AttributeError, ValueError) as error:
            # (zmq.Again included: a send the caller made non-blocking is
            # dropped, not retried, which would spin the IO thread.)
            self._warn_dropped(f"sending failed: {error}")
        if self._is_xpub and self.on_io_thread():
            # A send can consume the FD edge that announces a subscription.
            self._io_read_subscriptions()

    def _warn_dropped(self, why: str) -> None:
        if not self._warned_no_socket:
            self._warned_no_socket = True
            logger.warning("iostream: IOPub output dropped: %s", why)

    def _io_on_socket_event(self, _fd: Any, _events: int) -> None:
        self._io_read_subscriptions()

    def _io_read_subscriptions(self) -> None:
        """Read XPUB (un)subscriptions; welcome each subscriber (JEP 65)."""
        socket = self.socket
        if socket is None:
            return
        try:
            while socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frame = socket.recv(zmq.NOBLOCK)
                if frame[:1] == b"\x01":
                    self._io_welcome(frame[1:])
        except zmq.ZMQError as error:
            logger.debug("iostream: reading subscriptions failed: %s", error)

    def _io_welcome(self, topic: bytes) -> None:
        session = self.session
        if not session or not hasattr(session, "send"):
            return
        try:
            subscription = topic.decode("utf-8")
        except UnicodeDecodeError:
            return
        try:
            session.send(
                self.socket,
                "iopub_welcome",
                {"subscription": subscription},
                parent={},
                ident=topic or None,
            )
        except Exception:
            logger.exception("iostream: sending iopub_welcome failed")

    # -- forked children -------------------------------------------------------

    def set_child_text_handler(
        self, handler: TextHandler | None, publish: Callable[[], None] | None = None
    ) -> None:
        """Receive the stream text forked children send with :meth:`send_child_text`.

        ``handler(owner, name, parent, text)`` runs on the IO thread of this (the
        parent) process; ``publish()`` too, before a child's other message is
        forwarded, so that text it wrote earlier is published before it.
        Without a handler such text is logged and dropped. Any thread.
        """
        self._child_text_handler = handler
        self._child_text_publish = publish

    def watch_children(self) -> tuple[int, ...]:
        """The descriptors to watch for forked children's text not yet taken in,
        in the parent of a running ``pipe=True`` thread: the channel, and a mark
        the IO thread holds from now on while it reads it (made at the first
        call: no cost for those who never ask); else none. Any thread."""
        return locked(self._lock, self._watch_children_locked)

    def _watch_children_locked(self) -> tuple[int, ...]:
        channel = self._channel
        if self.forked or channel is None or self._state is not _State.RUNNING:
            return ()
        if self._children_busy is None:
            # (A read already under way when the mark is made holds its text
            # unmarked: the one write at that moment may come before it.)
            with contextlib.suppress(OSError):  # (out of descriptors: the channel alone)
                self._children_busy = BusyMark()
        if self._children_busy is None:
            return (channel.reader.fileno(),)
        return (channel.reader.fileno(), self._children_busy.fd)

    def take_in_children(self, timeout: float, wait: bool = True) -> bool:
        """Have the IO thread take in what forked children sent so far (hand it
        to the child text handler) before any call scheduled after this one: at
        most :data:`TAKE_IN_BATCHES` batches, so children that never stop
        sending hold the IO thread only that long. With ``wait``, also wait for
        it: whether it was done within ``timeout``. True at once where there is
        nothing to take in (no channel, no child forked, on the IO thread,
        without a running thread); False without ``wait``. Any thread."""
        if self._channel is None or not forksafety.children_forked or self.on_io_thread():
            return True
        done = Completion() if wait else None
        # Queued only while the thread runs, never run inline: after stop the
        # channel is closed (and its descriptor numbers may be another's).
        call: Call = (self._io_take_in_children, (done,), {})
        if not locked(self._lock, self._queue_if_running, call):
            return True
        return done is not None and done.wait(timeout)

    def _io_take_in_children(self, done: Completion | None) -> None:
        try:
            for _ in range(TAKE_IN_BATCHES):
                if not self._io_read_children():
                    break  # (none left)
        finally:
            if done is not None:
                done.set()

    @property
    def pipes_to_parent(self) -> bool:
        """Whether this is a forked child whose output goes to the parent's channel."""
        return self.forked and self._channel is not None

    def send_child_text(
        self, owner: int, name: str, parent: bytes, text: str, fallback: Fallback
    ) -> None:
        """In a forked child, hand stream text to the parent on the calling thread.

        Returns once the operating system holds it (a child killed right after
        loses nothing), or, if the parent takes nothing within the channel's
        bound, once ``fallback`` (the stream's original descriptor) has it.
        ``parent`` is the parent header as JSON. Any thread, forked children only
        (see :attr:`pipes_to_parent`).
        """
        channel = self._channel
        if channel is None:
            raise RuntimeError("send_child_text() needs a forked child of a pipe=True thread")
        channel.send_text(owner, name, parent, text, fallback)

    def wait_delivered(self, timeout: float) -> bool:
        """In a forked child, wait until the parent has handled everything this
        process sent so far; return whether it has within ``timeout`` seconds.

        True at once in the parent, in a child that sent nothing since, or once
        the channel failed (the text went to the terminal). Any thread.
        """
        channel = self._channel
        if not self.forked or channel is None:
            return True
        return channel.sync(timeout)


class BackgroundSocket:
    """``send``/``send_multipart`` through ``io_thread``; other socket attributes
    forward to ``io_thread.socket`` with a DeprecationWarning."""

    io_thread: IOPubThread | None = None

    def __init__(self, io_thread: IOPubThread) -> None:
        object.__setattr__(self, "io_thread", io_thread)

    @property
    def socket(self) -> Any:
        """The underlying socket of the IO thread."""
        return self._thread().socket

    def _thread(self) -> IOPubThread:
        thread = self.io_thread
        if thread is None:
            raise ValueError("BackgroundSocket has no IO thread")
        return thread

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        socket = self._thread().socket
        if socket is not None and hasattr(socket, attr):
            warnings.warn(
                f"Accessing zmq Socket attribute {attr} on BackgroundSocket is deprecated;"
                f" use .io_thread.socket.{attr}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(socket, attr)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr == "io_thread" or (attr.startswith("__") and attr.endswith("__")):
            object.__setattr__(self, attr, value)
            return
        warnings.warn(
            f"Setting zmq Socket attribute {attr} on BackgroundSocket is deprecated;"
            f" use .io_thread.socket.{attr}",
            DeprecationWarning,
            stacklevel=2,
        )
        setattr(self._thread().socket, attr, value)

    def send(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Send a single-part message on the IO thread."""
        self.send_multipart([msg], *args, **kwargs)

    def send_multipart(self, *args: Any, **kwargs: Any) -> None:
        """Send a multipart message on the IO thread."""
        self._thread().send_multipart(*args, **kwargs)

    def recv(self, timeout: float = 1.0, **kwargs: Any) -> Any:
        """Receive one message from the socket, on the IO thread.

        Waits at most ``timeout`` seconds; raises ``zmq.Again`` if nothing came.
        Sockets that cannot receive (PUB) raise their usual ``zmq.ZMQError``.
        """
        thread = self._thread()
        result: list[Any] = []
        errors: list[BaseException] = []
        done = Completion()

        def receive() -> None:
            try:
                if thread.socket.poll(int(timeout * 1000)):
                    result.append(thread.socket.recv(**kwargs))
                else:
                    errors.append(zmq.Again())
            except BaseException as error:
                errors.append(error)
            finally:
                done.set()

        thread.schedule(receive)
        if not done.wait(timeout + thread.stop_timeout):
            raise zmq.Again()
        if errors:
            raise errors[0]
        return result[0]

    def close(self) -> None:
        """Stop the IO thread and close its socket. Idempotent."""
        self._thread().close()
