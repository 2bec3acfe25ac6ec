"""Run notebooks in a real JupyterLab, in headless Chromium, and read their outputs from the DOM.

A small harness shared by the browser tests and the screenshot script (and meant to be
importable by a benchmark): nothing here asserts anything about kernel-iostream.

- :class:`JupyterLab` starts a real ``jupyter lab`` process on ``127.0.0.1`` with a free
  port, token auth and every Jupyter directory in a temporary base directory (config,
  data, runtime, settings, workspaces, ``JUPYTER_PATH``), so the user's own
  configuration is never read or written. IOPub rate limits are raised so large
  outputs are not dropped; news, update checks and the extension manager are off.
- :func:`write_kernelspecs` writes the kernelspecs the tests use into that
  ``JUPYTER_PATH``: ``iostream``, ``iostream-optin`` (``--thread-inherit-context``) and a
  stock ``python3`` (``ipykernel_launcher``).
- :func:`write_notebook` writes an ``.ipynb`` (nbformat) bound to a kernelspec.
- :func:`launch_chromium` starts Debian's ``/usr/bin/chromium`` through Playwright.
- :class:`NotebookPage` opens a notebook in a page, checks its kernel, runs all cells
  (``notebook:run-all-cells``), waits until they have finished and reads every cell's
  outputs from the DOM (``data-mime-type`` of each ``.jp-OutputArea-output``).

Every wait is bounded; every failure raises :class:`LabError` with what was seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

#: Debian's Chromium; Playwright never downloads a browser here.
CHROMIUM = Path("/usr/bin/chromium")
#: Flags for headless Chromium in a container, offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

STDOUT_MIME = "application/vnd.jupyter.stdout"
STDERR_MIME = "application/vnd.jupyter.stderr"

#: Kernelspec names written by :func:`write_kernelspecs`.
IOSTREAM_KERNEL = "iostream"
OPTIN_KERNEL = "iostream-optin"
STOCK_KERNEL = "python3"
#: The ``python -m iostream kernel`` option of the opt-in kernelspec.
THREAD_INHERIT_FLAG = "--thread-inherit-context"

#: Environment variables not passed on to JupyterLab (and so to its kernels):
#: pytest's marker makes ipykernel turn fd capture off; PYTHONUNBUFFERED makes every
#: child process write a line in pieces, which a Jupyter server does not do.
DROPPED_ENV = ("PYTEST_CURRENT_TEST", "PYTHONUNBUFFERED")


class LabError(RuntimeError):
    """JupyterLab, the browser or a notebook did not get where it was expected to."""


def missing_requirements() -> str | None:
    """Return why the browser suite cannot run here, or None when it can.

    Guarantees: None only when ``/usr/bin/chromium`` exists and both ``playwright`` and
    ``jupyterlab`` are importable by this interpreter. Imports nothing else.
    """
    import importlib.util

    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    for module in ("playwright", "jupyterlab", "nbformat"):
        if importlib.util.find_spec(module) is None:
            return f"python package {module!r} is not installed (pip install jupyterlab playwright)"
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------
# kernelspecs and notebooks
# ---------------------------------------------------------------------------


def _write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return path


def write_kernelspecs(kernels_dir: Path) -> dict[str, Path]:
    """Write the three kernelspecs into ``kernels_dir``; return {name: directory}.

    Guarantees:

    - ``iostream``: written by :func:`iostream.app.kernelspec.write_kernelspec_dir`, so its
      ``argv`` is :func:`iostream.app.kernelspec.kernel_argv` (``python -m iostream kernel``).
    - ``iostream-optin``: the same, with ``--thread-inherit-context`` inserted right
      after ``kernel`` in ``argv``.
    - ``python3``: stock ipykernel, ``sys.executable -m ipykernel_launcher -f
      {connection_file}``.

    Every ``argv`` uses this interpreter (``sys.executable``).
    """
    from iostream.app.kernelspec import kernel_dict, write_kernelspec_dir

    kernels_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out[IOSTREAM_KERNEL] = write_kernelspec_dir(
        kernels_dir / IOSTREAM_KERNEL, display_name="Python 3 (iostream)"
    )

    optin = write_kernelspec_dir(
        kernels_dir / OPTIN_KERNEL, display_name="Python 3 (iostream, thread-inherit-context)"
    )
    spec = json.loads((optin / "kernel.json").read_text(encoding="utf-8"))
    argv = [a for a in spec["argv"] if a != THREAD_INHERIT_FLAG]
    argv.insert(argv.index("kernel") + 1, THREAD_INHERIT_FLAG)
    spec["argv"] = argv
    out[OPTIN_KERNEL] = _write_spec(optin, spec)

    stock = dict(kernel_dict("Python 3 (ipykernel)"))
    stock["argv"] = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    out[STOCK_KERNEL] = _write_spec(kernels_dir / STOCK_KERNEL, stock)
    return out


@dataclass(frozen=True)
class Cell:
    """One code cell of a notebook to write: its source and cell metadata."""

    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def write_notebook(
    path: Path, cells: Sequence[Cell | str], kernel_name: str, display_name: str | None = None
) -> Path:
    """Write an nbformat 4 notebook of code cells bound to kernelspec ``kernel_name``.

    Guarantees: ``metadata.kernelspec`` is ``{"name": kernel_name, "display_name": ...,
    "language": "python"}``, so JupyterLab starts that kernel without asking; the
    notebook validates; parent directories are created. Returns ``path``.
    """
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": kernel_name,
        "display_name": display_name or kernel_name,
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for c in cells:
        cell = c if isinstance(c, Cell) else Cell(c)
        nb.cells.append(new_code_cell(cell.source, metadata=dict(cell.metadata)))
    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


# ---------------------------------------------------------------------------
# the JupyterLab server
# ---------------------------------------------------------------------------

#: JupyterLab user settings written for every run (plugin id -> settings).
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    # Every cell stays in the DOM, and every output of a cell is rendered.
    # (A maxNumberOutputs of 0 shows no output at all in JupyterLab 4.6.)
    "@jupyterlab/notebook-extension/tracker": {
        "windowingMode": "none",
        "maxNumberOutputs": 100000,
        "scrollPastEnd": False,
    },
    # No news, no update check, no toasts asking about them.
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # The extension manager would query a package index.
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
    # The tests do not need the outputs written back to the .ipynb.
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


class JupyterLab:
    """A ``jupyter lab`` process of its own, isolated in ``base`` (a new directory).

    Layout under ``base``: ``root/`` (the server's root dir; notebooks go here),
    ``config/``, ``data/``, ``runtime/``, ``ipython/``, ``settings/``, ``workspaces/``,
    ``jupyter_path/kernels/`` (kernelspecs, found first through ``JUPYTER_PATH``) and
    ``lab.log`` (the server's output).

    Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        base: Path,
        *,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        self.base = base
        self.root_dir = base / "root"
        self.kernels_dir = base / "jupyter_path" / "kernels"
        self.settings_dir = base / "settings"
        self.log_path = base / "lab.log"
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.python = python or sys.executable
        self.token = secrets.token_hex(24)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- derived -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, notebook: str, workspace: str) -> str:
        """The URL that opens ``notebook`` (relative to the root dir) in a fresh workspace.

        Guarantees: the workspace ``workspace`` is reset (``?reset``), so nothing a
        previous page left open comes back; the token authenticates the page.
        """
        return (
            f"{self.base_url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"
        )

    def env(self) -> dict[str, str]:
        """The environment of the server process (and so of its kernels).

        Guarantees: every ``JUPYTER_*`` directory and ``IPYTHONDIR`` point into
        ``base``; ``JUPYTER_PATH`` is ``base/jupyter_path`` alone; the directory holding the
        ``iostream`` package imported here is first on ``PYTHONPATH`` (so kernels run
        the code under test); :data:`DROPPED_ENV` variables are removed.
        """
        import iostream

        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        env.update(
            JUPYTER_CONFIG_DIR=str(self.base / "config"),
            JUPYTER_DATA_DIR=str(self.base / "data"),
            JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
            JUPYTER_PATH=str(self.base / "jupyter_path"),
            IPYTHONDIR=str(self.base / "ipython"),
            JUPYTER_TOKEN=self.token,
        )
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        pkg_parent = str(Path(iostream.__file__).resolve().parent.parent)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != pkg_parent]
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *parts])
        return env

    def argv(self) -> list[str]:
        """The command line of the server process."""
        args = [
            self.python,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False",
            f"--LabApp.user_settings_dir={self.settings_dir}",
            f"--LabApp.workspaces_dir={self.base / 'workspaces'}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
            "--KernelSpecManager.ensure_native_kernel=False",
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=1e12",
            "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=1e12",
            "--ZMQChannelsWebsocketConnection.rate_limit_window=1",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-root")
        return [*args, *self.extra_args]

    # -- lifecycle ---------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory layout, the user settings and the kernelspecs."""
        for d in ("root", "config", "data", "runtime", "ipython", "workspaces"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        for plugin, values in LAB_SETTINGS.items():
            f = self.settings_dir / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values, indent=1), encoding="utf-8")
        if not self.kernels_dir.exists():
            write_kernelspecs(self.kernels_dir)

    def start(self, attempts: int = 3) -> JupyterLab:
        """Start the server and wait until ``/api/status`` answers with the token.

        Guarantees: on return the server answers on :attr:`base_url` and knows the
        kernelspecs of :func:`write_kernelspecs`. A server that exits before answering
        (e.g. its port was taken meanwhile) is retried on a new port, ``attempts`` times
        in all; otherwise :class:`LabError` with the end of ``lab.log``.
        """
        self.prepare()
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                cwd=self.root_dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self._wait_ready()
                return self
            except LabError as e:
                last = str(e)
                self.stop()
        raise LabError(f"jupyter lab did not start after {attempts} attempts: {last}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LabError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status = self.api("/api/status")
                specs = self.api("/api/kernelspecs")["kernelspecs"]
            except (OSError, ValueError):
                time.sleep(0.25)
                continue
            if isinstance(status, dict) and IOSTREAM_KERNEL in specs:
                return
            time.sleep(0.25)
        raise LabError(
            f"jupyter lab did not answer /api/status within {self.startup_timeout:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down every kernel, then the server; bounded, idempotent.

        Guarantees: on return the server process (and its process group, so its
        kernels) has exited: asked with DELETE /api/kernels/ID and SIGTERM first,
        killed with SIGKILL after ``timeout`` seconds.
        """
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                for k in self.api("/api/kernels"):
                    self.api(f"/api/kernels/{k['id']}", method="DELETE", timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc is not None:
            # Kernels are in the server's process group; make sure none is left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST --------------------------------------------------------------

    def api(self, path: str, method: str = "GET", timeout: float = 10.0) -> Any:
        """Call the server's REST API with the token; return the decoded JSON (or None).

        Raises :class:`OSError` (``urllib.error.URLError``) when the server does not
        answer or answers with an error status.
        """
        req = urllib.request.Request(
            self.base_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 6000) -> str:
        """The last ``chars`` characters of the server's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-chars:]


# ---------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------


def launch_chromium(playwright: Playwright, *, slow_mo: float = 0) -> Browser:
    """Launch Debian's headless Chromium (:data:`CHROMIUM`) through Playwright.

    Guarantees: never a downloaded browser; :data:`CHROMIUM_ARGS`; Playwright gives it
    a temporary profile, and every :meth:`Browser.new_context` is a fresh one.
    """
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, slow_mo=slow_mo
    )


@dataclass(frozen=True)
class Output:
    """One rendered output of a cell, as the DOM shows it."""

    #: ``data-mime-type`` of the rendered output element (e.g. STDOUT_MIME)
    mime: str
    #: its ``textContent`` (for streams: after JupyterLab processed ``\\r`` and ``\\b``)
    text: str

    @property
    def stream(self) -> str | None:
        """``"stdout"``, ``"stderr"`` or None for other outputs."""
        return {STDOUT_MIME: "stdout", STDERR_MIME: "stderr"}.get(self.mime)


@dataclass(frozen=True)
class CellView:
    """One code cell as the DOM shows it after the run."""

    index: int
    #: the number in the input prompt (``[3]:``), None when not executed
    execution_count: int | None
    outputs: tuple[Output, ...]

    def stream_text(self, name: str) -> str:
        """All text of stream ``name`` (``stdout``/``stderr``) in this cell, in order."""
        return "".join(o.text for o in self.outputs if o.stream == name)

    def streams(self) -> list[tuple[str, str]]:
        """``(stream, text)`` of every output in DOM order (``other:MIME`` for non-streams)."""
        return [(o.stream or f"other:{o.mime}", o.text) for o in self.outputs]


@dataclass
class Gate:
    """Create ``path`` once ``text`` is rendered in cell ``cell`` while it is still running.

    A cell that waits for ``path`` before going on proves, deterministically, that its
    earlier output reached the page before the cell finished. :attr:`opened` tells
    whether (and :attr:`opened_while_running` that it was seen while running).
    """

    cell: int
    text: str
    path: Path
    opened: bool = False
    opened_while_running: bool = False


#: JavaScript helpers run in the page. ``panel()`` is the notebook panel of the page.
_JS_PRELUDE = """
const app = window.jupyterapp;
const panel = () => {
  const w = app && app.shell && app.shell.currentWidget;
  return w && w.content && w.sessionContext ? w : null;
};
const promptOf = (cell) => {
  const p = cell.querySelector('.jp-InputArea-prompt');
  const m = p ? p.textContent.match(/\\[\\s*(\\d+|\\*)?\\s*\\]/) : null;
  if (!m || m[1] === undefined) return null;
  return m[1] === '*' ? '*' : parseInt(m[1], 10);
};
const codeCells = (p) => Array.from(p.content.node.querySelectorAll('.jp-Cell.jp-CodeCell'));
const outputsOf = (cell) => Array.from(cell.querySelectorAll('.jp-OutputArea-child')).map((c) => {
  const o = c.querySelector('.jp-OutputArea-output');
  const typed = o && (o.hasAttribute('data-mime-type') ? o : o.querySelector('[data-mime-type]'));
  const el = typed || o || c;
  return {mime: el.getAttribute('data-mime-type') || '', text: el.textContent || ''};
});
"""

_JS_STATE = (
    "(args) => {"
    + _JS_PRELUDE
    + """
  const p = panel();
  if (!p) return {ready: false};
  const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
  const cells = codeCells(p).map((cell, i) => {
    const outs = cell.querySelectorAll('.jp-OutputArea-output');
    let chars = 0;
    for (const o of outs) chars += (o.textContent || '').length;
    return {prompt: promptOf(cell), outputs: outs.length, chars: chars};
  });
  const all = codeCells(p);
  const probes = (args.probes || []).map(([i, text]) => {
    const area = all[i] && all[i].querySelector('.jp-OutputArea');
    return Boolean(area && area.textContent.includes(text));
  });
  const dialog = document.querySelector('.jp-Dialog');
  return {
    ready: true,
    kernel: kernel ? kernel.name : null,
    status: kernel ? kernel.status : null,
    connection: kernel ? kernel.connectionStatus : null,
    dialog: dialog ? dialog.textContent.slice(0, 500) : null,
    cells: cells,
    probes: probes,
  };
}"""
)

_JS_READ = (
    "() => {"
    + _JS_PRELUDE
    + """
  const p = panel();
  return codeCells(p).map((cell) => ({prompt: promptOf(cell), outputs: outputsOf(cell)}));
}"""
)


class NotebookPage:
    """A notebook opened in its own browser context, run and read through the DOM.

    ``kernel_name`` is the kernelspec the notebook must run on; :meth:`open` fails when
    JupyterLab picked another one.
    """

    def __init__(
        self,
        browser: Browser,
        lab: JupyterLab,
        notebook: str,
        kernel_name: str,
        *,
        viewport: tuple[int, int] = (1280, 1000),
        device_scale_factor: float = 1,
    ) -> None:
        self.lab = lab
        self.notebook = notebook
        self.kernel_name = kernel_name
        self.context: BrowserContext = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            device_scale_factor=device_scale_factor,
        )
        self.page: Page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.last_state: dict[str, Any] = {}

    def close(self) -> None:
        """Close the page's browser context (the kernel is left to the server)."""
        with contextlib.suppress(Exception):
            self.context.close()

    def __enter__(self) -> NotebookPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------

    def state(self, probes: Sequence[tuple[int, str]] = ()) -> dict[str, Any]:
        """A small snapshot: kernel name/status, any dialog, and per code cell its prompt
        (int, ``"*"`` or None), output count, text length and the ``probes`` found."""
        st: dict[str, Any] = self.page.evaluate(_JS_STATE, {"probes": [list(p) for p in probes]})
        self.last_state = st
        return st

    def open(self, timeout: float = 120.0) -> None:
        """Load the notebook and wait until its kernel ``kernel_name`` is idle.

        Guarantees: on return the page shows the notebook with a kernel of the
        expected kernelspec connected and idle. A kernel-selection dialog, if one
        appears, is dismissed and the kernel is chosen through the session API.
        Raises :class:`LabError` otherwise, within ``timeout`` seconds.
        """
        workspace = f"ws-{secrets.token_hex(6)}"
        self.page.goto(
            self.lab.lab_url(self.notebook, workspace),
            wait_until="domcontentloaded",
            timeout=timeout * 1000,
        )
        deadline = time.monotonic() + timeout
        self.page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout * 1000
        )
        self.page.evaluate("async () => { await window.jupyterapp.restored; }")
        started = time.monotonic()
        dismissed = changed = False
        while True:
            st = self.state()
            if st.get("dialog"):
                # A kernel selection (or other) dialog: dismiss it; the kernel is set below.
                self.page.locator(".jp-Dialog .jp-mod-reject, .jp-Dialog button").first.click()
                dismissed = True
                time.sleep(0.3)
                continue
            kernel = st.get("kernel")
            if st.get("ready") and kernel == self.kernel_name:
                if st.get("status") == "idle" and st.get("connection") == "connected":
                    return
                if st.get("status") == "dead":
                    raise LabError(
                        f"kernel {self.kernel_name!r} died on start:\n{self.lab.log_tail()}"
                    )
            elif st.get("ready") and kernel is not None and changed:
                raise LabError(f"the notebook runs on kernel {kernel!r}, not {self.kernel_name!r}")
            elif (
                st.get("ready")
                and not changed
                and (dismissed or kernel is not None or time.monotonic() - started > 30)
            ):
                # JupyterLab chose another kernel, asked, or started none: choose it.
                self.page.evaluate(
                    "async (name) => { await window.jupyterapp.shell.currentWidget"
                    ".sessionContext.changeKernel({name}); }",
                    self.kernel_name,
                )
                changed = True
            if time.monotonic() > deadline:
                raise LabError(f"kernel {self.kernel_name!r} not idle after {timeout:.0f} s: {st}")
            time.sleep(0.25)

    # -- running -----------------------------------------------------------

    def run_all(
        self,
        *,
        marker: str,
        timeout: float = 180.0,
        gates: Sequence[Gate] = (),
        settle_polls: int = 3,
        poll: float = 0.25,
    ) -> list[CellView]:
        """Run all cells and wait until they have finished; return every code cell's view.

        Finished means: every code cell's prompt shows an execution count, the kernel
        is idle, the last code cell's output contains ``marker``, and the page's
        outputs did not change over ``settle_polls`` consecutive polls. Meanwhile each
        :class:`Gate` whose text is rendered in its cell while that cell has no
        execution count yet gets its file created. Raises :class:`LabError` when the
        kernel dies, a dialog appears, or ``timeout`` seconds pass.
        """
        # Not awaited: the command's promise settles only once every cell has run.
        self.page.evaluate(
            "() => { const app = window.jupyterapp;"
            " app.shell.activateById(app.shell.currentWidget.id);"
            " void app.commands.execute('notebook:run-all-cells'); }"
        )
        probes = [(g.cell, g.text) for g in gates]
        deadline = time.monotonic() + timeout
        stable = 0
        previous: Any = None
        while True:
            st = self.state(probes)
            cells = st.get("cells") or []
            for g, seen in zip(gates, st.get("probes") or [False] * len(gates), strict=True):
                if seen and not g.opened:
                    g.opened_while_running = not isinstance(cells[g.cell]["prompt"], int)
                    g.path.touch()
                    g.opened = True
            if st.get("dialog"):
                raise LabError(f"a dialog appeared during the run: {st['dialog']!r}")
            if st.get("status") in ("dead",) or st.get("connection") == "disconnected":
                raise LabError(f"the kernel died during the run: {st}")
            done = (
                bool(cells)
                and all(isinstance(c["prompt"], int) for c in cells)
                and st.get("status") == "idle"
            )
            if done:
                snapshot = [(c["prompt"], c["outputs"], c["chars"]) for c in cells]
                stable = stable + 1 if snapshot == previous else 0
                previous = snapshot
                if stable >= settle_polls:
                    views = self.read()
                    if marker in views[-1].stream_text("stdout"):
                        return views
            if time.monotonic() > deadline:
                raise LabError(f"the notebook did not finish within {timeout:.0f} s: {st}")
            time.sleep(poll)

    def read(self) -> list[CellView]:
        """Every code cell's execution count and outputs, read from the DOM, in order."""
        raw = self.page.evaluate(_JS_READ)
        return [
            CellView(
                index=i,
                execution_count=c["prompt"] if isinstance(c["prompt"], int) else None,
                outputs=tuple(Output(o["mime"], o["text"]) for o in c["outputs"]),
            )
            for i, c in enumerate(raw)
        ]

    # -- diagnosis and pictures -------------------------------------------

    def dump(self, directory: Path, name: str) -> list[Path]:
        """Write the page's HTML, a screenshot, the console, the last state and the
        server log tail into ``directory`` (``NAME.*``); return the files written.

        Never raises: what cannot be written is skipped.
        """
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        items: list[tuple[str, Any]] = [
            ("html", lambda: self.page.content()),
            ("console.txt", lambda: "\n".join(self.console)),
            ("state.json", lambda: json.dumps(self.last_state, indent=1)),
            ("lab.log", self.lab.log_tail),
        ]
        for suffix, get in items:
            with contextlib.suppress(Exception):
                p = directory / f"{name}.{suffix}"
                p.write_text(get(), encoding="utf-8")
                written.append(p)
        with contextlib.suppress(Exception):
            p = directory / f"{name}.png"
            self.page.screenshot(path=str(p), full_page=True, timeout=30_000)
            written.append(p)
        return written

    def screenshot_notebook(self, path: Path, width: int = 1200, max_height: int = 16000) -> Path:
        """Screenshot the whole notebook pane, every cell, at ``width`` CSS pixels wide.

        Guarantees: side panels are collapsed, the first cell is made active and the
        viewport is made tall enough (up to ``max_height``) that the notebook does not
        scroll, so one picture shows all of it from the top. Writes a PNG to ``path``
        and returns it.
        """
        self.page.evaluate(
            "() => { const s = window.jupyterapp.shell; s.collapseLeft(); s.collapseRight();"
            " const p = s.currentWidget; p.content.activeCellIndex = 0; p.content.mode = 'command';"
            " if (document.activeElement) { document.activeElement.blur(); } }"
        )
        scroller = (
            "window.jupyterapp.shell.currentWidget.content.node"
            ".querySelector('.jp-WindowedPanel-outer')"
        )
        height = 1000
        for _ in range(4):
            self.page.set_viewport_size({"width": width, "height": height})
            self.page.wait_for_timeout(400)
            overflow = int(
                self.page.evaluate(
                    f"() => {{ const e = {scroller}; e.scrollTop = 0;"
                    " return e.scrollHeight - e.clientHeight; }"
                )
            )
            if overflow <= 0 or height >= max_height:
                break
            height = min(max_height, height + overflow + 20)
        self.page.wait_for_timeout(300)
        self.page.evaluate(f"() => {{ {scroller}.scrollTop = 0; }}")
        locator = self.page.locator(".jp-NotebookPanel:visible").first
        locator.screenshot(path=str(path), timeout=60_000)
        return path


@contextlib.contextmanager
def dumped_on_failure(page: NotebookPage, directory: Path, name: str) -> Iterator[None]:
    """Run the block; if it raises, dump ``page`` (see :meth:`NotebookPage.dump`) first.

    The exception is re-raised unchanged, with the dump's location appended to its
    notes (Python 3.11+) or printed.
    """
    try:
        yield
    except BaseException as e:
        files = page.dump(directory, name)
        note = f"browser dump: {directory} ({', '.join(p.name for p in files)})"
        if hasattr(e, "add_note"):
            e.add_note(note)
        else:  # pragma: no cover - Python 3.10
            print(note, file=sys.stderr)
        raise
