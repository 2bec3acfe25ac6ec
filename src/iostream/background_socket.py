"""A socket-like proxy whose sends happen on an IOPubThread.

Any thread may use it: sends are handed to the IO thread with ``schedule``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import zmq

from .completion import Completion

if TYPE_CHECKING:
    from .threadlink import SocketOwner


class BackgroundSocket:
    """``send``/``send_multipart`` through ``io_thread``; other socket attributes
    forward to ``io_thread.socket`` with a DeprecationWarning."""

    io_thread: SocketOwner | None = None

    def __init__(self, io_thread: SocketOwner) -> None:
        object.__setattr__(self, "io_thread", io_thread)

    @property
    def socket(self) -> Any:
        """The underlying socket of the IO thread."""
        return self._thread().socket

    def _thread(self) -> SocketOwner:
        thread = self.io_thread
        if thread is None:
            raise ValueError("BackgroundSocket has no IO thread")
        return thread

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        socket = self._thread().socket
        if socket is not None and hasattr(socket, attr):
            warnings.warn(
                f"Accessing zmq Socket attribute {attr} on BackgroundSocket is deprecated;"
                f" use .io_thread.socket.{attr}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(socket, attr)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr == "io_thread" or (attr.startswith("__") and attr.endswith("__")):
            object.__setattr__(self, attr, value)
            return
        warnings.warn(
            f"Setting zmq Socket attribute {attr} on BackgroundSocket is deprecated;"
            f" use .io_thread.socket.{attr}",
            DeprecationWarning,
            stacklevel=2,
        )
        setattr(self._thread().socket, attr, value)

    def send(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Send a single-part message on the IO thread."""
        self.send_multipart([msg], *args, **kwargs)

    def send_multipart(self, *args: Any, **kwargs: Any) -> None:
        """Send a multipart message on the IO thread."""
        self._thread().send_multipart(*args, **kwargs)

    def recv(self, timeout: float = 1.0, **kwargs: Any) -> Any:
        """Receive one message from the socket, on the IO thread.

        Waits at most ``timeout`` seconds; raises ``zmq.Again`` if nothing came.
        Sockets that cannot receive (PUB) raise their usual ``zmq.ZMQError``.
        """
        thread = self._thread()
        result: list[Any] = []
        errors: list[BaseException] = []
        done = Completion()

        def receive() -> None:
            try:
                if thread.socket.poll(int(timeout * 1000)):
                    result.append(thread.socket.recv(**kwargs))
                else:
                    errors.append(zmq.Again())
            except BaseException as error:
                errors.append(error)
            finally:
                done.set()

        thread.schedule(receive)
        if not done.wait(timeout + thread.stop_timeout):
            raise zmq.Again()
        if errors:
            raise errors[0]
        return result[0]

    def close(self) -> None:
        """Stop the IO thread and close its socket. Idempotent."""
        self._thread().close()
