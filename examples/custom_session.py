"""Capture output as Jupyter stream messages without zmq: OutStream with your own session.

An application that runs user code (a web app, a task runner, a test harness) can
route what the code prints to its own transport. OutStream needs no IO thread and
no socket: give it the stream name first, a session, and None for the thread, and it
publishes on the writing thread, at each newline, flush() and close(), by calling

    session.send(None, "stream", {"name": ..., "text": ...}, parent=..., ident=topic)

Any object with such a send method can serve as the session.
"""

import contextlib
import sys
import threading
from typing import Any

from iostream import OutStream


class CollectingSession:
    """The smallest session: keeps every message it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()  # send() runs on whichever thread writes

    def send(self, socket: Any, msg_type: str, content: dict[str, Any], **kwargs: Any) -> None:
        parent = kwargs.get("parent") or {}
        with self.lock:
            self.sent.append((parent.get("msg_id", "-"), content["name"], content["text"]))


def run_task(task_id: str, stdout: OutStream, stderr: OutStream) -> None:
    """Run a piece of 'user code' with its output tagged by task_id."""
    header = {"msg_id": task_id}  # any dict; Jupyter kernels pass a request's header
    stdout.set_parent({"header": header})
    stderr.set_parent({"header": header})
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        print(f"{task_id} starts")
        print("no newline yet...", end="")
        print(" done")
        print(f"{task_id} warns", file=sys.stderr)


def main() -> None:
    session = CollectingSession()
    stdout = OutStream("stdout", session, None)
    stderr = OutStream("stderr", session, None)
    run_task("task-1", stdout, stderr)
    run_task("task-2", stdout, stderr)
    stdout.write("left without a newline")
    stdout.close()  # publishes what is left
    stderr.close()
    for parent, name, text in session.sent:
        print(f"{parent} {name}: {text!r}")


if __name__ == "__main__":
    main()
