"""Screenshot the browser tests' notebook in JupyterLab on iostream and on stock ipykernel.

Usage: ``python tests/browser/screenshot.py docs/notebook-in-jupyterlab.png``

Starts its own JupyterLab (temporary directories) and headless Chromium, runs the main
notebook of :mod:`browser_cells` once on the ``iostream`` kernelspec and once on stock
ipykernel (``python3``), screenshots each notebook pane (1200 px wide, every cell) and
composes the two side by side, with captions, into one PNG, by rendering a local HTML
page in the same Chromium (no image library). Cells whose page differs from what they
wrote (the checks of the browser tests) are outlined in red, with the difference
written above them. Exits 0 when the PNG was written.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_cells import NbCell, Run, main_notebook, run_cells
from labkit import (
    IOSTREAM_KERNEL,
    STOCK_KERNEL,
    JupyterLab,
    launch_chromium,
    missing_requirements,
)

WIDTH = 1200

_MARK_JS = """
(marks) => {
  const p = window.jupyterapp.shell.currentWidget;
  const cells = Array.from(p.content.node.querySelectorAll('.jp-Cell.jp-CodeCell'));
  for (const [i, text] of marks) {
    const cell = cells[i];
    if (!cell) continue;
    cell.style.outline = '3px solid #d32f2f';
    cell.style.outlineOffset = '-2px';
    const note = document.createElement('div');
    note.textContent = text;
    note.style.cssText = 'background:#d32f2f;color:#fff;font:13px/1.35 sans-serif;'
      + 'padding:3px 8px;margin:0 0 2px 0;white-space:pre-wrap;';
    cell.prepend(note);
  }
}
"""


def _mark_differences(run: Run, cells: list[NbCell]) -> int:
    """Outline the cells whose page differs from their check; return how many."""
    problems = run.problems()
    index = {c.key: i for i, c in enumerate(cells)}
    marks = []
    for key, ps in problems.items():
        text = "differs: " + "; ".join(ps)
        marks.append([index[key], text if len(text) <= 400 else text[:400] + " ..."])
    run.page.page.evaluate(_MARK_JS, marks)
    return len(marks)


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def compose(browser: object, panes: list[tuple[str, str, Path]], out: Path) -> Path:
    """Render ``panes`` ((caption, subcaption, png)) side by side into ``out`` (a PNG)."""
    columns = "".join(
        f"<figure><figcaption><b>{html.escape(cap)}</b><br><span>{html.escape(sub)}</span>"
        f'</figcaption><img src="{_data_uri(png)}"></figure>'
        for cap, sub, png in panes
    )
    page_html = f"""<!doctype html><html><head><meta charset="utf-8"><style>
      body {{ margin: 0; background: #eceff1; font-family: sans-serif; }}
      main {{ display: flex; gap: 16px; padding: 16px; align-items: flex-start; }}
      figure {{ margin: 0; background: #fff; box-shadow: 0 1px 4px rgba(0,0,0,.25); }}
      figcaption {{ font-size: 26px; padding: 10px 14px; border-bottom: 1px solid #cfd8dc; }}
      figcaption span {{ font-size: 15px; color: #455a64; }}
      img {{ display: block; width: {WIDTH}px; }}
    </style></head><body><main>{columns}</main></body></html>"""
    with tempfile.TemporaryDirectory(prefix="compose-") as tmp:
        page_file = Path(tmp) / "compose.html"
        page_file.write_text(page_html, encoding="utf-8")
        context = browser.new_context(  # type: ignore[attr-defined]
            viewport={"width": len(panes) * (WIDTH + 16) + 16, "height": 800}
        )
        try:
            page = context.new_page()
            page.goto(page_file.as_uri(), wait_until="load")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            context.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the side-by-side PNG; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"screenshot.py: {missing}", file=sys.stderr)
        return 2
    import ipykernel
    from playwright.sync_api import sync_playwright

    import iostream

    cells = main_notebook()
    with (
        tempfile.TemporaryDirectory(prefix="nb-screenshot-") as tmp,
        JupyterLab(Path(tmp) / "lab") as lab,
        sync_playwright() as pw,
    ):
        browser = launch_chromium(pw)
        try:
            panes = []
            for kernel, caption, sub in (
                (
                    IOSTREAM_KERNEL,
                    "iostream",
                    f"kernel-iostream {iostream.__version__} (python -m iostream kernel)",
                ),
                (
                    STOCK_KERNEL,
                    f"stock ipykernel {ipykernel.__version__}",
                    "python -m ipykernel_launcher",
                ),
            ):
                with run_cells(lab, browser, cells, kernel, kernel, viewport=(WIDTH, 1000)) as run:
                    n = _mark_differences(run, cells)
                    sub += (
                        f" - {n} of {len(cells)} cells differ" if n else " - every cell as written"
                    )
                    png = run.page.screenshot_notebook(Path(tmp) / f"{kernel}.png", width=WIDTH)
                    panes.append((caption, sub, png))
                    print(f"{caption}: {n} cells differ")
            compose(browser, panes, args.output)
        finally:
            browser.close()
    size = args.output.stat().st_size
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
