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
import ctypes
import os
import selectors
import signal
import sys
import threading
from itertools import compress
from types import FrameType
from typing import Any

from . import forksafety

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
    """Holds back the signals Python handles on the main thread, then delivers them.

    :meth:`begin` gives every signal whose handler is a Python callable
    (SIGINT's KeyboardInterrupt, a SIGALRM timeout, ...) a recording handler;
    :meth:`end` puts the handlers back and calls the handler of each signal
    that came meanwhile, once, in order of arrival (raising the first exception
    a handler raises, after all have run), as if the signals had come a moment
    later. Signals that are ignored or left at their default action are
    untouched: they never raise in Python code. On any other thread both are
    no-ops (Python runs signal handlers on the main thread only).

    ``begin`` declines (returns False, changing nothing) where putting a handler
    back could lose something: when C code (faulthandler, cysignals) has
    installed its own OS-level handler over Python's, or where that cannot be
    checked (only Linux can). Uses ``_signal`` directly: ``signal.signal``
    converts to enums and costs ten times as much.
    """

    __slots__ = ("_caught", "_ending", "_handlers", "_saved")

    def __init__(self) -> None:
        self._saved: list[tuple[int, Any]] = []  # swapped, not yet put back
        self._handlers: dict[int, Any] = {}  # every handler swapped (never cleared)
        self._caught: list[int] = []
        self._ending = False

    def begin(self) -> bool:
        """Start holding signals back; False if that cannot be done safely here."""
        if _thread.get_ident() != threading.main_thread().ident:
            return True
        handlers = list(map(_signal.getsignal, _CATCHABLE))
        python_handled = list(
            compress(zip(_CATCHABLE, handlers, strict=True), map(callable, handlers))
        )
        if not python_handled:
            return True
        if not all(_os_handler_is_pythons(signum) for signum, _ in python_handled):
            return False
        _active.add(self)
        try:
            for signum, handler in python_handled:
                # Saved first: put back even if a handler raises right after.
                self._handlers[signum] = handler
                self._saved.append((signum, handler))
                _signal.signal(signum, self._note)
        except BaseException:
            self.end()
            raise
        return True

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if not self._ending:
            self._caught.append(signum)
            return
        # Still installed after end() began: end() was cut short (a handler it
        # put back raised). Repair on the spot and act as the real handler.
        handler = self._handlers[signum]
        _signal.signal(signum, handler)
        handler(signum, frame)

    def _put_back(self) -> None:
        """Restore every saved handler, even if handlers raise meanwhile.

        A recorder left installed by an exception that escapes anyway repairs
        itself when its signal next comes (see ``_note``).
        """
        self._ending = True
        failure: BaseException | None = None
        while self._saved:
            signum, handler = self._saved[-1]
            try:
                _signal.signal(signum, handler)
                self._saved.pop()
            except BaseException as error:  # (a pending signal's handler ran)
                failure = failure or error
        _active.discard(self)
        if failure is not None:
            raise failure

    def end(self) -> None:
        """Put the handlers back and run those of the signals that came meanwhile."""
        if not self._handlers:
            return
        try:
            self._put_back()
        finally:
            caught, self._caught = self._caught, []
            pending = [(signum, self._handlers[signum]) for signum in dict.fromkeys(caught)]
            _deliver(pending, _callers_frame())

    def _after_fork_in_child(self) -> None:
        # Forked while this thread stood in for the IO thread: the child must
        # get its handlers back (its signals were not ours to hold).
        self._caught = []
        self._put_back()


def _deliver(pending: list[tuple[int, Any]], frame: FrameType | None) -> None:
    """Call each handler (a direct call: the signal already reached any wakeup fd)."""
    failure: BaseException | None = None
    for signum, handler in pending:
        try:
            handler(signum, frame)
        except BaseException as error:
            failure = failure or error
    if failure is not None:
        raise failure


def _callers_frame() -> FrameType | None:
    """The innermost frame outside this package (what a handler would have got)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return frame


class _ForkReset:
    def _after_fork_in_child(self) -> None:
        for deferral in list(_active):
            deferral._after_fork_in_child()


_active: set[SignalsDeferred] = set()  # begun, not yet ended (main thread)
_fork_reset = _ForkReset()
forksafety.register(_fork_reset)


def _os_handler(signum: int) -> int | None:
    """The address of the OS-level handler of ``signum`` (Linux), else None."""
    if _sigaction is None or _sigaction(signum, None, _action) != 0:
        return None
    return _action_handler.value or 0


def _pythons_handler() -> int | None:
    """The address of CPython's own C signal handler, found once.

    Found by giving an unused real-time signal (default action at both the
    Python and the OS level) a Python handler for a moment, with the signal
    blocked meanwhile. Main thread only.
    """
    global _PYTHON_HANDLER
    probe = _PROBE_SIGNAL
    if (
        _PYTHON_HANDLER is not None
        or probe is None
        or _signal.getsignal(probe) != _signal.SIG_DFL
        or _os_handler(probe) != 0
    ):
        return _PYTHON_HANDLER
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {probe})
    try:
        _signal.signal(probe, _probe)
        try:
            _PYTHON_HANDLER = _os_handler(probe)
        finally:
            _signal.signal(probe, _signal.SIG_DFL)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return _PYTHON_HANDLER


def _probe(signum: int, frame: FrameType | None) -> None:
    pass


def _os_handler_is_pythons(signum: int) -> bool:
    expected = _pythons_handler()
    return expected is not None and _os_handler(signum) == expected


def _load_sigaction() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sigaction
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_sigaction = _load_sigaction()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# One buffer, reused (main thread only): any struct sigaction fits, and its
# first field is the handler everywhere.
_action = ctypes.create_string_buffer(256)
_action_handler = ctypes.c_void_p.from_buffer(_action)
_PYTHON_HANDLER: int | None = None
_PROBE_SIGNAL: int | None = getattr(signal, "SIGRTMAX", None)
