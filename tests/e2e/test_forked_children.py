"""Forked children in a real kernel, as users make them: ``!`` commands, ``preexec_fn``,
``os.forkpty``, fork + ``closerange`` + exec, Pools in ``with`` blocks, killed workers.

A forked child must start no libzmq (its threads and descriptors do not survive
code that closes inherited descriptors before exec: libzmq then aborts with
"Bad file descriptor (src/epoll.cpp:...)"), and what it printed as a complete line
must be in the operating system's hands before ``print`` returns.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_harness import Cell, Kernel

from support import needs_fork

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), needs_fork]

#: What libzmq prints before it aborts in a child whose descriptors were closed.
ZMQ_ASSERTION = ("Bad file descriptor", "epoll.cpp", "Assertion failed")


@pytest.fixture(scope="module")
def kernel(kernels_dir: Path, log_dir: Path) -> Iterator[Kernel]:
    k = Kernel("iostream", kernels_dir, log_dir)
    yield k
    k.shutdown()


def src(code: str) -> str:
    return textwrap.dedent(code).strip("\n")


def run(kernel: Kernel, code: str, expected_stdout: str, timeout: float = 300) -> Cell:
    cell = kernel.run(
        src(code), until=lambda c: c.stdout == expected_stdout, timeout=timeout, quiet=0.3
    )
    for text in (cell.stdout, cell.stderr):
        for sign in ZMQ_ASSERTION:
            assert sign not in text, text[:2000]
    return cell


def test_shell_commands_stay_clean(kernel: Kernel) -> None:
    """``!`` runs through ptyprocess, which closes every inherited descriptor in
    the forked child before exec: 3 to 6 of 40 failed when a child made a context."""
    code = """
        for i in range(200):
            !echo hi {i}; echo err >&2
        print("done")
        """
    expected = "".join(f"hi {i}\r\nerr\r\n" for i in range(200)) + "done\n"
    cell = run(kernel, code, expected)
    assert cell.stdout == expected, cell.stdout[:3000]
    assert cell.stderr == ""


@pytest.mark.parametrize("way", ["preexec_fn", "forkpty", "closerange"])
def test_children_that_close_descriptors_or_change_session_stay_clean(
    kernel: Kernel, way: str
) -> None:
    """50 each: ``subprocess.run(preexec_fn=os.setsid)`` (was killed by SIGABRT 7 of
    30 times), ``os.forkpty`` and fork + ``closerange`` + exec (1 in 20 each)."""
    code = f"""
        import os, subprocess, sys
        way = {way!r}
        bad = []
        for i in range(50):
            if way == "preexec_fn":
                r = subprocess.run(["echo", f"ran {{i}}"], preexec_fn=os.setsid,
                                   capture_output=True, text=True)
                if r.returncode != 0 or r.stdout != f"ran {{i}}\\n":
                    bad.append((i, r.returncode, r.stdout, r.stderr))
            elif way == "forkpty":
                pid, fd = os.forkpty()
                if pid == 0:
                    os.execv("/bin/echo", ["echo", f"ran {{i}}"])
                out = b""
                while True:
                    try:
                        data = os.read(fd, 1024)
                    except OSError:
                        break
                    if not data:
                        break
                    out += data
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                if status != 0 or out != f"ran {{i}}\\r\\n".encode():
                    bad.append((i, status, out))
            else:
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.dup2(w, 1)
                    os.closerange(3, 1024)
                    os.execv("/bin/echo", ["echo", f"ran {{i}}"])
                os.close(w)
                out = b""
                while data := os.read(r, 1024):
                    out += data
                os.close(r)
                _, status = os.waitpid(pid, 0)
                if status != 0 or out != f"ran {{i}}\\n".encode():
                    bad.append((i, status, out))
        print("bad:", bad)
        """
    cell = run(kernel, code, "bad: []\n")
    assert cell.stdout == "bad: []\n", cell.runs()


def test_a_forked_child_makes_no_thread_even_when_it_writes(kernel: Kernel) -> None:
    """A child that never writes has the one thread fork gave it; one that prints
    has it still (it writes to the parent's channel itself). A child used to start
    libzmq's threads at fork (3 threads) and the IO thread at its first write."""
    code = """
        import os, sys
        def threads():
            return len(os.listdir("/proc/self/task"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            quiet = threads()
            print("from the child")
            os.write(w, bytes([quiet, threads()]))
            os._exit(0)
        os.close(w)
        counts = list(os.read(r, 2))
        os.waitpid(pid, 0)
        print("threads in the child:", counts)
        """
    cell = run(kernel, code, "from the child\nthreads in the child: [1, 1]\n")
    assert sorted(cell.stdout.splitlines()) == ["from the child", "threads in the child: [1, 1]"]


def test_pool_workers_in_a_with_block_lose_no_line_under_load(kernel: Kernel) -> None:
    """``with Pool(2) as pool: pool.map(...)``: ``__exit__`` terminates the workers
    right after the results are in; their lines were printed without a flush.
    200 rounds, both cores kept busy by other processes meanwhile."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        code = """
            import multiprocessing
            def work(item):
                print(f"round {item[0]} item {item[1]}")
                return item[1]
            ctx = multiprocessing.get_context("fork")
            for r in range(200):
                with ctx.Pool(2) as pool:
                    pool.map(work, [(r, i) for i in range(4)])
            """
        expected = {f"round {r} item {i}" for r in range(200) for i in range(4)}
        cell = kernel.run(
            src(code),
            until=lambda c: set(c.stdout.splitlines()) >= expected,
            timeout=400,
            quiet=0.3,
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    lines = cell.stdout.splitlines()
    assert set(lines) == expected, sorted(expected - set(lines))[:20]
    assert len(lines) == len(expected)  # whole lines, each once


def test_a_child_killed_right_after_printing_loses_nothing(kernel: Kernel) -> None:
    """50 children each print a line and SIGKILL themselves at once."""
    code = """
        import os, signal
        for i in range(50):
            pid = os.fork()
            if pid == 0:
                print(f"last words {i}")
                os.kill(os.getpid(), signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status), status
        """
    expected = "".join(f"last words {i}\n" for i in range(50))
    cell = run(kernel, code, expected)
    assert cell.stdout == expected
