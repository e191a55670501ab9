"""The Metrics port: what the services and adapters report, in their own terms (no metrics library here).

agentd.observability.PrometheusMetrics implements it; NO_METRICS (a do-nothing implementation) is the
default wherever no metrics were wired, so a service never has to test for None.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol


class Metrics(Protocol):
    @abstractmethod
    def job_submitted(self, provider: str) -> None: ...

    @abstractmethod
    def run_started(self, provider: str, *, since_submit_s: float) -> None:
        """A worker began an attempt (claimed the job and handed it to the agent): one more running."""
        ...

    @abstractmethod
    def run_ended(self, provider: str, status: str, *, run_s: float) -> None:
        """An attempt ended, whatever comes next (final, retried, superseded): one less running. `status`
        is the attempt's own result (succeeded, failed, cancelled, timed_out)."""
        ...

    @abstractmethod
    def first_event(self, provider: str, *, since_submit_s: float) -> None:
        """The agent's first event of a run was published."""
        ...

    @abstractmethod
    def job_finished(self, provider: str, status: str) -> None:
        """A job reached its final status (succeeded, failed, cancelled, timed_out): once per job."""
        ...

    @abstractmethod
    def job_retried(self, provider: str) -> None:
        """A failed or abandoned attempt was put back in the queue for another attempt."""
        ...

    @abstractmethod
    def events_published(self, event_type: str, count: int = 1) -> None: ...

    @abstractmethod
    def stream_opened(self) -> None:
        """An SSE response started (balanced by stream_closed)."""
        ...

    @abstractmethod
    def stream_closed(self) -> None: ...

    @abstractmethod
    def subscriber_added(self) -> None:
        """A subscription to a job's event stream started (balanced by subscriber_removed)."""
        ...

    @abstractmethod
    def subscriber_removed(self) -> None: ...

    @abstractmethod
    def slow_subscriber_disconnected(self) -> None: ...

    @abstractmethod
    def provider_error(self, provider: str, code: str) -> None:
        """The provider (agent CLI or server) failed a run; `code` is the error event's code."""
        ...

    @abstractmethod
    def lease_recovered(self, count: int = 1) -> None:
        """Jobs whose worker lost its lease (crash, partition) were taken back for another attempt."""
        ...

    @abstractmethod
    def run_fenced(self, provider: str) -> None:
        """A run was superseded (its lease went to another worker) and its results were refused."""
        ...

    @abstractmethod
    def webhook_delivery(self, outcome: str) -> None:
        """One webhook delivery attempt: delivered, failed, or gave_up."""
        ...


class _NoMetrics(Metrics):
    def job_submitted(self, provider: str) -> None:
        pass

    def run_started(self, provider: str, *, since_submit_s: float) -> None:
        pass

    def run_ended(self, provider: str, status: str, *, run_s: float) -> None:
        pass

    def first_event(self, provider: str, *, since_submit_s: float) -> None:
        pass

    def job_finished(self, provider: str, status: str) -> None:
        pass

    def job_retried(self, provider: str) -> None:
        pass

    def events_published(self, event_type: str, count: int = 1) -> None:
        pass

    def stream_opened(self) -> None:
        pass

    def stream_closed(self) -> None:
        pass

    def subscriber_added(self) -> None:
        pass

    def subscriber_removed(self) -> None:
        pass

    def slow_subscriber_disconnected(self) -> None:
        pass

    def provider_error(self, provider: str, code: str) -> None:
        pass

    def lease_recovered(self, count: int = 1) -> None:
        pass

    def run_fenced(self, provider: str) -> None:
        pass

    def webhook_delivery(self, outcome: str) -> None:
        pass


NO_METRICS: Metrics = _NoMetrics()
