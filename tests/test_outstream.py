"""OutStream: the docs/compat.md "OutStream" section, over real sockets and sessions."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import sys
import threading
import time
import warnings
from types import ModuleType
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

import iostream
from support import KEY, Kernelish

# -- constructors -----------------------------------------------------------------


def test_ipykernel_argument_order(kernel: Kernelish) -> None:
    stream = kernel.stream("stdout")
    assert (stream.session, stream.pub_thread, stream.name) == (
        kernel.session,
        kernel.thread,
        "stdout",
    )
    assert stream.topic == b"stream.stdout"


def test_pipe_positional_is_deprecated_and_ignored(kernel: Kernelish) -> None:
    with pytest.warns(DeprecationWarning, match="pipe"):
        stream = kernel.module.OutStream(
            kernel.session, kernel.thread, "stderr", object(), watchfd=False
        )
    kernel.streams.append(stream)
    stream.write("still works\n")
    stream.flush()
    kernel.receiver.wait_for_text("still works\n")
    assert kernel.receiver.text("stderr") == "still works\n"


def test_bare_socket_is_wrapped_in_a_started_thread(impl: ModuleType) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    sub = context.socket(zmq.SUB)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    session = Session(key=KEY)
    with pytest.warns(DeprecationWarning):
        stream = impl.OutStream(session, socket, "stdout", watchfd=False)
    assert isinstance(stream.pub_thread, impl.IOPubThread)
    assert stream.pub_thread.thread.is_alive()
    received = ""
    deadline = time.monotonic() + 10
    while "hi" not in received and time.monotonic() < deadline:
        stream.write("hi")
        stream.flush()
        if sub.poll(100):
            _, frames = session.feed_identities(sub.recv_multipart())
            received += session.deserialize(frames)["content"]["text"]
    assert "hi" in received
    thread = stream.pub_thread
    stream.close()
    thread.stop()
    thread.close()
    sub.close()
    context.destroy(linger=0)


def test_any_object_with_schedule_is_accepted_as_thread(kernel: Kernelish) -> None:
    """ipykernel's own IOPubThread must work as the thread of our OutStream."""
    from ipykernel.iostream import IOPubThread as StockThread

    context = kernel.context
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    # (ipykernel 6.x's IOPubThread takes no session)
    takes_session = "session" in inspect.signature(StockThread).parameters
    stock = StockThread(socket, session=kernel.session) if takes_session else StockThread(socket)
    stock.start()
    from support import make_receiver, stop_iopub_thread

    receiver = make_receiver(context, port)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        stream = iostream.OutStream(kernel.session, stock, "stdout", watchfd=False)
    assert stream.pub_thread is stock
    deadline = time.monotonic() + 10
    while not receiver.streams() and time.monotonic() < deadline:
        stream.write(".")
        stream.flush()
        receiver.poll(0.1)
    assert receiver.text().startswith(".")
    stream.close()
    stop_iopub_thread(stock)  # no pending-task noise from ipykernel's thread
    receiver.socket.close()


class ListSession:
    """The seed documents' minimal session: only ``send``."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
        self.threads: list[int] = []

    def send(self, stream: Any, msg_type: str, content: dict[str, Any], **kwargs: Any) -> None:
        self.sent.append((stream, msg_type, content, kwargs))
        self.threads.append(threading.get_ident())


def test_seed_order_publishes_on_calling_thread_line_by_line() -> None:
    session = ListSession()
    stream = iostream.OutStream("stdout", session, None)
    assert (stream.name, stream.session, stream.pub_thread) == ("stdout", session, None)
    stream.write("partial")
    assert session.sent == []
    stream.write(" line\nnext")
    assert [s[2]["text"] for s in session.sent] == ["partial line\n"]
    stream.flush()
    assert [s[2]["text"] for s in session.sent] == ["partial line\n", "next"]
    assert session.threads == [threading.get_ident()] * 2
    first = session.sent[0]
    assert first[0] is None and first[1] == "stream"  # None: the socket
    assert first[2] == {"name": "stdout", "text": "partial line\n"}
    assert first[3]["ident"] == b"stream.stdout"


class RecordingSession(Session):  # type: ignore[misc]
    """A real keyed Session that keeps what ``send`` built (and signed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built: list[tuple[Any, dict[str, Any]]] = []

    def send(self, stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        msg = super().send(stream, msg_or_type, *args, **kwargs)
        self.built.append((stream, msg))
        return msg


@pytest.mark.parametrize("order", ["name first", "session first"])
def test_no_thread_form_with_a_real_session(
    order: str, impl: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a thread the socket argument of Session.send is None (as ipykernel
    passes ``self.pub_thread``): a real Session builds and signs the message and
    sends nothing, and nothing is logged as failed. Passing the stream name there
    made Session call ``"stdout".send_multipart`` and lose every write."""
    if order == "name first" and impl is not iostream:
        pytest.skip("ipykernel's OutStream takes the session first only")
    session = RecordingSession(key=KEY)
    if order == "name first":
        stream = impl.OutStream("stdout", session, None)
    else:
        stream = impl.OutStream(session, None, "stdout")
    parent = session.msg("execute_request", {"code": ""})
    stream.set_parent(parent)
    with caplog.at_level("DEBUG", logger="iostream"):
        stream.write("one line\n")
        stream.write("rest")
        stream.flush()
        stream.close()
    assert [rec.getMessage() for rec in caplog.records if rec.levelname != "DEBUG"] == []
    assert [sock for sock, _msg in session.built] == [None] * len(session.built)
    text = "".join(msg["content"]["text"] for _sock, msg in session.built)
    assert text == "one line\nrest"
    for _sock, msg in session.built:
        assert msg["msg_type"] == "stream"
        assert msg["content"]["name"] == "stdout"
        assert msg["parent_header"]["msg_id"] == parent["header"]["msg_id"]
        # signed with the key: the frames verify
        frames = session.serialize(msg, ident=b"stream.stdout")
        _idents, rest = session.feed_identities(frames)
        assert session.deserialize(rest)["content"] == msg["content"]


def test_seed_order_close_publishes_the_rest() -> None:
    session = ListSession()
    stream = iostream.OutStream("stderr", session, None)
    stream.write("tail")
    stream.close()
    assert [s[2] for s in session.sent] == [{"name": "stderr", "text": "tail"}]


def test_interrupt_while_publishing_on_the_writing_thread_loses_nothing() -> None:
    """Without an IO thread (and in forked children) the writing thread publishes,
    so a KeyboardInterrupt can strike inside the send: the text that was taken
    goes back to the queue and leaves with the next line, in order."""
    session = ListSession()
    real_send = session.send
    interrupted = []

    def send_interrupted_once(*args: Any, **kwargs: Any) -> None:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        real_send(*args, **kwargs)

    session.send = send_interrupted_once  # type: ignore[method-assign]
    stream = iostream.OutStream("stdout", session, None)
    with pytest.raises(KeyboardInterrupt):
        stream.write("first line\n")
    stream.write("second line\n")
    assert "".join(s[2]["text"] for s in session.sent) == "first line\nsecond line\n"


def test_session_that_prints_does_not_recurse(capfd: pytest.CaptureFixture[str]) -> None:
    """A session printing to sys.stdout (which is the stream) must not loop."""

    class PrintingSession:
        def send(self, stream: Any, msg_type: str, content: dict[str, Any], **kw: Any) -> None:
            print(f"[{stream}] {content['text']!r}")

    stream = iostream.OutStream("stdout", PrintingSession(), None)
    old = sys.stdout
    sys.stdout = stream
    try:
        print("hello")
    finally:
        sys.stdout = old
    assert "[None] 'hello\\n'" in capfd.readouterr().out


# -- TextIOBase behaviour ------------------------------------------------------------


def test_textiobase_contract(kernel: Kernelish) -> None:
    stream = kernel.stream()
    assert isinstance(stream, io.TextIOBase)
    assert stream.writable() and not stream.readable() and not stream.seekable()
    assert stream.errors is None and stream.encoding == "UTF-8"
    assert stream.isatty() is False
    for op in (stream.read, stream.readline, stream.tell, stream.detach):
        with pytest.raises(io.UnsupportedOperation):
            op()
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(0)
    with pytest.raises(io.UnsupportedOperation):
        next(stream)
    with pytest.raises(io.UnsupportedOperation):
        stream.fileno()
    assert stream.write("abc") == 3


def test_non_str_write_raises_type_error_and_loses_nothing(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("before ")
    for bad in (b"bytes", 1, None):
        with pytest.raises(TypeError):
            stream.write(bad)
    stream.write("after\n")
    stream.flush()
    kernel.receiver.wait_for_text("before after\n")
    assert kernel.receiver.text() == "before after\n"


def test_closed_stream_raises_value_error(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("last\n")
    stream.close()
    assert stream.closed
    stream.close()  # idempotent
    with pytest.raises(ValueError):
        stream.write("x")
    with pytest.raises(ValueError):
        stream.writelines(["x"])
    kernel.receiver.wait_for_text("last\n")
    assert kernel.receiver.text() == "last\n"


def test_writelines_and_context_manager(kernel: Kernelish) -> None:
    with kernel.stream() as stream:
        stream.writelines(["a\n", "b\n", "c\n"])
    assert stream.closed
    kernel.receiver.wait_for_text("a\nb\nc\n")
    assert kernel.receiver.text() == "a\nb\nc\n"


def test_isatty_argument(kernel: Kernelish) -> None:
    assert kernel.stream(isatty=True).isatty() is True


def test_write_is_an_assignable_attribute(kernel: Kernelish) -> None:
    """metakernel replaces sys.stdout.write."""
    stream = kernel.stream()
    seen: list[str] = []
    original = stream.write
    stream.write = lambda text: seen.append(text) or original(text.upper())
    print("quiet", file=stream)
    stream.flush()
    kernel.receiver.wait_for_text("QUIET\n")
    assert seen == ["quiet", "\n"] and kernel.receiver.text() == "QUIET\n"


def test_class_attributes(kernel: Kernelish) -> None:
    stream = kernel.stream()
    assert stream.flush_interval == 0.2 and stream.flush_timeout == 10
    assert stream._flush_pending is False and stream._subprocess_flush_pending is False
    assert stream._is_master_process() is True
    assert stream._hooks == []


def test_topic_is_writable_and_used_as_ident(kernel: Kernelish) -> None:
    """ipyparallel sets engine.N.stdout as the topic."""
    stream = kernel.stream()
    stream.topic = b"engine.0.stdout"
    receiver = kernel.receiver
    receiver.socket.setsockopt(zmq.UNSUBSCRIBE, b"")
    receiver.socket.setsockopt(zmq.SUBSCRIBE, b"engine.0")
    time.sleep(0.2)
    stream.write("tagged\n")
    stream.flush()
    receiver.wait_for_text("tagged\n")
    assert receiver.text() == "tagged\n"


# -- coalescing and flush ---------------------------------------------------------


def test_writes_within_flush_interval_coalesce(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("first\n")
    kernel.receiver.wait_for_text("first\n")
    for i in range(50):
        stream.write(f"{i}\n")
    expected = "first\n" + "".join(f"{i}\n" for i in range(50))
    kernel.receiver.wait_for_text(expected)
    assert kernel.receiver.text() == expected
    assert len(kernel.receiver.streams()) == 2


def test_queued_writes_leave_nothing_for_the_garbage_collector(kernel: Kernelish) -> None:
    """A backlog of small writes must not be a pile of tracked objects: every
    full collection would walk it (a print loop then spends a third of its time
    in the collector)."""
    import gc

    stream = kernel.stream()
    stream.flush_interval = 30.0  # the backlog stays queued while we count
    stream.write("warm up\n")
    stream.flush()
    stream.write("-")  # promises the next flush, 30 s away
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(20_000):
            stream.write("x")
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert grown < 1_000, f"{grown} tracked objects for 20,000 queued writes"
    stream.flush()
    kernel.receiver.wait_for_text("warm up\n-" + "x" * 20_000)


def test_output_after_idle_arrives_without_flush(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("no flush needed\n")
    kernel.receiver.wait_for_text("no flush needed\n", timeout=5)


def test_flush_from_another_thread_hands_text_to_socket(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("x" * 10)
    time.sleep(0.05)  # the idle flush has gone out
    stream.write("y")
    worker = threading.Thread(target=stream.flush)
    worker.start()
    worker.join(15)
    # flush returned: the text is on the socket, so it arrives at once
    kernel.receiver.wait_for_text("x" * 10 + "y", timeout=2)


def test_echo_receives_every_write(kernel: Kernelish) -> None:
    echo = io.StringIO()
    stream = kernel.stream(echo=echo)
    print("echoed", file=stream)
    stream.flush()
    assert echo.getvalue() == "echoed\n"
    kernel.receiver.wait_for_text("echoed\n")


def test_echo_assigned_later_receives_the_writes_after_it(kernel: Kernelish) -> None:
    """Consumers set ``stream.echo`` after construction, while writes are on the
    fast path: from then on every write is copied, and none before it."""
    stream = kernel.stream()
    stream.write("before ")
    stream.write("echo ")  # a flush is on its way: the fast path is taken
    echo = io.StringIO()
    stream.echo = echo
    stream.write("after\n")
    stream.echo = None
    stream.write("not echoed\n")
    stream.flush()
    assert echo.getvalue() == "after\n"
    kernel.receiver.wait_for_text("before echo after\nnot echoed\n")
    assert kernel.receiver.text() == "before echo after\nnot echoed\n"


def test_subclass_write_override_and_unbound_write(kernel: Kernelish) -> None:
    """A subclass's own write() is used (it may call the base class's), and the
    class method works unbound, as code written for ipykernel does."""
    seen: list[str] = []

    class Tagged(kernel.module.OutStream):  # type: ignore[name-defined,misc]
        def write(self, string: str) -> int:
            seen.append(string)
            return super().write(string.upper())

    stream = Tagged(kernel.session, kernel.thread, "stdout", watchfd=False)
    kernel.streams.append(stream)
    print("shout", file=stream)
    kernel.module.OutStream.write(stream, "plain\n")
    stream.flush()
    kernel.receiver.wait_for_text("SHOUT\nplain\n")
    assert seen == ["shout", "\n"]
    assert kernel.receiver.text() == "SHOUT\nplain\n"


def test_broken_echo_never_breaks_publishing(kernel: Kernelish) -> None:
    echo = io.StringIO()
    echo.close()  # writes raise ValueError
    stream = kernel.stream(echo=echo)
    stream.write("published anyway\n")
    stream.flush()
    kernel.receiver.wait_for_text("published anyway\n")


def test_echo_must_be_file_like(kernel: Kernelish) -> None:
    with pytest.raises(ValueError):
        kernel.stream(echo=42)


# -- parent routing ------------------------------------------------------------------


def _msg(msg_id: str, **extra: Any) -> dict[str, Any]:
    return {"header": {"msg_id": msg_id, "msg_type": "execute_request", **extra}}


def _by_parent(kernel: Kernelish) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in kernel.receiver.streams():
        key = m["parent_header"].get("msg_id", "")
        out[key] = out.get(key, "") + m["content"]["text"]
    return out


def test_set_parent_routes_output(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.set_parent(_msg("cell-1"))
    assert stream.parent_header["msg_id"] == "cell-1"
    stream.write("one\n")
    stream.set_parent(_msg("cell-2"))
    stream.write("two\n")
    stream.flush()
    kernel.receiver.wait_for_text("one\ntwo\n")
    assert _by_parent(kernel) == {"cell-1": "one\n", "cell-2": "two\n"}


def test_a_cells_own_first_line_is_not_held_after_a_threads_text_was_flushed(
    kernel: Kernelish,
) -> None:
    """The race seen under load in a real kernel, forced: a thread prints into the
    new cell, its text is published at the idle delay, and only then does the
    cell's own code (the thread that set the parent) print. Its first line must
    not wait for the batching interval (30 s here)."""
    out, err = kernel.stream(), kernel.stream("stderr")
    for s in (out, err):
        s.flush_interval = 30.0
        s.set_parent(_msg("cell-1"))
    out.write("the previous cell printed\n")
    kernel.receiver.wait_for_text("the previous cell printed\n")
    for s in (out, err):
        s.set_parent(_msg("cell-2"))
    chatter = threading.Thread(target=err.write, args=(".",))
    chatter.start()
    chatter.join()
    kernel.receiver.wait_for_text("the previous cell printed\n.", timeout=5)
    more = threading.Thread(target=err.write, args=(".",))  # batched: due in 30 s
    more.start()
    more.join()
    out.write("")  # (an empty write is not the cell's first text)
    kernel.receiver.poll(0.3)
    assert kernel.receiver.text("stderr") == ".", "the premise: the thread's text is batched"
    out.write("first line\n")
    kernel.receiver.wait_for(lambda _m: "first line" in kernel.receiver.text("stdout"), 5)
    assert _by_parent(kernel)["cell-2"].endswith("first line\n")


def test_a_thread_printing_into_a_cell_that_has_not_printed_is_batched(
    kernel: Kernelish,
) -> None:
    """Until the cell's own code writes, only its thread's writes are watched for:
    another thread printing meanwhile (the cell never prints; ipykernel sets the
    parent for every request) is batched as usual, in few messages."""
    out = kernel.stream()
    out.flush_interval = 0.5
    out.set_parent(_msg("cell-1"))

    def chatter() -> None:
        for i in range(200):
            out.write(f"{i}\n")
            time.sleep(0.001)

    thread = threading.Thread(target=chatter)
    thread.start()
    thread.join()
    out.flush()
    kernel.receiver.wait_for_text("".join(f"{i}\n" for i in range(200)))
    assert len(kernel.receiver.streams()) <= 4, kernel.receiver.summary()


def test_a_burst_that_starts_while_the_timer_sleeps_goes_out_once_quiet(
    kernel: Kernelish,
) -> None:
    """The flush timer sleeps until the due time (no polling); a burst (64 Ki
    characters or more) written meanwhile must still go out once it has been
    quiet for a moment, not at the end of the batching interval (30 s here):
    the writer that passes the mark wakes the timer."""
    out = kernel.stream()
    out.flush_interval = 30.0
    out.write("a\n")
    out.flush()
    kernel.receiver.wait_for_text("a\n")
    out.write("b")  # a promise, due 30 s after the flush: the timer sleeps
    time.sleep(0.1)
    for _ in range(100):
        out.write("x" * 1000)
    kernel.receiver.wait_for_text("a\nb" + "x" * 100_000, timeout=10)


def test_thread_parent_and_global_fallback(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.set_parent(_msg("global"))

    def own_parent() -> None:
        token = stream.set_thread_parent(_msg("mine"))
        stream.write("mine\n")
        stream.reset_thread_parent(token)
        stream.write("fallback-after-reset\n")

    def no_parent() -> None:
        stream.write("fallback\n")

    for target in (own_parent, no_parent):
        worker = threading.Thread(target=target)
        worker.start()
        worker.join()
    stream.write("main\n")
    stream.flush()
    kernel.receiver.wait_for(lambda _m: sum(map(len, _by_parent(kernel).values())) >= 40)
    routed = _by_parent(kernel)
    assert routed["mine"] == "mine\n"
    # a thread without a value of its own (never set, or reset) uses the global one
    assert sorted(routed["global"].splitlines()) == ["fallback", "fallback-after-reset", "main"]


def test_asyncio_tasks_keep_their_cell(kernel: Kernelish) -> None:
    stream = kernel.stream()

    async def task(cell: str) -> None:
        stream.set_thread_parent(_msg(cell))
        for i in range(3):
            stream.write(f"{cell}:{i}\n")
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(main())
    stream.flush()
    kernel.receiver.wait_for(lambda _m: sum(map(len, _by_parent(kernel).values())) >= 24)
    routed = _by_parent(kernel)
    assert routed["a"] == "a:0\na:1\na:2\n" and routed["b"] == "b:0\nb:1\nb:2\n"


def test_copied_context_keeps_its_cell(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.set_parent(_msg("cell-1"))
    context = contextvars.copy_context()
    stream.set_parent(_msg("cell-2"))
    context.run(stream.write, "from copied\n")
    stream.flush()
    kernel.receiver.wait_for_text("from copied\n")
    assert _by_parent(kernel) == {"cell-1": "from copied\n"}


def test_unhashable_header_values_route(kernel: Kernelish) -> None:
    """ipykernel builds frozenset(parent.items()) and raises TypeError here."""
    stream = kernel.stream()
    stream.set_parent(_msg("odd", tags=["a", "b"], extra={"nested": [1, 2]}))
    stream.write("routed\n")
    stream.flush()
    kernel.receiver.wait_for_text("routed\n")
    [message] = kernel.receiver.streams()
    assert message["parent_header"]["tags"] == ["a", "b"]


# -- hooks ----------------------------------------------------------------------------


def _register_on_io_thread(kernel: Kernelish, stream: Any, hook: Any) -> None:
    done = threading.Event()
    kernel.thread.schedule(lambda: (stream.register_hook(hook), done.set()))
    assert done.wait(5)


def test_hooks_are_thread_local_and_can_transform(kernel: Kernelish) -> None:
    stream = kernel.stream()

    def shout(msg: dict[str, Any]) -> dict[str, Any]:
        msg["content"]["text"] = msg["content"]["text"].upper()
        return msg

    stream.register_hook(shout)  # main thread: not the flushing thread
    assert stream._hooks == [shout]
    stream.write("main-thread hook does not apply\n")
    stream.flush()
    kernel.receiver.wait_for_text("main-thread hook does not apply\n")
    assert stream.unregister_hook(shout) is True
    assert stream.unregister_hook(shout) is False
    _register_on_io_thread(kernel, stream, shout)
    stream.write("loud\n")
    stream.flush()
    kernel.receiver.wait_for_text("main-thread hook does not apply\nLOUD\n")
    assert kernel.receiver.text().endswith("LOUD\n")


def test_swallowing_hook_drops_only_that_message(kernel: Kernelish) -> None:
    """ipykernel returns from _flush when a hook returns None, dropping the
    buffers of every other parent in the same flush."""
    stream = kernel.stream()

    def swallow_secret(msg: dict[str, Any]) -> dict[str, Any] | None:
        return None if msg["parent_header"].get("msg_id") == "secret" else msg

    _register_on_io_thread(kernel, stream, swallow_secret)
    stream.write("warmup\n")
    kernel.receiver.wait_for_text("warmup\n")
    stream.set_parent(_msg("secret"))
    stream.write("hidden\n")
    for cell in ("x", "y"):
        token = stream.set_thread_parent(_msg(cell))
        stream.write(f"visible {cell}\n")
        stream.reset_thread_parent(token)
    stream.flush()
    kernel.receiver.wait_for(lambda _m: "y" in _by_parent(kernel), timeout=5)
    routed = _by_parent(kernel)
    assert routed["x"] == "visible x\n" and routed["y"] == "visible y\n"
    assert "secret" not in routed


def test_raising_hook_affects_only_that_message(kernel: Kernelish) -> None:
    stream = kernel.stream()

    def explode(msg: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("hook bug")

    _register_on_io_thread(kernel, stream, explode)
    stream.write("survives\n")
    stream.flush()
    kernel.receiver.wait_for_text("survives\n")
    stream.write("and again\n")
    stream.flush()
    kernel.receiver.wait_for_text("survives\nand again\n")
    assert kernel.thread.thread.is_alive()


# -- order, size, odd text ------------------------------------------------------------


def test_stdout_stderr_order_is_kept(kernel: Kernelish) -> None:
    out, err = kernel.stream("stdout"), kernel.stream("stderr")
    out.write("warm\n")
    kernel.receiver.wait_for_text("warm\n")
    kernel.receiver.messages.clear()
    sequence = []
    for i in range(6):
        target = (out, err)[i % 2]
        target.write(f"{i}\n")
        sequence.append((target.name, f"{i}\n"))
    out.flush()
    err.flush()
    kernel.receiver.wait_for_text("".join(t for _, t in sequence))
    got = [(m["content"]["name"], m["content"]["text"]) for m in kernel.receiver.streams()]
    assert got == sequence


def test_no_message_over_the_limit(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.max_message_chars = 1000
    text = "".join(f"line {i:05d}\n" for i in range(1000)) + "z" * 2500
    stream.write(text)
    stream.flush()
    kernel.receiver.wait_for_text(text)
    messages = kernel.receiver.streams()
    assert kernel.receiver.text() == text
    assert max(len(m["content"]["text"]) for m in messages) <= 1000
    # lines are not broken where they fit
    assert all(m["content"]["text"].endswith("\n") for m in messages[:-3])


def test_lone_surrogates_do_not_kill_the_io_thread(kernel: Kernelish) -> None:
    stream = kernel.stream()
    stream.write("bad \ud800 char\n")
    stream.write("astral \U0001f600\n")
    stream.flush()
    kernel.receiver.wait_for_text("bad \ufffd char\nastral \U0001f600\n")
    assert kernel.receiver.text() == "bad \ufffd char\nastral \U0001f600\n"
    assert kernel.thread.thread.is_alive()


def test_flush_buffers_yields_this_streams_parent_and_text(kernel: Kernelish) -> None:
    """``_flush_buffers()`` (spyder-kernels overrides ``_flush`` around it) removes
    and yields this stream's pending ``(parent, text)`` pairs, leaving other
    streams' text to be published."""
    out, err = kernel.stream("stdout"), kernel.stream("stderr")
    out.write("warm\n")
    out.flush()  # the next timed flush is a whole interval away
    out.flush_interval = err.flush_interval = 30.0
    kernel.receiver.wait_for_text("warm\n")
    out.set_parent({"header": {"msg_id": "a", "tags": ["x"]}})
    out.write("one ")
    err.write("to stderr\n")
    out.write("two\n")
    pairs = list(out._flush_buffers())
    assert [(parent.get("msg_id"), text) for parent, text in pairs] == [("a", "one two\n")]
    assert all(type(parent) is dict for parent, _ in pairs)
    err.flush()
    kernel.receiver.wait_for_text("warm\nto stderr\n")
    assert kernel.receiver.text("stderr") == "to stderr\n"
    assert kernel.receiver.text("stdout") == "warm\n"


# -- subclasses that override _flush (spyder-kernels' TTYOutStream) ---------------


def filtering_stream_class(module: ModuleType) -> type:
    """A subclass that publishes its own text in ``_flush`` and filters it, as
    spyder-kernels' TTYOutStream does (it drops "Parent poll failed.")."""

    class FilteringStream(module.OutStream):  # type: ignore[misc,name-defined]
        def _flush(self) -> None:
            self._flush_pending = False
            for parent, text in self._flush_buffers():
                lines = text.splitlines(keepends=True)
                data = "".join(line for line in lines if "Parent poll failed." not in line)
                if not data:
                    continue
                msg = self.session.msg("stream", {"name": self.name, "text": data}, parent=parent)
                self.session.send(self.pub_thread, msg, ident=self.topic)

    return FilteringStream


def test_a_plain_streams_flush_never_publishes_a_filtering_streams_text(
    kernel: Kernelish,
) -> None:
    """The filtered text of a stream whose ``_flush`` filters stays filtered when
    another stream of the kernel flushes (ours shares one buffer between them)."""
    stdout = kernel.stream("stdout")
    stderr = filtering_stream_class(kernel.module)(
        kernel.session, kernel.thread, "stderr", watchfd=False
    )
    kernel.streams.append(stderr)
    stderr.write("Parent poll failed.\n")
    stdout.write("x\n")
    stdout.flush()
    stderr.write("kept\n")
    stderr.flush()
    kernel.receiver.wait_for(lambda _m: "kept\n" in kernel.receiver.text("stderr"))
    kernel.receiver.wait_for_text("x\n", "stdout")
    assert kernel.receiver.text("stderr") == "kept\n"
    assert kernel.receiver.text("stdout") == "x\n"


def test_streams_that_override_flush_are_flushed_by_the_timer(kernel: Kernelish) -> None:
    """Two streams whose class overrides ``_flush`` (spyder-kernels' stdout and
    stderr) both get their text published without an explicit flush."""
    cls = filtering_stream_class(kernel.module)
    stdout = cls(kernel.session, kernel.thread, "stdout", watchfd=False)
    stderr = cls(kernel.session, kernel.thread, "stderr", watchfd=False)
    kernel.streams += [stdout, stderr]
    for n in range(3):
        stdout.write(f"out {n}\n")
        stderr.write(f"err {n}\n")
        stderr.write("Parent poll failed.\n")
        time.sleep(0.3)  # (past flush_interval: each round is its own timer's)
    kernel.receiver.wait_for(
        lambda _m: (
            kernel.receiver.text("stdout").count("\n") == 3
            and kernel.receiver.text("stderr").count("\n") == 3
        )
    )
    assert kernel.receiver.text("stdout") == "out 0\nout 1\nout 2\n"
    assert kernel.receiver.text("stderr") == "err 0\nerr 1\nerr 2\n"


def test_text_written_to_a_filtering_stream_during_a_flush_stays_filtered(
    kernel: Kernelish,
) -> None:
    """A thread keeps writing filtered lines while another stream flushes
    repeatedly: none of them is ever published (a flush takes everything first
    and hands the filtering stream's text to its own ``_flush``)."""
    stdout = kernel.stream("stdout")
    stderr = filtering_stream_class(kernel.module)(
        kernel.session, kernel.thread, "stderr", watchfd=False
    )
    kernel.streams.append(stderr)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            stderr.write("Parent poll failed.\n")

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        for n in range(200):
            stdout.write(f"x{n}\n")
            stdout.flush()
    finally:
        stop.set()
        writer.join()
    stderr.write("end\n")
    stderr.flush()
    stdout.flush()
    kernel.receiver.wait_for(lambda _m: "end\n" in kernel.receiver.text("stderr"))
    kernel.receiver.wait_for_text("".join(f"x{n}\n" for n in range(200)), "stdout")
    assert kernel.receiver.text("stderr") == "end\n"


def test_an_override_that_raises_does_not_stop_the_other_streams(kernel: Kernelish) -> None:
    """One stream's ``_flush`` raising (a hook of its own failing) loses that
    flush of its text only: the other stream's output keeps coming."""
    base = filtering_stream_class(kernel.module)

    class RaisesOnce(base):  # type: ignore[misc,valid-type]
        raised = False

        def _flush(self) -> None:
            if not RaisesOnce.raised:
                RaisesOnce.raised = True
                raise RuntimeError("an override failing once")
            super()._flush()

    stdout = kernel.stream("stdout")
    stderr = RaisesOnce(kernel.session, kernel.thread, "stderr", watchfd=False)
    kernel.streams.append(stderr)
    stderr.write("lost with the failed flush\n")
    stdout.write("first\n")
    kernel.receiver.wait_for_text("first\n", "stdout")
    for n in range(3):
        time.sleep(0.3)  # (each write after the interval: its own timer)
        stdout.write(f"later {n}\n")
        stderr.write(f"err {n}\n")
    expected = "first\nlater 0\nlater 1\nlater 2\n"
    kernel.receiver.wait_for_text(expected, "stdout")
    kernel.receiver.wait_for(lambda _m: "err 2\n" in kernel.receiver.text("stderr"))
    assert kernel.receiver.text("stdout") == expected
    assert kernel.receiver.text("stderr").endswith("err 0\nerr 1\nerr 2\n")


def test_writes_after_stop_are_published_when_every_stream_overrides_flush(
    kernel: Kernelish,
) -> None:
    """spyder-kernels' streams both override ``_flush``: stop() still ends the
    flush promise, so a write after it is published at once, as with plain
    streams."""
    cls = filtering_stream_class(kernel.module)
    stdout = cls(kernel.session, kernel.thread, "stdout", watchfd=False)
    stderr = cls(kernel.session, kernel.thread, "stderr", watchfd=False)
    kernel.streams += [stdout, stderr]
    stdout.write("before\n")
    kernel.receiver.wait_for_text("before\n", "stdout")
    stdout.write("batched\n")  # within the interval: the timer waits
    kernel.thread.stop()
    stdout.write("after\n")
    kernel.receiver.wait_for_text("before\nbatched\nafter\n", "stdout")
    assert kernel.receiver.text("stdout") == "before\nbatched\nafter\n"


@pytest.mark.parametrize("drains_before_stop", [True, False])
def test_only_a_thread_that_drains_before_it_stops_licenses_the_fast_path(
    drains_before_stop: bool,
) -> None:
    """The fast path relies on the promised timer running before the thread
    stops; a thread that does not promise it (a foreign one, wrapped in
    threadlink's StandIn) keeps every write on the checked path."""
    from iostream.core.policy import Do
    from iostream.streamgroup import StreamGroup

    group = StreamGroup(threaded=True, drains_before_stop=drains_before_stop)
    group.add(1, {}, "x")
    do, ticket = group.written(0.0, 0.2, "x", 1e9)
    assert do is Do.SET_TIMER
    group.license(0.0, ticket)
    assert group.flow.licensed is drains_before_stop
