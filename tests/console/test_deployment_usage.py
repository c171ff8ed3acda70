"""The console's deployments page in a real headless Chromium, against a live server with
the stand-in engine: a tenant sees, on a shared replica of a platform model, its own
fine-tuned model with its state, requests and energy, and nothing of other
organisations' use of the replica; its shared deployment shows its last day's usage."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests.conftest import Platform, usage_records, wait_until
from tests.console.test_browser import CHROMIUM, FLAGS
from tests.gateway.test_shared_replicas import answered, base_replica, holds, shared_model
from tests.server.test_shared_usage import measure

pytestmark = [pytest.mark.slow]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM, "no Chromium: `apt-get install chromium` (`make test` does, as root)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


class TestDeploymentUsage:
    async def test_a_tenant_sees_its_adapters_usage_and_nothing_of_others(
        self, platform: Platform, browser: Browser
    ) -> None:
        base = await platform.served_model()
        ana, bo = await shared_model(platform, base), await shared_model(platform, base)
        replica_id = await base_replica(platform, ana.base_deployment_id)
        await holds(platform, replica_id, [ana.model_id, bo.model_id])
        await wait_until(lambda: answered(ana.sdk, ana.name), timeout_s=10)
        assert await answered(ana.sdk, ana.name)
        await wait_until(lambda: answered(bo.sdk, bo.name), timeout_s=10)
        await usage_records(platform.sessions, 3, replica_id=replica_id)
        await measure(platform, replica_id)

        page = await browser.new_page(viewport={"width": 1360, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        await page.goto(f"{platform.url}/console")
        await page.fill("input[name=key]", str(ana.sdk.api_key))
        await page.click("#sign-in button[type=submit]")
        await expect(page.locator("#whoami")).to_be_visible()
        await page.click("#nav a[data-page=deployments]")

        adapter = page.locator(f"#deployments li[data-adapter='{ana.model_id}']")
        await expect(adapter).to_contain_text("loaded")
        await expect(adapter).to_contain_text(re.compile(r"2 requests, \d+ tokens, [\d.]+ Wh"))
        await expect(page.locator("#deployments li[data-others]")).to_have_count(0)
        await expect(page.locator("#deployments [data-usage]")).to_contain_text(
            "last 24 h: 2 requests"
        )
        text = await page.locator("#view").inner_text()
        assert bo.model_id not in text and bo.name not in text
        assert "other organisations" not in text
        assert not re.findall(r"\b(?:null|undefined|NaN)\b|\[object Object\]", text), text
        assert not problems, problems
