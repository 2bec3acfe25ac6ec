"""The sans-IO core of the library: no threads, sockets, clocks or OS I/O.

* :mod:`~iostream.core.buffer`: the output buffer, text grouped in runs per
  stream and parent, kept in write order with lines whole;
* :mod:`~iostream.core.text`: cutting text into messages, completing lines,
  UTF-8 encoding and incremental decoding;
* :mod:`~iostream.core.policy`: the flush policy, told what happened and when,
  answering when the pending text is due.

Every class here is single-threaded; the layers above serialise access. Tested
exhaustively and with hypothesis (tests/test_core.py, tests/test_policy.py).
Nothing in this subpackage imports anything outside it but the standard library.
"""

from .buffer import DEFAULT_MAX_MESSAGE_CHARS, Chunk, OutputBuffer, Parent, parent_key
from .text import Utf8Decoder, complete_lines, make_publishable, split_parts, split_text

__all__ = [
    "DEFAULT_MAX_MESSAGE_CHARS",
    "Chunk",
    "OutputBuffer",
    "Parent",
    "Utf8Decoder",
    "complete_lines",
    "make_publishable",
    "parent_key",
    "split_parts",
    "split_text",
]
