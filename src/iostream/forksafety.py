"""Per-process state reset after ``os.fork``.

Objects that hold locks, queues or threads register here; in a forked child each
gets ``_after_fork_in_child()`` called before any user code runs, so a lock that
another thread of the parent held at the moment of the fork cannot hang the child.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

logger = logging.getLogger("iostream")


class ForkAware(Protocol):
    """Anything whose per-process state must be renewed in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_registry: weakref.WeakSet[ForkAware] = weakref.WeakSet()

#: Whether this process has forked a child with ``os.fork`` (so with
#: multiprocessing's fork start method too) since it started, or since it was
#: forked itself. Only such children can write to our channel: an exec'd one
#: never inherits it. Read from any thread.
children_forked = False


def register(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` run in every forked child. Any thread."""
    _registry.add(obj)


def _reset_in_child() -> None:
    global children_forked
    children_forked = False
    for obj in list(_registry):
        try:
            obj._after_fork_in_child()
        except Exception:  # a broken object must not break the others
            logger.exception("iostream: resetting %r after fork failed", obj)


def _note_child() -> None:
    global children_forked
    children_forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child, after_in_parent=_note_child)
