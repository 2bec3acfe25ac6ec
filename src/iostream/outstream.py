"""OutStream: a text file whose writes are published as Jupyter ``stream`` messages.

Thread affinity: ``write``, ``writelines``, ``flush``, ``close``, the parent and hook
methods may be called from any thread. Methods whose names start with ``_io_`` run
on the IO thread only. ``_flush`` runs on the IO thread, or on the calling thread
when there is no running IO thread (before ``start``, after ``stop``, without a
thread at all).

Streams that publish through the same thread share one ordered buffer (a
``_StreamGroup``, :mod:`iostream.streamgroup`), so text written to stdout and then
stderr under one parent arrives in that order. The class is assembled from
:mod:`iostream.parents` (parent routing), :mod:`iostream.publishing` (buffering,
flushing, sending, hooks, echo) and :mod:`iostream.writepath` (the write path);
it talks to its thread through :mod:`iostream.threadlink` only.

Cross-thread handshakes, stated once. Nothing rests on the GIL except the write
fast path, which is taken only where the GIL is enabled (:data:`LOCK_FREE_WRITES`):

* the group's ``incoming`` deque and ``flow`` (the flush state) change under the
  group's ``lock``; only the fast path appends and reads ``flow.licensed``
  without it;
* text is handed to the IO thread with ``schedule`` (a deque under the thread's
  lock); a waiter is released by :class:`~iostream.completion.Completion`;
* ``publisher_ident`` is stored by the publishing thread under ``publish_lock``
  and compared by others only with their own ident.

The lock order (a thread holding one may take only those after it):

1. the thread's ``_inline_lock`` (a call run inline, without a running thread);
2. the group's ``publish_lock`` (take and publish, in order);
3. the group's ``lock`` (the buffer, ``incoming`` and ``flow``);
4. the thread's ``_lock`` (its queue and state), a child channel's send lock, a
   ``Completion``: leaves, under which nothing else is taken.

(``_groups_lock`` is taken alone, when a stream is made.) The group's ``lock`` and
the thread's ``_lock`` are taken on writing threads through
:func:`iostream.locking.locked`, so no KeyboardInterrupt can leave them held.
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from typing import Any

from . import forksafety
from .completion import Completion
from .core import DEFAULT_MAX_MESSAGE_CHARS, Parent
from .fdcapture import FdCapture
from .iothread import IOPubThread
from .parents import ParentRouting
from .publishing import Hook, Publishing
from .streamgroup import _group_for
from .threadlink import IOThread, link
from .writepath import LOCK_FREE_WRITES, _FastWriter

_monotonic = time.monotonic
_get_ident = threading.get_ident
_STD_FDS = {"stdout": 1, "stderr": 2}

__all__ = ["LOCK_FREE_WRITES", "Hook", "OutStream"]


class OutStream(ParentRouting, Publishing, io.TextIOBase):
    """A file-like object that publishes what is written to it on IOPub.

    ``OutStream(session, pub_thread, name)`` as in ipykernel; the name-first form
    ``OutStream("stdout", session, None)`` works too. Without a thread, text is
    published on the writing thread through ``session.send(None, "stream",
    content, parent=..., ident=topic)`` at each newline, ``flush()`` and ``close()``.
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
        self._group = _group_for(pub_thread if pub_thread is not None else session)
        self._owner = id(self)
        # Before anything can write (the fd reader below): holds the global parent.
        self._writer = _FastWriter(self)
        self._group.join(self._owner, self)
        if self._link is not None:
            self._link.add_stop_callback(self._flush_whole_group)
            # Once the thread has stopped, the process prints normally again.
            self._link.add_stopped_callback(self._end_fd_capture)
            group = self._group
            self._link.set_child_text_handler(
                group._io_receive_child_text, group._io_publish_pending
            )
        self._should_watch = self._wants_fd_capture(watchfd)
        if self._should_watch:
            self._setup_stream_redirects(name)
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

    def _after_fast_append(self, string: str) -> None:
        """The fast path appended ``string`` but found the flush gone or the backlog full."""
        if not self._group.flow.licensed:  # taken meanwhile: maybe not with our text
            self._promise_flush(string)
        else:
            self.flush()  # bounds memory: the writer waits for the IO thread

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
            self._buffer_text(string)
        return len(string)

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
        if self._in_piping_child():
            self._flush()  # hands the text to the parent's channel, on this thread
            if thread is not None and not thread.wait_delivered(max(0.0, deadline - _monotonic())):
                print("IOStream.flush timed out", file=sys.__stderr__)
            return
        if thread is None or thread.on_io_thread() or not thread.running:
            self._run_on(thread, self._flush)
            return
        done = Completion()
        thread.schedule(self._flush)
        thread.schedule(done.set)
        if not done.wait(max(0.0, deadline - _monotonic())):
            print("IOStream.flush timed out", file=sys.__stderr__)

    def close(self) -> None:
        """Publish everything written so far, stop fd capture, close. Idempotent."""
        if self._closed:
            return
        if self._capture is not None:
            self._should_watch = False
            self._capture.close(self.flush_timeout)
        self._writer.group = None  # from now on every write raises
        try:
            self.flush()
        finally:
            self._closed = True
            self.pub_thread = None

    # -- fd capture ----------------------------------------------------------

    def _setup_stream_redirects(self, name: str) -> None:
        """Redirect the descriptor behind ``sys.<name>`` into a watched pipe."""
        try:
            fd = getattr(sys, name).fileno()
        except Exception:
            fd = _STD_FDS[name]
        self._original_stdstream_fd = fd
        self._capture = FdCapture(fd, self._buffer_text)
        self._original_stdstream_copy = self._capture.original_copy
        self._fid = self._capture.read_fd
        self._capture.start(self._watch_pipe_fd)
        self.watch_fd_thread = self._capture.thread

    def _end_fd_capture(self) -> None:
        """Stop capturing the fd: restore it and publish (or, with no way left to
        publish, echo) what is still in the pipe. The stream stays usable; the
        original's copy stays open for :meth:`fileno` and echo until :meth:`close`.
        Runs on the thread that stopped the IO thread, once it has stopped."""
        if self._capture is not None:
            self._should_watch = False
            self._capture.stop(self.flush_timeout)
            # Through the protocol, never a direct _flush: a stopped thread runs it
            # inline under its lock first (the lock order), and a thread stuck in a
            # publish (the stop timeout) gets it queued instead of blocking stop().
            self._run_on(self._link, self._flush)

    def _watch_pipe_fd(self) -> None:
        """Reader thread body: publish and echo what arrives on the pipe."""
        if self._capture is not None:
            self._capture.read_loop()

    def _is_master_process(self) -> bool:
        return os.getpid() == self._master_pid
