"""The locked write path: what runs where the GIL does not make the fast path safe.

``IOSTREAM_LOCKED_WRITES=1`` (read at import) makes every write take the group's
lock, as on a free-threaded build; the threaded stress tests then run through it
in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import run_python

TESTS = Path(__file__).resolve().parent

THREADED = [
    "test_reliability.py::test_many_threads_under_many_parents_every_character_once_in_order",
    "test_reliability.py::test_a_write_racing_a_flush_is_not_stranded",
    "test_reliability.py::test_thousands_of_short_lived_threads_open_no_fds",
    "test_reliability.py::test_keyboard_interrupt_during_write_and_flush",
    "test_iothread.py::test_schedule_from_many_threads_keeps_each_threads_order",
    "test_outstream.py::test_flush_from_another_thread_hands_text_to_socket",
    "test_outstream.py::test_stdout_stderr_order_is_kept",
    "test_outstream.py::test_writes_within_flush_interval_coalesce",
    "test_outstream.py::test_no_message_over_the_limit",
    "test_interrupts_and_blocking.py::test_progress_bar_flushes_publish_on_the_io_thread_one_message_each",
    "test_fork.py::test_fork_while_other_threads_write_and_flush_never_hangs",
]


def test_the_environment_variable_selects_the_locked_path() -> None:
    code = (
        "import iostream.outstream as o, iostream\n"
        "class S:\n"
        "    def send(self, *a, **k): pass\n"
        "out = iostream.OutStream('stdout', S(), None)\n"
        "print(o.LOCK_FREE_WRITES, out.write.__name__)\n"
    )
    rc, out, err = run_python(code, IOSTREAM_LOCKED_WRITES="1")
    assert rc == 0, err
    assert out == "False write_locked\n"
    rc, out, err = run_python(code, IOSTREAM_LOCKED_WRITES="")  # (not inherited)
    assert rc == 0, err
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    assert out == ("True write\n" if gil else "False write_locked\n")


def test_threaded_stress_tests_pass_through_the_locked_path() -> None:
    env = {**os.environ, "IOSTREAM_LOCKED_WRITES": "1"}
    env.pop("IOSTREAM_IMPL", None)  # (ours: the flag is ours)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *(f"tests/{t}" for t in THREADED),
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{len(THREADED)} passed" in run.stdout, run.stdout[-2000:]
