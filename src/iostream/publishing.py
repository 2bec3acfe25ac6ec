"""Buffering, flushing and sending of OutStream (a mixin of it).

``_flush`` runs on the IO thread, or on the calling thread when there is no
running IO thread (before ``start``, after ``stop``, without a thread at all).
Methods whose names start with ``_io_`` run on the IO thread only.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .core import Chunk, Parent, complete_lines, make_publishable, split_text
from .fdcapture import FdCapture
from .streamgroup import _StreamGroup
from .threadlink import IOThread
from .writepath import _FastWriter

logger = logging.getLogger("iostream")
_monotonic = time.monotonic

Hook = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class Publishing:
    """What :class:`~iostream.OutStream` does with text once it is written."""

    if TYPE_CHECKING:
        name: str
        session: Any
        topic: bytes | None
        flush_interval: float
        max_message_chars: int
        max_buffer_chars: int
        _group: _StreamGroup
        _link: IOThread | None
        _publisher: Any
        _owner: int
        _writer: _FastWriter
        _echo: Any
        _capture: FdCapture | None
        _io_hooks: list[Hook]
        _local: threading.local
        _timer_flushing: bool
        _flush_pending: bool
        _subprocess_flush_pending: bool
        _warned_echo: bool
        _session_pid_set: bool

        def flush(self) -> None: ...

        def _current_parent(self) -> Parent: ...

    def _buffer_text(self, text: str) -> None:
        """Add text under the current parent and make sure a flush will come."""
        self._buffer_under(self._current_parent(), text)

    def _buffer_under(self, parent: Parent, text: str, from_child: bool = False) -> None:
        """Add text under ``parent`` and make sure a flush will come. Any thread.

        ``from_child``: the text is lines a forked child wrote (see
        :meth:`~iostream.core.OutputBuffer.insert_lines`); IO thread only.
        """
        group = self._group
        if from_child:
            group.add_lines(self._owner, parent, text)
        else:
            group.add(self._owner, parent, text)
        if group.forked and self._publisher is not None:
            # A forked child is line-buffered, as a terminal is: complete lines go
            # to the parent at once (which batches them; pools kill their workers
            # without a flush), a partial line at the next newline, flush() or
            # exit. Whole lines keep children writing at once from interleaving.
            if "\n" in text:
                self._publish_complete_lines()
            elif group.backlog() > self.max_message_chars:
                self._flush()
        else:
            self._promise_flush(text)

    def _promise_flush(self, text: str) -> None:
        """Make sure a flush will come for ``text``, just queued. Any thread."""
        group = self._group
        self._writer.limit = self.max_buffer_chars
        ticket = group.promise(_monotonic(), self.flush_interval, bool(text))
        if self._publisher is None:
            if "\n" in text:
                self._publish_complete_lines()
        elif ticket:
            self._flush_pending = True
            if self._arm_flush():
                group.mark_hot(_monotonic(), ticket)
        elif group.backlog() > self.max_buffer_chars:
            self.flush()

    def _in_piping_child(self) -> bool:
        """Whether this is a forked child whose thread pipes output to the parent."""
        return self._group.forked and self._link is not None and self._link.pipes_to_parent

    def _arm_flush(self) -> bool:
        """Have the IO thread's timer flush; True if it will (else flushed here)."""
        thread = self._link
        if thread is not None and thread.running:
            thread.schedule(self._io_on_timer)
            # The licence relies on the timer running before the thread stops.
            return thread.drains_before_stop
        self._run_on(thread, self._flush)
        return False

    def _io_on_timer(self) -> None:
        """Flush if due, else check again when it may be. IO thread only."""
        thread = self._link
        assert thread is not None  # (only a thread runs timers)
        delay = self._group.delay(_monotonic(), self.flush_interval)
        if delay is None:
            return  # flushed meanwhile
        if delay <= 0 or thread.stopping:
            self._timer_flushing = True  # the promised flush: it ends the licence
            try:
                self._flush_whole_group()  # (a stopping loop would never run the timer)
            finally:
                self._timer_flushing = False
            return
        group = self._group
        if group.timer is not None:
            thread.cancel_timer(group.timer)
        group.timer = thread.call_later(delay, self._io_on_timer)

    def _flush_is_custom(self) -> bool:
        """Whether this stream's class overrides :meth:`_flush`. Any thread."""
        return type(self)._flush is not Publishing._flush

    def _flush_whole_group(self) -> None:
        """Publish everything pending in the group, this stream's text included
        through its own ``_flush`` where its class overrides it; ends the flush
        promise. The timer's flush and the stop callback. Where :meth:`_flush` runs."""
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
        # A flush other than the timer's own, on a running thread of ours, leaves
        # the timer's promise in force: the timer still comes, and writes
        # meanwhile keep their fast path (a progress bar that flushes every step
        # arms nothing and wakes no thread). Stopping revokes it (stop callback).
        keep_licence = (
            on_io_thread
            and not self._timer_flushing
            and thread is not None
            and thread.drains_before_stop
            and thread.running
            and not thread.stopping
        )
        if group.timer is not None and not keep_licence and on_io_thread:
            assert thread is not None
            thread.cancel_timer(group.timer)
            group.timer = None
        # Take and publish under one lock: in a forked child the writing thread
        # and the IO thread may both flush, and must not reorder the text.
        with group.publish_lock:
            chunks = group.take(time.monotonic(), keep_licence=keep_licence)
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

    def _overriders(self, chunks: list[Chunk], route_self: bool) -> dict[int, Publishing]:
        """The live members owning ``chunks`` whose own ``_flush`` should publish them."""
        found: dict[int, Publishing] = {}
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

    def _flush_buffers(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Remove and yield this stream's pending ``(parent, text)`` pairs."""
        for chunk in self._group.take(time.monotonic(), owner=self._owner):
            yield dict(chunk.parent), chunk.text

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
        text = make_publishable(text)
        if self._in_piping_child():
            self._send_to_parent(parent, text)
            return
        for piece in split_text(text, self.max_message_chars):
            content = {"name": self.name, "text": piece}
            try:
                self._send(content, parent)
            except Exception:
                logger.exception("iostream: publishing %s output failed", self.name)

    def _send_to_parent(self, parent: Parent, text: str) -> None:
        """From a forked child: hand ``text`` to the parent, which publishes it;
        returns once the operating system holds it. If the parent does not take
        it in time, the text goes to the original descriptor instead."""
        if not self._session_pid_set:
            self._set_session_pid()  # display() from a child must work too
        try:
            packed = self._group.pack_parent(parent)
            assert self._link is not None  # (a piping child has a thread)
            self._link.send_child_text(
                self._owner, self.name, packed, text, self._write_to_original
            )
        except Exception:
            logger.exception("iostream: handing %s output to the parent failed", self.name)

    def _send(self, content: dict[str, str], parent: Parent) -> None:
        session = self.session
        if self._publisher is None:
            # The first argument is the socket, as ipykernel passes it
            # (``self.pub_thread``, None here): a real Session then builds and
            # signs the message and sends nothing, without an error.
            session.send(None, "stream", content, parent=parent, ident=self.topic)
            return
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
