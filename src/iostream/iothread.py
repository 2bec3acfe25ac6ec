"""The IOPub thread: one daemon thread that owns the IOPub socket.

Thread affinity, stated once: methods whose names start with ``_io_`` run on the
IO thread only. Every other public method may be called from any thread.

The one cross-thread primitive is :meth:`IOPubThread.schedule`. Its guarantee:

* calls run in the order ``schedule`` was called (FIFO), one at a time, on the
  IO thread while it runs, else at once on the caller's thread (serialised by a
  lock, so two threads never use the socket together);
* every ``schedule`` call that has returned runs before :meth:`IOPubThread.stop`
  returns (unless a scheduled call blocks past the stop timeout, which is logged);
* it never blocks on the IO thread: it appends to a deque under a short lock and
  wakes the thread through an inproc pipe only if the thread is not already awake.

Only the IO thread ever sends on the socket while the thread runs, so a signal
handler (Ctrl-C's KeyboardInterrupt), which Python runs on the main thread, can
never cut a message in half.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from binascii import b2a_hex
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from . import forksafety, platform
from .background_socket import BackgroundSocket
from .childchannel import ChildChannel, TextHandler
from .childlink import CHILD, MASTER, ChildLink
from .completion import Completion
from .locking import locked, new_lock
from .sending import Sending, _socket_type, add_reader, send_frames

__all__ = ["CHILD", "MASTER", "PIPE_BUFFER_SIZE", "IOPubThread", "send_frames"]

logger = logging.getLogger("iostream")

#: Queued calls the IO thread runs in one pass before other work gets its turn.
CALLS_PER_PASS = 64

#: Bytes read from a captured file descriptor at a time.
PIPE_BUFFER_SIZE = 1000

#: A queued call: function, args, kwargs.
Event = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _State(Enum):
    NEW = "new"  # not started: calls run inline
    FORKED = "forked"  # a forked child: calls run inline, no thread is ever started
    RUNNING = "running"  # calls are queued for the IO thread
    STOPPING = "stopping"  # still queued; the thread drains, then stops
    STOPPED = "stopped"  # calls run inline


class IOPubThread(Sending, ChildLink):
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
        self._forked = False  # this is a forked child of the process that made it
        # (Without fork there are no forked children to pipe.)
        self._pipe_flag = bool(pipe) and platform.CAN_FORK
        self._events: deque[Event] = deque()
        self._stop_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._stopped_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._warned_no_socket = False
        # The channel from forked children (made by start() with pipe=True).
        self._channel: ChildChannel | None = None
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
        self._forked = True
        self._events = deque()
        self._init_locks()
        self._state = _State.FORKED

    # -- compatibility names -------------------------------------------------

    @property
    def pub_socket(self) -> Any:
        """The socket messages are published on (same as ``socket``)."""
        return self.socket

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

    def _is_new(self) -> bool:
        """Whether :meth:`start` has not been called yet. Any thread."""
        with self._lock:
            return self._state is _State.NEW

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the IO thread and register :meth:`stop` with ``atexit``. Any thread."""
        with self._lock:
            if self._state is not _State.NEW:
                return
            if self._pipe_flag:
                try:
                    self._channel = ChildChannel()
                except OSError as error:  # (out of descriptors): no child output
                    logger.error("iostream: no channel for forked children: %s", error)
            self._state = _State.RUNNING
            self._wake_pending = bool(self._events)
        self.thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Run everything scheduled so far, then stop the thread. Idempotent.

        Returns within about ``stop_timeout`` seconds even if a scheduled call
        blocks; that case is logged. Any thread but the IO thread.
        """
        if self._on_io_thread():
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
            self._run_callbacks(self._stop_callbacks)
            if self._forked and self._channel is not None:
                # (A forked child at exit: its text is in the parent's hands first.)
                self._channel.sync(self._channel.send_timeout)
        self._close_pipes()
        self._run_callbacks(self._stopped_callbacks)

    def close(self) -> None:
        """Stop the thread if needed, then close the IOPub socket. Idempotent.

        If the thread did not stop (a scheduled call blocks past ``stop_timeout``)
        the socket stays with it, as it may still be using it: the thread sends
        what is queued once it can, then closes the socket as it ends. Any thread.
        """
        if self.closed:
            return
        if not self._on_io_thread():
            self.stop()
        if self.thread.is_alive() and not self._on_io_thread():
            logger.warning("iostream: IOPub thread still running: it closes the socket")
            self._close_when_stopped = True
            return
        self._close_socket()

    def _close_socket(self) -> None:
        socket, self.socket = self.socket, None
        # (A forked child's copy is the parent's: closing it would use libzmq here.)
        if socket is not None and hasattr(socket, "close") and not self._forked:
            socket.close()

    def add_stop_callback(self, callback: Callable[[], None]) -> None:
        """Have the bound method ``callback`` run on the IO thread when stopping.

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

    def _enqueue(self, event: Event) -> None:
        if locked(self._lock, self._queue_if_running, event):
            return
        f, args, kwargs = event
        with self._inline_lock:
            self._call(f, args, kwargs)

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until everything scheduled so far has run. Any thread.

        Returns whether it did within ``timeout`` seconds. On the IO thread
        itself nothing can be waited for: returns whether the queue is empty.
        """
        if self._on_io_thread():
            return not self._events
        if self._forked:
            return self.wait_delivered(timeout)  # (calls ran inline already)
        done = Completion()
        self.schedule(done.set)
        return done.wait(timeout)

    # -- internals: any thread -------------------------------------------------

    def _on_io_thread(self) -> bool:
        """:meth:`on_io_thread` (the name ipykernel-era callers may use). Any thread."""
        return threading.current_thread() is self.thread

    def _queue_if_running(self, event: Event) -> bool:
        """Queue ``event`` for the IO thread if it runs; whether it did. ``_lock`` held."""
        if self._state is _State.RUNNING or self._state is _State.STOPPING:
            self._events.append(event)
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

        Not under ``_inline_lock``: a stream ending its fd capture (a stopped
        callback) waits for its reader, which may be running a call inline."""
        with self._lock:
            alive = [ref() for ref in refs]
        for callback in alive:
            if callback is not None:
                self._call(callback, (), {})

    def _close_pipes(self) -> None:
        """Close what this object created. Called once the thread is gone; never
        in a forked child, whose copies are the parent's."""
        if self._forked:
            return
        with self._lock:
            for sock in (self.pipe_out, self.pipe_in):
                sock.close(linger=0)
            if self._channel is not None:
                self._channel.close()
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
                self._channel.reader.fileno(), self._io_read_children, IOLoop.READ
            )
        if self._is_xpub and not self._forked:
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

    def _io_read_children(self, _fd: Any = None, _events: int = 0) -> None:
        """Hand what forked children sent to the streams (text) or the socket."""
        if self._channel is not None:
            self._channel.read(self._child_text_handler, self._io_forward_child_message)

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
