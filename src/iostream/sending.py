"""Socket I/O of the IOPub thread: sending, reading on the loop, XPUB subscriptions.

:func:`send_frames` hands a multipart message to pyzmq's compiled ``send``;
:func:`add_reader` reads a zmq socket on the IO loop in bounded batches.
:class:`Sending` is the part of :class:`iostream.IOPubThread` that sends: on the
socket, or from a forked child to the parent; and that welcomes XPUB
subscribers. Methods whose names start with ``_io_`` run on the IO thread only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import zmq
from tornado.ioloop import IOLoop

if TYPE_CHECKING:
    from .childchannel import ChildChannel

logger = logging.getLogger("iostream")

#: Messages the IO thread reads from one socket before letting other work run.
READ_BATCH = 256

# pyzmq's compiled send, when its backend is the compiled one (not cffi).
_compiled_send: Any = (
    None if type(zmq.backend.Socket.send).__name__ == "function" else zmq.backend.Socket.send
)
_more_flags: dict[int, tuple[int, ...]] = {}


def send_frames(socket: Any, frames: Sequence[Any], copy: bool = True) -> None:
    """Send ``frames`` as one multipart message on ``socket``. Caller owns the socket.

    For a plain ``zmq.Socket`` and ``bytes`` frames, every frame is handed to
    pyzmq's compiled ``send`` from C (``map`` consumed by a ``deque``), which
    skips the per-frame flag arithmetic of ``Socket.send_multipart`` (about
    15 us a message). Anything else goes through ``send_multipart``. Like it,
    this is not atomic for signals (pyzmq runs pending signal handlers after
    each frame), which is why only the IO thread, which Python never runs a
    signal handler on, calls it while the thread runs.
    """
    kind = type(socket)
    if (
        _compiled_send is None
        or kind.send_multipart is not zmq.Socket.send_multipart
        or kind.send is not zmq.Socket.send
        or not frames
        or not set(map(type, frames)) <= {bytes}
    ):
        socket.send_multipart(frames, copy=copy)
        return
    count = len(frames)
    flags = _more_flags.get(count)
    if flags is None:
        flags = _more_flags[count] = (int(zmq.SNDMORE),) * (count - 1) + (0,)
    deque(map(_compiled_send, repeat(socket, count), frames, flags, repeat(copy, count)), 0)


def add_reader(
    io_loop: IOLoop,
    sock: zmq.Socket[bytes],
    on_message: Callable[[list[bytes]], None],
    after: Callable[[], None] | None = None,
) -> None:
    """Call ``on_message`` for every message ``sock`` receives, then ``after``.

    On ``io_loop``'s thread only (the IO thread).
    """

    def on_event(_fd: Any, _events: int) -> None:
        # zmq's FD is edge-triggered: read until no message is left, but at
        # most a batch at a time, so busy children cannot starve the loop.
        for _ in range(READ_BATCH):
            if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                break
            on_message(sock.recv_multipart(zmq.NOBLOCK))
        else:
            io_loop.add_callback(on_event, None, 0)  # the edge is spent
        if after is not None:
            after()

    io_loop.add_handler(sock, on_event, IOLoop.READ)
    on_event(sock, 0)


class Sending:
    """Sends of :class:`iostream.IOPubThread` (see the module docstring)."""

    if TYPE_CHECKING:
        socket: Any
        session: Any
        _forked: bool
        _is_xpub: bool
        _warned_no_socket: bool
        _channel: ChildChannel | None

        def _on_io_thread(self) -> bool: ...

        def schedule(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...

    def send_multipart(self, *args: Any, **kwargs: Any) -> None:
        """Send a multipart message on the IO thread (socket-like). Any thread.

        Called on the IO thread, it sends at once; a forked child hands the
        message to the parent's channel on the calling thread.
        """
        if self._forked:
            self._send_from_child(*args)
        elif self._on_io_thread():
            self._really_send(*args, **kwargs)
        else:
            self.schedule(self._really_send, *args, **kwargs)

    def _really_send(self, msg: list[Any], *args: Any, **kwargs: Any) -> None:
        """Perform one send: on the socket, or to the parent from a forked child.

        Runs where :meth:`schedule` runs its calls. Never raises: a missing or
        closed socket is logged once and the message dropped.
        """
        if self._forked:
            self._send_from_child(msg)
        else:
            self._send_on_socket(msg, *args, **kwargs)

    def _send_from_child(self, msg: list[Any], *_args: Any) -> None:
        """In a forked child: hand ``msg`` to the parent's channel (never libzmq)."""
        channel = self._channel
        if channel is None:
            self._warn_dropped("a forked child without pipe=True cannot reach the socket")
        elif not channel.send_message([bytes(part) for part in msg]):
            self._warn_dropped("the parent process does not take a forked child's output")

    def _send_on_socket(self, msg: list[Any], *args: Any, **kwargs: Any) -> None:
        socket = self.socket
        if socket is None:
            self._warn_dropped("the IOPub socket is closed")
            return
        try:
            if args or set(kwargs) - {"copy"}:
                socket.send_multipart(msg, *args, **kwargs)
            else:
                send_frames(socket, msg, kwargs.get("copy", True))
        except (zmq.ZMQError, AttributeError, ValueError) as error:
            # (zmq.Again included: a send the caller made non-blocking is
            # dropped, not retried, which would spin the IO thread.)
            self._warn_dropped(f"sending failed: {error}")
        if self._is_xpub and self._on_io_thread():
            # A send can consume the FD edge that announces a subscription.
            self._io_read_subscriptions()

    def _warn_dropped(self, why: str) -> None:
        if not self._warned_no_socket:
            self._warned_no_socket = True
            logger.warning("iostream: IOPub output dropped: %s", why)

    def _io_on_socket_event(self, _fd: Any, _events: int) -> None:
        self._io_read_subscriptions()

    def _io_read_subscriptions(self) -> None:
        """Read XPUB (un)subscriptions; welcome each subscriber (JEP 65)."""
        socket = self.socket
        if socket is None:
            return
        try:
            while socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frame = socket.recv(zmq.NOBLOCK)
                if frame[:1] == b"\x01":
                    self._io_welcome(frame[1:])
        except zmq.ZMQError as error:
            logger.debug("iostream: reading subscriptions failed: %s", error)

    def _io_welcome(self, topic: bytes) -> None:
        session = self.session
        if not session or not hasattr(session, "send"):
            return
        try:
            subscription = topic.decode("utf-8")
        except UnicodeDecodeError:
            return
        try:
            session.send(
                self.socket,
                "iopub_welcome",
                {"subscription": subscription},
                parent={},
                ident=topic or None,
            )
        except Exception:
            logger.exception("iostream: sending iopub_welcome failed")


def _socket_type(socket: Any) -> int | None:
    if not hasattr(socket, "getsockopt"):
        return None
    try:
        return int(socket.getsockopt(zmq.TYPE))
    except zmq.ZMQError:
        return None
