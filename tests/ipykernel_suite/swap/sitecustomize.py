"""Swap ``ipykernel.iostream`` for the :mod:`iostream` package in every Python process.

``tests/ipykernel_suite/run.py`` puts this folder first on ``PYTHONPATH`` for the
swapped run of ipykernel's own test suite. Python's ``site`` module imports
``sitecustomize`` at start-up, so every interpreter started with that environment
(pytest itself, every kernel that jupyter_client launches, every
``subprocess.run([sys.executable, ...])`` a test makes) calls
:func:`iostream.install` before any of ipykernel's kernel machinery is imported.

Evidence for the runner: when ``IPYKERNEL_SUITE_MARKERS`` names a folder, each
process writes one file there, ``<pid>.ok`` or ``<pid>.fail``, holding its command
line (``sys.orig_argv``) and (for ``.fail``) the error. ``site`` swallows exceptions
raised by ``sitecustomize``, so a failure is also printed to stderr; the runner
fails the run when any ``.fail`` file exists.

A ``sitecustomize`` that this folder shadows (one in the venv's site-packages or
the interpreter's stdlib) is still executed afterwards, so the only difference
between the stock and the swapped run is the swap itself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _swap() -> tuple[bool, str]:
    """Install the swap; return (ok, error text)."""
    try:
        import iostream
        from iostream import integration

        iostream.install()
        if not integration.installed():
            return False, "iostream.integration.installed() is False after install()"
        import ipykernel.iostream as target

        if not target.OutStream.__module__.startswith("iostream"):
            return False, f"ipykernel.iostream.OutStream comes from {target.OutStream.__module__}"
    except BaseException as exc:  # report anything, never kill the process
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def _record(ok: bool, error: str) -> None:
    """Write this process's marker file (best effort)."""
    folder = os.environ.get("IPYKERNEL_SUITE_MARKERS")
    if not folder:
        return
    path = os.path.join(folder, f"{os.getpid()}.{'ok' if ok else 'fail'}")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(repr(getattr(sys, "orig_argv", sys.argv)) + "\n" + error + "\n")
    except OSError:
        pass


def _run_shadowed() -> None:
    """Execute the ``sitecustomize`` this one hides, if there is one."""
    others = [p for p in sys.path if p and os.path.abspath(p) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_ok, _error = _swap()
_record(_ok, _error)
if not _ok:
    sys.stderr.write(f"ipykernel-suite sitecustomize: the iostream swap FAILED: {_error}\n")
_run_shadowed()
