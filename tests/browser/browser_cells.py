"""The notebooks the browser tests run, and what each cell must show in JupyterLab's DOM.

Every cell produces deterministic output, so each check compares what the page shows
with what was written, not timings. Cells that involve another thread are made
deterministic with events: the thread cannot print before the next cell releases it,
and that cell waits (bounded) until the thread has printed.

Two rules for a thread's (and thread-pool work's) output are checked:

- ``default`` (ipykernel 7's): it lands in the cell that is running when it prints;
- ``inherit`` (``python -m iostream kernel --thread-inherit-context``): it lands in the
  cell that started the thread, or that submitted the work, even after that finished.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipykernel
from labkit import (
    Cell,
    CellView,
    Gate,
    JupyterLab,
    NotebookPage,
    dumped_on_failure,
    write_notebook,
)

#: Printed by the last cell of every notebook; the run is over when it is rendered.
MARKER = "ALL CELLS DONE"
#: File (in the notebook's directory) the progressive cell waits for; see labkit.Gate.
PROGRESSIVE_GATE = "gate-progressive"
#: Lines of the large-output cell, and how wide each is.
LARGE_LINES = 20_000
#: ipykernel 6.x sends a thread's (so a forked worker's) output to the cell that
#: started it, as ``--thread-inherit-context`` does; 7.x to the cell running then.
THREADS_KEEP_THEIR_CELL = int(ipykernel.__version__.split(".")[0]) < 7

Problems = list[str]
Views = Mapping[str, CellView]


@dataclass(frozen=True)
class NbCell:
    """A notebook cell: a key, a title for reports, its source, and its check."""

    key: str
    title: str
    source: str
    #: (views by key) -> list of problems; empty when the cell shows what it must
    check: Callable[[Views], Problems]
    metadata: dict[str, Any] = field(default_factory=dict)

    def cell(self) -> Cell:
        """The labkit cell to write (source with a ``# title`` comment first)."""
        return Cell(f"# {self.title}\n{self.source}", self.metadata)


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _show(streams: Sequence[tuple[str, str]], limit: int = 300) -> str:
    shown = [(name, text if len(text) <= limit else text[:limit] + "...") for name, text in streams]
    return repr(shown)


def exact(key: str, *expected: tuple[str, str]) -> Callable[[Views], Problems]:
    """Check: the cell's outputs are exactly ``expected`` ((stream, text), DOM order)."""

    def check(views: Views) -> Problems:
        got = views[key].streams()
        if got == list(expected):
            return []
        return [f"outputs {_show(got)}, expected {_show(expected)}"]

    return check


def lines_as_multiset(key: str, lines: Sequence[str], last: str) -> Callable[[Views], Problems]:
    """Check: one stdout output, no stderr; its lines are ``lines`` in any order (each
    whole: no line glued to or cut from another), then ``last`` as the final line."""

    def check(views: Views) -> Problems:
        v = views[key]
        problems: Problems = []
        kinds = [name for name, _ in v.streams()]
        if kinds != ["stdout"]:
            problems.append(f"outputs {_show(v.streams())}, expected one stdout output")
        got = v.stream_text("stdout").splitlines()
        body = got[:-1] if got and got[-1] == last else got
        if not got or got[-1] != last:
            problems.append(f"last stdout line is {got[-1:]!r}, expected {last!r}")
        missing = Counter(lines) - Counter(body)
        extra = Counter(body) - Counter(lines)
        if missing:
            problems.append(f"lines missing: {sorted(missing.elements())}")
        if extra:
            problems.append(f"unexpected or mangled lines: {sorted(extra.elements())[:20]}")
        return problems

    return check


def first_any_last(
    key: str, first: str, lines: Sequence[str], last: str | None = None
) -> Callable[[Views], Problems]:
    """Check: one stdout output, no stderr; its first line is ``first``, its last
    ``last`` (if given), and those between are ``lines`` in any order, each whole."""

    def check(views: Views) -> Problems:
        v = views[key]
        problems: Problems = []
        if [name for name, _ in v.streams()] != ["stdout"]:
            problems.append(f"outputs {_show(v.streams())}, expected one stdout output")
        got = v.stream_text("stdout").splitlines()
        ends = [first] if last is None else [first, last]
        if got[:1] != [first] or (last is not None and got[-1:] != [last]):
            problems.append(f"stdout {got!r} does not go {ends[0]!r} ... {ends[-1]!r}")
        body = got[1:] if last is None else got[1:-1]
        if sorted(body) != sorted(lines):
            problems.append(f"lines between are {body!r}, expected {sorted(lines)!r} in any order")
        return problems

    return check


def large_text() -> str:
    """What the large-output cell prints (about 1.4 MB)."""
    body = "".join(f"line {i:05d} {'x' * 60}\n" for i in range(LARGE_LINES))
    return body + "large done\n"


def check_large(key: str) -> Callable[[Views], Problems]:
    """Check: the cell's stdout text is exactly :func:`large_text`, and no stderr."""
    want = large_text()

    def check(views: Views) -> Problems:
        v = views[key]
        problems: Problems = []
        got = v.stream_text("stdout")
        if got != want:
            lines = got.splitlines()
            problems.append(
                f"stdout has {len(lines)} lines ({len(got)} chars), expected "
                f"{LARGE_LINES + 1} ({len(want)}); last line {lines[-1:]!r}"
            )
        if any(name != "stdout" for name, _ in v.streams()):
            problems.append(f"output kinds {[n for n, _ in v.streams()]}, expected stdout only")
        return problems

    return check


# ---------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------

SETUP = NbCell(
    "setup",
    "imports; which stream class",
    _src(
        """
        import asyncio, ctypes, os, subprocess, sys, threading, time, warnings
        import multiprocessing as mp
        from concurrent.futures import ThreadPoolExecutor
        from pathlib import Path
        print("stdout class:", type(sys.stdout).__module__ + "." + type(sys.stdout).__qualname__)
        """
    ),
    # The class differs per kernel; the tests check it themselves.
    lambda views: [],
)

PROGRESSIVE = NbCell(
    "progressive",
    "progressive output: step 0 must be on the page while the cell still runs",
    _src(
        f"""
        gate = Path({PROGRESSIVE_GATE!r})
        gate.unlink(missing_ok=True)
        print("step 0", flush=True)
        # The test creates the gate file once it sees "step 0" on the page.
        deadline = time.monotonic() + 90
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print("gate opened" if gate.exists() else "gate timed out")
        for i in range(1, 6):
            time.sleep(0.05)
            print(f"step {{i}}")
        """
    ),
    exact(
        "progressive",
        ("stdout", "step 0\ngate opened\n" + "".join(f"step {i}\n" for i in range(1, 6))),
    ),
)


def _thread_cells(rule: str) -> list[NbCell]:
    """The thread and thread-pool scenarios, checked under ``rule`` (default/inherit)."""
    inherit = rule == "inherit"
    return [
        NbCell(
            "thread_start",
            "start a thread that prints only once the next cell releases it",
            _src(
                """
                release = threading.Event()
                def late_thread():
                    release.wait(60)
                    print("thread line")
                t = threading.Thread(target=late_thread)
                t.start()
                print("thread started")
                """
            ),
            exact(
                "thread_start",
                ("stdout", "thread started\nthread line\n" if inherit else "thread started\n"),
            ),
        ),
        NbCell(
            "thread_release",
            "release the thread and wait until it has printed",
            _src(
                """
                print("releasing")
                release.set()
                t.join(60)
                print("joined")
                """
            ),
            exact(
                "thread_release",
                (
                    "stdout",
                    "releasing\njoined\n" if inherit else "releasing\nthread line\njoined\n",
                ),
            ),
        ),
        NbCell(
            "executor_warm",
            "a one-worker thread pool whose worker thread starts here",
            _src(
                """
                executor = ThreadPoolExecutor(max_workers=1)
                executor.submit(lambda: None).result(60)
                print("executor warmed up")
                """
            ),
            exact("executor_warm", ("stdout", "executor warmed up\n")),
        ),
        NbCell(
            "submit",
            "submit work that prints only once the next cell releases it",
            _src(
                """
                go = threading.Event()
                def late_work():
                    go.wait(60)
                    print("pool line")
                future = executor.submit(late_work)
                print("work submitted")
                """
            ),
            exact(
                "submit",
                ("stdout", "work submitted\npool line\n" if inherit else "work submitted\n"),
            ),
        ),
        NbCell(
            "submit_release",
            "release the work and wait for it",
            _src(
                """
                print("releasing work")
                go.set()
                future.result(60)
                print("work done")
                """
            ),
            exact(
                "submit_release",
                (
                    "stdout",
                    "releasing work\nwork done\n"
                    if inherit
                    else "releasing work\npool line\nwork done\n",
                ),
            ),
        ),
    ]


SUBPROCESS = NbCell(
    "subprocess",
    "subprocess.run and os.system",
    _src(
        """
        subprocess.run(["echo", "from subprocess.run"], check=True)
        _ = os.system("echo from os.system")
        """
    ),
    exact("subprocess", ("stdout", "from subprocess.run\nfrom os.system\n")),
)

C_PRINTF = NbCell(
    "c_printf",
    "C printf through ctypes",
    _src(
        """
        libc = ctypes.CDLL(None)
        _ = libc.printf(b"from C printf\\n")
        _ = libc.fflush(None)
        """
    ),
    exact("c_printf", ("stdout", "from C printf\n")),
)

POOL_ITEMS = 8
POOL = NbCell(
    "pool",
    "multiprocessing Pool (fork) workers printing",
    _src(
        f"""
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        def work(i):
            print(f"pool item {{i}}", flush=True)
            return i
        pool = mp.get_context("fork").Pool(2)
        results = pool.map(work, range({POOL_ITEMS}))
        pool.close()
        pool.join()
        print("pool results", results)
        """
    ),
    lines_as_multiset(
        "pool",
        [f"pool item {i}" for i in range(POOL_ITEMS)],
        f"pool results {list(range(POOL_ITEMS))}",
    ),
)

FD_ORDER_TEXT = "py 1\nsub 2\nfd 3\npy 4\nc 5\npy 6\n"
FD_ORDER = NbCell(
    "fd_order",
    "print, subprocess, os.write and C printf: shown in write order (issue 19)",
    _src(
        """
        print('py 1')
        subprocess.run(['echo', 'sub 2'])
        os.write(1, b'fd 3\\n')
        print('py 4')
        libc = ctypes.CDLL(None); libc.printf(b'c 5\\n'); libc.fflush(None)
        print('py 6')
        """
    ),
    exact("fd_order", ("stdout", FD_ORDER_TEXT)),
)

PAIR_ITEMS = 4
PAIR_WORKER_LINES = [f"pair worker line {i}" for i in range(PAIR_ITEMS)]
PAIR_RESULT = str([i * i for i in range(PAIR_ITEMS)])


def _pool_pair_cells(rule: str) -> list[NbCell]:
    """A fork Pool made in one cell (its workers print nothing there) and used in the
    next: the workers' lines are under the using cell by the ``default`` rule
    (ipykernel 7's; 6.x's is the cell that forked them), under the making cell by
    ``inherit``'s."""
    into_making = rule == "inherit" or THREADS_KEEP_THEIR_CELL
    made_check = (
        first_any_last("pool_made", "pool made", PAIR_WORKER_LINES)
        if into_making
        else exact("pool_made", ("stdout", "pool made\n"))
    )
    used_check = (
        exact("pool_used", ("stdout", f"mapping\n{PAIR_RESULT}\npool closed\n"))
        if into_making
        else first_any_last(
            "pool_used", "mapping", [*PAIR_WORKER_LINES, PAIR_RESULT], "pool closed"
        )
    )
    return [
        NbCell(
            "pool_made",
            "a fork Pool made here; its workers print nothing in this cell",
            _src(
                """
                warnings.filterwarnings(
                    "ignore", "This process .* is multi-threaded", DeprecationWarning
                )
                def pair_work(i):
                    print(f"pair worker line {i}")
                    sys.stdout.flush()
                    return i * i
                pair_pool = mp.get_context("fork").Pool(2)
                print("pool made")
                """
            ),
            made_check,
        ),
        NbCell(
            "pool_used",
            "the Pool used in the next cell (map returns after every worker printed)",
            _src(
                f"""
                print("mapping")
                print(pair_pool.map(pair_work, range({PAIR_ITEMS})))
                pair_pool.close()
                pair_pool.join()
                print("pool closed")
                """
            ),
            used_check,
        ),
    ]


ORDER = NbCell(
    "order",
    "stdout and stderr alternating, unflushed then flushed",
    _src(
        """
        for i in range(3):
            print(f"out {i}")
            print(f"err {i}", file=sys.stderr)
        for i in range(3, 6):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        """
    ),
    exact(
        "order",
        *[item for i in range(6) for item in (("stdout", f"out {i}\n"), ("stderr", f"err {i}\n"))],
    ),
)

PROGRESS = NbCell(
    "progress",
    "a \\r progress bar",
    _src(
        """
        for i in range(101):
            print(f"\\r{i}%", end="", flush=True)
            time.sleep(0.003)
        print()
        """
    ),
    exact("progress", ("stdout", "100%\n")),
)

LARGE = NbCell(
    "large",
    f"a large output ({LARGE_LINES} lines)",
    _src(
        f"""
        for i in range({LARGE_LINES}):
            print(f"line {{i:05d}} {{'x' * 60}}")
        print("large done")
        """
    ),
    check_large("large"),
    metadata={"scrolled": True},
)

ASYNCIO = NbCell(
    "asyncio",
    "asyncio tasks printing",
    _src(
        """
        async def job(n):
            for k in range(3):
                await asyncio.sleep(0.01 * n)
                print(f"task {n} step {k}")
        _ = await asyncio.gather(*(job(n) for n in range(1, 4)))
        print("gather done")
        """
    ),
    lines_as_multiset(
        "asyncio", [f"task {n} step {k}" for n in range(1, 4) for k in range(3)], "gather done"
    ),
)

FINAL = NbCell(
    "marker", "the end", f"print({MARKER!r})", exact("marker", ("stdout", MARKER + "\n"))
)


def main_notebook() -> list[NbCell]:
    """Every scenario, checked under the default rule (ipykernel 7's) for threads."""
    return [
        SETUP,
        PROGRESSIVE,
        *_thread_cells("default"),
        SUBPROCESS,
        C_PRINTF,
        FD_ORDER,
        POOL,
        *_pool_pair_cells("default"),
        ORDER,
        PROGRESS,
        LARGE,
        ASYNCIO,
        FINAL,
    ]


def optin_notebook() -> list[NbCell]:
    """The thread, thread-pool and fork Pool scenarios, checked under
    ``--thread-inherit-context``."""
    return [SETUP, *_thread_cells("inherit"), *_pool_pair_cells("inherit"), FINAL]


def views_by_key(cells: Sequence[NbCell], views: Sequence[CellView]) -> dict[str, CellView]:
    """Pair the notebook's cells with the DOM's code cells (same count and order)."""
    if len(cells) != len(views):
        raise AssertionError(
            f"the page shows {len(views)} code cells, the notebook has {len(cells)}"
        )
    return {c.key: v for c, v in zip(cells, views, strict=True)}


def problems_by_cell(cells: Sequence[NbCell], views: Sequence[CellView]) -> dict[str, Problems]:
    """Run every cell's check; return {key: problems} for the cells with problems.

    A cell that was not executed (no execution count on the page) has that as its
    problem, whatever its outputs.
    """
    by_key = views_by_key(cells, views)
    out: dict[str, Problems] = {}
    for c in cells:
        v = by_key[c.key]
        problems = [] if v.execution_count is not None else ["not executed"]
        problems += c.check(by_key)
        if problems:
            out[c.key] = problems
    return out


# ---------------------------------------------------------------------------
# running a notebook of these cells
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """A notebook of :class:`NbCell` run in JupyterLab: its page, gate and DOM views."""

    name: str
    cells: list[NbCell]
    page: NotebookPage
    gate: Gate | None
    views: list[CellView] = field(default_factory=list)

    def by_key(self) -> dict[str, CellView]:
        """The DOM view of each cell, by key."""
        return views_by_key(self.cells, self.views)

    def problems(self) -> dict[str, Problems]:
        """See :func:`problems_by_cell`."""
        return problems_by_cell(self.cells, self.views)

    def summary(self) -> list[dict[str, Any]]:
        """Per cell: key, title, execution count and the DOM outputs (JSON-ready)."""
        return [
            {
                "key": c.key,
                "title": c.title,
                "execution_count": v.execution_count,
                "outputs": [
                    {"stream": s, "text": t if len(t) <= 2000 else t[:1000] + " ... " + t[-500:]}
                    for s, t in v.streams()
                ],
            }
            for c, v in zip(self.cells, self.views, strict=True)
        ]


@contextlib.contextmanager
def run_cells(
    lab: JupyterLab,
    browser: Any,
    cells: list[NbCell],
    kernel_name: str,
    name: str,
    *,
    dump_dir: Path | None = None,
    timeout: float = 240.0,
    viewport: tuple[int, int] = (1280, 1000),
) -> Iterator[Run]:
    """Write ``cells`` as ``NAME/notebook.ipynb`` under the lab's root, open it on
    ``kernel_name``, run all cells and yield the :class:`Run` with the page still open.

    Guarantees: on entry to the block every cell has run and the marker is rendered
    (else :class:`labkit.LabError`); a gate is set up when the progressive cell is in
    the notebook. With ``dump_dir``, any exception (in the run or in the block) first
    dumps the page there. The page is closed on exit.
    """
    nb_dir = lab.root_dir / name
    write_notebook(nb_dir / "notebook.ipynb", [c.cell() for c in cells], kernel_name)
    keys = [c.key for c in cells]
    gate = (
        Gate(keys.index(PROGRESSIVE.key), "step 0", nb_dir / PROGRESSIVE_GATE)
        if PROGRESSIVE.key in keys
        else None
    )
    with NotebookPage(
        browser, lab, f"{name}/notebook.ipynb", kernel_name, viewport=viewport
    ) as page:
        guard = dumped_on_failure(page, dump_dir, name) if dump_dir else contextlib.nullcontext()
        with guard:
            page.open()
            run = Run(name, cells, page, gate)
            run.views = page.run_all(marker=MARKER, timeout=timeout, gates=[gate] if gate else [])
            yield run
