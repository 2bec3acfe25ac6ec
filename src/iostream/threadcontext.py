"""Opt-in: threads and thread-pool work print into the cell that started them.

By default (ipykernel 7's rule, which its own tests assert) the output of a
thread that set no parent of its own goes to the cell running when it writes:
a thread started in cell 1 that prints while cell 3 runs prints into cell 3.

:func:`enable` switches to the rule of Python 3.14's ``thread_inherit_context``
flag, on every supported Python: the caller's :mod:`contextvars` context is
copied when a :class:`threading.Thread` is started, and when work is submitted to
a :class:`concurrent.futures.ThreadPoolExecutor`, and the thread (or the work)
runs in that copy. The streams keep their parent in a context variable, so that
output goes to the cell that started the thread or submitted the work, even
after that cell has finished. Anything else kept in context variables (decimal
contexts, a web framework's request) travels along the same way, as under 3.14.

A thread that sets its own parent (``set_thread_parent``) still overrides it.
``asyncio.to_thread`` and tasks already copy the context, with or without this.

From code: ``iostream.threadcontext.enable()``; from the kernel command line:
``python -m iostream kernel --thread-inherit-context`` (``python -m iostream
install --thread-inherit-context`` writes a kernelspec with it).

:func:`enable` and :func:`disable` may be called from any thread; they take
effect for threads started and work submitted afterwards. This module changes
``threading.Thread.start`` and ``ThreadPoolExecutor.submit`` (process-wide,
reversibly); nothing in the library imports it until :func:`enable` is called.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["disable", "enable", "enabled"]

_lock = threading.Lock()
#: Whether threads and pool work inherit the starter's context (guarded by _lock
#: for writes; a plain bool read by the wrappers).
_enabled = False
#: ``Thread.start`` and ``ThreadPoolExecutor.submit`` as they were before the
#: wrappers were installed (once, at the first enable; never removed, so another
#: library's wrapper around ours keeps working when this is disabled).
_original_start: Callable[[threading.Thread], None] | None = None
_original_submit: Callable[..., Future[Any]] | None = None


def _start(self: threading.Thread) -> None:
    """``Thread.start``; while enabled, the thread's ``run`` runs in a copy of the
    starter's context (what ``Thread(context=copy_context())`` does on 3.14)."""
    if _enabled:
        context = contextvars.copy_context()
        # An instance attribute: Thread's bootstrap calls ``self.run()``, and the
        # bound method taken here is the subclass's own ``run`` if it has one.
        self.run = functools.partial(context.run, self.run)  # type: ignore[method-assign]
    assert _original_start is not None  # (installed before the wrapper)
    _original_start(self)


def _submit(
    self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Future[Any]:
    """``ThreadPoolExecutor.submit``; while enabled, ``fn`` runs in a copy of the
    submitter's context (``Executor.map`` and ``loop.run_in_executor`` submit too)."""
    assert _original_submit is not None  # (installed before the wrapper)
    if _enabled:
        return _original_submit(self, contextvars.copy_context().run, fn, *args, **kwargs)
    return _original_submit(self, fn, *args, **kwargs)


def enable() -> None:
    """From now on, threads started and thread-pool work submitted run in a copy
    of the starter's context, so they print into the starter's cell. Idempotent;
    any thread."""
    global _enabled, _original_start, _original_submit
    with _lock:
        if _original_start is None:
            _original_start = threading.Thread.start
            _original_submit = ThreadPoolExecutor.submit
            threading.Thread.start = _start  # type: ignore[method-assign]
            ThreadPoolExecutor.submit = _submit  # type: ignore[method-assign,assignment]
        _enabled = True


def disable() -> None:
    """Back to the default rule for threads started and work submitted from now
    on (those already running keep their context). Idempotent; any thread."""
    global _enabled
    with _lock:
        _enabled = False


def enabled() -> bool:
    """Whether :func:`enable` is in force. Any thread."""
    return _enabled
