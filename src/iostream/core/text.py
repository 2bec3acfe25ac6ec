"""Cutting, completing and decoding stream text (sans-IO).

:func:`split_text` and :func:`split_parts` cut text into messages of bounded
size; :func:`complete_lines` splits off an unfinished line; :func:`make_publishable`
makes text UTF-8-encodable; :class:`Utf8Decoder` decodes bytes read from a file
descriptor incrementally. Pure functions and a single-threaded class: no thread,
socket, lock, clock or OS I/O.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Iterator, Sequence


def split_text(text: str, limit: int) -> Iterator[str]:
    """Yield pieces of ``text`` of at most ``limit`` (at least 1) characters, in
    order, cut as :func:`split_parts` cuts."""
    return split_parts((text,), limit)


def _is_pair(first: str, second: str) -> bool:
    """Whether two code points are a high and a low surrogate (one character)."""
    return "\ud800" <= first <= "\udbff" and "\udc00" <= second <= "\udfff"


def split_parts(parts: Sequence[str], limit: int) -> Iterator[str]:
    """Yield the text of ``parts``, in order, in pieces of at most ``limit`` (at
    least 1) characters, joining one piece's worth of ``parts`` at a time: the
    text is never held whole as well as in pieces. For parts of some size; many
    tiny parts join faster at once (then :func:`split_text` the joined text).

    A piece ends after the last newline inside its window when there is one in
    the window's second half, so lines are only broken when they are longer than
    about half the limit. Cuts count code points, so no character is broken, and
    a surrogate pair written as two code points is not cut in two where a piece
    can hold more than one code point (:func:`make_publishable` joins it).
    """
    held: deque[str] = deque()  # the parts not yielded yet, in order
    skip = 0  # characters of held[0] already yielded
    size = 0  # characters held and not yielded yet
    for part in parts:
        if part:
            held.append(part)
            size += len(part)
        while size > limit:
            need = _first_cut(held, skip, limit)
            taken: list[str] = []
            size -= need
            while need:
                first = held[0]
                rest = len(first) - skip
                if rest <= need:
                    taken.append(first[skip:] if skip else first)
                    held.popleft()
                    skip, need = 0, need - rest
                else:
                    taken.append(first[skip : skip + need])
                    skip, need = skip + need, 0
            yield "".join(taken)
    if size:
        first = held.popleft()
        yield "".join([first[skip:] if skip else first, *held])


def _first_cut(held: deque[str], skip: int, limit: int) -> int:
    """The length of the first piece :func:`split_parts` cuts from the text of
    ``held`` after its first ``skip`` characters (more than ``limit`` are left)."""
    newline, offset = -1, -skip  # positions relative to the text left
    for part in held:
        if offset >= limit:
            break
        low, high = max(limit // 2, offset), min(limit, offset + len(part))
        if low < high:
            found = part.rfind("\n", low - offset, high - offset)
            if found >= 0:
                newline = offset + found
        offset += len(part)
    if newline >= 0:
        return newline + 1
    if limit > 1 and _is_pair(_char_at(held, skip, limit - 1), _char_at(held, skip, limit)):
        return limit - 1
    return limit


def _char_at(held: deque[str], skip: int, index: int) -> str:
    """The code point at ``index`` of the text of ``held`` after ``skip``."""
    offset = -skip
    for part in held:
        if index < offset + len(part):
            return part[index - offset]
        offset += len(part)
    return ""


def complete_lines(text: str) -> tuple[str, str]:
    """Split ``text`` into (everything up to the last newline, the rest)."""
    cut = text.rfind("\n") + 1
    return text[:cut], text[cut:]


def make_publishable(text: str) -> str:
    """Return ``text`` in a form that UTF-8 can encode.

    Surrogate pairs written as two code points are combined into the character
    they stand for; lone surrogates become U+FFFD. Other text is returned as is.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class Utf8Decoder:
    """Incremental UTF-8 decoding of byte chunks read from a file descriptor.

    A character split across two reads is returned whole once its last byte
    arrives; invalid bytes become U+FFFD. Never raises on any input.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> str:
        """Decode the next chunk; an incomplete trailing character is held back."""
        return self._decoder.decode(data)

    def finish(self) -> str:
        """Return what is held back (as U+FFFD if incomplete) and reset."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
