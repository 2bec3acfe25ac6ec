"""Make ``ipykernel.iostream`` resolve to this library.

:func:`install` puts the :mod:`iostream` package object into
``sys.modules["ipykernel.iostream"]`` and onto the ``ipykernel`` package as its
``iostream`` attribute. Every module imported afterwards that does
``from ipykernel.iostream import OutStream`` (``ipykernel.kernelapp``,
``ipykernel.kernelbase``, ``ipykernel.inprocess.ipkernel``, ipyparallel's engine,
...) or resolves the dotted name ``"ipykernel.iostream.OutStream"`` (traitlets
``Type``/``DottedObjectName``, e.g. ``IPKernelApp.outstream_class``) gets our
classes.

Call it before anything imports ipykernel's kernel machinery. Importing the bare
``ipykernel`` package is fine: its ``__init__`` only loads ``ipykernel._version``
and ``ipykernel.connect``, neither of which touches ``ipykernel.iostream``.

Nothing else in the library imports this module; it is the one place that knows
about ipykernel's module layout.
"""

from __future__ import annotations

import sys
from types import ModuleType

__all__ = ["install", "installed"]

#: The module name we take over.
TARGET = "ipykernel.iostream"

#: Names that, if a loaded module holds ipykernel's own object under them, mean the
#: real implementation has already been bound somewhere we cannot reach.
_EXPORTED_NAMES = ("OutStream", "IOPubThread", "BackgroundSocket")


def _ours() -> ModuleType:
    """Return the :mod:`iostream` package module (imported if need be)."""
    import iostream

    return iostream


def installed() -> bool:
    """Return True when ``ipykernel.iostream`` currently resolves to this library.

    Guarantees: only reads ``sys.modules``; never imports ipykernel.
    """
    return sys.modules.get(TARGET) is sys.modules.get("iostream") is not None


def _escaped_references(real: ModuleType) -> list[str]:
    """List ``module.attribute`` places where objects of ``real`` are already bound.

    ``real`` is ipykernel's own ``iostream`` module. A reference counts as escaped
    when a loaded module (other than ``real`` itself) holds, at module level, ``real``
    itself, one of its public classes, or an instance of one of them (for example
    ``sys.stdout`` being ipykernel's ``OutStream``). The ``ipykernel`` package's own
    ``iostream`` attribute is not counted: :func:`install` rebinds it.

    Guarantees: read-only; never raises for odd entries in ``sys.modules``.
    """
    classes: list[type] = []
    for name in _EXPORTED_NAMES:
        obj = getattr(real, name, None)
        if isinstance(obj, type):
            classes.append(obj)
    class_ids = {id(c) for c in classes}
    instance_types = tuple(classes)

    found: list[str] = []
    for modname, mod in list(sys.modules.items()):
        if mod is None or mod is real:
            continue
        try:
            namespace = dict(vars(mod))
        except TypeError:  # objects without a __dict__ posing as modules
            continue
        for attr, value in namespace.items():
            if modname == "ipykernel" and attr == "iostream":
                continue
            try:
                escaped = (
                    value is real
                    or id(value) in class_ids
                    or (bool(instance_types) and isinstance(value, instance_types))
                )
            except Exception:  # pathological __class__ properties
                continue
            if escaped:
                found.append(f"{modname}.{attr}")
    return sorted(found)


def install() -> None:
    """Make ``ipykernel.iostream`` resolve to the :mod:`iostream` package.

    Guarantees, once it returns:

    * ``sys.modules["ipykernel.iostream"] is iostream``;
    * if the ``ipykernel`` package can be imported, it is imported and
      ``ipykernel.iostream is iostream`` (so ``import ipykernel.iostream`` followed by
      attribute access works);
    * calling it again is a no-op.

    If ipykernel's own ``iostream`` module was imported earlier it is replaced,
    unless its classes (or the module, or instances of its classes) are already bound
    in other loaded modules such as ``ipykernel.kernelapp`` or ``ipykernel.kernelbase``:
    then those modules would keep using the original implementation, so
    :class:`RuntimeError` is raised naming them, and nothing is changed.

    The ``ipykernel`` package is imported only after ``sys.modules`` points at us, so
    this never causes ipykernel's own ``iostream`` to load. ipykernel is optional: if
    it is not installed, only the ``sys.modules`` entry is made.
    """
    ours = _ours()
    current = sys.modules.get(TARGET)
    if current is not None and current is not ours:
        escaped = _escaped_references(current)
        if escaped:
            shown = ", ".join(escaped[:8]) + (", ..." if len(escaped) > 8 else "")
            msg = (
                "iostream.install() was called after ipykernel's own ipykernel.iostream "
                f"had already been imported and bound elsewhere ({shown}). Those modules "
                "would keep using ipykernel's implementation. Call iostream.install() "
                "before importing ipykernel.kernelapp, ipykernel.kernelbase, "
                "ipykernel.inprocess or anything that imports them (for example at the "
                "very top of your launcher, or use `python -m iostream kernel`)."
            )
            raise RuntimeError(msg)

    sys.modules[TARGET] = ours
    try:
        import ipykernel
    except ImportError:
        return
    if getattr(ipykernel, "iostream", None) is not ours:
        ipykernel.iostream = ours
