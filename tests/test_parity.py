"""Attribute parity with ``ipykernel.iostream`` for what real consumers probe.

Each test names, in its docstring, the consumer line that reads the attribute
(``hasattr``/``getattr``/``isinstance`` or a plain read or write) and compares our
object with the reference module's in the same lifecycle state. The reference is
the installed ipykernel's own ``ipykernel.iostream``: 7.4.0 in the development
environment, 6.29.x in the CI job that installs the low end of the supported range.

ipykernel 6.29's ``IPythonKernel`` fills two maps on every OutStream that 7.x's
OutStream no longer has (``_thread_to_parent_header``, ``_thread_to_parent``).
Ours keeps them in every state, empty unless a 6.29 kernel fills them; where the
reference lacks them (7.x), the tests check the 6.29.5 behaviour directly and
that empty maps leave 7.x's behaviour unchanged.

fd capture is off under pytest (``PYTEST_CURRENT_TEST``), as it is in ipykernel,
so the capturing states are examined in a child interpreter (``run_scenario``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session, extract_header

import iostream
from support import (
    KEY,
    Kernelish,
    make_receiver,
    needs_fd_capture,
    run_scenario,
    stop_iopub_thread,
    wait_until_subscribed,
)


def _reference_module() -> ModuleType:
    """ipykernel's own ``iostream`` module, even if ``install()`` ran in this process."""
    module = importlib.import_module("ipykernel.iostream")
    if module is iostream:
        import ipykernel

        path = Path(ipykernel.__file__).with_name("iostream.py")
        spec = importlib.util.spec_from_file_location("ipykernel.iostream", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


REF = _reference_module()
MODULES = {"ours": iostream, "reference": REF}
MAP_NAMES = ("_thread_to_parent", "_thread_to_parent_header")
DELIM = b"<IDS|MSG>"


def _thread_kwargs(module: ModuleType, session: Session) -> dict[str, Any]:
    # ipykernel 6.29's IOPubThread takes no session (ipyparallel checks the same way).
    params = inspect.signature(module.IOPubThread).parameters
    return {"session": session} if "session" in params else {}


def open_kernel(module: ModuleType) -> Kernelish:
    """A started IOPubThread(pipe=True) of ``module`` on XPUB, with a subscribed receiver."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.XPUB)
    socket.linger = 0
    socket.sndhwm = 0
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    session = Session(key=KEY)
    thread = module.IOPubThread(socket, pipe=True, **_thread_kwargs(module, session))
    thread.start()
    kernel = Kernelish(context, socket, session, thread, make_receiver(context, port), module)
    wait_until_subscribed(kernel)
    return kernel


def close_kernel(kernel: Kernelish) -> None:
    for stream in kernel.streams:
        stream.close()
    stop_iopub_thread(kernel.thread)
    kernel.receiver.socket.close()
    kernel.context.destroy(linger=0)


@pytest.fixture
def kernels() -> Iterator[dict[str, Kernelish]]:
    """One started kernel-like setup per module: ``{"ours": ..., "reference": ...}``."""
    opened = {side: open_kernel(module) for side, module in MODULES.items()}
    yield opened
    for kernel in opened.values():
        close_kernel(kernel)


def kind(obj: Any, name: str) -> str:
    """The type name of ``obj.name``, or "absent" (what ``hasattr`` would say)."""
    try:
        value = getattr(obj, name)
    except AttributeError:
        return "absent"
    return type(value).__name__


def lines_by_parent(kernel: Kernelish) -> dict[str, str]:
    """Each received stream line -> the msg_id of the parent its message carried."""
    found: dict[str, str] = {}
    for msg in kernel.receiver.streams():
        for line in msg["content"]["text"].splitlines():
            found[line] = msg["parent_header"].get("msg_id", "")
    return found


def wait_for_lines(kernel: Kernelish, lines: list[str]) -> dict[str, str]:
    kernel.receiver.wait_for(lambda _m: set(lines) <= set(lines_by_parent(kernel)))
    return lines_by_parent(kernel)


# -- fd capture states (child interpreter) -------------------------------------------

CAPTURE_SCENARIO = """
import importlib, inspect, io, os, sys
import zmq
from jupyter_client.session import Session
from childkit import KEY, report

ATTRS = ["_original_stdstream_copy", "_original_stdstream_fd", "watch_fd_thread", "echo",
         "_thread_to_parent", "_thread_to_parent_header", "_flush_pending",
         "_subprocess_flush_pending", "_hooks", "pub_thread", "topic"]
keep = []  # streams outlive the scenario: their echo wrappers own descriptors

def kind(obj, name):
    try:
        value = getattr(obj, name)
    except AttributeError:
        return "absent"
    return type(value).__name__

def states(modname):
    mod = importlib.import_module(modname)
    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    socket.bind_to_random_port("tcp://127.0.0.1")
    session = Session(key=KEY)
    params = inspect.signature(mod.IOPubThread).parameters
    extra = {"session": session} if "session" in params else {}
    thread = mod.IOPubThread(socket, pipe=True, **extra)
    thread.start()
    found = {}
    def record(state, stream):
        found[state] = {name: kind(stream, name) for name in ATTRS}
        found[state]["echo is sys.__stdout__"] = stream.echo is sys.__stdout__
        found[state]["copy is not None"] = (
            getattr(stream, "_original_stdstream_copy", None) is not None)
    # kernelapp.init_io with capture_fd_output=False (spyder-kernels: always)
    plain = mod.OutStream(session, thread, "stdout", watchfd=False, echo=sys.__stdout__)
    keep.append(plain)
    record("plain", plain)
    plain.close()
    record("plain, closed", plain)
    # kernelapp.init_io's own call: watchfd left at its default, echo the original stream
    capturing = mod.OutStream(session, thread, "stdout", echo=sys.__stdout__)
    keep.append(capturing)
    record("capturing", capturing)
    # kernelapp.init_io hands the copy to FileIO for the log handler
    with io.FileIO(capturing._original_stdstream_copy, "w", closefd=False) as raw:
        raw.write(("through the copy of " + modname + "\\n").encode())
    capturing.close()
    record("capturing, closed", capturing)
    thread.stop()
    thread.close()
    return found

result = {name: states(name) for name in ("iostream", "ipykernel.iostream")}
report(result)
os._exit(0)
"""

CAPTURE_STATES = ["plain", "plain, closed", "capturing", "capturing, closed"]


@pytest.fixture(scope="module")
def capture_states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Attribute kinds of ours and ipykernel's OutStream, with and without fd capture."""
    run = run_scenario(CAPTURE_SCENARIO, tmp_path_factory.mktemp("capture"))
    return {
        "ours": run.result["iostream"],
        "reference": run.result["ipykernel.iostream"],
        "stdout": run.stdout,
    }


@needs_fd_capture
@pytest.mark.parametrize("state", CAPTURE_STATES)
def test_original_stdstream_copy_exists_exactly_when_the_reference_does(
    capture_states: dict[str, Any], state: str
) -> None:
    """ipykernel 7.4.0 kernelapp.py init_io (L543) and 6.29.5 (L487):
    ``hasattr(sys.stderr, "_original_stdstream_copy")``, then the value goes to FileIO;
    ipyparallel 9.2 engine/app.py redirect_output (L584):
    ``getattr(sys.stderr, "_original_stdstream_copy", None) is not None``."""
    ours, ref = capture_states["ours"][state], capture_states["reference"][state]
    assert ours["_original_stdstream_copy"] == ref["_original_stdstream_copy"]
    assert ours["copy is not None"] == ref["copy is not None"]


@needs_fd_capture
def test_original_stdstream_copy_writes_to_the_original_descriptor(
    capture_states: dict[str, Any],
) -> None:
    """ipykernel 7.4.0 kernelapp.py init_io (L546-551): the log handler's stream
    becomes ``TextIOWrapper(FileIO(sys.stderr._original_stdstream_copy, "w"))``, so
    the copy must be the original descriptor (here the child's real stdout)."""
    out = capture_states["stdout"]
    assert b"through the copy of iostream\n" in out
    assert b"through the copy of ipykernel.iostream\n" in out


@needs_fd_capture
@pytest.mark.parametrize("state", CAPTURE_STATES)
def test_watch_fd_thread_exists_exactly_when_the_reference_does(
    capture_states: dict[str, Any], state: str
) -> None:
    """AgentTune's environment module, patch_colab_outstream_close:
    ``getattr(self, "watch_fd_thread", None) is None`` (then it plants a stand-in
    thread for ipykernel's close()); unsloth_zoo reads ``sys.stdout.watch_fd_thread``."""
    ours, ref = capture_states["ours"][state], capture_states["reference"][state]
    assert ours["watch_fd_thread"] == ref["watch_fd_thread"]
    assert ours["_original_stdstream_fd"] == ref["_original_stdstream_fd"]


@needs_fd_capture
@pytest.mark.parametrize("state", CAPTURE_STATES)
def test_echo_is_what_the_reference_holds(capture_states: dict[str, Any], state: str) -> None:
    """spyder-kernels 3.1.6 console/outstream.py TTYOutStream._flush:
    ``if self.echo is not None: self.echo.flush()`` and
    ``self.echo is not sys.__stderr__``; the echo comes from kernelapp.py init_io
    (``echo=sys.__stdout__``). While the fd is captured both hold a writer on the
    copy of the original fd, else the stream given."""
    ours, ref = capture_states["ours"][state], capture_states["reference"][state]
    assert ours["echo"] == ref["echo"]
    assert ours["echo is sys.__stdout__"] == ref["echo is sys.__stdout__"]


SPYDER_FLUSH_ATTRS = [
    "_flush_pending",
    "_subprocess_flush_pending",
    "_hooks",
    "pub_thread",
    "topic",
]


@needs_fd_capture
@pytest.mark.parametrize("state", CAPTURE_STATES)
@pytest.mark.parametrize("attr", SPYDER_FLUSH_ATTRS)
def test_attributes_spyders_flush_uses_match_in_every_state(
    capture_states: dict[str, Any], state: str, attr: str
) -> None:
    """spyder-kernels 3.1.6 console/outstream.py TTYOutStream._flush: writes
    ``_flush_pending``/``_subprocess_flush_pending``, iterates ``self._hooks``, sends
    with ``self.session.send(self.pub_thread, msg, ident=self.topic)``."""
    ours, ref = capture_states["ours"][state], capture_states["reference"][state]
    assert ours[attr] == ref[attr]


@needs_fd_capture
@pytest.mark.parametrize("state", CAPTURE_STATES)
@pytest.mark.parametrize("attr", ["_thread_to_parent", "_thread_to_parent_header"])
def test_thread_maps_exist_in_every_capture_state(
    capture_states: dict[str, Any], state: str, attr: str
) -> None:
    """ipykernel 6.29.5 ipkernel.py _initialize_thread_hooks (L759-765): for every
    ``isinstance(stream, OutStream)`` among the kernel's _stdout/_stderr, each new
    thread writes ``stream._thread_to_parent_header[ident]`` or
    ``stream._thread_to_parent[ident]``; _clean_thread_parent_frames (L792-800)
    reads and deletes them. Without them every thread started in a 6.29 kernel
    dies at start. 7.x's OutStream dropped them; ours keeps them (empty)."""
    ours, ref = capture_states["ours"][state], capture_states["reference"][state]
    assert ours[attr] == "dict"
    if ref[attr] != "absent":
        assert ours[attr] == ref[attr]


# -- OutStream, no fd capture ----------------------------------------------------------


@pytest.mark.parametrize("name", ["_thread_to_parent", "_thread_to_parent_header"])
def test_thread_maps_are_empty_dicts_also_without_a_thread(name: str) -> None:
    """ipykernel 6.29.5 ipkernel.py _initialize_thread_hooks (L759-765) and
    _clean_thread_parent_frames (L793, L800): ``stream._thread_to_parent...`` on any
    OutStream; ours also exists without a thread (the seed documents' form)."""
    stream = iostream.OutStream("stdout", Session(key=KEY), None)
    try:
        value = getattr(stream, name)
        assert type(value) is dict and not value
        value[1] = {}  # what 6.29's kernel does: a plain, writable dict
        del value[1]
    finally:
        stream.close()
    assert type(getattr(stream, name)) is dict


def test_ipyparallel_detach_thread_output_sees_the_same_as_on_the_reference(
    kernels: dict[str, Kernelish], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipyparallel 9.2 util.py _detach_thread_output (L817-821), run by every
    thread of ipyparallel's client: ``mapping = getattr(stream, name, None)``,
    ``if mapping: mapping.pop(ident, None)`` on sys.stdout and sys.stderr. Our empty
    maps are as falsy as 7.x's missing ones; filled (6.29), the entry is removed."""
    util = pytest.importorskip("ipyparallel.util")
    seen: dict[str, list[bool]] = {}
    for side, kernel in kernels.items():
        out, err = kernel.stream("stdout"), kernel.stream("stderr")
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        util._detach_thread_output(threading.get_ident())
        seen[side] = [bool(getattr(s, n, None)) for s in (out, err) for n in MAP_NAMES]
        monkeypatch.undo()
    assert seen["ours"] == seen["reference"] == [False] * 4
    out = kernels["ours"].streams[0]
    ident = threading.get_ident()
    out._thread_to_parent_header[ident] = {"msg_id": "x"}
    out._thread_to_parent[ident] = 1
    monkeypatch.setattr(sys, "stdout", out)
    util._detach_thread_output(ident)
    monkeypatch.undo()
    assert out._thread_to_parent_header == {} and out._thread_to_parent == {}


def test_set_parent_is_probed_and_sets_the_global_parent(kernels: dict[str, Kernelish]) -> None:
    """ipykernel 7.4.0 zmqshell.py ZMQInteractiveShell.set_parent (L751-754):
    ``if hasattr(sys.stdout, "set_parent"): sys.stdout.set_parent(parent)``;
    6.29.5 (L598-605) calls it inside ``except AttributeError``. A thread without a
    parent of its own then writes under it."""
    found = {}
    for side, kernel in kernels.items():
        stream = kernel.stream("stdout")
        assert hasattr(stream, "set_parent")
        cell = kernel.session.msg("execute_request", {})
        stream.set_parent(cell)
        worker = threading.Thread(target=lambda s=stream: s.write("from a thread\n"))
        worker.start()
        worker.join()
        stream.flush()
        got = wait_for_lines(kernel, ["from a thread"])
        found[side] = (got["from a thread"] == cell["header"]["msg_id"], stream.parent_header)
        assert found[side][1] == extract_header(cell)
    assert found["ours"][0] == found["reference"][0] is True


def actr_patched_subclass(module: ModuleType) -> type:
    """An OutStream whose ``parent_header`` is replaced as ACT-R's interface does."""

    class Patched(module.OutStream):
        pass

    def get(self: Any) -> Any:
        return self._parent_header_global

    def put(self: Any, value: Any) -> None:
        self._parent_header_global = value

    Patched.parent_header = Patched.parent_header.setter(put)
    Patched.parent_header = Patched.parent_header.getter(get)
    return Patched


def test_a_parent_header_replaced_as_act_r_does_routes_as_on_the_reference(
    kernels: dict[str, Kernelish],
) -> None:
    """ACT-R's Python interface (tutorial/python/actr.py, its Jupyter patch): if
    ``hasattr(ipykernel.iostream.OutStream, "_flush_buffers")``, it replaces
    ``OutStream.parent_header`` with a getter returning ``self._parent_header_global``
    and a setter assigning it, so that all output goes to the cell executed last.
    Output must still reach that cell, from the main thread and from others."""

    def probe(kernel: Kernelish) -> tuple[dict[str, str], str]:
        stream = actr_patched_subclass(kernel.module)(
            kernel.session, kernel.thread, "stdout", watchfd=False
        )
        kernel.streams.append(stream)
        cell = kernel.session.msg("execute_request", {})
        stream.set_parent(cell)
        stream.write("main\n")
        worker = threading.Thread(target=lambda: stream.write("thread\n"))
        worker.start()
        worker.join()
        stream.flush()
        got = wait_for_lines(kernel, ["main", "thread"])
        msg_id = cell["header"]["msg_id"]
        routed = {line: "cell" if parent == msg_id else parent for line, parent in got.items()}
        reported = "cell" if stream.parent_header.get("msg_id") == msg_id else "other"
        return routed, reported

    ours = probe(kernels["ours"])
    assert ours == probe(kernels["reference"]) == ({"main": "cell", "thread": "cell"}, "cell")


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_parent_header_global_exists_as_on_the_reference(
    kernels: dict[str, Kernelish], closed: bool
) -> None:
    """ACT-R's Python interface (tutorial/python/actr.py, its Jupyter patch): the
    getter it installs returns ``self._parent_header_global``, which may be read
    before anything was assigned to it (a dict, ``{}`` at first, in 6.29 and 7.x)."""
    seen = {}
    for side, kernel in kernels.items():
        stream = kernel.stream("stdout")
        before = stream._parent_header_global
        cell = kernel.session.msg("execute_request", {})
        stream.set_parent(cell)
        if closed:
            stream.close()
        after = stream._parent_header_global == extract_header(cell)
        seen[side] = (before, kind(stream, "_parent_header_global"), after)
    assert seen["ours"] == seen["reference"] == ({}, "dict", True)


def test_thread_parent_methods_are_found_as_on_the_reference(
    kernels: dict[str, Kernelish],
) -> None:
    """ipykernel 7.4.0 zmqshell.py set_thread_parent (L772-775):
    ``getattr(obj, "set_thread_parent", None)`` and ``"reset_thread_parent"`` on
    sys.stdout and sys.stderr; both present, it sets the calling thread's parent and
    resets it with the token. (6.29.5's OutStream lacks them and its zmqshell never
    asks; 7.x needs them, so ours has them in either case.)"""

    def probe(kernel: Kernelish) -> bool | None:
        stream = kernel.stream("stdout")
        setter = getattr(stream, "set_thread_parent", None)
        resetter = getattr(stream, "reset_thread_parent", None)
        if setter is None or resetter is None:
            return None
        glob, mine = kernel.session.msg("a", {}), kernel.session.msg("b", {})
        stream.set_parent(glob)
        seen: list[Any] = []

        def in_thread() -> None:
            token = setter(mine)
            seen.append(stream.parent_header)
            resetter(token)
            seen.append(stream.parent_header)

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
        return seen == [extract_header(mine), extract_header(glob)]

    assert probe(kernels["ours"]) is True
    assert probe(kernels["reference"]) in (True, None)  # (None: 6.29 has no such methods)


def test_topic_is_writable_and_used_as_the_ident(kernels: dict[str, Kernelish]) -> None:
    """ipyparallel 9.2 engine/app.py redirect_output (L579, L581):
    ``sys.stdout.topic = f"engine.{self.id}.stdout".encode("ascii")``; the messages
    must then go out under that topic (the engine's IOPub identity frame)."""
    idents = {}
    for side, kernel in kernels.items():
        stream = kernel.stream("stdout")
        assert kind(stream, "topic") == "bytes"
        stream.topic = b"engine.3.stdout"
        stream.write("topic\n")
        stream.flush()
        sub = kernel.receiver.socket
        deadline = time.monotonic() + 10
        while side not in idents and time.monotonic() < deadline:
            if sub.poll(100):
                frames = sub.recv_multipart()
                at = frames.index(DELIM)  # identities, DELIM, signature, header, ...
                if json.loads(frames[at + 2])["msg_type"] == "stream":
                    idents[side] = frames[:at]
    assert idents["ours"] == idents["reference"] == [b"engine.3.stdout"]


def test_write_can_be_replaced_and_restored(kernels: dict[str, Kernelish]) -> None:
    """spyder-kernels 3.1.6 comms/utils.py WriteContext (L24-36): saves
    ``f.write`` of sys.stdout/sys.stderr, assigns a wrapper to ``f.write``, later
    assigns the saved method back; output must flow through each in turn."""

    def probe(kernel: Kernelish) -> tuple[list[str], list[str]]:
        stream = kernel.stream("stdout")
        saved: Callable[[str], int] = stream.write
        calls: list[str] = []

        def wrapper(text: str) -> int:
            calls.append(text)
            return saved("wrapped " + text)

        stream.write = wrapper
        stream.write("one\n")
        stream.write = saved
        stream.write("two\n")
        stream.flush()
        return sorted(wait_for_lines(kernel, ["wrapped one", "two"])), calls

    ours = probe(kernels["ours"])
    assert ours == probe(kernels["reference"]) == (["two", "wrapped one"], ["one\n"])


def spyder_like_subclass(module: ModuleType) -> type:
    """An OutStream whose ``_flush`` is replaced the way spyder-kernels' is."""

    class Filtering(module.OutStream):
        def _flush(self) -> None:
            self._flush_pending = False
            self._subprocess_flush_pending = False
            if self.echo is not None:
                self.echo.flush()
            for parent, text in self._flush_buffers():
                if not text or "poll failed" in text:
                    continue
                self.session.pid = os.getpid()
                msg = self.session.msg("stream", {"name": self.name, "text": text}, parent=parent)
                for hook in self._hooks:
                    msg = hook(msg)
                    if msg is None:
                        return
                self.session.send(self.pub_thread, msg, ident=self.topic)

    return Filtering


def test_a_flush_overridden_as_spyder_does_publishes_as_on_the_reference(
    kernels: dict[str, Kernelish],
) -> None:
    """spyder-kernels 3.1.6 console/outstream.py TTYOutStream._flush (L26-71): reads
    ``_flush_pending``, ``_subprocess_flush_pending``, ``echo``, ``_flush_buffers()``,
    ``session``, ``name``, ``_hooks``, ``pub_thread`` and ``topic``, and drops the
    text it filters."""
    got = {}
    for side, kernel in kernels.items():
        stream = spyder_like_subclass(kernel.module)(
            kernel.session, kernel.thread, "stderr", None, echo=None, watchfd=False, isatty=True
        )
        kernel.streams.append(stream)
        stream.write("Parent poll failed.\n")
        stream.flush()
        stream.write("kept\n")
        stream.flush()
        got[side] = sorted(wait_for_lines(kernel, ["kept"]))
    assert got["ours"] == got["reference"] == ["kept"]


# -- thread routing: ipykernel 6.29's thread maps --------------------------------------


class RecordingThread(threading.Thread):
    """A thread that enters itself into the streams' thread maps as it starts.

    This is what ipykernel 6.29's IPythonKernel makes every thread do (its patched
    ``Thread.run``): a thread started by the kernel's thread is mapped to the parent
    of the cell that was executing then, any other to the thread that started it.
    """

    def __init__(self, world: Routing, target: Callable[[], None]) -> None:
        super().__init__(target=target, daemon=True)
        self.world = world
        self.starter = threading.get_ident()

    def run(self) -> None:
        for stream in self.world.streams:
            if self.starter == self.world.kernel_ident:
                stream._thread_to_parent_header[self.ident] = self.world.new_threads_header
            else:
                stream._thread_to_parent[self.ident] = self.starter
        super().run()


def write(stream: Any, line: str) -> None:
    """Write ``line`` and a newline as two writes."""
    stream.write(line)
    stream.write("\n")


class Routing:
    """Cells A then B on the kernel's thread; threads started during A write during B.

    Returns, for each line written, the msg_id of the parent it was published under.
    ``record`` says whether threads enter themselves into the maps (6.29's kernel).
    Each line is written in two pieces (ours: the first write of a burst arms a
    flush, the next takes the fast path); with ``echo`` every write takes ours'
    checked path.
    """

    def __init__(self, kernel: Kernelish, record: bool, echo: bool = False) -> None:
        self.kernel = kernel
        self.stream = kernel.stream("stdout", echo=io.StringIO() if echo else None)
        self.streams = [self.stream]
        self.kernel_ident = threading.get_ident()
        self.new_threads_header: dict[str, Any] = {}
        self.record = record

    def start(self, target: Callable[[], None]) -> threading.Thread:
        thread = RecordingThread(self, target) if self.record else threading.Thread(target=target)
        thread.start()
        return thread

    def run(self) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        session, stream = self.kernel.session, self.stream
        cell_a, cell_b, own = (session.msg("execute_request", {}) for _ in range(3))
        go = threading.Event()
        seen: dict[str, str] = {}

        def note(name: str) -> None:
            seen[name] = stream.parent_header.get("msg_id", "")

        def grandchild() -> None:
            note("grandchild")
            write(stream, "grandchild")

        def detached() -> None:
            # ipyparallel's threads drop their own entries first (util._detach_thread_output)
            for name in MAP_NAMES:
                mapping = getattr(stream, name, None)
                if mapping:
                    mapping.pop(threading.get_ident(), None)
            note("detached")
            write(stream, "detached")

        def child() -> None:
            go.wait(30)
            note("child")
            write(stream, "child")
            for target in (grandchild, detached):
                thread = self.start(target)
                thread.join(30)
            stream.parent_header = extract_header(own)  # a thread's own parent wins
            note("own")
            write(stream, "own")

        stream.set_parent(cell_a)  # cell A executes
        self.new_threads_header = extract_header(cell_a)
        worker = self.start(child)
        stream.set_parent(cell_b)  # cell B executes
        self.new_threads_header = extract_header(cell_b)
        go.set()
        worker.join(30)
        note("main")
        write(stream, "main")
        stream.flush()
        got = wait_for_lines(self.kernel, ["child", "grandchild", "detached", "own", "main"])
        ids = {"A": cell_a, "B": cell_b, "own": own}
        names = {msg["header"]["msg_id"]: name for name, msg in ids.items()}
        return (
            {line: names.get(msg_id, msg_id) for line, msg_id in got.items()},
            {line: names.get(msg_id, msg_id) for line, msg_id in seen.items()},
            {name: msg["header"]["msg_id"] for name, msg in ids.items()},
        )


#: Where ipykernel 6.29.5's OutStream (iostream.py parent_header, L505-522) puts
#: each line: a thread without a parent of its own writes under its oldest recorded
#: ancestor's cell, else under the global parent.
ROUTES_6_29 = {
    "child": "A",
    "grandchild": "A",
    "detached": "B",
    "own": "own",
    "main": "B",
}


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echoing"])
def test_threads_route_by_the_thread_maps_as_6_29_does(
    kernels: dict[str, Kernelish], echo: bool
) -> None:
    """ipykernel 6.29.5 ipkernel.py _initialize_thread_hooks (L756-766) fills
    ``stream._thread_to_parent_header[ident]`` / ``stream._thread_to_parent[ident]``
    as threads start; 6.29.5 iostream.py OutStream.parent_header (L505-522), read
    by its write(), routes by them. Ours must publish each line, and report
    ``parent_header``, as 6.29.5 does (compared with it when it is installed)."""
    published, reported, _ids = Routing(kernels["ours"], record=True, echo=echo).run()
    assert published == ROUTES_6_29
    assert reported == ROUTES_6_29
    ref_stream = kernels["reference"].stream("stdout")
    if hasattr(ref_stream, "_thread_to_parent_header"):  # 6.29.x installed
        ref = Routing(kernels["reference"], record=True, echo=echo)
        ref_published, ref_reported, _ = ref.run()
        assert (published, reported) == (ref_published, ref_reported)


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echoing"])
def test_empty_thread_maps_route_as_the_reference(
    kernels: dict[str, Kernelish], echo: bool
) -> None:
    """ipykernel 7.4.0 iostream.py OutStream.parent_header: without the maps (7.x
    kernels never fill them) a thread without a parent of its own writes under the
    global parent. Our (empty) maps must not change that: same routes as the
    reference when no thread records itself."""
    ours = Routing(kernels["ours"], record=False, echo=echo).run()
    ref = Routing(kernels["reference"], record=False, echo=echo).run()
    assert ours[0] == ref[0]
    assert ours[1] == ref[1]
    assert ours[0]["child"] == "B"


def test_a_cycle_in_the_thread_map_ends_at_the_global_parent(
    kernels: dict[str, Kernelish],
) -> None:
    """ipykernel 6.29.5 iostream.py OutStream.parent_header (L516-517) walks
    ``while identity in self._thread_to_parent`` and would loop forever on a cycle
    (idents are reused, and the map keeps entries until the next collection). Ours
    stops and uses the global parent."""
    kernel = kernels["ours"]
    stream = kernel.stream("stdout")
    cell = kernel.session.msg("execute_request", {})
    stream.set_parent(cell)
    result: list[Any] = []

    def looped() -> None:
        me = threading.get_ident()
        stream._thread_to_parent[me] = me + 1
        stream._thread_to_parent[me + 1] = me
        stream._thread_to_parent_header[me + 2] = {"msg_id": "elsewhere"}
        result.append(stream.parent_header)
        stream.write("looped\n")

    worker = threading.Thread(target=looped, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    assert result == [extract_header(cell)]
    stream.flush()
    assert wait_for_lines(kernel, ["looped"])["looped"] == cell["header"]["msg_id"]


# -- IOPubThread and BackgroundSocket -------------------------------------------------


def thread_in_state(module: ModuleType, state: str) -> tuple[Any, zmq.Context[Any]]:
    """An IOPubThread of ``module`` on a PUB socket, brought to ``state``."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.linger = 0
    socket.bind_to_random_port("tcp://127.0.0.1")
    thread = module.IOPubThread(socket, pipe=True, **_thread_kwargs(module, Session(key=KEY)))
    if state != "new":
        thread.start()
        _wait_for_gc_task(thread)
    if state == "stopped":
        _stop_only(thread)
    elif state == "closed":
        stop_iopub_thread(thread)
    return thread, context


def _wait_for_gc_task(thread: Any) -> None:
    """Let ipykernel's started thread create its event-pipe GC task (bounded wait):
    stopped before that, the task is destroyed pending and asyncio complains."""
    deadline = time.monotonic() + 10
    while (
        hasattr(thread, "_event_pipe_gc_task")
        and thread._event_pipe_gc_task is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)


def _stop_only(thread: Any) -> None:
    """``thread.stop()``, cancelling ipykernel's event-pipe GC task first (as
    ``support.stop_iopub_thread`` does) so that asyncio does not complain later."""
    import asyncio
    import contextlib

    task = getattr(thread, "_event_pipe_gc_task", None)
    if task is not None and thread.thread.is_alive():

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run_coroutine_threadsafe(cancel(), thread.io_loop.asyncio_loop).result(10)
    thread.stop()


THREAD_STATES = ["new", "running", "stopped", "closed"]


@pytest.fixture(params=THREAD_STATES)
def threads(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """``{"ours": thread, "reference": thread}`` in the state ``request.param``."""
    made = {side: thread_in_state(module, request.param) for side, module in MODULES.items()}
    yield {side: thread for side, (thread, _ctx) in made.items()}
    for thread, context in made.values():
        if request.param == "new":
            thread.stop()
            thread.close()
        elif request.param != "closed":
            stop_iopub_thread(thread)
        context.destroy(linger=0)


def test_iopub_thread_thread_is_a_thread_in_every_state(threads: dict[str, Any]) -> None:
    """spyder-kernels 3.1.6 console/kernel.py get_system_threads_id (L250):
    ``self.parent.iopub_thread.thread`` and its ``.ident``; phy's tests assert
    ``not kernel.iopub_thread.thread.is_alive()`` once stopped."""
    seen = {}
    for side, thread in threads.items():
        t = thread.thread
        seen[side] = (
            isinstance(t, threading.Thread),
            t.ident is None,
            t.is_alive(),
            t.daemon,
            t.name,
        )
    assert seen["ours"] == seen["reference"]


def test_iopub_thread_and_its_socket_are_truthy(threads: dict[str, Any]) -> None:
    """ipykernel 7.4.0 kernelapp.py close (L453): ``if self.iopub_thread:``;
    jupyter_client session.py Session.send: ``isinstance(stream, zmq.Socket)`` and
    ``if stream:`` before ``stream.send_multipart`` (the IOPubThread is the stream
    OutStream sends through, the BackgroundSocket is the kernel's iopub_socket)."""
    seen = {}
    for side, thread in threads.items():
        socket = thread.background_socket
        seen[side] = (
            bool(thread),
            bool(socket),
            isinstance(thread, zmq.Socket),
            isinstance(socket, zmq.Socket),
        )
    assert seen["ours"] == seen["reference"] == (True, True, False, False)


def test_background_socket_is_an_instance_of_the_modules_class(threads: dict[str, Any]) -> None:
    """ipykernel 7.4.0 kernelapp.py init_iopub (L428):
    ``self.iopub_socket = self.iopub_thread.background_socket``; inprocess/ipkernel.py
    (L53, L63-67): traitlets ``Instance(IOPubThread)`` and ``Instance(BackgroundSocket)``
    validate both; ``self.iopub_socket.io_thread`` (L136-138) is the thread."""
    from traitlets import HasTraits, Instance

    seen = {}
    for side, thread in threads.items():
        module = MODULES[side]

        class Holder(HasTraits):
            iopub_thread = Instance(module.IOPubThread)
            iopub_socket = Instance(module.BackgroundSocket)

        holder = Holder(iopub_thread=thread, iopub_socket=thread.background_socket)
        seen[side] = holder.iopub_socket.io_thread is thread
    assert seen["ours"] == seen["reference"] is True


def test_events_backlog_has_a_length(threads: dict[str, Any]) -> None:
    """python-adaptive notebook_integration.should_update:
    ``len(status.comm.kernel.iopub_thread._events)`` (and its test
    ``test_private_api_used_in_live_info`` reads ``iopub_thread._events``)."""
    seen = {}
    for side, thread in threads.items():
        seen[side] = len(thread._events)
    assert seen["ours"] == seen["reference"] == 0


def test_io_thread_socket_is_the_in_process_dummy_socket() -> None:
    """ipykernel 7.4.0 inprocess/ipkernel.py _io_dispatch (L136-138): on every
    ``message_sent`` of the DummySocket, ``self.session.recv(
    self.iopub_socket.io_thread.socket, copy=False)`` must find the message that
    ``session.send(self.iopub_socket, ...)`` sent through the BackgroundSocket."""
    from ipykernel.inprocess.socket import DummySocket

    def probe(module: ModuleType) -> tuple[list[Any], bool]:
        session = Session(key=KEY)
        dummy = DummySocket()
        thread = module.IOPubThread(dummy, **_thread_kwargs(module, session))
        thread.start()
        _wait_for_gc_task(thread)
        socket = thread.background_socket
        got: list[Any] = []
        done = threading.Event()

        def dispatch(_change: Any) -> None:
            assert socket.io_thread is not None
            _ident, msg = session.recv(socket.io_thread.socket, copy=False)
            got.append(msg["content"])
            done.set()

        dummy.observe(dispatch, names=["message_sent"])
        session.send(socket, "stream", {"name": "stdout", "text": "in process"})
        assert done.wait(10)
        _stop_only(thread)  # as inprocess/manager.py does (DummySocket has no close())
        return got, socket.io_thread.socket is dummy

    ours = probe(iostream)
    assert ours == probe(REF) == ([{"name": "stdout", "text": "in process"}], True)


def test_iopub_thread_takes_a_session_parameter() -> None:
    """ipyparallel 9.2 engine/app.py init_engine (L673):
    ``if 'session' in inspect.signature(IOPubThread).parameters`` picks XPUB and
    passes the session (present in 7.x, absent in 6.29, present in ours)."""
    ours = inspect.signature(iostream.IOPubThread).parameters
    assert "session" in ours
    assert list(ours)[:2] == list(inspect.signature(REF.IOPubThread).parameters)[:2]


def test_stop_and_close_may_each_be_called_again() -> None:
    """ipykernel 7.4.0 kernelapp.py close (L455-456): ``iopub_thread.stop()`` then
    ``iopub_thread.close()``; inprocess/manager.py shutdown_kernel (L53):
    ``self.kernel.iopub_thread.stop()`` on each shutdown; ``start`` registered
    ``atexit.register(self.stop)``, which runs once more at exit."""
    seen = {}
    for side, module in MODULES.items():
        thread, context = thread_in_state(module, "running")
        stop_iopub_thread(thread)
        thread.stop()
        thread.close()
        seen[side] = (thread.closed, thread.thread.is_alive())
        context.destroy(linger=0)
    assert seen["ours"] == seen["reference"] == (True, False)


# -- a real kernel ---------------------------------------------------------------------

THREAD_CELL_A = """
import sys, threading
go, done = threading.Event(), threading.Event()
def grandchild():
    print("grandchild", flush=True)
def child():
    go.wait(30)
    print("child", flush=True)
    g = threading.Thread(target=grandchild)
    g.start()
    g.join(30)
    done.set()
worker = threading.Thread(target=child)
worker.start()
"""
THREAD_CELL_B = 'go.set(); done.wait(30); worker.join(30); print("b", flush=True)'
THREAD_CELL_C = """
import gc
maps = getattr(sys.stdout, "_thread_to_parent_header", {})
print(worker.ident in maps)
gc.collect()
print(worker.ident in maps)
"""


@pytest.mark.e2e
def test_a_kernels_threads_print_into_the_same_cell_as_with_stock_ipykernel(
    tmp_path: Path,
) -> None:
    """ipykernel 6.29.5 ipkernel.py _initialize_thread_hooks (L735-773) and
    _clean_thread_parent_frames (L775-806), run by a real kernel on our OutStream:
    under 6.29 a thread started in cell A (and its own child thread) prints into
    A while B runs, and the gc hook removes the entries of finished threads;
    under 7.x both print into B. Ours must do what stock ipykernel does."""
    sys.path.insert(0, str(Path(__file__).parent / "e2e"))
    try:
        from kernel_harness import Kernel
    finally:
        sys.path.pop(0)
    outputs = {}
    (tmp_path / "logs").mkdir()
    for kind_ in ("iostream", "ipykernel"):
        kernel = Kernel(kind_, tmp_path / "kernels", tmp_path / "logs")
        try:
            cells = [kernel.run(code) for code in (THREAD_CELL_A, THREAD_CELL_B, THREAD_CELL_C)]
            outputs[kind_] = [cell.stdout for cell in cells]
        finally:
            kernel.shutdown()
    assert outputs["iostream"] == outputs["ipykernel"]
    import ipykernel

    if ipykernel.version_info < (7,):
        assert outputs["iostream"] == ["child\ngrandchild\n", "b\n", "True\nFalse\n"]
    else:
        assert outputs["iostream"] == ["", "child\ngrandchild\nb\n", "False\nFalse\n"]
