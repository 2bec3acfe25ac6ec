"""No configuration kills a kernel: start, print, fork, shut down in each one.

Two launchers run iostream: ``python -m iostream kernel`` and a launcher of one's
own that calls ``iostream.install()`` before importing ipykernel's ``IPKernelApp``
(the documented way to swap it into ipykernel). Each starts in each configuration:

* fd capture on (the default on Linux);
* ``--IPKernelApp.capture_fd_output=False`` (what spyder-kernels sets; the kernel
  used to die at start);
* ``PYTEST_CURRENT_TEST`` in the kernel's environment (fd capture is skipped);
* ``--IPKernelApp.quiet=False`` (output is echoed to the kernel's own terminal),
  with and without fd capture;
* another platform's paths, forced with ``IOSTREAM_PLATFORM``: Windows (no fd
  capture, forked children reach the parent over loopback TCP with a key) and
  macOS (fd capture through a pipe that is not enlarged).

In each, a cell's stdout and stderr arrive on IOPub under that cell's parent,
fd-level writes are published exactly when fds are captured, forked children's
prints (a fork ``multiprocessing.Pool`` and a bare ``os.fork``) arrive through the
subprocess pipe, the terminal gets an echo exactly when ``quiet`` is off, and the
kernel exits by itself with status 0 when asked to shut down.

Markers are built at run time in the cells (``"M" + "ARK"``), so that the cell's
source, wherever it is logged, never counts as the output being looked for.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kernel_harness import Cell, Kernel

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the other platforms' paths are forced on Linux (fork, fcntl pipe sizes)",
    ),
]

#: The size of a Linux pipe nobody enlarged (16 pages).
DEFAULT_PIPE_SIZE = 1 << 16
#: How long a forced shutdown may take before the manager would kill the kernel.
EXIT_TIMEOUT = 30.0

SWAPPED_LAUNCHER = '''\
"""A launcher of one's own: swap iostream into ipykernel, then run IPKernelApp."""
import iostream

iostream.install()

from ipykernel.kernelapp import IPKernelApp  # noqa: E402

IPKernelApp.launch_instance()
'''


@dataclass(frozen=True)
class Config:
    """A way to start the kernel and what must then hold."""

    name: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    fd_capture: bool = True
    echo: bool = False
    platform: str = "linux"
    #: The platform can fork: forked children reach the parent through its channel.
    forks: bool = True
    #: The capture pipe keeps the size it was made with (None: no capture, no check).
    pipe_left_alone: bool | None = None


NO_FD = "--IPKernelApp.capture_fd_output=False"
NOT_QUIET = "--IPKernelApp.quiet=False"

CONFIGS = [
    Config("default"),
    Config("no-fd-capture", args=(NO_FD,), fd_capture=False),
    Config(
        "pytest-env",
        env={"PYTEST_CURRENT_TEST": "tests/test_x.py::test_y (call)"},
        fd_capture=False,
    ),
    Config("not-quiet", args=(NOT_QUIET,), echo=True),
    Config("not-quiet-no-fd-capture", args=(NOT_QUIET, NO_FD), fd_capture=False, echo=True),
    Config(
        "forced-win32",
        env={"IOSTREAM_PLATFORM": "win32"},
        fd_capture=False,
        platform="win32",
        forks=False,
    ),
    Config(
        "forced-win32-not-quiet",
        args=(NOT_QUIET,),
        env={"IOSTREAM_PLATFORM": "win32"},
        fd_capture=False,
        echo=True,
        platform="win32",
        forks=False,
    ),
    Config(
        "forced-darwin",
        env={"IOSTREAM_PLATFORM": "darwin"},
        platform="darwin",
        pipe_left_alone=True,
    ),
]
LAUNCHERS = ["iostream", "swapped"]


def argv_for(launcher: str, kernels_dir: Path, config: Config) -> list[str]:
    """The kernelspec argv of ``launcher`` with ``config``'s options."""
    if launcher == "iostream":
        head = [sys.executable, "-m", "iostream", "kernel"]
    else:
        script = kernels_dir / "swapped_launcher.py"
        if not script.exists():
            script.write_text(SWAPPED_LAUNCHER, encoding="utf-8")
        head = [sys.executable, str(script)]
    return [*head, "-f", "{connection_file}", *config.args]


def src(code: str) -> str:
    return textwrap.dedent(code).strip("\n")


FACTS = src(
    """
    import fcntl, json, sys
    import iostream, iostream.platform
    from ipykernel.kernelapp import IPKernelApp
    def pipe_size(fd):
        try:
            return fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ: fd 1 is the capture pipe
        except OSError:
            return None
    _thread = IPKernelApp.instance().iopub_thread
    print(json.dumps({
        "classes": sorted({type(o).__module__ for o in (sys.stdout, sys.stderr, _thread)}),
        "capturing": [hasattr(s, "_original_stdstream_copy") for s in (sys.stdout, sys.stderr)],
        "echo": [s.echo is not None for s in (sys.stdout, sys.stderr)],
        "platform": iostream.platform.PLATFORM,
        "channel": getattr(_thread, "_channel", None) is not None,
        "pipe_size": pipe_size(1),
    }))
    """
)

PRINTS = src(
    """
    import sys
    print("py-out-" + "MARK")
    print("py-err-" + "MARK", file=sys.stderr)
    """
)

FD_WRITES = src(
    """
    import os
    os.write(1, b"fd-out-" + b"MARK\\n")
    os.write(2, b"fd-err-" + b"MARK\\n");
    """
)

FORKS = src(
    """
    import multiprocessing, os, sys, warnings
    # Python 3.12+ warns at os.fork() in a multi-threaded process (a kernel is
    # one) and IPython shows that DeprecationWarning in the cell's stderr: not
    # what this cell checks.
    warnings.filterwarnings(
        "ignore",
        message="This process .* is multi-threaded, use of fork",
        category=DeprecationWarning,
    )
    def work(i):
        print(f"pool-out-{i}-" + "MARK")
        print(f"pool-err-{i}-" + "MARK", file=sys.stderr)
        # (returns once the parent has the text: Pool's terminate() kills the
        # workers right after map(), possibly before an unflushed line has left)
        sys.stdout.flush()
        sys.stderr.flush()
        return i * i
    with multiprocessing.get_context("fork").Pool(2) as pool:
        squares = pool.map(work, range(4))
    pid = os.fork()
    if pid == 0:
        print("fork-out-" + "MARK")
        print("fork-err-" + "MARK", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("parent-" + "MARK", squares, status)
    """
)
FORK_OUT = sorted(
    [*(f"pool-out-{i}-MARK" for i in range(4)), "fork-out-MARK", "parent-MARK [0, 1, 4, 9] 0"]
)
FORK_ERR = sorted([*(f"pool-err-{i}-MARK" for i in range(4)), "fork-err-MARK"])


def lines_in(cell: Cell, name: str) -> list[str]:
    return sorted(cell.text(name).splitlines())


def streams_elsewhere(kernel: Kernel, cell: Cell, *prefixes: str) -> list[str]:
    """Stream text with one of ``cell``'s markers that arrived under another parent."""
    return [
        m["content"]["text"]
        for msg_id, msgs in kernel.buckets.items()
        if msg_id != cell.msg_id
        for m in msgs
        if m["msg_type"] == "stream" and any(p in m["content"]["text"] for p in prefixes)
    ]


@pytest.fixture
def started(
    request: pytest.FixtureRequest, kernels_dir: Path, log_dir: Path
) -> Iterator[tuple[Kernel, Config]]:
    launcher, config = request.param
    kernel = Kernel(
        f"{launcher}-{config.name}",
        kernels_dir,
        log_dir,
        argv=argv_for(launcher, kernels_dir, config),
        env=dict(config.env),
    )
    yield kernel, config
    kernel.shutdown()


CASES = [
    pytest.param((launcher, config), id=f"{launcher}-{config.name}")
    for config in CONFIGS
    for launcher in LAUNCHERS
]


@pytest.mark.parametrize("started", CASES, indirect=True)
def test_kernel_starts_prints_forks_and_shuts_down(started: tuple[Kernel, Config]) -> None:
    k, config = started

    facts = json.loads(k.run(FACTS).stdout)
    assert facts["classes"] == ["iostream.iothread", "iostream.outstream"], facts
    assert facts["capturing"] == [config.fd_capture] * 2, facts
    assert facts["echo"] == [config.echo] * 2, facts
    assert facts["platform"] == config.platform, facts
    assert facts["channel"] == config.forks, facts
    if config.fd_capture:
        assert facts["pipe_size"] is not None, f"fd 1 is not a pipe: {facts}"
    if config.pipe_left_alone:
        assert facts["pipe_size"] <= DEFAULT_PIPE_SIZE, f"the pipe was enlarged: {facts}"

    printed = k.run(PRINTS)
    assert printed.stdout == "py-out-MARK\n", printed.runs()
    assert printed.stderr == "py-err-MARK\n", printed.runs()
    assert streams_elsewhere(k, printed, "py-") == []

    fd = k.run(
        FD_WRITES,
        until=(lambda c: "fd-out" in c.stdout and "fd-err" in c.stderr)
        if config.fd_capture
        else None,
    )
    if config.fd_capture:
        assert fd.stdout == "fd-out-MARK\n", fd.runs()
        assert fd.stderr == "fd-err-MARK\n", fd.runs()
    else:  # no pipe in between: the writes went straight to the terminal
        assert fd.outputs == [], fd.runs()
    assert streams_elsewhere(k, fd, "fd-") == []

    if not config.forks:  # (Windows: no fork; this machine's forks prove nothing there)
        return finish(k, config)
    forks = k.run(
        FORKS,
        until=lambda c: lines_in(c, "stdout") == FORK_OUT and lines_in(c, "stderr") == FORK_ERR,
        timeout=120,
    )
    assert lines_in(forks, "stdout") == FORK_OUT, forks.runs()
    assert lines_in(forks, "stderr") == FORK_ERR, forks.runs()
    assert streams_elsewhere(k, forks, "pool-", "fork-", "parent-") == []
    finish(k, config)


def finish(k: Kernel, config: Config) -> None:
    """Shut the kernel down; it must exit by itself, and its terminal show what
    ``config`` says."""
    proc = k.km.provisioner.process  # type: ignore[union-attr]
    k.km.shutdown_kernel(now=False)
    # Exited by itself: a kernel the manager had to kill has a negative status.
    assert proc.wait(timeout=EXIT_TIMEOUT) == 0, k.log()
    k.drain(quiet=0.2, limit=3)
    replies = [m for msgs in k.buckets.values() for m in msgs if m["msg_type"] == "shutdown_reply"]
    assert replies, "no shutdown_reply on IOPub"

    k.shutdown()  # closes the log: it is complete now
    terminal = k.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in terminal, terminal[-5000:]
    # fd-level writes always reach the terminal: echoed from the pipe, or directly
    assert "fd-out-MARK\n" in terminal and "fd-err-MARK\n" in terminal, terminal[-5000:]
    # Python-level writes reach it exactly when quiet is off
    echoed = ["py-out-MARK" in terminal, "py-err-MARK" in terminal]
    assert echoed == [config.echo] * 2, terminal[-5000:]
