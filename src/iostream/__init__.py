"""kernel-iostream: a drop-in replacement for ``ipykernel.iostream``.

Captures stdout/stderr (Python-level and file-descriptor-level) and publishes it
as Jupyter ``stream`` messages on an IOPub socket, from a background IO thread.
"""

from __future__ import annotations

from .iothread import CHILD, MASTER, PIPE_BUFFER_SIZE, BackgroundSocket, IOPubThread
from .outstream import OutStream

__version__ = "0.1.0"


def install() -> None:
    """Make ``ipykernel.iostream`` resolve to this package for later imports.

    See :func:`iostream.integration.install`; imported only when called, so
    importing :mod:`iostream` never imports ipykernel. Main thread, before
    ipykernel's kernel machinery is imported.
    """
    from .integration import install as install_into_ipykernel

    install_into_ipykernel()


__all__ = [
    "CHILD",
    "MASTER",
    "PIPE_BUFFER_SIZE",
    "BackgroundSocket",
    "IOPubThread",
    "OutStream",
    "__version__",
    "install",
]
