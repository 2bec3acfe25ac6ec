"""End to end in a real JupyterLab, in headless Chromium: what a person sees in each cell.

Each test writes a notebook (see :mod:`browser_cells`), opens it in JupyterLab on a
kernelspec, runs all cells through ``notebook:run-all-cells`` and reads every cell's
outputs from the DOM (stdout/stderr by ``data-mime-type``).

- ``test_iostream_notebook``: every scenario on ``python -m iostream kernel``.
- ``test_thread_inherit_context_notebook``: threads, thread-pool work and fork Pool
  workers print into the cell that started them, on
  ``python -m iostream kernel --thread-inherit-context``.
- ``test_stock_differences``: the same notebook on stock ipykernel, recording (not
  failing on) where its page differs from iostream's expectations.

On failure the page (HTML, screenshot, console) and the server log are dumped into
the test's tmp dir. Run: ``python -m pytest -q tests/browser``. The tests skip when
Chromium, Playwright or JupyterLab is missing, unless ``IOSTREAM_BROWSER_TESTS=required``
(then the module fails to import, so CI cannot pass by skipping them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from browser_cells import (
    MARKER,
    NbCell,
    Problems,
    Run,
    main_notebook,
    optin_notebook,
    run_cells,
)
from labkit import IOSTREAM_KERNEL, OPTIN_KERNEL, STOCK_KERNEL, JupyterLab, missing_requirements

MISSING = missing_requirements()
if MISSING and os.environ.get("IOSTREAM_BROWSER_TESTS") == "required":
    # CI sets this so that a missing browser or package fails instead of skipping.
    raise RuntimeError(f"browser tests required (IOSTREAM_BROWSER_TESTS=required): {MISSING}")

pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.timeout(420),
]


def _format(problems: dict[str, Problems], cells: list[NbCell]) -> str:
    titles = {c.key: c.title for c in cells}
    return "\n".join(f"- {key} ({titles[key]}): " + "; ".join(ps) for key, ps in problems.items())


def _stdout_class(run: Run) -> str:
    text = run.by_key()["setup"].stream_text("stdout")
    return text.removeprefix("stdout class:").strip()


def _save(run: Run, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    path = directory / f"{run.name}.dom.json"
    data = {"cells": run.summary(), **(extra or {})}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def test_iostream_notebook(lab: JupyterLab, browser: Any, tmp_path: Path) -> None:
    """Every cell of the main notebook shows exactly what it wrote, in its own cell."""
    cells = main_notebook()
    with run_cells(lab, browser, cells, IOSTREAM_KERNEL, "iostream", dump_dir=tmp_path) as run:
        _save(run, tmp_path)
        assert _stdout_class(run).startswith("iostream."), _stdout_class(run)
        problems = run.problems()
        assert not problems, "cells that differ on the page:\n" + _format(problems, cells)
        # The progressive cell could only go on once "step 0" was on the page; so it
        # was rendered while the cell was still running, before its execution count.
        assert run.gate is not None and run.gate.opened and run.gate.opened_while_running


def test_thread_inherit_context_notebook(lab: JupyterLab, browser: Any, tmp_path: Path) -> None:
    """With --thread-inherit-context a thread, and work submitted to a thread pool,
    print into the cell that started them, after it finished, not the running one."""
    cells = optin_notebook()
    with run_cells(lab, browser, cells, OPTIN_KERNEL, "optin", dump_dir=tmp_path) as run:
        _save(run, tmp_path)
        assert _stdout_class(run).startswith("iostream."), _stdout_class(run)
        problems = run.problems()
        assert not problems, (
            "cells that differ on the page under --thread-inherit-context:\n"
            + _format(problems, cells)
        )


def test_stock_differences(lab: JupyterLab, browser: Any, tmp_path: Path) -> None:
    """Run the main notebook on stock ipykernel and record where its page differs.

    Stock's differences are written to ``stock-differences.json`` / ``.md`` in the
    tmp dir and printed; they do not fail the test. What must hold: the notebook ran to
    completion on stock ipykernel (every cell executed, the marker rendered).
    """
    import ipykernel

    cells = main_notebook()
    with run_cells(lab, browser, cells, STOCK_KERNEL, "stock", dump_dir=tmp_path) as run:
        assert _stdout_class(run) == "ipykernel.iostream.OutStream", _stdout_class(run)
        assert all(v.execution_count is not None for v in run.views)
        assert MARKER in run.by_key()["marker"].stream_text("stdout")
        problems = run.problems()
        titles = {c.key: c.title for c in cells}
        kernel = f"stock ipykernel {ipykernel.__version__}"
        differences = [
            {"cell": key, "title": titles[key], "problems": ps} for key, ps in problems.items()
        ]
        report: dict[str, Any] = {
            "kernel": kernel,
            "cells": len(cells),
            "differences": differences,
            "progressive_first_line_seen_while_running": bool(
                run.gate and run.gate.opened_while_running
            ),
        }
        _save(run, tmp_path, report)
        (tmp_path / "stock-differences.json").write_text(
            json.dumps(report, indent=1), encoding="utf-8"
        )
        md = [
            f"# Where {kernel} differs in JupyterLab",
            "",
            f"{len(problems)} of {len(cells)} cells differ from what they wrote"
            " (the page's outputs per cell are in stock.dom.json).",
            "",
            *(f"- **{key}** ({titles[key]}): " + "; ".join(ps) for key, ps in problems.items()),
        ]
        (tmp_path / "stock-differences.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        print(f"\n{kernel}: {len(problems)} of {len(cells)} cells differ")
        print(_format(problems, cells) or "(none)")
        print(f"report: {tmp_path / 'stock-differences.md'}")
