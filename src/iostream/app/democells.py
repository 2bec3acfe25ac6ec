"""The cells of ``python -m iostream demo``: one per output path, with what each must show.

Also what a frontend shows for a cell's output messages (:func:`render`), the view the
cells' expectations are stated in.
"""

from __future__ import annotations

import importlib.metadata
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------


#: ``(kind, text)``: a line a frontend must show. ``kind`` is ``"stdout"`` or ``"stderr"``
#: (``text`` is one whole line, with its ``"\n"``, or the unterminated rest of the
#: stream), or ``"display"`` (``text`` is a MIME type of one display_data output).
Line = tuple[str, str]


@dataclass(frozen=True)
class DemoCell:
    """One cell of the demo notebook and what its output must contain.

    ``stdout``/``stderr``/``mimetypes`` are what ``demo`` checks (substrings, MIME
    types). ``lines``, when given, is the exact output ``demo --compare`` expects:
    every stream line the frontend shows, in write order (any order if not
    ``ordered``), displays at their place among them; without ``lines`` it checks
    the substrings only. ``immediate`` cells are also timed (see
    :mod:`iostream.app.democompare`).
    """

    title: str
    source: str
    #: substrings that must occur in the cell's stdout / stderr text
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()
    #: MIME types that must occur among the cell's display_data outputs
    mimetypes: tuple[str, ...] = ()
    #: short name for ``demo --compare --cells``
    key: str = ""
    #: the exact output (see the class docstring); None: check the substrings only
    lines: tuple[Line, ...] | None = None
    #: whether ``lines`` must come in their order (False: any order)
    ordered: bool = True
    #: seconds without output before the cell is sent (so it starts after an idle period)
    idle_before: float = 0.0
    #: whether the first output should come at once (a timing verdict, see democompare)
    immediate: bool = False
    #: keys of cells that must run (in notebook order) before this one in a subset
    needs: tuple[str, ...] = ()


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _out(*texts: str) -> tuple[Line, ...]:
    return tuple(("stdout", t) for t in texts)


def _ipykernel_major() -> int:
    """The installed ipykernel's major version (7 if it cannot be told)."""
    try:
        return int(importlib.metadata.version("ipykernel").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 7


#: Whether a thread's output, and so a forked worker's, goes to the cell running when
#: it arrives (ipykernel 7's rule); ipykernel 6.x sends it to the cell that started the
#: thread, which a cell-by-cell check cannot tell from output arriving after that
#: cell's idle status, so the fork Pool pair is in the demo only under 7's rule.
WORKERS_PRINT_INTO_THE_RUNNING_CELL = _ipykernel_major() >= 7

#: What the order cell writes, one line each, in write order (issue 19).
FD_ORDER_LINES = ("py 1\n", "sub 2\n", "fd 3\n", "py 4\n", "c 5\n", "py 6\n")
#: What the Pool's workers print in the pool-used cell, and what map returns.
POOL_PAIR_ITEMS = 4
POOL_WORKER_LINES = tuple(f"pool worker line {i}\n" for i in range(POOL_PAIR_ITEMS))
POOL_PAIR_RESULT = f"{[i * i for i in range(POOL_PAIR_ITEMS)]}\n"

#: A fork Pool made in one cell (its workers print nothing there) and used in the next:
#: under ipykernel 7's rule the workers' lines belong to the using cell, which is
#: running when they print.
POOL_PAIR: tuple[DemoCell, ...] = (
    DemoCell(
        "fork Pool made in one cell (workers print nothing here)",
        _src(
            """
            import multiprocessing, sys, warnings
            warnings.filterwarnings(
                "ignore", "This process .* is multi-threaded", DeprecationWarning
            )

            def pool_work(i):
                print(f"pool worker line {i}")
                sys.stdout.flush()
                return i * i

            pair_pool = multiprocessing.get_context("fork").Pool(2)
            print("pool made")
            """
        ),
        stdout=("pool made\n",),
        key="pool-made",
        lines=_out("pool made\n"),
    ),
    DemoCell(
        "the Pool used in the next cell: its workers print here",
        _src(
            f"""
            print("mapping")
            print(pair_pool.map(pool_work, range({POOL_PAIR_ITEMS})))
            pair_pool.close()
            pair_pool.join()
            """
        ),
        stdout=("mapping\n", *POOL_WORKER_LINES, POOL_PAIR_RESULT),
        key="pool-used",
        # the two workers' lines come in either order, between these two
        lines=_out("mapping\n", *POOL_WORKER_LINES, POOL_PAIR_RESULT),
        ordered=False,
        needs=("pool-made",),
    ),
)


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
        key="class",
    ),
    DemoCell(
        "print from the main thread",
        'print("hello from the main thread")',
        stdout=("hello from the main thread\n",),
        key="print",
        lines=_out("hello from the main thread\n"),
    ),
    DemoCell(
        "sys.stdout.write without newline",
        'sys.stdout.write("no newline at the end")',
        stdout=("no newline at the end",),
        key="nonewline",
        lines=_out("no newline at the end"),
    ),
    DemoCell(
        "stdout and stderr interleaved, no flush",
        _src(
            """
            for i in range(3):
                print(f"out {i}")
                print(f"err {i}", file=sys.stderr)
            """
        ),
        stdout=("out 0\n", "out 1\n", "out 2\n"),
        stderr=("err 0\n", "err 1\n", "err 2\n"),
        key="interleaved",
        lines=tuple((n, f"{n[3:]} {i}\n") for i in range(3) for n in ("stdout", "stderr")),
    ),
    DemoCell(
        "unicode, including astral characters",
        'print("h\\u00e9llo \\u2713 \\u65e5\\u672c\\u8a9e \\U0001f40d \\U0001d518\\U0001d52b")',
        stdout=("h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f40d \U0001d518\U0001d52b\n",),
        key="unicode",
        lines=_out("h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001f40d \U0001d518\U0001d52b\n"),
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
        key="thread",
        lines=_out("from a thread\n"),
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
        key="asyncio",
        lines=_out("from an asyncio task\n"),
    ),
    DemoCell(
        "subprocess.run",
        'import subprocess\nsubprocess.run(["echo", "from subprocess.run"], check=True);',
        stdout=("from subprocess.run\n",),
        key="subprocess",
        lines=_out("from subprocess.run\n"),
    ),
    DemoCell(
        "os.system",
        'import os\nos.system("echo from os.system");',
        stdout=("from os.system\n",),
        key="system",
        lines=_out("from os.system\n"),
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
        key="printf",
        lines=_out("from C printf\n"),
    ),
    DemoCell(
        "print, subprocess, os.write and C printf in write order",
        _src(
            """
            import os, subprocess, ctypes
            print('py 1')
            subprocess.run(['echo', 'sub 2'])
            os.write(1, b'fd 3\\n')
            print('py 4')
            libc = ctypes.CDLL(None); libc.printf(b'c 5\\n'); libc.fflush(None)
            print('py 6')
            """
        ),
        stdout=("".join(FD_ORDER_LINES),),
        key="fd-order",
        lines=_out(*FD_ORDER_LINES),
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
        key="pool",
        lines=_out(*(f"worker item {i}\n" for i in range(4)), "[0, 1, 4, 9]\n"),
        ordered=False,
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
        key="progress",
        lines=_out("".join(f"\rprogress {10 * i:3d}%" for i in range(11)) + "\n"),
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
        key="display",
        lines=(
            ("stdout", "before the displays\n"),
            ("display", "text/markdown"),
            ("stdout", "between the displays\n"),
            ("display", "text/html"),
            ("stdout", "after the displays\n"),
        ),
    ),
    DemoCell(
        "idle latency: print, sleep 1 s, print",
        _src(
            """
            import time
            print("first")
            time.sleep(1)
            print("second")
            """
        ),
        stdout=("first\n", "second\n"),
        key="idle",
        lines=_out("first\n", "second\n"),
        idle_before=0.5,
        immediate=True,
    ),
    DemoCell(
        "first output of a cell right after a printing cell",
        _src(
            """
            import time
            print("first line")
            time.sleep(0.5)
            print("last line")
            """
        ),
        stdout=("first line\n", "last line\n"),
        key="after-print",
        lines=_out("first line\n", "last line\n"),
        immediate=True,
        needs=("idle",),
    ),
    *(POOL_PAIR if WORKERS_PRINT_INTO_THE_RUNNING_CELL else ()),
)


def select_cells(spec: str | None) -> tuple[DemoCell, ...]:
    """The cells named by ``spec``, a comma-separated list of keys or 1-based numbers.

    Guarantees: ``None`` or ``""`` selects :data:`DEMO_CELLS`; otherwise the named cells
    and, recursively, the cells they ``need``, in notebook order, each once. Raises
    ``ValueError`` naming an unknown key or number.
    """
    if not spec:
        return DEMO_CELLS
    by_key = {c.key: c for c in DEMO_CELLS}
    chosen: set[str] = set()
    todo = [s.strip() for s in spec.split(",") if s.strip()]
    while todo:
        name = todo.pop()
        if name.isdigit() and 1 <= int(name) <= len(DEMO_CELLS):
            name = DEMO_CELLS[int(name) - 1].key
        if name not in by_key:
            known = ", ".join(by_key)
            raise ValueError(f"no demo cell {name!r} (cells: 1-{len(DEMO_CELLS)} or {known})")
        if name not in chosen:
            chosen.add(name)
            todo.extend(by_key[name].needs)
    return tuple(c for c in DEMO_CELLS if c.key in chosen)


# ---------------------------------------------------------------------------
# what a frontend shows
# ---------------------------------------------------------------------------

_LINE = re.compile(r"[^\n]*\n|[^\n]+")
#: The IOPub message types that are cell outputs.
OUTPUT_TYPES = ("stream", "display_data", "update_display_data", "execute_result", "error")


@dataclass
class Shown:
    """One line (or display) a frontend shows, and when its end arrived."""

    kind: str  # stdout, stderr, display_data, execute_result, error, ...
    text: str  # the line with its "\n"; for displays the MIME types
    ms: float  # since the cell's execute_request
    after_idle: bool = False


def render(msgs: Sequence[dict[str, Any]], sent: float = 0.0) -> list[Shown]:
    """What a frontend shows for ``msgs`` (slim outputs of one parent, in arrival order).

    Guarantees: consecutive stream messages of one name are joined, as JupyterLab and
    nbformat join them, and split into lines (keeping ``"\\n"``); an unterminated rest
    is its own item, ended by the next non-matching output. Each line's ``ms`` is the
    arrival of the message that ended it, minus ``sent``; ``after_idle`` is set if
    that message's ``after_idle`` is. Non-stream outputs are one item each.
    """
    shown: list[Shown] = []
    part: Shown | None = None
    for m in msgs:
        ms, late = round(m["ms"] - sent, 2), bool(m.get("after_idle"))
        if part is not None and (m["type"] != "stream" or part.kind != m["name"]):
            shown.append(part)
            part = None
        if m["type"] != "stream":
            text = m.get("text") or ", ".join(m.get("data", []))
            shown.append(Shown(m["type"], text, ms, late))
            continue
        for piece in _LINE.findall(m["text"]):
            part = part or Shown(m["name"], "", ms)
            part.text, part.ms, part.after_idle = part.text + piece, ms, late
            if piece.endswith("\n"):
                shown.append(part)
                part = None
    if part is not None:
        shown.append(part)
    return shown


def matches(expected: Line, item: Shown) -> bool:
    """Whether ``item`` is the expected line (or display) ``expected``."""
    kind, text = expected
    if kind == "display":
        return item.kind in ("display_data", "update_display_data") and text in item.text
    return item.kind == kind and item.text == text


def within(expected: Line, item: Shown) -> bool:
    """Whether ``item`` shows the stream line ``expected`` (alone or glued to others).

    A line that is only ``"\n"`` is never within another.
    """
    body = expected[1].rstrip("\n")
    return bool(body) and item.kind == expected[0] and body in item.text


def to_nb_output(msg: dict[str, Any]) -> dict[str, Any] | None:
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
