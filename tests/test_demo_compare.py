"""``python -m iostream demo --compare``: stock ipykernel and iostream on the same cells.

The judging is pure and is tested on hand-built recordings (what :func:`iostream.app.demo.
record` returns: the requests and every IOPub message). One test runs the real
comparison: both kernels through jupyter_client, via the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from iostream.app import cli
from iostream.app.democells import (
    DEMO_CELLS,
    WORKERS_PRINT_INTO_THE_RUNNING_CELL,
    DemoCell,
    render,
    select_cells,
)
from iostream.app.democompare import (
    IMMEDIATE_MS,
    KERNELS,
    Comparison,
    check_cell,
    compare,
    differences,
    exit_status,
    format_report,
)
from support import FD_CAPTURE_PLATFORM

# -- hand-built recordings -----------------------------------------------------------


def stream(ms: float, parent: str, name: str, text: str) -> dict[str, Any]:
    return {"ms": ms, "type": "stream", "parent": parent, "name": name, "text": text}


def display(ms: float, parent: str, *mimes: str) -> dict[str, Any]:
    return {"ms": ms, "type": "display_data", "parent": parent, "data": sorted(mimes)}


def status(ms: float, parent: str, state: str) -> dict[str, Any]:
    return {"ms": ms, "type": "status", "parent": parent, "state": state}


def recording(sent: list[float], *messages: dict[str, Any]) -> dict[str, Any]:
    """Requests m0, m1, ... sent at ``sent`` (ms), all with status ok, and ``messages``."""
    requests = [
        {"msg_id": f"m{k}", "sent": t, "status": "ok", "reply": t + 1, "idle": t + 1}
        for k, t in enumerate(sent)
    ]
    return {"requests": requests, "messages": list(messages)}


def out(*texts: str) -> tuple[tuple[str, str], ...]:
    return tuple(("stdout", t) for t in texts)


A = DemoCell("a", "print('a1'); print('a2')", key="a", lines=out("a1\n", "a2\n"))
B = DemoCell("b", "print('b')", key="b", lines=out("b\n"))
MIXED = DemoCell(
    "mixed",
    "...",
    key="mixed",
    lines=(("stdout", "o0\n"), ("stderr", "e0\n"), ("stdout", "o1\n"), ("stderr", "e1\n")),
)


def issues(result: Any) -> list[str]:
    return [i.kind for i in result.issues]


# -- what a frontend shows -----------------------------------------------------------


def test_render_joins_a_stream_and_splits_lines_like_a_frontend() -> None:
    msgs = [
        stream(10, "m0", "stdout", "ab"),
        stream(12, "m0", "stdout", "c\nd"),
        stream(13, "m0", "stderr", "e\n"),
        stream(14, "m0", "stdout", "\rx\rdone\n"),
        display(15, "m0", "text/html", "text/plain"),
        stream(16, "m0", "stdout", "tail"),
    ]
    shown = [(s.kind, s.text, s.ms) for s in render(msgs, sent=10)]
    assert shown == [
        ("stdout", "abc\n", 2),
        ("stdout", "d", 2),  # the unterminated rest is ended by the stderr output
        ("stderr", "e\n", 3),
        ("stdout", "\rx\rdone\n", 4),  # \r does not split a line
        ("display_data", "text/html, text/plain", 5),
        ("stdout", "tail", 6),
    ]


# -- verdicts ------------------------------------------------------------------------


def test_expected_output_in_its_own_cell_is_ok() -> None:
    rec = recording(
        [0, 100],
        stream(3, "m0", "stdout", "a1\na2\n"),
        status(4, "m0", "idle"),
        stream(103, "m1", "stdout", "b\n"),
        status(104, "m1", "idle"),
    )
    a, b = (check_cell([A, B], k, rec) for k in (0, 1))
    assert (a.verdict, b.verdict) == ("ok", "ok")
    assert (a.first_ms, b.first_ms) == (3, 3)
    assert a.stream_messages == 1


def test_a_line_under_the_next_cells_request_is_in_the_wrong_cell() -> None:
    # cell a's second line arrives after a's idle, under b's parent (as when a
    # kernel publishes it late with whatever parent is current)
    rec = recording(
        [0, 100],
        stream(3, "m0", "stdout", "a1\n"),
        status(4, "m0", "idle"),
        stream(102, "m1", "stdout", "a2\nb\n"),
        status(104, "m1", "idle"),
    )
    a, b = (check_cell([A, B], k, rec, numbers=[7, 8]) for k in (0, 1))
    assert issues(a) == ["wrong cell"]
    assert "under cell 8's request" in a.issues[0].detail
    assert a.verdict == "wrong cell"
    assert issues(b) == ["other cell's output"]
    assert "cell 7's output" in b.issues[0].detail


def test_a_line_under_no_request_is_in_the_wrong_cell() -> None:
    rec = recording([0], stream(3, "m0", "stdout", "a1\n"), stream(5, "", "stdout", "a2\n"))
    a = check_cell([A], 0, rec)
    assert issues(a) == ["wrong cell"]
    assert "under no cell's request" in a.issues[0].detail


def test_output_after_the_cells_idle_status_is_late() -> None:
    rec = recording(
        [0],
        stream(3, "m0", "stdout", "a1\n"),
        status(4, "m0", "idle"),
        stream(4, "m0", "stdout", "a2\n"),  # same ms, but it arrived after idle
    )
    a = check_cell([A], 0, rec)
    assert issues(a) == ["after idle"]
    assert [s.after_idle for s in a.shown] == [False, True]


def test_stdout_batched_apart_from_stderr_is_out_of_order() -> None:
    rec = recording(
        [0], stream(3, "m0", "stdout", "o0\no1\n"), stream(3, "m0", "stderr", "e0\ne1\n")
    )
    result = check_cell([MIXED], 0, rec)
    assert issues(result) == ["order"]
    assert "written out:'o0' | err:'e0'" in result.issues[0].detail


def test_unordered_cell_accepts_any_order() -> None:
    cell = DemoCell("p", "...", key="p", lines=out("w0\n", "w1\n"), ordered=False)
    rec = recording([0], stream(3, "m0", "stdout", "w1\nw0\n"))
    assert check_cell([cell], 0, rec).verdict == "ok"


def test_lines_written_in_pieces_by_two_writers_are_glued() -> None:
    cell = DemoCell("p", "...", key="p", lines=out("w0\n", "w1\n"), ordered=False)
    rec = recording(
        [0],
        stream(3, "m0", "stdout", "w0"),
        stream(4, "m0", "stdout", "w1"),
        stream(5, "m0", "stdout", "\n"),
        stream(6, "m0", "stdout", "\n"),
    )
    result = check_cell([cell], 0, rec)
    assert issues(result) == ["glued"]  # the stray blank line is part of the glue
    assert "'w0w1\\n'" in result.issues[0].detail


def test_missing_and_extra_text_and_a_failed_cell() -> None:
    rec = recording([0], stream(3, "m0", "stdout", "a1\nsurprise\n"))
    rec["requests"][0]["status"] = "error"
    result = check_cell([A], 0, rec)
    assert issues(result) == ["status", "extra", "missing"]
    assert "'surprise\\n'" in result.issues[1].detail


def test_display_order_among_prints_is_checked() -> None:
    cell = DemoCell(
        "d", "...", key="d", lines=(("stdout", "x\n"), ("display", "text/html"), ("stdout", "y\n"))
    )
    good = recording(
        [0],
        stream(1, "m0", "stdout", "x\n"),
        display(2, "m0", "text/html"),
        stream(3, "m0", "stdout", "y\n"),
    )
    bad = recording(
        [0], stream(1, "m0", "stdout", "x\ny\n"), display(2, "m0", "text/html", "text/plain")
    )
    assert check_cell([cell], 0, good).verdict == "ok"
    assert issues(check_cell([cell], 0, bad)) == ["order"]


def test_substring_cells_are_checked_for_their_substrings_only() -> None:
    cell = DemoCell("c", "...", stdout=("OutStream",), key="c")
    here = recording(
        [0], stream(1, "m0", "stdout", "x.OutStream\n"), stream(2, "m0", "stdout", "z\n")
    )
    away = recording([0, 50], stream(51, "m1", "stdout", "x.OutStream\n"))
    assert check_cell([cell], 0, here).verdict == "ok"
    assert issues(check_cell([cell, B], 0, away)) == ["wrong cell"]


def test_late_first_output_of_an_immediate_cell_is_a_timing_verdict() -> None:
    cell = DemoCell("i", "...", key="i", lines=out("first\n", "second\n"), immediate=True)
    held = recording(
        [0], stream(203.4, "m0", "stdout", "first\n"), stream(1004, "m0", "stdout", "second\n")
    )
    quick = recording([0], stream(IMMEDIATE_MS, "m0", "stdout", "first\nsecond\n"))
    result = check_cell([cell], 0, held)
    assert result.verdict == "held ~200 ms"
    assert [i.timing for i in result.issues] == [True]
    assert check_cell([cell], 0, quick).verdict == "ok"


# -- comparing, exit status ----------------------------------------------------------


def stock_wrong_iostream_right() -> dict[str, dict[str, Any] | None]:
    stock = recording(
        [0, 100],
        stream(3, "m0", "stdout", "a1\n"),
        status(4, "m0", "idle"),
        stream(102, "m1", "stdout", "a2\n"),
        stream(103, "m1", "stdout", "b\n"),
    )
    iostream = recording(
        [0, 100], stream(3, "m0", "stdout", "a1\na2\n"), stream(103, "m1", "stdout", "b\n")
    )
    return {"stock": stock, "iostream": iostream}


def test_a_difference_on_stock_is_never_ok() -> None:
    cells = compare([A, B], [1, 2], stock_wrong_iostream_right())
    a, b = cells
    assert a.results["stock"].verdict == "wrong cell"
    assert b.results["stock"].verdict == "other cell's output"
    assert all(c.results["iostream"].verdict == "ok" for c in cells)
    assert any(d.startswith("verdict: stock wrong cell; iostream ok") for d in a.differences)
    assert "stream messages: stock 2; iostream 1" in b.differences
    assert exit_status(cells, {}) == 0  # stock's verdicts do not count


def test_exit_status_counts_iostreams_correctness_only() -> None:
    swapped = stock_wrong_iostream_right()
    swapped["stock"], swapped["iostream"] = swapped["iostream"], swapped["stock"]
    assert exit_status(compare([A, B], [1, 2], swapped), {}) == 1
    slow = DemoCell("i", "...", key="i", lines=out("x\n"), immediate=True)
    held = recording([0], stream(500, "m0", "stdout", "x\n"))
    assert exit_status(compare([slow], [1], {"stock": held, "iostream": held}), {}) == 0
    down = compare([A], [1], {"stock": recording([0]), "iostream": None})
    assert down[0].results["iostream"].verdict == "kernel did not start"
    assert exit_status(down, {"iostream": "kernel did not become ready"}) == 1


def test_differences_list_timing_count_text_and_order() -> None:
    cell = DemoCell("m", "...", key="m", lines=MIXED.lines, immediate=True)
    stock = recording(
        [0], stream(205, "m0", "stdout", "o0\no1\n"), stream(206, "m0", "stderr", "e0\ne1\n")
    )
    ours = recording(
        [0],
        *(stream(3 + k, "m0", n, t) for k, (n, t) in enumerate(MIXED.lines or ())),
    )
    s, i = check_cell([cell], 0, stock), check_cell([cell], 0, ours)
    found = differences(s, i)
    assert found[0] == "verdict: stock order, held ~200 ms; iostream ok"
    assert "first output: stock 205 ms; iostream 3 ms" in found
    assert "stream messages: stock 2; iostream 4" in found
    assert any(d.startswith("order: stock out:'o0' | out:'o1'") for d in found)
    assert differences(i, i) == []
    extra = check_cell([cell], 0, recording([0], stream(3, "m0", "stdout", "o0\nnew\n")))
    assert "only iostream shows: stdout 'new\\n'" in differences(i, extra)


def test_report_has_a_row_per_cell_and_details_only_where_needed() -> None:
    recs = stock_wrong_iostream_right()
    for rec in recs.values():
        assert rec is not None
        rec["messages"].append(stream(150, "m2", "stdout", "c\n"))
        rec["requests"].append({"msg_id": "m2", "sent": 148, "status": "ok"})
    c = DemoCell("the third cell", "print('c')", key="c", lines=out("c\n"))
    cells = compare([A, B, c], [1, 2, 3], recs)
    report = format_report(Comparison(cells, {}, {}, recs, exit_status(cells, {})))
    rows = [line for line in report if line[:3].strip().isdigit()]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert "[1] a (a)" in report and "[3] the third cell (c)" not in report
    assert "stock: 1/3 cells ok (0 with a timing verdict)" in report
    assert report[-1].startswith("exit status 0")


def test_select_cells_adds_prerequisites_in_notebook_order() -> None:
    assert select_cells(None) == DEMO_CELLS
    keys = [c.key for c in select_cells("after-print,1")]
    assert keys == ["class", "idle", "after-print"]
    with pytest.raises(ValueError, match="no demo cell 'nope'"):
        select_cells("nope")
    assert len({c.key for c in DEMO_CELLS}) == len(DEMO_CELLS)  # keys are unique


def test_the_order_cell_and_the_pool_pair_expect_issue_19s_behaviour() -> None:
    by_key = {c.key: c for c in DEMO_CELLS}
    order = by_key["fd-order"]
    written = ["py 1\n", "sub 2\n", "fd 3\n", "py 4\n", "c 5\n", "py 6\n"]
    assert order.ordered and order.lines == tuple(("stdout", t) for t in written)
    assert order.stdout == ("".join(written),)
    # The pair is in the demo only where the workers' lines belong to the using cell.
    assert ("pool-used" in by_key) == WORKERS_PRINT_INTO_THE_RUNNING_CELL
    if WORKERS_PRINT_INTO_THE_RUNNING_CELL:
        assert [c.key for c in select_cells("pool-used")] == ["pool-made", "pool-used"]
        assert by_key["pool-made"].lines == (("stdout", "pool made\n"),)
        workers = {("stdout", f"pool worker line {i}\n") for i in range(4)}
        lines = by_key["pool-used"].lines or ()
        assert workers <= set(lines) and len(lines) == len(workers) + 2


def test_compare_options_need_compare(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["demo", "--cells", "idle"], ["demo", "--compare", "--stock"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["demo", "--compare", "--cells", "nope"])
    assert "no demo cell 'nope'" in capsys.readouterr().err


# -- the real comparison -------------------------------------------------------------

#: Every cell but the fork Pool one: a Pool worker killed by ``Pool.__exit__`` moments
#: after it printed can lose the line on either kernel under load, so it is not a
#: deterministic verdict.
REAL_CELLS = ",".join(c.key for c in DEMO_CELLS if c.key != "pool")


@pytest.mark.e2e
@pytest.mark.skipif(
    not (FD_CAPTURE_PLATFORM and hasattr(os, "fork")),
    reason="the cells need fd capture (echo, os.system, C printf): Linux and macOS only",
)
def test_real_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "compare.json"
    status = cli.main(["demo", "--compare", "--cells", REAL_CELLS, "--json", str(saved)])
    printed = capsys.readouterr().out
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert status == 0 == data["exit_status"], printed
    assert data["errors"] == {"stock": None, "iostream": None}
    cells = {c["key"]: c for c in data["cells"]}
    assert list(cells) == REAL_CELLS.split(",")
    for cell in cells.values():
        assert set(cell["results"]) == set(KERNELS)
        for result in cell["results"].values():
            assert result["verdict"] and result["first_ms"] is not None, cell
        # iostream met every correctness expectation (timing is not judged here)
        assert all(i["timing"] for i in cell["results"]["iostream"]["issues"]), cell
    # both kernels really ran
    shown = {k: cells["class"]["results"][k]["shown"][0]["text"] for k in KERNELS}
    assert shown == {
        "stock": "ipykernel.iostream.OutStream\n",
        "iostream": "iostream.outstream.OutStream\n",
    }
    # stock's known defects, each deterministic: stdout and stderr are flushed apart
    # (all stdout first), and the first output after an idle period waits for
    # ipykernel's flush timer (flush_interval, 200 ms; a loaded machine only delays it)
    assert "order" in cells["interleaved"]["results"]["stock"]["verdict"]
    assert cells["idle"]["results"]["stock"]["verdict"].startswith("held ~")
    assert cells["idle"]["results"]["stock"]["first_ms"] >= 200
    # issue 19 (exit status 0 says so too; named here for the reader): fd-level and
    # subprocess text in write order among prints, and fork Pool workers' lines
    # under the cell that used the Pool (ipykernel 7's rule)
    assert cells["fd-order"]["results"]["iostream"]["verdict"] == "ok", printed
    if WORKERS_PRINT_INTO_THE_RUNNING_CELL:
        for key in ("pool-made", "pool-used"):
            assert cells[key]["results"]["iostream"]["verdict"] == "ok", printed
    for line in ("first output ms", "stdout and stderr interleaved", "exit status 0"):
        assert line in printed
