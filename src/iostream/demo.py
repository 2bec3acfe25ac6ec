"""``python -m iostream demo``: run the demo notebook on a real iostream kernel.

Starts such a kernel (no installed kernelspec needed), runs :data:`DEMO_CELLS`
and prints what a frontend receives and when. The application layer, as
:mod:`iostream.cli`; nothing in the library imports it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .democells import DEMO_CELLS, DemoCell
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


_OUTPUT_TYPES = ("stream", "display_data", "update_display_data", "execute_result", "error")


def _to_nb_output(msg: dict[str, Any]) -> dict[str, Any] | None:
    """Convert an IOPub output message to an nbformat v4 output dict (None if not one)."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind in ("display_data", "update_display_data"):
        return {
            "output_type": "display_data",
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
        }
    if kind == "execute_result":
        return {
            "output_type": "execute_result",
            "execution_count": content.get("execution_count"),
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
        }
    if kind == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": content.get("traceback", []),
        }
    return None


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
    if len(body) > 110:
        body = body[:107] + "..."
    return f"    +{arrival.ms:9.1f} ms  {body}"


class _DemoRunner:
    """Runs cells on a started kernel client, bucketing IOPub output by parent msg_id."""

    def __init__(self, client: Any, log: Callable[[str], None]) -> None:
        self.client = client
        self.log = log
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
        elif msg["msg_type"] in _OUTPUT_TYPES:
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
    """Environment for the demo kernel: ours, with this iostream's directory importable."""
    env = dict(os.environ)
    import iostream

    pkg_parent = str(Path(next(iter(iostream.__path__))).resolve().parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pkg_parent not in parts:
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *parts])
    return env


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
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    failures = 0
    cells_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iostream-demo-") as tmp:
        name = "iostream-demo"
        spec_dir = write_kernelspec_dir(Path(tmp) / "kernels" / name, "iostream demo")
        if stock:
            spec = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
            spec["argv"] = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
        argv = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))["argv"]
        out(f"starting kernel: {' '.join(argv)}")
        # The kernel echoes fd-level output to its own terminal; keep that out of the report.
        log_path = Path(tmp) / "kernel.log"
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            km.start_kernel(env=_demo_env(), stdout=log, stderr=subprocess.STDOUT)
        client = km.client()
        try:
            client.start_channels()
            try:
                client.wait_for_ready(timeout=timeout)
            except (RuntimeError, TimeoutError) as e:
                out(f"kernel did not become ready: {e}")
                failures = len(DEMO_CELLS)
                return 1
            out(f"kernel ready after {1000 * (time.perf_counter() - started):.0f} ms")
            runner = _DemoRunner(client, out)
            for n, cell in enumerate(DEMO_CELLS, 1):
                out("")
                out(f"[{n}/{len(DEMO_CELLS)}] {cell.title}")
                for line in cell.source.splitlines():
                    out(f"    | {line}")
                run = runner.execute(cell, timeout, settle)
                for arrival in run.arrivals:
                    out(_describe(arrival))
                status = (run.reply or {}).get("content", {}).get("status", "no reply")
                missing = _missing(cell, run)
                verdict = "ok" if status == "ok" and not missing else "FAILED"
                note = f"  missing: {missing}" if missing else ""
                out(f"    status={status}  {verdict}{note}")
                failures += verdict != "ok"
                outputs = [o for o in (_to_nb_output(a.msg) for a in run.arrivals) if o]
                cells_out.append(
                    {
                        "cell_type": "code",
                        "execution_count": (run.reply or {})
                        .get("content", {})
                        .get("execution_count"),
                        "metadata": {},
                        "outputs": outputs,
                        "source": cell.source,
                    }
                )
        finally:
            client.stop_channels()
            km.shutdown_kernel(now=False)
            if failures or verbose:
                kernel_log = log_path.read_text(encoding="utf-8", errors="replace")
                out("\n--- the kernel's own stdout/stderr ---")
                out(kernel_log.rstrip("\n") or "(empty)")
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
        for i, c in enumerate(cells_out):
            c["id"] = f"cell-{i}"
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
