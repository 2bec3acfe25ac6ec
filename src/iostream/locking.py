"""Critical sections that a KeyboardInterrupt can never leave locked.

Python raises KeyboardInterrupt on the main thread between two bytecodes. On some
CPython releases (3.14 builds without the fix of gh-148874) it can land right
after a ``with`` statement's ``__enter__`` has acquired a lock and before the
statement protects its block: ``__exit__`` never runs and the lock stays held for
good, so every later writer, and the IO thread, would wait on it forever.

:func:`locked` runs a function under a lock so that this cannot happen: the lock
is acquired inside ``try``, and ``finally`` releases it if this thread holds it.
An interrupt before the acquire, inside it (the acquire then fails), right after
it, or inside the function, leaves the lock free. The locks are
``threading.RLock`` (:func:`new_lock`), whose ``release`` raises RuntimeError
when the caller does not hold it: that is how ``finally`` tells "acquired" from
"interrupted inside the acquire". A thread may take one again while it holds it
(a signal handler or ``__del__`` that prints in the middle of a section): an
RLock lets it, where a plain lock would deadlock that thread; such a nested acquire
never waits, so nothing can interrupt it, and ``finally`` releases only its own.

Which locks: those a thread that can be interrupted (the main thread) takes on
the write, flush and ``set_parent`` paths of a running kernel: the IO thread's
queue lock, a stream group's lock and fd capture's waiters lock. Sections only
the IO thread or the fd reader runs (Python never runs a signal handler there)
keep plain ``with``, as do rare ones (start, stop, making a stream) and the
publish lock, which a writing thread takes only without a running IO thread or
in a forked child.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Lock(Protocol):
    """What :func:`locked` needs of a lock (a ``threading.RLock``)."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


def new_lock() -> threading.RLock:
    """A lock for :func:`locked`: a ``threading.RLock``."""
    return threading.RLock()


def locked(lock: Lock, f: Callable[..., T], *args: Any) -> T:
    """Return ``f(*args)``, run while holding ``lock``; however an interrupt
    strikes, the lock is not left held. Any thread."""
    try:
        lock.acquire()
        return f(*args)
    finally:
        # (Not contextlib.suppress: its __enter__ is a call, after which an
        # interrupt could strike before the release.)
        try:  # noqa: SIM105
            lock.release()  # the only call here: nothing can strike before it
        except RuntimeError:  # interrupted inside acquire: never held
            pass
