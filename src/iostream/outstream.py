"""OutStream: a text file whose writes are published as Jupyter ``stream`` messages.

Thread affinity: ``write``, ``writelines``, ``flush``, ``close``, the parent and hook
methods may be called from any thread. Methods whose names start with ``_io_`` run
on the IO thread only. ``_flush`` runs on the IO thread, or on the calling thread
when there is no running IO thread (before ``start``, after ``stop``, without a
thread at all) and in a forked child (which hands its text to the parent there).

Streams that publish through the same thread share one ordered buffer (a
``StreamGroup``, :mod:`iostream.streamgroup`), so text written to stdout and then
stderr under one parent arrives in that order. The stream talks to its thread
through :mod:`iostream.threadlink` only.

Cross-thread handshakes, stated once. Nothing rests on the GIL except the write
fast path, which is taken only where the GIL is enabled (:data:`LOCK_FREE_WRITES`):

* the group's ``incoming`` deque and ``flow`` (the flush policy) change under the
  group's ``lock``; only the fast path appends to ``incoming`` and reads
  ``flow.licensed``, ``awaiting`` and ``wake_incoming`` without it;
* work is handed to the IO thread with ``schedule`` (its guarantee is stated in
  :mod:`iostream.iothread`); a waiter is released by
  :class:`~iostream.completion.Completion`;
* ``publisher_ident`` is stored by the publishing thread under ``publish_lock``
  and compared by others only with their own ident;
* a writing thread that finds text waiting in the group's inlets waits (bounded)
  for their readers to take it in (:mod:`iostream.inlets`), holding none of our
  locks, and never on the IO thread or while it publishes itself: the readers may
  be waiting for those.

The lock order of the whole library, stated here only (a thread holding one may
take only those after it):

1. the IO thread's ``_inline_lock`` (a call run inline, without a running
   thread; :meth:`IOPubThread.stop` of a thread that never ran holds it around
   the stop callbacks too);
2. a stream group's ``publish_lock`` (take and publish, in order);
3. a stream group's ``lock`` (the buffer, ``incoming`` and ``flow``);
4. leaves, under which nothing else is taken: the IO thread's ``_lock`` (its
   queue and state), fd capture's ``_waiters_lock``, a ``Completion``'s lock.

Taken alone: ``streamgroup._groups_lock`` (when a stream is made),
``threadcontext._lock`` (enable, disable) and an ``Inlets``' lock (add, remove).
The group's ``lock``, the thread's ``_lock``, fd capture's ``_waiters_lock`` and
an ``Inlets``' lock are taken on writing threads through
:func:`iostream.locking.locked`, so no KeyboardInterrupt can leave them held.
"""

from __future__ import annotations

import contextvars
import functools
import io
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jupyter_client.session import extract_header

from . import forksafety
from .childchannel import FOLLOW_RUNNING_CELL
from .completion import Completion
from .core import (
    DEFAULT_MAX_MESSAGE_CHARS,
    Chunk,
    Parent,
    complete_lines,
    make_publishable,
    split_text,
)
from .core.policy import Do
from .fdcapture import FdCapture
from .iothread import IOPubThread
from .locking import locked
from .streamgroup import StreamGroup, group_for
from .threadlink import IOThread, link

logger = logging.getLogger("iostream")
_monotonic = time.monotonic
_get_ident = threading.get_ident
_STD_FDS = {"stdout": 1, "stderr": 2}

#: ``hook(msg)`` returns the message to send, or None to swallow it.
Hook = Callable[[dict[str, Any]], "dict[str, Any] | None"]

__all__ = ["LOCK_FREE_WRITES", "Hook", "OutStream"]

#: The default of the parent context variable's lookups: tells "this context holds
#: no parent" apart from any value. Compared by identity only, never stored.
_NO_CONTEXT: Parent = {}

#: Whether writes may take the lock-free fast path: only where the GIL makes
#: ``deque.extend`` of a tuple atomic and an unlocked ``+=`` merely inexact
#: (see :class:`_FastWriter`). Without the GIL (free-threaded builds), or with
#: ``IOSTREAM_LOCKED_WRITES=1`` in the environment at import (a testing aid),
#: every write takes the group's lock. Read once, at import.
LOCK_FREE_WRITES: bool = bool(getattr(sys, "_is_gil_enabled", lambda: True)()) and (
    os.environ.get("IOSTREAM_LOCKED_WRITES", "") != "1"
)


class _FastWriter:
    """The common case of :meth:`OutStream.write`, on a plain object.

    Attribute access on instances of ``io.TextIOBase`` subclasses costs about
    half again as much as on a plain slotted object, and this runs for every
    write. ``group`` is None while the stream is closed or echoing, which sends
    every write to the checked path. ``limit`` is the stream's
    ``max_buffer_chars``, refreshed whenever a write takes the slow path.
    ``thread_links`` and ``thread_headers`` are the stream's
    ``_thread_to_parent`` and ``_thread_to_parent_header`` (empty unless
    ipykernel 6.29's kernel fills them, see :meth:`current_parent`).
    """

    __slots__ = (
        "group",
        "limit",
        "line_open",
        "owner",
        "parent",
        "parent_global",
        "stream",
        "thread_headers",
        "thread_links",
    )

    def __init__(self, stream: OutStream) -> None:
        self.stream = stream
        self.group: StreamGroup | None = None
        self.limit = stream.max_buffer_chars
        # The stream's latest text ended inside a line: the next write continues
        # it and need not look for text waiting in the inlets (see take_in_first).
        self.line_open = False
        self.owner = stream._owner
        self.parent = stream._parent_header
        self.parent_global: Parent = {}
        self.thread_links: dict[int | None, int | None] = {}
        self.thread_headers: dict[int | None, Parent] = {}

    def current_parent(self) -> Parent:
        """The parent of the calling context (thread or task) if it set one, else
        of the thread's oldest ancestor in ipykernel 6.29's thread maps, else the
        global one. Any thread; the one place a write's parent is decided."""
        parent = self.parent.get(_NO_CONTEXT)
        if parent is not _NO_CONTEXT:
            return parent
        if not self.thread_headers:
            return self.parent_global
        # ipykernel 6.29's ``IPythonKernel`` records, as each thread starts, the
        # cell that was running when a thread of the kernel's own started it
        # (``_thread_to_parent_header[ident]``), or the thread that started it
        # (``_thread_to_parent[ident]``), and removes the entries of finished
        # threads. Output of a thread goes to its oldest recorded ancestor's
        # cell, else to the global parent, as 6.29's own OutStream routes it. A
        # cycle (a thread ident reused while its entry was kept) ends the walk.
        links = self.thread_links
        ident: int | None = _get_ident()
        for _ in range(len(links)):
            if ident not in links:
                break
            ident = links.get(ident, ident)  # (another thread may remove it meanwhile)
        return self.thread_headers.get(ident, self.parent_global)

    def write(self, string: str) -> int:
        """See :meth:`OutStream.write`. Any thread; only where
        :data:`LOCK_FREE_WRITES` (the GIL makes the unlocked appends safe)."""
        # Fast path: a plain str and a flush already on its way (group.add inlined,
        # without its lock: under the GIL ``extend`` of a tuple is atomic, and
        # ``incoming_chars`` is a bound, reset whenever ``incoming`` is moved
        # into the buffer).
        group = self.group
        if group is not None and string.__class__ is str:
            poll = group.inlets.poll  # (take_in_first, inlined: it runs for every write)
            if poll is not None and string:
                if not self.line_open and poll(0, 1):
                    self.stream._take_in_waiting()
                self.line_open = string[-1] != "\n"
            if not group.flow.licensed:
                return self.stream._write_checked(string)
            publisher = group.publisher_ident
            if (publisher is None or publisher != _get_ident()) and not (
                group.awaiting and _get_ident() in group.awaiting
            ):
                size = len(string)
                group.incoming.extend((self.owner, self.current_parent(), string))
                queued = group.incoming_chars = group.incoming_chars + size
                if group.flow.licensed and queued <= self.limit and queued <= group.wake_incoming:
                    return size
                # (The licence went, or the backlog passed a mark: ask the policy.)
                self.stream._after_queued(string)
                return size
        return self.stream._write_checked(string)

    def take_in_first(self, group: StreamGroup, string: str) -> None:
        """Before ``string`` is queued: if it begins a line and text waits in the
        group's inlets (fd capture pipes, the forked children's channel), have
        that taken in first, so it keeps its place (:mod:`iostream.inlets`).
        The writing thread."""
        poll = group.inlets.poll
        if poll is not None and string:
            if not self.line_open and poll(0, 1):
                self.stream._take_in_waiting()
            self.line_open = string[-1] != "\n"

    def _append_if_licensed(self, group: StreamGroup, parent: Parent, string: str) -> int | None:
        """Queue ``string`` if the fast path is licensed; the characters then
        queued, or None. The group's lock held."""
        if not group.flow.licensed or group.awaited():
            return None
        group.add_locked(self.owner, parent, string)
        return group.incoming_chars

    def write_locked(self, string: str) -> int:
        """:meth:`write` with the group's lock around the licence check and the
        append: nothing rests on the GIL. Any thread."""
        group = self.group
        if group is not None and string.__class__ is str:
            self.take_in_first(group, string)
            publisher = group.publisher_ident
            # (Only this thread ever stores its own ident there: a stale value
            # read here is never this thread's.)
            if publisher is None or publisher != _get_ident():
                parent = self.current_parent()  # outside the lock: may call out
                queued = locked(group.lock, self._append_if_licensed, group, parent, string)
                if queued is not None:
                    if queued > self.limit or queued > group.wake_incoming:
                        self.stream._after_queued(string)  # a mark passed: ask the policy
                    return len(string)
        return self.stream._write_checked(string)


class OutStream(io.TextIOBase):
    """A file-like object that publishes what is written to it on IOPub.

    ``OutStream(session, pub_thread, name)`` as in ipykernel; the name-first form
    ``OutStream("stdout", session, None)`` works too. Without a thread, text is
    published on the writing thread through ``session.send(None, "stream",
    content, parent=..., ident=topic)`` at each newline, the memory
    bound, ``flush()`` and ``close()``.
    """

    #: Seconds ``flush()`` waits for the IO thread before giving up.
    flush_timeout: float = 10
    #: Seconds between flushes while output keeps coming.
    flush_interval: float = 0.2
    #: Upper bound on the text of one stream message (characters).
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    #: Pending text above which ``write`` waits for a flush (bounds memory). The
    #: same as a message: a backlog that fits in one message goes out in one.
    max_buffer_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    #: Whether text from the captured descriptors (C code, subprocesses) and
    #: forked children keeps its place among Python's writes (issue 19): before a
    #: Python write that begins a line, what waits there is taken in first. Costs
    #: one system call per such write (docs/performance.md), so it is off here and
    #: on in ``python -m iostream kernel``. Read when the stream is made.
    keep_write_order: bool = False
    topic: bytes | None = None
    encoding = "UTF-8"
    # Like ipykernel's, ``_original_stdstream_copy``, ``_original_stdstream_fd`` and
    # ``watch_fd_thread`` exist only once fd capture was set up: ipykernel's
    # kernelapp probes ``hasattr(sys.stderr, "_original_stdstream_copy")`` and
    # opens that descriptor, so a None there kills the kernel at start.
    _original_stdstream_copy: int
    _original_stdstream_fd: int
    _fid: int | None = None
    _exc: Any = None
    # (A forked child's: see _after_fork_in_child.)
    _inherited_parents: tuple[Parent, ...] = ()

    def __init__(
        self,
        session: Any,
        pub_thread: Any = None,
        name: str | None = None,
        pipe: Any = None,
        echo: Any = None,
        *,
        watchfd: bool | str = True,
        isatty: bool = False,
    ) -> None:
        if isinstance(session, str):  # OutStream(name, session, pub_thread)
            session, pub_thread, name = pub_thread, name, session
        if not isinstance(name, str):
            raise TypeError("OutStream needs a stream name such as 'stdout'")
        if pipe is not None:
            warnings.warn(
                "the pipe argument to OutStream is deprecated and ignored",
                DeprecationWarning,
                stacklevel=2,
            )
        if pub_thread is not None and not hasattr(pub_thread, "schedule"):
            warnings.warn(
                f"OutStream should be given an IOPubThread, not {pub_thread!r}",
                DeprecationWarning,
                stacklevel=2,
            )
            pub_thread = IOPubThread(pub_thread, session=session)
            pub_thread.start()
        self.session = session
        self.pub_thread = pub_thread
        self._publisher = pub_thread
        # The thread through the protocol of iostream.threadlink (None: no thread).
        self._link: IOThread | None = None if pub_thread is None else link(pub_thread)
        self.name = name
        self.topic = b"stream." + name.encode()
        self._parent_header: contextvars.ContextVar[Parent] = contextvars.ContextVar(
            f"parent_header_{name}"
        )
        self._parent_header.set({})
        self._master_pid = os.getpid()  # (ipykernel's attribute; forksafety detects forks)
        # Whether session.pid was set in this process (Session drops messages
        # whose pid is another process's: a fork, or a session made before one).
        self._session_pid_set = False
        forksafety.register(self)
        self._flush_pending = False
        self._subprocess_flush_pending = False
        self._local = threading.local()
        self._io_hooks: list[Hook] = []  # the IO thread's hooks
        self._timer_flushing = False  # the timer's flush is running (IO thread)
        self._isatty = bool(isatty)
        self._closed = False
        self._capture: FdCapture | None = None
        self._warned_echo = False
        self._echo: Any = None
        self._group = group_for(
            pub_thread if pub_thread is not None else session,
            threaded=pub_thread is not None,
            drains_before_stop=self._link is not None and self._link.drains_before_stop,
        )
        # Where text goes in this process state (see _Sink); swapped at fork. (A
        # stream made in a forked child finds its group forked already.)
        self._sink = _sink_for(pub_thread is not None, self._group.forked)
        self._fd_line_open = False  # the fd reader's last read ended inside a line
        self._owner = id(self)
        # Before anything can write (the fd reader below): holds the global parent.
        self._writer = _FastWriter(self)
        self._group.join(self._owner, self)
        if self._link is not None:
            self._link.add_stop_callback(self._flush_whole_group)
            # Once the thread has stopped, the process prints normally again.
            self._link.add_stopped_callback(self._end_fd_capture)
            self._link.set_child_text_handler(
                functools.partial(_io_receive_child_text, self._group),
                functools.partial(_io_publish_pending, self._group),
            )
        self._should_watch = self._wants_fd_capture(watchfd)
        if self._should_watch:
            self._setup_stream_redirects(name)
        self._watch_children()
        if type(self).write is OutStream.write:
            # Bound straight to the fast path, skipping one call. An instance
            # attribute, as ``write`` must be anyway (metakernel assigns it);
            # subclasses that override write() keep their own.
            self.write = (  # type: ignore[method-assign]
                self._writer.write if LOCK_FREE_WRITES else self._writer.write_locked
            )
        self.echo = self._echo_target(echo)

    def _wants_fd_capture(self, watchfd: bool | str) -> bool:
        if watchfd == "force":
            return True
        return bool(
            watchfd
            and self._publisher is not None
            and FdCapture.SUPPORTED
            and "PYTEST_CURRENT_TEST" not in os.environ
        )

    def _echo_target(self, echo: Any) -> Any:
        if not echo:
            return None
        if not hasattr(echo, "write"):
            raise ValueError("echo argument must be a file-like object")
        if self._capture is not None:
            try:
                echo_fd = echo.fileno()
            except Exception:
                echo_fd = None
            if echo_fd == self._capture.fd:
                # Echoing to the captured fd would feed our own pipe: use the copy.
                raw = io.FileIO(self._capture.original_copy, "w", closefd=False)
                return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)
        return echo

    @property
    def echo(self) -> Any:
        """A file-like object that every write is copied to, or None. Writable."""
        return self._echo

    @echo.setter
    def echo(self, value: Any) -> None:
        self._echo = value
        self._writer.group = self._group if value is None and not self._closed else None

    # -- TextIOBase --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def isatty(self) -> bool:
        """Whether this stream claims terminal capabilities (the ``isatty`` argument)."""
        return self._isatty

    def writable(self) -> bool:
        """Always True."""
        return True

    def fileno(self) -> int:
        """The original descriptor's copy while capturing; else UnsupportedOperation."""
        copy: int | None = getattr(self, "_original_stdstream_copy", None)
        if copy is not None:
            return copy
        raise io.UnsupportedOperation("fileno")

    def write(self, string: str) -> int:
        """Buffer ``string`` for publishing under the current parent. Any thread.

        Raises TypeError for a non-str and ValueError once closed. Text written
        while this thread is publishing (a session or hook that prints) goes to
        the original stream instead, so it cannot loop.
        """
        if LOCK_FREE_WRITES:
            return self._writer.write(string)
        return self._writer.write_locked(string)

    def _after_queued(self, text: str) -> None:
        """``text`` was queued in the group: do what the flush policy answers (see
        :mod:`iostream.core.policy`). The writing thread."""
        group = self._group
        self._writer.limit = limit = self.max_buffer_chars
        do, ticket = group.written(_monotonic(), self.flush_interval, text, limit)
        if do is Do.NOTHING:
            return
        if do is Do.SET_TIMER:
            self._flush_pending = True
            if self._arm_flush():
                group.license(_monotonic(), ticket)
        elif do is Do.PUBLISH_LINES:
            self._publish_complete_lines()
        elif do is Do.FLUSH:
            self._sink.relieve(self)  # bounds memory
        else:
            self._wake_timer()

    def _wake_timer(self) -> None:
        """The backlog passed the policy's watch mark: have the timer look at it
        now rather than at the due time (a burst may be published early). Any thread."""
        thread = self._link
        if thread is not None and thread.running:
            thread.schedule(self._io_on_timer)

    def _write_checked(self, string: str) -> int:
        """``write`` with every check; the path for all but the common case."""
        if not isinstance(string, str):
            raise TypeError(f"write() argument must be str, not {type(string).__name__}")
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if self._echo is not None:
            self._echo_write(string)
        publisher = self._group.publisher_ident
        if publisher is not None and publisher == _get_ident():
            self._write_to_original(string)
        else:
            if self._writer.group is None or string.__class__ is not str:
                self._writer.take_in_first(self._group, string)  # (not done by write)
            self._buffer_text(string)
        return len(string)

    def _take_in_waiting(self) -> None:
        """Text waits in the group's inlets: have it taken in before this thread's
        write is queued (bounded: see :mod:`iostream.inlets`). Not on the IO
        thread, nor while this thread publishes or holds the group's lock: the
        readers may be waiting for those. The writing thread."""
        group = self._group
        publisher = group.publisher_ident
        thread = self._link
        if (
            (publisher is not None and publisher == _get_ident())
            or (thread is not None and thread.on_io_thread())
            or group.held_here()  # (a signal handler or __del__ that prints)
        ):
            return
        group.inlets.take_in()

    def _watch_children(self) -> None:
        """Have forked children's text taken in before a write (an inlet), once
        the thread's channel exists. Any thread."""
        thread = self._link
        if thread is None or not self.keep_write_order or self._group.children_fds:
            return  # (watched already: until the thread stops)
        fds = thread.watch_children()
        group = self._group
        if fds:
            group.children_fds = fds
            for fd in fds:
                group.inlets.add(fd, thread.take_in_children)

    def writelines(self, lines: Iterable[str]) -> None:  # type: ignore[override]
        """Write each string of ``lines``. Any thread."""
        if self._closed:
            raise ValueError("I/O operation on closed file")
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Publish what is buffered; return once it is handed to the socket. Any thread.

        While capturing the fd, what was written to it before this call (C code,
        subprocesses) is published too. Waits at most ``flush_timeout`` seconds
        for the fd reader and the IO thread.
        """
        if self._closed:
            return
        thread = self._link
        deadline = _monotonic() + self.flush_timeout
        capture = self._capture
        # (Not on the IO thread: waiting for the reader could wait for ourselves,
        # as the reader may be blocked handing text to this thread.)
        if (
            capture is not None
            and not (thread is not None and thread.on_io_thread())
            and not capture.sync(self.flush_timeout)
        ):
            print("IOStream.flush timed out", file=sys.__stderr__)
        if not self._sink.flush(self, deadline):
            print("IOStream.flush timed out", file=sys.__stderr__)

    def close(self) -> None:
        """Publish everything written so far, stop fd capture, close. Idempotent."""
        if self._closed:
            return
        if self._capture is not None:
            self._should_watch = False
            self._forget_capture_inlets()
            self._capture.close(self.flush_timeout)
        self._writer.group = None  # from now on every write raises
        try:
            self.flush()
        finally:
            self._closed = True
            self.pub_thread = None

    # -- parents ---------------------------------------------------------------

    @property
    def parent_header(self) -> Parent:
        """The parent of the current context (thread or task), else of the thread's
        oldest ancestor in ipykernel 6.29's thread maps, else the global one."""
        return self._current_parent()

    @parent_header.setter
    def parent_header(self, value: Parent) -> None:
        self._parent_header.set(value)
        self._writer.parent_global = value

    def _current_parent(self) -> Parent:
        """What :attr:`parent_header` returns. Any thread."""
        return self._writer.current_parent()

    def set_parent(self, parent: Any) -> None:
        """Set the parent for the current context and as the global fallback.

        Set directly, not through :attr:`parent_header`: ACT-R's Python interface
        replaces that property on the class with one that only keeps
        ``_parent_header_global``. A replaced property is assigned too.
        """
        header = extract_header(parent)
        self._parent_header.set(header)
        self._writer.parent_global = header
        # A new cell: its first output goes out at once, not after the batching
        # interval of the previous cell's output.
        self._group.new_parent(header, _monotonic())
        if type(self).parent_header is not _OWN_PARENT_HEADER:
            self.parent_header = header

    def set_thread_parent(self, parent: Any) -> contextvars.Token[Parent]:
        """Set the parent for the calling thread or context only; returns a token."""
        return self._parent_header.set(extract_header(parent))

    def reset_thread_parent(self, token: contextvars.Token[Parent]) -> None:
        """Undo the :meth:`set_thread_parent` call that returned ``token``."""
        self._parent_header.reset(token)

    # -- flushing and publishing ------------------------------------------------

    def _buffer_from_fd(self, text: str) -> None:
        """Buffer text read from the captured descriptor (C code, subprocesses).
        The fd reader thread only. Its complete lines go before a line the Python
        stream has begun (``print`` writes its text and its end apart), never
        inside it. Once a read ends inside a line, the descriptor's text goes on in
        the order written until a read ends a line: it then shares its line with
        the Python stream's, as on a terminal, and nothing is reordered."""
        parent = self._current_parent()
        if self._fd_line_open:
            self._buffer_under(parent, text)
        else:
            lines, rest = complete_lines(text)
            if lines:
                self._buffer_under(parent, lines, source="fd")
            if rest:
                self._buffer_under(parent, rest)
        self._fd_line_open = not text.endswith("\n")

    def _buffer_text(self, text: str) -> None:
        """Add text under the current parent and make sure a flush will come."""
        self._buffer_under(self._current_parent(), text)

    def _buffer_under(self, parent: Parent, text: str, source: str | None = None) -> None:
        """Add text under ``parent`` and make sure a flush will come. Any thread.

        ``source``: the text was written outside this process's Python streams,
        by a forked child ("child") or to the captured descriptor ("fd"): its
        complete lines go before an unfinished line of ours, never inside it
        (see :meth:`~iostream.core.OutputBuffer.insert_lines`).
        """
        if source is not None:
            self._group.add_lines(self._owner, parent, text, source)
        else:
            self._group.add(self._owner, parent, text)
        self._after_queued(text)

    def _arm_flush(self) -> bool:
        """Have the IO thread's timer flush; True if it will (else flushed here)."""
        thread = self._link
        if thread is not None and thread.running:
            self._watch_children()  # (a stream made before the thread started)
            thread.schedule(self._io_on_timer)
            return True  # (whether that licenses the fast path is the policy's)
        self._run_on(thread, self._flush)
        return False

    def _io_on_timer(self) -> None:
        """Flush if due, else check again when it may be. IO thread only."""
        thread = self._link
        assert thread is not None  # (only a thread runs timers)
        delay = self._group.on_timer(_monotonic(), self.flush_interval, thread.stopping)
        if delay is None:
            return  # flushed meanwhile
        if delay <= 0:
            self._timer_flushing = True  # the promised flush: it ends the licence
            try:
                self._flush_whole_group()
            finally:
                self._timer_flushing = False
            return
        group = self._group
        if group.timer is not None:
            thread.cancel_timer(group.timer)
        group.timer = thread.call_later(delay, self._io_on_timer)

    def _flush_is_custom(self) -> bool:
        """Whether this stream's class overrides :meth:`_flush`. Any thread."""
        return type(self)._flush is not OutStream._flush

    def _flush_whole_group(self) -> None:
        """Publish everything pending in the group, this stream's text included
        through its own ``_flush`` where its class overrides it (spyder-kernels
        filters there); ends the flush promise. The timer's flush and the stop
        callback: where :meth:`_flush` runs (see the module docstring)."""
        self._flush_group(route_self=True)

    def _run_on(self, thread: IOThread | None, f: Callable[[], None]) -> None:
        """Run ``f`` here if this is the IO thread or there is none, else schedule it."""
        if thread is None or thread.on_io_thread():
            f()
        else:
            thread.schedule(f)

    # -- publishing ----------------------------------------------------------

    def _flush(self) -> None:
        """Publish everything pending in this stream's group. IO thread (see module).

        Text of other streams whose class overrides ``_flush`` (spyder-kernels
        filters there) is left to their override, called right after.
        """
        self._flush_group(route_self=False)

    def _flush_group(self, route_self: bool) -> None:
        """Take everything pending (ending the flush promise), publish it, and
        hand the text of members that override ``_flush`` to their override.

        The take comes first, so text written meanwhile arms a new flush, and a
        member's text is never published past its override (it goes back to the
        front of the queue, where the override's ``_flush_buffers`` finds it).
        An override calling ``super()._flush()`` has its own text published here.
        """
        self._flush_pending = False
        self._subprocess_flush_pending = False
        self._flush_echo()
        group = self._group
        thread = self._link
        on_io_thread = thread is not None and thread.on_io_thread()
        # Whether the timer of the promise still comes after this flush (the
        # policy then keeps the promise, so writes meanwhile keep their fast
        # path: a progress bar that flushes every step wakes no thread).
        timer_runs = (
            on_io_thread
            and not self._timer_flushing
            and thread is not None
            and thread.running
            and not thread.stopping
        )
        # Take and publish under one lock: in a forked child the writing thread
        # and the IO thread may both flush, and must not reorder the text.
        with group.publish_lock:
            chunks, cancel = group.take_all(time.monotonic(), timer_runs)
            if cancel and on_io_thread and group.timer is not None:
                assert thread is not None
                thread.cancel_timer(group.timer)  # (timers are the IO thread's)
                group.timer = None
            overriders = self._overriders(chunks, route_self)
            if overriders:
                theirs = [chunk for chunk in chunks if chunk.owner in overriders]
                chunks = [chunk for chunk in chunks if chunk.owner not in overriders]
                group.requeue(theirs)
            self._publish(chunks)
            for owner, member in overriders.items():
                group.overrides_running.add(owner)
                try:
                    member._flush()
                except Exception:  # one broken override must not stop the others
                    logger.exception("iostream: %s's _flush failed", member.name)
                finally:
                    group.overrides_running.discard(owner)

    def _overriders(self, chunks: list[Chunk], route_self: bool) -> dict[int, OutStream]:
        """The live members owning ``chunks`` whose own ``_flush`` should publish them."""
        found: dict[int, OutStream] = {}
        group = self._group
        for owner in {chunk.owner for chunk in chunks}:
            member = group.members.get(owner)
            if (
                member is not None
                and member._flush_is_custom()
                and owner not in group.overrides_running
                and (route_self or member is not self)
            ):
                found[owner] = member
        return found

    def _publish_complete_lines(self) -> None:
        """Publish up to the last newline, keep the rest. Writing thread (without
        an IO thread, or in a forked child)."""
        group = self._group
        with group.publish_lock:  # another writing thread must not publish between
            chunks = group.take(time.monotonic())
            if chunks and chunks[-1].owner == self._owner:
                last = chunks.pop()
                lines, rest = complete_lines(last.text)
                chunks.append(Chunk(last.owner, last.parent, lines))
                if rest:  # (ahead of anything queued meanwhile: written first)
                    group.requeue([Chunk(last.owner, last.parent, rest)], time.monotonic())
            self._publish([chunk for chunk in chunks if chunk.text])

    def _publish(self, chunks: list[Chunk]) -> None:
        """Publish ``chunks`` in order. Where a KeyboardInterrupt can strike (a
        writing thread publishing: no IO thread, or a forked child), the chunks
        not yet sent go back to the front of the queue before it propagates."""
        if not chunks:
            return
        group = self._group
        with group.publish_lock:
            outer = group.publisher_ident
            group.publisher_ident = threading.get_ident()
            sent = 0
            try:
                for chunk in chunks:
                    stream = group.members.get(chunk.owner, self)
                    stream._publish_text(chunk.parent, chunk.text)
                    sent += 1
            except BaseException:
                group.requeue(chunks[sent:])
                raise
            finally:
                group.publisher_ident = outer

    def _publish_text(self, parent: Parent, text: str) -> None:
        """Send ``text`` as one or more stream messages. Never raises."""
        self._sink.publish(self, parent, make_publishable(text))

    def _send_messages(
        self, parent: Parent, text: str, send: Callable[[dict[str, str], Parent], None]
    ) -> None:
        """Send ``text`` as stream messages of at most ``max_message_chars``,
        each through ``send``. Never raises."""
        for piece in split_text(text, self.max_message_chars):
            content = {"name": self.name, "text": piece}
            try:
                send(content, parent)
            except Exception:
                logger.exception("iostream: publishing %s output failed", self.name)

    def _send_to_parent(self, parent: Parent, text: str) -> None:
        """From a forked child: hand ``text`` to the parent, which publishes it;
        returns once the operating system holds it. If the parent does not take
        it in time, the text goes to the original descriptor instead."""
        if not self._session_pid_set:
            self._set_session_pid()  # display() from a child must work too
        try:
            if any(parent is p for p in self._inherited_parents) and (
                not _forked_output_keeps_its_cell()
            ):
                packed = FOLLOW_RUNNING_CELL
            else:
                packed = self._group.pack_parent(parent)
            assert self._link is not None  # (a piping child has a thread)
            self._link.send_child_text(
                self._owner, self.name, packed, text, self._write_to_original
            )
        except Exception:
            logger.exception("iostream: handing %s output to the parent failed", self.name)

    def _send_without_thread(self, content: dict[str, str], parent: Parent) -> None:
        """One message of a stream without an IO thread. The first argument of
        ``session.send`` is the socket, as ipykernel passes it (``pub_thread``,
        None here): a real Session builds and signs the message and sends
        nothing, without an error."""
        self.session.send(None, "stream", content, parent=parent, ident=self.topic)

    def _send(self, content: dict[str, str], parent: Parent) -> None:
        """One message through the thread's socket, after the hooks."""
        session = self.session
        if not self._session_pid_set:
            self._set_session_pid()  # the thread, not Session, handles forks
        msg: dict[str, Any] | None = session.msg("stream", content, parent=parent)
        for hook in list(self._hooks):
            msg = self._run_hook(hook, msg) if msg is not None else None
        if msg is None:
            return  # a hook swallowed this message (only this one)
        session.send(self._publisher, msg, ident=self.topic)

    def _set_session_pid(self) -> None:
        """Make the session's ``pid`` this process's, once per process (a
        traitlets assignment). Publishing thread."""
        session = self.session
        if hasattr(session, "pid") and session.pid != os.getpid():
            session.pid = os.getpid()
        self._session_pid_set = True

    def _after_fork_in_child(self) -> None:
        # (forksafety) The session's pid is the parent's until the next send.
        self._session_pid_set = False
        # The parents this process inherited (of the forking context, and the
        # global one): text under them goes where a thread's would (see
        # _send_to_parent); a parent set in this process keeps its own.
        self._inherited_parents = (self._parent_header.get(_NO_CONTEXT), self._writer.parent_global)
        self._sink = _sink_for(self._publisher is not None, forked=True)

    def _run_hook(self, hook: Hook, msg: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return hook(msg)
        except Exception:
            logger.exception("iostream: output hook %r failed; message sent unchanged", hook)
            return msg

    # -- echo and the original stream ---------------------------------------

    def _echo_write(self, text: str) -> None:
        try:
            self._echo.write(text)
        except Exception as error:
            self._report_echo_failure(error)

    def _flush_echo(self) -> None:
        if self._echo is None:
            return
        try:
            self._echo.flush()
        except Exception as error:
            self._report_echo_failure(error)

    def _report_echo_failure(self, error: Exception) -> None:
        if not self._warned_echo:
            self._warned_echo = True
            logger.warning("iostream: echoing %s failed: %s", self.name, error)

    def _write_to_original(self, text: str) -> None:
        """Write where this stream's output would go without us. Never raises."""
        try:
            if self._capture is not None:
                os.write(self._capture.original_copy, text.encode("utf-8", "replace"))
                return
            original = getattr(sys, f"__{self.name}__", None) or sys.__stderr__
            if original is not None and original is not self:
                original.write(text)
        except Exception as error:
            self._report_echo_failure(error)

    # -- hooks ---------------------------------------------------------------

    @property
    def _hooks(self) -> list[Hook]:
        if self._link is not None and self._link.on_io_thread():
            return self._io_hooks
        hooks: list[Hook] | None = getattr(self._local, "hooks", None)
        if hooks is None:
            hooks = self._local.hooks = []
        return hooks

    def register_hook(self, hook: Hook) -> None:
        """Add a hook for flushes running on the calling thread (thread-local).

        ``hook(msg)`` returns the message to send, or None to swallow that message.
        """
        self._hooks.append(hook)

    def unregister_hook(self, hook: Hook) -> bool:
        """Remove a hook registered from the calling thread; return whether it was."""
        try:
            self._hooks.remove(hook)
        except ValueError:
            return False
        return True

    # -- fd capture ----------------------------------------------------------

    def _setup_stream_redirects(self, name: str) -> None:
        """Redirect the descriptor behind ``sys.<name>`` into a watched pipe."""
        try:
            fd = getattr(sys, name).fileno()
        except Exception:
            fd = _STD_FDS[name]
        self._original_stdstream_fd = fd
        self._capture = FdCapture(fd, self._buffer_from_fd, self.keep_write_order)
        self._original_stdstream_copy = self._capture.original_copy
        self._fid = self._capture.read_fd
        self._capture.start(self._watch_pipe_fd)
        self.watch_fd_thread = self._capture.thread
        if self.keep_write_order:
            # Text waiting in the pipe, or read and not yet delivered, is taken
            # in before a Python write (in order).
            for fd in (self._capture.read_fd, self._capture.busy.fd):
                self._group.inlets.add(fd, self._capture.sync)

    def _end_fd_capture(self) -> None:
        """Stop capturing the fd: restore it and publish (or, with no way left to
        publish, echo) what is still in the pipe. The stream stays usable; the
        original's copy stays open for :meth:`fileno` and echo until :meth:`close`.
        Runs on the thread that stopped the IO thread, once it has stopped."""
        group = self._group
        thread = self._link
        if thread is not None:  # (the thread stopped: its channel closes)
            for fd in group.children_fds:
                group.inlets.remove(fd, thread.take_in_children)
        group.children_fds = ()
        if self._capture is not None:
            self._should_watch = False
            self._forget_capture_inlets()
            self._capture.stop(self.flush_timeout)
            # Through the protocol, never a direct _flush: a stopped thread runs it
            # inline under its lock first (the lock order), and a thread stuck in a
            # publish (the stop timeout) gets it queued instead of blocking stop().
            self._run_on(self._link, self._flush)

    def _forget_capture_inlets(self) -> None:
        """Stop taking in from the capture's pipe (before it is closed)."""
        if self._capture is not None:
            for fd in (self._capture.read_fd, self._capture.busy.fd):
                self._group.inlets.remove(fd, self._capture.sync)

    def _watch_pipe_fd(self) -> None:
        """Reader thread body: publish and echo what arrives on the pipe."""
        if self._capture is not None:
            self._capture.read_loop()

    # -- ipykernel compatibility: names that exist only for consumers -----------
    #
    # Gathered here (docs/compat.md says who uses each). Besides these methods:
    # the instance attributes ``_master_pid``, ``_flush_pending``,
    # ``_subprocess_flush_pending``, ``_should_watch`` and, once fd capture is set
    # up, ``watch_fd_thread``, ``_fid``, ``_original_stdstream_fd`` and
    # ``_original_stdstream_copy`` (ipykernel's kernelapp probes the last one with
    # hasattr and opens it); the class attribute ``_exc``; ``pub_thread``.

    @property
    def _thread_to_parent_header(self) -> dict[int | None, Parent]:
        """Thread ident to the parent its output goes to (ipykernel 6.29's map)."""
        return self._writer.thread_headers

    @_thread_to_parent_header.setter
    def _thread_to_parent_header(self, value: dict[int | None, Parent]) -> None:
        self._writer.thread_headers = value

    @property
    def _thread_to_parent(self) -> dict[int | None, int | None]:
        """Thread ident to the ident of the thread that started it (ipykernel 6.29's map)."""
        return self._writer.thread_links

    @_thread_to_parent.setter
    def _thread_to_parent(self, value: dict[int | None, int | None]) -> None:
        self._writer.thread_links = value

    @property
    def _parent_header_global(self) -> Parent:
        """The parent of threads and contexts that set none (ipykernel's attribute)."""
        return self._writer.parent_global

    @_parent_header_global.setter
    def _parent_header_global(self, value: Parent) -> None:
        self._writer.parent_global = value

    def _flush_buffers(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Remove and yield this stream's pending ``(parent, text)`` pairs."""
        for chunk in self._group.take(time.monotonic(), owner=self._owner):
            yield dict(chunk.parent), chunk.text

    def _is_master_process(self) -> bool:
        """ipykernel's check; the library itself learns of forks from forksafety."""
        return os.getpid() == self._master_pid


#: :attr:`OutStream.parent_header` as defined here (see :meth:`OutStream.set_parent`).
_OWN_PARENT_HEADER = OutStream.__dict__["parent_header"]


def _forked_output_keeps_its_cell() -> bool:
    """Whether a forked child's output stays with the cell that forked it, rather
    than going to the cell running when it arrives.

    A forked child follows the rule of the kernel's threads, as if it were a
    thread started at the fork: ipykernel 7's rule (a thread that set no parent
    prints into the running cell), unless threads inherit their starter's
    context (:mod:`iostream.threadcontext` enabled: the cell that forked it), or
    ipykernel 6 is the kernel (its own rule: the cell that forked it). Any thread.
    """
    threadcontext = sys.modules.get("iostream.threadcontext")
    if threadcontext is not None and threadcontext.enabled():
        return True
    version = getattr(sys.modules.get("ipykernel"), "version_info", None)
    return isinstance(version, tuple) and bool(version) and version[0] < 7


# The handlers of forked children's text, one pair per group (the thread holds
# them: bound to the group, not to a stream that may be collected).


def _io_receive_child_text(
    group: StreamGroup, owner: int, name: str, parent: Parent | None, text: str
) -> None:
    """Buffer text a forked child wrote to its copy of one of ``group``'s streams;
    ``parent`` None: under the cell running now (see
    :func:`_forked_output_keeps_its_cell`).

    IO thread only (the thread's child text handler).
    """
    stream = group.members.get(owner)
    if stream is None or stream.name != name:  # (an id may have been reused)
        stream = next((s for s in group.live_members() if s.name == name), None)
    if stream is None:
        logger.warning("iostream: dropped %s output of a child: no such stream", name)
        return
    if parent is None:
        parent = stream._writer.parent_global
    stream._buffer_under(parent, text, source="child")


def _io_publish_pending(group: StreamGroup) -> None:
    """Publish what is pending in ``group`` now (a child's text before its next
    message). IO thread only (the thread's child text publisher)."""
    if group.backlog():
        stream = next(iter(group.live_members()), None)
        if stream is not None:
            stream._flush_whole_group()


# -- the output path, chosen once per process state -----------------------------


class _Sink:
    """Where a stream's text goes in one process state, chosen when the stream
    is made and swapped at fork, so the flush and publish paths ask no mode
    questions: no thread (publish on the writing thread), an IO thread (flush
    there), a forked child (hand lines to the parent). When to publish is the
    flush policy's answer, not the sink's. Stateless: one instance of each,
    shared by every stream."""

    def flush(self, stream: OutStream, deadline: float) -> bool:
        """Publish what is pending; whether that was done by ``deadline``."""
        raise NotImplementedError

    def publish(self, stream: OutStream, parent: Parent, text: str) -> None:
        """Send ``text``, taken from the buffer, on its way. Never raises."""
        stream._send_messages(parent, text, stream._send)

    def relieve(self, stream: OutStream) -> None:
        """The backlog passed the memory bound: publish it, on the writing
        thread or waiting (bounded) for the thread that publishes."""
        stream.flush()


class _NoThread(_Sink):
    """No IO thread (``OutStream(session, None, name)``): the writing thread
    publishes through ``session.send`` (at each newline, as the policy of a
    line-buffered group answers; at the memory bound, ``flush()`` and
    ``close()``)."""

    def flush(self, stream: OutStream, deadline: float) -> bool:
        stream._flush()
        return True

    def publish(self, stream: OutStream, parent: Parent, text: str) -> None:
        stream._send_messages(parent, text, stream._send_without_thread)


class _OnThread(_Sink):
    """An IO thread publishes, when its timer finds the policy's flush due;
    ``flush()`` waits for the thread. While the thread is not running (before
    ``start``, after ``stop``) calls run inline, serialised by the thread."""

    def flush(self, stream: OutStream, deadline: float) -> bool:
        thread = stream._link
        if thread is None or thread.on_io_thread() or not thread.running:
            stream._run_on(thread, stream._flush)
            return True
        done = Completion()
        # What forked children sent before this flush goes with it, to the cell
        # running now (their text follows the running cell: _send_to_parent).
        thread.take_in_children(0.0, wait=False)
        thread.schedule(stream._flush)
        thread.schedule(done.set)
        return done.wait(max(0.0, deadline - _monotonic()))


class _ForkedChild(_Sink):
    """A forked child of a process whose streams publish through a thread. Its
    group is line-buffered (the policy's answer), as a terminal is: complete
    lines go to the parent at once
    (which batches them; pools kill their workers without a flush), a partial
    line at the next newline, ``flush()`` or exit. Whole lines keep children
    writing at once from interleaving. With ``pipe=True`` the text goes to the
    parent's channel, on the writing thread; ``flush()`` returns once the parent
    has it."""

    def flush(self, stream: OutStream, deadline: float) -> bool:
        stream._flush()  # hands the text to the parent's channel, on this thread
        thread = stream._link
        return thread is None or thread.wait_delivered(max(0.0, deadline - _monotonic()))

    def relieve(self, stream: OutStream) -> None:
        # Handed to the channel, whose sends wait (bounded) while the parent's
        # buffer is full: no need to wait for the parent to have read it.
        stream._flush()

    def publish(self, stream: OutStream, parent: Parent, text: str) -> None:
        thread = stream._link
        if thread is not None and thread.pipes_to_parent:
            stream._send_to_parent(parent, text)
        else:  # (no channel: the thread says why it drops the message)
            stream._send_messages(parent, text, stream._send)


NO_THREAD: _Sink = _NoThread()
ON_THREAD: _Sink = _OnThread()
FORKED_CHILD: _Sink = _ForkedChild()


def _sink_for(has_thread: bool, forked: bool) -> _Sink:
    """The output path of a stream, chosen when it is made and again at fork."""
    if not has_thread:
        return NO_THREAD
    return FORKED_CHILD if forked else ON_THREAD
