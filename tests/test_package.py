"""The package surface: imports without ipykernel, ``iostream.install()``."""

from __future__ import annotations

import ast
from pathlib import Path

from support import run_python

SRC = Path(__file__).resolve().parent.parent / "src" / "iostream"

BLOCK_IPYKERNEL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ipykernel" or name.startswith("ipykernel."):
            raise ImportError("ipykernel is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
"""


def test_imports_and_publishes_without_ipykernel() -> None:
    code = BLOCK_IPYKERNEL + (
        "import iostream, sys\n"
        "assert not any(m.startswith('ipykernel') for m in sys.modules)\n"
        "assert 'iostream.integration' not in sys.modules\n"
        "sent = []\n"
        "class S:\n"
        "    def send(self, *a, **k): sent.append(a[2]['text'])\n"
        "out = iostream.OutStream('stdout', S(), None)\n"
        "out.write('hi\\n')\n"
        "print(sent)\n"
    )
    rc, out, err = run_python(code)
    assert rc == 0, err
    assert out == "['hi\\n']\n"


def test_install_is_exported_and_swaps_ipykernel_iostream() -> None:
    code = (
        "import sys, iostream\n"
        "iostream.install()\n"
        "import ipykernel.iostream\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "print(ipykernel.iostream is iostream, sys.modules['ipykernel.iostream'] is iostream)\n"
    )
    rc, out, err = run_python(code)
    assert rc == 0, err
    assert out == "True True\n"


def _source_trees() -> list[tuple[str, ast.Module]]:
    return [
        (path.name, ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(SRC.glob("*.py"))
    ]


def test_no_signal_juggling_ctypes_or_frame_walking_in_the_library() -> None:
    """The library never touches signal handlers, C structures or the call stack:
    only the IO thread sends, so Ctrl-C needs no special handling."""
    found = []
    for name, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                modules = []
            found += [
                f"{name}:{node.lineno}: import {m}"
                for m in modules
                if m.split(".")[0] in {"ctypes", "_signal", "signal"}
            ]
            if isinstance(node, ast.Attribute) and node.attr in {"_getframe", "f_back"}:
                found.append(f"{name}:{node.lineno}: .{node.attr}")
    assert found == []
