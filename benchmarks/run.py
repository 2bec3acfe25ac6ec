#!/usr/bin/env python
"""Benchmark suite: ``ipykernel.iostream`` vs our ``iostream``, end to end over zmq.

Usage::

    python benchmarks/run.py [--quick] [--repeat N] [--only NAME[,NAME...]]

Each measurement is a fresh sender subprocess (XPUB socket + IOPubThread +
OutStream of the module under test) and a fresh receiver subprocess (SUB socket +
keyed Session that deserializes every message). Modules alternate per repetition.
Results: ``docs/benchmarks.md`` and ``docs/benchmarks.png`` (see ``--out-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_common import (  # noqa: E402
    IPYKERNEL,
    KEEP_WRITE_ORDER_ENV,
    MODULES,
    OURS,
    SHORT,
    WORKLOADS,
    Workload,
    read_json,
)

Record = dict[str, Any]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def module_available(module: str, env: dict[str, str]) -> tuple[bool, str]:
    code = f"import {module} as m; m.OutStream; m.IOPubThread"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return False, "import timed out"
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["?"])[-1]
    return True, ""


def _tail(path: Path, n: int = 2500) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode(errors="replace")


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_receiver(proc: subprocess.Popen[bytes], wait_first: float) -> str:
    """Let the receiver finish (it reports partial results on SIGTERM)."""
    try:
        proc.wait(wait_first)
        return "exited"
    except subprocess.TimeoutExpired:
        pass
    _killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
        return "terminated"
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        return "killed"


def run_one(module: str, w: Workload, quick: bool, rep: int, env: dict[str, str]) -> Record:
    """One fresh sender + receiver measurement; never hangs longer than the timeout."""
    params = w.params(quick)
    timeout = w.timeout(quick)
    run_dir = Path(tempfile.mkdtemp(prefix=f"iobench-{w.name}-"))
    rec: Record = {"module": module, "workload": w.name, "rep": rep, "params": params}
    py = sys.executable
    sender_err = open(run_dir / "sender.err", "wb")  # noqa: SIM115
    receiver_err = open(run_dir / "receiver.err", "wb")  # noqa: SIM115
    t_launch = time.monotonic()
    sender = subprocess.Popen(
        [
            py,
            str(BENCH_DIR / "bench_sender.py"),
            "--module",
            module,
            "--workload",
            w.name,
            "--params",
            json.dumps(params),
            "--dir",
            str(run_dir),
            "--timeout",
            str(timeout),
        ],
        env=env,
        cwd=str(BENCH_DIR),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=sender_err,
        start_new_session=True,
    )
    receiver: subprocess.Popen[bytes] | None = None
    sender_rc: int | None = None
    hung = False
    try:
        port_file = run_dir / "port"
        while not port_file.exists():
            if sender.poll() is not None or time.monotonic() - t_launch > 60:
                break
            time.sleep(0.01)
        if port_file.exists():
            port = int(port_file.read_text())
            receiver = subprocess.Popen(
                [
                    py,
                    str(BENCH_DIR / "bench_receiver.py"),
                    "--workload",
                    w.name,
                    "--params",
                    json.dumps(params),
                    "--port",
                    str(port),
                    "--dir",
                    str(run_dir),
                    "--deadline",
                    str(timeout + 10),
                ],
                env=env,
                cwd=str(BENCH_DIR),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=receiver_err,
                start_new_session=True,
            )
        remaining = max(1.0, timeout - (time.monotonic() - t_launch))
        try:
            sender_rc = sender.wait(remaining)
        except subprocess.TimeoutExpired:
            hung = True
            _killpg(sender.pid, signal.SIGKILL)
            sender.wait(10)
        # forked grandchildren of the sender, if any
        _killpg(sender.pid, signal.SIGKILL)
        if receiver is not None:
            ok_exit = sender_rc == 0 and not hung
            rec["receiver_exit"] = _stop_receiver(receiver, 10 if ok_exit else 0.5)
    finally:
        for proc in (sender, receiver):
            if proc is not None and proc.poll() is None:
                _killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        sender_err.close()
        receiver_err.close()
    rec["wall_seconds"] = time.monotonic() - t_launch
    snd = read_json(run_dir / "sender.json") or {}
    rcv = read_json(run_dir / "receiver.json") or {}
    rec["sender"] = snd
    rec["receiver"] = rcv
    rec["sender_rc"] = sender_rc
    rec["hung"] = hung
    rec["sender_stderr"] = _tail(run_dir / "sender.err")
    rec["receiver_stderr"] = _tail(run_dir / "receiver.err", 800)
    shutil.rmtree(run_dir, ignore_errors=True)
    classify(rec, w)
    return rec


def classify(rec: Record, w: Workload) -> None:
    """Set ``status``, ``value`` (the metric) and derived fields of a record."""
    snd, rcv = rec["sender"], rec["receiver"]
    rc = rec["sender_rc"]
    problems: list[str] = []
    if rec["hung"]:
        status = f"hung (in {snd.get('phase', 'startup')})"
    elif rc is None or rc != 0:
        sig = -rc if rc is not None and rc < 0 else None
        status = f"crashed (signal {sig})" if sig else f"crashed (rc {rc})"
    elif snd.get("phase") != "done":
        status = f"error ({snd.get('phase', 'no report')})"
    elif snd.get("workload_error"):
        status = "error (exception)"
    elif not rcv:
        status = "error (no receiver report)"
    elif not rcv.get("complete"):
        status = "lost output"
    elif not rcv.get("verify_ok"):
        status = "wrong output"
    else:
        status = "ok"
    extra = snd.get("extra", {}) or {}
    failed_threads = extra.get("thread_errors") or extra.get("threads_hung")
    if w.name == "short_threads" and status in ("ok", "lost output", "wrong output"):
        if extra.get("thread_errors"):
            last = (extra.get("first_error") or "?").strip().splitlines()[-1]
            status = f"errors ({extra['thread_errors']} threads raised {last[:60]})"
        elif failed_threads or extra.get("gave_up"):
            status = "errors (threads hung or gave up)"
    child_failed = w.name == "fork" and extra.get("child") not in (None, "exit 0")
    if child_failed and status in ("ok", "lost output", "wrong output"):
        status = f"child {extra.get('child')}"
    for key in ("close", "stop"):
        if snd.get(key) not in (None, "ok", "n/a"):
            problems.append(f"{key}(): {snd.get(key)}")
    if snd.get("sentinel", "sent") != "sent":
        problems.append(f"sentinel {snd.get('sentinel')}")
    if rcv.get("bad_msgs"):
        problems.append(f"{rcv['bad_msgs']} undecodable messages")
    if rcv and not rcv.get("verify_ok", True):
        problems.append(str(rcv.get("verify")))
    if snd.get("workload_error"):
        problems.append(snd["workload_error"].strip().splitlines()[-1])
    rec["status"] = status
    rec["problems"] = problems

    t0 = snd.get("t0")
    t_complete = rcv.get("t_complete")
    rec["e2e"] = t_complete - t0 if (t0 and t_complete) else None
    rec["msgs"] = rcv.get("stream_msgs")
    rec["max_msg_chars"] = rcv.get("max_msg_chars")
    peak = snd.get("peak_rss_kib")
    rec["peak_rss_mib"] = peak / 1024 if peak else None
    base = snd.get("rss_baseline_kib")
    rec["baseline_rss_mib"] = base / 1024 if base else None

    if w.name == "latency":
        arrivals = rcv.get("lat_arrivals", {}) or {}
        writes = extra.get("write_times", []) or []
        lats = [arrivals[str(k)] - t for k, t in enumerate(writes) if str(k) in arrivals]
        rec["latencies"] = lats
        rec["latency_median"] = statistics.median(lats) if lats else None
        rec["tick_msgs"] = rcv.get("tick_msgs")
        ticks_start, ticks_end = extra.get("ticks_start"), extra.get("ticks_end")
        rec["tick_seconds"] = ticks_end - ticks_start if ticks_start and ticks_end else None
        rec["value"] = rec["latency_median"] if lats and len(lats) == len(writes) else None
    elif w.metric == "rss":
        rec["value"] = rec["peak_rss_mib"] if status == "ok" else None
    else:
        rec["value"] = rec["e2e"] if status == "ok" else None
    if status.startswith("crashed") or status.startswith("hung"):
        err = rec["sender_stderr"].strip().splitlines()
        rec["crash_reason"] = next(
            (ln for ln in reversed(err) if "Too many open files" in ln),
            err[-1] if err else "",
        )


def fmt_rec(rec: Record, w: Workload) -> str:
    parts = [f"{rec['status']}"]
    if rec.get("e2e") is not None:
        parts.append(f"e2e={rec['e2e']:.3f}s")
    if w.name == "latency" and rec.get("latency_median") is not None:
        parts.append(f"lat={rec['latency_median'] * 1000:.1f}ms ticks_msgs={rec.get('tick_msgs')}")
    if rec.get("msgs") is not None:
        parts.append(f"msgs={rec['msgs']}")
    if rec.get("peak_rss_mib"):
        parts.append(f"rss={rec['peak_rss_mib']:.0f}MiB")
    if w.name == "short_threads":
        ex = rec["sender"].get("extra", {}) or {}
        parts.append(
            f"completed={ex.get('completed')}/{rec['params']['n']} max_fds={ex.get('max_fds')}"
        )
    if w.name == "big_writes" and rec.get("max_msg_chars"):
        parts.append(f"max_msg={rec['max_msg_chars'] / (1 << 20):.1f}MiB")
    if rec.get("crash_reason"):
        parts.append(f"[{rec['crash_reason'][:120]}]")
    if rec.get("problems"):
        parts.append("; ".join(p[:200] for p in rec["problems"]))
    parts.append(f"(wall {rec['wall_seconds']:.1f}s)")
    return " ".join(parts)


def select_workloads(only: str | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS.values())
    chosen: list[Workload] = []
    by_number = {str(w.number): w for w in WORKLOADS.values()}
    for item in only.split(","):
        key = item.strip()
        w = WORKLOADS.get(key) or by_number.get(key)
        if w is None:
            names = ", ".join(f"{x.number}={x.name}" for x in WORKLOADS.values())
            raise SystemExit(f"unknown workload {key!r}; choose from {names}")
        chosen.append(w)
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (default 5; quick 1)")
    ap.add_argument("--only", default=None, help="workload names or numbers, comma-separated")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where to write reports")
    ap.add_argument("--json", type=Path, default=None, help="also dump raw records here")
    ap.add_argument(
        "--modules",
        default=",".join(MODULES),
        help=f"modules to compare (default {','.join(MODULES)})",
    )
    ap.add_argument(
        "--keep-write-order",
        action="store_true",
        help="run ours with OutStream.keep_write_order = True, as `python -m iostream kernel`",
    )
    ap.add_argument(
        "--report-from",
        type=Path,
        default=None,
        help="only regenerate the reports from a --json dump of an earlier run",
    )
    args = ap.parse_args(argv)
    if args.report_from:
        return report_from(args.report_from, args.out_dir, args.only)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    workloads = select_workloads(args.only)
    env = child_env()
    if args.keep_write_order:
        env[KEEP_WRITE_ORDER_ENV] = "1"

    modules: list[str] = []
    unavailable: dict[str, str] = {}
    for m in args.modules.split(","):
        ok, why = module_available(m, env)
        if ok:
            modules.append(m)
        else:
            unavailable[m] = why
            print(f"WARNING: module {m} is not importable ({why}); skipping it", flush=True)
    if not modules:
        print("no module to benchmark", file=sys.stderr)
        return 2

    records: list[Record] = []
    t_suite = time.monotonic()
    for w in workloads:
        reps = min(repeat, w.max_repeat) if w.max_repeat else repeat
        for rep in range(reps):
            order = modules if rep % 2 == 0 else list(reversed(modules))
            for module in order:
                rec = run_one(module, w, args.quick, rep, env)
                records.append(rec)
                print(
                    f"[{w.number}:{w.name} {rep + 1}/{reps}] {SHORT.get(module, module):9s} "
                    + fmt_rec(rec, w),
                    flush=True,
                )
    elapsed = time.monotonic() - t_suite
    print(f"suite finished in {elapsed:.0f}s", flush=True)

    from bench_report import summarize, write_chart, write_markdown

    rows = summarize(records, workloads, modules)
    meta = {
        "mode": "quick" if args.quick else "full",
        "keep_write_order": args.keep_write_order,
        "repeat": repeat,
        "elapsed_s": elapsed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "unavailable": unavailable,
        "versions": _versions(env),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = write_markdown(args.out_dir / "benchmarks.md", rows, records, meta, workloads)
    write_chart(args.out_dir / "benchmarks.png", rows, meta)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    print(md.split("## Details")[0])
    print(f"wrote {args.out_dir / 'benchmarks.md'} and {args.out_dir / 'benchmarks.png'}")
    return 0


def report_from(path: Path, out_dir: Path, only: str | None) -> int:
    from bench_report import summarize, write_chart, write_markdown

    data = json.loads(path.read_text())
    records: list[Record] = data["records"]
    meta: dict[str, Any] = data["meta"]
    names = {r["workload"] for r in records}
    workloads = [w for w in select_workloads(only) if w.name in names]
    modules = [m for m in MODULES if any(r["module"] == m for r in records)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_markdown(
        out_dir / "benchmarks.md", summarize(records, workloads, modules), records, meta, workloads
    )
    write_chart(out_dir / "benchmarks.png", summarize(records, workloads, modules), meta)
    print(f"wrote {out_dir / 'benchmarks.md'} and {out_dir / 'benchmarks.png'}")
    return 0


def _versions(env: dict[str, str]) -> dict[str, str]:
    code = (
        "import json, zmq, jupyter_client, ipykernel\n"
        "print(json.dumps({'pyzmq': zmq.__version__, 'libzmq': zmq.zmq_version(),"
        " 'jupyter_client': jupyter_client.__version__, 'ipykernel': ipykernel.__version__}))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        versions: dict[str, str] = json.loads(out.stdout)
        return versions
    except Exception:
        return {}


__all__ = ["IPYKERNEL", "OURS", "main", "run_one"]

if __name__ == "__main__":
    sys.exit(main())
