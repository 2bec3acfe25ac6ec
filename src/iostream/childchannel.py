"""The channel that carries output from forked children to the parent process.

Forked children never use ZeroMQ: libzmq's threads and descriptors do not survive
a fork, and code that closes inherited descriptors before ``exec`` (IPython's
``!`` commands, ``preexec_fn``, ``os.forkpty``) makes libzmq abort. Instead the
parent makes, when its IO thread starts, an ``AF_UNIX`` ``SOCK_DGRAM``
socketpair. Both ends are close-on-exec, so programs a child executes never hold
them; forked children (and theirs) inherit the sending end and send on it from
the writing thread, waiting (bounded) while the parent's buffer is full. When
the send returns, the bytes are in the operating system's socket buffer: a
worker killed right after (``Pool.terminate``, ``SIGKILL``, ``os._exit``) has lost
nothing it handed over. The parent's IO loop reads the other end.

A datagram is never split or merged by the operating system, so each record
arrives whole and records never interleave inside one another. A record longer
than one datagram is sent as several pieces, marked first and last and keyed by
the sending process and thread; the parent joins them before it hands the record
on.

Every send is bounded by :attr:`ChildChannel.send_timeout`: past it (the parent
is stuck or gone), or on any other error (a child closed the descriptor), the
child gives up on the channel for good and hands its text to a fallback (the
stream's original descriptor), with one note saying why.

:meth:`ChildChannel.sync` (a child's ``flush()``) waits until the parent has
handled everything the child sent before it: a ``SYNC`` record carries a random
token, which the parent writes, once it has handled every record before it, into
one of :data:`ACK_SLOTS` slots of a small shared memory map (made by the parent
and inherited; not a descriptor). So a child that flushes and exits has its text
in the parent's buffer before the parent can learn that it exited.

Datagram layout: ``kind, flags, pid, thread`` (``!cBIQ``) and the body, or a
piece of it. A ``TEXT`` body is ``owner, len(name), len(parent)`` (``!QHI``), the
stream name, the parent header as JSON (``null``: the cell running when it
arrives) and the text (UTF-8). A ``MESSAGE`` body is a serialized Jupyter
message: each frame as its length (``!I``) and its bytes. A ``SYNC`` body is its
token (``!Q``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import forksafety

logger = logging.getLogger("iostream")

MESSAGE = b"m"
TEXT = b"t"
SYNC = b"s"
FIRST = 1
LAST = 2
_HEAD = struct.Struct("!cBIQ")
_TEXT_HEAD = struct.Struct("!QHI")
_FRAME_HEAD = struct.Struct("!I")
_TOKEN = struct.Struct("!Q")
#: The parent header (JSON) of text that goes to the cell running when it
#: arrives (the parent's global parent then), wherever the child was forked.
FOLLOW_RUNNING_CELL = b"null"

#: The most bytes a child puts in one datagram (it halves this if the system refuses).
RECORD_BYTES = 64 * 1024
#: The smallest datagram a child falls back to before it gives up.
MIN_RECORD_BYTES = 1024
#: Socket buffer asked for on both ends (macOS's default allows 2 KiB datagrams).
BUFFER_BYTES = 1 << 20
#: Messages (datagrams, or zmq messages) the IO thread reads from one socket
#: before letting other work run.
READ_BATCH = 256
#: Slots of the shared map the parent writes sync tokens into. A child whose slot
#: is overwritten before it looks (more syncs than slots at once) waits its bound.
ACK_SLOTS = 64
#: The value of the word after the slots once the parent reads no more.
CLOSED = 1

#: Called on the parent's IO thread with ``(owner, name, parent, text)`` of a TEXT record.
TextHandler = Callable[[int, str, dict[str, Any] | None, str], None]
#: Called on the parent's IO thread with the frames of a MESSAGE record.
MessageHandler = Callable[[list[bytes]], None]
#: Where a child's text goes when the channel cannot take it.
Fallback = Callable[[str], None]


class ChildChannel:
    """Both ends of the channel (see the module docstring).

    Made by the parent. The reading methods (:meth:`read`) run on the parent's IO
    thread only; the sending methods run in forked children, on any thread.
    """

    #: Seconds one send may wait for room in the parent's buffer.
    send_timeout: float = 10.0

    def __init__(self) -> None:
        # (socketpair's descriptors are close-on-exec: programs a child runs never
        # hold them.)
        self.reader, self.writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock, option in ((self.writer, socket.SO_SNDBUF), (self.reader, socket.SO_RCVBUF)):
            # (Past the system's limit, datagrams are cut smaller.)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        self.reader.setblocking(False)
        # The writer's identity: a child that closed it (closerange) may have got
        # the same number for another descriptor, which must never get our bytes.
        self._identity = (_identity(self.reader), _identity(self.writer))
        smallest = min(
            self.writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            self.reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )
        self._record_bytes = max(MIN_RECORD_BYTES, min(RECORD_BYTES, smallest // 2))
        # Shared with forked children: ACK_SLOTS slots, then the CLOSED word.
        self._acks_map = mmap.mmap(-1, (ACK_SLOTS + 1) * 8)
        self._acks = memoryview(self._acks_map).cast("Q")
        self._failed = False  # this process gave up on the channel
        self._unsynced = False  # sent something no sync has covered yet
        self._unanswered = False  # the latest sync timed out: the parent may be gone
        self._noted = False  # and said so
        # A forked child closes its copy of the reader when it first sends.
        self._reader_to_close = False
        # The parent's unfinished records, by (pid, thread) of their sender.
        self._pieces: dict[tuple[int, int], list[bytes]] = {}
        forksafety.register(self)

    def _after_fork_in_child(self) -> None:
        # (forksafety) Plain state only: the copy of the reader is closed at the
        # first send (a child that never writes touches nothing).
        self._pieces = {}
        self._reader_to_close = True

    # -- in a forked child, any thread ------------------------------------------

    def send_text(
        self, owner: int, name: str, parent: bytes, text: str, fallback: Fallback
    ) -> None:
        """Hand stream text to the parent; return once the system holds it.

        ``parent`` is the parent header as JSON (``null``: the parent's running
        cell). If the channel cannot take the text within :attr:`send_timeout`,
        it goes to ``fallback`` instead (after one note the first time).
        Any thread of a forked child.
        """
        raw_name = name.encode()
        body = b"".join(
            (
                _TEXT_HEAD.pack(owner, len(raw_name), len(parent)),
                raw_name,
                parent,
                text.encode("utf-8", "replace"),
            )
        )
        if not self._send_record(TEXT, body):
            if not self._noted:
                self._noted = True
                fallback(
                    f"[iostream: forked process {os.getpid()} cannot reach its parent; "
                    "its output goes here]\n"
                )
            fallback(text)

    def send_message(self, frames: Sequence[bytes]) -> bool:
        """Hand a serialized message to the parent, which publishes it as is.

        Returns whether the system holds it (False: dropped, the channel is
        unusable). Any thread of a forked child.
        """
        body = b"".join(part for frame in frames for part in (_FRAME_HEAD.pack(len(frame)), frame))
        return self._send_record(MESSAGE, body)

    def sync(self, timeout: float) -> bool:
        """Wait until the parent has handled everything this process sent so far.

        Returns whether it has within ``timeout`` seconds. True at once if
        nothing was sent since the last sync, or if the channel failed (the text
        went to the fallback). After a sync that timed out, the next ones wait
        0.1 s at most until the parent answers again, so a child whose parent is
        gone does not stall at every flush. Any thread of a forked child.
        """
        if self._failed or not self._unsynced:
            return True
        if self._unanswered:
            timeout = min(timeout, 0.1)
        deadline = time.monotonic() + timeout
        resend_at = 0.0
        wait = 0.05
        token = 0
        while True:
            now = time.monotonic()
            if now >= resend_at:
                # A fresh token now and then: another child's sync may have taken
                # the slot before we looked (and an ack means everything before it,
                # ours included, is handled).
                token = _TOKEN.unpack(os.urandom(8))[0] | 1  # (0: an empty slot)
                self._unsynced = False  # (text sent from now on needs another sync)
                if not self._send_record(SYNC, _TOKEN.pack(token)):
                    return True  # failed: the fallback has the text
                resend_at, wait = now + wait, min(wait * 2, 1.0)
            if self._acks[token % ACK_SLOTS] == token:
                self._unanswered = False
                return True
            if self._acks[ACK_SLOTS] == CLOSED:
                self._give_up("the parent stopped reading")
                return True
            if now >= deadline:
                self._unanswered = True
                self._unsynced = True
                return False
            time.sleep(0.0005)

    def _give_up(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            logger.warning("iostream: a forked child cannot reach its parent: %s", why)

    def _send_record(self, kind: bytes, body: bytes) -> bool:
        if self._failed:
            return False
        if self._acks[ACK_SLOTS] == CLOSED:
            self._give_up("the parent stopped reading")
            return False
        if self._reader_to_close:
            # Once the parent has closed its reader, a send from a child that holds
            # no copy fails at once instead of filling a buffer nobody reads.
            self._reader_to_close = False
            if _identity(self.reader) == self._identity[0]:
                self.reader.close()
            else:  # (closed meanwhile; the number may be someone else's now)
                self.reader.detach()
        while True:
            try:
                if _identity(self.writer) != self._identity[1]:
                    raise OSError(errno.EBADF, "the channel's descriptor was closed")
                self._send_pieces(kind, body)
                if kind != SYNC:
                    self._unsynced = True
                return True
            except OSError as error:
                if error.errno == errno.EMSGSIZE and self._record_bytes > MIN_RECORD_BYTES:
                    # The system's datagrams are smaller: send the record again,
                    # smaller (its FIRST piece makes the parent drop what it had).
                    self._record_bytes //= 2
                    continue
                self._give_up(str(error))
                return False

    def _send_pieces(self, kind: bytes, body: bytes) -> None:
        room = self._record_bytes - _HEAD.size
        pid, thread = os.getpid(), threading.get_ident()
        if len(body) <= room:
            self._send(_HEAD.pack(kind, FIRST | LAST, pid, thread) + body)
            return
        # (No lock: the parent joins pieces per process and thread.)
        for start in range(0, len(body), room):
            flags = (FIRST if start == 0 else 0) | (LAST if start + room >= len(body) else 0)
            self._send(_HEAD.pack(kind, flags, pid, thread) + body[start : start + room])

    def _send(self, datagram: bytes) -> None:
        """Send one datagram, waiting for room at most :attr:`send_timeout`.

        Non-blocking per call (``MSG_DONTWAIT``), never by a socket timeout: the
        sending end's blocking mode is shared by every process that holds it.
        """
        deadline = time.monotonic() + self.send_timeout
        pause = 0.001
        while True:
            try:
                self.writer.send(datagram, socket.MSG_DONTWAIT)
                return
            except OSError as error:
                # EAGAIN: the parent's buffer is full. ENOBUFS: how the BSDs say it.
                if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    raise
                full = error.errno != errno.ENOBUFS
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the parent took nothing for {self.send_timeout} s")
            if full:
                _wait_writable(self.writer, remaining)
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)

    # -- in the parent, IO thread only ------------------------------------------

    def read(
        self,
        on_text: TextHandler | None,
        on_message: MessageHandler,
        limit: int | None = READ_BATCH,
    ) -> bool:
        """Read what children sent (``limit`` datagrams at most; None: all that is
        there) and hand each record on, in order; whether ``limit`` stopped it
        (more may be waiting).

        A malformed record is logged and dropped; a failing handler never stops
        the next record. IO thread of the parent only.
        """
        count = 0
        while limit is None or count < limit:
            count += 1
            try:
                datagram = self.reader.recv(RECORD_BYTES)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as error:
                logger.warning("iostream: reading children's output failed: %s", error)
                return False
            try:
                self._handle(datagram, on_text, on_message)
            except Exception:
                logger.exception("iostream: handling a forked child's output failed")
        return True

    def _handle(
        self, datagram: bytes, on_text: TextHandler | None, on_message: MessageHandler
    ) -> None:
        kind, flags, pid, thread = _HEAD.unpack_from(datagram)
        piece = datagram[_HEAD.size :]
        sender = (pid, thread)
        if flags & FIRST:
            self._pieces.pop(sender, None)  # (a record an interrupt cut short)
        if not flags & LAST:
            if flags & FIRST:
                self._pieces[sender] = [piece]
            elif sender in self._pieces:
                self._pieces[sender].append(piece)
            return
        if not flags & FIRST:
            held = self._pieces.pop(sender, None)
            if held is None:
                raise ValueError("the last piece of a record whose start was lost")
            piece = b"".join((*held, piece))
        if kind == TEXT:
            if on_text is None:
                logger.warning("iostream: dropped a forked child's output: no stream takes it")
                return
            on_text(*_unpack_text(piece))
        elif kind == MESSAGE:
            on_message(_unpack_frames(piece))
        elif kind == SYNC:
            (token,) = _TOKEN.unpack(piece)
            self._acks[token % ACK_SLOTS] = token  # everything before it is handled
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def stop_reading(self) -> None:
        """Tell children the parent reads no more: their sends and syncs fail at
        once (to their fallback) instead of waiting. Parent, any thread."""
        self._acks[ACK_SLOTS] = CLOSED

    def close(self) -> None:
        """Close this process's ends (after :meth:`stop_reading`). Idempotent."""
        self.stop_reading()
        self.reader.close()
        self.writer.close()


def _identity(sock: socket.socket) -> tuple[int, int] | None:
    """What the descriptor behind ``sock`` is (device, inode); None if closed."""
    try:
        info = os.fstat(sock.fileno())
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _wait_writable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` can take a datagram within ``timeout`` seconds."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([], [sock], [], timeout)[1])


def _unpack_text(body: bytes) -> tuple[int, str, dict[str, Any] | None, str]:
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
    if parent is not None and not isinstance(parent, dict):
        raise ValueError("the parent of a text record is neither an object nor null")
    return owner, name, parent, text


def _unpack_frames(body: bytes) -> list[bytes]:
    """Split a MESSAGE body into its frames; ValueError if malformed."""
    frames: list[bytes] = []
    start = 0
    while start < len(body):
        try:
            (size,) = _FRAME_HEAD.unpack_from(body, start)
        except struct.error as error:
            raise ValueError("truncated message record") from error
        start += _FRAME_HEAD.size
        if start + size > len(body):
            raise ValueError("truncated message record")
        frames.append(body[start : start + size])
        start += size
    return frames
