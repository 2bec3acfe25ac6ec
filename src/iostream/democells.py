"""The cells of ``python -m iostream demo``: one per output path, with what each must show."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

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
