"""iostream.locking.locked: an interrupt anywhere never leaves the lock held."""

from __future__ import annotations

import threading

import pytest

from iostream.locking import locked, new_lock


class Interrupting:
    """An RLock whose acquire raises KeyboardInterrupt before or after taking it."""

    def __init__(self, when: str) -> None:
        self.lock = threading.RLock()
        self.when = when

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.when == "before":  # interrupted inside the acquire: never held
            raise KeyboardInterrupt
        got = self.lock.acquire(blocking, timeout)
        if self.when == "after":  # gh-148874: right after the acquire returned
            raise KeyboardInterrupt
        return got

    def release(self) -> None:
        self.lock.release()


def free(lock: threading.RLock) -> bool:
    """Whether another thread can take ``lock`` at once."""
    result: list[bool] = []

    def take() -> None:
        got = lock.acquire(timeout=1)
        result.append(got)
        if got:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(5)
    return result == [True]


@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_in_or_right_after_the_acquire_leaves_the_lock_free(when: str) -> None:
    lock = Interrupting(when)
    ran: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        locked(lock, ran.append, 1)
    assert ran == []
    assert free(lock.lock)


def test_an_interrupt_inside_the_section_leaves_the_lock_free() -> None:
    lock = new_lock()

    def section() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        locked(lock, section)
    assert free(lock)


def test_the_section_runs_under_the_lock_and_its_result_is_returned() -> None:
    lock = new_lock()
    assert locked(lock, lambda a, b: (a + b, lock._is_owned()), 2, 3) == (5, True)
    assert free(lock)


def test_a_nested_take_on_the_same_thread_releases_only_its_own_hold() -> None:
    """A signal handler that prints in the middle of a section takes the lock
    again on the same thread: it must not deadlock, nor free the outer hold."""
    lock = new_lock()

    def outer() -> bool:
        locked(lock, lambda: None)
        return bool(lock._is_owned())

    assert locked(lock, outer) is True
    assert free(lock)
