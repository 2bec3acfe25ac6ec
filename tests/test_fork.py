"""Forked children (pipe=True): batching, delivery at exit, fork safety, security."""

from __future__ import annotations

import logging
import stat
import struct
from pathlib import Path

import pytest
import zmq

import iostream.platform
from support import Kernelish, needs_fork, run_scenario

# Most tests fork (os.fork or multiprocessing's "fork" context) and are marked
# needs_fork; the ones that only talk to the pipe server also run where it is TCP.


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


@pytest.mark.skipif(
    iostream.platform.PIPE_TRANSPORT == "tcp",
    reason="no ipc:// transport (Windows, or forced with IOSTREAM_PLATFORM): loopback TCP",
)
def test_subprocess_pipe_is_private_ipc(kernel: Kernelish) -> None:
    """ipykernel binds the pipe on TCP 127.0.0.1, reachable by any local user."""
    endpoint = kernel.thread._pipe_server.endpoint
    assert endpoint.startswith("ipc://")
    directory = Path(endpoint[len("ipc://") :]).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_messages_with_a_wrong_key_are_logged_never_published(
    kernel: Kernelish, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = kernel.thread._pipe_server.endpoint
    intruder = kernel.context.socket(zmq.DEALER)
    intruder.linger = 0
    intruder.connect(endpoint)
    frames = kernel.session.serialize(
        kernel.session.msg("stream", {"name": "stdout", "text": "evil"})
    )
    with caplog.at_level(logging.WARNING, logger="iostream"):
        intruder.send_multipart([b"0" * 16, b"m", *frames])
        kernel.receiver.poll(0.5)
        kernel.thread.flush(5)
    assert kernel.receiver.streams() == []
    assert "rejected" in caplog.text
    intruder.close()


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
    """Records with the right key but a broken payload are logged and dropped; the
    IO thread keeps handling the pipe (a later sync is answered) and publishing."""
    server = kernel.thread._pipe_server
    sender = kernel.context.socket(zmq.DEALER)
    sender.linger = 0
    sender.connect(server.endpoint)
    stream = kernel.stream()
    with caplog.at_level(logging.WARNING, logger="iostream"):
        sender.send(server.key + b"t" + b"truncated")
        sender.send(server.key + b"t" + struct.pack("!QHI", 1, 6, 1) + b"stdout{x")  # bad JSON
        sender.send(server.key + b"?unknown kind")
        sender.send(server.key + b"s7")  # answered after the ones above
        assert sender.poll(5000), "the parent never answered the sync"
        answer = sender.recv_multipart()
    sender.close()
    assert answer == [b"7"]
    assert any("child" in r.getMessage() for r in caplog.records)
    stream.write("still alive\n")
    stream.flush()
    kernel.receiver.wait_for_text("still alive\n")
    assert kernel.receiver.text() == "still alive\n"


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
