"""The inlets: descriptors whose waiting text a writer has taken in before its
own write (issue 19). Real pipes; the epoll path (Linux) and the poll path (other
systems) both."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iostream import inlets
from iostream.inlets import Inlets
from support import run_scenario

PATHS = [pytest.param(True, id="epoll"), pytest.param(False, id="poll")]


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(2)]
    yield made
    for r, w in made:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.parametrize("use_epoll", PATHS)
def test_only_inlets_with_text_waiting_are_taken_in(
    use_epoll: bool, pipes: list[tuple[int, int]]
) -> None:
    if use_epoll and not hasattr(__import__("select"), "epoll"):
        pytest.skip("no epoll on this system")
    taken: list[int] = []
    box = Inlets(use_epoll=use_epoll)
    assert box.poll is None, "nothing to ask before an inlet is added"
    box.take_in()  # (nothing: no inlets)
    readers = {
        r: (lambda timeout, r=r: taken.append(r) or os.read(r, 100) != b"") for r, _ in pipes
    }
    for r, take_in in readers.items():
        box.add(r, take_in)
    assert box.poll is not None
    assert not box.poll(0, 1)
    box.take_in()
    assert taken == []
    os.write(pipes[1][1], b"x")
    assert box.poll(0, 1)
    box.take_in()
    assert taken == [pipes[1][0]]
    assert not box.poll(0, 1), "the reader took it in"
    box.remove(pipes[1][0], readers[pipes[0][0]])  # (not its reader: left alone)
    os.write(pipes[1][1], b"y")
    assert box.poll(0, 1)
    os.read(pipes[1][0], 10)
    box.remove(pipes[1][0], readers[pipes[1][0]])
    box.remove(pipes[1][0], readers[pipes[1][0]])  # (idempotent)
    os.write(pipes[1][1], b"z")
    assert not box.poll(0, 1), "a removed inlet is not asked"
    box.remove(pipes[0][0], readers[pipes[0][0]])
    assert box.poll is None


def test_an_inlet_whose_reader_does_not_answer_is_skipped_for_a_while(
    pipes: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader stuck (an echo blocked on a full terminal) costs one bounded
    wait, not one per write, whichever of its descriptors are ready (a pipe and
    its busy mark share one reader: asked once); after LATE_PAUSE it is asked
    again."""
    monkeypatch.setattr(inlets, "LATE_PAUSE", 0.3)
    calls: list[float] = []
    box = Inlets()

    def stuck(timeout: float) -> bool:
        calls.append(timeout)
        return False  # never answers

    for r, w in pipes:
        box.add(r, stuck)
        os.write(w, b"waiting")
    box.take_in()
    assert calls == [inlets.TAKE_IN_TIMEOUT], "one reader, asked once"
    box.take_in()
    assert len(calls) == 1, "skipped while late"
    time.sleep(0.35)
    box.take_in()
    assert len(calls) == 2


def test_a_reader_thread_and_a_nested_take_in_never_wait(pipes: list[tuple[int, int]]) -> None:
    """A write while this thread waits in a take-in (a signal handler that
    prints), or on a reader's thread, must not wait for a reader again: it
    could be the one being waited for, or recurse without end."""
    box = Inlets()
    nested: list[str] = []
    r, w = pipes[0]

    def reader(timeout: float) -> bool:
        nested.append("asked")
        box.take_in()  # (as a nested write would)
        os.read(r, 100)
        return True

    box.add(r, reader)
    os.write(w, b"x")
    box.take_in()
    assert nested == ["asked"]
    os.write(w, b"y")
    seen: list[int] = []

    def on_reader_thread() -> None:
        inlets.mark_reader_thread()
        box.take_in()
        seen.append(len(nested))

    import threading

    t = threading.Thread(target=on_reader_thread)
    t.start()
    t.join(5)
    assert seen == [1], "a reader's thread never asks"


def test_a_forked_child_never_touches_the_parents_inlets(tmp_path: object) -> None:
    """The epoll instance is shared with a forked child: a child that removed or
    added an inlet would change the parent's. In the child nothing is asked."""
    run = run_scenario(
        """
        import os, select
        from childkit import report
        from iostream.inlets import Inlets
        box = Inlets()
        r, w = os.pipe()
        take_in = lambda timeout: True
        box.add(r, take_in)
        os.write(w, b"x")
        pid = os.fork()
        if pid == 0:
            ok = box.poll is None
            box.remove(r, take_in)
            r2, w2 = os.pipe()
            box.add(r2, take_in)
            box.take_in()
            os._exit(0 if ok and box.poll is None else 1)
        _, status = os.waitpid(pid, 0)
        report({"child": os.waitstatus_to_exitcode(status), "parent_sees": bool(box.poll(0, 1))})
        """,
        tmp_path,  # type: ignore[arg-type]
    )
    assert run.result == {"child": 0, "parent_sees": True}


def test_a_busy_mark_is_seen_by_one_poll_while_held_and_closes_once() -> None:
    """Between a reader's read and its delivery the pipe is empty: the mark is
    what the writer's poll sees then. Closing twice must not close a descriptor
    that has been given to someone else meanwhile (it hung zmq's context)."""
    mark = inlets.BusyMark()
    box = Inlets()

    def take_in(timeout: float) -> bool:
        return True

    box.add(mark.fd, take_in)
    assert box.poll is not None
    assert not box.poll(0, 1)
    mark.set()
    mark.set()  # (held already: one byte)
    assert mark.held and box.poll(0, 1)
    mark.clear()
    assert not mark.held and not box.poll(0, 1)
    box.remove(mark.fd, take_in)
    mark.close()
    r, w = os.pipe()  # likely given one of the numbers just closed
    try:
        mark.close()
        os.write(w, b"still open")
        assert os.read(r, 100) == b"still open"
    finally:
        os.close(r)
        os.close(w)


def test_the_library_leaves_the_order_to_the_kernel_app(tmp_path: object) -> None:
    """keep_write_order costs a system call per Python line, so a stream of the
    library asks nothing by default; ``python -m iostream kernel`` turns it on
    (tests/e2e/test_output_order.py checks the order in that kernel)."""
    run = run_scenario(
        """
        from childkit import Setup, report
        k = Setup()
        default = k.module.OutStream.keep_write_order
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd="force")
        asks_by_default = out._group.inlets.poll is not None
        out.close()
        report({"default": default, "asks": asks_by_default})
        """,
        tmp_path,  # type: ignore[arg-type]
    )
    assert run.result == {"default": False, "asks": False}


def test_with_the_order_off_no_descriptor_is_made_for_it(tmp_path: Path) -> None:
    """Off (the library's default), keeping the order costs no descriptor: a
    capturing stream and a thread with a children's channel open what they did
    before the ordering existed; on, the two busy marks' pipes and the epoll
    instance are added. (Each count in a fresh process.)"""
    counts = {}
    for keep in (False, True):
        (tmp_path / str(keep)).mkdir()
        run = run_scenario(
            f"""
            from childkit import Setup, open_fds, report
            before = open_fds()
            k = Setup()
            k.module.OutStream.keep_write_order = {keep}
            out = k.module.OutStream(k.session, k.thread, "stdout", watchfd="force")
            out.write("x\\n")
            out.flush()
            report({{"opened": open_fds() - before}})
            out.close()
            """,
            tmp_path / str(keep),
        )
        counts[keep] = run.result["opened"]
    assert counts[True] - counts[False] == 5, counts


def test_nothing_is_taken_in_from_children_before_a_child_was_forked(tmp_path: Path) -> None:
    """Until this process forks, no child can have written to the channel, so a
    take-in of children's text answers at once, even while the IO thread is busy
    (no call queued behind it); once a child was forked, it asks the IO thread
    (which, busy for a second, does not answer within 0.2 s)."""
    run = run_scenario(
        """
        import os, time
        from childkit import Setup, report
        k = Setup()
        k.thread.schedule(time.sleep, 1.0)  # the IO thread is busy
        before = k.thread.take_in_children(0.2)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        k.thread.schedule(time.sleep, 1.0)
        after = k.thread.take_in_children(0.2)
        report({"before": before, "after": after})
        """,
        tmp_path,
    )
    assert run.result == {"before": True, "after": False}
