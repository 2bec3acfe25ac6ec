"""Every program in examples/ runs, as a user would run it, and prints what it promises.

Each example runs as a real process (real zmq sockets on loopback, real kernels); the
README's code snippet is one of them, character for character.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import FD_CAPTURE_PLATFORM, ROOT

EXAMPLES = ROOT / "examples"
#: The README shows this example in full, after the marker line.
README_EXAMPLE = "examples/publisher.py"
#: Every example and the test that runs it (a new example needs a test).
TESTED = {"publisher.py", "custom_session.py", "ipykernel_swap.py"}


def run_example(name: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/NAME`` in ``cwd`` with this checkout's package importable."""
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)  # the examples run as outside any test
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_every_example_has_a_test() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == TESTED


def test_readme_snippet_is_the_publisher_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(
        rf"<!-- example: {re.escape(README_EXAMPLE)} -->\n```python\n(.*?)```\n", readme, re.S
    )
    assert found, f"README.md has no example block for {README_EXAMPLE}"
    assert found.group(1) == (ROOT / README_EXAMPLE).read_text(encoding="utf-8")


def test_publisher_example(tmp_path: Path) -> None:
    proc = run_example("publisher.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "the receiver got:\n"
        "request-1 stdout: 'hello from request 1\\n'\n"
        "request-1 stderr: 'a warning\\n'\n"
        "request-2 stdout: 'hello from request 2\\n'\n"
        "request-2 stderr: 'a warning\\n'\n"
        "receiver exit status 0\n"
    )
    assert proc.stderr == ""


def test_custom_session_example(tmp_path: Path) -> None:
    proc = run_example("custom_session.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "task-1 stdout: 'task-1 starts\\n'",
        "task-1 stdout: 'no newline yet... done\\n'",
        "task-1 stderr: 'task-1 warns\\n'",
        "task-2 stdout: 'task-2 starts\\n'",
        "task-2 stdout: 'no newline yet... done\\n'",
        "task-2 stderr: 'task-2 warns\\n'",
        "task-2 stdout: 'left without a newline'",
    ]
    assert proc.stderr == ""


@pytest.mark.e2e
def test_ipykernel_swap_example(tmp_path: Path) -> None:
    proc = run_example("ipykernel_swap.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2:] == ["result: 42", "status: ok"], proc.stdout
    text: dict[str, str] = {"stdout": "", "stderr": ""}
    for line in lines[:-2]:
        name, _, literal = line.partition(": ")
        text[name] += ast.literal_eval(literal)  # each line prints repr(text)
    # fd-level output (the subprocess) is captured where ipykernel captures it too
    subprocess_line = "from a subprocess\n" if FD_CAPTURE_PLATFORM else ""
    assert text == {
        "stdout": "sys.stdout is an iostream.OutStream: True\n" + subprocess_line,
        "stderr": "to stderr\n",
    }
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory
