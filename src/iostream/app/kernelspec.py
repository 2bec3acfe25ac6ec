"""Jupyter kernelspecs that launch an IPython kernel on iostream (``install``/``uninstall``).

The application layer, as :mod:`iostream.app.cli`; nothing in the library imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Default kernelspec name written by ``install``.
DEFAULT_KERNEL_NAME = "python3-iostream"
#: Default display name written by ``install``.
DEFAULT_DISPLAY_NAME = "Python 3 (iostream)"


# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------


#: The ``kernel`` option under which threads print into the cell that started them
#: (:mod:`iostream.threadcontext`).
THREAD_INHERIT_CONTEXT = "--thread-inherit-context"


def kernel_argv(executable: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """Return the kernelspec ``argv`` that launches an iostream kernel.

    Guarantees: ``[executable or sys.executable, "-m", "iostream", "kernel",
    *extra_args, "-f", "{connection_file}"]``; ``{connection_file}`` is left for
    jupyter_client to fill.
    """
    python = executable or sys.executable
    return [python, "-m", "iostream", "kernel", *extra_args, "-f", "{connection_file}"]


def kernel_dict(
    display_name: str = DEFAULT_DISPLAY_NAME, extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Return the content of ``kernel.json`` for an iostream kernel.

    Guarantees: the same keys and metadata as the installed ipykernel's own kernelspec
    (``language: python``, ``metadata.debugger: true``, protocol version, ...) with
    ``argv`` from :func:`kernel_argv` (with ``extra_args``) and the given
    ``display_name``. Falls back to a fixed dict of that shape when ipykernel's
    helper is unavailable.
    """
    try:
        from ipykernel.kernelspec import get_kernel_dict

        spec: dict[str, Any] = dict(get_kernel_dict())
    except Exception:
        spec = {"language": "python", "metadata": {"debugger": True}}
    spec["argv"] = kernel_argv(extra_args=extra_args)
    spec["display_name"] = display_name
    spec["language"] = "python"
    metadata = dict(spec.get("metadata") or {})
    metadata.setdefault("debugger", True)
    spec["metadata"] = metadata
    return spec


def write_kernelspec_dir(
    path: Path, display_name: str = DEFAULT_DISPLAY_NAME, extra_args: Sequence[str] = ()
) -> Path:
    """Create ``path`` as a kernelspec directory (``kernel.json`` plus logos) and return it.

    Guarantees: ``path/kernel.json`` holds :func:`kernel_dict` (with ``extra_args``);
    ipykernel's logo files are copied next to it when ipykernel is installed.
    ``path`` must not exist yet.
    """
    try:
        from ipykernel.kernelspec import RESOURCES

        shutil.copytree(RESOURCES, path)
        path.chmod(path.stat().st_mode | 0o700)
    except Exception:
        path.mkdir(parents=True)
    with open(path / "kernel.json", "w", encoding="utf-8") as f:
        json.dump(kernel_dict(display_name, extra_args), f, indent=1)
        f.write("\n")
    return path


def install_kernelspec(
    *,
    name: str = DEFAULT_KERNEL_NAME,
    display_name: str = DEFAULT_DISPLAY_NAME,
    user: bool = False,
    prefix: str | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """Install the iostream kernelspec through jupyter_client; return the directory.

    ``extra_args`` go into its ``argv`` after ``kernel`` (see :func:`kernel_argv`).

    Guarantees: the directory returned contains ``kernel.json`` from
    :func:`kernel_dict`; it is ``PREFIX/share/jupyter/kernels/NAME`` with ``prefix``, the
    per-user kernels directory with ``user``, otherwise the system-wide one (which may
    raise :class:`PermissionError`). An existing spec of the same name is replaced.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="iostream-kernelspec-") as tmp:
        src = write_kernelspec_dir(Path(tmp) / name, display_name, extra_args)
        dest: str = KernelSpecManager().install_kernel_spec(
            str(src), kernel_name=name, user=user, prefix=prefix
        )
    return dest


def kernels_dir(*, user: bool = False, prefix: str | None = None) -> Path:
    """Return the kernelspec directory that ``install`` writes to for these options.

    Guarantees: the per-user kernels directory with ``user``, else
    ``PREFIX/share/jupyter/kernels`` with ``prefix``, otherwise the system-wide one, as
    :func:`install_kernelspec` (jupyter_client) chooses them. Reads nothing on disk.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH

    if user:
        return Path(KernelSpecManager().user_kernel_dir)
    if prefix:
        return Path(os.path.abspath(prefix)) / "share" / "jupyter" / "kernels"
    return Path(SYSTEM_JUPYTER_PATH[0]) / "kernels"


def is_iostream_kernelspec(spec_dir: Path) -> bool:
    """Return whether ``spec_dir/kernel.json`` launches an iostream kernel.

    Guarantees: True only when its ``argv`` runs ``-m iostream kernel`` (what
    :func:`kernel_argv` writes); False for unreadable or other kernelspecs.
    """
    try:
        spec = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
        argv = list(spec["argv"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(argv[i : i + 3] == ["-m", "iostream", "kernel"] for i in range(len(argv)))


def uninstall_kernelspec(
    *,
    name: str = DEFAULT_KERNEL_NAME,
    user: bool = False,
    prefix: str | None = None,
    anywhere: bool = False,
) -> Path:
    """Remove an installed iostream kernelspec; return the directory removed.

    Guarantees: with ``anywhere`` the spec removed is the one Jupyter finds under
    ``name`` (the first in its search path, as ``jupyter kernelspec uninstall`` does);
    otherwise it is ``NAME`` in :func:`kernels_dir` for ``user``/``prefix``, the place
    ``install`` wrote it. Raises :class:`FileNotFoundError` when there is no such
    kernelspec and :class:`ValueError` (removing nothing) when the kernelspec found
    does not launch an iostream kernel, so another kernel's spec is never removed.
    """
    if anywhere:
        from jupyter_client.kernelspec import KernelSpecManager

        found = KernelSpecManager().find_kernel_specs().get(name.lower())
        if found is None:
            raise FileNotFoundError(f"no kernelspec named {name!r} is installed")
        spec_dir = Path(found)
    else:
        spec_dir = kernels_dir(user=user, prefix=prefix) / name
        if not (spec_dir / "kernel.json").is_file():
            raise FileNotFoundError(f"no kernelspec named {name!r} in {spec_dir.parent}")
    if not is_iostream_kernelspec(spec_dir):
        raise ValueError(
            f"{spec_dir} is not an iostream kernelspec (its argv does not run "
            "'-m iostream kernel'); remove it with 'jupyter kernelspec uninstall' instead"
        )
    shutil.rmtree(spec_dir)
    return spec_dir
