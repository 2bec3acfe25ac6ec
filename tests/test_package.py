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


def _import_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes that run when the module is imported (not inside functions, whose
    imports are lazy by design), ``if TYPE_CHECKING:`` blocks included."""
    nodes: list[ast.AST] = []
    for child in ast.iter_child_nodes(tree):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nodes.append(child)
            nodes.extend(_import_time_nodes(child))
    return nodes


def _imports_of(name: str, tree: ast.Module) -> set[str]:
    """The modules of this package that ``name`` imports when imported (also for
    typing only)."""
    found = set()
    for node in _import_time_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("iostream."):
            found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "iostream":
            found.add("__init__")
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] if "." in alias.name else "__init__"
                for alias in node.names
                if alias.name.split(".")[0] == "iostream"
            )
    return found - {name}


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {path[:-3]: _imports_of(path[:-3], tree) for path, tree in _source_trees()}
    modules = set(graph)
    # "app": the subpackage, which only __main__ imports (see the test below).
    assert {m for deps in graph.values() for m in deps} <= modules | {"__init__", "app"}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        assert module not in stack, " -> ".join([*stack, module])
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        if module != "__init__":
            visit(module, [])
    assert "outstream" not in graph["iothread"] and "iothread" not in graph["background_socket"]


def test_outstream_talks_to_its_thread_only_through_the_protocol() -> None:
    """No type checks of the thread, no private calls into it, no loop timers in
    OutStream's modules: only the methods of iostream.threadlink's protocol."""
    trees = dict(_source_trees())
    stream_modules = [
        "outstream.py",
        "publishing.py",
        "parents.py",
        "writepath.py",
        "streamgroup.py",
    ]
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


def _resolved_imports(module: str, is_package: bool, tree: ast.Module) -> list[tuple[int, str]]:
    """Every module ``module`` may import (lazily too), relative imports resolved
    against its package: ``(line, absolute name)``."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


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
    assert SRC / "__init__.py" in library and SRC / "core.py" in library
    found = []
    for path in library:
        relative = path.relative_to(SRC.parent).with_suffix("")
        is_package = relative.name == "__init__"
        module = ".".join(relative.parts[:-1] if is_package else relative.parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            f"{path.relative_to(SRC)}:{line}: imports {name}"
            for line, name in _resolved_imports(module, is_package, tree)
            if name == "iostream.app" or name.startswith("iostream.app.")
        ]
    assert found == []
    main_tree = ast.parse(main.read_text(encoding="utf-8"))
    assert "iostream.app.cli" in {
        name for _, name in _resolved_imports("iostream.__main__", False, main_tree)
    }

    rc, out, err = run_python(
        "import iostream, sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('iostream.app')))\n"
    )
    assert rc == 0, err
    assert out == "[]\n"
