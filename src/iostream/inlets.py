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

An inlet whose reader did not answer in time is skipped for :data:`LATE_PAUSE`
seconds, so a reader stuck in a blocked echo costs one bounded wait, not one
per write. In a forked child nothing here is used (the inlets are the parent's).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable

from . import forksafety

#: Seconds an inlet whose reader did not answer in time is skipped.
LATE_PAUSE = 5.0

#: ``take_in(timeout)``: have the inlet's reader take in what waits now; whether
#: it did within ``timeout`` seconds.
TakeIn = Callable[[float], bool]


class Inlets:
    """The readable descriptors through which text reaches one stream group.

    :meth:`add` and :meth:`remove` from any thread; :meth:`poll` and
    :meth:`take_in` from writing threads (never the readers' own threads).
    ``poll`` is None until an inlet is added (nothing to ask), then a bound
    method; where Linux's ``epoll`` exists it asks about every inlet in one
    system call, elsewhere a fresh ``poll`` object is made per call (one may
    not be shared between threads).
    """

    def __init__(self, use_epoll: bool = hasattr(select, "epoll")) -> None:
        self._lock = threading.Lock()  # add and remove (taken alone)
        self._take_ins: dict[int, TakeIn] = {}
        self._late_until: dict[int, float] = {}
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
        self._lock = threading.Lock()  # (a parent's thread may have held it)

    def add(self, fd: int, take_in: TakeIn) -> None:
        """Watch ``fd``; ``take_in`` has its reader take in what waits. Any thread."""
        with self._lock:
            self._add(fd, take_in)

    def _add(self, fd: int, take_in: TakeIn) -> None:
        if self.forked:
            return
        self._take_ins[fd] = take_in
        if self._use_epoll:
            if self._epoll is None:
                self._epoll = select.epoll()
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except FileExistsError:  # (a number reused after a close: watch it anew)
                self._epoll.modify(fd, select.EPOLLIN)
            self.poll = self._epoll.poll
        else:
            self.poll = self._poll_each

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed). Any thread."""
        with self._lock:
            self._remove(fd)

    def _remove(self, fd: int) -> None:
        if self.forked or self._take_ins.pop(fd, None) is None:
            return
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

    def take_in(self, timeout: float) -> None:
        """Have the reader of every inlet that has something waiting take it in;
        wait at most ``timeout`` seconds for each. Writing threads only (never a
        reader's own thread)."""
        poll = self.poll
        if poll is None:
            return
        ready = poll(0, -1)
        assert isinstance(ready, list)
        now = time.monotonic()
        for fd, _events in ready:
            take_in = self._take_ins.get(fd)
            if take_in is None or self._late_until.get(fd, 0.0) > now:
                continue
            if not take_in(timeout):
                self._late_until[fd] = time.monotonic() + LATE_PAUSE


class BusyMark:
    """A pipe that is readable while a reader holds text it has read but not yet
    delivered, so that one poll of the inlets sees that text as waiting too.

    Set and cleared by the reader's own thread only; ``held`` may be read from
    any thread. Each costs one system call (set only when not held already).
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._write_fd, False)
        self.held = False
        self._closed = False

    def set(self) -> None:
        """The reader is about to read: mark it holding. The reader's thread."""
        if not self.held:
            self.held = True
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"b")

    def clear(self) -> None:
        """The reader delivered what it read. The reader's thread."""
        if self.held:
            with contextlib.suppress(OSError):
                os.read(self.fd, 4096)
            self.held = False

    def close(self) -> None:
        """Close both ends. Idempotent (a descriptor number closed twice could
        be another's by then)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
