"""Shared test helpers: real zmq sockets on loopback, a keyed Session, a receiver.

Kept out of ``conftest.py`` so that test modules can import them by a name that
no other directory's conftest shadows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

import iostream.platform

KEY = b"a-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# -- skip markers for platform facilities -------------------------------------------
# Conditions test the facility itself where one can be tested.

#: Where fd-level capture (``watchfd``) runs: OutStream turns it on for Linux and
#: macOS only (as ipykernel does), and the fd reader needs ``select.poll``.
FD_CAPTURE_PLATFORM = iostream.platform.CAN_CAPTURE_FDS

needs_fork = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="needs os.fork (not available on Windows)"
)
needs_fd_capture = pytest.mark.skipif(
    not FD_CAPTURE_PLATFORM,
    reason="needs fd-level capture (watchfd), which runs on Linux and macOS only",
)
needs_proc_fds = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(),
    reason="counts open fds through /proc/self/fd, which only Linux has",
)
#: For Linux-only facilities; each use gives its own reason.
NOT_LINUX = not sys.platform.startswith("linux")


@dataclass
class Receiver:
    """A SUB socket with a keyed Session that deserializes (and so verifies) all."""

    socket: zmq.Socket[bytes]
    session: Session
    messages: list[dict[str, Any]] = field(default_factory=list)

    def poll(self, timeout: float) -> bool:
        """Receive what arrives within ``timeout`` seconds; True if anything came."""
        got = False
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000)):
                return got
            _, frames = self.session.feed_identities(self.socket.recv_multipart())
            self.messages.append(self.session.deserialize(frames))
            got = True

    def wait_for(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
    ) -> None:
        """Receive until ``condition(messages)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {self.summary()}")
            self.poll(0.05)

    def streams(self, name: str | None = None) -> list[dict[str, Any]]:
        """The stream messages received so far (of one stream, if named)."""
        return [
            m
            for m in self.messages
            if m["msg_type"] == "stream" and (name is None or m["content"]["name"] == name)
        ]

    def text(self, name: str | None = None) -> str:
        """The concatenated text of the stream messages received so far."""
        return "".join(m["content"]["text"] for m in self.streams(name))

    def wait_for_text(self, expected: str, name: str | None = None, timeout: float = 10) -> None:
        """Receive until the stream text is at least as long as ``expected``."""
        self.wait_for(lambda _m: len(self.text(name)) >= len(expected), timeout)

    def summary(self) -> str:
        return repr([(m["msg_type"], m["content"]) for m in self.messages])[:2000]


@dataclass
class Kernelish:
    """What a kernel has: a context, an XPUB socket, a session, an IO thread."""

    context: zmq.Context[zmq.Socket[bytes]]
    socket: zmq.Socket[bytes]
    session: Session
    thread: Any
    receiver: Receiver
    module: ModuleType
    streams: list[Any] = field(default_factory=list)

    def stream(self, name: str = "stdout", **kwargs: Any) -> Any:
        kwargs.setdefault("watchfd", False)
        stream = self.module.OutStream(self.session, self.thread, name, **kwargs)
        self.streams.append(stream)
        return stream


def make_receiver(context: zmq.Context[zmq.Socket[bytes]], port: int) -> Receiver:
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    return Receiver(sub, Session(key=KEY))


def push_pull_pair(
    context: zmq.Context[zmq.Socket[bytes]],
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """A PUSH socket bound on loopback and a PULL socket connected to it."""
    push = context.socket(zmq.PUSH)
    push.linger = 0
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull = context.socket(zmq.PULL)
    pull.linger = 0
    pull.connect(f"tcp://127.0.0.1:{port}")
    return push, pull


def wait_until_subscribed(kernel: Kernelish) -> None:
    """Probe until the SUB socket receives (the slow-joiner problem)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kernel.session.send(kernel.thread, "probe", {})
        if kernel.receiver.poll(0.05):
            kernel.receiver.poll(0.05)
            kernel.receiver.messages.clear()
            return
    raise AssertionError("the receiver never got a message")


def started_kernel(impl: ModuleType, socket_type: int) -> Iterator[Kernelish]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(socket_type)
    socket.linger = 0
    socket.sndhwm = 0  # the receiver reads late: PUB must not drop
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    session = Session(key=KEY)
    thread = impl.IOPubThread(socket, pipe=True, session=session)
    thread.start()
    kernel = Kernelish(context, socket, session, thread, make_receiver(context, port), impl)
    wait_until_subscribed(kernel)
    yield kernel
    for stream in kernel.streams:
        stream.close()
    stop_iopub_thread(thread)
    kernel.receiver.socket.close()
    context.destroy(linger=0)


def stop_iopub_thread(thread: Any) -> None:
    """``thread.stop()`` then ``thread.close()``, for ours or ipykernel's IOPubThread.

    ipykernel's thread (6.29 through 7.x) cancels its event-pipe GC task only after its
    loop has stopped and then closes the loop, so the task never finishes cancelling
    and asyncio logs "Task was destroyed but it is pending!" when it is collected.
    Here that task is cancelled, and awaited, on the thread's still running loop first.
    """
    import asyncio
    import contextlib

    async def cancel_gc_task() -> None:
        task = getattr(thread, "_event_pipe_gc_task", None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    loop = getattr(getattr(thread, "io_loop", None), "asyncio_loop", None)
    if hasattr(thread, "_event_pipe_gc_task") and loop is not None and thread.thread.is_alive():
        asyncio.run_coroutine_threadsafe(cancel_gc_task(), loop).result(timeout=10)
    thread.stop()
    thread.close()


def run_python(code: str, timeout: float = 60, **env: str) -> tuple[int, str, str]:
    """Run ``code`` in a fresh interpreter with ``src`` importable."""
    import subprocess

    environment = dict(os.environ)
    environment.pop("PYTEST_CURRENT_TEST", None)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    environment.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        errors="replace",
    )
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class ScenarioResult:
    returncode: int
    stdout: bytes
    stderr: str
    result: dict[str, Any]


def run_scenario(code: str, tmp_path: Path, timeout: float = 90, **env: str) -> ScenarioResult:
    """Run ``code`` (a script using ``childkit``) in a fresh interpreter.

    Its fds 1 and 2 are real files, not pytest's capture; it reports through
    ``childkit.report``. The child's raw stdout bytes are returned too.
    """
    import json
    import subprocess
    import textwrap

    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(code))
    result_file = tmp_path / "result.json"
    environment = dict(os.environ)
    environment.pop("PYTEST_CURRENT_TEST", None)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])
    environment.update(env)
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.run(
            [sys.executable, str(script), str(result_file)],
            stdout=out,
            stderr=err,
            timeout=timeout,
            env=environment,
            stdin=subprocess.DEVNULL,
        )
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if proc.returncode != 0 or not result:
        raise AssertionError(f"scenario failed (rc={proc.returncode}):\n{stderr[-3000:]}")
    return ScenarioResult(proc.returncode, (tmp_path / "stdout").read_bytes(), stderr, result)
