"""The flush state machine of one stream group (sans-IO).

Nothing here owns a thread, a lock, a socket or a clock: the caller passes the
time in (``now``, seconds on any monotonic scale) and serialises every call
(``StreamGroup`` holds its lock). The one exception is :attr:`FlushState.licensed`,
which the write fast path reads without the lock (see :mod:`iostream.outstream`).

The phases:

* ``IDLE``: no flush is promised. Text that arrives must promise one.
* ``PROMISED``: a flush is promised for the pending text; its timer may not be
  scheduled yet (the promiser is between promising and scheduling it).
* ``LICENSED``: promised, and the promise's timer is known to be scheduled on a
  running IO thread. Writes may then queue text without a lock: a flush that
  ends the promise will take it.

Every transition is in :meth:`FlushState.handle` and follows this table (one rule
each, stated once here):

==========  ===============  =====================================================
event       from             to
==========  ===============  =====================================================
WRITE       IDLE             PROMISED, a new ticket
WRITE       PROMISED or      unchanged, no ticket; PROMISED with a new ticket if
            LICENSED         the promise is older than ``interval + STALE_GRACE``
                             (an interrupt may have struck between promising and
                             scheduling its timer: promise again), or if a
                             NEW_PARENT came since it was made
TIMER_SET   PROMISED         LICENSED if the ticket is the current promise's,
                             licences are allowed (an IO thread that drains
                             before it stops, not in a forked child) and no
                             NEW_PARENT came since the promise; else unchanged
FLUSH       any              IDLE: the promised flush (timer, stop) or a flush
                             that ends the promise took everything
KEEP_FLUSH  LICENSED         LICENSED: an explicit flush on a running IO thread
                             took everything, and the promised timer still comes
KEEP_FLUSH  IDLE, PROMISED   IDLE (an unlicensed promise is not kept; on_flush
                             tells FLUSH then, and answers to cancel its timer)
TOOK_TEXT   any              unchanged; ``now`` is the time of the latest flush
                             (a take found text), which the timing rules use
REQUEUE     IDLE             PROMISED (text was put back: it is owed a flush, by
                             the writer's next newline, flush or exit)
REQUEUE     other            unchanged
NEW_PARENT  LICENSED         PROMISED (the licence ends, so the next write takes
                             the slow path); the next WRITE renews the promise
NEW_PARENT  IDLE, PROMISED   unchanged; a PROMISED one is renewed by the next WRITE
==========  ===============  =====================================================

What the caller does is the policy's answer, never its own judgement:

* to a write (:meth:`FlushState.on_write`), a :class:`Do`: set the timer for a
  new promise; publish the complete lines now (a line-buffered group: no IO
  thread, or a forked child, as a terminal is); flush and wait (the backlog is
  over the memory bound, the writer's ``limit``); have the timer look now (the
  backlog passed :attr:`FlushState.wake_backlog`, once until the timer ran);
  or nothing, a flush being on its way;
* to a flush (:meth:`FlushState.on_flush`), whether the promise's timer is to
  be cancelled: it is kept (KEEP_FLUSH) only for an explicit flush while the
  timer is licensed and sure to run, so writes after it keep the fast path;
* to the timer (:meth:`FlushState.on_timer`), when to fire again, or flush now.

NEW_PARENT (a new request, a new cell, became the streams' parent) also forgets
when the latest flush was, so the new parent's first text counts as output after
an idle period, whatever the previous parent printed: batching never carries
over from one cell to the next. The renewed promise's timer is scheduled at the
idle delay; the old timer, if still scheduled, is replaced by it.

The caller tells NEW_PARENT once more when the thread that set the new parent
(the cell's own code) writes its first text under it: a thread that keeps
printing into the new cell may have had its first text flushed already, and the
cell's own first line must not then wait for the batching interval.

The timing rules (:meth:`FlushState.due_at`; the timer asks :meth:`FlushState.on_timer`):

* output after an idle period (no flush for an ``interval``, or none since the
  latest NEW_PARENT) is due ``idle_delay`` (2 ms) after it was promised, once
  every stream's line is finished: an unfinished line (``print`` writes its
  text and its end separately; another thread may run between the two) waits
  for its end, checked every ``quiet_gap``, for ``line_wait`` (50 ms) at most,
  never past one ``interval`` after the promise, nor once ``burst_chars`` are
  pending;
* while output keeps coming it is batched: due one ``interval`` after the
  previous flush;
* a burst, ``burst_chars`` (64 Ki) or more pending, is due once it has not
  grown for ``quiet_gap`` (10 ms), and at the latest ``burst_wait`` (1 s) or one
  ``interval``, whichever is longer, after its promise. So a big output comes in
  few messages: JupyterLab renders a cell's whole output again for every
  message, and a 50 MB output in ten messages renders several times slower than
  in one. (A writer that outruns the IO thread still waits at the stream's
  ``max_buffer_chars``, which bounds the burst.)
"""

from __future__ import annotations

import math
from enum import Enum

#: Seconds beyond the flush interval after which an unkept promise is renewed.
STALE_GRACE = 1.0


class Phase(Enum):
    """Where the promise of a flush stands (see the module docstring)."""

    IDLE = "idle"
    PROMISED = "promised"
    LICENSED = "licensed"


class Event(Enum):
    """What happened to the group's pending text (see the module docstring)."""

    WRITE = "write"
    TIMER_SET = "timer set"
    FLUSH = "flush"
    KEEP_FLUSH = "keep flush"
    TOOK_TEXT = "took text"
    REQUEUE = "requeue"
    NEW_PARENT = "new parent"


class Do(Enum):
    """What a writer does after queueing text: the policy's answer to a write."""

    NOTHING = "nothing"
    SET_TIMER = "set timer"
    PUBLISH_LINES = "publish lines"
    FLUSH = "flush"
    WAKE_TIMER = "wake timer"


class FlushState:
    """The promise of a flush for one group's pending text, and when it is due.

    Single-threaded: the caller serialises every method. :attr:`licensed` may be
    read from any thread without a lock (a plain attribute, set last).
    """

    __slots__ = (
        "_grew_at",
        "_last_flush",
        "_seen_pending",
        "burst_chars",
        "burst_wait",
        "idle_delay",
        "licensable",
        "licensed",
        "line_buffered",
        "line_wait",
        "phase",
        "promised_at",
        "quiet_gap",
        "renew",
        "ticket",
        "wake_backlog",
    )

    def __init__(
        self,
        idle_delay: float = 0.002,
        quiet_gap: float = 0.01,
        burst_chars: int = 1 << 16,
        licensable: bool = True,
        line_wait: float = 0.05,
        burst_wait: float = 1.0,
        line_buffered: bool = False,
    ) -> None:
        self.idle_delay = idle_delay
        self.line_wait = line_wait
        self.burst_wait = burst_wait
        self.quiet_gap = quiet_gap
        self.burst_chars = burst_chars
        #: Whether TIMER_SET may license the fast path (False without an IO
        #: thread that runs every scheduled call before it stops, and in a
        #: forked child).
        self.licensable = licensable
        #: Published at each newline by the writer, not by a timer (no IO
        #: thread, or a forked child).
        self.line_buffered = line_buffered
        self.phase = Phase.IDLE
        #: Mirrors ``phase is LICENSED``: the write fast path's one read.
        self.licensed = False
        #: The number of the current promise (0: none made yet).
        self.ticket = 0
        self.promised_at = -math.inf
        #: A NEW_PARENT came since the current promise was made.
        self.renew = False
        self._last_flush: float | None = None
        self._seen_pending = -1  # the backlog when on_timer last looked (-1: never)
        self._grew_at = -math.inf  # when on_timer last saw the backlog grow
        #: The backlog past which a writer has the timer fire at once (for the
        #: burst rule), instead of the timer polling for it.
        self.wake_backlog: float = burst_chars

    def handle(
        self,
        event: Event,
        now: float,
        *,
        ticket: int = 0,
        interval: float = 0.0,
    ) -> int:
        """Apply ``event`` at ``now`` (see the module's table); return the new
        promise's ticket for a WRITE that made one, else 0.

        ``ticket`` is TIMER_SET's promise number; ``interval`` is WRITE's flush
        interval (for the staleness rule).
        """
        phase = self.phase
        new = phase
        made = 0
        if event is Event.WRITE:
            if phase is Phase.IDLE or self.renew or now - self.promised_at > interval + STALE_GRACE:
                new, made = Phase.PROMISED, self.ticket + 1
        elif event is Event.TIMER_SET:
            if (
                phase is Phase.PROMISED
                and ticket == self.ticket
                and self.licensable
                and not self.renew
            ):
                new = Phase.LICENSED
        elif event is Event.FLUSH:
            new = Phase.IDLE
        elif event is Event.KEEP_FLUSH:
            new = Phase.LICENSED if phase is Phase.LICENSED else Phase.IDLE
        elif event is Event.REQUEUE:
            if phase is Phase.IDLE:
                new = Phase.PROMISED
                self.promised_at = now
        elif event is Event.TOOK_TEXT:
            self._last_flush = now
        elif event is Event.NEW_PARENT:
            self._last_flush = None
            if phase is not Phase.IDLE:
                new = Phase.PROMISED
                self.renew = True
        if made:
            self.ticket, self.promised_at = made, now
            self.renew = False
        if new is Phase.IDLE:
            self.renew = False  # (the next WRITE makes a new promise anyway)
            if phase is not Phase.IDLE:
                self._seen_pending = -1  # the next promise starts its own growth watch
        self.phase = new
        self.licensed = new is Phase.LICENSED
        return made

    def on_write(
        self,
        now: float,
        *,
        interval: float,
        pending: int,
        limit: float,
        newline: bool = False,
        cells_first: bool = False,
    ) -> tuple[Do, int]:
        """Text was queued at ``now``: what the writer is to do, and the new
        promise's ticket (with SET_TIMER, else 0).

        ``pending``: the characters now waiting; ``limit``: the writer's memory
        bound; ``newline``: the text holds a line end; ``cells_first``: it is
        the first text that the thread which set the new parent (the cell's own
        code) writes under it. That text is told NEW_PARENT once more: a thread
        printing into the new cell may have had its text flushed already, and
        the cell's own first line must not wait for the batching interval.
        """
        if cells_first:
            self.handle(Event.NEW_PARENT, now)
        ticket = self.handle(Event.WRITE, now, interval=interval)
        if self.line_buffered:
            if newline:
                return Do.PUBLISH_LINES, 0
            return (Do.FLUSH if pending > limit else Do.NOTHING), 0
        if ticket:
            return Do.SET_TIMER, ticket
        if pending > limit:
            return Do.FLUSH, 0
        if pending > self.wake_backlog:
            self.wake_backlog = math.inf  # one wake-up: the timer sets it again
            return Do.WAKE_TIMER, 0
        return Do.NOTHING, 0

    def on_flush(self, now: float, *, timer_runs: bool) -> bool:
        """A flush is about to take everything pending: whether the promise's
        timer is to be cancelled. ``timer_runs``: the flush is not the timer's
        own, and the timer is sure to run (a running IO thread that drains
        before it stops, not stopping). Only a licensed promise is kept."""
        keep = timer_runs and self.phase is Phase.LICENSED
        self.handle(Event.KEEP_FLUSH if keep else Event.FLUSH, now)
        return not keep

    def _after_idle(self, interval: float) -> bool:
        """Whether the promise is for output after an idle period."""
        last = self._last_flush
        return last is None or self.promised_at - last >= interval

    def waits_for_line_end(self, pending: int, interval: float) -> bool:
        """Whether an unfinished line would postpone the promised flush now (the
        idle rule, below ``burst_chars``): only then need the caller find out."""
        return (
            self.phase is not Phase.IDLE
            and pending < self.burst_chars
            and self._after_idle(interval)
        )

    def due_at(self, interval: float, unfinished_line: bool = False, burst: bool = False) -> float:
        """When the promised flush is due at the latest, by the idle, batching and
        burst rules; ``math.inf`` if none is promised. ``unfinished_line``: some
        stream's pending text ends inside a line (see the idle rule); ``burst``:
        ``burst_chars`` or more are pending (see the burst rule)."""
        if self.phase is Phase.IDLE:
            return math.inf
        if burst:  # (on_timer makes it due earlier, once the burst goes quiet)
            return self.promised_at + max(self.burst_wait, interval)
        if self._after_idle(interval):
            wait = self.idle_delay + (self.line_wait if unfinished_line else 0.0)
            return self.promised_at + min(wait, interval)
        assert self._last_flush is not None  # (not after an idle period)
        return self._last_flush + interval

    def on_timer(
        self,
        now: float,
        pending: int,
        interval: float,
        unfinished_line: bool = False,
        stopping: bool = False,
    ) -> float | None:
        """The timer fired at ``now`` with ``pending`` characters waiting: answer
        in how many seconds it should fire again (0: flush now); None if no flush
        is promised (the timer ends). Sets :attr:`wake_backlog`.

        An event, not a query: it records the backlog it was told, whose growth
        stands in for the time of the latest write (writes read no clock).
        ``unfinished_line``: some stream's pending text ends inside a line (only
        heeded where :meth:`waits_for_line_end`). Never later than
        :meth:`due_at`. The timer is set for the due time, and earlier only to
        watch what can make the flush due sooner: a burst going quiet, or an
        unfinished line ending (every ``quiet_gap``; a line for ``line_wait`` at
        most). A backlog that is not a burst yet is watched by the writers
        instead: past :attr:`wake_backlog` they have the timer fire at once.
        ``stopping``: the IO thread is stopping, and would never run a later
        timer: flush now.
        """
        if self.phase is Phase.IDLE:
            return None
        if stopping:
            return 0.0
        if pending != self._seen_pending:
            self._seen_pending, self._grew_at = pending, now
        burst = pending >= self.burst_chars
        # (While bursting the timer watches every quiet_gap: no writer need wake it.)
        self.wake_backlog = math.inf if burst else self.burst_chars
        due = self.due_at(interval, unfinished_line, burst)
        quiet_at = self._grew_at + self.quiet_gap
        if now >= due or (burst and now >= quiet_at):
            return 0.0
        if burst:
            wake = quiet_at
        elif unfinished_line:
            wake = now + self.quiet_gap
        else:
            wake = due
        return max(0.0, min(due, wake) - now)
