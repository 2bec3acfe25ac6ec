"""The channel that carries output from forked children to the parent's IOPub socket.

The parent binds a ROUTER socket; on Unix the endpoint is ``ipc://`` inside a
private (0700) directory, so nothing on the network can reach it; on Windows
(:data:`iostream.platform.PIPE_TRANSPORT` is ``"tcp"``) it is loopback TCP on a
random port, reachable by local users, so there the key is what keeps others'
messages out. Every message starts with a frame ``key + kind [+ body]``: a random
16-byte key that the parent compares in constant time, then one byte saying what
follows. A child sends over one DEALER connection and never waits for the
parent, except in :meth:`PipeClient.wait_delivered` (what ``flush()`` calls): it
sends a ``SYNC`` with a sequence number, which the parent answers once it has
handled everything before it (one connection keeps order), so a child that calls
``flush()`` and then ``os._exit()`` loses nothing.

Kinds:

* ``MESSAGE``: the following frames are a serialized Jupyter message, forwarded
  to the IOPub socket as is;
* ``TEXT``: the body is ``owner, len(name), len(parent)`` (``!QHI``), the stream
  name, the parent header as JSON and the text (UTF-8): stream text a child wrote
  to a stream it inherited from the parent. The parent merges it into its own
  output buffer, so a child's writes are batched into few messages on the parent
  side while the child hands each one over at once, in one frame (a
  ``multiprocessing.Pool`` kills its workers without a flush: what they printed
  must have left already);
* ``SYNC``: the body is a sequence number, sent back as the answer.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from . import platform

logger = logging.getLogger("iostream")

Frames = Sequence[bytes]

#: What follows the key (one byte).
MESSAGE = b"m"
TEXT = b"t"
SYNC = b"s"
KEY_SIZE = 16
_TEXT_HEAD = struct.Struct("!QHI")

#: Called on the IO thread with ``(owner, name, parent, text)`` of a TEXT record.
TextHandler = Callable[[int, str, dict[str, Any], str], None]


class PipeServer:
    """Parent side. Create on any thread; use ``handle`` on the IO thread only."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.key = os.urandom(16)
        self._dir: str | None = None
        self.socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        if platform.PIPE_TRANSPORT == "tcp":
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
        publish_text: Callable[[], None] | None = None,
    ) -> None:
        """Check one received message and dispatch it. IO thread only.

        ``publish_text()`` runs before a message is forwarded, so the child's
        earlier text goes out first. A sync is answered without publishing: the
        text is in the parent's buffer by then (nothing is lost), and an
        unfinished line of the parent's stays unfinished until its end comes.
        Messages without the right key, or malformed, are logged and dropped,
        never forwarded. A failure handling one message never stops the next.
        """
        head = frames[1] if len(frames) > 1 else b""
        if len(head) <= KEY_SIZE or not hmac.compare_digest(head[:KEY_SIZE], self.key):
            logger.warning("iostream: rejected a message on the subprocess pipe")
            return
        kind, body = head[KEY_SIZE : KEY_SIZE + 1], head[KEY_SIZE + 1 :]
        try:
            if kind == TEXT:
                if on_text is None:
                    logger.warning("iostream: dropped child output: no stream takes it")
                    return
                on_text(*_unpack_text(body))
                return
            if publish_text is not None and kind == MESSAGE:
                publish_text()
            if kind == SYNC:
                self.socket.send_multipart([frames[0], body], zmq.NOBLOCK)
            elif kind == MESSAGE:
                forward(frames[2:])
            else:
                logger.warning("iostream: dropped a malformed message from a child")
        except Exception:
            logger.exception("iostream: handling a message from a child failed")

    def close(self) -> None:
        """Close the socket and remove the private directory. Idempotent."""
        self.socket.close(linger=0)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PipeClient:
    """Child side: one connection per child process. Any thread (a lock serialises)."""

    def __init__(
        self, endpoint: str, key: bytes, ack_timeout: float = 10.0, connect_timeout: float = 5.0
    ) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = int(ack_timeout * 1000)
        self.socket.sndhwm = 0
        self.socket.connect(endpoint)
        self._key = key
        self._lock = threading.Lock()
        self._syncs = 0
        self._unanswered = False  # the last sync timed out: the parent may be gone
        self.ack_timeout = ack_timeout
        # zmq connects in the background. Wait (bounded) for the parent's answer,
        # so that what is sent afterwards leaves at once: a child killed right
        # after writing (a pool worker) must not lose text still waiting for the
        # connection.
        self._unsynced = True  # sent something since the last answered SYNC
        self.wait_delivered(connect_timeout)

    def send(self, frames: Frames) -> None:
        """Queue one serialized message for the parent; returns without waiting."""
        self._send([self._key + MESSAGE, *frames])

    def send_text(self, owner: int, name: str, parent: bytes, text: str) -> None:
        """Queue stream text for the parent to merge into its buffer; no waiting.

        ``parent`` is the parent header as JSON.
        """
        raw_name = name.encode()
        head = _TEXT_HEAD.pack(owner, len(raw_name), len(parent))
        body = b"".join((self._key, TEXT, head, raw_name, parent, text.encode("utf-8", "replace")))
        self._send([body])

    def _send(self, frames: Frames) -> None:
        with self._lock:
            self._unsynced = True
            self.socket.send_multipart(frames)

    def wait_delivered(self, timeout: float | None = None) -> bool:
        """Wait until the parent has handled everything sent so far.

        Returns at once if nothing was sent since the last time; False (after
        logging) if it took longer than ``timeout`` (default ``ack_timeout``) seconds.
        """
        timeout = self.ack_timeout if timeout is None else timeout
        if self._unanswered:
            timeout = min(timeout, 0.1)  # do not stall every flush on a gone parent
        deadline = time.monotonic() + timeout
        with self._lock:
            if not self._unsynced:
                return True
            self._syncs += 1
            want = str(self._syncs).encode()
            self.socket.send(self._key + SYNC + want)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.socket.poll(int(remaining * 1000) + 1):
                    if not self._unanswered:
                        logger.warning("iostream: the parent did not acknowledge child output")
                    self._unanswered = True
                    return False
                self._unanswered = False  # any answer: the parent is there
                if self.socket.recv_multipart()[0] == want:  # older answers: skip
                    self._unsynced = False
                    return True

    def close(self) -> None:
        """Wait (bounded) for delivery, then close the connection. Idempotent."""
        if self.socket.closed:
            return
        self.wait_delivered()
        self.socket.close(linger=0)
        self.context.term()


def _unpack_text(body: bytes) -> tuple[int, str, dict[str, Any], str]:
    """Split a TEXT body into ``(owner, name, parent, text)``; ValueError if malformed."""
    try:
        owner, name_size, parent_size = _TEXT_HEAD.unpack_from(body)
    except struct.error as error:
        raise ValueError("truncated text record") from error
    start = _TEXT_HEAD.size
    name = body[start : start + name_size].decode("utf-8", "replace")
    start += name_size
    parent = json.loads(body[start : start + parent_size])
    text = body[start + parent_size :].decode("utf-8", "replace")
    if not isinstance(parent, dict):
        raise ValueError("the parent of a text record is not an object")
    return owner, name, parent, text
