"""What an OutStream needs from the thread it publishes through, and nothing more.

:class:`IOThread` is the protocol, stated once. :class:`iostream.IOPubThread`
implements all of it. Any other object with a ``schedule`` method (ipykernel's own
``IOPubThread``, which offers ``schedule``, ``thread`` and ``io_loop``) is wrapped
by :func:`link` in a :class:`StandIn` that provides the rest from what it has.

The protocol:

* ``schedule(f)``: run ``f()`` on the IO thread, in order (any thread);
* ``call_later(delay, f)`` returns a handle, ``cancel_timer(handle)`` cancels it:
  timers, from the IO thread only;
* ``add_stop_callback(f)``: run ``f()`` on the IO thread when it stops (on the
  stopping thread, as an inline call, if it never ran);
  ``add_stopped_callback(f)``: run ``f()`` once it has stopped, on the thread that
  stopped it (a stream ends its fd capture there);
* ``running``, ``stopping``, ``on_io_thread()``: the thread's state, and whether
  the caller is the IO thread (any thread);
* ``drains_before_stop``: whether every call scheduled before ``stop`` runs
  before the thread stops. Only then may a stream let writes skip the lock (the
  licence of :mod:`iostream.core.policy` relies on the promised timer running);
* the forked-child link: ``pipes_to_parent``, ``send_child_text``,
  ``wait_delivered`` and ``set_child_text_handler``; in the parent,
  ``watch_children`` and ``take_in_children`` (children's text taken in before a
  write, see :mod:`iostream.inlets`, and before a flush) (see
  :class:`iostream.IOPubThread`).

This module imports neither :mod:`iostream.iothread` nor
:mod:`iostream.outstream`, so neither needs the other for its types.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

#: ``handler(owner, name, parent, text)``: stream text a forked child sent.
ChildTextHandler = Callable[[int, str, dict[str, Any] | None, str], None]

#: The attributes (besides the methods below) of the protocol: all of
#: :class:`IOThread`'s, so an object is used without a StandIn only if it has them all.
ATTRIBUTES = ("drains_before_stop", "running", "stopping", "pipes_to_parent")

#: The methods of the protocol.
PROTOCOL = (
    "schedule",
    "call_later",
    "cancel_timer",
    "add_stop_callback",
    "add_stopped_callback",
    "on_io_thread",
    "set_child_text_handler",
    "send_child_text",
    "wait_delivered",
    "watch_children",
    "take_in_children",
)


class IOThread(Protocol):
    """The thread protocol (see the module docstring)."""

    drains_before_stop: bool

    @property
    def running(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def pipes_to_parent(self) -> bool: ...

    def watch_children(self) -> tuple[int, ...]: ...

    def take_in_children(self, timeout: float, wait: bool = True) -> bool: ...

    def schedule(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...

    def call_later(self, delay: float, f: Callable[[], None]) -> object: ...

    def cancel_timer(self, handle: object) -> None: ...

    def add_stop_callback(self, callback: Callable[[], None]) -> None: ...

    def add_stopped_callback(self, callback: Callable[[], None]) -> None: ...

    def on_io_thread(self) -> bool: ...

    def set_child_text_handler(
        self, handler: ChildTextHandler | None, publish: Callable[[], None] | None = None
    ) -> None: ...

    def send_child_text(
        self, owner: int, name: str, parent: bytes, text: str, fallback: Callable[[str], None]
    ) -> None: ...

    def wait_delivered(self, timeout: float) -> bool: ...


class StandIn:
    """The protocol on top of any object with ``schedule`` (and, optionally,
    ``thread``, ``io_loop``, ``add_stop_callback``). Any thread, as the protocol."""

    drains_before_stop = False  # nothing promises it of a foreign thread

    def __init__(self, thread: Any) -> None:
        self.wrapped = thread

    @property
    def running(self) -> bool:
        """The wrapped thread's ``running`` if it has one, else whether its
        ``thread`` is alive."""
        running = getattr(self.wrapped, "running", None)
        if isinstance(running, bool):
            return running
        thread = getattr(self.wrapped, "thread", None)
        return thread is not None and thread.is_alive()

    @property
    def stopping(self) -> bool:
        """The wrapped thread's ``stopping``, else False."""
        return bool(getattr(self.wrapped, "stopping", False))

    @property
    def pipes_to_parent(self) -> bool:
        """Always False: output of forked children is not ours to route here."""
        return False

    def watch_children(self) -> tuple[int, ...]:
        """Always empty: a foreign thread has no channel of ours."""
        return ()

    def take_in_children(self, timeout: float, wait: bool = True) -> bool:
        """Always True: nothing to take in."""
        return True

    def schedule(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """The wrapped thread's ``schedule``."""
        self.wrapped.schedule(f, *args, **kwargs)

    def call_later(self, delay: float, f: Callable[[], None]) -> object:
        """A timer on the wrapped thread's ``io_loop``. IO thread only."""
        return self.wrapped.io_loop.call_later(delay, f)

    def cancel_timer(self, handle: object) -> None:
        """Cancel a timer of :meth:`call_later`. IO thread only."""
        self.wrapped.io_loop.remove_timeout(handle)

    def add_stop_callback(self, callback: Callable[[], None]) -> None:
        """The wrapped thread's ``add_stop_callback`` if it has one, else nothing."""
        add = getattr(self.wrapped, "add_stop_callback", None)
        if add is not None:
            add(callback)

    def add_stopped_callback(self, callback: Callable[[], None]) -> None:
        """The wrapped thread's ``add_stopped_callback`` if it has one, else nothing."""
        add = getattr(self.wrapped, "add_stopped_callback", None)
        if add is not None:
            add(callback)

    def on_io_thread(self) -> bool:
        """Whether the caller is the wrapped thread's ``thread``."""
        thread = getattr(self.wrapped, "thread", None)
        # (by object, not ident: a dead thread's ident may be reused)
        return thread is not None and threading.current_thread() is thread

    def set_child_text_handler(
        self, handler: ChildTextHandler | None, publish: Callable[[], None] | None = None
    ) -> None:
        """Nothing: a foreign thread sends no child text."""

    def send_child_text(
        self, owner: int, name: str, parent: bytes, text: str, fallback: Callable[[str], None]
    ) -> None:
        """Never called (``pipes_to_parent`` is False)."""
        raise RuntimeError("this thread has no link to a parent process")

    def wait_delivered(self, timeout: float) -> bool:
        """Always True: a foreign thread has no forked children of ours."""
        return True


def link(thread: Any) -> IOThread:
    """``thread`` itself if it implements the whole protocol, else a StandIn."""
    if (
        getattr(thread, "drains_before_stop", None) is True
        and all(hasattr(thread, name) for name in ATTRIBUTES)
        and all(callable(getattr(thread, name, None)) for name in PROTOCOL)
    ):
        linked: IOThread = thread
        return linked
    return StandIn(thread)
