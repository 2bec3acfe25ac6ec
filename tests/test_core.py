"""The sans-IO core, exhaustively: no threads, sockets or clocks involved."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iostream.core import (
    Chunk,
    OutputBuffer,
    Utf8Decoder,
    complete_lines,
    make_publishable,
    split_parts,
    split_text,
)

# -- OutputBuffer ---------------------------------------------------------------


def test_writes_of_one_owner_and_parent_coalesce_into_one_chunk() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "a"}
    for piece in ["a", "b", "c\n"]:
        buffer.append(1, parent, piece)
    [chunk] = buffer.drain()
    assert (chunk.owner, chunk.parent, chunk.text) == (1, parent, "abc\n")
    assert not buffer and buffer.pending_chars == 0


def test_interleaved_parents_each_coalesce_separately() -> None:
    buffer = OutputBuffer()
    a, b = {"msg_id": "a"}, {"msg_id": "b"}
    for i in range(100):
        buffer.append(1, a if i % 2 else b, str(i % 2))
    chunks = buffer.drain()
    assert [(c.parent["msg_id"], c.text) for c in chunks] == [("b", "0" * 50), ("a", "1" * 50)]


def test_switching_stream_under_one_parent_keeps_order() -> None:
    buffer = OutputBuffer()
    parent: dict[str, str] = {}
    buffer.append(1, parent, "out1\n")
    buffer.append(2, parent, "err1\n")
    buffer.append(1, parent, "out2")
    assert [(c.owner, c.text) for c in buffer.drain()] == [
        (1, "out1\n"),
        (2, "err1\n"),
        (1, "out2"),
    ]


def test_an_unfinished_line_is_continued_past_another_streams_text() -> None:
    """``print`` writes its text and its end separately: a stderr write from
    another thread between the two must not split the stdout line."""
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "first line")
    buffer.append(2, parent, ".")
    buffer.append(1, parent, "\n")
    buffer.append(2, parent, "..")
    buffer.append(1, parent, "second\n")
    buffer.append(2, parent, "!\n")
    assert [(c.owner, c.text) for c in buffer.drain()] == [
        (1, "first line\n"),
        (2, "...!\n"),
        (1, "second\n"),
    ]
    assert buffer.pending_chars == 0 and not buffer.unfinished_line()


def test_a_line_begun_after_the_other_streams_line_goes_after_it() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "a")
    buffer.append(2, parent, "b")  # stderr begins a line
    buffer.append(1, parent, "c\n")  # stdout's line ends: it began first
    buffer.append(1, parent, "d\n")  # a new stdout line, begun after stderr's
    buffer.append(2, parent, "e\n")
    assert [(c.owner, c.text) for c in buffer.drain()] == [(1, "ac\n"), (2, "be\n"), (1, "d\n")]


def test_unfinished_line_tells_whether_some_stream_is_inside_a_line() -> None:
    buffer = OutputBuffer()
    a, b = {"msg_id": "a"}, {"msg_id": "b"}
    assert not buffer.unfinished_line()
    buffer.append(1, a, "x\n")
    assert not buffer.unfinished_line()
    buffer.append(2, b, "y")
    assert buffer.unfinished_line()
    buffer.append(2, b, "\n")
    assert not buffer.unfinished_line()
    buffer.append(1, a, "z")
    buffer.drain(owner=2)
    assert buffer.unfinished_line()
    buffer.drain()
    assert not buffer.unfinished_line()


def test_continuing_a_line_takes_only_its_end_not_the_lines_after_it() -> None:
    """Bulk C output reaches us in chunks that end mid-line: the lines after the
    end of the continued one were written after the other stream's text."""
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "a1\na2")
    buffer.append(2, parent, "E1\n")
    buffer.append(1, parent, "-end\nb1\nb2")
    buffer.append(2, parent, "E2\n")
    buffer.append(1, parent, "-end\nc1\n")
    assert [(c.owner, c.text) for c in buffer.drain()] == [
        (1, "a1\na2-end\n"),
        (2, "E1\n"),
        (1, "b1\nb2-end\n"),
        (2, "E2\n"),
        (1, "c1\n"),
    ]


def test_a_childs_lines_go_before_the_unfinished_line_they_arrive_during() -> None:
    """A forked Pool worker's lines reach the parent while the parent is between
    ``print``'s two writes: they are complete, the parent's line is not."""
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "[0, 1, 4, 9]")
    buffer.insert_lines(1, {"msg_id": "cell"}, "worker 0\nworker 1\n")
    buffer.append(1, parent, "\n")
    assert [c.text for c in buffer.drain()] == ["worker 0\nworker 1\n[0, 1, 4, 9]\n"]


def test_a_childs_lines_go_after_finished_lines_and_before_the_unfinished_rest() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "one\ntw")
    buffer.append(1, parent, "o and")
    buffer.insert_lines(1, parent, "child\n")
    buffer.append(1, parent, " more\n")
    assert [c.text for c in buffer.drain()] == ["one\nchild\ntwo and more\n"]
    assert buffer.pending_chars == 0


def test_a_childs_partial_line_is_continued_by_its_next_lines() -> None:
    """A child's ``write("Progress: "); flush(); write("done\\n")``: the end of its
    line comes after the partial line it sent, never before it."""
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.insert_lines(1, parent, "Progress: ")
    buffer.insert_lines(1, parent, "...")
    buffer.insert_lines(1, parent, "done\nnext\n")
    assert [c.text for c in buffer.drain()] == ["Progress: ...done\nnext\n"]
    # ... but once the parent wrote after it, the unfinished line is the parent's.
    buffer.insert_lines(1, parent, "child: ")
    buffer.append(1, parent, "[0, 1]")
    buffer.insert_lines(1, parent, "lines\n")
    assert [c.text for c in buffer.drain()] == ["lines\nchild: [0, 1]"]


def test_a_childs_long_line_sent_in_pieces_arrives_whole_and_in_order() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    line = ",".join(f"{i:02d}" for i in range(30)) + "\n"
    buffer.append(1, parent, "mine\n")
    for piece in split_text(line, 40):
        buffer.insert_lines(1, parent, piece)
    assert [c.text for c in buffer.drain()] == ["mine\n" + line]


def test_a_childs_lines_without_an_unfinished_line_are_appended() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.append(1, parent, "mine\n")
    buffer.insert_lines(1, parent, "child\n")
    buffer.append(2, parent, "err")
    buffer.insert_lines(2, parent, "partial")  # not complete: after, as append does
    assert [(c.owner, c.text) for c in buffer.drain()] == [
        (1, "mine\nchild\n"),
        (2, "errpartial"),
    ]


def test_unhashable_parent_values_work() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "x", "tags": ["a", {"b": 1}]}
    buffer.append(1, parent, "t")
    assert buffer.drain()[0].parent is parent


def test_drain_of_one_owner_keeps_the_others() -> None:
    buffer = OutputBuffer()
    parent: dict[str, str] = {}
    buffer.append(1, parent, "one")
    buffer.append(2, parent, "two")
    assert [c.text for c in buffer.drain(owner=2)] == ["two"]
    assert buffer.pending_chars == 3
    buffer.append(1, parent, "!")
    assert [c.text for c in buffer.drain()] == ["one!"]


def test_empty_writes_are_ignored() -> None:
    buffer = OutputBuffer()
    buffer.append(1, {}, "")
    assert not buffer and buffer.drain() == []


# -- splitting --------------------------------------------------------------------


def test_split_prefers_line_boundaries() -> None:
    text = "aaaa\nbbbb\ncccc\n"
    assert list(split_text(text, 10)) == ["aaaa\nbbbb\n", "cccc\n"]


def test_split_cuts_long_lines_hard() -> None:
    assert list(split_text("x" * 25, 10)) == ["x" * 10, "x" * 10, "x" * 5]


def test_split_never_breaks_astral_characters() -> None:
    text = "\U0001f600" * 7
    pieces = list(split_text(text, 3))
    assert all(len(p) <= 3 for p in pieces) and "".join(pieces) == text


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_split_is_lossless_and_bounded(text: str, limit: int) -> None:
    pieces = list(split_text(text, limit))
    assert "".join(pieces) == text
    assert all(0 < len(p) <= limit for p in pieces)


def test_complete_lines() -> None:
    assert complete_lines("a\nb\nc") == ("a\nb\n", "c")
    assert complete_lines("abc") == ("", "abc")


# -- publishable text ---------------------------------------------------------------


def test_lone_surrogates_become_replacement_characters() -> None:
    assert make_publishable("a\ud800b") == "a\ufffdb"
    assert make_publishable("\udcff") == "\ufffd"


def test_surrogate_pairs_are_combined() -> None:
    assert make_publishable("\ud83d\ude00") == "\U0001f600"


def test_valid_text_is_returned_unchanged() -> None:
    text = "héllo \U0001f600"
    assert make_publishable(text) is text


@given(st.text(alphabet=st.characters(codec=None)))
def test_publishable_text_always_encodes(text: str) -> None:
    make_publishable(text).encode("utf-8")


# -- incremental decoding -------------------------------------------------------------


def test_character_split_across_reads_arrives_whole() -> None:
    decoder = Utf8Decoder()
    data = "é\U0001f600".encode()
    assert decoder.decode(data[:1]) == ""
    assert decoder.decode(data[1:3]) == "é"
    assert decoder.decode(data[3:]) == "\U0001f600"


def test_invalid_bytes_become_replacement_characters() -> None:
    decoder = Utf8Decoder()
    assert decoder.decode(b"a\xffb") == "a\ufffdb"
    assert decoder.decode(b"\xe2\x82") == ""
    assert decoder.finish() == "\ufffd"


@given(st.text(), st.lists(st.integers(min_value=0, max_value=64), max_size=20))
def test_decoding_any_split_of_valid_utf8_is_lossless(text: str, cuts: list[int]) -> None:
    data = text.encode("utf-8", "surrogatepass")
    decoder = Utf8Decoder()
    positions = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *positions], [*positions, len(data)], strict=True)]
    out = "".join(decoder.decode(p) for p in pieces) + decoder.finish()
    assert out == codecs.decode(data, "utf-8", "replace")


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_decoding_random_bytes_never_raises(data: bytes, step: int) -> None:
    decoder = Utf8Decoder()
    out = "".join(decoder.decode(data[i : i + step]) for i in range(0, len(data), step))
    out += decoder.finish()
    assert out == data.decode("utf-8", "replace")


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4), st.text(max_size=5)), max_size=60),
    st.integers(0, 60),
)
def test_extend_is_the_same_as_appending_each(
    ops: list[tuple[int, int, str]], split_at: int
) -> None:
    """``extend`` (how queued writes are moved into the buffer) must give the same
    chunks as appending the writes one by one, wherever the batches are cut.
    The last two parents are equal but distinct and have no ``msg_id``: they
    must never share a run, even inside a batch written under one of them."""
    parents = [{"msg_id": "a"}, {"msg_id": "b"}, {}, {"x": 1}, {"x": 1}]
    one, batched = OutputBuffer(), OutputBuffer()
    writes = [(owner, parents[p], text) for owner, p, text in ops]
    for write in writes:
        one.append(*write)
    flat = [item for write in writes for item in write]
    batched.extend(flat[: 3 * split_at])
    batched.extend(flat[3 * split_at :])
    assert batched.pending_chars == one.pending_chars
    assert [(c.owner, id(c.parent), c.text) for c in batched.drain()] == [
        (c.owner, id(c.parent), c.text) for c in one.drain()
    ]


def test_a_batch_of_one_owner_and_parent_becomes_one_run() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "m"}
    buffer.extend([1, parent, "a", 1, parent, "", 1, parent, "bc\n"])
    buffer.extend([2, parent, "d", 1, parent, "e"])
    assert [(c.owner, c.text) for c in buffer.drain()] == [(1, "abc\n"), (2, "d"), (1, "e")]
    assert buffer.pending_chars == 0


# -- the whole model, under hypothesis -------------------------------------------------

writes = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1), st.integers(0, 2), st.text(max_size=8)),
    max_size=80,
)


@settings(max_examples=300)
@given(writes, st.lists(st.integers(0, 79), max_size=5))
def test_any_interleaving_comes_out_complete_in_order_under_the_right_parent(
    ops: list[tuple[int, int, int, str]], drain_points: list[int]
) -> None:
    """Threads writing to two streams under three parents, drained at random
    points: under each parent, each stream's text comes out whole and in order,
    each thread's text is complete and in order, and within a drain no stream's
    line is broken by another stream's text."""
    parents = [{"msg_id": str(i), "tags": [i]} for i in range(3)]
    buffer = OutputBuffer()
    drains: list[list[Chunk]] = [[]]
    for i, (thread, stream, parent, text) in enumerate(ops):
        buffer.append(stream, parents[parent], f"<{thread}>{text}")
        if i in drain_points:
            drains.append(buffer.drain())
    drains.append(buffer.drain())
    assert buffer.pending_chars == 0 and not buffer.unfinished_line()
    chunks = [c for drained in drains for c in drained]
    for p, parent in enumerate(parents):
        for stream in (0, 1):
            written = "".join(f"<{t}>{x}" for t, s, q, x in ops if q == p and s == stream)
            published = [c.text for c in chunks if c.parent is parent and c.owner == stream]
            assert "".join(published) == written
            for thread in range(4):
                mine = [f"<{t}>{x}" for t, s, q, x in ops if (q, s, t) == (p, stream, thread)]
                assert _in_order(mine, written)
        for drained in drains:
            mine = [c for c in drained if c.parent is parent]
            for k, chunk in enumerate(mine):
                later = [c for c in mine[k + 1 :] if c.owner == chunk.owner]
                assert chunk.text.endswith("\n") or not later, (chunk, later)


lines = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["a", "bc", "d\n", "ef\n", "g\nh", "i\nj\n"])),
    max_size=60,
)


@settings(max_examples=300)
@given(lines)
def test_lines_come_out_whole_in_the_order_they_were_begun(
    ops: list[tuple[int, str]],
) -> None:
    """Three streams under one parent, writes inside a line, ending one, or
    ending one and beginning more: the output is every line whole, in the order
    the lines began (a line begins with the write that holds its first character)."""
    parent = {"msg_id": "cell"}
    buffer = OutputBuffer()
    for owner, text in ops:
        buffer.append(owner, parent, text)
    begun: list[tuple[int, list[str]]] = []  # lines in the order they began
    open_line: dict[int, list[str]] = {}
    for owner, text in ops:
        for piece in text.splitlines(keepends=True):
            if owner not in open_line:
                open_line[owner] = []
                begun.append((owner, open_line[owner]))
            open_line[owner].append(piece)
            if piece.endswith("\n"):
                del open_line[owner]
    expected = "".join(f"{owner}:{''.join(line)}|" for owner, line in begun)
    published = "".join(
        f"{c.owner}:{line}|" for c in buffer.drain() for line in c.text.splitlines(keepends=True)
    )
    assert published == expected


def _labels(pairs: list[tuple[int, str]]) -> str:
    return "".join(str(owner) * len(text) for owner, text in pairs)


def _in_order(pieces: list[str], text: str) -> bool:
    position = 0
    for piece in pieces:
        position = text.find(piece, position)
        if position < 0:
            return False
        position += len(piece)
    return True


def test_extend_rejects_a_broken_triple() -> None:
    buffer = OutputBuffer()
    with pytest.raises(ValueError, match="triples"):
        buffer.extend([1, {}, "a", 2])
    assert not buffer and buffer.pending_chars == 0


def test_drain_cuts_runs_over_their_owners_limit() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    lines = "".join(f"{i:03d}\n" for i in range(100))  # 400 characters
    buffer.append(1, parent, lines)
    buffer.append(2, parent, "e" * 250)
    chunks = buffer.drain(limits={1: 100})
    ones = [c.text for c in chunks if c.owner == 1]
    assert "".join(ones) == lines and max(map(len, ones)) <= 100
    assert all(t.endswith("\n") for t in ones)  # cut at line ends where they fit
    assert [c.text for c in chunks if c.owner == 2] == ["e" * 250]  # no limit given


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.text(max_size=30)), max_size=40),
    st.integers(1, 50),
)
def test_cutting_at_drain_is_lossless_and_bounded(ops: list[tuple[int, str]], limit: int) -> None:
    plain, cut = OutputBuffer(), OutputBuffer()
    parent = {"msg_id": "cell"}
    for owner, text in ops:
        plain.append(owner, parent, text)
        cut.append(owner, parent, text)
    whole = plain.drain()
    pieces = cut.drain(limits={0: limit, 1: limit})
    assert all(len(c.text) <= limit for c in pieces)
    for owner in (0, 1):
        assert "".join(c.text for c in pieces if c.owner == owner) == "".join(
            c.text for c in whole if c.owner == owner
        )


@settings(max_examples=500)
@given(
    st.lists(st.text(alphabet="ab\n\U0001f600\ud83d\ude00", max_size=12), max_size=30),
    st.integers(1, 40),
)
def test_split_parts_cuts_exactly_as_split_text(parts: list[str], limit: int) -> None:
    assert list(split_parts(parts, limit)) == list(split_text("".join(parts), limit))
    assert list(split_text("".join(parts), limit)) == _reference_split("".join(parts), limit)


def _reference_split(text: str, limit: int) -> list[str]:
    """The cutting rule, written plainly on the whole text (an independent model)."""
    pieces, start = [], 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start + limit // 2, start + limit)
        stop = cut + 1 if cut >= 0 else start + limit
        if cut < 0 and stop - 1 > start and "\ud800" <= text[stop - 1] <= "\udbff":
            stop -= "\udc00" <= text[stop] <= "\udfff"
        pieces.append(text[start:stop])
        start = stop
    return pieces + ([text[start:]] if start < len(text) else [])


def test_a_surrogate_pair_written_as_two_code_points_is_not_cut_in_two() -> None:
    text = "abcdefghi\ud83d\ude00xyz"
    assert list(split_text(text, 10)) == ["abcdefghi", "\ud83d\ude00xyz"]
    assert list(split_parts(["abcdefghi\ud83d", "\ude00xyz"], 10)) == list(split_text(text, 10))
    assert [make_publishable(p) for p in split_text(text, 10)] == ["abcdefghi", "\U0001f600xyz"]
    assert list(split_text("\ud83d\ude00", 1)) == ["\ud83d", "\ude00"]  # (no room)


def test_split_parts_of_one_huge_part_is_lossless_and_cut_at_lines() -> None:
    part = "".join(f"{i:07d}\n" for i in range(200_000))  # 1.6 M characters
    pieces = list(split_parts([part], 1000))
    assert "".join(pieces) == part and len(pieces) == 1600


def test_drain_cuts_big_parts_without_joining_the_run_first() -> None:
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    piece = "z" * 9_999 + "\n"
    for _ in range(7):
        buffer.append(1, parent, piece)
    chunks = buffer.drain(limits={1: 25_000})
    assert [len(c.text) for c in chunks] == [20_000, 20_000, 20_000, 10_000]
    assert "".join(c.text for c in chunks) == piece * 7


def test_text_from_elsewhere_keeps_its_own_line_per_source() -> None:
    """A forked child's partial line and the descriptor's complete line: each
    source's own line stays whole and in order, and one source's complete lines
    never continue another source's partial line."""
    buffer = OutputBuffer()
    parent = {"msg_id": "cell"}
    buffer.insert_lines(1, parent, "child-part", source="child")
    buffer.insert_lines(1, parent, "from C\n", source="fd")
    buffer.insert_lines(1, parent, " rest\n", source="child")
    assert "".join(c.text for c in buffer.drain()) == "from C\nchild-part rest\n"
    # The other way round: the descriptor's line stays out of the child's.
    buffer.append(1, parent, "after")  # Python began a line
    buffer.insert_lines(1, parent, "from C\n", source="fd")
    buffer.insert_lines(1, parent, "child line\n", source="child")
    buffer.append(1, parent, "\n")
    assert "".join(c.text for c in buffer.drain()) == "from C\nchild line\nafter\n"
