"""Workload definitions shared by the orchestrator, the sender and the receiver.

Everything here is pure data and pure functions: the three processes import it to
agree on the parameters of a workload and on the exact text it must deliver.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: HMAC key of the benchmark sessions (sender and receiver must agree).
SESSION_KEY = b"kernel-iostream-benchmark-key"
#: Set to "1" by ``run.py --keep-write-order``: the sender runs ours with
#: ``OutStream.keep_write_order = True``, as ``python -m iostream kernel`` does.
KEEP_WRITE_ORDER_ENV = "IOSTREAM_BENCH_KEEP_WRITE_ORDER"

#: Module names under test, in the order they are reported.
IPYKERNEL = "ipykernel.iostream"
OURS = "iostream"
MODULES = (IPYKERNEL, OURS)
SHORT = {IPYKERNEL: "ipykernel", OURS: "ours"}

#: One MiB: the cap on the text of one message for our module (workload 9).
MIB = 1 << 20
#: iostream's default max_message_chars (64 Mi characters, chosen in issue 12 from
#: rendering times in JupyterLab; it was 1 Mi before): workload 9's message bound.
MAX_MESSAGE_CHARS = 64 * MIB

Params = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    ``metric`` is what the ratio ours/ipykernel is computed on:
    ``e2e`` (seconds until the receiver has every character), ``latency``
    (median seconds from write to arrival) or ``rss`` (peak RSS of the sender).
    """

    name: str
    number: int
    title: str
    metric: str
    target: float
    target_text: str
    full: Params
    quick: Params
    timeout_full: float
    timeout_quick: float
    # As a kernel runs: descriptors captured, a channel for forked children.
    watchfd: bool | str = "force"
    pipe: bool = True
    #: at most this many repetitions, whatever ``--repeat`` says (slow workloads)
    max_repeat: int | None = None
    notes: str = ""
    extra: Params = field(default_factory=dict)

    def params(self, quick: bool) -> Params:
        return dict(self.quick if quick else self.full)

    def timeout(self, quick: bool) -> float:
        return self.timeout_quick if quick else self.timeout_full


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            name="small_writes",
            number=1,
            title='200k stream.write("x") + flush',
            metric="e2e",
            target=0.5,
            target_text="<= 0.5",
            full={"n": 200_000},
            quick={"n": 50_000},
            timeout_full=90,
            timeout_quick=40,
        ),
        Workload(
            name="print",
            number=2,
            title="200k print(i, file=stream)",
            metric="e2e",
            target=0.6,
            target_text="<= 0.6",
            full={"n": 200_000},
            quick={"n": 50_000},
            timeout_full=90,
            timeout_quick=40,
        ),
        Workload(
            name="write_flush",
            number=3,
            title="10k write + flush pairs (progress bar)",
            metric="e2e",
            target=0.6,
            target_text="<= 0.6",
            full={"n": 10_000},
            quick={"n": 2_000},
            timeout_full=150,
            timeout_quick=40,
        ),
        Workload(
            name="threads_parents",
            number=4,
            title="8 threads x 25k writes, one parent per thread",
            metric="e2e",
            target=0.7,
            target_text="<= 0.7",
            full={"threads": 8, "n": 25_000},
            quick={"threads": 8, "n": 5_000},
            timeout_full=120,
            timeout_quick=40,
        ),
        Workload(
            name="fd_capture",
            number=5,
            title='100k os.write(1, b"line\\n") via fd capture',
            metric="e2e",
            target=1.0,
            target_text="<= 1.0",
            full={"n": 100_000},
            quick={"n": 20_000},
            timeout_full=120,
            timeout_quick=40,
            watchfd="force",
        ),
        Workload(
            name="fork",
            number=6,
            title="3,000 lines printed from a forked child",
            metric="e2e",
            target=0.05,
            target_text="<= 0.05",
            full={"lines": 3_000},
            quick={"lines": 500},
            timeout_full=240,
            timeout_quick=60,
            pipe=True,
        ),
        Workload(
            name="latency",
            number=7,
            title="first output after 300 ms idle (median of samples)",
            metric="latency",
            target=0.005,
            target_text="ours <= 5 ms",
            full={"samples": 20, "idle": 0.3, "ticks": 2000, "tick_period": 0.001},
            quick={"samples": 5, "idle": 0.3, "ticks": 500, "tick_period": 0.001},
            timeout_full=90,
            timeout_quick=40,
            max_repeat=2,
        ),
        Workload(
            name="short_threads",
            number=8,
            title="20,000 short-lived threads, write + flush each",
            metric="e2e",
            target=float("nan"),
            target_text="ours completes",
            full={"n": 20_000, "concurrency": 4, "nofile": 1024, "give_up": 150.0},
            quick={"n": 2_000, "concurrency": 4, "nofile": 1024, "give_up": 45.0},
            timeout_full=200,
            timeout_quick=70,
            max_repeat=3,
        ),
        Workload(
            name="big_writes",
            number=9,
            title="200 MB in 10 MB pieces + flush",
            metric="rss",
            target=0.5,
            target_text="RSS <= 0.5, msg <= 64 Mi chars",
            full={"total_mb": 200, "piece_mb": 10},
            quick={"total_mb": 50, "piece_mb": 10},
            timeout_full=180,
            timeout_quick=60,
        ),
    ]
}


# ---------------------------------------------------------------------------
# Expected output of each workload
# ---------------------------------------------------------------------------


def progress_text(i: int, n: int) -> str:
    """What workload 3 writes at step ``i``."""
    return f"\r{i + 1}/{n}"


def latency_line(k: int) -> str:
    return f"lat {k}\n"


TICK = "tick\n"


def thread_char(k: int) -> str:
    """The character thread ``k`` of workload 4 writes (distinct per thread)."""
    return chr(ord("a") + k)


def thread_parent_id(k: int) -> str:
    return f"bench-parent-{k}"


def short_thread_line(i: int) -> str:
    return f"t{i}\n"


def expected_text(name: str, p: Params) -> str | None:
    """The exact text the receiver must get, in order (None: not order-checked)."""
    if name == "small_writes":
        return "x" * p["n"]
    if name in ("print",):
        return "".join(f"{i}\n" for i in range(p["n"]))
    if name == "fork":
        return "".join(f"{i}\n" for i in range(p["lines"]))
    if name == "write_flush":
        return "".join(progress_text(i, p["n"]) for i in range(p["n"]))
    if name == "fd_capture":
        return "line\n" * p["n"]
    if name == "latency":
        return "".join(latency_line(k) for k in range(p["samples"])) + TICK * p["ticks"]
    return None


def expected_chars(name: str, p: Params) -> int:
    """Number of characters the receiver must get before the run is complete."""
    text = expected_text(name, p)
    if text is not None:
        return len(text)
    if name == "threads_parents":
        return int(p["threads"] * p["n"])
    if name == "short_threads":
        return sum(len(short_thread_line(i)) for i in range(p["n"]))
    if name == "big_writes":
        return int(p["total_mb"]) * MIB
    raise KeyError(name)


def iter_expected_lines(name: str, p: Params) -> Iterator[str]:
    if name == "short_threads":
        for i in range(p["n"]):
            yield short_thread_line(i).rstrip("\n")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def proc_status_kib(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
