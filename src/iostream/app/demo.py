"""``python -m iostream demo``: run the demo notebook on a real iostream kernel.

Starts such a kernel (no installed kernelspec needed, :class:`DemoKernel`), runs
:data:`DEMO_CELLS` and prints what a frontend receives and when; :func:`record` keeps
every IOPub message, for ``demo --compare``. The application layer, as
:mod:`iostream.app.cli`; nothing in the library imports it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .democells import DEMO_CELLS, OUTPUT_TYPES, DemoCell, to_nb_output
from .kernelspec import DEFAULT_DISPLAY_NAME, DEFAULT_KERNEL_NAME, write_kernelspec_dir


@dataclass
class _Arrival:
    """One IOPub message of a cell and when it arrived."""

    ms: float
    msg: dict[str, Any]


@dataclass
class _CellRun:
    """What one executed cell produced."""

    msg_id: str
    sent: float
    arrivals: list[_Arrival] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    idle: bool = False

    def text(self, name: str) -> str:
        """Concatenated text of the cell's ``stream`` messages named ``name``."""
        return "".join(
            a.msg["content"]["text"]
            for a in self.arrivals
            if a.msg["msg_type"] == "stream" and a.msg["content"]["name"] == name
        )

    def mimetypes(self) -> set[str]:
        """MIME types of all display_data / execute_result outputs of the cell."""
        found: set[str] = set()
        for a in self.arrivals:
            if a.msg["msg_type"] in ("display_data", "update_display_data", "execute_result"):
                found.update(a.msg["content"].get("data", {}))
        return found


def _missing(cell: DemoCell, run: _CellRun) -> list[str]:
    """Expectations of ``cell`` that ``run`` does not (yet) satisfy, as readable strings."""
    out, err, mimes = run.text("stdout"), run.text("stderr"), run.mimetypes()
    missing = [f"stdout {s!r}" for s in cell.stdout if s not in out]
    missing += [f"stderr {s!r}" for s in cell.stderr if s not in err]
    missing += [f"display {m}" for m in cell.mimetypes if m not in mimes]
    return missing


def _describe(arrival: _Arrival) -> str:
    """One line saying what a frontend shows for an output message."""
    msg = arrival.msg
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        body = f"{content['name']:<7} {content['text']!r}"
    elif kind == "error":
        body = f"error   {content.get('ename')}: {content.get('evalue')}"
    else:
        body = f"{kind}  " + ", ".join(sorted(content.get("data", {})))
    return f"    +{arrival.ms:9.1f} ms  {body if len(body) <= 110 else body[:107] + '...'}"


class _DemoRunner:
    """Runs cells on a started kernel client, bucketing IOPub output by parent msg_id."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.runs: dict[str, _CellRun] = {}

    def _pump(self, timeout: float) -> bool:
        """Move at most one IOPub message into its run; False if none came in time."""
        try:
            msg: dict[str, Any] = self.client.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return False
        now = time.perf_counter()
        run = self.runs.get(msg.get("parent_header", {}).get("msg_id", ""))
        if run is None:
            return True
        if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
            run.idle = True
        elif msg["msg_type"] in OUTPUT_TYPES:
            run.arrivals.append(_Arrival((now - run.sent) * 1000.0, msg))
        return True

    def execute(self, cell: DemoCell, timeout: float, settle: float) -> _CellRun:
        """Execute ``cell`` and return its run once it is complete or timed out.

        Guarantees: returns within about ``timeout + settle`` seconds. Complete means
        the execute_reply and the idle status arrived and either every expectation of
        ``cell`` is met or ``settle`` seconds passed after idle; then it keeps collecting
        until IOPub has been quiet for 0.1 s (within the same bounds).
        """
        sent = time.perf_counter()
        msg_id: str = self.client.execute(cell.source, allow_stdin=False)
        run = self.runs[msg_id] = _CellRun(msg_id, sent)
        deadline = sent + timeout
        idle_at: float | None = None
        while time.perf_counter() < deadline:
            if run.reply is None:
                try:
                    reply: dict[str, Any] = self.client.get_shell_msg(timeout=0)
                except queue.Empty:
                    pass
                else:
                    if reply.get("parent_header", {}).get("msg_id") == msg_id:
                        run.reply = reply
            self._pump(0.02)
            if run.idle and run.reply is not None:
                idle_at = idle_at or time.perf_counter()
                if not _missing(cell, run) or time.perf_counter() - idle_at > settle:
                    break
        quiet_until = min(time.perf_counter() + 0.1, deadline + settle)
        while time.perf_counter() < quiet_until:
            if self._pump(max(0.0, quiet_until - time.perf_counter())):
                quiet_until = min(time.perf_counter() + 0.1, deadline + settle)
        return run


def _demo_env() -> dict[str, str]:
    """Environment for the demo kernel: ours, with this iostream's directory importable,
    without ``PYTEST_CURRENT_TEST`` (ipykernel turns fd capture off when it sees it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    import iostream

    pkg_parent = str(Path(next(iter(iostream.__path__))).resolve().parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pkg_parent not in parts:
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *parts])
    return env


class DemoKernel:
    """A kernel started through jupyter_client from a kernelspec written under ``tmp``.

    Guarantees: nothing needs to be installed: the kernelspec runs ``python -m iostream
    kernel`` (``stock``: ``-m ipykernel_launcher``) with this Python and iostream. The
    kernel's own stdout/stderr (its terminal) goes to a log (:meth:`log`). Main thread.
    """

    def __init__(self, tmp: Path, *, stock: bool) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        name = "iostream-demo"
        spec_dir = write_kernelspec_dir(tmp / "kernels" / name, "iostream demo")
        spec = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
        if stock:
            spec["argv"] = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        self.argv: list[str] = list(spec["argv"])  # {connection_file} not filled in
        ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
        self.km: Any = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        self.client: Any = None
        self._log_path = tmp / "kernel.log"

    def start(self, timeout: float) -> float:
        """Start the kernel and its client's channels; return ms until it was ready.

        Guarantees: returns within about ``timeout`` seconds, or raises ``RuntimeError``
        / ``TimeoutError`` (the kernel is then still to be :meth:`stop`-ped).
        """
        started = time.perf_counter()  # the kernel's terminal gets echoed fd output: a log
        with open(self._log_path, "wb") as log:
            self.km.start_kernel(env=_demo_env(), stdout=log, stderr=subprocess.STDOUT)
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout)
        return 1000 * (time.perf_counter() - started)

    def stop(self) -> None:
        """Stop the channels and shut the kernel down (killed if it does not stop)."""
        if self.client is not None:
            self.client.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)

    def log(self) -> str:
        """The kernel process's own stdout/stderr so far ("" if it never started)."""
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def _slim(msg: dict[str, Any], ms: float) -> dict[str, Any]:
    """The parts of an IOPub message the comparison uses, JSON-serialisable."""
    content = msg.get("content", {})
    slim: dict[str, Any] = {
        "ms": round(ms, 2),
        "type": msg.get("msg_type", ""),
        "parent": (msg.get("parent_header") or {}).get("msg_id", ""),
    }
    if slim["type"] == "stream":
        slim.update(name=content.get("name", ""), text=content.get("text", ""))
    elif slim["type"] == "status":
        slim["state"] = content.get("execution_state", "")
    elif slim["type"] == "error":
        slim["text"] = f"{content.get('ename')}: {content.get('evalue')}"
    else:
        slim["data"] = sorted(content.get("data", {}))
    return slim


def record(client: Any, cells: Sequence[DemoCell], timeout: float, settle: float) -> dict[str, Any]:
    """Run ``cells`` on a started kernel ``client`` and return everything IOPub sent.

    Guarantees: a cell is sent once the previous one has its execute_reply and idle
    status, or ``timeout`` seconds after it was sent; a cell with ``idle_before`` is
    sent after that many seconds more. Then collects until IOPub was quiet for 0.5 s,
    at most ``settle`` seconds. Returns ``{"requests": [...], "messages": [...]}``: per
    cell its msg_id, send time, reply status and reply/idle times; every IOPub message
    in arrival order (:func:`_slim`). Times are ms since the call. Main thread.
    """
    t0 = time.perf_counter()
    messages: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []

    def now() -> float:
        return 1000.0 * (time.perf_counter() - t0)

    def pump(wait: float) -> bool:
        try:
            msg = client.get_iopub_msg(timeout=max(wait, 0.0))
        except queue.Empty:
            return False
        messages.append(_slim(msg, now()))
        return True

    for cell in cells:
        pause_until = now() + 1000.0 * cell.idle_before
        while now() < pause_until:
            pump((pause_until - now()) / 1000.0)
        req: dict[str, Any] = {"sent": round(now(), 2), "status": "no reply"}
        req.update(msg_id=client.execute(cell.source, allow_stdin=False), reply=None, idle=None)
        requests.append(req)
        deadline = req["sent"] + 1000.0 * timeout
        while now() < deadline and (req["reply"] is None or req["idle"] is None):
            if req["reply"] is None:
                try:
                    reply = client.get_shell_msg(timeout=0)
                except queue.Empty:
                    pass
                else:
                    if reply.get("parent_header", {}).get("msg_id") == req["msg_id"]:
                        req["reply"] = round(now(), 2)
                        req["status"] = reply.get("content", {}).get("status", "?")
            if pump(0.01):
                last = messages[-1]
                if last["parent"] == req["msg_id"] and last.get("state") == "idle":
                    req["idle"] = last["ms"]
    end, quiet = now() + 1000.0 * settle, now() + 500.0
    while now() < min(end, quiet):
        if pump((min(end, quiet) - now()) / 1000.0):
            quiet = now() + 500.0
    return {"requests": requests, "messages": messages}


def notebook_kernelspec(name: str) -> tuple[dict[str, str], bool]:
    """Return the ``metadata.kernelspec`` of a notebook meant to open on kernelspec ``name``.

    Guarantees: ``{"name", "display_name", "language"}`` of the kernelspec Jupyter finds
    under ``name`` when it is installed, and whether it is; otherwise ``name`` with the
    display name ``install`` would give it (:data:`DEFAULT_DISPLAY_NAME` for the default
    name, else ``name``) and ``False``. Any thread.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except (NoSuchKernel, OSError, ValueError):
        display = DEFAULT_DISPLAY_NAME if name == DEFAULT_KERNEL_NAME else name
        return {"name": name, "display_name": display, "language": "python"}, False
    return {
        "name": name,
        "display_name": spec.display_name or name,
        "language": spec.language or "python",
    }, True


def run_demo(
    *,
    timeout: float = 60.0,
    settle: float = 3.0,
    save: str | None = None,
    stock: bool = False,
    verbose: bool = False,
    kernel_name: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Run :data:`DEMO_CELLS` on a freshly started kernel and report every output.

    Guarantees: starts the kernel from a kernelspec written to a temporary directory
    (nothing needs to be installed), so it works on a fresh machine; with ``stock`` the
    kernel is ipykernel's own launcher instead, for comparison. Every wait is bounded:
    startup by ``timeout``, each cell by ``timeout + settle`` seconds. The kernel is shut
    down (and killed if it does not stop) and the temporary directory removed before
    returning. With ``save`` the executed notebook is written there as ``.ipynb``; its
    ``metadata.kernelspec`` names ``kernel_name`` (default: the kernelspec ``install``
    writes, ``python3`` with ``stock``), see :func:`notebook_kernelspec`. The
    kernel process's own stdout/stderr (its terminal) goes to a log that is printed at
    the end if a cell failed or ``verbose`` is set.
    Returns 0 when every cell finished with status ``ok`` and produced all its expected
    output, 1 otherwise.
    """
    failures = 0
    cells_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iostream-demo-") as tmp:
        kernel = DemoKernel(Path(tmp), stock=stock)
        out(f"starting kernel: {' '.join(kernel.argv)}")
        try:
            try:
                ready_ms = kernel.start(timeout)
            except (RuntimeError, TimeoutError) as e:
                out(f"kernel did not become ready: {e}")
                failures = len(DEMO_CELLS)
                return 1
            out(f"kernel ready after {ready_ms:.0f} ms")
            runner = _DemoRunner(kernel.client)
            for n, cell in enumerate(DEMO_CELLS, 1):
                out("")
                out(f"[{n}/{len(DEMO_CELLS)}] {cell.title}")
                for line in cell.source.splitlines():
                    out(f"    | {line}")
                if cell.idle_before:
                    time.sleep(cell.idle_before)
                run = runner.execute(cell, timeout, settle)
                for arrival in run.arrivals:
                    out(_describe(arrival))
                content = (run.reply or {}).get("content", {})
                status = content.get("status", "no reply")
                missing = _missing(cell, run)
                verdict = "ok" if status == "ok" and not missing else "FAILED"
                note = f"  missing: {missing}" if missing else ""
                out(f"    status={status}  {verdict}{note}")
                failures += verdict != "ok"
                outputs = [o for o in (to_nb_output(a.msg) for a in run.arrivals) if o]
                cells_out.append(
                    {
                        "cell_type": "code",
                        "execution_count": content.get("execution_count"),
                        "id": f"cell-{n - 1}",
                        "metadata": {},
                        "outputs": outputs,
                        "source": cell.source,
                    }
                )
        finally:
            kernel.stop()
            if failures or verbose:
                out("\n--- the kernel's own stdout/stderr ---")
                out(kernel.log().rstrip("\n") or "(empty)")
    if save:
        if kernel_name is None:
            kernel_name = "python3" if stock else DEFAULT_KERNEL_NAME
        kernelspec, installed = notebook_kernelspec(kernel_name)
        notebook = {
            "cells": cells_out,
            "metadata": {"kernelspec": kernelspec},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        with open(save, "w", encoding="utf-8") as f:
            json.dump(notebook, f, indent=1)
            f.write("\n")
        out(f"\nexecuted notebook written to {save} (kernelspec {kernel_name})")
        if not installed:
            launcher = "ipykernel" if stock else "iostream"
            default = "python3" if stock else DEFAULT_KERNEL_NAME
            name_option = "" if kernel_name == default else f" --name {kernel_name}"
            out(
                f"kernelspec {kernel_name} is not installed; to open the notebook on it, run: "
                f"python -m {launcher} install --user{name_option}"
            )
    out("")
    out(f"{len(DEMO_CELLS) - failures}/{len(DEMO_CELLS)} cells ok")
    return 1 if failures else 0
