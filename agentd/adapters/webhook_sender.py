"""The WebhookSender port over aiohttp: one POST, its status code, no redirects followed."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from agentd.ports.webhook_outbox import WebhookSender

MAX_ANSWER = 64 * 1024


class AiohttpWebhookSender(WebhookSender):
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url,
                data=body,
                headers=dict(headers),
                allow_redirects=False,  # a 3xx is the receiver's answer; we do not resend the body
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as r:
                await r.content.read(MAX_ANSWER)
                return r.status
        except aiohttp.ClientError as e:
            raise ConnectionError(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
