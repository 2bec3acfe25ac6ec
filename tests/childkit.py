"""Helpers for test scenarios that run in a child interpreter (fd capture, forks).

pytest captures fds 1 and 2 itself, so anything that redirects them runs in a
fresh process: the scenario builds a real XPUB socket, keyed Session, IOPubThread
and a SUB receiver in that process, and writes its findings as JSON to a file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import zmq
from jupyter_client.session import Session

KEY = b"child-key-0123456789"


class Setup:
    """An IOPubThread on XPUB with a subscribed receiver, in this process."""

    def __init__(self, module: str | None = None, pipe: bool = True, slim: bool = False) -> None:
        """``slim``: keep only what ``text()`` and ``streams()`` need of each
        message, so that a long run's receiver does not dominate the memory
        of the process it shares with the sender."""
        module = module or os.environ.get("IOSTREAM_IMPL", "iostream")
        self.slim = slim
        mod = __import__(module, fromlist=["IOPubThread"])
        self.module = mod
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.linger = 0
        self.socket.sndhwm = 0  # the receiver reads late: PUB must not drop
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.session = Session(key=KEY)
        self.thread = mod.IOPubThread(self.socket, pipe=pipe, session=self.session)
        self.thread.start()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = 0
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.rsession = Session(key=KEY)
        self.messages: list[dict[str, Any]] = []
        self._wait_subscribed()

    def _wait_subscribed(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.session.send(self.thread, "probe", {})
            if self.poll(0.05):
                self.poll(0.05)
                self.messages.clear()
                return
        raise RuntimeError("receiver never subscribed")

    def poll(self, timeout: float) -> bool:
        got = False
        while self.sub.poll(int(timeout * 1000)):
            _, frames = self.rsession.feed_identities(self.sub.recv_multipart())
            msg = self.rsession.deserialize(frames)
            if self.slim:
                msg = {"msg_type": msg["msg_type"], "content": msg["content"]}
            self.messages.append(msg)
            got = True
            timeout = 0.01
        return got

    def text(self, name: str | None = None) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name)
        )

    def wait_for(self, predicate: Any, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            self.poll(0.05)
        return True

    def streams(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == "stream"]

    def cells(self) -> list[tuple[Any, str]]:
        """Each stream message as (its parent's msg_id, its text), in order."""
        return [(m["parent_header"].get("msg_id"), m["content"]["text"]) for m in self.streams()]


def report(result: dict[str, Any]) -> None:
    """Write the scenario's findings where the test reads them."""
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))
