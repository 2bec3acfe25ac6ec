"""A one-shot cross-thread signal that its setter can never block on."""

from __future__ import annotations

import threading


class Completion:
    """A one-shot signal that the IO thread sets without ever blocking.

    ``threading.Event`` is not safe here: a KeyboardInterrupt in the waiter's
    ``Event.wait`` can leave the Event's internal lock held, and the IO thread
    would then block forever in ``set()``. A bare lock released by the setter
    cannot be left in such a state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Signal completion. Any thread, once."""
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds; return whether it was signalled."""
        return self._lock.acquire(timeout=max(timeout, 0))
