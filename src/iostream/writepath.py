"""The write path of OutStream: lock-free where the GIL allows, locked elsewhere.

:class:`_FastWriter` holds, on a plain slotted object, what every write reads
(attribute access on ``io.TextIOBase`` instances costs half again as much).
"""

from __future__ import annotations

import os
import sys
import threading
from contextvars import ContextVar
from typing import Protocol

from .core import Parent
from .locking import locked
from .streamgroup import _StreamGroup

_get_ident = threading.get_ident


class _Writable(Protocol):
    """What the write path needs of its stream (an OutStream, which imports us)."""

    max_buffer_chars: int
    _owner: int
    _parent_header: ContextVar[Parent]

    def flush(self) -> None: ...

    def _parent_of_thread(self) -> Parent: ...

    def _after_fast_append(self, string: str) -> None: ...

    def _write_checked(self, string: str) -> int: ...


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
    ipykernel 6.29's kernel fills them, see :meth:`OutStream._parent_of_thread`).
    """

    __slots__ = (
        "group",
        "limit",
        "owner",
        "parent",
        "parent_global",
        "stream",
        "thread_headers",
        "thread_links",
    )

    def __init__(self, stream: _Writable) -> None:
        self.stream = stream
        self.group: _StreamGroup | None = None
        self.limit = stream.max_buffer_chars
        self.owner = stream._owner
        self.parent = stream._parent_header
        self.parent_global: Parent = {}
        self.thread_links: dict[int | None, int | None] = {}
        self.thread_headers: dict[int | None, Parent] = {}

    def write(self, string: str) -> int:
        """See :meth:`OutStream.write`. Any thread; only where
        :data:`LOCK_FREE_WRITES` (the GIL makes the unlocked appends safe)."""
        # Fast path: a plain str and a flush already on its way (group.add inlined,
        # without its lock: under the GIL ``extend`` of a tuple is atomic, and
        # ``incoming_chars`` is a bound, reset whenever ``incoming`` is moved
        # into the buffer).
        group = self.group
        if group is not None and group.flow.licensed and string.__class__ is str:
            publisher = group.publisher_ident
            if (publisher is None or publisher != _get_ident()) and not (
                group.awaiting and _get_ident() in group.awaiting
            ):
                size = len(string)
                parent = self.parent.get(_NO_CONTEXT)
                if parent is _NO_CONTEXT:  # a thread that set no parent of its own
                    parent = (
                        self.stream._parent_of_thread()
                        if self.thread_headers
                        else self.parent_global
                    )
                group.incoming.extend((self.owner, parent, string))
                group.incoming_chars += size
                if group.flow.licensed and group.incoming_chars <= self.limit:
                    return size
                self.stream._after_fast_append(string)
                return size
        return self.stream._write_checked(string)

    def _append_if_licensed(self, group: _StreamGroup, parent: Parent, string: str) -> int | None:
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
            publisher = group.publisher_ident
            # (Only this thread ever stores its own ident there: a stale value
            # read here is never this thread's.)
            if publisher is None or publisher != _get_ident():
                parent = self.parent.get(_NO_CONTEXT)  # outside the lock: may call out
                if parent is _NO_CONTEXT:
                    parent = (
                        self.stream._parent_of_thread()
                        if self.thread_headers
                        else self.parent_global
                    )
                queued = locked(group.lock, self._append_if_licensed, group, parent, string)
                if queued is not None:
                    if queued > self.limit:
                        self.stream.flush()  # bounds memory: wait for the IO thread
                    return len(string)
        return self.stream._write_checked(string)
