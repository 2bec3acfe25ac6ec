"""The channel that carries output from forked children to the parent's IOPub socket.

The parent binds a ROUTER socket; on Unix the endpoint is ``ipc://`` inside a
private (0700) directory, so nothing on the network can reach it; on Windows it is
loopback TCP. Every message carries a random 16-byte key that the parent compares
in constant time. A child sends ``[key, seq, kind, *payload]`` over one DEALER
connection without waiting; ``flush()`` then waits (bounded) until the parent has
acknowledged every ``seq``, so a child that calls ``flush()`` and then ``os._exit()``
loses nothing.

Two kinds of payload travel:

* ``MESSAGE``: a serialized Jupyter message, forwarded to the IOPub socket as is;
* ``TEXT``: ``[owner, name, parent_json, text]``, stream text a child wrote to a
  stream it inherited from the parent. The parent merges it into its own output
  buffer, so a child's lines are batched into few messages on the parent side
  while the child hands each line over at once (a ``multiprocessing.Pool`` kills
  its workers without a flush: what they printed must have left already).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

logger = logging.getLogger("iostream")

Frames = Sequence[bytes]

#: Payload kinds (the third frame).
MESSAGE = b"m"
TEXT = b"t"

#: Called on the IO thread with ``(owner, name, parent, text)`` of a TEXT record.
TextHandler = Callable[[int, str, dict[str, Any], str], None]


class PipeServer:
    """Parent side. Create on any thread; use ``handle`` on the IO thread only."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.key = os.urandom(16)
        self._dir: str | None = None
        self.socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        if sys.platform == "win32":
            port = self.socket.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:
            self._dir = tempfile.mkdtemp(prefix="iostream-")  # created 0700
            self.endpoint = f"ipc://{self._dir}/pipe"
            self.socket.bind(self.endpoint)

    def handle(
        self,
        frames: list[bytes],
        forward: Callable[[list[bytes]], None],
        on_text: TextHandler | None,
    ) -> None:
        """Check one received message and dispatch its payload. IO thread only.

        Messages without the right key, or malformed, are logged and dropped,
        never forwarded. Every accepted message is acknowledged, even if
        dispatching it failed, so the child never waits in vain.
        """
        if len(frames) < 4 or not hmac.compare_digest(frames[1], self.key):
            logger.warning("iostream: rejected a message on the subprocess pipe")
            return
        identity, seq, kind, payload = frames[0], frames[2], frames[3], frames[4:]
        try:
            if kind == MESSAGE:
                forward(payload)
            elif kind == TEXT and on_text is not None and len(payload) == 4:
                owner, name, parent, text = payload
                on_text(
                    int(owner),
                    name.decode("utf-8", "replace"),
                    json.loads(parent),
                    text.decode("utf-8", "replace"),
                )
            else:
                logger.warning("iostream: dropped a malformed message from a child")
        except Exception:
            logger.exception("iostream: handling a message from a child failed")
        finally:
            self.socket.send_multipart([identity, seq], zmq.NOBLOCK)

    def close(self) -> None:
        """Close the socket and remove the private directory. Idempotent."""
        self.socket.close(linger=0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PipeClient:
    """Child side: one connection per child process. Any thread (a lock serialises)."""

    def __init__(self, endpoint: str, key: bytes, ack_timeout: float = 10.0) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = int(ack_timeout * 1000)
        self.socket.sndhwm = 0
        self.socket.connect(endpoint)
        self._key = key
        self._lock = threading.Lock()
        self._sent = 0
        self._acked = 0
        self.ack_timeout = ack_timeout

    def send(self, frames: Frames) -> None:
        """Queue one serialized message for the parent; returns without waiting."""
        self._send(MESSAGE, frames)

    def send_text(self, owner: int, name: str, parent: bytes, text: str) -> None:
        """Queue stream text for the parent to merge into its buffer; no waiting.

        ``parent`` is the parent header as JSON.
        """
        payload = [str(owner).encode(), name.encode(), parent, text.encode("utf-8", "replace")]
        self._send(TEXT, payload)

    def _send(self, kind: bytes, payload: Frames) -> None:
        with self._lock:
            self._sent += 1
            seq = str(self._sent).encode()
            self.socket.send_multipart([self._key, seq, kind, *payload])

    def wait_delivered(self, timeout: float | None = None) -> bool:
        """Wait until the parent has forwarded everything sent so far.

        Returns False (after logging) if that took longer than ``timeout``
        (default ``ack_timeout``) seconds.
        """
        deadline = time.monotonic() + (self.ack_timeout if timeout is None else timeout)
        with self._lock:
            while self._acked < self._sent:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.socket.poll(int(remaining * 1000) + 1):
                    logger.warning("iostream: the parent did not acknowledge child output")
                    return False
                self._acked = max(self._acked, int(self.socket.recv_multipart()[0]))
        return True

    def close(self) -> None:
        """Wait (bounded) for delivery, then close the connection. Idempotent."""
        if self.socket.closed:
            return
        self.wait_delivered()
        self.socket.close(linger=0)
        self.context.term()
