"""The link of a forked child to its parent process (a mixin of IOPubThread).

With ``IOPubThread(..., pipe=True)``, forked children send their output to the
parent over a :class:`~iostream.childchannel.ChildChannel` the parent makes when
its IO thread starts. :class:`ChildLink` is that part of
:class:`iostream.IOPubThread`: what a fork resets (plain Python state only: a
child makes no ZeroMQ context, socket, thread or descriptor, ever), and handing a
child's text and messages to the channel, synchronously, on the writing thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .childchannel import ChildChannel, Fallback, TextHandler

#: What ``_check_mp_mode`` returns in the parent (ipykernel's constants).
MASTER = 0
#: What ``_check_mp_mode`` returns in a forked child that pipes to its parent.
CHILD = 1


class ChildLink:
    """The forked-child side of :class:`iostream.IOPubThread` (see the module)."""

    if TYPE_CHECKING:
        _forked: bool
        _channel: ChildChannel | None
        _child_text_handler: TextHandler | None
        _child_text_publish: Callable[[], None] | None
        _master_pid: int
        _pipe_flag: bool

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
        """Whether this is a forked child whose output goes to the parent's channel."""
        return self._forked and self._channel is not None

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
        if not self._forked or channel is None:
            return True
        return channel.sync(timeout)

    def _is_master_process(self) -> bool:
        """ipykernel's check; the library itself uses the fork flag of forksafety."""
        return os.getpid() == self._master_pid

    def _check_mp_mode(self) -> int:
        """``CHILD`` in a forked child that pipes to its parent, else ``MASTER``."""
        if self._pipe_flag and self._forked:
            return CHILD
        return MASTER
