"""``python -m iostream``: run, install and demonstrate an IPython kernel that uses iostream.

Subcommands:

``kernel``
    Launch ipykernel's ``IPKernelApp`` with ``ipykernel.iostream`` resolving to this
    library. Every argument after ``kernel`` goes to ``IPKernelApp`` unchanged
    (``-f CONNECTION_FILE`` and any ``--IPKernelApp.*`` option).
``install``
    Write a Jupyter kernelspec whose ``argv`` is
    ``[sys.executable, "-m", "iostream", "kernel", "-f", "{connection_file}"]``.
``uninstall``
    Remove such a kernelspec again (run it before ``pip uninstall kernel-iostream``).
``demo``
    Start such a kernel (no installed kernelspec needed), run a built-in notebook that
    uses every output path, and print what a frontend receives and when.

This module is the application layer: it may import :mod:`iostream.integration`,
ipykernel and jupyter_client; nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_CELLS",
    "DemoCell",
    "build_parser",
    "install_kernelspec",
    "kernel_argv",
    "kernel_dict",
    "main",
    "prog_name",
    "run_demo",
    "run_kernel",
    "uninstall_kernelspec",
]

#: Default kernelspec name written by ``install``.
DEFAULT_KERNEL_NAME = "python3-iostream"
#: Default display name written by ``install``.
DEFAULT_DISPLAY_NAME = "Python 3 (iostream)"


# ---------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------


def run_kernel(kernel_args: Sequence[str]) -> int:
    """Run an IPython kernel in this process until it is shut down; return 0.

    Guarantees: :func:`iostream.integration.install` has run before
    ``ipykernel.kernelapp`` is imported, so the kernel's ``sys.stdout`` /
    ``sys.stderr`` and its IOPub thread are this library's classes. ``kernel_args`` is
    handed to ``IPKernelApp`` verbatim, and ``sys.argv`` is set to
    ``[sys.argv[0], *kernel_args]`` as under ``python -m ipykernel_launcher``. Like
    ipykernel's launcher, the current directory is removed from the front of
    ``sys.path`` while ipykernel loads (IPython puts it back for user code).
    """
    from iostream import integration

    integration.install()
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    sys.argv = [sys.argv[0], *kernel_args]

    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=list(kernel_args))
    return 0


# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------


def kernel_argv(executable: str | None = None) -> list[str]:
    """Return the kernelspec ``argv`` that launches an iostream kernel.

    Guarantees: ``[executable or sys.executable, "-m", "iostream", "kernel", "-f",
    "{connection_file}"]``; ``{connection_file}`` is left for jupyter_client to fill.
    """
    return [executable or sys.executable, "-m", "iostream", "kernel", "-f", "{connection_file}"]


def kernel_dict(display_name: str = DEFAULT_DISPLAY_NAME) -> dict[str, Any]:
    """Return the content of ``kernel.json`` for an iostream kernel.

    Guarantees: the same keys and metadata as the installed ipykernel's own kernelspec
    (``language: python``, ``metadata.debugger: true``, protocol version, ...) with
    ``argv`` from :func:`kernel_argv` and the given ``display_name``. Falls back to a
    fixed dict of that shape when ipykernel's helper is unavailable.
    """
    try:
        from ipykernel.kernelspec import get_kernel_dict

        spec: dict[str, Any] = dict(get_kernel_dict())
    except Exception:
        spec = {"language": "python", "metadata": {"debugger": True}}
    spec["argv"] = kernel_argv()
    spec["display_name"] = display_name
    spec["language"] = "python"
    metadata = dict(spec.get("metadata") or {})
    metadata.setdefault("debugger", True)
    spec["metadata"] = metadata
    return spec


def write_kernelspec_dir(path: Path, display_name: str = DEFAULT_DISPLAY_NAME) -> Path:
    """Create ``path`` as a kernelspec directory (``kernel.json`` plus logos) and return it.

    Guarantees: ``path/kernel.json`` holds :func:`kernel_dict`; ipykernel's logo files are
    copied next to it when ipykernel is installed. ``path`` must not exist yet.
    """
    try:
        from ipykernel.kernelspec import RESOURCES

        shutil.copytree(RESOURCES, path)
        path.chmod(path.stat().st_mode | 0o700)
    except Exception:
        path.mkdir(parents=True)
    with open(path / "kernel.json", "w", encoding="utf-8") as f:
        json.dump(kernel_dict(display_name), f, indent=1)
        f.write("\n")
    return path


def install_kernelspec(
    *,
    name: str = DEFAULT_KERNEL_NAME,
    display_name: str = DEFAULT_DISPLAY_NAME,
    user: bool = False,
    prefix: str | None = None,
) -> str:
    """Install the iostream kernelspec through jupyter_client; return the directory.

    Guarantees: the directory returned contains ``kernel.json`` from
    :func:`kernel_dict`; it is ``PREFIX/share/jupyter/kernels/NAME`` with ``prefix``, the
    per-user kernels directory with ``user``, otherwise the system-wide one (which may
    raise :class:`PermissionError`). An existing spec of the same name is replaced.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="iostream-kernelspec-") as tmp:
        src = write_kernelspec_dir(Path(tmp) / name, display_name)
        dest: str = KernelSpecManager().install_kernel_spec(
            str(src), kernel_name=name, user=user, prefix=prefix
        )
    return dest


def kernels_dir(*, user: bool = False, prefix: str | None = None) -> Path:
    """Return the kernelspec directory that ``install`` writes to for these options.

    Guarantees: the per-user kernels directory with ``user``, else
    ``PREFIX/share/jupyter/kernels`` with ``prefix``, otherwise the system-wide one, as
    :func:`install_kernelspec` (jupyter_client) chooses them. Reads nothing on disk.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH

    if user:
        return Path(KernelSpecManager().user_kernel_dir)
    if prefix:
        return Path(os.path.abspath(prefix)) / "share" / "jupyter" / "kernels"
    return Path(SYSTEM_JUPYTER_PATH[0]) / "kernels"


def is_iostream_kernelspec(spec_dir: Path) -> bool:
    """Return whether ``spec_dir/kernel.json`` launches an iostream kernel.

    Guarantees: True only when its ``argv`` runs ``-m iostream kernel`` (what
    :func:`kernel_argv` writes); False for unreadable or other kernelspecs.
    """
    try:
        spec = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
        argv = list(spec["argv"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(argv[i : i + 3] == ["-m", "iostream", "kernel"] for i in range(len(argv)))


def uninstall_kernelspec(
    *,
    name: str = DEFAULT_KERNEL_NAME,
    user: bool = False,
    prefix: str | None = None,
    anywhere: bool = False,
) -> Path:
    """Remove an installed iostream kernelspec; return the directory removed.

    Guarantees: with ``anywhere`` the spec removed is the one Jupyter finds under
    ``name`` (the first in its search path, as ``jupyter kernelspec uninstall`` does);
    otherwise it is ``NAME`` in :func:`kernels_dir` for ``user``/``prefix``, the place
    ``install`` wrote it. Raises :class:`FileNotFoundError` when there is no such
    kernelspec and :class:`ValueError` (removing nothing) when the kernelspec found
    does not launch an iostream kernel, so another kernel's spec is never removed.
    """
    if anywhere:
        from jupyter_client.kernelspec import KernelSpecManager

        found = KernelSpecManager().find_kernel_specs().get(name.lower())
        if found is None:
            raise FileNotFoundError(f"no kernelspec named {name!r} is installed")
        spec_dir = Path(found)
    else:
        spec_dir = kernels_dir(user=user, prefix=prefix) / name
        if not (spec_dir / "kernel.json").is_file():
            raise FileNotFoundError(f"no kernelspec named {name!r} in {spec_dir.parent}")
    if not is_iostream_kernelspec(spec_dir):
        raise ValueError(
            f"{spec_dir} is not an iostream kernelspec (its argv does not run "
            "'-m iostream kernel'); remove it with 'jupyter kernelspec uninstall' instead"
        )
    shutil.rmtree(spec_dir)
    return spec_dir


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoCell:
    """One cell of the demo notebook and what its output must contain."""

    title: str
    source: str
    #: substrings that must occur in the cell's stdout / stderr text
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()
    #: MIME types that must occur among the cell's display_data outputs
    mimetypes: tuple[str, ...] = ()


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


DEMO_CELLS: tuple[DemoCell, ...] = (
    DemoCell(
        "which stream class",
        _src(
            """
            import sys
            print(type(sys.stdout).__module__ + "." + type(sys.stdout).__qualname__)
            """
        ),
        stdout=("OutStream",),
    ),
    DemoCell(
        "print from the main thread",
        'print("hello from the main thread")',
        stdout=("hello from the main thread\n",),
    ),
    DemoCell(
        "sys.stdout.write without newline",
        'sys.stdout.write("no newline at the end")',
        stdout=("no newline at the end",),
    ),
    DemoCell(
        "stdout and stderr interleaved",
        _src(
            """
            for i in range(3):
                print(f"out {i}")
                print(f"err {i}", file=sys.stderr)
            """
        ),
        stdout=("out 0\n", "out 1\n", "out 2\n"),
        stderr=("err 0\n", "err 1\n", "err 2\n"),
    ),
    DemoCell(
        "unicode, including astral characters",
        'print("h\\u00e9llo \\u2713 \\u65e5\\u672c\\u8a9e \\U0001f40d \\U0001d518\\U0001d52b")',
        stdout=("h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f40d \U0001d518\U0001d52b\n",),
    ),
    DemoCell(
        "a thread printing",
        _src(
            """
            import threading
            t = threading.Thread(target=print, args=("from a thread",))
            t.start()
            t.join()
            """
        ),
        stdout=("from a thread\n",),
    ),
    DemoCell(
        "an asyncio task printing",
        _src(
            """
            import asyncio

            async def task():
                await asyncio.sleep(0.01)
                print("from an asyncio task")

            await asyncio.create_task(task())
            """
        ),
        stdout=("from an asyncio task\n",),
    ),
    DemoCell(
        "subprocess.run",
        'import subprocess\nsubprocess.run(["echo", "from subprocess.run"], check=True);',
        stdout=("from subprocess.run\n",),
    ),
    DemoCell(
        "os.system", 'import os\nos.system("echo from os.system");', stdout=("from os.system\n",)
    ),
    DemoCell(
        "C-level printf via ctypes",
        _src(
            """
            import ctypes
            libc = ctypes.CDLL(None)
            libc.printf(b"from C printf\\n")
            libc.fflush(None);
            """
        ),
        stdout=("from C printf\n",),
    ),
    DemoCell(
        "multiprocessing fork Pool.map printing in workers",
        _src(
            """
            import multiprocessing

            def work(i):
                print(f"worker item {i}")
                return i * i

            with multiprocessing.get_context("fork").Pool(2) as pool:
                print(pool.map(work, range(4)))
            """
        ),
        stdout=(*(f"worker item {i}\n" for i in range(4)), "[0, 1, 4, 9]\n"),
    ),
    DemoCell(
        "\\r progress bar, flushed every step",
        _src(
            """
            import time
            for i in range(11):
                print(f"\\rprogress {10 * i:3d}%", end="", flush=True)
                time.sleep(0.03)
            print()
            """
        ),
        stdout=("\rprogress 100%",),
    ),
    DemoCell(
        "IPython.display interleaved with print",
        _src(
            """
            from IPython.display import HTML, Markdown, display
            print("before the displays")
            display(Markdown("**markdown**"))
            print("between the displays")
            display(HTML("<b>html</b>"))
            print("after the displays")
            """
        ),
        stdout=("before the displays\n", "between the displays\n", "after the displays\n"),
        mimetypes=("text/markdown", "text/html"),
    ),
)


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


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------


def prog_name(argv0: str | None = None) -> str:
    """Return the program name for usage lines: how the user started this command.

    Guarantees: ``"python -m iostream"`` when ``argv0`` (default ``sys.argv[0]``) is the
    package's ``__main__.py`` (or empty, ``-c``, ``-m``), else the file name of
    ``argv0`` without ``.exe``, e.g. ``kernel-iostream`` for the console script.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    base = os.path.basename(argv0)
    if base in ("", "-c", "-m", "__main__.py", "__main__"):
        return "python -m iostream"
    return base[:-4] if base.lower().endswith(".exe") else base


def _add_location_options(parser: argparse.ArgumentParser, verb: str, into: str) -> None:
    """Add ``--user``/``--sys-prefix``/``--prefix`` (mutually exclusive) and ``--name``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--user",
        action="store_true",
        help=f"{verb} {into} the current user's kernels (~/.local/share/jupyter/kernels on Linux)",
    )
    where.add_argument(
        "--sys-prefix",
        action="store_true",
        help=f"{verb} {into} sys.prefix (the current virtualenv or conda env)",
    )
    where.add_argument(
        "--prefix", metavar="PREFIX", help=f"{verb} {into} PREFIX/share/jupyter/kernels"
    )
    parser.add_argument(
        "--name", default=DEFAULT_KERNEL_NAME, help="kernelspec name (default: %(default)s)"
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the command-line parser (with every subcommand's help).

    Guarantees: usage and help lines name ``prog`` (default :func:`prog_name`), so the
    ``kernel-iostream`` script and ``python -m iostream`` each describe themselves.
    """
    parser = argparse.ArgumentParser(
        prog=prog_name() if prog is None else prog,
        description=(
            "Run an IPython kernel whose stdout/stderr capture is kernel-iostream instead of "
            "ipykernel.iostream, install it as a Jupyter kernelspec, or demonstrate it."
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              %(prog)s install --user     # then pick "Python 3 (iostream)" in Jupyter
              %(prog)s demo               # see every output path end to end
              %(prog)s kernel -f conn.json  # what the kernelspec runs
              %(prog)s uninstall --user   # remove the kernelspec again

            '%(prog)s COMMAND --help' describes each command.
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser(
        "kernel",
        help="launch the kernel (what a kernelspec runs)",
        description=(
            "Launch ipykernel's IPKernelApp with ipykernel.iostream replaced by "
            "kernel-iostream. Every argument after 'kernel' is passed to IPKernelApp "
            "unchanged, e.g. '-f CONNECTION_FILE', '--IPKernelApp.capture_fd_output=False' "
            "or '--debug'; run '%(prog)s --help-all' for IPKernelApp's own options."
        ),
        usage="%(prog)s -f CONNECTION_FILE [IPKernelApp options ...]",
    )

    install = sub.add_parser(
        "install",
        help="install a Jupyter kernelspec that runs this kernel",
        description=(
            "Install a kernelspec whose argv is "
            "[sys.executable, -m, iostream, kernel, -f, {connection_file}], "
            "then print the directory it was written to. Without --user, --sys-prefix or "
            "--prefix it goes to the system-wide kernels directory."
        ),
    )
    _add_location_options(install, "install", "into")
    install.add_argument(
        "--display-name",
        default=DEFAULT_DISPLAY_NAME,
        help="name shown in frontends (default: %(default)s)",
    )

    uninstall = sub.add_parser(
        "uninstall",
        help="remove the kernelspec that install wrote",
        description=(
            "Remove an iostream kernelspec and print the directory removed. With --user, "
            "--sys-prefix or --prefix it is removed from there (where install put it); "
            "without them, the one Jupyter finds under --name is removed. A kernelspec "
            "that does not run an iostream kernel is left alone. Run it before "
            "'pip uninstall kernel-iostream'; afterwards use "
            "'jupyter kernelspec uninstall NAME'."
        ),
    )
    _add_location_options(uninstall, "remove", "from")

    demo = sub.add_parser(
        "demo",
        help="run a built-in notebook on the kernel and show what a frontend receives",
        description=(
            "Start the kernel through jupyter_client (no installed kernelspec needed), run a "
            "built-in notebook exercising every output path (print, write without newline, "
            "stderr, unicode, threads, asyncio, subprocess, os.system, C printf, fork Pool, "
            "\\r progress bar, IPython.display), and print each output with the "
            "milliseconds since its execute_request was sent. Exit status 0 if every cell "
            "succeeded and produced its expected output."
        ),
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds allowed for kernel startup and for each cell (default: %(default)s)",
    )
    demo.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="extra seconds to wait after a cell goes idle for output still "
        "in flight (default: %(default)s)",
    )
    demo.add_argument(
        "--save", metavar="NOTEBOOK.ipynb", help="also write the executed notebook to this file"
    )
    demo.add_argument(
        "--kernel-name",
        metavar="NAME",
        help="kernelspec the saved notebook opens on (default: "
        f"{DEFAULT_KERNEL_NAME}, the one install writes; python3 with --stock)",
    )
    demo.add_argument(
        "--stock",
        action="store_true",
        help="run the same notebook on stock ipykernel (-m ipykernel_launcher), for comparison",
    )
    demo.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print the kernel process's own stdout/stderr (its terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m iostream`` and the ``kernel-iostream`` script.

    Guarantees: returns the process exit status (0 on success) instead of exiting,
    except that argparse exits with status 2 on bad arguments and after ``--help``.
    ``kernel`` arguments other than ``-h``/``--help`` are not parsed here but passed on.
    ``uninstall`` returns 1, with the reason on stderr, when there is nothing to remove.
    Main thread.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    if args and args[0] == "kernel" and not ({"-h", "--help"} & set(args[1:])):
        return run_kernel(args[1:])
    ns = parser.parse_args(args)
    if ns.command == "kernel":  # only reached for 'kernel --help', which exits
        return 0
    if ns.command in ("install", "uninstall"):
        prefix = sys.prefix if ns.sys_prefix else ns.prefix
        if ns.command == "install":
            dest = install_kernelspec(
                name=ns.name, display_name=ns.display_name, user=ns.user, prefix=prefix
            )
            print(f"Installed kernelspec {ns.name} in {dest}")
            return 0
        try:
            removed = uninstall_kernelspec(
                name=ns.name,
                user=ns.user,
                prefix=prefix,
                anywhere=not (ns.user or prefix),
            )
        except (FileNotFoundError, ValueError) as e:
            print(f"{parser.prog} uninstall: {e}", file=sys.stderr)
            return 1
        print(f"Removed kernelspec {ns.name} from {removed}")
        return 0
    if ns.command == "demo":
        return run_demo(
            timeout=ns.timeout,
            settle=ns.settle,
            save=ns.save,
            stock=ns.stock,
            verbose=ns.verbose,
            kernel_name=ns.kernel_name,
        )
    parser.error(f"unknown command {ns.command!r}")
    return 2
