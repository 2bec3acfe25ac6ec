"""Capture of a file descriptor (1 or 2) through a pipe, read by a thread.

What C code, ``os.write`` and child processes write to the descriptor is decoded
incrementally (a character split across reads arrives whole, invalid bytes become
U+FFFD), handed to a callback, and echoed to the original descriptor. The pipe is
enlarged to 1 MiB where Linux allows, so C code that holds the GIL can write that
much in one call without waiting for the reader (which needs the GIL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
from collections.abc import Callable

from .core import Utf8Decoder

logger = logging.getLogger("iostream")

#: Bytes asked of the pipe per read.
READ_SIZE = 1 << 16
#: Size the pipe is enlarged to (Linux ``F_SETPIPE_SZ``).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


class FdCapture:
    """Redirects ``fd`` into a pipe until :meth:`close`.

    Create and close from one thread (any); the callback runs on the reader thread.
    """

    def __init__(self, fd: int, on_text: Callable[[str], None]) -> None:
        self.fd = fd
        self._on_text = on_text
        self._pid = os.getpid()
        self._decoder = Utf8Decoder()
        self._echo_ok = True
        self.original_copy = os.dup(fd)
        self.read_fd, write_fd = os.pipe()
        self._stop_read, self._stop_write = os.pipe()
        _enlarge_pipe(write_fd)
        os.dup2(write_fd, fd)
        os.close(write_fd)  # fd itself now holds the write end
        self.thread: threading.Thread | None = None

    def start(self, target: Callable[[], None] | None = None) -> None:
        """Start the reader thread, running ``target`` (default :meth:`read_loop`)."""
        self.thread = threading.Thread(
            target=target or self.read_loop, name=f"iostream-fd{self.fd}", daemon=True
        )
        self.thread.start()

    def read_loop(self) -> None:
        """Reader thread: publish and echo everything until told to stop."""
        while True:
            ready, _, _ = select.select([self.read_fd, self._stop_read], [], [])
            if self._stop_read in ready:
                self._drain_and_finish()
                return
            data = os.read(self.read_fd, READ_SIZE)
            if not data:
                self._deliver(self._decoder.finish())
                return
            self._handle(data)

    def _drain_and_finish(self) -> None:
        os.set_blocking(self.read_fd, False)
        while True:
            try:
                data = os.read(self.read_fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            self._handle(data)
        self._deliver(self._decoder.finish())

    def _handle(self, data: bytes) -> None:
        self._deliver(self._decoder.decode(data))
        self._echo(data)

    def _deliver(self, text: str) -> None:
        if not text:
            return
        try:
            self._on_text(text)
        except Exception:
            logger.exception("iostream: publishing output captured from fd %s failed", self.fd)

    def _echo(self, data: bytes) -> None:
        """Copy to the original descriptor; a failure there never stops publishing."""
        if not self._echo_ok:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.original_copy, view) :]
        except OSError:
            self._echo_ok = False

    def close(self, timeout: float = 10.0) -> None:
        """Restore ``fd``, publish everything written before, release every fd.

        Waits at most ``timeout`` seconds for the reader; if it does not finish
        (a callback blocked), the pipe is left open rather than closed under it.
        In a forked child only the descriptor is restored.
        """
        os.dup2(self.original_copy, self.fd)
        if os.getpid() != self._pid:
            return
        os.write(self._stop_write, b"x")
        if self.thread is not None:
            self.thread.join(timeout)
        if self.thread is not None and self.thread.is_alive():
            logger.error("iostream: the reader of fd %s did not finish in %ss", self.fd, timeout)
            return
        for fd in (self.read_fd, self._stop_read, self._stop_write, self.original_copy):
            with contextlib.suppress(OSError):
                os.close(fd)


def _enlarge_pipe(fd: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    for size in (PIPE_SIZE, PIPE_SIZE // 4):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
            return
