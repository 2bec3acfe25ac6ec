"""The channel that carries output from forked children to the parent's IOPub socket.

The parent binds a ROUTER socket; on Unix the endpoint is ``ipc://`` inside a
private (0700) directory, so nothing on the network can reach it; on Windows it is
loopback TCP. Every message carries a random 16-byte key that the parent compares
in constant time. A child sends ``[key, seq, *frames]`` over one DEALER connection
and waits (bounded) for the parent to acknowledge ``seq``, so a child that calls
``flush()`` and then ``os._exit()`` loses nothing.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

import zmq

logger = logging.getLogger("iostream")

Frames = Sequence[bytes]


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

    def handle(self, frames: list[bytes], forward: Callable[[list[bytes]], None]) -> None:
        """Check one received message and forward its payload. IO thread only.

        Messages without the right key are logged and dropped, never forwarded.
        """
        if len(frames) < 3 or not hmac.compare_digest(frames[1], self.key):
            logger.warning("iostream: rejected a message on the subprocess pipe")
            return
        identity, seq, payload = frames[0], frames[2], frames[3:]
        try:
            forward(payload)
        finally:
            self.socket.send_multipart([identity, seq], zmq.NOBLOCK)

    def close(self) -> None:
        """Close the socket and remove the private directory. Idempotent."""
        self.socket.close(linger=0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PipeClient:
    """Child side: one connection per child process. One thread at a time."""

    def __init__(self, endpoint: str, key: bytes, ack_timeout: float = 10.0) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 1000
        self.socket.connect(endpoint)
        self._key = key
        self._seq = 0
        self.ack_timeout = ack_timeout

    def send(self, frames: Frames) -> bool:
        """Send one message and wait until the parent has forwarded it.

        Returns False (after logging) if no acknowledgement came within
        ``ack_timeout`` seconds; the message may still arrive later.
        """
        self._seq += 1
        seq = str(self._seq).encode()
        self.socket.send_multipart([self._key, seq, *frames])
        return self._wait_for_ack(seq)

    def _wait_for_ack(self, seq: bytes) -> bool:
        remaining_ms = int(self.ack_timeout * 1000)
        while self.socket.poll(remaining_ms):
            if self.socket.recv_multipart() == [seq]:
                return True
        logger.warning("iostream: the parent did not acknowledge output from pid %s", os.getpid())
        return False

    def close(self) -> None:
        """Close the connection; bounded by the socket's linger. Idempotent."""
        self.socket.close()
        self.context.term()
