"""Tests for agentd.sse: the encoder and the WHATWG event-stream decoder."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterable
from itertools import pairwise

import pytest

from agentd.sse import SSEDecoder, SSEEvent, aiter_sse, encode_comment, encode_event, encode_retry


def decode(stream: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    return dec.feed(stream) + dec.close()


def decode_chunks(chunks: Iterable[bytes]) -> tuple[list[SSEEvent], SSEDecoder]:
    dec = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += dec.feed(chunk)
    events += dec.close()
    return events, dec


def datas(events: list[SSEEvent]) -> list[str]:
    return [e.data for e in events]


# A stream exercising most rules at once: BOM, every line ending, CRLF/CR pairs, comments, multi-byte and
# invalid UTF-8, ids (set, NUL-ignored, reset), retry (valid and not), unknown fields, an empty-data block,
# and an unterminated final block.
SAMPLE = (
    b"\xef\xbb\xbf: hello\r\n"
    b"retry: 1500\r\n"
    b"id: 1\r\nevent: greet\r\ndata: h\xc3\xa9llo\r\ndata:  two\r\n\r\n"
    b"data: cr only\rdata: line\r\r"
    b"id: x\x00y\ndata\n\n"
    b"event: lost\r\n\r\n"
    b"foo: bar\rdata: \xf0\x9f\x98\x80 emoji \xff bad\r\nretry: 9x\n\r\n"
    b"id\r\rdata: after reset\r\n\n"
    b"data: \xe2\x82\xac\r\n\r"
    b"data: unterminated\r\n"
)
SAMPLE_EVENTS = [
    SSEEvent("greet", "h\u00e9llo\n two", "1"),
    SSEEvent("message", "cr only\nline", "1"),
    SSEEvent("message", "", "1"),
    SSEEvent("message", "\U0001f600 emoji \ufffd bad", "1"),
    SSEEvent("message", "after reset", ""),
    SSEEvent("message", "\u20ac", ""),
]


# ---------------------------------------------------------------------------------------- line endings


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["LF", "CR", "CRLF"])
def test_each_line_ending(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert decode(stream) == [SSEEvent("e", "a\nb"), SSEEvent("message", "c")]


def test_mixed_line_endings_in_one_stream() -> None:
    assert datas(decode(b"data: a\r\ndata: b\rdata: c\n\r\n")) == ["a\nb\nc"]


def test_lf_cr_is_two_line_ends() -> None:
    # "\n\r" is LF followed by CR: two line ends, so the second one dispatches.
    assert datas(decode(b"data: a\n\r")) == ["a"]


def test_crlf_is_one_line_end() -> None:
    # If CRLF counted as two line ends, "a" would be dispatched before "b" was seen.
    assert datas(decode(b"data: a\r\ndata: b\r\n\r\n")) == ["a\nb"]


def test_cr_and_lf_split_across_chunks_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\ndata: b\r") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\r") == [SSEEvent("message", "a\nb")]
    assert dec.feed(b"\n") == []  # the LF of that CRLF, not another (empty) line
    assert dec.close() == []


def test_cr_at_chunk_end_dispatches_without_waiting() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r\r") == [SSEEvent("message", "a")]


def test_cr_then_empty_chunk_then_lf_is_one_line_end() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"") == []
    assert dec.feed(b"\ndata: b\n\n") == [SSEEvent("message", "a\nb")]


def test_sample_stream_single_feed() -> None:
    events, dec = decode_chunks([SAMPLE])
    assert events == SAMPLE_EVENTS
    assert dec.retry == 1500
    assert dec.last_event_id == ""


def test_sample_stream_every_two_chunk_split() -> None:
    expected = decode_chunks([SAMPLE])
    for i in range(len(SAMPLE) + 1):
        events, dec = decode_chunks([SAMPLE[:i], SAMPLE[i:]])
        assert events == expected[0], f"split at {i}"
        assert (dec.last_event_id, dec.retry) == (expected[1].last_event_id, expected[1].retry)


def test_sample_stream_byte_by_byte() -> None:
    events, dec = decode_chunks(SAMPLE[i : i + 1] for i in range(len(SAMPLE)))
    assert events == SAMPLE_EVENTS
    assert dec.retry == 1500


def test_sample_stream_random_splits() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(SAMPLE)), rng.randint(1, 12)))
        bounds = [0, *cuts, len(SAMPLE)]
        events, _ = decode_chunks(SAMPLE[a:b] for a, b in pairwise(bounds))
        assert events == SAMPLE_EVENTS, cuts


# ------------------------------------------------------------------------------------------------ BOM


def test_leading_bom_stripped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("message", "x")]


@pytest.mark.parametrize("split", [1, 2, 3])
def test_leading_bom_split_across_chunks(split: int) -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    events, _ = decode_chunks([stream[:split], stream[split:]])
    assert events == [SSEEvent("message", "x")]


def test_leading_bom_byte_by_byte() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    events, _ = decode_chunks(stream[i : i + 1] for i in range(len(stream)))
    assert events == [SSEEvent("message", "x")]


def test_second_bom_is_kept_so_the_line_is_an_unknown_field() -> None:
    # Only one BOM is stripped; the second makes the field name "\ufeffdata", which is ignored.
    stream = b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n"
    assert decode(stream) == [SSEEvent("message", "y")]


def test_bom_later_in_stream_is_data() -> None:
    assert datas(decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: \xef\xbb\xbfc\n\n")) == ["a", "\ufeffc"]


def test_partial_bom_is_not_stripped() -> None:
    # EF BB followed by "d" is an invalid sequence: one U+FFFD, which spoils the field name.
    assert decode(b"\xef\xbbdata: x\n\ndata: y\n\n") == [SSEEvent("message", "y")]


def test_stream_of_only_a_bom_prefix() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"\xef\xbb") == []
    assert dec.close() == []


# ------------------------------------------------------------------------------------- field parsing


def test_comment_lines_ignored() -> None:
    assert decode(b": comment\ndata: a\n:another\n:\ndata: b\n\n") == [SSEEvent("message", "a\nb")]


def test_comment_only_block_dispatches_nothing() -> None:
    assert decode(b": keep-alive\n\n:\n\n") == []


def test_data_without_colon_is_empty_value() -> None:
    assert decode(b"data\n\n") == [SSEEvent("message", "")]


def test_data_colon_without_space() -> None:
    assert datas(decode(b"data:x\n\n")) == ["x"]


def test_two_spaces_after_colon_keep_one() -> None:
    assert datas(decode(b"data:  x\n\n")) == [" x"]


def test_only_a_space_is_stripped_not_a_tab() -> None:
    assert datas(decode(b"data:\tx\n\n")) == ["\tx"]


def test_value_trailing_whitespace_kept() -> None:
    assert datas(decode(b"data: x  \n\n")) == ["x  "]


def test_only_first_colon_separates_name_and_value() -> None:
    assert datas(decode(b"data: a: b:c\n\n")) == ["a: b:c"]


def test_multiline_data_joined_with_lf() -> None:
    assert datas(decode(b"data: a\ndata: b\ndata: c\n\n")) == ["a\nb\nc"]


def test_only_one_trailing_lf_removed() -> None:
    assert datas(decode(b"data: a\ndata:\n\n")) == ["a\n"]
    assert datas(decode(b"data:\ndata:\n\n")) == ["\n"]


def test_empty_data_buffer_does_not_dispatch() -> None:
    assert decode(b"event: foo\n\nid: 1\n\n\n\n") == []


def test_event_type_reset_after_blank_line_without_data() -> None:
    assert decode(b"event: foo\n\ndata: x\n\n") == [SSEEvent("message", "x")]


def test_event_type_reset_after_dispatch() -> None:
    events = decode(b"event: a\ndata: 1\n\ndata: 2\n\n")
    assert [e.event for e in events] == ["a", "message"]


def test_empty_event_name_is_message() -> None:
    assert decode(b"event:\ndata: x\n\nevent\ndata: y\n\n") == [
        SSEEvent("message", "x"),
        SSEEvent("message", "y"),
    ]


def test_last_event_field_wins() -> None:
    assert [e.event for e in decode(b"event: a\nevent: b\ndata: x\n\n")] == ["b"]


def test_unknown_fields_ignored() -> None:
    assert decode(b"foo: bar\nbaz\ndata: x\nDATA: y\nData: z\n\n") == [SSEEvent("message", "x")]


def test_field_names_are_case_sensitive() -> None:
    assert decode(b"Data: x\nEvent: e\n\n") == []


def test_space_before_colon_is_part_of_the_name() -> None:
    assert decode(b"data : x\n\n") == []


# ------------------------------------------------------------------------------------------------- id


def test_id_persists_to_later_events() -> None:
    events, dec = decode_chunks([b"id: 1\ndata: a\n\ndata: b\n\n"])
    assert [e.id for e in events] == ["1", "1"]
    assert dec.last_event_id == "1"


def test_id_set_after_data_applies_to_that_event() -> None:
    assert decode(b"data: a\nid: 7\n\n") == [SSEEvent("message", "a", "7")]


def test_id_empty_value_resets() -> None:
    events, dec = decode_chunks([b"id: 1\ndata: a\n\nid\ndata: b\n\nid: 2\n\nid:\ndata: c\n\n"])
    assert [e.id for e in events] == ["1", "", ""]
    assert dec.last_event_id == ""


def test_id_with_nul_ignored() -> None:
    events, dec = decode_chunks([b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"])
    assert [e.id for e in events] == ["1", "1"]
    assert dec.last_event_id == "1"


def test_last_event_id_updates_at_blank_line_even_without_data() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"id: 5\n") == []
    assert dec.last_event_id == ""  # the buffer is only copied to the last event ID string at dispatch
    assert dec.feed(b"\n") == []
    assert dec.last_event_id == "5"


def test_id_may_contain_spaces_and_colons() -> None:
    assert decode(b"id:  a:b \ndata: x\n\n")[0].id == " a:b "


# ---------------------------------------------------------------------------------------------- retry


def test_retry_digits_sets_reconnection_time() -> None:
    dec = SSEDecoder()
    assert dec.retry is None
    assert dec.feed(b"retry: 3000\n") == []  # applied at once, and never dispatches
    assert dec.retry == 3000
    assert dec.feed(b"\n") == []


@pytest.mark.parametrize(
    "value",
    [b"12a", b"-1", b"+5", b"1.5", b" 10", b"10 ", b"", b"1e3", "\u0661\u0662".encode()],
)
def test_retry_not_only_ascii_digits_ignored(value: bytes) -> None:
    events, dec = decode_chunks([b"retry: 1000\n\nretry: " + value + b"\n\n"])
    assert events == []
    assert dec.retry == 1000


def test_retry_without_colon_ignored() -> None:
    _, dec = decode_chunks([b"retry\n\n"])
    assert dec.retry is None


def test_retry_leading_zeros() -> None:
    _, dec = decode_chunks([b"retry:0042\n"])
    assert dec.retry == 42


# ------------------------------------------------------------------------------------------ end of stream


def test_unterminated_block_not_dispatched_at_close() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: b\n") == [SSEEvent("message", "a")]
    assert dec.close() == []


def test_unterminated_last_line_discarded_at_close() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\nretry: 5\nid: 9\n\ndata: b") == [SSEEvent("message", "a")]
    assert dec.feed(b"retry: 77") == []
    assert dec.close() == []
    assert (dec.retry, dec.last_event_id) == (5, "9")


def test_decoder_reusable_after_close_like_a_reconnect() -> None:
    dec = SSEDecoder()
    dec.feed(b"retry: 10\nid: 4\ndata: a\n\nevent: x\nid: 5\ndata: half\ndata: cu")
    dec.close()
    # A new stream: BOM stripped again, no leftovers from the old partial block, retry/last id kept.
    assert dec.feed(b"\xef\xbb\xbfdata: b\n") == []
    assert (dec.retry, dec.last_event_id) == (10, "4")
    # The id buffer belongs to the stream, so the new stream's events carry "" until an id arrives.
    assert dec.feed(b"\n") == [SSEEvent("message", "b", "")]
    assert dec.last_event_id == ""


# ------------------------------------------------------------------------------------------------ UTF-8


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert datas(decode(b"data: a\xffb\xc3(c\n\n")) == ["a\ufffdb\ufffd(c"]


def test_truncated_multibyte_at_line_end_is_replaced() -> None:
    assert datas(decode(b"data: x\xe2\x82\ndata: y\n\n")) == ["x\ufffd\ny"]


def test_multibyte_char_split_across_chunks() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: \xe2") == []
    assert dec.feed(b"\x82") == []
    assert dec.feed(b"\xac!\n\n") == [SSEEvent("message", "\u20ac!")]


def test_four_byte_char_every_split() -> None:
    stream = "data: a\U0001f600b\n\n".encode()
    for i in range(len(stream) + 1):
        events, _ = decode_chunks([stream[:i], stream[i:]])
        assert datas(events) == ["a\U0001f600b"], i


def test_non_sse_line_separators_are_data() -> None:
    # U+2028, U+0085, VT, FF, FS are line breaks for str.splitlines() but not for SSE.
    payload = "a\u2028b\x85c\x0bd\x0ce\x1cf"
    assert datas(decode(f"data: {payload}\n\n".encode())) == [payload]


# ------------------------------------------------------------------------------------------- big inputs


def test_five_megabyte_data_line() -> None:
    payload = b"x" * (5 * 1024 * 1024)
    stream = b"data: " + payload + b"\n\n"
    assert decode(stream) == [SSEEvent("message", payload.decode())]
    # Fed in small chunks it must stay linear: a decoder that rescans its buffer on every chunk would take
    # minutes here (1280 chunks x up to 5 MB).
    started = time.perf_counter()
    events, _ = decode_chunks(stream[i : i + 4096] for i in range(0, len(stream), 4096))
    assert time.perf_counter() - started < 10
    assert len(events) == 1 and events[0].data == payload.decode()


def test_many_tiny_chunks() -> None:
    stream = b"".join(encode_event(f'{{"n": {i}}}', event="tick", id=i) for i in range(2000))
    events, dec = decode_chunks(stream[i : i + 3] for i in range(0, len(stream), 3))
    assert [e.data for e in events] == [f'{{"n": {i}}}' for i in range(2000)]
    assert dec.last_event_id == "1999"


# ------------------------------------------------------------------------------------ the spec's examples


def test_spec_example_stock_ticker() -> None:
    assert decode(b"data: YHOO\ndata: +2\ndata: 10\n\n") == [SSEEvent("message", "YHOO\n+2\n10")]


def test_spec_example_ids_and_third_event_never_dispatched() -> None:
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n"
    events, dec = decode_chunks([stream])
    assert events == [SSEEvent("message", "first event", "1"), SSEEvent("message", "second event", "")]
    assert dec.last_event_id == ""


def test_spec_example_empty_data_fields() -> None:
    assert datas(decode(b"data\n\ndata\ndata\n\ndata:")) == ["", "\n"]


def test_spec_example_test_with_and_without_space() -> None:
    assert datas(decode(b"data:test\n\ndata: test\n\n")) == ["test", "test"]


# ------------------------------------------------------------------------------------------------ encoder


def test_encode_event_wire_format() -> None:
    assert encode_event("hi", event="greet", id=5) == b"id: 5\nevent: greet\ndata: hi\n\n"
    assert encode_event("hi") == b"data: hi\n\n"
    assert encode_event("") == b"data: \n\n"


def test_encode_event_splits_every_line_ending() -> None:
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_event_empty_id_resets() -> None:
    assert encode_event("x", id="") == b"id\ndata: x\n\n"
    dec = SSEDecoder()
    dec.feed(encode_event("a", id="1"))
    assert dec.feed(encode_event("b", id="")) == [SSEEvent("message", "b", "")]


@pytest.mark.parametrize(
    "data",
    [
        "",
        "x",
        "\n",
        "\r",
        "\r\n",
        "\r\n\r\n",
        "a\r\nb\rc\nd",
        "\n\nmiddle\n\n",
        " leading space",
        "  two spaces",
        "trailing\n",
        ": looks like a comment",
        "data: nested\n\nevent: evil\nid: 666",
        "unicode \u20ac \U0001f600 \u2028 \x85",
        '{"json": "with \\n escapes"}',
    ],
)
def test_encoder_round_trips_through_decoder(data: str) -> None:
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    stream = encode_event(data, event=" spaced:name", id="id: 1 ") + encode_event(data)
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        events, dec = decode_chunks(chunks)
        assert events == [
            SSEEvent(" spaced:name", expected, "id: 1 "),
            SSEEvent("message", expected, "id: 1 "),
        ]
        assert dec.last_event_id == "id: 1 "


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\r\nb", "\n"])
def test_encoder_rejects_line_break_in_event_name(name: str) -> None:
    with pytest.raises(ValueError):
        encode_event("x", event=name)


@pytest.mark.parametrize("event_id", ["1\n", "\r1", "a\r\nb", "a\x00b"])
def test_encoder_rejects_line_break_or_nul_in_id(event_id: str) -> None:
    with pytest.raises(ValueError):
        encode_event("x", id=event_id)


def test_encode_comment() -> None:
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment() == b":\n\n"
    assert encode_comment("a\r\nb\n\nc") == b": a\n: b\n:\n: c\n\n"


def test_comments_do_not_disturb_events() -> None:
    stream = encode_comment("a\nb\rc") + encode_event("x", event="e") + encode_comment() + encode_event("y")
    assert decode(stream) == [SSEEvent("e", "x"), SSEEvent("message", "y")]


def test_encode_retry() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    _, dec = decode_chunks([encode_retry(3000)])
    assert dec.retry == 3000
    with pytest.raises(ValueError):
        encode_retry(-1)
    with pytest.raises(TypeError):
        encode_retry(True)


# ------------------------------------------------------------------------------------------ SSEEvent, async


def test_sse_event_is_frozen_with_defaults() -> None:
    ev = SSEEvent(data="x")
    assert (ev.event, ev.data, ev.id) == ("message", "x", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.data = "y"  # type: ignore[misc]


def test_fast_event_constructor_matches_dataclass() -> None:
    # agentd.sse builds events without __init__ for speed; it must set exactly the dataclass's fields.
    from agentd.sse import _new_event

    assert [f.name for f in dataclasses.fields(SSEEvent)] == ["event", "data", "id"]
    ev = _new_event("e", "d", "i")
    assert ev == SSEEvent("e", "d", "i") and hash(ev) == hash(SSEEvent("e", "d", "i"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.id = "x"  # type: ignore[misc]


async def test_aiter_sse() -> None:
    stream = (
        b"\xef\xbb\xbfretry: 250\r\nid: 3\r\nevent: a\r\ndata: 1\r\n\r\ndata: \xe2\x82\xac\r\n\r\ndata: cut"
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(stream), 5):
            yield stream[i : i + 5]

    dec = SSEDecoder()
    events = [ev async for ev in aiter_sse(chunks(), decoder=dec)]
    assert events == [SSEEvent("a", "1", "3"), SSEEvent("message", "\u20ac", "3")]
    assert (dec.retry, dec.last_event_id) == (250, "3")
    assert [ev async for ev in aiter_sse(chunks())] == events


# ------------------------------------------------------------------- the block fast path equals the spec


def _reference(stream: bytes) -> tuple[list[SSEEvent], str, int | None]:  # noqa: C901
    """The WHATWG algorithm written out plainly, line by line (no fast path), for differential tests."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    lines, buf = [], ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\r" or c == "\n":
            lines.append(buf)
            buf = ""
            if c == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
        else:
            buf += c
        i += 1
    events: list[SSEEvent] = []
    data, etype, id_buf, last_id, retry = "", "", "", "", None
    for line in lines:
        if line == "":
            last_id = id_buf
            if data:
                events.append(SSEEvent(etype or "message", data.removesuffix("\n"), id_buf))
            data, etype = "", ""
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            etype = value
        elif name == "id" and "\0" not in value:
            id_buf = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return events, last_id, retry


_PIECES = [
    b'id: 7\nevent: text\ndata: {"a":1}\n\n',
    b"event: text\ndata: x\nid: 8\n\n",
    b"data: plain\n\n",
    b"data:nospace\n\n",
    b"data:  two spaces\n\n",
    b"id:\ndata: reset\n\n",
    b"id: a\x00b\ndata: nul id\n\n",
    b"event:\ndata: empty name\n\n",
    b"data: one\ndata: two\n\n",
    b"data: half",
    b"\n",
    b"event: only\n\n",
    b": comment\n",
    b"retry: 300\n",
    b"id: 9\n",
    b"data\n\n",
    b"data: cr\r\n\r\n",
    b"id: 10\r\nevent: e\rdata: mixed\r\n\r",
    b"\n\n",
    b"data: \xc3\xa9 \xff\n\n",
    b"event: e\nid: 11\ndata: id in the middle\n\n",
]
# Long lines take the decoder's other path (str.find instead of the block regex): the same rules.
_LONG_PIECES = [
    b"id: 12\nevent: big\ndata: " + b"y" * 600 + b"\n\n",
    b"data: " + b"z" * 500 + b"\ndata: more\n\n",
    b"data:" + b"w" * 300 + b"\nid: 13\n\n",
    b"data:  " + b"v" * 400 + b"\n\n",
    b"id: a\x00" + b"u" * 300 + b"\ndata: " + b"u" * 300 + b"\n\n",
    b": " + b"c" * 700 + b"\n",
    b"event: " + b"e" * 300 + b"\ndata: x\n\n",
    b"data: \xe2\x82" + b"t" * 300 + b"\n\n",
]


@pytest.mark.parametrize(
    "pieces", [_PIECES, _LONG_PIECES, _PIECES + _LONG_PIECES], ids=["short", "long", "mixed"]
)
def test_fast_paths_equal_the_plain_algorithm_on_random_streams(pieces: list[bytes]) -> None:
    rng = random.Random(2026)
    for _ in range(400):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        want, last_id, retry = _reference(stream)
        events, dec = decode_chunks([stream])
        assert events == want, stream
        assert (dec.last_event_id, dec.retry) == (last_id, retry), stream
        cut = rng.randint(0, len(stream))
        assert decode_chunks([stream[:cut], stream[cut:]])[0] == want, (stream, cut)
