"""iostream.platform: the facts, their override, and the paths they choose.

The facts are decided once, when the module is imported, so every forced platform
runs in a fresh interpreter with ``IOSTREAM_PLATFORM`` in its environment.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from iostream import platform
from support import ROOT, run_python, run_scenario

SRC = ROOT / "src" / "iostream"

#: (CAN_CAPTURE_FDS, CAN_ENLARGE_PIPE, CAN_FORK) of each platform.
FACTS = {
    "linux": [True, True, True],
    "darwin": [True, False, True],
    "win32": [False, False, False],
}
SHOW_FACTS = (
    "import json, os, sys, iostream.platform as p\n"
    "print(json.dumps([sys.platform, p.PLATFORM, "
    " p.decide(sys.platform, os.environ.get(p.ENV_VAR))[1],"
    " p.CAN_CAPTURE_FDS, p.CAN_ENLARGE_PIPE, p.CAN_FORK]))\n"
)

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child")
needs_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads pipe sizes with F_GETPIPE_SZ"
)


# -- deciding -------------------------------------------------------------------


def test_decide_takes_a_known_override_and_marks_it_forced() -> None:
    for choice in platform.CHOICES:
        assert platform.decide("linux", choice) == (choice, True)


def test_decide_without_override_keeps_the_real_platform() -> None:
    assert platform.decide("freebsd14", None) == ("freebsd14", False)
    assert platform.decide("darwin", "") == ("darwin", False)


def test_decide_ignores_an_unknown_override_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="iostream"):
        assert platform.decide("linux", "windows") == ("linux", False)
    assert "IOSTREAM_PLATFORM" in caplog.text
    assert "'windows'" in caplog.text


@pytest.mark.parametrize("forced", sorted(FACTS))
def test_override_gives_that_platforms_facts_and_leaves_sys_platform(forced: str) -> None:
    rc, out, err = run_python(SHOW_FACTS, IOSTREAM_PLATFORM=forced)
    assert rc == 0, err
    assert json.loads(out) == [sys.platform, forced, True, *FACTS[forced]]
    assert err == ""


def test_without_override_the_facts_follow_sys_platform() -> None:
    rc, out, err = run_python(SHOW_FACTS, IOSTREAM_PLATFORM="")
    assert rc == 0, err
    real, chosen, forced, *facts = json.loads(out)
    assert (real, chosen, forced) == (sys.platform, sys.platform, False)
    expected = next((v for k, v in FACTS.items() if sys.platform.startswith(k)), None)
    if expected is not None:
        assert facts == expected


def test_an_unknown_override_never_keeps_the_library_from_working() -> None:
    code = SHOW_FACTS + (
        "import iostream\n"
        "sent = []\n"
        "class S:\n"
        "    def send(self, *a, **k): sent.append(a[2]['text'])\n"
        "out = iostream.OutStream('stdout', S(), None)\n"
        "out.write('still works\\n')\n"
        "print(sent)\n"
    )
    rc, out, err = run_python(code, IOSTREAM_PLATFORM="windows")
    assert rc == 0, err
    facts, sent = out.splitlines()
    assert json.loads(facts)[:3] == [sys.platform, sys.platform, False]
    assert sent == "['still works\\n']"
    assert "ignoring IOSTREAM_PLATFORM='windows'" in err


# -- who reads it ---------------------------------------------------------------


def _reads_platform_directly(path: Path) -> list[str]:
    """``sys.platform`` / ``os.name`` reads in a source file, as ``line: text``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in {("sys", "platform"), ("os", "name")}
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_only_the_platform_module_reads_sys_platform() -> None:
    """Every per-platform branch goes through iostream.platform, so that forcing a
    platform reaches all of them."""
    found = [
        hit
        for path in sorted(SRC.glob("*.py"))
        if path.name != "platform.py"
        for hit in _reads_platform_directly(path)
    ]
    assert found == []


def test_core_does_not_import_the_platform_module() -> None:
    imported: set[str] = set()
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in (SRC / "core").glob("*.py")]
    assert trees
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name.split(".")[-1] == "platform"}, imported


# -- the paths it chooses ---------------------------------------------------------

PIPE_SCENARIO = """
import os, sys
from childkit import Setup, report
from iostream.fdcapture import FdCapture

k = Setup()
out = k.module.OutStream(k.session, k.thread, "stdout")  # watchfd=True, the default
out.set_parent({"header": {"msg_id": "cell"}})
capturing = hasattr(out, "_original_stdstream_copy")
channel = k.thread._channel is not None
ok = equal = status = None
expected = "".join(f"child line {i}\\n" for i in range(200))
if channel:  # (a platform without fork has no forked children: nothing to try)
    pid = os.fork()
    if pid == 0:
        for i in range(200):
            print(f"child line {i}", file=out)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    ok = k.wait_for(lambda: len(k.text()) >= len(expected))
    equal = k.text() == expected
report({
    "sys_platform": sys.platform,
    "supported": FdCapture.SUPPORTED,
    "capturing": capturing,
    "channel": channel,
    "ok": ok,
    "status": status,
    "equal": equal,
    "parents": sorted({str(m["parent_header"].get("msg_id")) for m in k.streams()}),
})
out.close()
"""


@needs_fork
@pytest.mark.parametrize("forced", sorted(FACTS))
def test_forced_platform_chooses_capture_and_the_child_channel(tmp_path: Path, forced: str) -> None:
    """Under a forked platform's paths a forked child's output reaches the parent
    over the channel; under win32's (no fork) there is no channel at all."""
    run = run_scenario(PIPE_SCENARIO, tmp_path, IOSTREAM_PLATFORM=forced)
    r = run.result
    can_capture, _, can_fork = FACTS[forced]
    assert r["sys_platform"] == sys.platform
    assert r["supported"] is can_capture
    assert r["capturing"] is can_capture
    assert r["channel"] is can_fork
    if can_fork:
        assert r["ok"] and r["equal"] and r["status"] == 0, r
        assert r["parents"] == ["cell"]


PIPE_SIZE_CODE = """
import fcntl, json, os
from iostream import fdcapture
r, w = os.pipe()
before = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
got = fdcapture._enlarge_pipe(w)
print(json.dumps([before, got, fcntl.fcntl(w, 1032), fdcapture.PIPE_SIZE]))
"""


@needs_linux
def test_forced_darwin_leaves_the_pipe_alone() -> None:
    rc, out, err = run_python(PIPE_SIZE_CODE, IOSTREAM_PLATFORM="darwin")
    assert rc == 0, err
    before, got, after, pipe_size = json.loads(out)
    assert after == before  # never asked to grow
    assert got == pipe_size  # the upper bound the drain budget uses


@needs_linux
def test_linux_path_reports_the_size_the_pipe_really_has() -> None:
    rc, out, err = run_python(PIPE_SIZE_CODE, IOSTREAM_PLATFORM="linux")
    assert rc == 0, err
    before, got, after, pipe_size = json.loads(out)
    assert got == after  # enlarged, or (pipe quota used up) the size it kept
    assert before <= after <= pipe_size
