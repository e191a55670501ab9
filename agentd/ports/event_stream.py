"""The EventStream port: ordered, replayable per-job event streams with live fan-out."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from agentd.domain.models import AgentEvent, StoredEvent


class EventStream(Protocol):
    """Every adapter passes tests/contract/test_event_stream.py.

    - `publish` numbers events 1, 2, 3… per stream without gaps, in publish order.
    - `subscribe(after=N)` yields every event with seq > N (replay), then live events, and ends after the
      stream is closed and drained. A subscriber that falls too far behind gets SubscriberTooSlow
      (it can resume with after=<last seq it saw>); it never slows the publisher or other subscribers.
    - An unknown (or pruned) stream raises StreamNotFound.
    - Fencing: a job's runs write with `run=<attempt>`. The stream keeps the newest run that wrote to it;
      a write of an older run raises RunSuperseded (nothing is written), so two runs never interleave.
      `run=0` (the API: `queued`, a cancel before the start) is never fenced and moves nothing.
    """

    @abstractmethod
    async def create(self, stream_id: str, first: Sequence[AgentEvent] = ()) -> None:
        """Make the stream exist (open). Idempotent. `first` events (numbered 1, 2, …) are written in the
        same step, only when this call creates the stream."""
        ...

    @abstractmethod
    async def publish(self, stream_id: str, events: Sequence[AgentEvent], *, run: int = 0) -> list[int]:
        """Append events; returns their sequence numbers. RunSuperseded when a later run than `run` has
        written to the stream."""
        ...

    @abstractmethod
    async def supersede(self, stream_id: str, run: int, events: Sequence[AgentEvent]) -> bool:
        """Start run `run`'s turn with `events` (say, `requeued` and why), unless a run >= `run` has written
        already: then write nothing and return False. From here on, runs before `run` are refused."""
        ...

    @abstractmethod
    async def close_stream(self, stream_id: str) -> None:
        """No more events will come; retention starts now."""
        ...

    @abstractmethod
    def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]: ...

    @abstractmethod
    async def last_seq(self, stream_id: str) -> int:
        """The highest sequence number so far (0 when empty); StreamNotFound when unknown."""
        ...

    @abstractmethod
    async def prune(self) -> int:
        """Forget closed streams whose retention has passed; returns how many."""
        ...

    @abstractmethod
    async def close(self) -> None: ...
