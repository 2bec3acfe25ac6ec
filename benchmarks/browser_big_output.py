"""Big outputs in a real JupyterLab: how long until they are rendered, per kernel.

Runs, in one JupyterLab (headless Debian Chromium through Playwright, the harness of
``tests/browser/labkit.py``), the same notebook on stock ipykernel and on iostream
with the message-size limits given, and reports per big cell the seconds from the
cell's start until the marker printed right after it is rendered (JupyterLab renders
in order, so the marker shows once the big output is rendered), and the ratio to stock.

    python benchmarks/browser_big_output.py                     # default limits
    python benchmarks/browser_big_output.py --limits 1048576,16777216 --repeat 3

The kernel's peak RSS for 200 MB written in 10 MB pieces is measured separately
(``benchmarks/big_output_memory.py``): that is the kernel's memory, not the browser's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "browser"))

import labkit  # noqa: E402

#: The big cells: (name, source). Each is followed by a marker cell.
BIG_CELLS = [
    ("10 MB line", 'print("x" * 10_000_000)'),
    ("50 MB in 1 MB lines", 'for _ in range(50):\n    print("y" * 1_000_000)'),
]

_JS_MARKERS = """(markers) => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  return markers.map(([i, text]) => {
    const out = cells[i] && cells[i].querySelector('.jp-OutputArea');
    return !!(out && out.textContent.includes(text));
  });
}"""


def notebook_cells(limit: int | None) -> list[str]:
    setup = "import sys, time"
    if limit is not None:
        setup += (
            f"\nfor s in (sys.stdout, sys.stderr):\n    s.max_message_chars = {limit}"
            f"\n    s.max_buffer_chars = max(s.max_buffer_chars, {limit})"
        )
    cells = [setup + "\nprint('ready')"]
    for n, (_, source) in enumerate(BIG_CELLS):
        cells.append(source)
        cells.append(f"print('marker-{n}')")
    return cells


def measure(lab: labkit.JupyterLab, browser: Any, kernel: str, limit: int | None) -> list[float]:
    """Seconds to render each big cell (until its marker shows), in one run."""
    name = f"big-{kernel}-{limit}-{time.monotonic_ns()}.ipynb"
    labkit.write_notebook(lab.root_dir / name, notebook_cells(limit), kernel)
    with labkit.NotebookPage(browser, lab, name, kernel) as page:
        page.open()
        markers = [(2 + 2 * n, f"marker-{n}") for n in range(len(BIG_CELLS))]
        page.page.evaluate(
            "() => { const app = window.jupyterapp;"
            " void app.commands.execute('notebook:run-all-cells'); }"
        )
        start = time.monotonic()
        seen: list[float | None] = [None] * len(markers)
        deadline = start + 600
        while None in seen and time.monotonic() < deadline:
            shown = page.page.evaluate(_JS_MARKERS, [list(m) for m in markers])
            now = time.monotonic()
            for i, ok in enumerate(shown):
                if ok and seen[i] is None:
                    seen[i] = now
            time.sleep(0.1)
        if None in seen:
            raise labkit.LabError(f"markers not rendered within 600 s: {seen}")
        # The first big cell starts about when run-all starts (the setup cell is quick).
        ends = [start, *[t for t in seen if t is not None]]
        return [ends[i + 1] - ends[i] for i in range(len(BIG_CELLS))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", default="1048576,16777216,67108864")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    limits = [int(x) for x in args.limits.split(",") if x]
    problem = labkit.missing_requirements()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    configs: list[tuple[str, str, int | None]] = [("stock ipykernel", labkit.STOCK_KERNEL, None)]
    configs += [(f"iostream, {lim} chars", labkit.IOSTREAM_KERNEL, lim) for lim in limits]
    results: dict[str, list[list[float]]] = {label: [] for label, _, _ in configs}
    with tempfile.TemporaryDirectory(prefix="iostream-bench-lab-") as tmp:
        lab = labkit.JupyterLab(Path(tmp))
        with lab, sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(labkit.CHROMIUM), args=labkit.CHROMIUM_ARGS
            )
            for rep in range(args.repeat):
                for label, kernel, limit in configs:  # interleaved: same machine state
                    times = measure(lab, browser, kernel, limit)
                    results[label].append(times)
                    shown = ", ".join(f"{t:.1f} s" for t in times)
                    print(f"run {rep + 1}: {label}: {shown}", flush=True)
            browser.close()
    stock = [statistics.median(r[i] for r in results["stock ipykernel"]) for i in range(2)]
    print("\nmedian seconds until rendered (ratio to stock)")
    print(f"{'kernel':32} " + " ".join(f"{name:>24}" for name, _ in BIG_CELLS))
    for label, runs in results.items():
        meds = [statistics.median(r[i] for r in runs) for i in range(len(BIG_CELLS))]
        cols = " ".join(f"{m:>14.1f} s ({m / s:4.2f})" for m, s in zip(meds, stock, strict=True))
        print(f"{label:32} {cols}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
