"""iostream.childchannel on a real socketpair: records, pieces, the bounded send.

The sending side runs in this process here (it is the same code a forked child
runs); tests/test_fork.py and tests/e2e/test_forked_children.py fork for real.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any

import pytest

from iostream.childchannel import FIRST, LAST, RECORD_BYTES, ChildChannel

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="AF_UNIX sockets")


class Collected:
    def __init__(self) -> None:
        self.texts: list[tuple[int, str, dict[str, Any], str]] = []
        self.messages: list[list[bytes]] = []

    def on_text(self, owner: int, name: str, parent: dict[str, Any], text: str) -> None:
        self.texts.append((owner, name, parent, text))

    def on_message(self, frames: list[bytes]) -> None:
        self.messages.append(frames)


def read_all(channel: ChildChannel, got: Collected) -> None:
    channel.read(got.on_text, got.on_message)


def test_text_and_messages_arrive_whole_even_when_longer_than_a_datagram() -> None:
    channel = ChildChannel()
    got = Collected()
    fallback: list[str] = []
    long_text = "é" * (3 * RECORD_BYTES)  # UTF-8: 2 bytes each, cut anywhere
    channel.send_text(7, "stdout", b'{"msg_id": "a"}', "short\n", fallback.append)
    channel.send_text(7, "stderr", b"{}", long_text, fallback.append)
    assert channel.send_message([b"<IDS|MSG>", b"x" * (2 * RECORD_BYTES), b""])
    read_all(channel, got)
    assert fallback == []
    assert got.texts == [
        (7, "stdout", {"msg_id": "a"}, "short\n"),
        (7, "stderr", {}, long_text),
    ]
    assert got.messages == [[b"<IDS|MSG>", b"x" * (2 * RECORD_BYTES), b""]]
    channel.close()


def test_a_record_cut_short_is_dropped_and_the_next_one_arrives() -> None:
    """An interrupt between the pieces of a record leaves its start at the parent:
    the child's next record (which starts with a FIRST piece) replaces it."""
    channel = ChildChannel()
    got = Collected()
    head = struct.Struct("!cBIQ")  # kind, flags, pid, thread
    channel.writer.send(head.pack(b"t", FIRST, 42, 0) + b"the start of a record")
    body = struct.pack("!QHI", 1, 6, 2) + b"stdout{}whole\n"
    channel.writer.send(head.pack(b"t", FIRST | LAST, 42, 0) + body)
    read_all(channel, got)
    assert got.texts == [(1, "stdout", {}, "whole\n")]
    channel.close()


def test_the_system_refusing_big_datagrams_makes_the_child_send_smaller_ones() -> None:
    channel = ChildChannel()
    channel.writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    got = Collected()
    fallback: list[str] = []
    done = threading.Event()

    def reader() -> None:  # the parent's IO thread, reading while the child sends
        while not done.is_set():
            select.select([channel.reader], [], [], 0.01)
            read_all(channel, got)

    thread = threading.Thread(target=reader)
    thread.start()
    channel.send_text(1, "stdout", b"{}", "z" * 20_000 + "\n", fallback.append)
    done.set()
    thread.join(10)
    read_all(channel, got)  # (what came after the reader's last look)
    assert fallback == []
    assert got.texts == [(1, "stdout", {}, "z" * 20_000 + "\n")]
    channel.close()


def test_a_full_channel_gives_up_after_its_bound_with_one_note() -> None:
    """Nobody reads: the buffer fills, one send waits ``send_timeout`` and fails;
    that text and all later text go to the fallback, at once, after one note."""
    channel = ChildChannel()
    channel.send_timeout = 0.3
    fallback: list[str] = []
    sent = 0
    start = time.monotonic()
    while not fallback:
        channel.send_text(1, "stdout", b"{}", f"line {sent}\n" + "x" * 1000, fallback.append)
        sent += 1
        assert time.monotonic() - start < 30, "the buffer never filled"
    assert len(fallback) == 2
    assert "cannot reach its parent" in fallback[0]
    assert fallback[1].startswith(f"line {sent - 1}\n")
    t0 = time.monotonic()
    channel.send_text(1, "stdout", b"{}", "after\n", fallback.append)
    assert time.monotonic() - t0 < 0.2  # no second wait
    assert fallback[2:] == ["after\n"]
    assert not channel.send_message([b"frame"])
    # What did go in arrives, in order, up to the line that fell back.
    got = Collected()
    while True:
        before = len(got.texts)
        read_all(channel, got)
        if len(got.texts) == before:
            break
    assert [t[3].split("\n")[0] for t in got.texts] == [f"line {i}" for i in range(sent - 1)]
    channel.close()


def test_a_closed_descriptor_falls_back_at_once() -> None:
    """A child that closed its inherited descriptors (closerange) and then writes."""
    channel = ChildChannel()
    channel.writer.close()
    fallback: list[str] = []
    channel.send_text(1, "stdout", b"{}", "still shown\n", fallback.append)
    assert fallback[1:] == ["still shown\n"] and "cannot reach" in fallback[0]
    channel.reader.close()


class Parent:
    """The parent's IO thread: reads the channel until stopped; ``meddle`` runs
    after each read (to play other children's syncs)."""

    def __init__(self, channel: ChildChannel, meddle: Any = None) -> None:
        self.channel = channel
        self.got = Collected()
        self.meddle = meddle
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            select.select([self.channel.reader], [], [], 0.01)
            read_all(self.channel, self.got)
            if self.meddle is not None:
                self.meddle(self.channel)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def test_sync_returns_once_the_parent_has_handled_the_text() -> None:
    channel = ChildChannel()
    assert channel.sync(0.1)  # nothing sent: nothing to wait for
    parent = Parent(channel)
    channel.send_text(1, "stdout", b"{}", "handled?\n", [].append)
    assert channel.sync(10)
    assert parent.got.texts == [(1, "stdout", {}, "handled?\n")]
    parent.stop()
    channel.close()


def test_sync_sends_again_when_another_childs_sync_took_its_slot() -> None:
    """Other children's syncs may overwrite our slot before we look at it: the
    child sends a fresh token after a while, and returns well before its bound."""
    channel = ChildChannel()
    taken = {"done": False}

    def overwrite_once(ch: ChildChannel) -> None:
        if not taken["done"] and any(ch._acks[i] for i in range(64)):
            taken["done"] = True
            for i in range(64):
                ch._acks[i] = 2  # (even: never a token)

    parent = Parent(channel, overwrite_once)
    channel.send_text(1, "stdout", b"{}", "x\n", [].append)
    t0 = time.monotonic()
    assert channel.sync(10)
    assert taken["done"] and time.monotonic() - t0 < 2
    parent.stop()
    channel.close()


def test_a_parent_that_does_not_answer_costs_one_bounded_wait_then_short_ones() -> None:
    channel = ChildChannel()
    channel.send_text(1, "stdout", b"{}", "x\n", [].append)
    t0 = time.monotonic()
    assert not channel.sync(0.3)
    assert 0.3 <= time.monotonic() - t0 < 2
    channel.send_text(1, "stdout", b"{}", "y\n", [].append)
    t0 = time.monotonic()
    assert not channel.sync(10)
    assert time.monotonic() - t0 < 1  # 0.1 s until the parent answers again
    channel.close()


def test_once_the_parent_stops_reading_children_fall_back_at_once() -> None:
    channel = ChildChannel()
    channel.send_text(1, "stdout", b"{}", "before\n", [].append)
    channel.stop_reading()
    t0 = time.monotonic()
    assert channel.sync(10)  # nothing more to wait for: the text is gone to the fallback
    fallback: list[str] = []
    channel.send_text(1, "stdout", b"{}", "after\n", fallback.append)
    assert time.monotonic() - t0 < 1
    assert len(fallback) == 2 and fallback[1] == "after\n"
    channel.close()
