"""What every WorkQueue adapter decides the same way, written once (the adapters keep only their storage).

- Idempotency: a request is compared by the hash of its JSON; a key reused with another request is an
  `IdempotencyConflict`, a busy project under busy="reject" a `ProjectBusy` (one message each).
- A queued job cancelled before it started ends with `CANCELLED`.
- A retryable failure with attempts left goes back to the queue after `backoff_s(attempts)` (the PostgreSQL
  queue computes the same formula in SQL, with `MAX_BACKOFF_S` passed in).
- A job whose worker is lost is re-queued, or failed with `gave_up_error` after its attempts. When its lease
  expired (rather than its process being known gone) it may start again only after `requeue_delay`: the run
  that held it, should it still be alive (a clock jump, a stalled VM), polls its job at least that often and
  stops before the next attempt starts.
- Wake-ups: `WakeUps` is how `wait_for_work` hears that a job may have become runnable, without losing a
  wake-up that lands between a claim and the wait that follows it.

A module of its own beside the adapter packages (not in the domain: it holds asyncio machinery and the
stored form of results; not in services: adapters may not depend on them).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
from collections.abc import Sequence

from agentd.domain.errors import IdempotencyConflict, ProjectBusy
from agentd.domain.models import AgentRequest, AgentResult

MAX_BACKOFF_S = 600.0
CANCELLED = AgentResult(status="cancelled", error="cancelled before it started")
CANCELLED_JSON = CANCELLED.model_dump_json()


def request_hash(request: AgentRequest) -> str:
    return hashlib.sha256(request.model_dump_json(exclude={"request_id"}).encode()).hexdigest()


def idempotency_conflict(key: str, project_id: str, existing_job_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"Idempotency-Key {key!r} was already used in project {project_id!r} with a different request "
        f"(job {existing_job_id})",
        job_id=existing_job_id,
    )


def project_busy(project_id: str) -> ProjectBusy:
    return ProjectBusy(f"project {project_id!r} already has a queued or running job (busy=reject)")


def distinct_ids(results: Sequence[tuple[str, AgentResult]]) -> list[str]:
    """The job ids of a `finish_many` call; ValueError when one appears twice."""
    ids = [job_id for job_id, _ in results]
    if len(set(ids)) != len(ids):
        raise ValueError("finish_many: each job may appear once")
    return ids


def wants_retry(result: AgentResult) -> bool:
    """Whether the result asks for another attempt (whether one is left is the job's business)."""
    return result.retryable and result.status == "failed"


def retries(result: AgentResult, *, attempts: int, max_attempts: int, cancel_requested: bool) -> bool:
    """Whether a job that ended with `result` goes back to the queue instead of ending."""
    return wants_retry(result) and not cancel_requested and attempts < max_attempts


def backoff_s(attempts: int, retry_base_s: float) -> float:
    """The wait before the next attempt: base, 2 * base, 4 * base… after attempt 1, 2, 3…, capped."""
    return min(retry_base_s * 2.0 ** (max(attempts, 1) - 1), MAX_BACKOFF_S)


def requeue_delay(lease_s: float, explicit: float | None = None) -> float:
    """How long a job re-queued after its lease expired waits before its next attempt (default: a fifth of
    the lease; the runner polls its jobs at least every eighth of it)."""
    return explicit if explicit is not None else lease_s / 5


def lost_reason(all_running: bool) -> str:
    return "its worker is gone" if all_running else "lease expired"


def lost_error(reason: str) -> str:
    return f"worker lost ({reason})"


def gave_up_error(reason: str, attempts: int) -> str:
    return f"worker lost ({reason}) {attempts} times; giving up"


# The wake-up generation a task saw when its last claim started: a wake-up that arrives between an empty
# claim and the following wait_for_work() then still ends that wait (the runner creates the waiting task
# after the claim, so the task inherits this context).
_seen: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "agentd_queue_seen_generation", default=None
)


class WakeUps:
    """One per queue instance: `notify` when a job may have become runnable, `wait` in `wait_for_work`."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    def claiming(self) -> None:
        """Call when a claim starts looking: remembers, for this task, which wake-ups it has seen."""
        _seen.set((id(self), self.generation))

    async def wait(self, timeout: float) -> None:
        """Return at the next wake-up (at once when one came since this task's last claim started looking),
        or after `timeout` seconds."""
        seen = _seen.get()
        if seen is not None and seen[0] == id(self) and seen[1] != self.generation:
            _seen.set((id(self), self.generation))
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return
