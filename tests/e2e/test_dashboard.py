"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright), against agentd
running the REAL `claude` CLI on the scripted model server.

Without Chromium or Playwright the tests are skipped and say why (scripts/setup installs both).
Screenshots go to the test's own output folder (tmp_path).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningAgentd, claude_agent
from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("AGENTD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TIMEOUT_MS = 30_000


def _installed(path: str) -> bool:
    return Path(path).is_file()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    if not _installed(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: install it (apt-get install chromium; scripts/setup does)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install -e '.[dev]' (scripts/setup does)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            pg = await context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            yield pg
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


@pytest.fixture
async def srv(agentd_factory: Any, tmp_path: Path, claude_bin: str) -> AsyncIterator[RunningAgentd]:
    async with FakeAnthropic() as model:
        data = tmp_path / "data"
        from agentd.config import Settings

        agent = claude_agent(Settings(data_dir=data), claude_bin, model.base_url)
        yield await agentd_factory([agent], data_dir=data)


async def submit_from_page(page: Any, srv: RunningAgentd, prompt: str) -> None:
    await page.goto(srv.base_url + "/")
    await page.wait_for_selector("#f-provider option[value='claude-code']", state="attached")
    await page.fill("#f-project", "demo")
    await page.select_option("#f-provider", "claude-code")
    await page.fill("#f-prompt", prompt)
    await page.click("#f-submit")
    await page.wait_for_selector("#job:not([hidden])")


async def until(check: Any, what: str, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Poll from here (Playwright's wait_for_function evaluates strings, which the page's CSP forbids)."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


async def answer_text(page: Any) -> str:
    return str(
        await page.eval_on_selector_all("#transcript .text", "els => els.map(e => e.textContent).join('')")
    )


async def _has(page: Any, text: str) -> bool:
    return text in await answer_text(page)


async def _longer(page: Any, n: int) -> bool:
    return len(await answer_text(page)) > n


async def list_follows(page: Any, job_id: str | None) -> None:
    """The job list shows the job cancelled, and the status and project filters keep or drop it."""
    row = f"#jobs li[data-job='{job_id}']"
    await page.wait_for_selector(f"{row}[data-status='cancelled']")
    await page.select_option("#filter-status", "running")
    await page.wait_for_selector(row, state="detached")
    await page.select_option("#filter-status", "cancelled")
    await page.wait_for_selector(row)
    await page.fill("#filter-project", "other")
    await page.wait_for_selector(row, state="detached")
    await page.fill("#filter-project", "demo")
    await page.wait_for_selector(row)


async def test_watch_cancel_and_reload(page: Any, srv: RunningAgentd, tmp_path: Path) -> None:
    await submit_from_page(page, srv, "SCENARIO:slow delay_ms=150 chunks=200")
    # Text appears while the run goes on, and keeps growing.
    await until(lambda: _has(page, "tick 2 "), "text while the run goes on")
    assert await page.text_content("#job-status") == "running"
    first = await answer_text(page)
    await until(lambda: _longer(page, len(first) + 10), "the text grows")
    grown = await answer_text(page)
    assert grown.startswith(first) and len(grown) > len(first)
    assert "tick 199" not in grown  # the model is still writing
    assert await page.is_enabled("#cancel")

    # A reload while it runs: the text shown so far comes back once, and the stream goes on after it.
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events/" in r.url else None)
    await page.reload()
    await until(lambda: _longer(page, len(grown) + 10), "the text grows again after the reload")
    grown = await answer_text(page)
    assert grown.count("tick 0 ") == 1 and grown.count("tick 1 ") == 1
    assert grown == "".join(f"tick {i} " for i in range(grown.count("tick ")))  # no gap, no repeat
    assert len(streams) == 1 and "after=" in streams[0]  # resumed after the last event it had shown
    assert await page.text_content("#job-status") == "running"

    await page.click("#cancel")
    await page.wait_for_selector("#summary-status:text('cancelled')")
    assert await page.text_content("#job-status") == "cancelled"
    assert not await page.is_enabled("#cancel")
    summary = await page.text_content("#summary")
    assert summary is not None and "duration" in summary and "cost" in summary  # a cancel may have no cost
    final = await answer_text(page)
    assert final.startswith(grown) and final.count("tick 0 ") == 1
    blocks = await page.eval_on_selector_all("#transcript .text", "els => els.length")
    await page.screenshot(path=str(tmp_path / "dashboard-cancelled.png"), full_page=True)

    await list_follows(page, await page.text_content("#job-id"))

    # A reload resumes from the last event: the same text, once.
    await page.reload()
    await page.wait_for_selector("#summary-status:text('cancelled')")
    await asyncio.sleep(0.5)  # anything a resumed stream would (wrongly) add comes now
    assert await answer_text(page) == final
    assert await page.eval_on_selector_all("#transcript .text", "els => els.length") == blocks
    assert (await answer_text(page)).count("tick 0 ") == 1
    statuses = await page.eval_on_selector_all(
        "#transcript .status-line", "els => els.map(e => e.textContent)"
    )
    assert sum("● queued" in s for s in statuses) == 1


async def test_tool_call_and_reasoning(page: Any, srv: RunningAgentd, tmp_path: Path) -> None:
    await submit_from_page(page, srv, "SCENARIO:thinking")
    await page.wait_for_selector("#summary-status:text('succeeded')")
    reasoning = page.locator("#transcript details.reasoning")
    assert await reasoning.count() == 1
    assert await reasoning.get_attribute("open") is None  # folded
    assert "Let me think about this." in (await reasoning.text_content() or "")
    assert await answer_text(page) == "Let me think about this.After thinking: 42."

    await submit_from_page(page, srv, "SCENARIO:tool_bash please")
    await page.wait_for_selector("#summary-status:text('succeeded')")
    tool = page.locator("#transcript details.tool")
    assert await tool.count() == 1
    assert "tool Bash" in (await tool.locator("summary").text_content() or "")
    assert fa.TOOL_BASH_INPUT["command"] in (await tool.locator("pre.input").text_content() or "")
    assert await tool.locator("pre.result").text_content() == "(Bash completed with no output)"
    assert await answer_text(page) == fa.TOOL_BASH_INTRO + fa.TOOL_BASH_DONE
    summary = await page.text_content("#summary")
    assert summary is not None and "status succeeded" in summary and "cost $0." in summary
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)


async def test_with_keys_on_the_page_asks_once(page: Any, agentd_factory: Any) -> None:
    from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent

    srv = await agentd_factory([ScriptedCodeAgent("scripted")], api_key="s3cret")
    await page.goto(srv.base_url + "/")
    await page.wait_for_selector("#key-dialog[open]")
    await page.fill("#key-input", "wrong")
    await page.click("#key-form button")
    await page.wait_for_selector("#key-dialog[open]")  # refused: asked again
    await page.fill("#key-input", "s3cret")
    await page.click("#key-form button")
    await page.wait_for_selector("#f-provider option[value='scripted']", state="attached")
    await page.fill("#f-project", "keyed")
    await page.fill("#f-prompt", "hello with a key")
    await page.click("#f-submit")
    await page.wait_for_selector("#job:not([hidden])")
    job_id = await page.text_content("#job-id")
    await page.wait_for_selector(f"#jobs li[data-job='{job_id}']")
    # The key is kept for the tab: a reload does not ask again.
    await page.reload()
    await page.wait_for_selector(f"#jobs li[data-job='{job_id}']")
    assert not await page.is_visible("#key-dialog")
