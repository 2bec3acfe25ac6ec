"""Capture of a file descriptor (1 or 2) through a pipe, read by a thread.

What C code, ``os.write`` and child processes write to the descriptor is decoded
incrementally (a character split across reads arrives whole, invalid bytes become
U+FFFD), handed to a callback, and echoed to the original descriptor. The pipe is
enlarged to 1 MiB where Linux allows (:data:`iostream.platform.CAN_ENLARGE_PIPE`),
so C code that holds the GIL can write that much in one call without waiting for
the reader (which needs the GIL).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import ClassVar

from . import forksafety, inlets, platform
from .completion import Completion
from .core import Utf8Decoder
from .inlets import BusyMark
from .locking import locked, new_lock

logger = logging.getLogger("iostream")

#: Bytes asked of the pipe per read.
READ_SIZE = 1 << 16

#: After a read that did not fill the buffer, the reader waits this long (in ms,
#: the granularity of ``poll``) before reading again, so that a burst of small
#: writes is read in a few large reads rather than one wake-up per write. A
#: ``REQUEST_STOP`` or ``REQUEST_SYNC`` request ends the wait at once.
GATHER_MS = 1
#: Size the pipe is enlarged to (Linux ``F_SETPIPE_SZ``).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_DEFAULT_PIPE_SIZE = 1 << 16
#: Requests on the control pipe.
REQUEST_STOP = b"x"
REQUEST_SYNC = b"s"


class FdCapture:
    """Redirects ``fd`` into a pipe until :meth:`stop` or :meth:`close`.

    Create and close from one thread (any); the callback runs on the reader thread.
    :meth:`sync` may be called from any other thread.

    A control pipe carries requests to the reader: ``REQUEST_STOP`` (drain, then end) and
    ``REQUEST_SYNC`` (drain what is in the pipe now, then wake the waiters).
    ``keep_write_order``: :attr:`busy` gets a descriptor an
    :class:`~iostream.inlets.Inlets` can poll (see :mod:`iostream.inlets`).
    """

    #: Whether this platform's descriptors can be captured at all
    #: (:data:`iostream.platform.CAN_CAPTURE_FDS`); callers check it before
    #: creating one. Constant; any thread.
    SUPPORTED: ClassVar[bool] = platform.CAN_CAPTURE_FDS

    def __init__(
        self, fd: int, on_text: Callable[[str], None], keep_write_order: bool = False
    ) -> None:
        self.fd = fd
        self._on_text = on_text
        #: This process is a forked child of the one that made the capture.
        self.forked = False
        forksafety.register(self)
        self._decoder = Utf8Decoder()
        self._echo_ok = True
        self.original_copy = os.dup(fd)
        self.read_fd, write_fd = os.pipe()
        self._stop_read, self._stop_write = os.pipe()  # the control pipe
        self._waiters: list[Completion] = []
        self._waiters_lock = new_lock()
        # Held while the reader holds bytes it has not delivered yet; a pipe an
        # Inlets polls only where writes keep their order with this descriptor.
        self.busy = BusyMark(pollable=keep_write_order)
        self._finished = False  # the reader has ended (guarded by _waiters_lock)
        self._restored = False  # fd holds the original again (stop)
        self._released = False  # the pipe is closed (stop)
        self._copy_closed = False  # original_copy is closed (close)
        os.set_blocking(self._stop_write, False)  # a request never blocks its sender
        self._pipe_size = _enlarge_pipe(write_fd)
        # A read this large means more is waiting: read again without gathering.
        self._gather_below = min(READ_SIZE, self._pipe_size)
        os.dup2(write_fd, fd)
        os.close(write_fd)  # fd itself now holds the write end
        self.thread: threading.Thread | None = None

    def start(self, target: Callable[[], None] | None = None) -> None:
        """Start the reader thread, running ``target`` (default :meth:`read_loop`).

        Started from an empty ``contextvars`` context: a thread that inherits its
        starter's context (Python 3.14's ``thread_inherit_context``, or
        :mod:`iostream.threadcontext`) would otherwise take the parent header the
        starter's context holds, and publish all fd output under it.
        """
        self.thread = threading.Thread(
            target=target or self.read_loop, name=f"iostream-fd{self.fd}", daemon=True
        )
        contextvars.Context().run(self.thread.start)

    def read_loop(self) -> None:
        """Reader thread: publish and echo everything until told to stop.

        However it ends, every sync waiter is woken and later syncs return at once.
        """
        inlets.mark_reader_thread()  # (its writes never wait for a reader)
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        control = select.poll()  # the control pipe alone: ends a gathering wait
        control.register(self._stop_read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_read in ready:
                    requests = os.read(self._stop_read, 4096)
                    if REQUEST_STOP in requests:
                        self._drain()
                        self._deliver(self._decoder.finish())
                        return
                    self._answer_syncs()
                    continue
                self.busy.set()
                data = os.read(self.read_fd, READ_SIZE)
                if not data:
                    self._deliver(self._decoder.finish())
                    return
                self._handle(data)
                if len(data) < self._gather_below:
                    control.poll(GATHER_MS)
        finally:
            self.busy.clear()
            with self._waiters_lock:
                self._finished = True
            self._wake_waiters()

    def sync(self, timeout: float) -> bool:
        """Wait until what was written to the fd before this call is delivered.

        Returns at once when nothing is waiting in the pipe or the reader has
        ended; False if the reader did not answer within ``timeout`` seconds.
        Any thread but the reader's.
        """
        if self.thread is None or self.forked or self._released:
            return True
        if threading.current_thread() is self.thread or not self._has_pending():
            return True
        done = Completion()
        # (Through locking.locked: flush() calls this on an interruptible thread.)
        if not locked(self._waiters_lock, self._ask_reader, done):
            return True
        return done.wait(timeout)

    def _ask_reader(self, done: Completion) -> bool:
        """Queue ``done`` for the reader's next answer; False if the reader has
        ended. ``_waiters_lock`` held."""
        if self._finished:
            return False
        self._waiters.append(done)
        # A full control pipe is full of requests: one answer serves them all.
        with contextlib.suppress(BlockingIOError):
            os.write(self._stop_write, REQUEST_SYNC)
        return True

    def _has_pending(self) -> bool:
        """Whether bytes wait in the pipe or in the reader's hands."""
        if self.busy.held:
            return True
        readable = _readable(self.read_fd)
        # Busy again: the reader may have taken the bytes between the two looks.
        return readable or self.busy.held

    def _answer_syncs(self) -> None:
        """Deliver what is in the pipe now, then wake those who asked before."""
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        self._drain()
        for done in waiters:
            done.set()

    def _wake_waiters(self) -> None:
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for done in waiters:
            done.set()

    def _drain(self) -> None:
        """Deliver what is in the pipe now, without blocking.

        At most one pipe's worth: whatever was written before the request fits
        in the pipe, and a writer that never stops must not keep us here.
        """
        budget = self._pipe_size
        while budget > 0:
            self.busy.set()  # before looking: a sync must not see an empty pipe
            if not _readable(self.read_fd):
                break
            data = os.read(self.read_fd, min(READ_SIZE, budget))
            if not data:
                break
            budget -= len(data)
            self._handle(data)
        self.busy.clear()

    def _handle(self, data: bytes) -> None:
        """Deliver, then echo: the busy mark is cleared once delivered, so an echo
        stuck on a terminal that reads nothing never holds a writer's take-in."""
        self._deliver(self._decoder.decode(data))
        self.busy.clear()
        self._echo(data)

    def _deliver(self, text: str) -> None:
        if not text:
            return
        try:
            self._on_text(text)
        except Exception:
            logger.exception("iostream: publishing output captured from fd %s failed", self.fd)

    def _echo(self, data: bytes) -> None:
        """Copy to the original descriptor; a failure there never stops publishing."""
        if not self._echo_ok:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.original_copy, view) :]
        except OSError:
            self._echo_ok = False

    def _after_fork_in_child(self) -> None:
        # The reader thread and the pipe's other users stayed in the parent.
        self.forked = True

    def stop(self, timeout: float = 10.0) -> bool:
        """Restore ``fd``, publish everything written before, release the pipe.

        ``original_copy`` stays open (what was captured can still be echoed, and
        whoever holds that descriptor keeps writing where it always did). Waits at
        most ``timeout`` seconds for the reader; if it does not finish (a callback
        blocked), the pipe is left open rather than closed under it, and False is
        returned. Idempotent: the descriptor is restored only once. In a forked
        child only the descriptor is restored.
        """
        if not self._restored:
            self._restored = True
            os.dup2(self.original_copy, self.fd)
        if self.forked or self._released:
            return True
        with contextlib.suppress(BlockingIOError):  # full of requests: it is awake
            os.write(self._stop_write, REQUEST_STOP)
        if self.thread is not None:
            self.thread.join(timeout)
        if self.thread is not None and self.thread.is_alive():
            logger.error("iostream: the reader of fd %s did not finish in %ss", self.fd, timeout)
            return False
        self._released = True
        for fd in (self.read_fd, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.busy.close()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """:meth:`stop`, then close ``original_copy`` too. Idempotent."""
        if self.stop(timeout) and not self.forked and not self._copy_closed:
            self._copy_closed = True
            with contextlib.suppress(OSError):
                os.close(self.original_copy)


def _enlarge_pipe(fd: int) -> int:
    """Enlarge the pipe where Linux allows; return its size in bytes.

    Where pipes cannot be enlarged (:data:`iostream.platform.CAN_ENLARGE_PIPE` is
    False) nothing is asked of the pipe and :data:`PIPE_SIZE` is returned: an upper
    bound of what it holds, as the drain budget needs.
    """
    if not platform.CAN_ENLARGE_PIPE:
        return PIPE_SIZE
    import fcntl

    for size in (PIPE_SIZE, PIPE_SIZE // 4):
        with contextlib.suppress(OSError):
            return int(fcntl.fcntl(fd, _F_SETPIPE_SZ, size))
    # Not enlarged (the user's pipe quota is used up): the size it has.
    with contextlib.suppress(OSError):
        return int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
    return _DEFAULT_PIPE_SIZE


def _readable(fd: int) -> bool:
    """Whether ``fd`` has data to read now (``poll``: no limit on fd numbers)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
