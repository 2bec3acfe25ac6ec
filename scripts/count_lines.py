"""Count the code lines of the library: what issue 18's size aim (1,600) measures.

A code line is a line of a ``.py`` file under ``src/iostream`` that holds some
token other than a comment, and is not part of a docstring (the string that is
the first statement of a module, class or function). Blank lines, comments and
docstrings are not counted. The application (``src/iostream/app``, the
``python -m iostream`` command) is not the library and is counted apart.

    python scripts/count_lines.py            # per module, then the totals
    python scripts/count_lines.py --total    # the library's total only
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "iostream"
APP = PACKAGE / "app"


def docstring_lines(source: str) -> set[int]:
    """The line numbers that belong to docstrings in ``source``."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                end = body[0].end_lineno or body[0].lineno
                lines.update(range(body[0].lineno, end + 1))
    return lines


def code_lines(source: str) -> int:
    """How many lines of ``source`` are code (see the module docstring)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    skip.add(tokenize.ENDMARKER)
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstring_lines(source))


def count(paths: list[Path]) -> dict[Path, int]:
    """Code lines per file, for ``paths``."""
    return {path: code_lines(path.read_text(encoding="utf-8")) for path in paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", action="store_true", help="print the library's total only")
    args = parser.parse_args(argv)
    files = sorted(PACKAGE.rglob("*.py"))
    library = count([p for p in files if APP not in p.parents])
    app = count([p for p in files if APP in p.parents])
    if args.total:
        print(sum(library.values()))
        return 0
    for path, n in sorted(library.items(), key=lambda item: -item[1]):
        print(f"{n:6d}  {path.relative_to(PACKAGE.parent)}")
    print(f"{sum(library.values()):6d}  library (src/iostream without app/)")
    print(f"{sum(app.values()):6d}  application (src/iostream/app)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
