"""The flush state machine, exhaustively and statefully: no threads, no clock."""

from __future__ import annotations

import math
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from iostream.core.policy import STALE_GRACE, Do, Event, FlushState, Phase

INTERVAL = 0.2
LIMIT = 1 << 20  # a writer's memory bound


def _in(phase: Phase, now: float = 10.0) -> FlushState:
    """A state in ``phase``, its promise (if any) made at ``now``."""
    state = FlushState()
    if phase is not Phase.IDLE:
        ticket = state.handle(Event.WRITE, now, interval=INTERVAL)
        if phase is Phase.LICENSED:
            state.handle(Event.TIMER_SET, now, ticket=ticket)
    assert state.phase is phase
    return state


# -- the table, every (phase, event) pair --------------------------------------------

EXPECTED = {
    (Phase.IDLE, Event.WRITE): Phase.PROMISED,
    (Phase.PROMISED, Event.WRITE): Phase.PROMISED,
    (Phase.LICENSED, Event.WRITE): Phase.LICENSED,
    (Phase.IDLE, Event.TIMER_SET): Phase.IDLE,
    (Phase.PROMISED, Event.TIMER_SET): Phase.LICENSED,
    (Phase.LICENSED, Event.TIMER_SET): Phase.LICENSED,
    (Phase.IDLE, Event.FLUSH): Phase.IDLE,
    (Phase.PROMISED, Event.FLUSH): Phase.IDLE,
    (Phase.LICENSED, Event.FLUSH): Phase.IDLE,
    (Phase.IDLE, Event.KEEP_FLUSH): Phase.IDLE,
    (Phase.PROMISED, Event.KEEP_FLUSH): Phase.IDLE,
    (Phase.LICENSED, Event.KEEP_FLUSH): Phase.LICENSED,
    (Phase.IDLE, Event.TOOK_TEXT): Phase.IDLE,
    (Phase.PROMISED, Event.TOOK_TEXT): Phase.PROMISED,
    (Phase.LICENSED, Event.TOOK_TEXT): Phase.LICENSED,
    (Phase.IDLE, Event.REQUEUE): Phase.PROMISED,
    (Phase.PROMISED, Event.REQUEUE): Phase.PROMISED,
    (Phase.LICENSED, Event.REQUEUE): Phase.LICENSED,
    (Phase.IDLE, Event.NEW_PARENT): Phase.IDLE,
    (Phase.PROMISED, Event.NEW_PARENT): Phase.PROMISED,
    (Phase.LICENSED, Event.NEW_PARENT): Phase.PROMISED,
}


def test_the_table_covers_every_phase_and_event() -> None:
    assert set(EXPECTED) == set(product(Phase, Event))


@pytest.mark.parametrize(("phase", "event"), sorted(EXPECTED, key=str))
def test_each_transition(phase: Phase, event: Event) -> None:
    state = _in(phase)
    ticket = state.ticket
    made = state.handle(event, 10.05, ticket=ticket, interval=INTERVAL)
    assert state.phase is EXPECTED[phase, event]
    assert state.licensed is (state.phase is Phase.LICENSED)
    # Only a WRITE that made a promise returns (and advances) a ticket.
    assert made == (ticket + 1 if (phase, event) == (Phase.IDLE, Event.WRITE) else 0)


@pytest.mark.parametrize("phase", [Phase.PROMISED, Phase.LICENSED])
def test_a_stale_promise_is_made_again_without_a_licence(phase: Phase) -> None:
    """A promise older than interval + STALE_GRACE may have lost its timer to an
    interrupt: the next write promises again, and the fast path waits for the
    new timer."""
    state = _in(phase, now=10.0)
    assert state.handle(Event.WRITE, 10.0 + INTERVAL + STALE_GRACE, interval=INTERVAL) == 0
    made = state.handle(Event.WRITE, 10.0 + INTERVAL + STALE_GRACE + 0.01, interval=INTERVAL)
    assert made == 2 and state.phase is Phase.PROMISED and not state.licensed
    assert state.promised_at == pytest.approx(10.0 + INTERVAL + STALE_GRACE + 0.01)


def test_only_the_current_promises_timer_licenses() -> None:
    state = FlushState()
    old = state.handle(Event.WRITE, 1.0, interval=INTERVAL)
    state.handle(Event.FLUSH, 1.1)
    current = state.handle(Event.WRITE, 1.2, interval=INTERVAL)
    state.handle(Event.TIMER_SET, 1.2, ticket=old)
    assert state.phase is Phase.PROMISED
    state.handle(Event.TIMER_SET, 1.2, ticket=current)
    assert state.phase is Phase.LICENSED


def test_no_licence_where_licences_are_not_allowed() -> None:
    """A forked child's group: writes always take the checked path."""
    state = FlushState(licensable=False)
    ticket = state.handle(Event.WRITE, 1.0, interval=INTERVAL)
    state.handle(Event.TIMER_SET, 1.0, ticket=ticket)
    assert state.phase is Phase.PROMISED and not state.licensed


@pytest.mark.parametrize("phase", [Phase.PROMISED, Phase.LICENSED])
def test_a_new_parent_renews_the_promise_at_the_next_write(phase: Phase) -> None:
    state = _in(phase)
    old = state.ticket
    state.handle(Event.NEW_PARENT, 10.01)
    assert not state.licensed
    made = state.handle(Event.WRITE, 10.02, interval=INTERVAL)
    assert made == old + 1
    # The old promise's timer no longer licenses; the renewed one's does.
    state.handle(Event.TIMER_SET, 10.02, ticket=old)
    assert not state.licensed
    state.handle(Event.TIMER_SET, 10.02, ticket=made)
    assert state.licensed
    # Only one renewal per new parent.
    assert state.handle(Event.WRITE, 10.03, interval=INTERVAL) == 0


def test_a_timer_set_after_a_new_parent_does_not_license_the_old_promise() -> None:
    state = FlushState()
    ticket = state.handle(Event.WRITE, 1.0, interval=INTERVAL)
    state.handle(Event.NEW_PARENT, 1.0)  # between promising and scheduling
    state.handle(Event.TIMER_SET, 1.0, ticket=ticket)
    assert state.phase is Phase.PROMISED and not state.licensed
    assert state.handle(Event.WRITE, 1.001, interval=INTERVAL) == ticket + 1


# -- the timing rules -------------------------------------------------------------------


def test_nothing_is_due_without_a_promise() -> None:
    state = FlushState()
    assert state.on_timer(5.0, 100, INTERVAL) is None
    assert state.due_at(INTERVAL) == math.inf


def test_first_output_after_idle_is_due_almost_at_once() -> None:
    state = FlushState(idle_delay=0.002)
    state.handle(Event.WRITE, 100.0, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(100.002)
    assert state.on_timer(100.002, 5, INTERVAL) == 0
    state.handle(Event.TOOK_TEXT, 100.0)
    state.handle(Event.FLUSH, 100.0)
    state.handle(Event.WRITE, 100.5, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(100.502)


def test_sustained_output_is_batched_per_interval() -> None:
    state = FlushState(idle_delay=0.002, quiet_gap=0.01)
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.WRITE, 10.05, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(10.2)
    # small output, growing slowly: not due before the interval ends, and nothing
    # to watch meanwhile (it would reach a burst long after): the timer sleeps
    # until the due time, no polling
    assert state.on_timer(10.06, 100, INTERVAL) == pytest.approx(0.14)
    assert state.on_timer(10.15, 200, INTERVAL) == pytest.approx(0.05)
    assert state.on_timer(10.2, 300, INTERVAL) == 0


def test_the_timer_is_set_once_for_the_due_time_when_nothing_is_pending() -> None:
    """After an explicit flush took everything (the licence kept), the timer has
    nothing to watch: it fires once, at the due time, not every quiet_gap."""
    state = FlushState(quiet_gap=0.01)
    state.handle(Event.TOOK_TEXT, 10.0)
    ticket = state.handle(Event.WRITE, 10.01, interval=INTERVAL)
    state.handle(Event.TIMER_SET, 10.01, ticket=ticket)
    state.handle(Event.KEEP_FLUSH, 10.02)
    state.handle(Event.TOOK_TEXT, 10.02)
    assert state.on_timer(10.02, 0, INTERVAL) == pytest.approx(0.2)
    assert state.on_timer(10.22, 0, INTERVAL) == 0


def test_a_backlog_below_a_burst_is_watched_by_the_writers_not_the_timer() -> None:
    """Below ``burst_chars`` the timer sleeps until the due time and names the
    backlog past which a writer must wake it (``wake_backlog``); a burst is then
    watched by the timer itself, every quiet_gap, until it goes quiet."""
    state = FlushState(quiet_gap=0.01, burst_chars=10_000)
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.WRITE, 10.0, interval=INTERVAL)
    assert state.on_timer(10.01, 1_000, INTERVAL) == pytest.approx(0.19)
    assert state.wake_backlog == 10_000
    # a writer passed the mark and woke the timer: a burst, still growing
    assert state.on_timer(10.05, 20_000, INTERVAL) == pytest.approx(0.01)
    assert state.wake_backlog == math.inf
    # quiet for quiet_gap: due now, well before the interval ends
    assert state.on_timer(10.06, 20_000, INTERVAL) == 0


def test_a_new_cells_first_output_is_not_held_by_the_previous_cells_batching() -> None:
    # The previous cell printed (a flush at 10.0 took text) and is still printing.
    state = FlushState()
    state.handle(Event.TOOK_TEXT, 10.0)
    ticket = state.handle(Event.WRITE, 10.05, interval=INTERVAL)
    state.handle(Event.TIMER_SET, 10.05, ticket=ticket)
    assert state.due_at(INTERVAL) == pytest.approx(10.0 + INTERVAL)  # batched
    # The next cell starts: its first write is due at the idle delay, not at 10.2.
    state.handle(Event.NEW_PARENT, 10.06)
    assert state.handle(Event.WRITE, 10.07, interval=INTERVAL)
    assert state.on_timer(10.07, 10, INTERVAL) == pytest.approx(state.idle_delay)
    # Its output after that first flush is batched again.
    state.handle(Event.FLUSH, 10.072)
    state.handle(Event.TOOK_TEXT, 10.072)
    state.handle(Event.WRITE, 10.08, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(10.072 + INTERVAL)


def test_the_cells_own_first_output_is_not_held_by_a_threads_batching() -> None:
    """A thread printing into the new cell had its first text flushed, and its
    next text is batched; the cell's own first write (the caller tells
    NEW_PARENT once more) is due at the idle delay, and renews the licence."""
    state = FlushState()
    state.handle(Event.NEW_PARENT, 10.0)
    ticket = state.handle(Event.WRITE, 10.001, interval=INTERVAL)  # the thread's text
    state.handle(Event.TIMER_SET, 10.001, ticket=ticket)
    assert state.licensed
    state.handle(Event.FLUSH, 10.003)
    state.handle(Event.TOOK_TEXT, 10.003)
    ticket = state.handle(Event.WRITE, 10.004, interval=INTERVAL)  # the thread again
    state.handle(Event.TIMER_SET, 10.004, ticket=ticket)
    assert state.due_at(INTERVAL) == pytest.approx(10.003 + INTERVAL)  # batched
    state.handle(Event.NEW_PARENT, 10.005)  # the cell's own first write
    assert not state.licensed
    made = state.handle(Event.WRITE, 10.005, interval=INTERVAL)
    assert made == ticket + 1, "the cell's first write renews the promise"
    assert state.due_at(INTERVAL) == pytest.approx(10.005 + state.idle_delay)
    state.handle(Event.TIMER_SET, 10.005, ticket=made)
    assert state.licensed
    # After that, batching as usual.
    state.handle(Event.FLUSH, 10.007)
    state.handle(Event.TOOK_TEXT, 10.007)
    state.handle(Event.WRITE, 10.01, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(10.007 + INTERVAL)


def test_a_new_parent_with_nothing_promised_forgets_the_batching_history() -> None:
    state = FlushState()
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.FLUSH, 10.0)
    state.handle(Event.NEW_PARENT, 10.01)
    state.handle(Event.WRITE, 10.02, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(10.02 + state.idle_delay)


def test_a_large_burst_that_went_quiet_is_flushed_early() -> None:
    state = FlushState(idle_delay=0.002, quiet_gap=0.01, burst_chars=1000)
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.WRITE, 10.01, interval=INTERVAL)
    # still growing: wait until it goes quiet
    assert state.on_timer(10.049, 5000, INTERVAL) == pytest.approx(0.01)
    assert state.on_timer(10.055, 5000, INTERVAL) == pytest.approx(0.004)
    # quiet for quiet_gap: due now, well before the interval ends
    assert state.on_timer(10.06, 5000, INTERVAL) == 0


def test_output_after_idle_waits_for_an_unfinished_line_to_end() -> None:
    """``print("first line")`` writes the text, then (perhaps after another
    thread ran) the newline: the idle flush waits for the newline, checking
    every quiet_gap, so the line is not split in two messages."""
    state = FlushState(idle_delay=0.002, quiet_gap=0.01, line_wait=0.05)
    state.handle(Event.WRITE, 10.0, interval=INTERVAL)
    assert state.waits_for_line_end(10, INTERVAL)
    assert state.due_at(INTERVAL, unfinished_line=True) == pytest.approx(10.052)
    assert state.on_timer(10.002, 10, INTERVAL, unfinished_line=True) == pytest.approx(0.01)
    # the newline came: due at once (the idle delay has passed)
    assert state.on_timer(10.012, 11, INTERVAL, unfinished_line=False) == 0


def test_an_unfinished_line_is_held_for_line_wait_at_most() -> None:
    """A line that never ends (a thread writing dots to stderr) holds the other
    streams' first output for ``line_wait`` at most, and never an interval."""
    state = FlushState(idle_delay=0.002, quiet_gap=0.01, line_wait=0.05)
    state.handle(Event.WRITE, 10.0, interval=INTERVAL)
    assert state.on_timer(10.045, 10, INTERVAL, unfinished_line=True) == pytest.approx(0.007)
    assert state.on_timer(10.052, 10, INTERVAL, unfinished_line=True) == 0
    state = FlushState(idle_delay=0.002, line_wait=0.05)
    state.handle(Event.WRITE, 10.0, interval=0.02)
    assert state.due_at(0.02, unfinished_line=True) == pytest.approx(10.02)


def test_a_burst_is_not_held_for_its_line_end() -> None:
    state = FlushState(idle_delay=0.002, quiet_gap=0.01, burst_chars=1000)
    state.handle(Event.WRITE, 10.0, interval=INTERVAL)
    assert not state.waits_for_line_end(1000, INTERVAL)
    state.on_timer(10.002, 1000, INTERVAL, unfinished_line=True)  # (it grew: watch it)
    # quiet for quiet_gap: due, unfinished line or not (not held for line_wait)
    assert state.on_timer(10.012, 1000, INTERVAL, unfinished_line=True) == 0


def test_batched_output_does_not_wait_for_line_ends() -> None:
    state = FlushState()
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.WRITE, 10.05, interval=INTERVAL)
    assert not state.waits_for_line_end(10, INTERVAL)
    assert state.due_at(INTERVAL, unfinished_line=True) == pytest.approx(10.0 + INTERVAL)
    assert not FlushState().waits_for_line_end(0, INTERVAL)  # (nothing promised)


def test_a_growing_burst_waits_until_it_goes_quiet_or_for_burst_wait() -> None:
    """50 MB printed in 1 MB lines: one message, not one per interval (each
    message makes JupyterLab render the whole output again)."""
    state = FlushState(quiet_gap=0.01, burst_chars=1000, burst_wait=1.0)
    state.handle(Event.TOOK_TEXT, 10.0)
    state.handle(Event.WRITE, 10.01, interval=INTERVAL)
    pending = 1000
    now = 10.01
    while now < 11.0:  # growing at every check: not due at the interval (10.2)
        pending += 10_000
        wait = state.on_timer(now, pending, INTERVAL)
        assert wait is not None and 0 < wait <= 0.01
        now += wait
    assert state.on_timer(11.01, pending + 1, INTERVAL) == 0  # burst_wait after the promise
    assert state.due_at(INTERVAL, burst=True) == pytest.approx(11.01)
    assert state.due_at(30.0, burst=True) == pytest.approx(40.01)  # never before an interval


def test_idle_delay_never_exceeds_the_interval() -> None:
    state = FlushState(idle_delay=1.0)
    state.handle(Event.WRITE, 0.0, interval=INTERVAL)
    assert state.due_at(INTERVAL) == pytest.approx(INTERVAL)


def test_a_kept_licence_keeps_the_promise_and_its_due_time() -> None:
    """An explicit flush (progress bar) does not end the timer's promise: the
    next write makes none, and the batching follows the explicit flush."""
    state = _in(Phase.LICENSED, now=10.0)
    state.handle(Event.KEEP_FLUSH, 10.001)
    state.handle(Event.TOOK_TEXT, 10.001)
    assert state.handle(Event.WRITE, 10.002, interval=INTERVAL) == 0
    assert state.licensed
    assert state.due_at(INTERVAL) == pytest.approx(10.201)


@given(
    st.floats(0, 10),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 1 << 20),
    st.floats(0.001, 1),
    st.booleans(),
    st.floats(0, 1),
)
def test_on_timer_never_postpones_past_the_due_time(
    promised_at: float,
    age: float,
    grew_ago: float,
    pending: int,
    interval: float,
    unfinished: bool,
    flushed_ago: float,
) -> None:
    state = FlushState()
    state.handle(Event.TOOK_TEXT, promised_at - flushed_ago)
    state.handle(Event.WRITE, promised_at, interval=interval)
    now = promised_at + age
    state.on_timer(now - grew_ago, pending, interval, unfinished_line=unfinished)
    wait = state.on_timer(now, pending, interval, unfinished_line=unfinished)
    assert wait is not None and wait >= 0
    burst = pending >= state.burst_chars
    assert now + wait <= max(now, state.due_at(interval, unfinished, burst)) + 1e-9
    # an unfinished line postpones by line_wait at most, and never past an interval;
    # a growing burst by burst_wait (or one interval, if that is longer)
    limit = promised_at + min(interval, state.idle_delay + state.line_wait)
    if flushed_ago < interval:  # (batched: due an interval after that flush)
        limit = promised_at - flushed_ago + interval
    if burst:
        limit = promised_at + max(state.burst_wait, interval)
    assert now + wait <= max(now, limit) + 1e-9


# -- stateful: the promises the group relies on -----------------------------------------


# -- the answers: what a writer, a flush and the timer are told to do ---------------


def test_a_write_that_promises_sets_the_timer_and_later_writes_do_nothing() -> None:
    state = FlushState()
    do, ticket = state.on_write(1.0, interval=INTERVAL, pending=5, limit=LIMIT)
    assert (do, ticket) == (Do.SET_TIMER, 1)
    state.handle(Event.TIMER_SET, 1.0, ticket=ticket)
    assert state.on_write(1.01, interval=INTERVAL, pending=10, limit=LIMIT) == (Do.NOTHING, 0)


def test_a_backlog_over_the_writers_limit_is_flushed_by_the_writer() -> None:
    state = _in(Phase.LICENSED, 1.0)
    assert state.on_write(1.01, interval=INTERVAL, pending=LIMIT + 1, limit=LIMIT) == (Do.FLUSH, 0)


def test_a_backlog_past_the_watch_mark_wakes_the_timer_once() -> None:
    state = _in(Phase.LICENSED, 1.0)
    big = state.burst_chars + 1
    assert state.on_write(1.01, interval=INTERVAL, pending=big, limit=LIMIT) == (Do.WAKE_TIMER, 0)
    assert state.on_write(1.02, interval=INTERVAL, pending=big + 1, limit=LIMIT) == (Do.NOTHING, 0)
    state.on_timer(1.03, big + 1, INTERVAL)  # the timer looked: it watches the burst itself
    assert state.wake_backlog == math.inf
    state.handle(Event.FLUSH, 1.04)
    assert state.on_timer(1.05, 0, INTERVAL) is None
    state.handle(
        Event.TIMER_SET,
        1.06,
        ticket=state.on_write(1.06, interval=INTERVAL, pending=10, limit=LIMIT)[1],
    )
    state.on_timer(1.07, 10, INTERVAL)
    assert state.wake_backlog == state.burst_chars, "watched by the writers again"


@pytest.mark.parametrize(
    ("newline", "pending", "expected"),
    [(True, 5, Do.PUBLISH_LINES), (False, 5, Do.NOTHING), (False, LIMIT + 1, Do.FLUSH)],
)
def test_a_line_buffered_group_publishes_at_each_newline(
    newline: bool, pending: int, expected: Do
) -> None:
    """No IO thread, or a forked child: as a terminal, no timer ever."""
    state = FlushState(licensable=False, line_buffered=True)
    do, ticket = state.on_write(
        1.0, interval=INTERVAL, pending=pending, limit=LIMIT, newline=newline
    )
    assert (do, ticket) == (expected, 0)


def test_the_cells_first_write_is_due_at_the_idle_delay_even_while_batching() -> None:
    state = FlushState()
    state.handle(Event.TOOK_TEXT, 10.0)
    _, ticket = state.on_write(10.01, interval=INTERVAL, pending=5, limit=LIMIT)
    state.handle(Event.TIMER_SET, 10.01, ticket=ticket)
    assert state.due_at(INTERVAL) == pytest.approx(10.0 + INTERVAL)  # batched
    do, made = state.on_write(10.02, interval=INTERVAL, pending=9, limit=LIMIT, cells_first=True)
    assert (do, made) == (Do.SET_TIMER, ticket + 1)
    assert state.due_at(INTERVAL) == pytest.approx(10.02 + state.idle_delay)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("timer_runs", [True, False])
def test_a_flush_keeps_the_timer_only_for_a_licensed_promise_whose_timer_runs(
    phase: Phase, timer_runs: bool
) -> None:
    state = _in(phase, 1.0)
    keep = timer_runs and phase is Phase.LICENSED
    assert state.on_flush(1.1, timer_runs=timer_runs) is (not keep)
    assert state.phase is (Phase.LICENSED if keep else Phase.IDLE)


def test_a_stopping_thread_flushes_at_once_what_is_promised() -> None:
    state = _in(Phase.LICENSED, 1.0)
    assert state.on_timer(1.0, 5, INTERVAL) > 0
    assert state.on_timer(1.0, 5, INTERVAL, stopping=True) == 0
    assert FlushState().on_timer(1.0, 0, INTERVAL, stopping=True) is None


class FlushMachine(RuleBasedStateMachine):
    """Drives a FlushState as the group does, with a model of the text: text is
    never left pending without a promise, and the licence always means a timer
    that will flush is scheduled."""

    def __init__(self) -> None:
        super().__init__()
        self.state = FlushState()
        self.now = 0.0
        self.pending = 0  # characters queued and not yet taken
        self.timer_scheduled = False  # a timer for the current promise is on its way
        self.unscheduled: int | None = None  # a ticket whose timer is not yet set
        self.nothing_taken_since_new_parent = False

    @rule(dt=st.floats(0, 0.5))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(size=st.integers(1, 100_000))
    def slow_path_write(self, size: int) -> None:
        """A write through the checked path: queue, then do what the policy says."""
        self.pending += size
        renewing = self.state.renew and self.state.phase is not Phase.IDLE
        do, made = self.state.on_write(
            self.now, interval=INTERVAL, pending=self.pending, limit=LIMIT
        )
        assert (do is Do.SET_TIMER) == bool(made)
        if do is Do.FLUSH:
            assert self.pending > LIMIT
        if do is Do.WAKE_TIMER:
            assert self.pending > self.state.burst_chars
            assert self.state.wake_backlog == math.inf, "one wake-up until the timer looks"
        if renewing:
            assert made, "the first write under a new parent renews the promise"
        if made and self.nothing_taken_since_new_parent:
            # The new parent's first text: due at the idle delay, whatever came before.
            assert self.state.due_at(INTERVAL) <= self.now + self.state.idle_delay + 1e-9
        if made:
            self.unscheduled = made
            self.timer_scheduled = False

    @precondition(lambda self: self.state.licensed)
    @rule(size=st.integers(1, 1000))
    def fast_path_write(self, size: int) -> None:
        """A licensed write: queue without touching the state."""
        self.pending += size

    @precondition(lambda self: self.unscheduled is not None)
    @rule()
    def timer_scheduled_on_running_thread(self) -> None:
        assert self.unscheduled is not None
        self.state.handle(Event.TIMER_SET, self.now, ticket=self.unscheduled)
        self.unscheduled = None
        self.timer_scheduled = True

    @precondition(lambda self: self.unscheduled is not None)
    @rule()
    def interrupted_before_scheduling(self) -> None:
        """Ctrl-C between promising and scheduling: no timer, no licence."""
        self.unscheduled = None

    @precondition(lambda self: self.timer_scheduled)
    @rule()
    def timer_fires(self) -> None:
        wait = self.state.on_timer(self.now, self.pending, INTERVAL)
        if wait is None:
            self.timer_scheduled = False  # flushed meanwhile: the timer ends
            return
        assert wait >= 0
        if wait == 0:
            self._take(Event.FLUSH)
            self.timer_scheduled = False

    @rule()
    def explicit_flush_on_running_thread(self) -> None:
        cancel = self.state.on_flush(self.now, timer_runs=self.timer_scheduled)
        self._take(None)
        if cancel:
            self.timer_scheduled = False
        else:
            assert self.state.licensed, "only a licensed promise keeps its timer"

    @rule()
    def stop(self) -> None:
        """The stop callback: the promised flush, revoking the licence."""
        self._take(Event.FLUSH)
        self.timer_scheduled = False
        assert not self.state.licensed

    @rule()
    def new_parent(self) -> None:
        """set_parent with another request: the licence ends, the next write renews."""
        self.state.handle(Event.NEW_PARENT, self.now)
        assert not self.state.licensed
        self.nothing_taken_since_new_parent = True

    @rule(rest=st.integers(1, 50))
    def partial_line_put_back(self, rest: int) -> None:
        self._take(Event.FLUSH)
        self.pending += rest
        self.state.handle(Event.REQUEUE, self.now)
        assert self.state.phase is not Phase.IDLE

    def _take(self, event: Event | None) -> None:
        if event is not None:
            self.state.handle(event, self.now)
        if self.pending:
            self.state.handle(Event.TOOK_TEXT, self.now)
            self.nothing_taken_since_new_parent = False
        self.pending = 0

    @invariant()
    def licence_means_a_timer_is_on_its_way(self) -> None:
        if self.state.licensed:
            assert self.timer_scheduled

    @invariant()
    def pending_text_is_promised_a_flush(self) -> None:
        if self.pending:
            assert self.state.phase is not Phase.IDLE

    @invariant()
    def due_time_is_bounded(self) -> None:
        if self.state.phase is not Phase.IDLE:
            assert self.state.due_at(INTERVAL) <= self.state.promised_at + INTERVAL + 1e-9 or (
                self.state.due_at(INTERVAL) <= self.now + INTERVAL + 1e-9
            )


FlushMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
TestFlushMachine = FlushMachine.TestCase


def test_the_state_machine_imports_nothing_that_does_io_or_reads_a_clock() -> None:
    import ast
    from pathlib import Path

    import iostream.core.policy

    tree = ast.parse(Path(iostream.core.policy.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert imported <= {"__future__", "math", "enum"}, imported
