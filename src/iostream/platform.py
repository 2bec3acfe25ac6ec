"""The platform facts the library branches on, decided once, at import.

Everything in :mod:`iostream` that behaves differently per operating system reads
these names instead of ``sys.platform``:

* :data:`CAN_CAPTURE_FDS`: file descriptors 1 and 2 can be redirected into a pipe
  read by a thread (``select.poll`` on pipes; Linux and macOS);
* :data:`CAN_ENLARGE_PIPE`: a pipe can be enlarged with ``F_SETPIPE_SZ`` (Linux);
* :data:`CAN_FORK`: processes can fork (not Windows), so forked children may
  write to the streams they inherit.

Testing aid: the environment variable ``IOSTREAM_PLATFORM`` (``win32``,
``darwin`` or ``linux``), read when this module is first imported, makes these
facts those of that platform, so another platform's code paths can run on this
machine. It changes nothing else: ``sys.platform``, and so ipykernel, still see the
real platform. Forcing a platform's paths where its facts do not hold (``linux``
on macOS: the pipe cannot be enlarged) exercises their fallbacks. Any other value
is ignored with a warning, never an error: a typo must not keep a kernel from
starting. Set it in the environment of the process to test, before it starts.

The values never change after import; any thread may read them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

__all__ = [
    "CAN_CAPTURE_FDS",
    "CAN_ENLARGE_PIPE",
    "CAN_FORK",
    "PLATFORM",
    "decide",
]

#: The environment variable that overrides ``sys.platform`` for these facts.
ENV_VAR: Final = "IOSTREAM_PLATFORM"
#: The values ``IOSTREAM_PLATFORM`` accepts.
CHOICES: Final = ("win32", "darwin", "linux")


def decide(real: str, override: str | None) -> tuple[str, bool]:
    """Return ``(platform, forced)``: ``override`` if it is one of :data:`CHOICES`.

    ``real`` is used (and ``forced`` is False) when ``override`` is unset or empty;
    an unknown ``override`` is logged and ignored. Pure apart from the log record.
    """
    if not override:
        return real, False
    if override in CHOICES:
        return override, True
    logging.getLogger("iostream").warning(
        "iostream: ignoring %s=%r (expected one of %s); using %s",
        ENV_VAR,
        override,
        ", ".join(CHOICES),
        real,
    )
    return real, False


_DECIDED = decide(sys.platform, os.environ.get(ENV_VAR))
#: The platform whose paths the library takes: ``sys.platform`` unless forced.
PLATFORM: Final[str] = _DECIDED[0]

#: File descriptors can be captured through a pipe (Linux, macOS).
CAN_CAPTURE_FDS: Final[bool] = PLATFORM.startswith(("linux", "darwin"))
#: A pipe can be enlarged with ``fcntl(F_SETPIPE_SZ)`` (Linux).
CAN_ENLARGE_PIPE: Final[bool] = PLATFORM.startswith("linux")
#: Processes can fork (everywhere but Windows).
CAN_FORK: Final[bool] = PLATFORM != "win32" and hasattr(os, "fork")
