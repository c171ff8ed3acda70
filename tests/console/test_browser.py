"""The console in a real headless Chromium, against a live server with a real llama.cpp
engine serving SmolLM2: what a person signing in sees and can do.

Debian's `chromium` is driven by Playwright (`executable_path`, nothing downloaded); the
README's test command installs it. With SOUVERAIN_CONSOLE_SCREENSHOTS=<dir> set, each page
is also saved as a PNG there (`scripts/console-screenshots` writes docs/console/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from souverain.core.signing import load_public_key, verify
from souverain.db.tables import utcnow
from tests.conftest import wait_until
from tests.llamacpp_target import LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CHROMIUM = os.environ.get("SOUVERAIN_CHROMIUM") or shutil.which("chromium")
FLAGS = [  # no sandbox as root; nothing that phones home from a closed network
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = os.environ.get("SOUVERAIN_CONSOLE_SCREENSHOTS")
ANSWERED_4XX = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")
SECRET = re.compile(r"sk-souv-[0-9a-f]{16}_[A-Za-z0-9_-]{20,}")


@dataclass
class Console:
    target: LlamaTarget
    browser: Browser
    keys: dict[str, str]
    problems: list[str] = field(
        default_factory=list
    )  # console errors, CSP violations, failed loads

    async def signed_in(self, role: str) -> tuple[BrowserContext, Page]:
        context = await self.browser.new_context(
            accept_downloads=True, viewport={"width": 1360, "height": 900}
        )
        page = await context.new_page()
        page.on("console", lambda m: self._console(role, m.type, m.text))
        page.on("pageerror", lambda e: self.problems.append(f"{role}: {e}"))
        page.on("requestfailed", lambda r: self._failed(role, r.url, r.failure))
        await page.goto(f"{self.target.url}/console")
        await page.fill("input[name=key]", self.keys[role])
        await page.click("#sign-in button[type=submit]")
        await expect(page.locator("#whoami")).to_contain_text(role)
        return context, page

    def _console(self, role: str, kind: str, text: str) -> None:
        # A 4xx answer the page asked for (signed out, a viewer's refused change) is logged by
        # Chromium as an error too; a CSP violation or a script error is not one of those.
        if kind == "error" and not ANSWERED_4XX.search(text):
            self.problems.append(f"{role}: {text}")

    def _failed(self, role: str, url: str, failure: str | None) -> None:
        if failure != "net::ERR_ABORTED":  # a page left while its refresh was in flight
            self.problems.append(f"{role}: {url} {failure}")

    async def api(self, path: str, key: str | None = None) -> Any:
        async with self.target.client(key) as client:
            response = await client.get(path)
            assert response.status_code == 200, response.text
            return response.json()


async def shot(page: Page, name: str) -> None:
    """Look at the page as a person would: no placeholder of a missing value leaked into its
    text (quoted API data in <code> aside); then save it, when screenshots are asked for."""
    text = await page.evaluate(
        """() => { const view = document.getElementById('view').cloneNode(true);
             view.querySelectorAll('code').forEach((c) => c.remove()); return view.innerText; }"""
    )
    leaked = re.findall(r"\b(?:null|undefined|NaN)\b|\[object Object\]", text)
    assert not leaked, (name, leaked, text[:500])
    if SHOTS:
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
async def console(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    async with llamacpp_target(tmp_path_factory.mktemp("console")) as target:
        factory = target.factory
        await factory.datacenter("fra-de", country="DE", carbon=380.0)
        keys = {"owner": target.key, "operator": (await factory.operator()).key}
        keys["viewer"] = await _viewer_key(target)
        async with async_playwright() as playwright:
            assert CHROMIUM, "no Chromium: `apt-get install chromium` (`make test` does, as root)"
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            yield Console(target, browser, keys)
            await browser.close()


async def _viewer_key(target: LlamaTarget) -> str:
    """A viewer of the tenant's organisation, added and keyed by its owner through /api."""
    async with target.client() as client:
        added = await client.post(
            f"/api/orgs/{target.tenant.org_name}/members", json={"user": "vera", "role": "viewer"}
        )
        assert added.status_code == 201, added.text
        key = await client.post(
            "/api/keys", json={"name": "vera", "user": "vera", "role": "viewer"}
        )
        assert key.status_code == 201, key.text
        return str(key.json()["key"])


class TestConsole:
    async def test_sign_in_shows_the_overview_and_the_key_is_not_kept(
        self, console: Console
    ) -> None:
        context, page = await console.signed_in("owner")
        await expect(page.locator("#datacenter-map [data-datacenter=llama-dc]")).to_contain_text(
            "gCO2e/kWh now"
        )
        await expect(page.locator("#datacenter-map [data-country=DE]")).to_contain_text("fra-de")
        await expect(page.locator("#nav a")).to_have_text(
            [
                "Overview",
                "Deployments",
                "Models",
                "Usage & billing",
                "Jobs",
                "Audit",
                "Keys & members",
                "Playground",
            ]
        )
        cookies = await context.cookies()
        assert [c["name"] for c in cookies] == ["souverain_session"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        stored = await page.evaluate(
            "() => JSON.stringify([document.cookie, {...localStorage}, {...sessionStorage}])"
        )
        assert console.keys["owner"] not in stored and "souverain_session" not in stored
        await shot(page, "overview")
        for name in ("deployments", "models"):
            await page.click(f"#nav a[data-page={name}]")
            await expect(page.locator(f"#page-{name} table")).to_be_visible()
            await shot(page, name)
        await page.click(f"#models a:text('{console.target.model}')")
        await expect(page.locator("#model-card")).to_contain_text("general description")
        await shot(page, "model-card")
        await context.close()

    async def test_an_admin_creates_scales_and_deletes_a_deployment(self, console: Console) -> None:
        context, page = await console.signed_in("owner")
        page.on("dialog", lambda dialog: dialog.accept())
        await page.click("#nav a[data-page=deployments]")
        await page.fill("#create-deployment input[name=name]", "from-the-console")
        await page.fill("#create-deployment input[name=replicas]", "0")
        await page.click("#create-deployment button[type=submit]")
        row = page.locator("#deployments tr", has_text="from-the-console")
        await expect(row).to_contain_text("0 / 0")
        assert await page.locator("#deployments tr", has_text="dep-").locator("button").count() == 0
        await row.locator("input[type=number]").fill("2")
        await row.locator("button", has_text="Scale").click()
        await expect(row).to_contain_text("0 / 2")
        found = await console.api("/api/deployments/from-the-console")
        assert found["replicas"] == 2
        await row.locator("button", has_text="Delete").click()
        await expect(row).to_have_count(0)
        await context.close()

    async def test_a_new_key_is_shown_once_and_works(self, console: Console) -> None:
        context, page = await console.signed_in("owner")
        await page.click("#nav a[data-page=keys]")
        await page.fill("input[name=key-name]", "from-the-console")
        await page.select_option("select[name=key-role]", "viewer")
        await page.click("#create-key button[type=submit]")
        secret = await page.locator("#new-key-secret").inner_text()
        assert SECRET.fullmatch(secret), secret
        me = await console.api("/api/me", key=secret)
        assert me["role"] == "viewer"
        await expect(page.locator("#keys")).to_contain_text("from-the-console")
        await shot(page, "keys")
        await page.reload()
        await expect(page.locator("#keys")).to_contain_text("from-the-console")
        assert secret not in await page.content()
        await context.close()

    async def test_a_projects_priority_is_set_on_the_keys_page(self, console: Console) -> None:
        context, page = await console.signed_in("owner")
        await page.click("#nav a[data-page=keys]")
        await page.fill("input[name=key-name]", "etl")
        await page.click("#create-key button[type=submit]")
        secret = await page.locator("#new-key-secret").inner_text()
        await page.select_option("#projects select[name=priority-default]", "batch")
        await expect(page.locator("main")).to_contain_text("Project default is now batch.")
        try:  # a key of the whole organisation follows the default project
            await wait_until(lambda: _priority_is(console, secret, "batch"), timeout_s=15)
            await page.reload()  # the keys list shows the priority in effect, and the own
            await expect(page.locator("#keys")).to_contain_text("batch (set interactive)")
        finally:
            await page.select_option("#projects select[name=priority-default]", "interactive")
            await expect(page.locator("main")).to_contain_text("is now interactive")
            await context.close()

    async def test_the_playground_streams_a_real_answer_with_where_and_what_it_cost(
        self, console: Console
    ) -> None:
        context, page = await console.signed_in("owner")
        await page.click("#nav a[data-page=playground]")
        await expect(page.locator("#answer-output")).to_be_attached()
        await page.evaluate(
            """() => { window.appends = 0; new MutationObserver((m) => { window.appends += m.length; })
                 .observe(document.getElementById('answer-output'), {childList: true}); }"""
        )
        await page.fill("textarea[name=prompt]", "Name three colours.")
        await page.fill("input[name=temperature]", "0")
        await page.fill("input[name=max_tokens]", "40")
        await page.click("#send")
        await expect(page.locator("[data-fact=tokens]")).to_contain_text(
            "completion tokens", timeout=60_000
        )
        answer = await page.locator("#answer-output").inner_text()
        assert len(answer.strip()) > 5
        assert await page.evaluate("() => window.appends") >= 3  # arrived in pieces, as streamed
        await expect(page.locator("[data-fact=datacenter]")).to_have_text("answered in llama-dc")
        await expect(page.locator("[data-fact=energy]")).to_contain_text("gCO2e", timeout=20_000)
        energy = await page.locator("[data-fact=energy]").inner_text()
        record = (await console.api("/api/usage?limit=1"))["records"][0]
        joules = f"{record['energy_j'] or record['energy_estimate_j']:,.2f} J"
        assert joules in energy, (joules, energy)
        await shot(page, "playground")
        await context.close()

    async def test_usage_pages_show_exactly_what_the_api_answers(self, console: Console) -> None:
        await _a_batch(console)
        context, page = await console.signed_in("owner")
        await page.click("#nav a[data-page=usage]")
        await expect(page.locator("#usage-chart rect")).not_to_have_count(0)
        month = utcnow().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        report = await console.api(
            f"/api/usage?group_by=day&limit=0&from={month.isoformat().replace('+00:00', 'Z')}"
        )
        expected = {
            key: sum(group[key] for group in report["groups"])
            for key in (
                "requests",
                "prompt_tokens",
                "completion_tokens",
                "cost",
                "energy_j",
                "co2e_g",
            )
        }
        assert expected["requests"] >= 1
        for key, value in expected.items():
            shown = float(
                await page.locator(f"#usage-totals [data-stat={key}]").get_attribute("data-value")
                or "nan"
            )
            assert shown == pytest.approx(value), key
        by_model = page.locator("#usage-by-model td[data-col=requests]")
        assert [int(t.replace(",", "")) for t in await by_model.all_inner_texts()] == [
            g["requests"]
            for g in (
                await console.api(
                    f"/api/usage?group_by=model&limit=0&from={month.isoformat().replace('+00:00', 'Z')}"
                )
            )["groups"]
        ]
        await shot(page, "usage")
        await page.click("#nav a[data-page=jobs]")
        await expect(page.locator("#batches")).to_contain_text("/v1/chat/completions")
        await shot(page, "jobs")
        await context.close()

    async def test_the_operator_verifies_the_audit_chain(self, console: Console) -> None:
        context, page = await console.signed_in("operator")
        await page.click("#nav a[data-page=audit]")
        await expect(page.locator("#audit-table")).to_contain_text("console.signin")
        await page.click("#verify-chain")
        await expect(page.locator("#chain-result")).to_contain_text("Intact", timeout=30_000)
        await page.fill("input[name=action]", "key.create")
        await page.click("#audit-filter button[type=submit]")
        await expect(
            page.locator("#audit-events[data-query*='action=key.create']")
        ).to_be_attached()
        actions = await page.locator("#audit-table td[data-col=action]").all_inner_texts()
        assert set(actions) == {"key.create"}
        await shot(page, "audit")
        await context.close()

    async def test_a_residency_report_downloads_and_verifies_in_the_browser(
        self, console: Console, tmp_path: Path
    ) -> None:
        context, page = await console.signed_in("owner")
        await page.click("#nav a[data-page=audit]")
        await page.click("#residency-form button[type=submit]")
        await expect(page.locator("#report-result")).to_contain_text("requests in the period")
        async with page.expect_download() as waiting:
            await page.click("#download-report")
        saved = tmp_path / "report.json"
        await (await waiting.value).save_as(saved)
        signed = json.loads(saved.read_text())
        public = (await console.api("/api/signing-key"))["public_key_pem"]
        assert verify(signed, load_public_key(public))  # what `souverain reports verify` checks
        await page.set_input_files("#report-file", str(saved))
        await expect(page.locator("#verify-result")).to_contain_text(
            "Valid: The signature is valid"
        )
        tampered = tmp_path / "tampered.json"
        signed["document"]["records"]["count"] += 1
        tampered.write_text(json.dumps(signed, indent=2))
        await page.set_input_files("#report-file", str(tampered))
        await expect(page.locator("#verify-result")).to_contain_text(
            "Invalid: The signature does not match"
        )
        await shot(page, "residency")
        await context.close()

    async def test_a_viewer_neither_sees_nor_does_admin_actions(self, console: Console) -> None:
        context, page = await console.signed_in("viewer")
        await expect(page.locator("#nav a")).to_have_text(
            ["Overview", "Deployments", "Models", "Usage & billing", "Keys & members"]
        )
        await page.click("#nav a[data-page=deployments]")
        await expect(page.locator("#deployments")).to_be_visible()
        assert await page.locator("#create-deployment").count() == 0
        assert await page.locator("#deployments button").count() == 0
        await page.click("#nav a[data-page=keys]")
        await expect(page.locator("#members")).to_be_visible()
        assert await page.locator("#add-member").count() == 0
        await page.goto(f"{console.target.url}/console#/audit")
        await expect(page.locator("#page-overview")).to_be_visible()  # not rendered at all
        attempt = await page.evaluate(
            """async () => { const s = await (await fetch('/console/session')).json();
                 const r = await fetch('/api/deployments', {method: 'POST', headers: {'Content-Type': 'application/json', [s.csrf_header]: s.csrf_token},
                   body: JSON.stringify({name: 'sneaky', model: 'x', replicas: 1})});
                 return [r.status, (await r.json()).error.code]; }"""
        )
        assert attempt == [403, "permission_denied"]
        await shot(page, "viewer")
        await context.close()

    async def test_sign_out_ends_the_session(self, console: Console) -> None:
        context, page = await console.signed_in("owner")
        cookie = (await context.cookies())[0]
        await page.click("#sign-out")
        await expect(page.locator("#sign-in")).to_be_visible()
        assert await context.cookies() == []
        await context.add_cookies([cookie])  # a copy taken before sign-out
        status = await page.evaluate("async () => (await fetch('/api/me')).status")
        assert status == 401
        await context.close()

    async def test_no_page_broke_the_content_security_policy_or_failed_to_load(
        self, console: Console
    ) -> None:
        # Runs last in the module: every page visited above, no error logged by any.
        assert console.problems == []


async def _a_batch(console: Console) -> None:
    """Two chat lines answered by the real engine through the batch runner."""
    lines = "".join(
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": console.target.model, "max_tokens": 8, "temperature": 0,
                             "messages": [{"role": "user", "content": f"Count to {i + 2}."}]}}) + "\n"
        for i in range(2)
    )  # fmt: skip
    async with console.target.client() as client:
        upload = await client.post(
            "/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", lines)}
        )
        assert upload.status_code == 200, upload.text
        batch = await client.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 200, batch.text

        async def done() -> bool:
            found = (await client.get(f"/v1/batches/{batch.json()['id']}")).json()
            return bool(found["status"] == "completed")

        await wait_until(done, timeout_s=120)


async def _priority_is(console: Console, key: str, priority: str) -> bool:
    return bool((await console.api("/api/me", key=key))["priority"] == priority)
