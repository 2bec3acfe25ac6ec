"""Parent routing of OutStream: which cell a write belongs to.

The parent of the current context (thread or task) if it set one, else of the
thread's oldest ancestor in ipykernel 6.29's thread maps, else the global one.
Any thread.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING, Any

from jupyter_client.session import extract_header

from .core import Parent
from .streamgroup import _StreamGroup
from .writepath import _NO_CONTEXT, _FastWriter

_get_ident = threading.get_ident
_monotonic = time.monotonic


class ParentRouting:
    """The parent methods and attributes of :class:`~iostream.OutStream` (a mixin)."""

    if TYPE_CHECKING:
        _parent_header: contextvars.ContextVar[Parent]
        _writer: _FastWriter
        _group: _StreamGroup

    @property
    def parent_header(self) -> Parent:
        """The parent of the current context (thread or task), else of the thread's
        oldest ancestor in ipykernel 6.29's thread maps, else the global one."""
        return self._current_parent()

    @parent_header.setter
    def parent_header(self, value: Parent) -> None:
        self._parent_header.set(value)
        self._writer.parent_global = value

    def _current_parent(self) -> Parent:
        """What :attr:`parent_header` returns. Any thread."""
        parent = self._parent_header.get(_NO_CONTEXT)
        if parent is not _NO_CONTEXT:
            return parent
        writer = self._writer
        return self._parent_of_thread() if writer.thread_headers else writer.parent_global

    def _parent_of_thread(self) -> Parent:
        """The parent for the calling thread when its context holds none. Any thread.

        ipykernel 6.29's ``IPythonKernel`` records, as each thread starts, the
        cell that was running when a thread of the kernel's own started it
        (``_thread_to_parent_header[ident]``), or the thread that started it
        (``_thread_to_parent[ident]``), and removes the entries of finished
        threads. Output of a thread then goes to its oldest recorded ancestor's
        cell, else to the global parent, as 6.29's own OutStream routes it. A
        cycle (a thread ident reused while its entry was kept) ends the walk.
        """
        writer = self._writer
        links = writer.thread_links
        ident: int | None = _get_ident()
        for _ in range(len(links)):
            if ident not in links:
                break
            ident = links.get(ident, ident)  # (another thread may remove it meanwhile)
        return writer.thread_headers.get(ident, writer.parent_global)

    @property
    def _thread_to_parent_header(self) -> dict[int | None, Parent]:
        """Thread ident to the parent its output goes to (ipykernel 6.29's map)."""
        return self._writer.thread_headers

    @_thread_to_parent_header.setter
    def _thread_to_parent_header(self, value: dict[int | None, Parent]) -> None:
        self._writer.thread_headers = value

    @property
    def _thread_to_parent(self) -> dict[int | None, int | None]:
        """Thread ident to the ident of the thread that started it (ipykernel 6.29's map)."""
        return self._writer.thread_links

    @_thread_to_parent.setter
    def _thread_to_parent(self, value: dict[int | None, int | None]) -> None:
        self._writer.thread_links = value

    @property
    def _parent_header_global(self) -> Parent:
        """The parent of threads and contexts that set none (ipykernel's attribute)."""
        return self._writer.parent_global

    @_parent_header_global.setter
    def _parent_header_global(self, value: Parent) -> None:
        self._writer.parent_global = value

    def set_parent(self, parent: Any) -> None:
        """Set the parent for the current context and as the global fallback.

        Set directly, not through :attr:`parent_header`: ACT-R's Python interface
        replaces that property on the class with one that only keeps
        ``_parent_header_global``. A replaced property is assigned too.
        """
        header = extract_header(parent)
        self._parent_header.set(header)
        self._writer.parent_global = header
        # A new cell: its first output goes out at once, not after the batching
        # interval of the previous cell's output.
        self._group.new_parent(header, _monotonic())
        if type(self).parent_header is not _OWN_PARENT_HEADER:
            self.parent_header = header

    def set_thread_parent(self, parent: Any) -> contextvars.Token[Parent]:
        """Set the parent for the calling thread or context only; returns a token."""
        return self._parent_header.set(extract_header(parent))

    def reset_thread_parent(self, token: contextvars.Token[Parent]) -> None:
        """Undo the :meth:`set_thread_parent` call that returned ``token``."""
        self._parent_header.reset(token)


#: :attr:`OutStream.parent_header` as defined here (see :meth:`OutStream.set_parent`).
_OWN_PARENT_HEADER = ParentRouting.__dict__["parent_header"]
