"""``python -m iostream``: run, install and demonstrate an IPython kernel that uses iostream.

Subcommands:

``kernel``
    Launch ipykernel's ``IPKernelApp`` with ``ipykernel.iostream`` resolving to this
    library. Every argument after ``kernel`` goes to ``IPKernelApp`` unchanged
    (``-f CONNECTION_FILE`` and any ``--IPKernelApp.*`` option), except
    ``--thread-inherit-context`` (:mod:`iostream.threadcontext`).
``install``
    Write a Jupyter kernelspec whose ``argv`` is
    ``[sys.executable, "-m", "iostream", "kernel", "-f", "{connection_file}"]``.
``uninstall``
    Remove such a kernelspec again (run it before ``pip uninstall kernel-iostream``).
``demo``
    Start such a kernel (no installed kernelspec needed), run a built-in notebook that
    uses every output path, and print what a frontend receives and when. With
    ``--compare``, run the same cells on stock ipykernel too and report every
    difference (:mod:`iostream.app.democompare`).

This module is the application layer: it may import :mod:`iostream.integration`,
ipykernel and jupyter_client; nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from .demo import notebook_kernelspec, run_demo
from .democells import DEMO_CELLS, DemoCell
from .kernelspec import (
    DEFAULT_DISPLAY_NAME,
    DEFAULT_KERNEL_NAME,
    THREAD_INHERIT_CONTEXT,
    install_kernelspec,
    is_iostream_kernelspec,
    kernel_argv,
    kernel_dict,
    kernels_dir,
    uninstall_kernelspec,
    write_kernelspec_dir,
)

__all__ = [
    "DEFAULT_DISPLAY_NAME",
    "DEFAULT_KERNEL_NAME",
    "DEMO_CELLS",
    "DemoCell",
    "build_parser",
    "install_kernelspec",
    "is_iostream_kernelspec",
    "kernel_argv",
    "kernel_dict",
    "kernels_dir",
    "main",
    "notebook_kernelspec",
    "prog_name",
    "run_demo",
    "run_kernel",
    "uninstall_kernelspec",
    "write_kernelspec_dir",
]


# ---------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------


def run_kernel(kernel_args: Sequence[str]) -> int:
    """Run an IPython kernel in this process until it is shut down; return 0.

    Guarantees: :func:`iostream.integration.install` has run before
    ``ipykernel.kernelapp`` is imported, so the kernel's ``sys.stdout`` /
    ``sys.stderr`` and its IOPub thread are this library's classes. ``kernel_args`` is
    handed to ``IPKernelApp`` verbatim, and ``sys.argv`` is set to
    ``[sys.argv[0], *kernel_args]`` as under ``python -m ipykernel_launcher``, except
    ``--thread-inherit-context``, which is taken out and turns on
    :func:`iostream.threadcontext.enable` (threads print into the cell that started
    them). The kernel's streams keep the order written with C code, subprocesses
    and forked children (:attr:`iostream.OutStream.keep_write_order`). Like
    ipykernel's launcher, the current directory is removed from the front of
    ``sys.path`` while ipykernel loads (IPython puts it back for user code).
    """
    from iostream import OutStream, integration, threadcontext

    # The kernel is where output order matters; the library leaves it off (its
    # cost, one system call per line, is over the benchmarks' budget).
    OutStream.keep_write_order = True
    kernel_args = list(kernel_args)
    if THREAD_INHERIT_CONTEXT in kernel_args:
        kernel_args.remove(THREAD_INHERIT_CONTEXT)
        threadcontext.enable()
    integration.install()
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    sys.argv = [sys.argv[0], *kernel_args]

    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=list(kernel_args))
    return 0


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
            "or '--debug'; run '%(prog)s --help-all' for IPKernelApp's own options. "
            "One option is this program's own: '--thread-inherit-context' makes a thread "
            "started during a cell, and work submitted to a concurrent.futures thread pool "
            "during a cell, print into that cell even after it finished (the default, as "
            "in ipykernel 7: into the cell running when it prints)."
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
    install.add_argument(
        THREAD_INHERIT_CONTEXT,
        action="store_true",
        help="the kernel's threads and thread-pool work print into the cell that started "
        "them (written into the kernelspec's argv)",
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
            "succeeded and produced its expected output. With --compare, run the cells on "
            "stock ipykernel and on iostream and show, per cell, each kernel's verdict, its "
            "first-output time and every difference (order, wrong cell, missing, extra or "
            "glued lines); the exit status then depends on iostream's correctness verdicts "
            "only."
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
        "--compare",
        action="store_true",
        help="run the cells on stock ipykernel and on iostream and show every difference",
    )
    demo.add_argument(
        "--cells",
        metavar="KEYS",
        help="with --compare: only these cells, as comma-separated numbers or keys ("
        + ", ".join(c.key for c in DEMO_CELLS)
        + "); a cell's prerequisites are added",
    )
    demo.add_argument(
        "--json",
        metavar="FILE",
        help="with --compare: also write the comparison, with every IOPub message, to FILE",
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
                name=ns.name,
                display_name=ns.display_name,
                user=ns.user,
                prefix=prefix,
                extra_args=[THREAD_INHERIT_CONTEXT] if ns.thread_inherit_context else [],
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
    if ns.command == "demo" and ns.compare:
        from .democells import select_cells
        from .democompare import run_compare

        if ns.stock or ns.save:
            parser.error("demo --compare runs both kernels and saves no notebook")
        try:
            cells = select_cells(ns.cells)
        except ValueError as e:
            parser.error(str(e))
        return run_compare(
            cells, timeout=ns.timeout, settle=ns.settle, json_path=ns.json, verbose=ns.verbose
        ).exit_status
    if ns.command == "demo":
        if ns.cells or ns.json:
            parser.error("--cells and --json need --compare")
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
