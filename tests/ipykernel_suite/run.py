#!/usr/bin/env python3
"""Run ipykernel's OWN test suite against stock ipykernel and against our swap.

For each ``--version X`` (default: 7.4.0 and 6.29.5) this script:

1. makes a fresh venv (``python3 -m venv``) under the work folder (a temporary
   folder, or ``--cache-dir DIR`` to keep and reuse venvs between runs);
2. downloads the ipykernel ``X`` sdist with that venv's pip
   (``pip download --no-binary ipykernel --no-deps ipykernel==X``) and extracts
   only its ``tests/`` folder and ``pyproject.toml`` (the pytest configuration), so
   the tests import the *installed* ipykernel, never the sdist's sources;
3. installs ``ipykernel==X`` plus the sdist's own test requirements
   (``[dependency-groups] test`` in 7.x, ``[project.optional-dependencies] test`` in
   6.x) minus the ones listed in ``SKIPPED_REQUIREMENTS`` below, then this project
   (non-editable, with its normal dependencies, under a constraint that pins
   ``ipykernel==X``), and checks ``ipykernel.__version__``;
4. probes the swap: starts a real kernel with ``swap/`` first on ``PYTHONPATH`` and
   checks, inside the kernel process, that ``ipykernel.iostream.OutStream`` and
   ``type(sys.stdout)`` come from :mod:`iostream`, that our ``sitecustomize`` is
   the one imported and that it ran in that process; and the reverse for stock;
5. runs pytest on the extracted tests (junit xml, ``-p no:cacheprovider``,
   per-test ``--timeout``), the ids in ``deselected.txt`` deselected in every run:

   * default (CI) mode: the swapped suite in full; then only the tests that failed
     swapped are run again on stock and, once more, swapped (to tell flakes from
     real failures);
   * ``--full``: stock in full and swapped in full, then the swapped failures that
     passed on stock are run once more swapped.

   After every swapped run each process's marker (written by
   ``swap/sitecustomize.py``) is checked: any process where the swap failed fails
   the whole run.

A REGRESSION is a test that passes on stock and fails (or errors) swapped, in the
full swapped run and again in the re-run. The script exits 1 iff there is a
regression, 2 on a setup error (venv, download, swap not active, pytest crash or
hang), 0 otherwise. The last line printed is ``ipykernel-suite: N passed, N failed,
N skipped`` for the swapped runs of all versions together (failed counts errors).

Only the standard library is used here, so it runs with the ``python3`` of a fresh
machine (3.10+; reading the sdist's pyproject needs ``tomllib`` (3.11) or falls
back to the ``tomli`` that pip vendors).

Typical use::

    python3 tests/ipykernel_suite/run.py                      # CI: both versions
    python3 tests/ipykernel_suite/run.py --version 7.4.0 --full --cache-dir /tmp/s
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SWAP_DIR = HERE / "swap"
DESELECTED_FILE = HERE / "deselected.txt"
DEFAULT_VERSIONS = ("7.4.0", "6.29.5")

#: Test requirements of the sdist that are not installed, with why.
SKIPPED_REQUIREMENTS = {
    "pre-commit": "lint hooks; no test imports it",
}

#: pytest addopts used instead of the sdist's: its own minus --color=yes, --showlocals,
#: --durations=10 and --doctest-modules (the tests/ modules hold no doctests; the
#: --ignore=ipykernel/... entries name sources that are not extracted).
ADDOPTS = "-raXs --strict-markers --strict-config"

#: Extra requirements by ipykernel version (fnmatch glob), with why. They only make
#: the sdist's tests pass on STOCK with today's releases (each fixes stock failures).
VERSION_PINS: dict[str, list[tuple[str, str]]] = {
    "6.29.*": [
        (
            "pytest<8",
            "its tests use nose-style module-level setup() (test_message_spec.py, "
            "test_eventloop.py), which pytest 8 no longer calls",
        ),
        (
            "ipython<9",
            "test_start_kernel.py::test_ipython_start_kernel_userns expects IPython 8's DummyMod",
        ),
        (
            "debugpy<1.8.21",
            "test_debugger.py::test_attach_debug expects the empty evaluate result of "
            "debugpy < 1.8.21",
        ),
    ],
}

FAILED = ("failed", "error")


def log(msg: str) -> None:
    """Print a progress line, flushed (CI logs interleave with child output)."""
    print(f"[ipykernel-suite {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SetupError(Exception):
    """Something other than a test failed: the comparison cannot be trusted."""


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise SetupError with its output if it fails."""
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if proc.returncode != 0:
        raise SetupError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


# --------------------------------------------------------------------------- setup


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file with tomllib, or pip's vendored tomli on Python 3.10."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    with path.open("rb") as fh:
        return tomllib.load(fh)


def test_requirements(
    pyproject: dict[str, Any], sets: tuple[str, ...] = ("test", "cov")
) -> tuple[list[str], list[str]]:
    """Return (requirements to install, skipped ones with reasons) of the given sets.

    A set is looked up in ``[dependency-groups]`` (7.x) or in
    ``[project.optional-dependencies]`` (6.x). ``test`` must exist; ``cov`` (what
    upstream's own CI adds: matplotlib, trio, curio, coverage) is optional. It turns
    tests that otherwise skip (``%matplotlib inline`` output, the inprocess pylab
    test, trio/curio async) into real ones.
    """
    groups = pyproject.get("dependency-groups", {})
    extras = pyproject.get("project", {}).get("optional-dependencies", {})

    def expand(name: str) -> list[str]:
        out: list[str] = []
        for item in groups.get(name, []):
            if isinstance(item, dict) and "include-group" in item:
                out.extend(expand(item["include-group"]))
            elif isinstance(item, str):
                out.append(item)
        return out

    reqs: list[str] = []
    for name in sets:
        found = expand(name) if name in groups else list(extras.get(name, []))
        if name == "test" and not found:
            raise SetupError("the sdist's pyproject.toml lists no test requirements")
        reqs += [r for r in found if r not in reqs]
    keep: list[str] = []
    skipped: list[str] = []
    for req in reqs:
        match = re.match(r"[A-Za-z0-9._-]+", req)
        name = re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else req
        if name in SKIPPED_REQUIREMENTS:
            skipped.append(f"{req} ({SKIPPED_REQUIREMENTS[name]})")
        else:
            keep.append(req)
    return keep, skipped


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    return venv / "bin" / "python"


def make_venv(venv: Path) -> None:
    """Create ``venv`` with the running interpreter and an up-to-date pip."""
    log(f"creating venv {venv}")
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])


def fetch_sdist(python: Path, version: str, dest: Path, sdist_dir: Path | None) -> Path:
    """Return the path of the ipykernel ``version`` sdist, downloading it if needed."""
    name = f"ipykernel-{version}.tar.gz"
    dest.mkdir(parents=True, exist_ok=True)
    if sdist_dir is not None and (sdist_dir / name).is_file():
        shutil.copy2(sdist_dir / name, dest / name)
    if not (dest / name).is_file():
        log(f"downloading the ipykernel {version} sdist")
        run(
            [
                str(python),
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                "ipykernel",
                "--no-deps",
                f"ipykernel=={version}",
                "-d",
                str(dest),
            ]
        )
    if not (dest / name).is_file():
        raise SetupError(f"pip download did not produce {dest / name}")
    return dest / name


def extract_tests(sdist: Path, version: str, dest: Path) -> Path:
    """Extract ``tests/`` and ``pyproject.toml`` of ``sdist`` into a fresh ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    prefix = f"ipykernel-{version}/"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix) :]
            if rel == "pyproject.toml" or rel == "tests" or rel.startswith("tests/"):
                m.name = rel
                members.append(m)
        try:
            tar.extractall(dest, members=members, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(dest, members=members)  # names checked above
    if not (dest / "tests" / "conftest.py").is_file():
        raise SetupError(f"{sdist} has no tests/conftest.py")
    return dest


def build_venv(venv: Path, version: str, reqs: list[str], project: Path) -> dict[str, str]:
    """Make ``venv`` with ipykernel==version, ``reqs`` and ``project`` installed.

    Returns the installed versions (``ipykernel``, ``pytest``, ``pytest-asyncio``,
    ``kernel-iostream``) after checking that ipykernel is ``version`` and that
    :mod:`iostream` is imported from the venv.
    """
    python = venv_python(venv)
    stamp = venv / "ipykernel-suite.json"
    wanted = json.dumps({"ipykernel": version, "reqs": reqs})
    fresh = not (python.exists() and stamp.is_file() and stamp.read_text() == wanted)
    if fresh:
        if stamp.is_file() or not python.exists():  # made for other requirements, or broken
            shutil.rmtree(venv, ignore_errors=True)
            make_venv(venv)
        log(f"installing ipykernel=={version} and its test requirements: {' '.join(reqs)}")
        run([str(python), "-m", "pip", "install", "--quiet", f"ipykernel=={version}", *reqs])
    constraints = venv / "ipykernel-suite-constraints.txt"
    constraints.write_text(f"ipykernel=={version}\n")
    log(f"installing {project} into the venv, non-editable")
    if fresh:
        run([str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), str(project)])
    else:  # dependencies are there already; refresh our code only
        run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--force-reinstall",
                "-c",
                str(constraints),
                str(project),
            ]
        )
    info = json.loads(
        run(
            [
                str(python),
                "-c",
                "import json, ipykernel, iostream, importlib.metadata as md;"
                "print(json.dumps({'ipykernel': ipykernel.__version__,"
                " 'iostream': iostream.__file__,"
                " 'pytest': md.version('pytest'), 'ipython': md.version('ipython'),"
                " 'debugpy': md.version('debugpy'), 'pyzmq': md.version('pyzmq'),"
                " 'jupyter_client': md.version('jupyter_client'),"
                " 'pytest-asyncio': md.version('pytest-asyncio'),"
                " 'kernel-iostream': md.version('kernel-iostream')}))",
            ],
            cwd=str(venv),
            env=clean_env(venv, None),
        ).stdout
    )
    if info["ipykernel"] != version:
        raise SetupError(f"the venv has ipykernel {info['ipykernel']}, wanted {version}")
    if not Path(info["iostream"]).resolve().is_relative_to(venv.resolve()):
        raise SetupError(f"iostream is imported from {info['iostream']}, not from the venv")
    stamp.write_text(wanted)
    log(
        f"venv ready: ipykernel {info['ipykernel']}, kernel-iostream {info['kernel-iostream']}, "
        f"pytest {info['pytest']}, pytest-asyncio {info['pytest-asyncio']}, "
        f"ipython {info['ipython']}, debugpy {info['debugpy']}, pyzmq {info['pyzmq']}, "
        f"jupyter_client {info['jupyter_client']}"
    )
    return info


def clean_env(
    venv: Path, home: Path | None, swapped: bool = False, markers: Path | None = None
) -> dict[str, str]:
    """The environment for a run: the venv first on PATH, no stray Python settings.

    Stock and swapped runs get the same environment except ``PYTHONPATH`` (the swap
    folder) and ``IPYKERNEL_SUITE_MARKERS``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "PYTEST", "JUPYTER", "IPYTHON", "VIRTUAL_ENV", "PIP_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONUNBUFFERED"] = "1"
    if home is not None:
        env["HOME"] = str(home)
    if swapped:
        env["PYTHONPATH"] = str(SWAP_DIR)
        if markers is not None:
            env["IPYKERNEL_SUITE_MARKERS"] = str(markers)
    return env


PROBE = r"""
import json, os, sys
from jupyter_client.manager import start_new_kernel

code = '''
import json, os, sys
import ipykernel.iostream as _m
try:
    import sitecustomize as _sc
    _scf = getattr(_sc, "__file__", None)
except ImportError:
    _scf = None
print("PROBE" + json.dumps({
    "pid": os.getpid(),
    "outstream": _m.OutStream.__module__,
    "iopub_thread": type(get_ipython().kernel.iopub_thread).__module__,
    "stdout": type(sys.stdout).__module__ + "." + type(sys.stdout).__qualname__,
    "sitecustomize": _scf,
}))
'''
km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120)
try:
    out = []
    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
    reply = kc.execute_interactive(code, output_hook=hook, timeout=120)
    text = "".join(out)
    line = [x for x in text.splitlines() if x.startswith("PROBE")]
    if reply["content"]["status"] != "ok" or not line:
        print("PROBE-FAILED", reply["content"], repr(text))
        sys.exit(1)
    info = json.loads(line[0][len("PROBE"):])
    info["argv"] = km.kernel_spec.argv
    print(json.dumps(info))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


def probe(venv: Path, scratch: Path, swapped: bool) -> dict[str, Any]:
    """Start a real kernel and check from inside it which iostream it uses.

    Raises SetupError unless, for ``swapped``, the kernel's ``ipykernel.iostream``
    classes, its ``sys.stdout`` and its IOPub thread come from :mod:`iostream`, our
    ``sitecustomize`` was imported and wrote an ``ok`` marker for the kernel's pid;
    and, for stock, all of them come from ipykernel.
    """
    kind = "swapped" if swapped else "stock"
    markers = scratch / f"probe-markers-{kind}"
    home = scratch / f"probe-home-{kind}"
    for d in (markers, home):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    env = clean_env(venv, home, swapped=swapped, markers=markers)
    proc = subprocess.run(
        [str(venv_python(venv)), "-c", PROBE],
        text=True,
        capture_output=True,
        cwd=str(scratch),
        env=env,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SetupError(f"the {kind} probe kernel failed:\n{proc.stdout}\n{proc.stderr}")
    info: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    problems: list[str] = []
    ours = ("outstream", "iopub_thread")
    if swapped:
        for key in ours:
            if not info[key].startswith("iostream"):
                problems.append(f"{key} comes from {info[key]}")
        if not info["stdout"].startswith("iostream"):
            problems.append(f"the kernel's sys.stdout is {info['stdout']}")
        if info["sitecustomize"] != str(SWAP_DIR / "sitecustomize.py"):
            problems.append(f"the imported sitecustomize is {info['sitecustomize']}")
        if not (markers / f"{info['pid']}.ok").is_file():
            problems.append(f"no ok marker for the kernel process {info['pid']}")
        fails = sorted(markers.glob("*.fail"))
        if fails:
            problems.append(f"swap failed in: {[f.read_text() for f in fails]}")
    else:
        for key in ours:
            if not info[key].startswith("ipykernel"):
                problems.append(f"{key} comes from {info[key]} on stock")
    if problems:
        raise SetupError(f"the {kind} probe: " + "; ".join(problems) + f"\n{info}")
    log(
        f"{kind} probe ok: kernel pid {info['pid']} ({' '.join(info['argv'][:3])}): "
        f"OutStream from {info['outstream']}, sys.stdout is {info['stdout']}, "
        f"IOPubThread from {info['iopub_thread']}"
    )
    return info


# ---------------------------------------------------------------------- deselection


def deselected(version: str) -> list[tuple[str, str]]:
    """(node id, reason) pairs of ``deselected.txt`` that apply to ``version``."""
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(DESELECTED_FILE.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, reason = line.partition(" -- ")
        parts = spec.split()
        if len(parts) != 2 or not reason.strip():
            raise SetupError(f"{DESELECTED_FILE}:{n}: want 'VERSION-GLOB NODE-ID -- reason'")
        if fnmatch.fnmatchcase(version, parts[0]):
            out.append((parts[1], reason.strip()))
    return out


# ----------------------------------------------------------------------- pytest runs


@dataclass
class RunResult:
    """Outcomes of one pytest run, by test id."""

    label: str
    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    wall: float = 0.0
    exit_code: int = 0
    log_path: Path | None = None
    processes: int = 0
    kernels: int = 0

    def count(self) -> dict[str, int]:
        """passed/failed/skipped/errors counts."""
        c = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        for outcome in self.outcomes.values():
            c["errors" if outcome == "error" else outcome] += 1
        return c

    def summary(self) -> str:
        """One line of counts and wall time."""
        c = self.count()
        return (
            f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, "
            f"{c['errors']} errors in {self.wall:.0f} s"
        )

    def failing(self) -> list[str]:
        """Ids that failed or errored, sorted."""
        return sorted(t for t, o in self.outcomes.items() if o in FAILED)


_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return (outcome by node id, failure text by node id) from an xunit1 junit file."""
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        file = case.get("file") or ""
        classname = case.get("classname") or ""
        name = case.get("name") or ""
        if file.endswith(".py"):
            module = file[:-3].replace("/", ".")
            if classname.startswith(module + "."):
                cls = classname[len(module) + 1 :].replace(".", "::")
                nodeid = f"{file}::{cls}::{name}"
            elif classname == module:
                nodeid = f"{file}::{name}"
            else:  # a collection error: name is the dotted module
                nodeid = file
        else:
            nodeid = (classname.replace(".", "/") + ".py::" if classname else "") + name
        outcome = "passed"
        text = ""
        for child in case:
            tag = child.tag
            if tag in ("failure", "error", "skipped"):
                new = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                if _RANK[new] > _RANK[outcome]:
                    outcome = new
                if tag != "skipped":
                    text += (child.get("message") or "") + "\n" + (child.text or "")
        old = outcomes.get(nodeid)
        if old is None or _RANK[outcome] > _RANK[old]:
            outcomes[nodeid] = outcome
        if text:
            messages[nodeid] = messages.get(nodeid, "") + text
    return outcomes, messages


def kill_group(pgid: int) -> None:
    """Terminate what is left of a pytest run's process group (ours only)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


@dataclass
class Suite:
    """One ipykernel version's venv, extracted tests and scratch folder."""

    version: str
    venv: Path
    testdir: Path
    scratch: Path
    args: argparse.Namespace
    ini: list[str] = field(default_factory=list)


def run_pytest(suite: Suite, label: str, swapped: bool, ids: list[str] | None = None) -> RunResult:
    """Run the extracted suite (or only ``ids``); raise SetupError if pytest broke."""
    venv, testdir, scratch, args = suite.venv, suite.testdir, suite.scratch, suite.args
    tag = label.replace(" ", "-")
    junit = scratch / f"junit-{tag}.xml"
    log_path = scratch / f"pytest-{tag}.log"
    markers = scratch / f"markers-{tag}"
    home = scratch / f"home-{tag}"
    for d in (markers, home):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    junit.unlink(missing_ok=True)
    cmd = [
        str(venv_python(venv)),
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        f"addopts={ADDOPTS}",
        "-v",
        "--color=no",
        f"--timeout={args.timeout}",
        f"--junit-xml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    for option in suite.ini:
        cmd += ["-o", option]
    for nodeid, _reason in deselected(suite.version):
        cmd.append(f"--deselect={nodeid}")
    if args.jobs and (ids is None or len(ids) > 4):
        cmd += ["-n", str(args.jobs)]
    cmd += args.pytest_arg
    cmd += ids if ids is not None else ["tests"]
    env = clean_env(venv, home, swapped=swapped, markers=markers)
    log(f"{label}: pytest on {len(ids) if ids is not None else 'all'} test(s), log {log_path}")
    start = time.monotonic()
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=str(testdir),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=args.run_timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            raise SetupError(
                f"{label}: pytest did not finish in {args.run_timeout} s; last lines of "
                f"{log_path}:\n{tail(log_path)}"
            ) from None
        finally:
            kill_group(proc.pid)  # leftover kernels of this run, if any
    result = RunResult(label, wall=time.monotonic() - start, exit_code=code, log_path=log_path)
    if code not in (0, 1) or not junit.is_file():
        raise SetupError(
            f"{label}: pytest exited {code}; last lines of {log_path}:\n{tail(log_path)}"
        )
    result.outcomes, result.messages = parse_junit(junit)
    if swapped:
        fails = sorted(markers.glob("*.fail"))
        if fails:
            raise SetupError(
                f"{label}: the iostream swap failed in {len(fails)} process(es): "
                + "; ".join(f.read_text().strip() for f in fails[:5])
            )
        oks = list(markers.glob("*.ok"))
        result.processes = len(oks)
        result.kernels = sum(is_kernel(f.read_text().splitlines()[0]) for f in oks)
        if result.kernels == 0 and ids is None:
            raise SetupError(f"{label}: no kernel process ran with the swap")
    log(
        f"{label}: {result.summary()}"
        + (
            f"; swap active in {result.processes} processes ({result.kernels} kernels)"
            if swapped
            else ""
        )
    )
    return result


def is_kernel(argv_repr: str) -> bool:
    """Whether a marker's command line (``repr(sys.orig_argv)``) started a kernel."""
    try:
        argv = [str(a) for a in ast.literal_eval(argv_repr)]
    except (ValueError, SyntaxError):
        return False
    for i, arg in enumerate(argv[1:], 1):
        if argv[i - 1] == "-m" and arg.startswith(("ipykernel", "iostream")):
            return True
        if argv[i - 1] == "-c" and ("embed_kernel" in arg or "launch_new_instance" in arg):
            return True
    return False


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------- comparison


@dataclass
class VersionReport:
    """What one ipykernel version gave."""

    version: str
    swapped: RunResult
    stock: RunResult | None = None
    stock_rerun: RunResult | None = None
    swapped_rerun: RunResult | None = None
    regressions: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    fail_on_stock: list[str] = field(default_factory=list)
    #: --full only: passed on stock, skipped swapped (listed, not a regression).
    skipped_swapped: list[str] = field(default_factory=list)


def compare(suite: Suite) -> VersionReport:
    """Run the suite as the mode says and sort out the regressions."""
    stock = None
    if suite.args.full:
        stock = run_pytest(suite, "stock", False)
    swapped = run_pytest(suite, "swapped", True)
    report = VersionReport(suite.version, swapped, stock=stock)
    candidates = swapped.failing()
    if stock is not None:
        missing = [
            t for t, o in stock.outcomes.items() if o == "passed" and t not in swapped.outcomes
        ]
        report.fail_on_stock = [t for t in candidates if stock.outcomes.get(t) != "passed"]
        report.skipped_swapped = sorted(
            t
            for t, o in stock.outcomes.items()
            if o == "passed" and swapped.outcomes.get(t) == "skipped"
        )
        candidates = sorted(
            {t for t in candidates if stock.outcomes.get(t) == "passed"} | set(missing)
        )
    elif candidates:
        report.stock_rerun = run_pytest(suite, "stock rerun", False, ids=candidates)
        report.fail_on_stock = [
            t for t in candidates if report.stock_rerun.outcomes.get(t) != "passed"
        ]
        candidates = [t for t in candidates if report.stock_rerun.outcomes.get(t) == "passed"]
    if candidates:
        report.swapped_rerun = run_pytest(suite, "swapped rerun", True, ids=candidates)
        for t in candidates:
            if report.swapped_rerun.outcomes.get(t) == "passed":
                report.flaky.append(t)
            else:
                report.regressions.append(t)
    return report


def error_signature(text: str) -> str:
    """A one-line key for grouping failures: the last ``E   `` line, else the last line."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    errors = [x[1:].strip() for x in lines if x.startswith("E ") and x[1:].strip()]
    for line in reversed(errors):
        if re.match(r"[A-Za-z_.]+(Error|Exception|Timeout|Exit)\b|Failed:|assert ", line):
            return line[:200]
    return (errors[-1] if errors else lines[-1] if lines else "(no failure text)")[:200]


def print_report(reports: list[VersionReport], setup_errors: list[str], failure_lines: int) -> None:
    """The closing summary."""
    print("\n" + "=" * 78)
    print("ipykernel's own test suite: stock ipykernel vs ipykernel.iostream swapped")
    print("=" * 78)
    for r in reports:
        print(f"\nipykernel {r.version}")
        if r.stock is not None:
            print(f"  stock    : {r.stock.summary()}")
        print(
            f"  swapped  : {r.swapped.summary()}  (swap active in "
            f"{r.swapped.processes} processes, {r.swapped.kernels} kernels)"
        )
        if r.stock_rerun is not None:
            print(f"  stock re-run of the swapped failures : {r.stock_rerun.summary()}")
        if r.swapped_rerun is not None:
            print(f"  swapped re-run of the candidates     : {r.swapped_rerun.summary()}")
        for nodeid, reason in deselected(r.version):
            print(f"  deselected: {nodeid} -- {reason}")
        for t in r.fail_on_stock:
            print(f"  fails on stock too (not a regression): {t}")
        for t in r.skipped_swapped:
            print(f"  passed on stock but SKIPPED swapped (look at it): {t}")
        for t in r.flaky:
            print(f"  flaky swapped (failed, then passed on re-run): {t}")
        source = r.swapped_rerun if r.swapped_rerun is not None else r.swapped
        by_error: dict[str, list[str]] = {}
        for t in r.regressions:
            text = source.messages.get(t) or r.swapped.messages.get(t, "")
            by_error.setdefault(error_signature(text), []).append(t)
        for n, (sig, ids) in enumerate(sorted(by_error.items(), key=lambda kv: -len(kv[1]))):
            print(f"  REGRESSION x{len(ids)}: {sig}")
            for t in ids:
                print(f"    {t}")
            if n < 10:  # the failure text of one of them
                text = source.messages.get(ids[0]) or r.swapped.messages.get(ids[0], "")
                for line in text.strip().splitlines()[-failure_lines:]:
                    print(f"      | {line}")
    for err in setup_errors:
        print(f"\nSETUP ERROR: {err}")
    total = sum(len(r.regressions) for r in reports)
    print(
        f"\nregressions: {total}"
        + ("" if not setup_errors else f"; setup errors: {len(setup_errors)}")
    )
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for r in reports:
        for k, v in r.swapped.count().items():
            counts[k] += v
    print(
        f"ipykernel-suite: {counts['passed']} passed, "
        f"{counts['failed'] + counts['errors']} failed, {counts['skipped']} skipped",
        flush=True,
    )


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.23.8"`` -> ``(0, 23, 8)`` (non-numeric parts end it)."""
    out: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring for the exit codes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        action="append",
        dest="versions",
        metavar="X",
        help="ipykernel version to test (repeatable; default: 7.4.0 and 6.29.5)",
    )
    parser.add_argument(
        "--full", action="store_true", help="run stock in full too and print both counts"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep venvs, sdists and logs here and reuse them (default: a "
        "temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=REPO,
        help="the kernel-iostream source tree to install (default: this checkout)",
    )
    parser.add_argument(
        "--sdist-dir", type=Path, help="take ipykernel-X.tar.gz from here instead of downloading it"
    )
    parser.add_argument(
        "--jobs",
        "-n",
        type=int,
        default=0,
        help="pytest-xdist workers (0: no xdist; see docs/ipykernel-suite.md)",
    )
    parser.add_argument("--timeout", type=int, default=120, help="per-test timeout, s")
    parser.add_argument(
        "--run-timeout", type=int, default=2400, help="timeout of one pytest run, s"
    )
    parser.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        help="extra pytest argument (repeatable), e.g. --pytest-arg=-k=io",
    )
    parser.add_argument(
        "--failure-lines",
        type=int,
        default=25,
        help="lines of each regression's failure text to print",
    )
    args = parser.parse_args(argv)
    versions = args.versions or list(DEFAULT_VERSIONS)
    args.project = args.project.resolve()
    if args.jobs:
        # xdist is not a test requirement of the sdists: add it when asked for.
        args.extra_reqs = ["pytest-xdist"]
    else:
        args.extra_reqs = []

    root = (
        args.cache_dir.resolve()
        if args.cache_dir
        else Path(tempfile.mkdtemp(prefix="ipykernel-suite-"))
    )
    root.mkdir(parents=True, exist_ok=True)
    log(f"work folder {root}; project {args.project}; mode {'full' if args.full else 'ci'}")
    reports: list[VersionReport] = []
    setup_errors: list[str] = []
    overall = time.monotonic()
    try:
        for version in versions:
            start = time.monotonic()
            try:
                venv = root / f"venv-{version}"
                scratch = root / f"work-{version}"
                scratch.mkdir(parents=True, exist_ok=True)
                if not venv_python(venv).exists():
                    make_venv(venv)
                sdist = fetch_sdist(venv_python(venv), version, root / "sdists", args.sdist_dir)
                testdir = extract_tests(sdist, version, scratch / "suite")
                reqs, skipped = test_requirements(load_toml(testdir / "pyproject.toml"))
                for s in skipped:
                    log(f"not installed: {s}")
                for glob, pins in VERSION_PINS.items():
                    if fnmatch.fnmatchcase(version, glob):
                        for pin, why in pins:
                            log(f"also pinned: {pin} ({why})")
                            reqs.append(pin)
                info = build_venv(venv, version, reqs + args.extra_reqs, args.project)
                suite = Suite(version, venv, testdir, scratch, args)
                if version_tuple(info["pytest-asyncio"]) >= (0, 24):
                    # It warns when this is unset, and the sdist's filterwarnings=error
                    # turns that warning into an INTERNALERROR. Older ones reject it
                    # under --strict-config.
                    suite.ini.append("asyncio_default_fixture_loop_scope=function")
                probe(venv, scratch, swapped=False)
                probe(venv, scratch, swapped=True)
                reports.append(compare(suite))
            except SetupError as exc:
                setup_errors.append(f"ipykernel {version}: {exc}")
            log(f"ipykernel {version}: done in {time.monotonic() - start:.0f} s")
    finally:
        if args.cache_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    log(f"total wall time {time.monotonic() - overall:.0f} s")
    print_report(reports, setup_errors, args.failure_lines)
    if setup_errors:
        return 2
    return 1 if any(r.regressions for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
