"""Text that reaches a stream group from outside its Python streams, taken in
before a Python write, so that output arrives in the order it was written.

C code, ``os.write`` and subprocesses write to the captured descriptors; forked
children send to the channel. That text waits in a pipe or a socket until a
reader takes it in (the fd reader thread, the IO thread), while a Python write
is queued at once: without this, ``print`` after ``os.write`` would overtake
it. So before a write that begins a line, the writing thread asks the
operating system, in one system call, whether anything waits in any inlet
(:meth:`Inlets.poll`); only if something does, it has each such inlet's reader
take in what waits there now (:meth:`Inlets.take_in`), bounded, and then
queues its own text. Text that C code keeps in its own stdio buffer until it
flushes has not reached the process yet: no kernel can order it.

A reader that has read text and not yet delivered it holds a :class:`BusyMark`,
an inlet too: the one poll sees that text as waiting as well.

A writer waits at most :data:`TAKE_IN_TIMEOUT` for a reader, and a reader that
did not answer in time (stuck echoing to a terminal that reads nothing) is
skipped for :data:`LATE_PAUSE`: the order is given up then, never the kernel's
progress. In a forked child nothing here is used (the inlets are the parent's).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable

from . import forksafety
from .locking import locked, new_lock

#: Seconds a writer waits for one reader to take in what waits (the order is
#: worth a short wait, never a stall).
TAKE_IN_TIMEOUT = 0.5
#: Seconds a reader that did not answer in time is skipped.
LATE_PAUSE = 5.0

#: ``take_in(timeout)``: have the inlet's reader take in what waits now; whether
#: it did within ``timeout`` seconds.
TakeIn = Callable[[float], bool]

# Threads that must not wait for a reader: a reader itself (one capture's reader
# writing to another stream would wait for the other's), and a thread already
# waiting in take_in (a signal handler that prints while it waits).
_skip = threading.local()


def mark_reader_thread() -> None:
    """The calling thread reads an inlet: its writes never wait for a reader."""
    _skip.active = True


class Inlets:
    """The readable descriptors through which text reaches one stream group.

    :meth:`add` and :meth:`remove` from any thread; :meth:`take_in` from writing
    threads. ``poll`` is None until an inlet is added (nothing to ask), then a
    bound method; where Linux's ``epoll`` exists it asks about every inlet in one
    system call, elsewhere a fresh ``poll`` object is made per call (one may not
    be shared between threads).
    """

    def __init__(self, use_epoll: bool = hasattr(select, "epoll")) -> None:
        self._lock = new_lock()  # add and remove (taken alone)
        self._take_ins: dict[int, TakeIn] = {}
        self._late_until: dict[TakeIn, float] = {}
        self._use_epoll = use_epoll
        self._epoll: select.epoll | None = None  # (made at the first add)
        self.forked = False  # a forked child: the inlets are the parent's
        #: Any thread, without a lock: ``poll(0, 1)`` is truthy when an inlet has
        #: something waiting (at most one event asked: the cheapest question).
        #: None while there are no inlets.
        self.poll: Callable[[int, int], object] | None = None
        forksafety.register(self)

    def _after_fork_in_child(self) -> None:
        # (forksafety) The epoll instance is shared with the parent: registering
        # or removing here would change the parent's. Nothing is asked any more.
        self.forked = True
        self.poll = None
        self._lock = new_lock()  # (a parent's thread may have held it)

    def add(self, fd: int, take_in: TakeIn) -> None:
        """Watch ``fd``; ``take_in`` has its reader take in what waits. A
        descriptor that cannot be watched (closed meanwhile) is left out. Any
        thread."""
        locked(self._lock, self._add, fd, take_in)

    def _add(self, fd: int, take_in: TakeIn) -> None:
        if self.forked:
            return
        try:
            if self._use_epoll:
                if self._epoll is None:
                    self._epoll = select.epoll()
                try:
                    self._epoll.register(fd, select.EPOLLIN)
                except FileExistsError:  # (a number reused after a close: watch it anew)
                    self._epoll.modify(fd, select.EPOLLIN)
        except OSError:
            return
        self._take_ins[fd] = take_in
        self.poll = self._epoll.poll if self._epoll is not None else self._poll_each

    def remove(self, fd: int, take_in: TakeIn) -> None:
        """Stop watching ``fd`` if ``take_in`` is still its reader (before it is
        closed; a number given to another inlet since is left alone). Any thread."""
        locked(self._lock, self._remove, fd, take_in)

    def _remove(self, fd: int, take_in: TakeIn) -> None:
        if self.forked or self._take_ins.get(fd) != take_in:
            return
        del self._take_ins[fd]
        if self._epoll is not None:
            with contextlib.suppress(OSError):  # (closed: epoll dropped it already)
                self._epoll.unregister(fd)
        if not self._take_ins:
            # (The epoll instance stays open while the group lives: a writer
            # may be calling its poll right now.)
            self.poll = None

    def _poll_each(self, timeout: int, _max_events: int = -1) -> list[tuple[int, int]]:
        """``poll(timeout)`` on a fresh poll object (where there is no epoll)."""
        poller = select.poll()
        for fd in list(self._take_ins):
            poller.register(fd, select.POLLIN)
        return poller.poll(timeout)

    def take_in(self) -> None:
        """Have the reader of every inlet that has something waiting take it in,
        each once, waiting at most :data:`TAKE_IN_TIMEOUT` for it; one that does
        not answer in time is skipped for :data:`LATE_PAUSE`. Writing threads
        only; returns at once on a reader's thread and inside a take-in."""
        poll = self.poll
        if poll is None or getattr(_skip, "active", False):
            return
        _skip.active = True
        try:
            ready = poll(0, -1)
            assert isinstance(ready, list)
            asked: list[TakeIn] = []
            for fd, _events in ready:
                take_in = self._take_ins.get(fd)
                if take_in is None or take_in in asked:
                    continue
                asked.append(take_in)
                if self._late_until.get(take_in, 0.0) > time.monotonic():
                    continue
                if not take_in(TAKE_IN_TIMEOUT):
                    self._late_until[take_in] = time.monotonic() + LATE_PAUSE
        finally:
            _skip.active = False


class BusyMark:
    """Whether a reader holds text it has read but not yet delivered (``held``);
    with ``pollable``, also a pipe (``fd``) that is readable meanwhile, so that
    one poll of the inlets sees that text as waiting too.

    Set and cleared by the reader's own thread only; ``held`` may be read from
    any thread. With the pipe, each costs one system call (set only when not
    held already); without it (output order not kept), none.
    """

    def __init__(self, pollable: bool = True) -> None:
        self.fd = self._write_fd = -1
        if pollable:
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)
        self.held = False
        self._closed = False

    def set(self) -> None:
        """The reader is about to read: mark it holding. The reader's thread."""
        if not self.held and not self._closed:
            self.held = True
            if self._write_fd >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._write_fd, b"b")

    def clear(self) -> None:
        """The reader delivered what it read. The reader's thread."""
        if self.held and not self._closed:
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.read(self.fd, 4096)
            self.held = False

    def close(self) -> None:
        """Close the pipe. Idempotent (a descriptor number closed twice could
        be another's by then)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
