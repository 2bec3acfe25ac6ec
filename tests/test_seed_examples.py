"""The five programs of the seed document run unchanged and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import ROOT, SHARED

EXAMPLES = SHARED / "seed-examples"


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the seed examples live outside this repository")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=30, env=env
    )


def test_1_basic_output_stream() -> None:
    proc = run_example("1_basic_output_stream.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[None] stream: {'name': 'stdout', 'text': 'This output goes to the Jupyter frontend\\n'}",
        "[None] stream: {'name': 'stdout', 'text': 'Multiple lines are supported\\n'}",
    ]


def test_2_iopub_thread_management() -> None:
    proc = run_example("2_iopub_thread_management.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Publishing message from IOPub thread\n"


def test_3_custom_output_capture() -> None:
    proc = run_example("3_custom_output_capture.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "Function result: Function completed\n\nCaptured output:\n"
        # The example prints the socket argument of session.send: None without
        # a thread, as under ipykernel (the stream's name is in the content).
        "  None: This is stdout output\n\n"
        "  None: Multiple lines of output\n\n"
        "  None: This goes to stderr\n\n"
    )


def test_4_stream_redirection_for_debugging() -> None:
    proc = run_example("4_stream_redirection_for_debugging.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "=== Debug Output Log ==="
    streams = [line.split(": ", 1)[1] for line in lines if "Stream:" in line]
    assert streams == ["None"] * 5  # the socket argument: no thread, as in ipykernel
    contents = [line.split("Content: ", 1)[1] for line in lines if "Content:" in line]
    assert contents == [
        "{'name': 'stdout', 'text': 'This output will be captured\\n'}",
        "{'name': 'stderr', 'text': 'Error message\\n'}",
        "{'name': 'stdout', 'text': 'Processing item 1\\n'}",
        "{'name': 'stdout', 'text': 'Processing item 2\\n'}",
        "{'name': 'stdout', 'text': 'Processing item 3\\n'}",
    ]
    assert lines.count("   Type: stream") == 5


def test_5_background_processing() -> None:
    """Every queued task runs to completion before stop() returns, and the
    program exits (context.term() does not hang). The example's closure binds
    its loop variables late, so which task's arguments each call sees depends
    on timing: that is the example's own Python, the same under ipykernel."""
    durations = {"Task1": "0.5", "Task2": "0.3", "Task3": "0.7"}
    proc = run_example("5_background_processing.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    for start, done in zip(lines[0::2], lines[1::2], strict=True):
        task = start.removeprefix("Starting task: ")
        assert task in durations
        assert done == f"Task completed: Task {task} completed after {durations[task]}s"
