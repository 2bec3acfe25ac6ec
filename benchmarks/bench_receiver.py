"""Receiver process: SUB socket + keyed Session, deserializes and counts every message.

Started by the orchestrator (``run.py``) once the sender has bound its XPUB socket.
It stops when every expected character has arrived, a grace period after the
sender's ``bench_done`` sentinel, at its deadline, or on SIGTERM; in every case it
writes what it saw to ``receiver.json`` in the run directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zmq
from bench_common import (
    MIB,
    SESSION_KEY,
    TICK,
    expected_chars,
    expected_text,
    iter_expected_lines,
    thread_char,
    thread_parent_id,
    write_json_atomic,
)
from jupyter_client.session import Session


class Collector:
    """Counts messages and characters; keeps what the verification needs."""

    def __init__(self, workload: str, params: dict[str, Any]) -> None:
        self.workload = workload
        self.params = params
        self.expected = expected_chars(workload, params)
        self.chars = 0
        self.stream_msgs = 0
        self.other_msgs = 0
        self.max_msg_chars = 0
        self.msgs_over_mib = 0
        self.bad_msgs = 0
        self.wrong_name = 0
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.t_complete: float | None = None
        self.t_sentinel: float | None = None
        self.parts: list[str] = []
        # workload 4: parent msg_id -> {char: count}
        self.per_parent: dict[str, dict[str, int]] = {}
        # workload 7: sample index -> arrival time; tick messages
        self.lat_arrivals: dict[int, float] = {}
        self.tick_msgs = 0
        self.tick_msg_times: list[float] = []
        # workload 9: characters that were not "x"
        self.non_x = 0
        self.collect_text = workload in (
            "small_writes",
            "print",
            "fork",
            "write_flush",
            "fd_capture",
            "latency",
            "short_threads",
        )

    def handle(self, msg: dict[str, Any], now: float) -> None:
        msg_type = msg["header"]["msg_type"]
        if msg_type == "bench_done":
            if self.t_sentinel is None:
                self.t_sentinel = now
            return
        if msg_type != "stream":
            self.other_msgs += 1
            return
        content = msg["content"]
        if content.get("name") != "stdout":
            self.wrong_name += 1
        text: str = content.get("text", "")
        n = len(text)
        self.stream_msgs += 1
        self.chars += n
        self.max_msg_chars = max(self.max_msg_chars, n)
        if n > MIB:
            self.msgs_over_mib += 1
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        if self.collect_text:
            self.parts.append(text)
        if self.workload == "threads_parents":
            pid = str(msg.get("parent_header", {}).get("msg_id", ""))
            counts = self.per_parent.setdefault(pid, {})
            for ch in set(text):
                counts[ch] = counts.get(ch, 0) + text.count(ch)
        elif self.workload == "latency":
            if TICK in text:
                self.tick_msgs += 1
                self.tick_msg_times.append(now)
            for line in text.splitlines():
                if line.startswith("lat "):
                    k = int(line[4:])
                    self.lat_arrivals.setdefault(k, now)
        elif self.workload == "big_writes":
            self.non_x += n - text.count("x")
        if self.t_complete is None and self.chars >= self.expected:
            self.t_complete = time.monotonic()

    @property
    def complete(self) -> bool:
        return self.chars >= self.expected

    def verify(self) -> tuple[bool, str]:
        """Check the content of what arrived (not only its length)."""
        w, p = self.workload, self.params
        if self.wrong_name:
            return False, f"{self.wrong_name} messages not on stdout"
        text = "".join(self.parts) if self.collect_text else ""
        exp = expected_text(w, p)
        if exp is not None:
            if text == exp:
                return True, "text identical"
            i = next((j for j, (a, b) in enumerate(zip(text, exp, strict=False)) if a != b), None)
            if i is None:
                i = min(len(text), len(exp))
            return False, (
                f"text differs at char {i} of {len(exp)} (got {len(text)} chars): "
                f"got {text[i : i + 30]!r} expected {exp[i : i + 30]!r}"
            )
        if w == "short_threads":
            got = text.splitlines()
            want = set(iter_expected_lines(w, p))
            got_set = set(got)
            missing = len(want - got_set)
            dup = len(got) - len(got_set)
            extra = len(got_set - want)
            ok = missing == 0 and dup == 0 and extra == 0
            return ok, f"lines: {len(got_set)}/{len(want)} delivered, {dup} dup, {extra} unexpected"
        if w == "threads_parents":
            problems = []
            for k in range(p["threads"]):
                pid = thread_parent_id(k)
                counts = self.per_parent.get(pid, {})
                want = {thread_char(k): p["n"]}
                if counts != want:
                    problems.append(f"{pid}: got {dict(sorted(counts.items()))}")
            strays = set(self.per_parent) - {thread_parent_id(k) for k in range(p["threads"])}
            for pid in sorted(strays):
                problems.append(f"unexpected parent {pid!r}: {self.per_parent[pid]}")
            if problems:
                return False, "; ".join(problems[:6])
            return True, f"each of {p['threads']} parents got exactly its own text"
        if w == "big_writes":
            ok = self.non_x == 0 and self.chars == self.expected
            return ok, f"{self.chars} chars, {self.non_x} unexpected"
        return True, ""

    def result(self, reason: str) -> dict[str, Any]:
        ok, detail = self.verify()
        return {
            "reason": reason,
            "expected_chars": self.expected,
            "chars": self.chars,
            "complete": self.complete,
            "stream_msgs": self.stream_msgs,
            "other_msgs": self.other_msgs,
            "max_msg_chars": self.max_msg_chars,
            "msgs_over_mib": self.msgs_over_mib,
            "bad_msgs": self.bad_msgs,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "t_complete": self.t_complete,
            "t_sentinel": self.t_sentinel,
            "verify_ok": ok,
            "verify": detail,
            "lat_arrivals": {str(k): v for k, v in self.lat_arrivals.items()},
            "tick_msgs": self.tick_msgs,
            "tick_msg_times": self.tick_msg_times,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--params", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--grace", type=float, default=5.0)
    args = ap.parse_args(argv)

    stop = {"flag": False}

    def _on_term(signum: int, frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _on_term)

    coll = Collector(args.workload, json.loads(args.params))
    session = Session(key=SESSION_KEY)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{args.port}")

    deadline = time.monotonic() + args.deadline
    reason = "complete"
    while True:
        if coll.complete:
            break
        now = time.monotonic()
        if stop["flag"]:
            reason = "sigterm"
            break
        if now > deadline:
            reason = "deadline"
            break
        if coll.t_sentinel is not None and now - coll.t_sentinel > args.grace:
            reason = "sentinel+grace"
            break
        if not sub.poll(50):
            continue
        while not coll.complete:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = time.monotonic()
            try:
                _idents, msg_list = session.feed_identities(frames)
                msg = session.deserialize(msg_list)
            except Exception as e:
                coll.bad_msgs += 1
                print(f"receiver: bad message: {e!r}", file=sys.stderr)
                continue
            coll.handle(msg, now)

    write_json_atomic(args.dir / "receiver.json", coll.result(reason))
    sub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
