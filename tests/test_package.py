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


def _module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` (a package's is its own)."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_trees() -> list[tuple[str, ast.Module]]:
    """Every module of the package, subpackages included: (dotted name, tree)."""
    return [
        (_module_name(path), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(SRC.rglob("*.py"))
    ]


MODULES = {name for name, _ in _source_trees()}


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


def _import_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported (not inside functions, whose
    imports are lazy by design), ``if TYPE_CHECKING:`` blocks included."""
    nodes: list[ast.AST] = []
    for child in ast.iter_child_nodes(tree):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nodes.append(child)
            nodes.extend(_import_time_nodes(child))
    return nodes


def _imports_of(module: str, tree: ast.Module, lazy: bool = False) -> set[str]:
    """The modules of this package that ``module`` imports when imported (also for
    typing only), as dotted names; with ``lazy``, inside functions too."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    nodes = ast.walk(tree) if lazy else _import_time_nodes(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # ``from . import x`` imports the module x if there is one.
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found - {module}


def _is_package(module: str) -> bool:
    return (SRC.parent / module.replace(".", "/") / "__init__.py").is_file()


def test_the_modules_import_each_other_without_a_cycle() -> None:
    """Dependencies go one way. A package's ``__init__`` re-exports its modules, so
    an import of the package itself (``from iostream import x``) is not followed."""
    graph = {name: _imports_of(name, tree) for name, tree in _source_trees()}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        assert module not in stack, " -> ".join([*stack, module])
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            if not _is_package(dep):
                visit(dep, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert "iostream.outstream" not in graph["iostream.iothread"]


def test_the_core_imports_nothing_that_does_io() -> None:
    """The sans-IO core (iostream.core) imports nothing outside itself but pure
    standard-library modules: no zmq, tornado, threads, clocks, sockets or files."""
    allowed = {
        "__future__",
        "codecs",
        "collections",
        "dataclasses",
        "enum",
        "math",
        "typing",
    }
    found = []
    for name, tree in _source_trees():
        if not name.startswith("iostream.core"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            found += [f"{name}: {m}" for m in modules if m.split(".")[0] not in allowed]
        found += [
            f"{name}: {m}"
            for m in _imports_of(name, tree, lazy=True)
            if not m.startswith("iostream.core")
        ]
    assert found == []


def test_outstream_talks_to_its_thread_only_through_the_protocol() -> None:
    """No type checks of the thread, no private calls into it, no loop timers in
    OutStream's modules: only the methods of iostream.threadlink's protocol."""
    trees = dict(_source_trees())
    stream_modules = ["iostream.outstream", "iostream.streamgroup"]
    found = []
    for node in (n for name in stream_modules for n in ast.walk(trees[name])):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and any(isinstance(a, ast.Name) and a.id == "IOPubThread" for a in ast.walk(node))
        ):
            found.append(f"{node.lineno}: isinstance(..., IOPubThread)")
        if isinstance(node, ast.Attribute) and node.attr in {
            "_on_io_thread",
            "remove_timeout",
            "io_loop",
        }:
            found.append(f"{node.lineno}: .{node.attr}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "call_later"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "io_loop"
        ):
            found.append(f"{node.lineno}: io_loop.call_later")
    assert found == []


def test_the_protocol_lists_name_every_member_of_the_protocol_class() -> None:
    """threadlink's ATTRIBUTES and PROTOCOL (what ``link`` checks) are exactly the
    members of the IOThread protocol class, and IOPubThread has them all."""
    from iostream import IOPubThread, threadlink

    declared = {name for name in vars(threadlink.IOThread) if not name.startswith("_")} | set(
        threadlink.IOThread.__annotations__
    )
    assert set(threadlink.ATTRIBUTES) | set(threadlink.PROTOCOL) == declared
    assert all(hasattr(IOPubThread, name) for name in declared)


def test_the_library_never_imports_the_app() -> None:
    """``iostream.app`` (``python -m iostream``) depends on the library, never the
    other way round: no module outside it imports it, not even lazily. Only
    ``__main__``, which ``import iostream`` never runs, starts the app."""
    app = SRC / "app"
    assert (app / "__init__.py").is_file() and (app / "cli.py").is_file()
    main = SRC / "__main__.py"
    library = [
        path for path in sorted(SRC.rglob("*.py")) if app not in path.parents and path != main
    ]
    assert SRC / "__init__.py" in library and SRC / "core" / "buffer.py" in library
    found = []
    for path in library:
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            f"{module} imports {name}"
            for name in _imports_of(module, tree, lazy=True)
            if name == "iostream.app" or name.startswith("iostream.app.")
        ]
    assert found == []
    main_tree = ast.parse(main.read_text(encoding="utf-8"))
    assert "iostream.app.cli" in _imports_of("iostream.__main__", main_tree)

    rc, out, err = run_python(
        "import iostream, sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('iostream.app')))\n"
    )
    assert rc == 0, err
    assert out == "[]\n"


def test_the_line_counting_script_counts_code_only() -> None:
    """scripts/count_lines.py (issue 18's measure): docstrings, comments and blank
    lines are not code; a multi-line statement counts each of its lines."""
    import runpy

    script = runpy.run_path(str(SRC.parent.parent / "scripts" / "count_lines.py"))
    sample = (
        '"""Module docstring,\n\nover three lines."""\n'
        "\n"
        "# a comment\n"
        "import os  # code with a comment\n"
        "\n"
        "def f(\n"
        "    x: int,\n"
        ") -> int:\n"
        '    """Docstring."""\n'
        "    s = '''not a docstring\n"
        "    on two lines'''\n"
        "    return x\n"
    )
    assert script["code_lines"](sample) == 7
    rc, out, err = run_python(
        f"import runpy, sys; sys.argv = ['count', '--total']; "
        f"runpy.run_path({str(SRC.parent.parent / 'scripts' / 'count_lines.py')!r}, "
        f"run_name='__main__')"
    )
    assert rc == 0, err
    assert 500 < int(out) < 5000


def test_one_class_per_concept_without_mixins() -> None:
    """OutStream and IOPubThread are each one class in one module: no base class
    of the package's own, no ``if TYPE_CHECKING:`` re-declaring a host's
    attributes, and no module touching another module's private names."""
    from iostream import IOPubThread, OutStream

    assert [c.__module__ for c in OutStream.__mro__ if c.__module__.startswith("iostream")] == [
        "iostream.outstream"
    ]
    assert [c.__module__ for c in IOPubThread.__mro__ if c.__module__.startswith("iostream")] == [
        "iostream.iothread"
    ]
    found = []
    for name, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                declared = [n for n in node.body if isinstance(n, ast.AnnAssign | ast.FunctionDef)]
                if declared:
                    found.append(f"{name}:{node.lineno}: TYPE_CHECKING re-declarations")
            if isinstance(node, ast.ImportFrom) and node.level:
                found += [
                    f"{name}:{node.lineno}: imports private {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert found == []
