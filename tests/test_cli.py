"""The command line: install and uninstall kernelspecs for real, help names, the demo notebook.

Every command runs as a real process; kernelspecs go to temporary prefixes (and reach
Jupyter's search path through ``JUPYTER_PATH``), never to the user's own directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support import ROOT


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    env.update(extra)
    return env


def iostream(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m iostream ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "iostream", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def unique_name() -> str:
    return f"iostream-test-{uuid.uuid4().hex[:12]}"


def kernels(prefix: Path) -> Path:
    return prefix / "share" / "jupyter" / "kernels"


def test_uninstall_removes_what_install_wrote(tmp_path: Path) -> None:
    name = unique_name()
    installed = iostream("install", "--prefix", str(tmp_path), "--name", name)
    assert installed.returncode == 0, installed.stderr
    spec_dir = kernels(tmp_path) / name
    assert (spec_dir / "kernel.json").is_file()

    removed = iostream("uninstall", "--prefix", str(tmp_path), "--name", name)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"Removed kernelspec {name} from {spec_dir}\n"
    assert not spec_dir.exists()

    again = iostream("uninstall", "--prefix", str(tmp_path), "--name", name)
    assert again.returncode == 1
    assert f"no kernelspec named '{name}'" in again.stderr


def test_uninstall_default_name(tmp_path: Path) -> None:
    assert iostream("install", "--prefix", str(tmp_path)).returncode == 0
    assert (kernels(tmp_path) / "python3-iostream").is_dir()
    other = unique_name()
    assert iostream("install", "--prefix", str(tmp_path), "--name", other).returncode == 0

    removed = iostream("uninstall", "--prefix", str(tmp_path))
    assert removed.returncode == 0, removed.stderr
    assert not (kernels(tmp_path) / "python3-iostream").exists()
    assert (kernels(tmp_path) / other).is_dir()  # --name picks which one goes


def test_uninstall_without_location_removes_the_spec_jupyter_finds(tmp_path: Path) -> None:
    name = unique_name()
    assert iostream("install", "--prefix", str(tmp_path), "--name", name).returncode == 0
    jupyter_path = str(tmp_path / "share" / "jupyter")
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter_client.kernelspecapp", "list", "--json"],
        env=cli_env(JUPYTER_PATH=jupyter_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert name in json.loads(listed.stdout)["kernelspecs"], listed.stderr

    removed = iostream("uninstall", "--name", name, JUPYTER_PATH=jupyter_path)
    assert removed.returncode == 0, removed.stderr
    assert not (kernels(tmp_path) / name).exists()


def test_uninstall_leaves_other_kernels_specs_alone(tmp_path: Path) -> None:
    name = unique_name()
    spec_dir = kernels(tmp_path) / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))

    refused = iostream("uninstall", "--prefix", str(tmp_path), "--name", name)
    assert refused.returncode == 1
    assert "not an iostream kernelspec" in refused.stderr
    assert json.loads((spec_dir / "kernel.json").read_text()) == spec


def test_python_m_help_names_python_m() -> None:
    proc = iostream("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: python -m iostream [-h] COMMAND")
    for command in ("kernel", "install", "uninstall", "demo"):
        assert f"    {command}" in proc.stdout


def test_console_script_help_names_itself() -> None:
    script = shutil.which("kernel-iostream", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the kernel-iostream script is not installed next to this Python")
    for args, usage in (
        (["--help"], "usage: kernel-iostream [-h] COMMAND"),
        (["uninstall", "--help"], "usage: kernel-iostream uninstall [-h]"),
        (["kernel", "--help"], "usage: kernel-iostream kernel -f CONNECTION_FILE"),
    ):
        proc = subprocess.run(
            [script, *args], env=cli_env(), capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(usage), proc.stdout
        assert "python -m iostream" not in proc.stdout


@pytest.mark.e2e
def test_demo_notebook_names_the_installed_kernelspec(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    name = unique_name()
    installed = iostream(
        "install", "--prefix", str(tmp_path), "--name", name, "--display-name", "Mine"
    )
    assert installed.returncode == 0, installed.stderr
    saved = tmp_path / "demo.ipynb"
    jupyter_path = str(tmp_path / "share" / "jupyter")
    demo = iostream(
        "demo", "--save", str(saved), "--kernel-name", name, timeout=150, JUPYTER_PATH=jupyter_path
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-2000:]
    assert "not installed" not in demo.stdout
    notebook = nbformat.read(saved, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec == {
        "name": name,
        "display_name": "Mine",
        "language": "python",
    }


def test_notebook_kernelspec_of_a_missing_spec_says_so(tmp_path: Path) -> None:
    code = (
        "from iostream.app.cli import notebook_kernelspec\n"
        f"print(notebook_kernelspec({unique_name()!r})[1], "
        "notebook_kernelspec('python3-iostream')[0]['display_name'])\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    # Only the empty directory and the system's are searched: nothing named so there.
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=cli_env(JUPYTER_PATH=str(empty), JUPYTER_DATA_DIR=str(empty)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False ")
    assert proc.stdout.endswith("Python 3 (iostream)\n")
