"""Publish stdout/stderr as Jupyter stream messages, and receive them in another process.

The publisher is what a kernel does: an IOPubThread owns an XPUB socket, OutStreams
replace sys.stdout/sys.stderr, and each request's output is routed to it with
set_parent. The receiver (this file run as `publisher.py receive URL`) is what a
frontend does: a SUB socket and a Session with the same key.
"""

import os
import subprocess
import sys

import zmq
from jupyter_client.session import Session

from iostream import IOPubThread, OutStream


def receive(url: str) -> None:
    """Print every stream message until the publisher reports idle."""
    session = Session(key=os.environ["EXAMPLE_KEY"].encode())
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(url)
    sub.subscribe(b"")
    while True:
        _, frames = session.feed_identities(sub.recv_multipart())
        msg = session.deserialize(frames)  # checks the signature
        kind, content = msg["msg_type"], msg["content"]
        if kind == "iopub_welcome":  # the publisher sees this subscriber now
            print("subscribed", flush=True)
        elif kind == "stream":
            print(f"{msg['parent_header']['msg_id']} {content['name']}: {content['text']!r}")
        elif kind == "status" and content["execution_state"] == "idle":
            break
    sub.close()


def publish() -> None:
    key = os.urandom(16).hex()
    session = Session(key=key.encode())
    context = zmq.Context.instance()
    socket = context.socket(zmq.XPUB)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    thread = IOPubThread(socket, session=session)
    thread.start()

    receiver = subprocess.Popen(
        [sys.executable, __file__, "receive", f"tcp://127.0.0.1:{port}"],
        env={**os.environ, "EXAMPLE_KEY": key},
        stdout=subprocess.PIPE,
        text=True,
    )
    # Every new subscriber gets an iopub_welcome message: once the receiver has
    # it, nothing published from now on can miss it.
    assert receiver.stdout is not None
    assert receiver.stdout.readline() == "subscribed\n"

    sys.stdout = OutStream(session, thread, "stdout", watchfd=False)
    sys.stderr = OutStream(session, thread, "stderr", watchfd=False)
    for n in (1, 2):
        request = session.msg("execute_request", {"code": f"cell {n}"})
        request["header"]["msg_id"] = f"request-{n}"  # real ids are UUIDs
        sys.stdout.set_parent(request)  # route the output to this request
        sys.stderr.set_parent(request)
        print(f"hello from request {n}")
        print("a warning", file=sys.stderr)
        sys.stdout.flush()  # returns once the text is handed to the socket
        sys.stderr.flush()
    session.send(thread, "status", {"execution_state": "idle"}, parent=request)

    for stream in (sys.stdout, sys.stderr):
        stream.close()  # publishes anything left
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    thread.stop()  # runs everything scheduled, then stops the thread
    thread.close()  # closes the socket
    received, _ = receiver.communicate(timeout=30)
    print("the receiver got:")
    print(received, end="")
    print(f"receiver exit status {receiver.returncode}")
    context.term()


if __name__ == "__main__":
    if sys.argv[1:2] == ["receive"]:
        receive(sys.argv[2])
    else:
        publish()
