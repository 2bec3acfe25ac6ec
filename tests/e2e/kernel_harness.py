"""Real kernels for the e2e tests: ours (``python -m iostream kernel``) and stock ipykernel.

Kernels are started through ``jupyter_client.KernelManager`` from kernelspecs written to
a temporary directory, exactly as a frontend would start them. IOPub messages are
bucketed by the ``msg_id`` of their parent request, so output that arrives late (or
for an earlier cell) is still attributed correctly.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import iostream

Msg = dict[str, Any]

OURS_ARGV = [sys.executable, "-m", "iostream", "kernel", "-f", "{connection_file}"]
STOCK_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
KINDS = {"iostream": OURS_ARGV, "ipykernel": STOCK_ARGV}

STARTUP_TIMEOUT = 60.0
CELL_TIMEOUT = 60.0
#: Kernel starts tried when (and only when) the kernel died because a port was taken.
START_ATTEMPTS = 3
PORT_IN_USE = "Address already in use"


def kernel_env() -> dict[str, str]:
    """Environment for kernel processes.

    ``PYTEST_CURRENT_TEST`` is removed: ipykernel's OutStream (and possibly ours)
    turns file-descriptor capture off when it sees it, and a kernel is not a test.
    So is ``PYTHONUNBUFFERED`` (see below).
    The directory holding the ``iostream`` package under test goes first on
    ``PYTHONPATH`` so the kernel imports the same code as these tests.
    """
    # PYTHONUNBUFFERED (set on some CI machines) is dropped too: a Jupyter server
    # does not set it, and with it every child process writes a print in pieces,
    # so two children's lines interleave on the shared fd in either kernel.
    dropped = {"PYTEST_CURRENT_TEST", "PYTHONUNBUFFERED"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    pkg_parent = str(Path(iostream.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *[p for p in parts if p != pkg_parent]])
    return env


def write_spec(kernels_dir: Path, name: str, argv: list[str]) -> Path:
    """Write ``kernels_dir/name/kernel.json`` launching ``argv``; return the spec dir."""
    spec_dir = kernels_dir / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": name, "language": "python", "metadata": {}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return spec_dir


@dataclass
class Cell:
    """The IOPub messages (and reply) of one execute_request.

    ``messages`` is the live bucket for the request: output that arrives after the
    cell returned keeps being appended by later pumping of the same kernel.
    """

    msg_id: str
    messages: list[Msg]
    reply: Msg | None = None
    input_prompts: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[Msg]:
        """Output messages only (stream, display, result, error), in arrival order."""
        kinds = ("stream", "display_data", "update_display_data", "execute_result", "error")
        return [m for m in self.messages if m["msg_type"] in kinds]

    def text(self, name: str) -> str:
        """Concatenated text of all ``stream`` messages named ``name``."""
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self.text("stdout")

    @property
    def stderr(self) -> str:
        return self.text("stderr")

    def runs(self) -> list[tuple[str, str]]:
        """Outputs as (kind, text) with consecutive messages of the same stream merged.

        ``kind`` is the stream name for streams and the msg_type otherwise (with the
        sorted MIME types as ``text``), so message splitting does not matter.
        """
        result: list[tuple[str, str]] = []
        for m in self.outputs:
            if m["msg_type"] == "stream":
                name, text = m["content"]["name"], m["content"]["text"]
                if result and result[-1][0] == name:
                    result[-1] = (name, result[-1][1] + text)
                else:
                    result.append((name, text))
            else:
                mimes = ",".join(sorted(m["content"].get("data", {})))
                result.append((m["msg_type"], mimes))
        return result

    @property
    def status(self) -> str | None:
        return None if self.reply is None else self.reply["content"]["status"]

    @property
    def idle_index(self) -> int | None:
        """Index in ``messages`` of the idle status for this request, if seen."""
        for i, m in enumerate(self.messages):
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                return i
        return None


class Kernel:
    """One running kernel plus a blocking client and per-request IOPub buckets.

    ``kind`` names the kernelspec; its ``argv`` is ``KINDS[kind]`` unless ``argv``
    is given. ``env`` entries are set (a value of None removes the variable) on top
    of :func:`kernel_env` for the kernel process.
    """

    def __init__(
        self,
        kind: str,
        kernels_dir: Path,
        log_dir: Path,
        *,
        argv: list[str] | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.kind = kind
        write_spec(kernels_dir, kind, KINDS[kind] if argv is None else argv)
        self.buckets: dict[str, list[Msg]] = {}
        self._env_changes = dict(env or {})
        for attempt in range(1, START_ATTEMPTS + 1):
            self._start(kernels_dir, log_dir)
            try:
                self.wait_ready()
                return
            except RuntimeError:
                # jupyter_client picks the kernel's TCP ports in this process and the
                # kernel binds them later; anything on the machine may take one in
                # between (jupyter_client#487). Only that is retried, with new ports.
                port_race = PORT_IN_USE in self.log()
                self.shutdown()
                if not port_race or attempt == START_ATTEMPTS:
                    raise

    def _start(self, kernels_dir: Path, log_dir: Path) -> None:
        self.km = KernelManager(
            kernel_name=self.kind,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]),
        )
        self.log_path = log_dir / f"{self.kind}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in shutdown()
        env = kernel_env()
        for name, value in self._env_changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        self.km.start_kernel(env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.kc: BlockingKernelClient = self.km.client()
        self.kc.start_channels()

    # -- plumbing ---------------------------------------------------------

    def wait_ready(self) -> None:
        """Block until the kernel answers a kernel_info_request (bounded)."""
        try:
            self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        except RuntimeError as e:
            raise RuntimeError(f"{self.kind} kernel did not start: {e}\n{self.log()}") from e

    def log(self) -> str:
        """The kernel process's own stdout/stderr so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-5000:]

    def bucket(self, msg_id: str) -> list[Msg]:
        return self.buckets.setdefault(msg_id, [])

    def pump(self, timeout: float) -> bool:
        """Bucket at most one IOPub message; False if none arrived within ``timeout``."""
        try:
            msg: Msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return False
        parent = msg.get("parent_header") or {}
        self.bucket(parent.get("msg_id", "")).append(msg)
        return True

    def drain(self, quiet: float = 0.1, limit: float = 5.0) -> None:
        """Pump until IOPub has been quiet for ``quiet`` s (at most ``limit`` s)."""
        end = time.monotonic() + limit
        while time.monotonic() < end and self.pump(min(quiet, max(0.0, end - time.monotonic()))):
            pass

    def wait_for(
        self, cell: Cell, predicate: Callable[[Cell], bool], timeout: float = 30.0
    ) -> bool:
        """Pump until ``predicate(cell)`` holds; return whether it did within ``timeout``."""
        end = time.monotonic() + timeout
        while not predicate(cell):
            if time.monotonic() > end:
                return False
            self.pump(0.05)
        return True

    # -- executing ----------------------------------------------------------

    def submit(self, code: str, *, allow_stdin: bool = False) -> Cell:
        """Send an execute_request; return its (still empty) Cell."""
        msg_id: str = self.kc.execute(code, allow_stdin=allow_stdin, stop_on_error=False)
        return Cell(msg_id, self.bucket(msg_id))

    def finish(
        self,
        cell: Cell,
        *,
        until: Callable[[Cell], bool] | None = None,
        stdin: list[str] | None = None,
        timeout: float = CELL_TIMEOUT,
        quiet: float = 0.15,
    ) -> Cell:
        """Wait for ``cell``'s reply and idle status, answering input requests from ``stdin``.

        Then wait (bounded) for ``until(cell)`` if given, since fd-level and
        subprocess output may legitimately arrive after idle, and finally until IOPub
        has been quiet for ``quiet`` seconds.
        """
        answers = list(stdin or [])
        end = time.monotonic() + timeout
        while cell.reply is None or cell.idle_index is None:
            if time.monotonic() > end:
                raise AssertionError(
                    f"{self.kind}: no reply/idle within {timeout}s; got {cell.runs()}\n"
                    f"kernel log:\n{self.log()}"
                )
            if cell.reply is None:
                try:
                    reply: Msg = self.kc.get_shell_msg(timeout=0)
                except queue.Empty:
                    pass
                else:
                    if reply["parent_header"].get("msg_id") == cell.msg_id:
                        cell.reply = reply
            if stdin is not None:
                try:
                    req: Msg = self.kc.get_stdin_msg(timeout=0)
                except queue.Empty:
                    pass
                else:
                    if req["msg_type"] == "input_request":
                        cell.input_prompts.append(req["content"]["prompt"])
                        self.kc.input(answers.pop(0) if answers else "")
            self.pump(0.02)
        if until is not None:
            self.wait_for(cell, until, timeout=max(1.0, end - time.monotonic()))
        self.drain(quiet=quiet)
        return cell

    def run(
        self, code: str, *, stdin: list[str] | None = None, check: bool = True, **kw: Any
    ) -> Cell:
        """Execute ``code`` and return the finished Cell (see :meth:`finish`).

        With ``stdin`` the request allows stdin and input requests are answered from it.
        With ``check`` (the default) a reply status other than ``ok`` fails the test,
        showing the error and what was printed.
        """
        cell = self.submit(code, allow_stdin=stdin is not None)
        self.finish(cell, stdin=stdin, **kw)
        if check and cell.status != "ok":
            content = cell.reply["content"] if cell.reply else {}
            tb = "\n".join(content.get("traceback", []))
            raise AssertionError(
                f"{self.kind}: cell failed: {content.get('ename')}: {content.get('evalue')}\n"
                f"{tb}\noutputs: {cell.runs()}"
            )
        return cell

    # -- lifecycle ----------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the client and shut the kernel down (killed after the manager's wait)."""
        try:
            self.kc.stop_channels()
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)
        finally:
            self._log.close()


class KernelPair:
    """Our kernel and a stock ipykernel side by side, running the same code."""

    def __init__(self, ours: Kernel, stock: Kernel) -> None:
        self.ours = ours
        self.stock = stock
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="e2e-kernel")

    def run(self, code: str, **kw: Any) -> tuple[Cell, Cell]:
        """Execute ``code`` on both kernels concurrently; return (ours, stock)."""
        fo = self._pool.submit(self.ours.run, code, **kw)
        fs = self._pool.submit(self.stock.run, code, **kw)
        return fo.result(), fs.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
