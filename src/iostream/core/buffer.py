"""The output buffer (sans-IO): text waiting to be published, in write order.

Nothing here owns a thread, a socket, a lock or a clock. :class:`OutputBuffer` is
single-threaded: the stream group (:mod:`iostream.streamgroup`) serialises access
to it. When a flush is due is decided by :mod:`iostream.core.policy`.

The model:

* A *run* is text written by one owner (one stream: stdout or stderr) under one
  parent header. Consecutive writes of the same owner under the same parent join
  the same run, even when other parents' writes come between them.
* When one owner writes under a parent whose latest run belongs to another owner
  (stdout then stderr in the same cell), a new run starts, so the order across
  streams of the same parent is kept.
* Lines stay whole: a line an owner has begun but not ended is continued by that
  owner's next write, even when another owner wrote in between (``print`` writes
  its text and its ``end`` separately; a thread printing to stderr may come
  between the two). The other owner's text goes after the line. Lines written
  elsewhere (:meth:`OutputBuffer.insert_lines`: by a forked child, or to the
  captured descriptor) arrive complete and go before the unfinished line of the
  stream they were written to: they were complete before it, as a line-buffered
  terminal would show them.
* :meth:`OutputBuffer.drain` hands the runs out in the order they were started;
  :func:`split_text` cuts a run into messages of bounded size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .text import complete_lines, split_parts, split_text

#: Default upper bound on the text of one ``stream`` message (characters): 64 Mi.
#: JupyterLab renders a cell's whole output again for every message, so a big
#: output must come in few messages to render as fast as ipykernel's single one
#: (measured: docs/performance.md, "Big outputs in JupyterLab").
DEFAULT_MAX_MESSAGE_CHARS = 1 << 26

#: Parts below this size (characters) on average: a run is joined before it is cut.
_SMALL_PART = 1024

#: Parent headers are plain dicts; values may be unhashable.
Parent = Mapping[str, Any]


@dataclass(frozen=True)
class Chunk:
    """One message's worth of text: ``owner`` wrote ``text`` under ``parent``."""

    owner: int
    parent: Parent
    text: str


@dataclass
class _Run:
    owner: int
    parent: Parent
    parts: list[str] = field(default_factory=list)


class OutputBuffer:
    """Text waiting to be published, grouped in runs per owner and parent.

    Owners are integers chosen by the caller (one per stream). Parents are matched
    by :func:`parent_key`.
    """

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        # parent key -> latest run under that parent
        self._latest: dict[object, _Run] = {}
        # (parent key, owner) -> that owner's latest run under that parent
        self._mine: dict[tuple[object, int], _Run] = {}
        # (parent key, owner, source) -> (run, its unfinished text) when text
        # from that source (insert_lines) left that run's line unfinished: more
        # text from the same source continues that line (a child's flush() sends
        # a partial line; a descriptor read may end inside one).
        self._left_unfinished: dict[tuple[object, int, object], tuple[_Run, str]] = {}
        # the run appended to last: most writes repeat its owner and parent
        self._tail: _Run | None = None
        self.pending_chars = 0

    def __bool__(self) -> bool:
        return bool(self._runs)

    def append(self, owner: int, parent: Parent, text: str) -> None:
        """Add ``text`` written by ``owner`` under ``parent``."""
        if not text:
            return
        tail = self._tail
        if tail is not None and tail.parent is parent and tail.owner == owner:
            tail.parts.append(text)
            self.pending_chars += len(text)
            return
        key = parent_key(parent)
        mine = self._continuation(owner, key)
        if mine is not None:
            # Continue the owner's unfinished line, up to its end only: the lines
            # after it began after the other owner's text, and go after it. Not the
            # tail: the owner's next write must find its place the same way.
            end = text.find("\n") + 1
            if 0 < end < len(text):
                self.append(owner, parent, text[:end])
                self.append(owner, parent, text[end:])
                return
            mine.parts.append(text)
            self.pending_chars += len(text)
            self._tail = None
            return
        run = self._latest.get(key)
        if run is None or run.owner != owner:
            run = _Run(owner, parent)
            self._runs.append(run)
            self._latest[key] = run
            self._mine[key, owner] = run
        self._tail = run
        run.parts.append(text)
        self.pending_chars += len(text)

    def _continuation(self, owner: int, key: object) -> _Run | None:
        """``owner``'s unfinished line under ``key`` if another owner wrote there
        since (the run the owner's next write continues), else None."""
        latest = self._latest.get(key)
        if latest is None or latest.owner == owner:
            return None
        mine = self._mine.get((key, owner))
        return mine if mine is not None and _unfinished(mine) else None

    def insert_lines(self, owner: int, parent: Parent, text: str, source: object = None) -> None:
        """Add text written elsewhere (by a forked child, or to the descriptor
        behind ``owner``'s stream) under ``parent``. Complete lines go before
        ``owner``'s unfinished line under that parent, if it has one that nothing
        but such text from the same ``source`` wrote last; otherwise (text ending
        inside a line, text continuing the unfinished line that source left,
        nothing unfinished) it is added as :meth:`append` adds it."""
        key = parent_key(parent)
        mine = self._mine.get((key, owner))
        # Whether the unfinished line is what this source left, nothing written since.
        left = self._left_unfinished.pop((key, owner, source), None)
        its_own = False
        if left is not None and mine is not None:
            # (Lines inserted before it since leave the unfinished line as it was.)
            its_own = left[0] is mine and _unfinished_text(mine) == left[1]
        if not text.endswith("\n") or mine is None or not _unfinished(mine) or its_own:
            self.append(owner, parent, text)
            mine = self._mine.get((key, owner))
            if mine is not None and _unfinished(mine):
                self._left_unfinished[key, owner, source] = (mine, _unfinished_text(mine))
            return
        parts = mine.parts
        i = len(parts) - 1
        while i >= 0 and "\n" not in parts[i]:
            i -= 1
        if i < 0:  # the whole run is the unfinished line
            parts.insert(0, text)
        else:
            done, begun = complete_lines(parts[i])
            parts[i : i + 1] = [done, text, begun] if begun else [done, text]
        self.pending_chars += len(text)

    def unfinished_line(self) -> bool:
        """Whether some owner's latest text (under some parent) does not end a line."""
        return any(_unfinished(run) for run in self._mine.values())

    def extend(self, flat: Sequence[Any]) -> None:
        """Add writes given flat, as ``owner, parent, text, owner, parent, text, ...``.

        The same as :meth:`append` for each triple in order. A write queue stores
        writes flat so that queueing one allocates no container the garbage
        collector would have to track. The common case, a batch written by one
        owner under one parent, is joined at C speed.
        """
        if len(flat) % 3:
            raise ValueError("extend() takes owner, parent, text triples")
        owners, parents, texts = flat[0::3], flat[1::3], flat[2::3]
        if not texts:
            return
        owner, parent = owners[0], parents[0]
        if (
            owners.count(owner) == len(owners)
            and len(set(map(id, parents))) == 1
            and self._continuation(owner, parent_key(parent)) is None
        ):
            self.append(owner, parent, "".join(texts))
            return
        for owner, parent, text in zip(owners, parents, texts, strict=True):
            self.append(owner, parent, text)

    def drain(
        self, owner: int | None = None, limits: Mapping[int, int] | None = None
    ) -> list[Chunk]:
        """Remove and return the buffered text, one chunk per run, in publishing order.

        With ``owner`` given, only that owner's runs are taken; the others stay.
        ``limits`` maps an owner to the most characters one of its chunks may hold:
        a longer run comes out as several chunks, cut as :func:`split_parts` cuts.
        A run over its limit is cut as it is joined (:func:`split_parts`), so a
        big backlog is not held once more in pieces.
        """
        if owner is None:
            taken, kept = self._runs, []
        else:
            taken = [run for run in self._runs if run.owner == owner]
            kept = [run for run in self._runs if run.owner != owner]
        self._runs = kept
        self._latest = {parent_key(run.parent): run for run in kept}
        self._mine = {(parent_key(run.parent), run.owner): run for run in kept}
        if self._left_unfinished:
            kept_ids = {id(run) for run in kept}
            self._left_unfinished = {
                k: v for k, v in self._left_unfinished.items() if id(v[0]) in kept_ids
            }
        self._tail = None
        # No run holds more than the whole backlog: below every limit, none is cut.
        if limits and self.pending_chars <= min(limits.values()):
            limits = None
        self.pending_chars = sum(len(part) for run in kept for part in run.parts)
        chunks: list[Chunk] = []
        for run in taken:
            parts, run.parts = run.parts, []
            limit = limits.get(run.owner, 0) if limits else 0
            size = sum(map(len, parts)) if limit else 0
            if 0 < limit < size:
                # Over the limit: cut it as it is joined (parts of 1 KiB or more on
                # average), or join it once and cut (many tiny parts join faster so).
                pieces = (
                    split_parts(parts, limit)
                    if len(parts) * _SMALL_PART <= size
                    else split_text("".join(parts), limit)
                )
                chunks.extend(Chunk(run.owner, run.parent, piece) for piece in pieces)
            else:
                chunks.append(Chunk(run.owner, run.parent, "".join(parts)))
            del parts
        return chunks


def _unfinished_text(run: _Run) -> str:
    """The text of ``run``'s last part after its last newline."""
    return complete_lines(run.parts[-1])[1]


def _unfinished(run: _Run) -> bool:
    """Whether ``run`` ends inside a line (its parts are never empty strings)."""
    return not run.parts[-1].endswith("\n")


def parent_key(parent: Parent) -> object:
    """A cheap key under which writes for the same parent coalesce.

    Headers are matched by ``msg_id`` (unique per message), so equal headers held
    in different dict objects (one per stream) match; all empty headers match;
    a header without a string ``msg_id`` matches only itself (by identity; its
    run keeps it alive, so the id is not reused meanwhile). No value is hashed,
    so headers holding unhashable values work.
    """
    if not parent:
        return None
    msg_id = parent.get("msg_id")
    return msg_id if isinstance(msg_id, str) else id(parent)
