"""kernel-iostream: a drop-in replacement for ``ipykernel.iostream``.

Captures stdout/stderr (Python-level and file-descriptor-level) and publishes it
as Jupyter ``stream`` messages on an IOPub socket, from a background IO thread.
"""

from __future__ import annotations

from .background_socket import BackgroundSocket
from .iothread import CHILD, MASTER, PIPE_BUFFER_SIZE, IOPubThread
from .outstream import OutStream

__version__ = "0.1.0"

__all__ = [
    "CHILD",
    "MASTER",
    "PIPE_BUFFER_SIZE",
    "BackgroundSocket",
    "IOPubThread",
    "OutStream",
    "__version__",
]
