"""Single sign-on in a real browser: Debian's Chromium (driven by Playwright) walks the whole
redirect flow between the console and the real OpenID provider, as a person does.

With SOUVERAIN_CONSOLE_SCREENSHOTS=<dir> the sign-in page and the identity sections are saved
there (`scripts/console-screenshots`). With SOUVERAIN_SSO_ROUNDS=<n> the round trip (from the click on "Continue with your
organisation" to the console showing who is signed in, less the typing of the password) is
timed n times and its median printed; SOUVERAIN_SSO_TIMING=1 leaves out the test's guard that
routes every request through Playwright to keep it on loopback, which costs about a second
(docs/benchmarks.md).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from tests.console.test_browser import CHROMIUM, FLAGS
from tests.identity.conftest import SsoOrg
from tests.identity.oidc_provider import Person

pytestmark = pytest.mark.slow
ROUNDS = int(os.environ.get("SOUVERAIN_SSO_ROUNDS", "3"))
SHOTS = os.environ.get("SOUVERAIN_CONSOLE_SCREENSHOTS")


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        assert CHROMIUM, "no Chromium: `apt-get install chromium` (`make test` does, as root)"
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


async def loopback_only(route: Route) -> None:
    """Nothing leaves the machine: the console and the provider are both on loopback."""
    if route.request.url.startswith("http://127.0.0.1:"):
        await route.continue_()
    else:
        await route.abort()


async def walk(page: Page, console_url: str, org: str, person: Person) -> tuple[float, float]:
    """(seconds the redirect flow took, seconds until the console showed the person); the
    typing of the password in between is not counted."""
    await page.goto(f"{console_url}/console#/keys")
    await page.fill("#sso input[name=org]", org)
    await shot(page, "sign-in")
    started = time.perf_counter()
    await page.click("#sso button[type=submit]")
    await page.wait_for_selector("input[name=username]")
    at_provider = time.perf_counter()
    await page.fill("input[name=username]", person.username)
    await page.fill("input[name=password]", person.password)
    typed = time.perf_counter()
    await page.click("#idp-submit")
    await page.wait_for_url(re.compile(r"/console#/keys$"))
    back = time.perf_counter()
    await expect(page.locator("#whoami")).to_contain_text(person.username)
    shown = time.perf_counter()
    return (at_provider - started) + (back - typed), (at_provider - started) + (shown - typed)


class TestBrowserSignIn:
    async def test_a_person_signs_in_through_their_provider_and_lands_where_they_were(
        self, browser: Browser, sso_org: SsoOrg
    ) -> None:
        problems: list[str] = []
        timings = []
        for _ in range(ROUNDS):
            person = sso_org.person(["eng", "leads"])
            context = await browser.new_context()
            if not os.environ.get("SOUVERAIN_SSO_TIMING"):
                await context.route("**/*", loopback_only)
            page = await context.new_page()
            page.on("pageerror", lambda e: problems.append(str(e)))
            timings.append(await walk(page, sso_org.platform.url, sso_org.name, person))
            await expect(page.locator("#whoami")).to_contain_text(f"admin · {sso_org.name}")
            assert page.url.endswith("/console#/keys")
            await expect(page.locator("#service-account-list")).to_have_count(1)
            await expect(page.locator("#identity-providers")).to_contain_text(sso_org.idp.issuer)
            await expect(page.locator("#group-mapping .mapping-line")).to_have_count(2)
            await shot(page, "keys-identity")
            cookies = await context.cookies()
            session = next(c for c in cookies if c["name"] == "souverain_session")
            assert session["httpOnly"] and session["sameSite"] == "Strict"
            await context.close()
        assert not problems, problems
        flow = statistics.median(t[0] for t in timings)
        shown = statistics.median(t[1] for t in timings)
        print(
            f"\nsign-in round trip (Chromium, local provider) over {len(timings)}: p50 "
            f"{flow:.3f} s to the console's URL, {shown:.3f} s until it shows who signed in"
        )

    async def test_a_person_without_a_role_is_told_why_and_not_signed_in(
        self, browser: Browser, sso_org: SsoOrg
    ) -> None:
        person = sso_org.person(["marketing"])
        context = await browser.new_context()
        await context.route("**/*", loopback_only)
        page = await context.new_page()
        await page.goto(f"{sso_org.platform.url}/console")
        await page.fill("#sso input[name=org]", sso_org.name)
        await page.click("#sso button[type=submit]")
        await page.fill("input[name=username]", person.username)
        await page.fill("input[name=password]", person.password)
        await page.click("#idp-submit")
        await expect(page.locator("#sign-in-status")).to_contain_text("no role")
        assert "sso_error" not in page.url  # the reason is shown, then taken out of the URL
        assert not [c for c in await context.cookies() if c["name"] == "souverain_session"]
        await context.close()

    async def test_what_a_service_account_did_is_marked_in_the_audit_page(
        self, browser: Browser, sso_org: SsoOrg
    ) -> None:
        base = f"/api/orgs/{sso_org.name}/service-accounts"
        async with sso_org.platform.client(sso_org.owner_key) as client:
            assert (
                await client.post(base, json={"name": "builder", "role": "admin"})
            ).status_code == 201
            key = (await client.post(f"{base}/builder/keys", json={})).json()["key"]
        async with sso_org.platform.client(key) as bot:
            made = await bot.post(f"/api/orgs/{sso_org.name}/projects", json={"name": "built"})
        assert made.status_code == 201, made.text
        context = await browser.new_context()
        await context.route("**/*", loopback_only)
        page = await context.new_page()
        await walk(page, sso_org.platform.url, sso_org.name, sso_org.person(["leads"]))
        await page.goto(f"{sso_org.platform.url}/console#/audit")
        await page.fill("#audit-filter input[name=action]", "project.create")
        await page.click("#audit-filter button[type=submit]")
        await expect(page.locator("table")).to_contain_text("service account")
        await context.close()
