"""Forked children (pipe=True): batching, delivery at exit, fork safety, the channel."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from support import Kernelish, needs_fork, run_scenario

# Most tests fork (os.fork or multiprocessing's "fork" context) and are marked
# needs_fork; the ones that only talk to the parent's end of the channel do not.


@needs_fork
def test_forked_child_output_arrives_batched_and_authenticated(tmp_path: Path) -> None:
    """ipykernel opens a new context and TCP connection per message: one message
    per line."""
    run = run_scenario(
        """
        import os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({"header": {"msg_id": "cell"}})
        pid = os.fork()
        if pid == 0:
            for i in range(3000):
                print(i, file=out)
            out.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        expected = "".join(f"{i}\\n" for i in range(3000))
        ok = k.wait_for(lambda: len(k.text()) >= len(expected))
        report({
            "ok": ok, "equal": k.text() == expected, "status": status,
            "messages": len(k.streams()),
            "parents": sorted({m["parent_header"].get("msg_id") for m in k.streams()}),
        })
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"] and r["equal"] and r["status"] == 0, r
    assert r["messages"] <= 30
    assert r["parents"] == ["cell"]


@needs_fork
def test_child_exit_without_flush_delivers_through_atexit(tmp_path: Path) -> None:
    run = run_scenario(
        """
        import os, sys
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        pid = os.fork()
        if pid == 0:
            out.write("no explicit flush\\n")
            sys.exit(0)   # atexit runs IOPubThread.stop in the child
        os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "no explicit flush" in k.text())
        report({"ok": ok})
        """,
        tmp_path,
    )
    assert run.result["ok"]


@needs_fork
def test_parent_pending_text_is_not_republished_by_the_child(tmp_path: Path) -> None:
    run = run_scenario(
        """
        import os, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.flush_interval = 5.0
        out.write("warm\\n"); out.flush()
        out.write("parent-pending ")   # still buffered at the fork
        pid = os.fork()
        if pid == 0:
            out.write("child\\n"); out.flush(); os._exit(0)
        os.waitpid(pid, 0)
        out.flush()
        ok = k.wait_for(lambda: "child" in k.text() and "parent-pending" in k.text())
        report({"ok": ok, "count": k.text().count("parent-pending")})
        """,
        tmp_path,
    )
    assert run.result == {"ok": True, "count": 1}


@needs_fork
def test_multiprocessing_fork_pool_workers_output_arrives(tmp_path: Path) -> None:
    run = run_scenario(
        """
        import multiprocessing, sys
        from childkit import Setup, report
        k = Setup()
        sys.stdout = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)

        def work(i):
            print(f"worker says {i}")
            return i * i

        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            results = pool.map(work, range(20))
        expected = {f"worker says {i}" for i in range(20)}
        ok = k.wait_for(lambda: expected <= set(k.text().splitlines()), timeout=30)
        sys.stdout = sys.__stdout__
        report({"ok": ok, "results": results == [i * i for i in range(20)]})
        """,
        tmp_path,
    )
    assert run.result == {"ok": True, "results": True}


@needs_fork
def test_fork_while_other_threads_write_and_flush_never_hangs(tmp_path: Path) -> None:
    """ipykernel: a fork while another thread holds the buffer lock leaves the
    child's lock held forever."""
    run = run_scenario(
        """
        import os, threading, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        stop = threading.Event()
        def hammer():
            while not stop.is_set():
                out.write("h" * 100)
                out.flush()
        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for w in workers: w.start()
        hung = 0
        for n in range(40):
            pid = os.fork()
            if pid == 0:
                out.write(f"child {n}\\n"); out.flush(); os._exit(0)
            deadline = time.monotonic() + 15
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done: break
                if time.monotonic() > deadline:
                    os.kill(pid, 9); os.waitpid(pid, 0); hung += 1; break
                time.sleep(0.005)
        stop.set()
        for w in workers: w.join()
        out.flush()
        ok = k.wait_for(lambda: all(f"child {n}\\n" in k.text() for n in range(40)), timeout=30)
        report({"hung": hung, "ok": ok})
        """,
        tmp_path,
        timeout=300,
    )
    assert run.result == {"hung": 0, "ok": True}


@needs_fork
def test_channel_is_private_and_never_reaches_executed_programs(kernel: Kernelish) -> None:
    """ipykernel binds its pipe on TCP 127.0.0.1, reachable by any local user. Ours
    is a socketpair (no address anyone can connect to), close-on-exec: a program a
    child executes never holds it, even with ``close_fds=False``."""
    channel = kernel.thread._channel
    fds = {channel.reader.fileno(), channel.writer.fileno()}
    for sock in (channel.reader, channel.writer):
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_DGRAM
        assert not sock.get_inheritable()
        assert sock.getsockname() in ("", b"")  # unnamed: nothing to connect to
    listing = subprocess.run(
        ["ls", "/proc/self/fd"], capture_output=True, text=True, close_fds=False, check=True
    ).stdout.split()
    assert fds.isdisjoint(int(fd) for fd in listing)


@needs_fork
def test_child_text_keeps_parent_with_dates_and_replaces_lone_surrogates(
    tmp_path: Path,
) -> None:
    """A child's text goes to the parent as records: the parent header (with a
    datetime, as a deserialized request has) must survive, and a lone surrogate
    must become U+FFFD instead of breaking the record."""
    run = run_scenario(
        """
        import datetime, os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        request = k.session.msg("execute_request", {"code": ""})
        request["header"]["date"] = datetime.datetime.now(datetime.timezone.utc)
        out.set_parent(request)
        pid = os.fork()
        if pid == 0:
            out.write("bad \\ud800 surrogate\\n")
            out.write("partial line")
            out.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "partial line" in k.text())
        report({
            "ok": ok, "text": k.text(),
            "parents": [m["parent_header"].get("msg_id") for m in k.streams()],
            "want": request["header"]["msg_id"],
        })
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"], r
    assert r["text"] == "bad \ufffd surrogate\npartial line"
    assert set(r["parents"]) == {r["want"]}


def test_malformed_child_records_are_logged_and_output_continues(
    kernel: Kernelish, caplog: pytest.LogCaptureFixture
) -> None:
    """Broken datagrams on the channel are logged and dropped; the IO thread keeps
    reading it (a good record after them arrives) and publishing."""
    writer = kernel.thread._channel.writer
    head = struct.Struct("!cBIQ")  # kind, flags, pid, thread
    whole = 3  # FIRST | LAST
    stream = kernel.stream()
    stream.set_parent({"header": {"msg_id": "cell"}})
    good = struct.pack("!QHI", id(stream), 6, 2) + b"stdout{}child line\n"
    with caplog.at_level(logging.WARNING, logger="iostream"):
        writer.send(b"x")  # shorter than a head
        writer.send(head.pack(b"t", whole, 1, 0) + b"truncated")
        writer.send(head.pack(b"t", whole, 1, 0) + struct.pack("!QHI", 1, 6, 1) + b"stdout{x")
        writer.send(head.pack(b"?", whole, 1, 0) + b"unknown kind")
        writer.send(head.pack(b"m", whole, 1, 0) + b"\xff\xff\xff\xff")  # a frame past the end
        writer.send(head.pack(b"t", 2, 1, 0) + good)  # the last piece of a lost record
        writer.send(head.pack(b"t", whole, 1, 0) + good)
        kernel.receiver.wait_for_text("child line\n")
    assert len([r for r in caplog.records if "child" in r.getMessage()]) >= 6, caplog.text
    stream.write("still alive\n")
    stream.flush()
    kernel.receiver.wait_for_text("child line\nstill alive\n")
    assert kernel.receiver.text() == "child line\nstill alive\n"


@needs_fork
def test_concurrent_children_never_interleave_within_a_line(tmp_path: Path) -> None:
    """Children writing lines in pieces at the same time: each line arrives whole
    (a child is line-buffered), none is lost or duplicated, each child's lines in
    order. ipykernel sends every piece as it comes, so pieces of different
    children's lines interleave."""
    run = run_scenario(
        """
        import os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({"header": {"msg_id": "cell"}})
        pids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(400):
                    out.write(f"child{n}")
                    out.write(f" line {i}")
                    out.write("\\n")
                out.flush()
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        total = sum(len(f"child{n} line {i}\\n") for n in range(3) for i in range(400))
        ok = k.wait_for(lambda: len(k.text()) >= total)
        lines = k.text().splitlines()
        report({
            "ok": ok,
            "count": len(lines),
            "whole": all(l.startswith("child") and " line " in l for l in lines),
            "ordered": all(
                [l for l in lines if l.startswith(f"child{n} ")]
                == [f"child{n} line {i}" for i in range(400)]
                for n in range(3)
            ),
        })
        """,
        tmp_path,
    )
    assert run.result == {"ok": True, "count": 1200, "whole": True, "ordered": True}


@needs_fork
def test_child_partial_line_is_delivered_at_normal_exit(tmp_path: Path) -> None:
    """A child that never wrote a newline and exits normally: atexit stops the
    thread, whose stop callbacks publish the partial line to the parent."""
    run = run_scenario(
        """
        import os, sys
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        pid = os.fork()
        if pid == 0:
            out.write("partial, no newline")
            sys.exit(0)
        os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "partial, no newline" in k.text(), timeout=15)
        report({"ok": ok, "text": k.text()})
        """,
        tmp_path,
    )
    assert run.result == {"ok": True, "text": "partial, no newline"}


@needs_fork
def test_child_text_is_published_before_the_childs_later_messages(tmp_path: Path) -> None:
    """print, flush, then display_data in a child (what IPython's display does):
    the frontend must see the printed text first."""
    run = run_scenario(
        """
        import os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.flush_interval = 5.0
        out.write("warm\\n"); out.flush()   # the parent's next timed flush is far away
        pid = os.fork()
        if pid == 0:
            out.write("printed first\\n")
            out.flush()
            k.session.send(k.thread, "display_data", {"data": {"text/plain": "x"}, "metadata": {}})
            k.thread.flush(5)
            os._exit(0)
        os.waitpid(pid, 0)
        ok = k.wait_for(lambda: any(m["msg_type"] == "display_data" for m in k.messages))
        k.poll(0.3)
        kinds = [
            m["msg_type"] if m["msg_type"] != "stream" else m["content"]["text"]
            for m in k.messages
        ]
        report({"ok": ok, "kinds": kinds})
        """,
        tmp_path,
    )
    assert run.result["ok"], run.result
    assert run.result["kinds"] == ["warm\n", "printed first\n", "display_data"], run.result


#: A stream under a cell whose output was just flushed: its next timed flush is 5 s
#: away, so nothing pending is published before the scenario flushes.
WARM_PARENT = """
        import os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({"header": {"msg_id": "cell"}})
        out.flush_interval = 5.0
        out.write("warm\\n"); out.flush()   # the parent's next timed flush is far away
"""


@needs_fork
def test_childs_lines_go_before_the_parents_unfinished_line(tmp_path: Path) -> None:
    """``print(pool.map(work, items))``: the workers' lines can reach the parent
    between print's text and its newline. They must not land inside the line."""
    run = run_scenario(
        WARM_PARENT
        + """
        go_r, go_w = os.pipe()
        pid = os.fork()   # (as a Pool forks its workers: before the cell prints)
        if pid == 0:
            os.read(go_r, 1)
            out.write("worker 0\\nworker 1\\n")
            out.flush()   # returns once the parent has handled it
            os._exit(0)
        out.write("[0, 1, 4, 9]")   # print's text; its newline comes after the workers'
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        out.write("\\n")
        out.flush()
        expected = "warm\\nworker 0\\nworker 1\\n[0, 1, 4, 9]\\n"
        ok = k.wait_for(lambda: len(k.text()) >= len(expected))
        report({"ok": ok, "text": k.text()})
        """,
        tmp_path,
    )
    assert run.result == {
        "ok": True,
        "text": "warm\nworker 0\nworker 1\n[0, 1, 4, 9]\n",
    }, run.result


@needs_fork
def test_childs_flushed_partial_line_is_continued_in_order(tmp_path: Path) -> None:
    """A worker's ``print("Progress: ", end="", flush=True)`` and then its newline
    (tqdm in a Pool worker does this): its line must come out in the order written."""
    run = run_scenario(
        WARM_PARENT
        + """
        pid = os.fork()
        if pid == 0:
            out.write("Progress: "); out.flush()
            out.write("..."); out.flush()
            out.write("done\\n"); out.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        out.flush()
        expected = "warm\\nProgress: ...done\\n"
        ok = k.wait_for(lambda: len(k.text()) >= len(expected))
        report({"ok": ok, "text": k.text()})
        """,
        tmp_path,
    )
    assert run.result == {"ok": True, "text": "warm\nProgress: ...done\n"}, run.result


@needs_fork
def test_busy_children_do_not_starve_the_parents_flush(tmp_path: Path) -> None:
    """Children printing as fast as they can must not keep the parent's IO thread
    from running the parent's own flushes (each bounded by flush_timeout)."""
    run = run_scenario(
        """
        import os, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.flush_timeout = 5
        pids = []
        for n in range(2):
            pid = os.fork()
            if pid == 0:
                for i in range(60000):
                    out.write(f"c{n} {i}\\n")
                out.flush()
                os._exit(0)
            pids.append(pid)
        slowest = 0.0
        for i in range(30):
            t0 = time.monotonic()
            out.write(f"parent {i}\\n")
            out.flush()
            slowest = max(slowest, time.monotonic() - t0)
        for pid in pids:
            os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "c0 59999\\n" in k.text() and "c1 59999\\n" in k.text(), 60)
        report({"ok": ok, "slowest_flush": slowest})
        """,
        tmp_path,
        timeout=180,
    )
    assert run.result["ok"], run.result
    assert "IOStream.flush timed out" not in run.stderr
    assert run.result["slowest_flush"] < 5, run.result


@needs_fork
def test_a_stuck_parent_never_hangs_a_child_its_text_goes_to_the_terminal(
    tmp_path: Path,
) -> None:
    """The parent's IO thread is stuck and the channel's buffer fills: each send
    waits at most ``send_timeout``, then the child's text goes to its original
    stdout with one note. Every line arrives exactly once, on one side or the
    other, in order."""
    run = run_scenario(
        """
        import os, sys, threading, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        channel = k.thread._channel
        channel.send_timeout = 0.5
        stuck = threading.Event()
        k.thread.schedule(stuck.wait, 30)   # the parent's IO thread takes nothing now
        lines = [f"line {i:06d} " + "x" * 40 for i in range(40000)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t0 = time.monotonic()
            for line in lines:
                print(line, file=out)
            sys.__stdout__.flush()
            os.write(w, str(time.monotonic() - t0).encode())
            os._exit(0)
        os.close(w)
        took = float(os.read(r, 100))
        os.waitpid(pid, 0)
        stuck.set()
        k.wait_for(lambda: "line" in k.text() and k.poll(2.0) is False, timeout=60)
        published = [l for l in k.text().splitlines() if l.startswith("line")]
        report({"took": took, "published": published, "lines": lines})
        """,
        tmp_path,
        timeout=120,
    )
    r = run.result
    terminal = run.stdout.decode().splitlines()
    notes = [line for line in terminal if "cannot reach its parent" in line]
    assert len(notes) == 1, terminal[:5]
    fallen_back = [line for line in terminal if line.startswith("line")]
    assert r["published"] and fallen_back, (len(r["published"]), len(fallen_back))
    assert r["published"] + fallen_back == r["lines"]
    assert r["took"] < 10, r["took"]  # one bounded wait, not one per line


@needs_fork
def test_long_lines_of_concurrent_children_arrive_whole(tmp_path: Path) -> None:
    """Lines longer than a datagram are sent in pieces; the parent joins each
    child's pieces, so lines of children writing at once never interleave. The
    sending end's buffer is made small, so a child must find the datagram size
    the system allows (it halves on EMSGSIZE)."""
    run = run_scenario(
        WARM_PARENT
        + """
        import socket
        writer = k.thread._channel.writer
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(5):
                    print(f"{n}{i}" + chr(ord("a") + n) * 300_000, file=out)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        ok = k.wait_for(lambda: k.text().count("\\n") >= 16, timeout=60)
        lines = k.text().splitlines()[1:]
        report({
            "ok": ok,
            "count": len(lines),
            "whole": sorted(
                l[:2] for l in lines if l[2:] == chr(ord("a") + int(l[0])) * 300_000
            ),
        })
        """,
        tmp_path,
        timeout=120,
    )
    r = run.result
    assert r["ok"] and r["count"] == 15, r["count"]
    assert r["whole"] == sorted(f"{n}{i}" for n in range(3) for i in range(5))


@needs_fork
def test_grandchildren_reach_the_parent_the_same_way(tmp_path: Path) -> None:
    run = run_scenario(
        WARM_PARENT
        + """
        pid = os.fork()
        if pid == 0:
            grandchild = os.fork()
            if grandchild == 0:
                print("from the grandchild", file=out)
                os._exit(0)
            os.waitpid(grandchild, 0)
            print("from the child", file=out)
            os._exit(0)
        os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "from the child" in k.text())
        report({"ok": ok, "text": k.text()})
        """,
        tmp_path,
    )
    assert run.result == {
        "ok": True,
        "text": "warm\nfrom the grandchild\nfrom the child\n",
    }, run.result


@needs_fork
def test_a_childs_threads_sending_at_once_keep_every_record_whole(tmp_path: Path) -> None:
    """One thread of a child prints lines longer than a datagram while another
    sends messages (display()) between their pieces: the parent joins pieces per
    process and thread, so nothing is dropped."""
    run = run_scenario(
        WARM_PARENT
        + """
        import threading
        pid = os.fork()
        if pid == 0:
            k.session.pid = os.getpid()  # (Session drops sends of another process's pid)
            def show():
                for i in range(50):
                    k.session.send(k.thread, "display_data",
                                   {"data": {"text/plain": str(i)}, "metadata": {}})
            t = threading.Thread(target=show)
            t.start()
            for i in range(10):
                print(f"{i}" + "L" * 200_000, file=out)
            t.join()
            os._exit(0)
        os.waitpid(pid, 0)
        ok = k.wait_for(
            lambda: k.text().count("\\n") >= 11
            and sum(m["msg_type"] == "display_data" for m in k.messages) >= 50,
            timeout=60,
        )
        lines = k.text().splitlines()[1:]
        report({
            "ok": ok,
            "whole": sorted(l[0] for l in lines if l[1:] == "L" * 200_000),
            "displays": sum(m["msg_type"] == "display_data" for m in k.messages),
        })
        """,
        tmp_path,
        timeout=120,
    )
    assert run.result == {"ok": True, "whole": [str(i) for i in range(10)], "displays": 50}


@needs_fork
def test_stop_publishes_everything_children_sent_before_it(tmp_path: Path) -> None:
    run = run_scenario(
        """
        import os, threading
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        busy = threading.Event()
        k.thread.schedule(busy.wait, 10)   # the IO thread is busy meanwhile
        pid = os.fork()
        if pid == 0:
            for i in range(1000):
                print(f"child {i}", file=out)
            os._exit(0)
        os.waitpid(pid, 0)   # 1000 lines wait in the channel
        busy.set()
        k.thread.stop()
        k.poll(1.0)
        report({"lines": [l for l in k.text().splitlines() if l.startswith("child")]})
        """,
        tmp_path,
    )
    assert run.result["lines"] == [f"child {i}" for i in range(1000)]


@needs_fork
def test_a_child_writing_after_the_parent_stopped_goes_to_its_terminal_at_once(
    tmp_path: Path,
) -> None:
    """The kernel stopped its IO thread (shutting down) while a child it forked lives
    on: the child's text goes to its own stdout with one note, without waiting
    for a buffer nobody reads to fill."""
    run = run_scenario(
        """
        import os, sys, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        r, w = os.pipe()
        done_r, done_w = os.pipe()
        sibling = os.fork()
        if sibling == 0:  # (holds its copy of the channel, never writes)
            os.read(r, 1)
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            t0 = time.monotonic()
            for i in range(2000):
                print(f"late line {i}", file=out)
            out.flush()
            os.write(done_w, str(time.monotonic() - t0).encode())
            sys.exit(0)   # atexit: the thread's stop in the child
        k.thread.stop()
        os.write(w, b"gg")
        took = float(os.read(done_r, 100))
        t0 = time.monotonic()
        os.waitpid(pid, 0)
        os.waitpid(sibling, 0)
        report({"took": took, "exit": time.monotonic() - t0})
        """,
        tmp_path,
    )
    terminal = run.stdout.decode().splitlines()
    assert len([line for line in terminal if "cannot reach its parent" in line]) == 1
    assert [line for line in terminal if line.startswith("late")] == [
        f"late line {i}" for i in range(2000)
    ]
    assert run.result["took"] < 5 and run.result["exit"] < 5, run.result
    assert "timed out" not in run.stderr


@needs_fork
def test_a_reused_descriptor_number_never_gets_the_childs_output(tmp_path: Path) -> None:
    """A child closes every inherited descriptor (closerange), opens its own socket,
    which gets the channel's old number, then prints: the text must go to the
    terminal, never into the user's socket."""
    run = run_scenario(
        """
        import os, socket, sys
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        number = k.thread._channel.writer.fileno()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            keep = {1, 2, w}
            for fd in range(3, 1024):
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            fillers = []
            while True:  # take every number below the channel's old one
                fd = os.open(os.devnull, os.O_RDONLY)
                if fd >= number - 1:
                    break
                fillers.append(fd)
            os.close(fd)
            mine, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            got = b""
            if number in (mine.fileno(), peer.fileno()):
                print("hello from the child", file=out)
                sys.__stdout__.flush()
                for s in (mine, peer):
                    s.setblocking(False)
                    try:
                        got += s.recv(100000)
                    except BlockingIOError:
                        pass
                os.write(w, b"reused " + got)
            else:
                os.write(w, b"not reused")
            os._exit(0)
        os.waitpid(pid, 0)
        os.set_blocking(r, False)
        report({"child": os.read(r, 100000).decode(errors="replace")})
        """,
        tmp_path,
    )
    assert run.result["child"] == "reused ", run.result
    assert "hello from the child" in run.stdout.decode()


@needs_fork
def test_a_childs_flushed_lines_come_before_what_the_parent_prints_after_it(
    tmp_path: Path,
) -> None:
    """A worker prints, flushes and exits; the parent waits for it and prints: the
    worker's lines are in the parent's buffer before ``flush()`` returns in the
    worker, so they come first, every time."""
    run = run_scenario(
        """
        import os
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({"header": {"msg_id": "cell"}})
        for n in range(10):
            pid = os.fork()
            if pid == 0:
                for i in range(500):
                    print(f"worker {n} {i}", file=out)
                out.flush()
                os._exit(0)
            os.waitpid(pid, 0)
            print(f"done {n}", file=out)
        out.flush()
        ok = k.wait_for(lambda: "done 9" in k.text())
        report({"ok": ok, "lines": k.text().splitlines()})
        """,
        tmp_path,
    )
    expected = [
        line for n in range(10) for line in [*(f"worker {n} {i}" for i in range(500)), f"done {n}"]
    ]
    assert run.result["ok"] and run.result["lines"] == expected


@needs_fork
def test_a_stream_made_in_a_forked_child_is_line_buffered_to_the_parent(tmp_path: Path) -> None:
    """A stream created in the child (not inherited) takes the child's output path
    too: its partial line is not published on its own, apart from its end."""
    run = run_scenario(
        """
        import os, time
        from childkit import Setup, report
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        parents_err = k.module.OutStream(k.session, k.thread, "stderr", watchfd=False)
        out.set_parent({"header": {"msg_id": "cell"}})
        pid = os.fork()
        if pid == 0:
            err = k.module.OutStream(k.session, k.thread, "stderr", watchfd=False)
            err.write("made in the child: ")
            time.sleep(0.2)
            err.write("one line\\n")
            err.flush()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "one line" in k.text("stderr"))
        report({
            "ok": ok, "status": status,
            "texts": [
                m["content"]["text"] for m in k.streams() if m["content"]["name"] == "stderr"
            ],
        })
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"] and r["status"] == 0, r
    assert r["texts"] == ["made in the child: one line\n"], r


@pytest.mark.parametrize("rule", ["default", "inherit"])
def test_a_childs_output_goes_where_a_threads_would(tmp_path: Path, rule: str) -> None:
    """A forked child follows the kernel's rule for threads (issue 19): by default
    (ipykernel 7's rule) its text goes to the cell running when it arrives, not the
    cell that forked it; with threads inheriting their starter's context, to the
    cell that forked it. A parent the child sets itself is kept either way."""
    run = run_scenario(
        f"""
        import os
        from childkit import Setup, report
        import iostream.threadcontext as threadcontext
        if {rule!r} == "inherit":
            threadcontext.enable()
        k = Setup()
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({{"header": {{"msg_id": "cell 1"}}}})
        to_child, from_parent = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(to_child, 1)  # cell 2 runs now
            out.write("inherited\\n")
            out.set_parent({{"header": {{"msg_id": "child's own"}}}})
            out.write("own\\n")
            out.flush()
            os._exit(0)
        out.set_parent({{"header": {{"msg_id": "cell 2"}}}})
        os.write(from_parent, b"go")
        _, status = os.waitpid(pid, 0)
        ok = k.wait_for(lambda: "own" in k.text())
        report({{"ok": ok, "status": status, "lines": k.cells()}})
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"] and r["status"] == 0, r
    expected = "cell 2" if rule == "default" else "cell 1"
    assert r["lines"] == [[expected, "inherited\n"], ["child's own", "own\n"]], r


def test_a_line_after_a_flood_of_child_lines_comes_after_all_of_them(tmp_path: Path) -> None:
    """With the order kept, a Python line written after a forked child printed
    more lines than the IO thread reads in one batch (while that thread was
    busy) comes after every one of them: the take-in reads batch after batch."""
    run = run_scenario(
        """
        import os, time
        from childkit import Setup, report
        k = Setup()
        k.module.OutStream.keep_write_order = True
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.flush_interval = 30.0  # (only the take-in reads the channel first)
        k.thread.schedule(time.sleep, 0.3)  # the IO thread is busy a moment
        pid = os.fork()
        if pid == 0:
            for i in range(600):
                out.write(f"child {i}\\n")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        out.write("parent, after the child exited\\n")
        out.flush()
        ok = k.wait_for(lambda: k.text().count("\\n") >= 601)
        report({"ok": ok, "status": status, "lines": k.text().splitlines()})
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"] and r["status"] == 0, r
    assert r["lines"] == [f"child {i}" for i in range(600)] + ["parent, after the child exited"]


@pytest.mark.parametrize("keep_write_order", [False, True])
def test_a_childs_line_sent_during_a_cell_is_published_in_that_cell(
    tmp_path: Path, keep_write_order: bool
) -> None:
    """A child's line that reached the parent during cell A, while the IO thread
    was busy, is taken in by the flush at the end of A (ipykernel's), so it goes
    to cell A, not to the cell running when the IO thread gets to it."""
    run = run_scenario(
        f"""
        import os, time
        from childkit import Setup, report
        k = Setup()
        k.module.OutStream.keep_write_order = {keep_write_order}
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        out.set_parent({{"header": {{"msg_id": "cell A"}}}})
        def busy():
            time.sleep(0.2)  # the IO thread is busy while the child writes
            # ... and again right after the flush at the end of cell A (queued
            # meanwhile), until cell B has begun
            k.thread.schedule(time.sleep, 0.3)
        k.thread.schedule(busy)
        pid = os.fork()
        if pid == 0:
            out.write("child, during cell A\\n")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        out.flush()  # the end of cell A
        out.set_parent({{"header": {{"msg_id": "cell B"}}}})
        out.write("parent, in cell B\\n")
        out.flush()
        ok = k.wait_for(lambda: k.text().count("\\n") >= 2)
        report({{"ok": ok, "status": status, "lines": k.cells()}})
        """,
        tmp_path,
    )
    r = run.result
    assert r["ok"] and r["status"] == 0, r
    assert r["lines"] == [["cell A", "child, during cell A\n"], ["cell B", "parent, in cell B\n"]]


def test_flush_returns_while_children_keep_printing(tmp_path: Path) -> None:
    """flush() takes in what forked children sent before it, but never waits for
    children that keep sending: it returns, and the IO thread serves other
    calls, while six children still print as fast as they can."""
    run = run_scenario(
        """
        import os, signal, threading, time
        from childkit import Setup, report
        from iostream.completion import Completion
        k = Setup(slim=True)
        out = k.module.OutStream(k.session, k.thread, "stdout", watchfd=False)
        pids = []
        for c in range(6):
            pid = os.fork()
            if pid == 0:
                end = time.monotonic() + 8  # (bounded, whatever happens)
                while time.monotonic() < end:
                    out.write(f"child {c} " + "x" * 40 + "\\n")
                os._exit(0)
            pids.append(pid)
        time.sleep(0.5)
        out.write("parent\\n")
        served = Completion()
        def other():  # a status message, say, queued while the flush runs
            time.sleep(0.01)
            k.thread.schedule(served.set)
        t = threading.Thread(target=other)
        t.start()
        out.flush()
        t.join()
        other_served = served.wait(5)
        still_printing = [os.waitpid(p, os.WNOHANG) == (0, 0) for p in pids]
        for p in pids:
            os.kill(p, signal.SIGKILL)
            os.waitpid(p, 0)
        report({"other_served": other_served, "still_printing": still_printing})
        """,
        tmp_path,
        timeout=60,
    )
    r = run.result
    assert r["other_served"], r
    assert all(r["still_printing"]), r  # (flush returned before they ended)
