"""Managed OpenCode servers, one per project (each jailed to its project), in a bounded pool.

A project's server is started on its first run and kept for the next ones; a server without a run for
`idle_stop_s` is stopped, and when `max_servers` are running the least recently used idle one makes room.
A server is started with its project's secrets; when they change, the idle server is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeUnavailable
from agentd.adapters.opencode.server import ManagedServer

log = structlog.get_logger(__name__)
ServerFactory = Callable[[str, Mapping[str, str]], ManagedServer]


@dataclass
class Slot:
    project_id: str
    server: ManagedServer
    fingerprint: str
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def client(self) -> OpenCodeClient:
        return self.server.client


def fingerprint(env: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()


class ServerPool:
    def __init__(self, factory: ServerFactory, *, max_servers: int, idle_stop_s: float) -> None:
        self.factory = factory
        self.max_servers = max(1, max_servers)
        self.idle_stop_s = idle_stop_s
        self.slots: dict[str, Slot] = {}
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def get(self, project_id: str) -> Slot | None:
        return self.slots.get(project_id)

    async def acquire(self, project_id: str, env: Mapping[str, str]) -> Slot:
        """The project's running server, started if needed; release() it when the run ends."""
        fp = fingerprint(env)
        async with self._lock:
            if self._closed:
                raise OpenCodeUnavailable("the OpenCode adapter is closed")
            self._start_reaper()
            slot = self.slots.get(project_id)
            if slot is not None and slot.fingerprint != fp and slot.active == 0:
                log.info(
                    "opencode.pool.replace", project_id=project_id, reason="the project's secrets changed"
                )
                await self._stop(slot)
                slot = None
            if slot is None:
                if len(self.slots) >= self.max_servers:
                    await self._make_room()
                slot = Slot(project_id, self.factory(project_id, env), fp)
                self.slots[project_id] = slot
            slot.active += 1
            slot.last_used = time.monotonic()
        try:
            await asyncio.shield(slot.server.ensure_started())  # a cancelled run does not kill a start
        except BaseException:
            self.release(slot)
            raise
        return slot

    def release(self, slot: Slot) -> None:
        slot.active = max(0, slot.active - 1)
        slot.last_used = time.monotonic()

    async def _make_room(self) -> None:
        idle = [s for s in self.slots.values() if s.active == 0]
        if not idle:
            raise OpenCodeUnavailable(
                f"all {self.max_servers} managed OpenCode servers are busy with other projects' runs; "
                "raise AGENTD_OPENCODE_MAX_SERVERS or try again later"
            )
        oldest = min(idle, key=lambda s: s.last_used)
        log.info("opencode.pool.evict", project_id=oldest.project_id, servers=len(self.slots))
        await self._stop(oldest)

    async def _stop(self, slot: Slot) -> None:
        if self.slots.get(slot.project_id) is slot:
            del self.slots[slot.project_id]
        await slot.server.stop()
        await slot.client.close()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        while not self._closed:
            await asyncio.sleep(max(0.05, min(30.0, self.idle_stop_s / 4)))
            await self.stop_idle()

    async def stop_idle(self) -> int:
        """Stop servers without a run for `idle_stop_s`. Returns how many."""
        now = time.monotonic()
        async with self._lock:
            idle = [s for s in self.slots.values() if s.active == 0 and now - s.last_used >= self.idle_stop_s]
            for slot in idle:
                log.info("opencode.pool.idle_stop", project_id=slot.project_id)
                await self._stop(slot)
        return len(idle)

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._lock:
            for slot in list(self.slots.values()):
                await self._stop(slot)
