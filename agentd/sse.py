"""Server-Sent Events: an encoder for our responses and a WHATWG-exact incremental decoder.

Decoding follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = [
    "SSEDecoder",
    "SSEEvent",
    "aiter_sse",
    "encode_comment",
    "encode_event",
    "encode_retry",
]

_BOM = b"\xef\xbb\xbf"
# The only line terminators SSE knows; str.splitlines() would also split on U+2028, U+0085, \f, etc.
_LINE_END = re.compile(r"\r\n|\r|\n")


# A whole common block, or else one line. In a block: "id" values without NUL (an id with NUL is ignored
# by the spec: the line path handles it), exactly one optional space after each colon, one data line.
_BLOCK_OR_LINE = re.compile(
    r"(?:id: ?([^\n\0]*)\n)?(?:event: ?([^\n]*)\n)?data: ?([^\n]*)\n(?:id: ?([^\n\0]*)\n)?\n|([^\n]*)\n"
)

# The head of a common block, up to where its (one) data line's value starts.
_HEAD = re.compile(r"(?:id: ?([^\n\0]*)\n)?(?:event: ?([^\n]*)\n)?data: ?")


def _lines(text: str) -> list[str]:
    if "\r" in text:
        return _LINE_END.split(text)
    return text.split("\n")


# --------------------------------------------------------------------------------------------- encoder


def encode_event(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """One event block: `id:`, `event:`, a `data:` line per line of `data`, then a blank line.

    Every line break inside `data` (CRLF, CR or LF) becomes a new `data:` line, so the decoder gives back
    `data` with each break normalised to LF and the payload can never end the block early.
    """
    parts: list[str] = []
    if id is not None:
        id_text = str(id)
        if "\r" in id_text or "\n" in id_text or "\0" in id_text:
            raise ValueError("SSE id must not contain CR, LF or NUL")
        # A bare "id" line (no value) resets the client's last event ID; keep the wire tidy for it.
        parts.append(f"id: {id_text}\n" if id_text else "id\n")
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError("SSE event name must not contain CR or LF")
        if event:
            parts.append(f"event: {event}\n")
    # Always "data: " + line: the decoder strips exactly that one space, so a leading space in a
    # line survives the round trip.
    for line in _lines(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment block (e.g. a keep-alive); every line of `text` becomes its own `:` line."""
    out = "".join(f": {line}\n" if line else ":\n" for line in _lines(text))
    return (out + "\n").encode("utf-8")


def encode_retry(ms: int) -> bytes:
    """Tell the client its reconnection time in milliseconds."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError("retry must be an int (milliseconds)")
    if ms < 0:
        raise ValueError("retry must be >= 0")
    return f"retry: {ms}\n\n".encode("ascii")


# --------------------------------------------------------------------------------------------- decoder


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """A dispatched event. `id` is the last event ID buffer at dispatch time (it persists across events)."""

    event: str = "message"
    data: str = ""
    id: str = ""


_new_object = object.__new__
# The slot descriptors store a field directly, bypassing the frozen __setattr__.
_set_event = vars(SSEEvent)["event"].__set__
_set_data = vars(SSEEvent)["data"].__set__
_set_id = vars(SSEEvent)["id"].__set__


def _new_event(event: str, data: str, id: str) -> SSEEvent:
    # Same result as SSEEvent(event, data, id) at half the cost: a frozen dataclass's __init__ goes through
    # object.__setattr__ per field, which was ~20% of decoding small events. Keep in step with the fields.
    ev: SSEEvent = _new_object(SSEEvent)
    _set_event(ev, event)
    _set_data(ev, data)
    _set_id(ev, id)
    return ev


class SSEDecoder:
    """Incremental event-stream parser: `feed()` bytes as they arrive, `close()` at end of stream.

    `last_event_id` is the EventSource's "last event ID string" (what to send as `Last-Event-ID` when
    reconnecting): like the spec, it takes the value of the id buffer at every blank line, even one that
    dispatches nothing. `retry` is the reconnection time in ms set by the server, or None.
    After `close()` the same decoder may be fed the next connection's stream; `last_event_id` and
    `retry` carry over as they do for an EventSource.
    """

    def __init__(self) -> None:
        self.last_event_id: str = ""
        self.retry: int | None = None
        # Bytes of the current, not yet terminated line (never contains CR or LF).
        self._partial = bytearray()
        self._at_stream_start = True
        # The previous chunk ended in CR: an LF starting the next chunk belongs to that CRLF.
        self._skip_lf = False
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse the next bytes of the stream; returns the events completed by them."""
        if not chunk:
            return []
        if self._at_stream_start:
            # The BOM may arrive split across chunks, so hold back a short prefix of it until it is
            # clear whether the stream starts with one. _partial only ever holds that prefix here.
            head = bytes(self._partial) + bytes(chunk)
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._partial[:] = head
                return []
            self._partial.clear()
            self._at_stream_start = False
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []

        # Only the new chunk is scanned: the pending partial line is known to hold no line end,
        # which keeps huge lines and tiny chunks linear.
        has_cr = b"\r" in chunk
        end = (max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) if has_cr else chunk.rfind(b"\n")) + 1
        if end == 0:
            self._partial += chunk
            return []
        self._skip_lf = chunk[-1] == 0x0D
        if has_cr:
            # CR and LF never occur inside a UTF-8 multi-byte sequence, so splitting the bytes on them and
            # decoding whole lines gives the same text (U+FFFD included) as decoding the stream first.
            block = bytes(self._partial) + chunk[:end]
            self._partial = bytearray(chunk[end:])
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            return self._text(block.decode("utf-8", "replace"))
        view = memoryview(chunk)
        events: list[SSEEvent] = []
        start = 0
        if self._partial:
            # The pending line ends in this chunk: decode it on its own, so the rest of the chunk is
            # decoded straight from the chunk (no copy of it).
            start = chunk.find(b"\n") + 1
            self._partial += view[:start]
            events = self._text(self._partial.decode("utf-8", "replace"))
            self._partial = bytearray()
        if start < end:
            events += self._text(str(view[start:end], "utf-8", "replace"))
        if end < len(chunk):
            self._partial += view[end:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: complete lines were already handled by feed(); the unterminated rest (a last line
        without line end, an event without its blank line) is discarded, as the spec requires."""
        self._partial = bytearray()
        self._at_stream_start = True
        self._skip_lf = False
        self._data = []
        self._event_type = ""
        # The buffers belong to the stream; last_event_id/retry belong to the EventSource and survive.
        self._id_buffer = ""
        return []

    def _text(self, text: str) -> list[SSEEvent]:
        """Complete lines (`text` ends with LF and has no CR). Common blocks (an optional id, an optional
        event name, ONE data line, optionally the id after it, the blank line) are taken whole while no
        event is half-read; anything else goes line by line through `_line`. Every path applies the same
        rules (tests/unit/test_sse.py checks them against the plain algorithm), so which one a block takes
        never changes the result."""
        events: list[SSEEvent] = []
        if text.count("\n", 0, 2048) * 128 < min(len(text), 2048):
            # Lines average more than 128 characters: the block regex would walk them char by char.
            self._long_lines(text, events)
            return events
        data, append, new_event = self._data, events.append, _new_event
        for m in _BLOCK_OR_LINE.finditer(text):
            id1, etype, value, id2, line = m.groups()
            if line is not None:
                self._line(line, events)
            elif data or self._event_type:  # continue the half-read event line by line
                for ln in m.group().split("\n")[:-1]:
                    self._line(ln, events)
            else:
                if id1 is not None or id2 is not None:
                    self._id_buffer = id1 if id2 is None else id2
                self.last_event_id = id_buffer = self._id_buffer
                append(new_event(etype or "message", value, id_buffer))
        return events

    def _long_lines(self, text: str, events: list[SSEEvent]) -> None:
        """Long lines: a common block's head by regex, the end of its data line by str.find (memchr), the
        value sliced straight out of `text` (one copy); other lines by str.find too."""
        pos, n = 0, len(text)
        while pos < n:
            if not self._data and not self._event_type:
                m = _HEAD.match(text, pos)
                if m is not None:
                    start = m.end()
                    nl = text.find("\n", start)
                    if text.startswith("\n", nl + 1):
                        id1, etype = m.groups()
                        if id1 is not None:
                            self._id_buffer = id1
                        self.last_event_id = self._id_buffer
                        events.append(_new_event(etype or "message", text[start:nl], self._id_buffer))
                        pos = nl + 2
                        continue
            nl = text.find("\n", pos)
            if nl == pos:
                self._dispatch(events)
            else:
                colon = text.find(":", pos, nl)
                if colon < 0:
                    self._field(text[pos:nl], "")
                else:
                    start = colon + 2 if text.startswith(" ", colon + 1, nl) else colon + 1
                    self._field(text[pos:colon], text[start:nl])
            pos = nl + 1

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        # A comment (":...") gets the name "" and a line without a colon the value "": both are then
        # ignored or handled by `_field` without special cases.
        colon = line.find(":")
        if colon < 0:
            self._field(line, "")
        else:
            self._field(line[:colon], line[colon + 2 if line.startswith(" ", colon + 1) else colon + 1 :])

    def _dispatch(self, events: list[SSEEvent]) -> None:
        """A blank line. The last event ID string is updated even when no event is dispatched."""
        self.last_event_id = self._id_buffer
        if self._data:
            # Joining the data lines with "\n" equals the spec's "append value + LF, drop the final LF",
            # and an empty list is exactly the spec's empty data buffer.
            events.append(_new_event(self._event_type or "message", "\n".join(self._data), self._id_buffer))
            self._data.clear()
        self._event_type = ""

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            # isascii() first: str.isdigit() also accepts non-ASCII digits such as "١٢".
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        # Any other field (and a comment) is ignored.


async def aiter_sse(
    chunks: AsyncIterable[bytes], *, decoder: SSEDecoder | None = None
) -> AsyncIterator[SSEEvent]:
    """Yield the events of a byte stream, e.g. aiohttp's `response.content.iter_any()`.

    Pass your own `decoder` to read `last_event_id` / `retry` afterwards (for reconnecting).
    """
    dec = SSEDecoder() if decoder is None else decoder
    async for chunk in chunks:
        for event in dec.feed(chunk):
            yield event
    for event in dec.close():
        yield event
