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
        end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if end == 0:
            self._partial += chunk
            return []
        self._skip_lf = chunk[-1] == 0x0D
        block: bytes | bytearray
        if self._partial:
            self._partial += memoryview(chunk)[:end]  # a view: no extra copy of the chunk
            block, self._partial = self._partial, bytearray()
        else:
            block = chunk[:end] if end < len(chunk) else chunk
        if end < len(chunk):
            self._partial += memoryview(chunk)[end:]

        # CR and LF never occur inside a UTF-8 multi-byte sequence, so splitting the bytes on them and
        # decoding whole lines gives the same text (U+FFFD included) as decoding the stream first.
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = block.decode("utf-8", "replace").split("\n")
        lines.pop()  # the empty string after the final line end
        return self._process(lines)

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

    def _process(self, lines: list[str]) -> list[SSEEvent]:
        # The hot loop: buffers live in locals and are written back once per chunk.
        events: list[SSEEvent] = []
        data = self._data
        event_type = self._event_type
        id_buffer = self._id_buffer
        last_event_id = self.last_event_id
        for line in lines:
            if not line:
                # Dispatch. The last event ID string is updated even when no event is dispatched.
                last_event_id = id_buffer
                if data:
                    events.append(_new_event(event_type or "message", "\n".join(data), id_buffer))
                    data.clear()
                event_type = ""
                continue
            # A comment (":...") gets the name "" and a line without a colon the value "": both fall out
            # of partition() without special cases.
            name, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            # Joining the data lines with "\n" equals the spec's "append value + LF, drop the final LF",
            # and an empty list is exactly the spec's empty data buffer.
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                if "\0" not in value:
                    id_buffer = value
            elif name == "retry":
                # isascii() first: str.isdigit() also accepts non-ASCII digits such as "١٢".
                if value.isascii() and value.isdigit():
                    self.retry = int(value)
            # Any other field is ignored.
        self._event_type = event_type
        self._id_buffer = id_buffer
        self.last_event_id = last_event_id
        return events


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
