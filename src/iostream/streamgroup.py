"""The buffer shared by the streams that publish through one thread or session.

:class:`StreamGroup` is a thin locked wrapper around the sans-IO
:class:`~iostream.core.OutputBuffer` and :class:`~iostream.core.policy.FlushState`;
:func:`group_for` finds the group of a thread (or session). The locks and the
order in which they are taken are stated in :mod:`iostream.outstream`.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import deque
from itertools import repeat, starmap
from typing import Any

from jupyter_client.jsonutil import json_default

from . import forksafety
from .core import Chunk, OutputBuffer, Parent, parent_key
from .core.policy import Do, Event, FlushState
from .inlets import Inlets
from .locking import locked, new_lock

#: Threads remembered as having set a parent without writing since (see
#: ``StreamGroup.awaiting``): more are forgotten, which costs their first line
#: at most one batching interval, never text.
AWAITING_LIMIT = 32


class StreamGroup:
    """The shared buffer of the streams that publish through one thread or session.

    A thin locked wrapper around two sans-IO parts: ``buffer`` (the
    :class:`~iostream.core.OutputBuffer`) and ``flow`` (the
    :class:`~iostream.core.policy.FlushState`, the promise of a flush and when it
    is due). ``lock`` guards both. Writes from any thread append
    ``(owner, parent, text)`` to ``incoming``, a deque (under ``lock``, but for
    the write fast path: see :mod:`iostream.outstream`), which is moved into
    ``buffer`` when text is taken. ``timer`` is
    IO-thread-only; ``publisher_ident`` names the thread that is publishing, so
    output it produces meanwhile goes to the original stream instead of looping.

    ``flow.licensed`` is the fast path's licence (LICENSED: a flush is promised
    *and* its timer is known to be scheduled on a running IO thread). It is set
    once ``schedule`` has returned (an interrupt before that leaves it unset, and
    the slow path promises again) and cleared by :meth:`take` *before* it empties
    ``incoming``. So a writer that appends and then still sees the licence knows
    a later take will find its text; one that sees it cleared promises a flush
    itself.
    """

    def __init__(self, threaded: bool = True, drains_before_stop: bool = True) -> None:
        # The streams of the group (OutStream; typed loosely: outstream imports us).
        self.members: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self.forked = False  # this process is a fork of the one that made the group
        self.threaded = threaded  # an IO thread publishes (else the writers do)
        # The thread runs every call scheduled before it stops: the licence
        # relies on the promised timer running (threadlink's drains_before_stop).
        self.drains_before_stop = drains_before_stop
        # Where text from outside the Python streams waits (fd capture pipes, the
        # children's channel), taken in before a write; and the channel's fds.
        self.inlets = Inlets()
        self.children_fds: tuple[int, ...] = ()
        self._renew()
        forksafety.register(self)

    def _renew(self) -> None:
        # (Taken on interruptible threads through locking.locked: see there.)
        self.lock = new_lock()
        self.publish_lock = threading.RLock()
        self.buffer = OutputBuffer()
        # Writes, flat: owner, parent, text, owner, ... (``deque.extend`` of a
        # tuple is atomic under the GIL; the tuple is freed at once, so queued
        # writes hold no object the garbage collector tracks: a deque of tuples
        # made every full collection walk the backlog).
        self.incoming: deque[Any] = deque()
        # Characters in ``incoming``: a bound, not a count (unlocked ``+=`` from
        # several threads may lose updates; every move into ``buffer`` resets it).
        self.incoming_chars = 0
        timed = self.threaded and not self.forked  # else line-buffered, as a terminal
        self.flow = FlushState(
            licensable=timed and self.drains_before_stop, line_buffered=not timed
        )
        # ``incoming_chars`` past which a writer has the timer look at once: the
        # policy's ``wake_backlog`` less what ``buffer`` holds (see _rewatch).
        self.wake_incoming: float = self.flow.wake_backlog
        self.packed_parent: tuple[Parent | None, bytes] = (None, b"{}")
        # The key (core.parent_key) of the parent set last with set_parent.
        self.latest_parent_key: object = None
        # Threads that set a new parent (the cell's own code runs there) and have
        # not written under it since. Changed under ``lock``; read without it.
        self.awaiting: set[int] = set()
        self.timer: object | None = None
        self.publisher_ident: int | None = None
        # Owners whose own ``_flush`` override is running (publish_lock held):
        # text of theirs that a flush takes meanwhile is theirs to publish.
        self.overrides_running: set[int] = set()

    def _after_fork_in_child(self) -> None:
        # The parent's pending text is the parent's to publish, not the child's.
        self.forked = True
        self._renew()

    def take(self, now: float, owner: int | None = None) -> list[Chunk]:
        """Remove the pending text (of ``owner`` only, if given), ending the flush
        promise unless ``owner`` is given. Any thread."""
        return locked(self.lock, self._take, now, owner, False)[0]

    def take_all(self, now: float, timer_runs: bool) -> tuple[list[Chunk], bool]:
        """Remove all pending text; also answer whether the promise's timer is to
        be cancelled (``timer_runs``: see the policy's ``on_flush``). Any thread."""
        return locked(self.lock, self._take, now, None, timer_runs)

    def _take(self, now: float, owner: int | None, timer_runs: bool) -> tuple[list[Chunk], bool]:
        cancel = False
        if owner is None:
            # The licence ends (FLUSH) before incoming is emptied (see the class).
            cancel = self.flow.on_flush(now, timer_runs=timer_runs)
        self._absorb_incoming()
        # (A forked child hands its text to the parent, which cuts it.)
        chunks = self.buffer.drain(owner, None if self.forked else self._message_limits())
        if chunks:
            self.flow.handle(Event.TOOK_TEXT, now)
        self._rewatch()
        return chunks, cancel

    def _rewatch(self) -> None:
        """Renew ``wake_incoming`` after ``buffer`` or the policy's watch mark
        changed. Lock held."""
        self.wake_incoming = self.flow.wake_backlog - self.buffer.pending_chars

    def _message_limits(self) -> dict[int, int]:
        """Each member's ``max_message_chars``: text is cut into messages as it is
        taken, so a big backlog is not held once more per message. Lock held."""
        return {
            owner: member.max_message_chars
            for owner, member in list(self.members.items())
            if type(getattr(member, "max_message_chars", None)) is int
        }

    def on_timer(self, now: float, interval: float, stopping: bool) -> float | None:
        """The timer fired: seconds until it should fire again (0: flush now);
        None if no flush is promised (see the policy's ``on_timer``). Any thread."""
        with self.lock:
            unfinished = False
            if self.flow.waits_for_line_end(self.backlog(), interval):
                # Less than a burst is pending: moving it into the buffer to see
                # its line ends costs little and stays within the memory bound.
                self._absorb_incoming()
                unfinished = self.buffer.unfinished_line()
            delay = self.flow.on_timer(
                now, self.backlog(), interval, unfinished_line=unfinished, stopping=stopping
            )
            self._rewatch()
            return delay

    def written(self, now: float, interval: float, text: str, limit: float) -> tuple[Do, int]:
        """``text`` was queued: what the writer is to do (the policy's answer to a
        write), and the ticket of a new promise. ``limit``: the writer's memory
        bound. Any thread."""
        return locked(self.lock, self._written, now, interval, text, limit)

    def _written(self, now: float, interval: float, text: str, limit: float) -> tuple[Do, int]:
        awaiting = self.awaiting
        cells_first = bool(awaiting) and bool(text) and threading.get_ident() in awaiting
        if cells_first:
            awaiting.discard(threading.get_ident())
        answer = self.flow.on_write(
            now,
            interval=interval,
            pending=self.backlog(),
            limit=limit,
            newline="\n" in text,
            cells_first=cells_first,
        )
        self._rewatch()
        return answer

    def held_here(self) -> bool:
        """Whether the calling thread holds the group's ``lock`` or
        ``publish_lock`` (a signal handler or ``__del__`` that writes while the
        thread it interrupted was inside). Any thread."""
        return bool(self.lock._is_owned() or self.publish_lock._is_owned())  # type: ignore[attr-defined]

    def awaited(self) -> bool:
        """Whether the calling thread set a new parent and has not written under
        it since: its next write must take the checked path (:meth:`written`).
        Any thread; without the lock (a thread only ever finds its own ident)."""
        awaiting = self.awaiting
        return bool(awaiting) and threading.get_ident() in awaiting

    def new_parent(self, parent: Parent, now: float) -> None:
        """``parent`` was set as the streams' parent: if it is another request than
        the one set before, its first text must not wait for the batching interval
        of the previous one (NEW_PARENT), nor the first text that the calling
        thread (the cell's own code) writes under it (the policy's ``on_write``).
        Any thread."""
        locked(self.lock, self._new_parent, parent_key(parent), now, threading.get_ident())

    def _new_parent(self, key: object, now: float, setter: int) -> None:
        if key != self.latest_parent_key:
            self.latest_parent_key = key
            if len(self.awaiting) >= AWAITING_LIMIT:  # threads that set and never wrote
                self.awaiting.clear()
            self.awaiting.add(setter)
            self.flow.handle(Event.NEW_PARENT, now)

    def add(self, owner: int, parent: Parent, text: str) -> None:
        """Queue ``text`` in write order. Any thread."""
        locked(self.lock, self.add_locked, owner, parent, text)

    def add_locked(self, owner: int, parent: Parent, text: str) -> None:
        """:meth:`add`, ``lock`` held."""
        self.incoming.extend((owner, parent, text))
        self.incoming_chars += len(text)

    def add_lines(self, owner: int, parent: Parent, text: str, source: object = None) -> None:
        """Queue text written outside ``owner``'s Python stream (a forked child, the
        captured descriptor): its complete lines go ahead of an unfinished line of
        ours (:meth:`~iostream.core.OutputBuffer.insert_lines`). Any thread."""
        with self.lock:
            self._absorb_incoming()  # (what was written before comes first)
            self.buffer.insert_lines(owner, parent, text, source)
            self._rewatch()

    def backlog(self) -> int:
        """About how many characters wait to be published. Any thread."""
        return self.buffer.pending_chars + self.incoming_chars

    def _absorb_incoming(self) -> None:
        """Move ``incoming`` into ``buffer``, keeping write order. Lock held."""
        incoming = self.incoming
        # popleft, never a swap: a writer may be about to append to this deque.
        self.buffer.extend(list(starmap(incoming.popleft, repeat((), len(incoming)))))
        self.incoming_chars = 0

    def requeue(self, chunks: list[Chunk], owed_at: float | None = None) -> None:
        """Put taken but unpublished chunks back ahead of everything pending (they
        were written first). ``owed_at``: the time to note that the text is owed
        a flush, if it is. Any thread."""
        locked(self.lock, self._requeue, chunks, owed_at)

    def _requeue(self, chunks: list[Chunk], owed_at: float | None) -> None:
        self._absorb_incoming()
        pending = self.buffer.drain()
        for chunk in (*chunks, *pending):
            self.buffer.append(chunk.owner, chunk.parent, chunk.text)
        if owed_at is not None:
            self.flow.handle(Event.REQUEUE, owed_at)  # put back for later: owed a flush
        self._rewatch()

    def license(self, now: float, ticket: int) -> None:
        """The timer of promise ``ticket`` is scheduled: license the fast path. Any thread."""
        locked(self.lock, self._license, now, ticket)

    def _license(self, now: float, ticket: int) -> None:
        self.flow.handle(Event.TIMER_SET, now, ticket=ticket)

    def pack_parent(self, parent: Parent) -> bytes:
        """``parent`` as JSON, cached for the latest parent. Publishing thread."""
        last, packed = self.packed_parent
        if last is not parent:
            packed = json.dumps(parent, default=json_default).encode()
            self.packed_parent = (parent, packed)
        return packed

    def join(self, owner: int, stream: Any) -> None:
        """Make ``stream`` a member under ``owner``. Any thread."""
        with self.lock:
            self.members[owner] = stream

    def live_members(self) -> list[Any]:
        """A snapshot of the members still alive. Any thread.

        Taken under the lock that :meth:`join` holds: copying a weak dictionary
        while another thread adds to it can fail ("changed size during iteration").
        """
        with self.lock:
            return list(self.members.values())


_groups: weakref.WeakKeyDictionary[Any, StreamGroup] = weakref.WeakKeyDictionary()


class _GroupsLock:
    """The lock around ``_groups``, renewed in a forked child: a thread of the
    parent may have held it at the moment of the fork."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_groups_lock = _GroupsLock()
forksafety.register(_groups_lock)


def group_for(key: Any, threaded: bool, drains_before_stop: bool = True) -> StreamGroup:
    """The group of the streams that publish through ``key`` (a thread, or a
    session when ``threaded`` is False). Any thread."""
    with _groups_lock.lock:
        try:
            group = _groups.get(key)
            if group is None:
                group = _groups[key] = StreamGroup(threaded, drains_before_stop)
            return group
        except TypeError:  # not weak-referenceable or not hashable: no sharing
            return StreamGroup(threaded, drains_before_stop)
