"""What lets another thread do the IO thread's work while the IO thread sleeps.

A cross-thread round trip (wake the IO thread, wait for its answer) costs more
than the publishing it waits for. So :meth:`iostream.IOPubThread.run_exclusive`
lets a caller run such work itself, under the *executor lock*: the IO thread
holds that lock whenever it is awake and releases it only while it waits in its
selector (:class:`ReleasingSelector`). Whoever holds the lock therefore acts as
the IO thread, one at a time, with the IO thread parked in ``select()`` and
running no Python code.

A caller on the main thread runs that work under :class:`SignalsDeferred`, so a
KeyboardInterrupt (or any exception a signal handler raises) cannot strike
halfway through taking text from the buffer or handing a message to the socket:
the IO thread never sees signals; the main thread would.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import _thread
import selectors
import signal
import threading
from itertools import compress
from types import FrameType
from typing import Any

_UNCATCHABLE = {getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)}


# Signals a handler can be installed for.
_CATCHABLE = tuple(sorted(int(s) for s in signal.valid_signals() if s not in _UNCATCHABLE))


class ReleasingSelector(selectors.DefaultSelector):
    """The default selector, releasing ``lock`` while it waits for events.

    Used by the IO thread's event loop only: that thread holds ``lock`` from the
    moment it starts, and gives it up exactly while it sleeps in :meth:`select`.
    """

    def __init__(self, lock: threading.RLock) -> None:
        super().__init__()
        self._executor_lock = lock
        #: The IO thread has work and waits for the lock: others should step
        #: aside (a caller flushing in a tight loop would otherwise starve it).
        self.wants_lock = False

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        """Wait for events without the lock; return holding it again."""
        self._executor_lock.release()
        try:
            events: list[tuple[Any, int]] = super().select(timeout)
            return events
        finally:
            self.wants_lock = True
            self._executor_lock.acquire()
            self.wants_lock = False


class SignalsDeferred:
    """A context that holds back the signals Python handles, then delivers them.

    On the main thread only (Python runs signal handlers there and nowhere
    else). Every signal whose handler is a Python callable (SIGINT's
    KeyboardInterrupt, a SIGALRM timeout, ...) gets a recording handler for the
    duration; at the end the handlers are put back and each signal that came
    meanwhile is raised again, so its own handler runs then (raising there), as
    if the signal had come a moment later. Signals handled in C, ignored or left
    at their default action are untouched: they never raise in Python code.
    Uses ``_signal`` directly: ``signal.signal`` converts to enums and costs ten
    times as much, and this runs for every exclusive flush.
    """

    __slots__ = ("_caught", "_saved")

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []
        self._caught: list[int] = []

    def __enter__(self) -> None:
        if _thread.get_ident() != threading.main_thread().ident:
            return
        handlers = list(map(_signal.getsignal, _CATCHABLE))
        python_handled = compress(zip(_CATCHABLE, handlers, strict=True), map(callable, handlers))
        try:
            for signum, handler in python_handled:
                # Saved first: put back even if a handler raises right after.
                self._saved.append((signum, handler))
                _signal.signal(signum, self._note)
        except BaseException:
            self._restore()
            raise

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append(signum)

    def _restore(self) -> None:
        for signum, handler in reversed(self._saved):
            _signal.signal(signum, handler)
        self._saved.clear()

    def __exit__(self, *exc_info: object) -> None:
        if not self._saved:
            return
        try:
            self._restore()
        except BaseException:  # a restored handler raised: finish putting back
            self._restore()
            raise
        caught, self._caught = self._caught, []
        for signum in dict.fromkeys(caught):
            _signal.raise_signal(signum)
