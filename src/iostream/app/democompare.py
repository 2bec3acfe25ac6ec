"""``python -m iostream demo --compare``: the demo cells on stock ipykernel and on iostream.

Both kernels run the same cells through jupyter_client, one after the other, the way
nbclient runs a notebook: a cell is sent once the previous one has its execute_reply
and its idle status. Every IOPub message is recorded with its arrival time
(:func:`iostream.app.demo.record`). Then pure functions judge what a frontend shows for
each cell against the cell's expectation (:func:`check_cell`) and list how the
kernels differ (:func:`differences`).

Verdicts. A kernel's verdict for a cell is ``ok`` only when it met the cell's
expectation (:class:`iostream.app.democells.DemoCell`): every expected line under the
cell's own execute_request (its parent msg_id) and before the cell's idle status
(nbclient stops listening at idle), nothing else on its streams, lines in write order,
no line glued to another, status ``ok``. Stock is judged exactly as iostream is, so a
defect on stock is never ``ok``. Timing is judged only for ``immediate`` cells, with a
generous bound: a first output within :data:`IMMEDIATE_MS` (100 ms) of the
execute_request counts as immediate; a later one is "held ~N ms" (rounded to 10 ms,
so ipykernel's 200 ms flush interval shows as "held ~200 ms"). Timing verdicts are
reported but never change the exit status (:func:`exit_status`), which is 1 only when
iostream missed a correctness expectation (or did not start).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .demo import DemoKernel, record
from .democells import DEMO_CELLS, OUTPUT_TYPES, DemoCell, Line, Shown, matches, render, within

#: A first output within this many ms of the execute_request counts as immediate.
IMMEDIATE_MS = 100.0
#: First-output times of the two kernels are listed as a difference when they are at
#: least this many ms apart (or one is immediate and the other is not).
TIMING_DIFF_MS = 50.0
#: The kernels, in the order they run.
KERNELS = ("stock", "iostream")


# ---------------------------------------------------------------------------
# judging (pure)
# ---------------------------------------------------------------------------


@dataclass
class Issue:
    """A way a kernel missed a cell's expectation."""

    #: wrong cell, other cell's output, after idle, missing, extra, glued, order,
    #: status, or (a timing issue) held ~N ms
    kind: str
    detail: str
    timing: bool = False


@dataclass
class KernelCell:
    """What one kernel did with one cell, and the verdict."""

    verdict: str
    issues: list[Issue]
    first_ms: float | None
    stream_messages: int
    shown: list[Shown]


def _label(issues: Sequence[Issue]) -> str:
    """The verdict: ``ok``, or the kinds of ``issues`` in order, each once."""
    return ", ".join(dict.fromkeys(i.kind for i in issues)) or "ok"


def _elsewhere(
    line: Line, parent: str, by_parent: dict[str, list[Shown]], names: dict[str, str]
) -> str | None:
    """Where else (under which request) ``line`` was shown, or None."""
    body = line[1].rstrip("\n")
    for other, items in by_parent.items() if body else ():
        if other != parent and any(i.kind == line[0] and body in i.text for i in items):
            return names.get(other, f"under no cell's request (parent {other!r})")
    return None


def check_cell(
    cells: Sequence[DemoCell],
    index: int,
    rec: dict[str, Any],
    numbers: Sequence[int] | None = None,
) -> KernelCell:
    """Judge what a frontend shows for ``cells[index]`` in ``rec`` (:func:`.demo.record`).

    Guarantees: the verdict is ``ok`` only when no :class:`Issue` was found: every
    expected line is shown under the cell's own request (else "wrong cell", naming where
    it was, or "missing"), none after the cell's idle status ("after idle"), no other
    stream line ("other cell's output" if another cell expects it, "glued" if it holds
    two expected lines, else "extra"), in write order ("order") for an ordered cell,
    execute_reply status ``ok`` ("status"), and, for an ``immediate`` cell, a first
    output within :data:`IMMEDIATE_MS` ("held ~N ms", a timing issue). Cells without
    ``lines`` are checked for their substrings only. ``numbers`` are the notebook
    numbers of ``cells`` (default 1, 2, ...). Pure.
    """
    cell = cells[index]
    numbers = list(numbers or range(1, len(cells) + 1))
    theirs = [(numbers[k], e) for k, c in enumerate(cells) if k != index for e in c.lines or ()]
    req = rec["requests"][index]
    names = {
        r["msg_id"]: f"under cell {numbers[k]}'s request" for k, r in enumerate(rec["requests"])
    }
    grouped: dict[str, list[dict[str, Any]]] = {}
    idle = False  # whether this cell's idle status came yet (in arrival order)
    for m in rec["messages"]:
        if m["type"] in OUTPUT_TYPES:
            late = idle and m["parent"] == req["msg_id"]
            grouped.setdefault(m["parent"], []).append({**m, "after_idle": late})
        idle = idle or (m["parent"] == req["msg_id"] and m.get("state") == "idle")
    by_parent = {p: render(ms) for p, ms in grouped.items()}
    mine = grouped.get(req["msg_id"], [])
    shown = render(mine, req["sent"])
    streams = [s for s in shown if s.kind in ("stdout", "stderr")]
    issues: list[Issue] = []
    if req["status"] != "ok":
        issues.append(Issue("status", f"execute_reply status {req['status']!r}"))
    if cell.lines is None:
        expected: list[Line] = [("stdout", t) for t in cell.stdout]
        expected += [("stderr", t) for t in cell.stderr]
        for line in expected:
            if not any(s.kind == line[0] and line[1] in s.text for s in streams):
                where = _elsewhere(line, req["msg_id"], by_parent, names)
                detail = f"{line[0]} {line[1]!r} {where or 'not shown anywhere'}"
                issues.append(Issue("wrong cell" if where else "missing", detail))
    else:
        todo = list(cell.lines)
        matched: list[Line] = []
        unmatched: list[Shown] = []
        for item in shown:
            hit = next((e for e in todo if matches(e, item)), None)
            if hit is not None:
                todo.remove(hit)
                matched.append(hit)
            elif item.kind in ("stdout", "stderr"):
                unmatched.append(item)
        for item in unmatched:
            parts = [e for e in todo if within(e, item)]
            if len(parts) >= 2:
                glued = " + ".join(repr(e[1].rstrip("\n")) for e in parts)
                issues.append(Issue("glued", f"{glued} shown as one line {item.text!r}"))
                todo = [e for e in todo if e not in parts]
            elif owner := next((n for n, e in theirs if within(e, item)), None):
                detail = f"{item.kind} {item.text!r} is cell {owner}'s output"
                issues.append(Issue("other cell's output", detail))
            elif item.text.strip() or not any(i.kind == "glued" for i in issues):
                issues.append(Issue("extra", f"{item.kind} {item.text!r}"))
        for line in todo:
            where = _elsewhere(line, req["msg_id"], by_parent, names)
            kind = "wrong cell" if where else "missing"
            issues.append(Issue(kind, f"{line[0]} {line[1]!r} {where or 'not shown anywhere'}"))
        written = [e for e in cell.lines if e in matched]
        if cell.ordered and matched != written:
            issues.append(Issue("order", f"shown {_order(matched)}; written {_order(written)}"))
    for item in shown:
        if item.after_idle:
            issues.append(Issue("after idle", f"{item.kind} {item.text!r} at +{item.ms:.0f} ms"))
    first = round(mine[0]["ms"] - req["sent"], 2) if mine else None
    if cell.immediate and first is not None and first > IMMEDIATE_MS:
        detail = f"first output +{first:.0f} ms (immediate: within {IMMEDIATE_MS:.0f} ms)"
        issues.append(Issue(f"held ~{round(first, -1):.0f} ms", detail, timing=True))
    n_streams = sum(m["type"] == "stream" for m in mine)
    return KernelCell(_label(issues), issues, first, n_streams, shown)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def differences(a: KernelCell, b: KernelCell, names: Sequence[str] = KERNELS) -> list[str]:
    """Every difference between two kernels' results for one cell, as readable lines.

    Guarantees: lists a verdict difference, a first-output difference when the times are
    :data:`TIMING_DIFF_MS` apart or on either side of :data:`IMMEDIATE_MS`, a different
    number of stream messages, lines only one kernel shows, the same lines in another
    order. (Each kernel's issues are in its :class:`KernelCell`.) Empty when the
    frontends would show the same. Pure.
    """
    na, nb = names
    out: list[str] = []
    if a.verdict != b.verdict:
        out.append(f"verdict: {na} {a.verdict}; {nb} {b.verdict}")
    if (a.first_ms is None) != (b.first_ms is None) or (
        a.first_ms is not None
        and b.first_ms is not None
        and (
            abs(a.first_ms - b.first_ms) >= TIMING_DIFF_MS
            or (a.first_ms <= IMMEDIATE_MS) != (b.first_ms <= IMMEDIATE_MS)
        )
    ):
        out.append(f"first output: {na} {_ms(a.first_ms)} ms; {nb} {_ms(b.first_ms)} ms")
    if a.stream_messages != b.stream_messages:
        out.append(f"stream messages: {na} {a.stream_messages}; {nb} {b.stream_messages}")
    lines_a = [(s.kind, s.text) for s in a.shown]
    lines_b = [(s.kind, s.text) for s in b.shown]
    only_a, only_b = Counter(lines_a) - Counter(lines_b), Counter(lines_b) - Counter(lines_a)
    for name, only in ((na, only_a), (nb, only_b)):
        for kind, text in only.elements():
            out.append(f"only {name} shows: {kind} {text!r}")
    if not only_a and not only_b and lines_a != lines_b:
        out.append(f"order: {na} {_order(lines_a)}; {nb} {_order(lines_b)}")
    return out


def _order(lines: Sequence[tuple[str, str]]) -> str:
    """``out:'a' | err:'b'``: stream lines (or displays) in order, short."""
    return " | ".join(f"{k[3:] if k.startswith('std') else k}:{t.rstrip()!r}" for k, t in lines)


# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------


@dataclass
class CellComparison:
    """One cell: each kernel's result and the differences between them."""

    number: int
    key: str
    title: str
    results: dict[str, KernelCell]
    differences: list[str] = field(default_factory=list)
    source: str = ""
    #: the cell's ``lines`` (None: substrings ``stdout``/``stderr`` only)
    expected: list[Line] | None = None


@dataclass
class Comparison:
    """The whole comparison; ``recordings`` holds the raw IOPub traffic (None: no kernel)."""

    cells: list[CellComparison]
    argv: dict[str, list[str]]
    errors: dict[str, str | None]
    recordings: dict[str, dict[str, Any] | None]
    exit_status: int = 0


def compare(
    cells: Sequence[DemoCell], numbers: Sequence[int], recordings: dict[str, dict[str, Any] | None]
) -> list[CellComparison]:
    """Judge every cell on every kernel of ``recordings`` and list the differences.

    Guarantees: one :class:`CellComparison` per cell, with a :class:`KernelCell` for
    each kernel in :data:`KERNELS` (a kernel without a recording gets the verdict
    ``kernel did not start`` for every cell). Pure.
    """
    result = []
    for k, cell in enumerate(cells):
        per: dict[str, KernelCell] = {}
        for name in KERNELS:
            rec = recordings.get(name)
            if rec is None or k >= len(rec["requests"]):
                issue = Issue("status", "kernel did not start")
                per[name] = KernelCell("kernel did not start", [issue], None, 0, [])
            else:
                per[name] = check_cell(cells, k, rec, numbers)
        diffs = differences(per[KERNELS[0]], per[KERNELS[1]])
        expected = None if cell.lines is None else list(cell.lines)
        result.append(
            CellComparison(numbers[k], cell.key, cell.title, per, diffs, cell.source, expected)
        )
    return result


def exit_status(cells: Sequence[CellComparison], errors: dict[str, str | None]) -> int:
    """1 if iostream did not start or missed a correctness expectation, else 0.

    Guarantees: depends only on iostream's verdicts, never on stock's and never on
    timing issues.
    """
    if errors.get("iostream"):
        return 1
    bad = [c for c in cells if any(not i.timing for i in c.results["iostream"].issues)]
    return 1 if bad else 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_report(comparison: Comparison) -> list[str]:
    """The terminal report: a table of verdicts and first-output times, then details.

    Guarantees: one table row per cell; then, for each cell where a kernel's verdict is
    not ``ok`` or the kernels differ, each kernel's issues and shown lines (with ms
    since the execute_request) and the differences. Pure.
    """
    lines = [
        f"{'#':>3}  {'cell':<40} {'stock':<20} {'iostream':<20} first output ms",
        f"{'':>3}  {'':<40} {'':<20} {'':<20} stock / iostream",
    ]
    for c in comparison.cells:
        st, io = c.results["stock"], c.results["iostream"]
        lines.append(
            f"{c.number:>3}  {_cut(c.title, 40):<40} {_cut(st.verdict, 20):<20} "
            f"{_cut(io.verdict, 20):<20} {_ms(st.first_ms):>5} / {_ms(io.first_ms)}"
        )
    for c in comparison.cells:
        if all(r.verdict == "ok" for r in c.results.values()) and not c.differences:
            continue
        lines += ["", f"[{c.number}] {c.title} ({c.key})"]
        for name, r in c.results.items():
            lines.append(f"  {name}: {r.verdict}")
            lines += [f"      {i.kind}: {i.detail}" for i in r.issues]
            for s in r.shown:
                late = "  [after idle]" if s.after_idle else ""
                lines.append(f"    +{s.ms:8.1f} ms  {s.kind:<7} {_cut(repr(s.text), 72)}{late}")
        if c.differences:
            lines.append("  differences:")
            lines += [f"    - {d}" for d in c.differences]
    lines.append("")
    for name in KERNELS:
        if comparison.errors.get(name):
            lines.append(f"{name}: {comparison.errors[name]}")
        results = [c.results[name] for c in comparison.cells]
        ok = sum(r.verdict == "ok" for r in results)
        timing = sum(any(i.timing for i in r.issues) for r in results)
        lines.append(f"{name}: {ok}/{len(results)} cells ok ({timing} with a timing verdict)")
    lines.append(
        f"exit status {comparison.exit_status} (iostream's correctness verdicts only; "
        f"immediate = first output within {IMMEDIATE_MS:.0f} ms)"
    )
    return lines


def run_compare(
    cells: Sequence[DemoCell] = DEMO_CELLS,
    *,
    timeout: float = 60.0,
    settle: float = 3.0,
    json_path: str | None = None,
    verbose: bool = False,
    out: Callable[[str], None] = print,
) -> Comparison:
    """Run ``cells`` on stock ipykernel, then on iostream, and report how they differ.

    Guarantees: each kernel is started from a temporary kernelspec (see
    :class:`iostream.app.demo.DemoKernel`), runs the cells through
    :func:`iostream.app.demo.record`, and is shut down before the next starts; every
    wait is bounded (startup by ``timeout``, each cell by ``timeout``, the end by
    ``settle``). Prints :func:`format_report` via ``out``; with ``json_path`` also
    writes the comparison with the raw recordings there. A kernel's own terminal
    output is printed when it did not start or with ``verbose``. Returns the
    comparison; its ``exit_status`` is :func:`exit_status`.
    """
    numbers = [DEMO_CELLS.index(c) + 1 if c in DEMO_CELLS else 0 for c in cells]
    numbers = [n or k + 1 for k, n in enumerate(numbers)]
    recordings: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str | None] = {}
    argv: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="iostream-compare-") as tmp:
        for name in KERNELS:
            (Path(tmp) / name).mkdir()
            kernel = DemoKernel(Path(tmp) / name, stock=name == "stock")
            argv[name] = kernel.argv
            out(f"{name}: {' '.join(kernel.argv)}")
            recordings[name] = errors[name] = None
            try:
                ready_ms = kernel.start(timeout)
                out(f"{name}: ready after {ready_ms:.0f} ms; running {len(cells)} cells")
                recordings[name] = record(kernel.client, cells, timeout, settle)
            except (RuntimeError, TimeoutError) as e:
                errors[name] = f"kernel did not become ready: {e}"
            finally:
                kernel.stop()
                if verbose or errors[name]:
                    out(f"--- {name} kernel's own stdout/stderr ---")
                    out(kernel.log().rstrip("\n") or "(empty)")
    result = compare(cells, numbers, recordings)
    comparison = Comparison(result, argv, errors, recordings, exit_status(result, errors))
    out("")
    for line in format_report(comparison):
        out(line)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(asdict(comparison), f, indent=1, ensure_ascii=False)
            f.write("\n")
        out(f"comparison written to {json_path}")
    return comparison
