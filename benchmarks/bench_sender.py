"""Sender process: one (module, workload, repetition) measurement.

Binds an XPUB socket on tcp://127.0.0.1, tells the orchestrator the port (``port``
file), waits for the receiver's subscription frame (no slow-joiner loss), then
builds ``IOPubThread(socket, pipe=..., session=session)`` + ``OutStream`` from the
module under test, runs the workload and waits for the receiver to report.

Results go to ``sender.json`` in the run directory (fd 1 may be captured).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import (
    KEEP_WRITE_ORDER_ENV,
    MIB,
    SESSION_KEY,
    TICK,
    WORKLOADS,
    latency_line,
    proc_status_kib,
    progress_text,
    read_json,
    short_thread_line,
    thread_char,
    thread_parent_id,
    write_json_atomic,
)

Result = dict[str, Any]


class Ctx:
    """What a workload function gets."""

    def __init__(
        self, mod: Any, session: Any, thread: Any, stream: Any, params: dict[str, Any]
    ) -> None:
        self.mod = mod
        self.session = session
        self.thread = thread
        self.stream = stream
        self.p = params
        self.extra: Result = {}
        self.t0 = 0.0
        self.t_done = 0.0


# ---------------------------------------------------------------------------
# Workloads: each sets c.t0 right before the timed part and c.t_done after it
# ---------------------------------------------------------------------------


def w_small_writes(c: Ctx) -> None:
    write = c.stream.write
    n = c.p["n"]
    c.t0 = time.monotonic()
    for _ in range(n):
        write("x")
    c.stream.flush()
    c.t_done = time.monotonic()


def w_print(c: Ctx) -> None:
    stream = c.stream
    n = c.p["n"]
    c.t0 = time.monotonic()
    for i in range(n):
        print(i, file=stream)
    stream.flush()
    c.t_done = time.monotonic()


def w_write_flush(c: Ctx) -> None:
    stream = c.stream
    n = c.p["n"]
    texts = [progress_text(i, n) for i in range(n)]
    c.t0 = time.monotonic()
    for t in texts:
        stream.write(t)
        stream.flush()
    c.t_done = time.monotonic()


def w_threads_parents(c: Ctx) -> None:
    stream, session = c.stream, c.session
    nthreads, n = c.p["threads"], c.p["n"]
    errors: list[str] = []
    barrier = threading.Barrier(nthreads + 1)

    def worker(k: int) -> None:
        try:
            msg = session.msg("execute_request", {})
            msg["header"]["msg_id"] = thread_parent_id(k)
            stream.set_thread_parent(msg)
            ch = thread_char(k)
            write = stream.write
            barrier.wait(30)
            for _ in range(n):
                write(ch)
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nthreads)]
    for t in threads:
        t.start()
    barrier.wait(30)
    c.t0 = time.monotonic()
    for t in threads:
        t.join(60)
    alive = sum(t.is_alive() for t in threads)
    stream.flush()
    c.t_done = time.monotonic()
    c.extra.update(thread_errors=errors[:3], n_thread_errors=len(errors), threads_hung=alive)


def w_fd_capture(c: Ctx) -> None:
    n = c.p["n"]
    data = b"line\n"
    c.t0 = time.monotonic()
    for _ in range(n):
        os.write(1, data)
    c.t_done = time.monotonic()


def w_fork(c: Ctx) -> None:
    stream = c.stream
    lines = c.p["lines"]
    child_timeout = c.p.get("child_timeout", 120)
    c.t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            signal.alarm(int(child_timeout))
            for i in range(lines):
                print(i, file=stream)
            stream.flush()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    status = None
    deadline = time.monotonic() + child_timeout + 5
    while time.monotonic() < deadline:
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = st
            break
        time.sleep(0.002)
    c.t_done = time.monotonic()
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        c.extra["child"] = "hung (killed)"
    elif os.WIFSIGNALED(status):
        c.extra["child"] = f"killed by signal {os.WTERMSIG(status)}"
    else:
        c.extra["child"] = f"exit {os.WEXITSTATUS(status)}"
    c.extra["child_seconds"] = c.t_done - c.t0


def _sleep_until(t: float) -> None:
    while True:
        d = t - time.monotonic()
        if d <= 0:
            return
        time.sleep(d)


def w_latency(c: Ctx) -> None:
    stream = c.stream
    p = c.p
    # idle = p["idle"] after the previous line was *delivered*; ipykernel delivers
    # 0.2 s (flush_interval) after a write, so wait idle + 0.2 s between samples.
    gap = p["idle"] + 0.2
    write_times: list[float] = []
    c.t0 = time.monotonic()
    for k in range(p["samples"]):
        time.sleep(gap)
        t = time.monotonic()
        stream.write(latency_line(k))
        write_times.append(t)
    time.sleep(gap)
    period = p["tick_period"]
    start = time.monotonic()
    for i in range(p["ticks"]):
        _sleep_until(start + i * period)
        stream.write(TICK)
    c.t_done = time.monotonic()
    c.extra.update(write_times=write_times, ticks_start=start, ticks_end=c.t_done)


class Sampler(threading.Thread):
    """Samples the number of open fds (and RSS) of this process."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.interval = interval
        self.max_fds = 0
        self.max_rss = 0
        self.samples = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop_evt.is_set():
            try:
                self.max_fds = max(self.max_fds, proc.num_fds())
                self.max_rss = max(self.max_rss, proc.memory_info().rss)
                self.samples += 1
            except Exception:
                pass
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(2)


def w_short_threads(c: Ctx) -> None:
    stream = c.stream
    p = c.p
    n, conc, give_up = p["n"], p["concurrency"], p["give_up"]
    lock = threading.Lock()
    state = {"completed": 0, "errors": 0, "first_error": ""}

    def worker(i: int) -> None:
        stream.write(short_thread_line(i))
        stream.flush()
        with lock:
            state["completed"] += 1

    def excepthook(args: threading.ExceptHookArgs) -> None:
        with lock:
            state["errors"] += 1
            if not state["first_error"]:
                state["first_error"] = "".join(
                    traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
                )[-1500:]

    threading.excepthook = excepthook
    sampler = Sampler(0.002)
    sampler.start()
    active: deque[threading.Thread] = deque()
    started = 0
    hung = 0
    spawn_error = ""
    c.t0 = time.monotonic()
    stop_at = c.t0 + give_up
    try:
        for i in range(n):
            if time.monotonic() > stop_at:
                break
            while len(active) >= conc:
                t = active.popleft()
                t.join(15)
                if t.is_alive():
                    hung += 1
            t = threading.Thread(target=worker, args=(i,), daemon=True)
            t.start()
            active.append(t)
            started += 1
    except Exception as e:  # e.g. "can't start new thread"
        spawn_error = repr(e)
    for t in active:
        t.join(15)
        if t.is_alive():
            hung += 1
    try:
        stream.flush()
    except Exception as e:
        spawn_error = spawn_error or f"final flush: {e!r}"
    c.t_done = time.monotonic()
    sampler.stop()
    if state["errors"]:
        print(
            f"bench: {state['errors']} thread(s) failed; first:\n{state['first_error']}",
            file=sys.stderr,
        )
    c.extra.update(
        started=started,
        completed=state["completed"],
        thread_errors=state["errors"],
        first_error=state["first_error"],
        threads_hung=hung,
        gave_up=started < n,
        spawn_error=spawn_error,
        max_fds=sampler.max_fds,
        fds_at_end=_num_fds(),
    )


def _num_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def w_big_writes(c: Ctx) -> None:
    p = c.p
    pieces = p["total_mb"] // p["piece_mb"]
    piece = "x" * (p["piece_mb"] * MIB)
    stream = c.stream
    c.t0 = time.monotonic()
    for _ in range(pieces):
        stream.write(piece)
    stream.flush()
    c.t_done = time.monotonic()
    del piece


RUNNERS: dict[str, Callable[[Ctx], None]] = {
    "small_writes": w_small_writes,
    "print": w_print,
    "write_flush": w_write_flush,
    "threads_parents": w_threads_parents,
    "fd_capture": w_fd_capture,
    "fork": w_fork,
    "latency": w_latency,
    "short_threads": w_short_threads,
    "big_writes": w_big_writes,
}

# ---------------------------------------------------------------------------


def _send_sentinel(session: Any, thread: Any) -> str:
    """Queue a ``bench_done`` message behind the stream output (best effort)."""
    try:
        session.send(thread, "bench_done", {"pid": os.getpid()})
        return "sent"
    except Exception as e:
        return f"failed: {e!r}"


def _bounded(fn: Callable[[], Any], timeout: float) -> str:
    """Run ``fn`` in a daemon thread; report 'ok', 'timeout' or the error."""
    out = {"status": "timeout"}

    def target() -> None:
        try:
            fn()
            out["status"] = "ok"
        except BaseException as e:
            out["status"] = f"error: {e!r}"

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return out["status"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--params", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    spec = WORKLOADS[args.workload]
    params = json.loads(args.params)
    run_dir: Path = args.dir
    res: Result = {"module": args.module, "workload": args.workload, "phase": "setup"}

    # A few spare fds, given back if the workload exhausts RLIMIT_NOFILE, so that
    # the report can still be written.
    reserve = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]

    def save() -> None:
        try:
            write_json_atomic(run_dir / "sender.json", res)
        except OSError:
            while reserve:
                os.close(reserve.pop())
            res["fds_exhausted"] = True
            write_json_atomic(run_dir / "sender.json", res)

    if args.workload == "short_threads":
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = int(params["nofile"])
        if hard == resource.RLIM_INFINITY or hard >= want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        res["rlimit_nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    if spec.watchfd == "force":
        # echo copies captured output to the original fd 1: make that /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)

    import zmq
    from jupyter_client.session import Session

    mod = importlib.import_module(args.module)
    res["module_file"] = getattr(mod, "__file__", None)
    if os.environ.get(KEEP_WRITE_ORDER_ENV) == "1" and hasattr(mod.OutStream, "keep_write_order"):
        # Ours with output kept in the order written, as `python -m iostream kernel`
        # runs (ipykernel has no such thing): the writes pay for it.
        mod.OutStream.keep_write_order = True

    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.sndhwm = 0
    sock.linger = 1000
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    (run_dir / "port.tmp").write_text(str(port))
    os.replace(run_dir / "port.tmp", run_dir / "port")

    # Slow joiner: the receiver's subscription frame tells us it is connected.
    if not sock.poll(30_000):
        res["phase"] = "no subscription"
        save()
        return 3
    frame = sock.recv()
    res["subscription"] = frame.hex()

    session = Session(key=SESSION_KEY)
    thread = mod.IOPubThread(sock, pipe=spec.pipe, session=session)
    thread.start()
    stream = mod.OutStream(session, thread, "stdout", watchfd=spec.watchfd)
    res["rss_baseline_kib"] = proc_status_kib("VmRSS")
    res["hwm_before_kib"] = proc_status_kib("VmHWM")
    c = Ctx(mod, session, thread, stream, params)
    res["phase"] = "workload"
    save()

    try:
        RUNNERS[args.workload](c)
    except Exception:
        res["workload_error"] = traceback.format_exc()[-3000:]
        c.t_done = time.monotonic()
    res.update(t0=c.t0, t_done=c.t_done, write_seconds=c.t_done - c.t0, extra=c.extra)
    res["sentinel"] = _send_sentinel(session, thread)
    res["phase"] = "waiting for receiver"
    res["peak_rss_kib"] = proc_status_kib("VmHWM")
    save()

    # Wait (bounded) until the receiver has written its report.
    wait_until = t_start + args.timeout - 5
    recv_path = run_dir / "receiver.json"
    while time.monotonic() < wait_until and not recv_path.exists():
        time.sleep(0.005)
    res["receiver_seen"] = recv_path.exists()
    rec = read_json(recv_path) if recv_path.exists() else None
    res["peak_rss_kib"] = proc_status_kib("VmHWM")
    res["phase"] = "shutdown"
    save()

    # Shut down, bounded: a hang here is reported, not waited for.
    res["close"] = _bounded(stream.close, 10) if hasattr(stream, "close") else "n/a"
    res["stop"] = _bounded(thread.stop, 15)
    res["phase"] = "done"
    res["receiver_complete"] = bool(rec and rec.get("complete"))
    save()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:
        traceback.print_exc()
        code = 2
    sys.stderr.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(code)
