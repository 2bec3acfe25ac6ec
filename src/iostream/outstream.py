"""OutStream: a text file whose writes are published as Jupyter ``stream`` messages.

Thread affinity: ``write``, ``writelines``, ``flush``, ``close``, the parent and hook
methods may be called from any thread. Methods whose names start with ``_io_`` run
on the IO thread only. ``_flush`` runs on the IO thread, or on the calling thread
when there is no running IO thread (before ``start``, after ``stop``, without a
thread at all).

Streams that publish through the same thread share one ordered buffer (a
``_StreamGroup``), so text written to stdout and then stderr under one parent
arrives in that order.
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
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jupyter_client.session import extract_header

from . import forksafety
from .core import DEFAULT_MAX_MESSAGE_CHARS, Chunk, FlushPolicy, OutputBuffer, Parent
from .core import complete_lines, make_publishable, split_text
from .fdcapture import FdCapture
from .iothread import IOPubThread

logger = logging.getLogger("iostream")

Hook = Callable[[dict[str, Any]], "dict[str, Any] | None"]
_STD_FDS = {"stdout": 1, "stderr": 2}


class _StreamGroup:
    """The shared buffer of the streams that publish through one thread or session.

    ``lock`` guards ``buffer``, ``policy`` and ``armed`` (any thread); ``timer`` is
    IO-thread-only; ``local.publishing`` marks a thread that is publishing, so
    output it produces meanwhile goes to the original stream instead of looping.
    """

    def __init__(self) -> None:
        self.members: weakref.WeakValueDictionary[int, OutStream] = weakref.WeakValueDictionary()
        self._renew()
        forksafety.register(self)

    def _renew(self) -> None:
        self.lock = threading.Lock()
        self.publish_lock = threading.RLock()
        self.buffer = OutputBuffer()
        self.policy = FlushPolicy()
        self.armed = False
        self.timer: object | None = None
        self.local = threading.local()

    def _after_fork_in_child(self) -> None:
        # The parent's pending text is the parent's to publish, not the child's.
        self._renew()

    def take(self, now: float, owner: int | None = None) -> list[Chunk]:
        """Remove the pending text (of ``owner`` only, if given). Any thread."""
        with self.lock:
            chunks = self.buffer.drain(owner)
            if owner is None:
                self.armed = False
            if chunks:
                self.policy.flushed(now)
        return chunks

    def is_publishing(self) -> bool:
        """Whether the calling thread is inside a publish of this group."""
        return getattr(self.local, "publishing", False)


_groups: weakref.WeakKeyDictionary[Any, _StreamGroup] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def _group_for(key: Any) -> _StreamGroup:
    with _groups_lock:
        try:
            group = _groups.get(key)
            if group is None:
                group = _groups[key] = _StreamGroup()
            return group
        except TypeError:  # not weak-referenceable or not hashable: no sharing
            return _StreamGroup()


def _thread_running(pub_thread: Any) -> bool:
    thread = getattr(pub_thread, "thread", None)
    return thread is not None and thread.is_alive()


def _on_thread_of(pub_thread: Any) -> bool:
    thread = getattr(pub_thread, "thread", None)
    return thread is not None and thread.ident == threading.get_ident()


class OutStream(io.TextIOBase):
    """A file-like object that publishes what is written to it on IOPub.

    ``OutStream(session, pub_thread, name)`` as in ipykernel; the seed documents'
    ``OutStream(name, session, None)`` works too. Without a thread, text is
    published on the writing thread through ``session.send(name, "stream",
    content, parent=..., ident=topic)`` at each newline, ``flush()`` and ``close()``.
    """

    #: Seconds ``flush()`` waits for the IO thread before giving up.
    flush_timeout: float = 10
    #: Seconds between flushes while output keeps coming.
    flush_interval: float = 0.2
    #: Upper bound on the text of one stream message (characters).
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
    #: Pending text above which ``write`` waits for a flush (bounds memory).
    max_buffer_chars: int = 4 * DEFAULT_MAX_MESSAGE_CHARS
    topic: bytes | None = None
    encoding = "UTF-8"
    _original_stdstream_copy: int | None = None
    _original_stdstream_fd: int | None = None
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
        self.name = name
        self.topic = b"stream." + name.encode()
        self._parent_header: contextvars.ContextVar[Parent] = contextvars.ContextVar(
            f"parent_header_{name}"
        )
        self._parent_header.set({})
        self._parent_header_global: Parent = {}
        self._master_pid = os.getpid()
        self._flush_pending = False
        self._subprocess_flush_pending = False
        self._local = threading.local()
        self._isatty = bool(isatty)
        self._closed = False
        self._capture: FdCapture | None = None
        self._warned_echo = False
        self._group = _group_for(pub_thread if pub_thread is not None else session)
        self._owner = id(self)
        self._group.members[self._owner] = self
        if hasattr(pub_thread, "add_stop_callback"):
            pub_thread.add_stop_callback(self._flush)
        self._should_watch = self._wants_fd_capture(watchfd)
        if self._should_watch:
            self._setup_stream_redirects(name)
        self.echo: Any = self._echo_target(echo)

    def _wants_fd_capture(self, watchfd: bool | str) -> bool:
        if watchfd == "force":
            return True
        return bool(
            watchfd
            and self._publisher is not None
            and sys.platform.startswith(("linux", "darwin"))
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
            if echo_fd == self._original_stdstream_fd:
                # Echoing to the captured fd would feed our own pipe: use the copy.
                raw = io.FileIO(self._capture.original_copy, "w", closefd=False)
                return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)
        return echo

    # -- parent routing ----------------------------------------------------

    @property
    def parent_header(self) -> Parent:
        """The parent of the current context (thread or task), else the global one."""
        try:
            return self._parent_header.get()
        except LookupError:
            return self._parent_header_global

    @parent_header.setter
    def parent_header(self, value: Parent) -> None:
        self._parent_header.set(value)
        self._parent_header_global = value

    def set_parent(self, parent: Any) -> None:
        """Set the parent for the current context and as the global fallback."""
        self.parent_header = extract_header(parent)

    def set_thread_parent(self, parent: Any) -> contextvars.Token[Parent]:
        """Set the parent for the calling thread or context only; returns a token."""
        return self._parent_header.set(extract_header(parent))

    def reset_thread_parent(self, token: contextvars.Token[Parent]) -> None:
        """Undo the :meth:`set_thread_parent` call that returned ``token``."""
        self._parent_header.reset(token)

    # -- TextIOBase --------------------------------------------------------

    @property
    def closed(self) -> bool:  # type: ignore[override]
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
        if self._original_stdstream_copy is not None:
            return self._original_stdstream_copy
        raise io.UnsupportedOperation("fileno")

    def write(self, string: str) -> int:  # type: ignore[override]
        """Buffer ``string`` for publishing under the current parent. Any thread.

        Raises TypeError for a non-str and ValueError once closed. Text written
        while this thread is publishing (a session or hook that prints) goes to
        the original stream instead, so it cannot loop.
        """
        if not isinstance(string, str):
            raise TypeError(f"write() argument must be str, not {type(string).__name__}")
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if self.echo is not None:
            self._echo_write(string)
        if self._group.is_publishing():
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

        Waits at most ``flush_timeout`` seconds for the IO thread.
        """
        if self._closed:
            return
        thread = self._publisher
        if thread is None or _on_thread_of(thread) or not _thread_running(thread):
            self._run_on(thread, self._flush)
            return
        done = threading.Event()
        thread.schedule(self._flush)
        thread.schedule(done.set)
        if not done.wait(self.flush_timeout):
            print("IOStream.flush timed out", file=sys.__stderr__)

    def close(self) -> None:
        """Publish everything written so far, stop fd capture, close. Idempotent."""
        if self._closed:
            return
        if self._capture is not None:
            self._should_watch = False
            self._capture.close(self.flush_timeout)
        try:
            self.flush()
        finally:
            self._closed = True
            self.pub_thread = None

    # -- buffering -----------------------------------------------------------

    def _buffer_text(self, text: str) -> None:
        """Add text under the current parent and make sure a flush will come."""
        group = self._group
        parent = self.parent_header
        with group.lock:
            group.buffer.append(self._owner, parent, text)
            backlog = group.buffer.pending_chars
            arm = not group.armed
            if arm:
                group.armed = True
                delay = group.policy.delay(time.monotonic(), self.flush_interval)
        if self._publisher is None:
            if "\n" in text:
                self._publish_complete_lines()
        elif arm:
            self._flush_pending = True
            self._arm_flush(delay)
        elif backlog > self.max_buffer_chars:
            self.flush()

    def _arm_flush(self, delay: float) -> None:
        thread = self._publisher
        if _thread_running(thread):
            thread.schedule(functools.partial(self._io_arm_timer, delay))
        else:
            self._run_on(thread, self._flush)

    def _io_arm_timer(self, delay: float) -> None:
        if getattr(self._publisher, "stopping", False):
            self._flush()  # the loop is about to end; a timer would never fire
            return
        group = self._group
        loop = self._publisher.io_loop
        if group.timer is not None:
            loop.remove_timeout(group.timer)
        group.timer = loop.call_later(delay, self._flush)

    def _run_on(self, thread: Any, f: Callable[[], None]) -> None:
        if thread is None or _on_thread_of(thread):
            f()
        else:
            thread.schedule(f)

    # -- publishing ----------------------------------------------------------

    def _flush(self) -> None:
        """Publish everything pending in this stream's group. IO thread (see module)."""
        self._flush_pending = False
        self._subprocess_flush_pending = False
        self._flush_echo()
        group = self._group
        if group.timer is not None and _on_thread_of(self._publisher):
            self._publisher.io_loop.remove_timeout(group.timer)
            group.timer = None
        self._publish(group.take(time.monotonic()))

    def _publish_complete_lines(self) -> None:
        """Without a thread: publish up to the last newline, keep the rest."""
        group = self._group
        chunks = group.take(time.monotonic())
        if chunks and chunks[-1].owner == self._owner:
            last = chunks.pop()
            lines, rest = complete_lines(last.text)
            chunks.append(Chunk(last.owner, last.parent, lines))
            if rest:
                with group.lock:
                    group.buffer.append(self._owner, last.parent, rest)
                    group.armed = True
        self._publish([chunk for chunk in chunks if chunk.text])

    def _flush_buffers(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Remove and yield this stream's pending ``(parent, text)`` pairs."""
        for chunk in self._group.take(time.monotonic(), owner=self._owner):
            yield dict(chunk.parent), chunk.text

    def _publish(self, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        group = self._group
        with group.publish_lock:
            group.local.publishing = True
            try:
                for chunk in chunks:
                    stream = group.members.get(chunk.owner, self)
                    stream._publish_text(chunk.parent, chunk.text)
            finally:
                group.local.publishing = False

    def _publish_text(self, parent: Parent, text: str) -> None:
        """Send ``text`` as one or more stream messages. Never raises."""
        for piece in split_text(make_publishable(text), self.max_message_chars):
            content = {"name": self.name, "text": piece}
            try:
                self._send(content, parent)
            except Exception:
                logger.exception("iostream: publishing %s output failed", self.name)

    def _send(self, content: dict[str, str], parent: Parent) -> None:
        session = self.session
        if self._publisher is None:
            session.send(self.name, "stream", content, parent=parent, ident=self.topic)
            return
        if hasattr(session, "pid"):
            session.pid = os.getpid()  # the thread, not Session, handles forks
        msg: dict[str, Any] | None = session.msg("stream", content, parent=parent)
        for hook in list(self._hooks):
            msg = self._run_hook(hook, msg)
            if msg is None:
                return
        session.send(self._publisher, msg, ident=self.topic)

    def _run_hook(self, hook: Hook, msg: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return hook(msg)
        except Exception:
            logger.exception("iostream: output hook %r failed; message sent unchanged", hook)
            return msg

    # -- echo and the original stream ---------------------------------------

    def _echo_write(self, text: str) -> None:
        try:
            self.echo.write(text)
        except Exception as error:
            self._report_echo_failure(error)

    def _flush_echo(self) -> None:
        if self.echo is None:
            return
        try:
            self.echo.flush()
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
        self._capture = FdCapture(fd, self._buffer_text)
        self._original_stdstream_copy = self._capture.original_copy
        self._fid = self._capture.read_fd
        self._capture.start(self._watch_pipe_fd)
        self.watch_fd_thread = self._capture.thread

    def _watch_pipe_fd(self) -> None:
        """Reader thread body: publish and echo what arrives on the pipe."""
        if self._capture is not None:
            self._capture.read_loop()

    def _is_master_process(self) -> bool:
        return os.getpid() == self._master_pid
