"""The link of a forked child to its parent process (a mixin of IOPubThread).

With ``IOPubThread(..., pipe=True)``, a forked child sends its output over one
connection to the parent (:mod:`iostream.subprocess_pipe`). :class:`ChildLink` is
that part of :class:`iostream.IOPubThread`: renewing the per-process state after
a fork (through :mod:`iostream.forksafety`, the one fork detector), connecting,
handing stream text over, waiting for delivery. Any thread.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .subprocess_pipe import PipeClient, PipeServer, TextHandler

#: What ``_check_mp_mode`` returns in the parent (ipykernel's constants).
MASTER = 0
#: What ``_check_mp_mode`` returns in a forked child that pipes to its parent.
CHILD = 1


class ChildLink:
    """The forked-child side of :class:`iostream.IOPubThread` (see the module)."""

    if TYPE_CHECKING:
        _forked: bool
        _events: deque[Any]
        _pipe_server: PipeServer | None
        _pipe_client: PipeClient | None
        _parent_pipe: tuple[str, bytes] | None
        _child_needs_thread: bool
        _child_start_lock: threading.Lock
        _lock: threading.Lock
        _child_text_handler: TextHandler | None
        _child_text_publish: Callable[[], None] | None

        _master_pid: int
        _pipe_flag: bool

        def _init_process_state(self) -> None: ...

        def _is_new(self) -> bool: ...

        def start(self) -> None: ...

    def wait_delivered(self, timeout: float) -> bool:
        """In a forked child, wait until the parent has every message sent so far.

        In the parent process messages are on the socket once sent: True at once.
        Any thread.
        """
        client = self._pipe_client
        if client is None or not self._forked:
            return True
        return client.wait_delivered(timeout)

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

    @property
    def pipes_to_parent(self) -> bool:
        """Whether this is a forked child whose output goes to the parent's pipe."""
        return self._parent_pipe is not None and self._forked

    def send_child_text(self, owner: int, name: str, parent: bytes, text: str) -> None:
        """In a forked child, hand stream text to the parent on the calling thread.

        Once this returns the text is queued on the child's one connection to the
        parent; :meth:`flush` waits until the parent has it. Any thread, forked
        children only (see :attr:`pipes_to_parent`).
        """
        if self._pipe_client is None:
            self._start_child_thread()  # also after stop(): text flushed at exit
        client = self._pipe_client
        if client is None:
            raise RuntimeError("send_child_text() needs a forked child of a pipe=True thread")
        client.send_text(owner, name, parent, text)

    def _after_fork_in_child(self) -> None:
        """Renew per-process state; the parent's sockets are left untouched."""
        self._forked = True
        self._events = deque()
        self._init_process_state()
        self._pipe_server = None
        self._pipe_client = None
        self._child_needs_thread = self._parent_pipe is not None

    def _start_child_thread(self) -> None:
        """In a forked child, connect to the parent and start the thread if not yet.

        Other threads wait (bounded by the connection's wait) until the client
        exists, so none of them sees a child half connected. The flag is cleared
        only once the client exists: an interrupt here means trying again later.
        After ``stop()`` (a child's atexit) the client is still made, for the
        text flushed at exit, but no thread is started.
        """
        with self._child_start_lock:
            if self._pipe_client is not None or not self.pipes_to_parent:
                self._child_needs_thread = False
                return
            assert self._parent_pipe is not None
            endpoint, key = self._parent_pipe
            self._pipe_client = PipeClient(endpoint, key)
            self._child_needs_thread = False
        if self._is_new():
            self.start()

    def _is_master_process(self) -> bool:
        """ipykernel's check; the library itself uses the fork flag of forksafety."""
        return os.getpid() == self._master_pid

    def _check_mp_mode(self) -> int:
        """``CHILD`` in a forked child that pipes to its parent, else ``MASTER``."""
        if self._pipe_flag and self._forked:
            return CHILD
        return MASTER
