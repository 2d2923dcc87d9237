"""The web console in a real browser (Debian's headless Chromium, driven by Playwright) against
the real SmolLM2 GGUF, with every request off the host refused: a new user signs up and chats
(the answer streams in), stops a long generation (its slot is freed), makes an API key that the
``openai`` SDK then uses, revokes it (the SDK is refused); an admin watches the load and disables
the user (who is refused). The Content-Security-Policy holds: no console error, no CSP violation,
nothing fetched from another origin; the page fits a phone-width window."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect

from app.factory import create_app
from tests.integration.support import (
    MODEL_ID,
    SERVER_ADMIN_PASSWORD,
    access_token,
    served,
    server_settings,
)

# Screenshots for the README: set APP_CONSOLE_SCREENSHOTS to a folder to keep them.
SCREENSHOTS = os.environ.get("APP_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def url(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Room for a generation long enough to be stopped halfway; the default per-user limits.
    settings = server_settings(
        tmp_path_factory.mktemp("console"), model_file, APP_CONTEXT_SIZE="2048", APP_PARALLEL="2"
    )
    with served(create_app(settings)) as address:
        yield address


class Watched:
    """A page whose console errors, CSP violations and off-host requests are recorded."""

    def __init__(self, browser: Browser, url: str, *, width: int = 1100) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"])
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.offhost: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", lambda dialog: dialog.accept())
        self.page.route("**/*", self._route(url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(message.text)

    def _route(self, url: str):  # type: ignore[no-untyped-def]
        def handle(route: Route) -> None:
            if route.request.url.startswith(url):
                route.continue_()
            else:
                self.offhost.append(route.request.url)
                route.abort("internetdisconnected")

        return handle

    def check_clean(self) -> None:
        assert self.errors == [], f"console errors (a CSP violation is one): {self.errors}"
        assert self.offhost == [], f"the page asked another origin for {self.offhost}"

    def shot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"console-{name}.png"))


def sign_in(page: Page, username: str, password: str) -> None:
    page.locator("#signin-username").fill(username)
    page.locator("#signin-password").fill(password)
    page.locator("#signin-password").press("Enter")  # the keyboard, as a user would
    expect(page.get_by_role("heading", name="Chat")).to_be_visible()


def slots_busy(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["slots_busy"])


def test_the_page_is_served_with_a_strict_policy(url: str) -> None:
    page = httpx.get(f"{url}/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in policy
    assert "unsafe-inline" not in policy
    # No inline script, handler or style: every script is a file of this origin.
    scripts = re.findall(r"<script\b[^>]*>", page.text)
    assert scripts
    assert all(re.search(r'\bsrc="/console/static/[^"]+\.js"', tag) for tag in scripts), scripts
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page.text)
    assert not re.search(r"\son[a-z]+\s*=", page.text), "an inline event handler"
    assert not re.search(r"\sstyle\s*=", page.text), "an inline style"
    assert page.headers["x-content-type-options"] == "nosniff"
    module = httpx.get(f"{url}/console/static/console.js")
    assert module.headers["content-type"].startswith("text/javascript")
    # The page exists only with its headers: no second copy among the static files.
    assert httpx.get(f"{url}/console/static/index.html").status_code == 404


def test_model_output_is_markdown_with_its_html_shown_as_text(url: str, browser: Browser) -> None:
    watched = Watched(browser, url)
    watched.page.goto(url)
    html = watched.page.evaluate(
        """async () => (await import('/console/static/markdown.js')).renderMarkdown(
            "<img src=x onerror=alert(1)> **bold** <a href='javascript:alert(1)'>x</a>\\n\\n"
            + "```python\\nprint('<script>')\\n```\\n\\n[site](https://example.com/?q=1) "
            + "[bad](javascript:alert(1))")"""
    )
    assert "<strong>bold</strong>" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img" not in html
    assert "&lt;a href='javascript:alert(1)'&gt;" in html  # raw HTML in the text: shown, not made
    assert '<pre><code class="language-python">' in html
    # Markdown links: http(s) only, opened in a new tab without a referrer.
    assert 'href="https://example.com/?q=1"' in html
    assert 'rel="noopener noreferrer"' in html
    assert 'target="_blank"' in html
    assert "javascript:" not in html.split("</code></pre>")[1]
    assert "print(&#39;&lt;script&gt;&#39;)" in html or "print('&lt;script&gt;')" in html
    watched.check_clean()
    watched.context.close()


def test_a_user_chats_stops_makes_and_revokes_a_key(url: str, browser: Browser) -> None:
    watched = Watched(browser, url)
    page = watched.page
    page.goto(url)
    watched.shot("signin")
    page.locator("#signin-username").fill("carol")
    page.locator("#signin-password").fill("carol-password-1")
    page.get_by_role("button", name="Create an account").click()
    expect(page.get_by_role("heading", name="Chat")).to_be_visible()
    expect(page.get_by_label("Model")).to_have_value(MODEL_ID)

    # A turn: the answer streams in (text shows while Stop is still enabled), then its stats.
    page.get_by_label("Max tokens").fill("64")
    page.get_by_label("Message").fill("Write a short poem about the sea, with **bold** words.")
    page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator("#transcript li.assistant").last
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#transcript li.assistant .content')]"
        ".pop(); return a && a.textContent.length > 0 && !document.querySelector('#chat-stop')"
        ".disabled; }",
        timeout=60_000,
    )
    expect(answer.locator(".stats")).to_have_attribute("data-done", "true", timeout=120_000)
    assert answer.locator(".content").inner_text().strip()
    stats = answer.locator(".stats").inner_text()
    assert "first token" in stats, stats
    assert "tokens/s" in stats, stats

    # The conversation goes on: the second turn is sent with the first.
    page.get_by_label("Message").fill("Now say it in one line.")
    page.get_by_label("Message").press("Enter")
    expect(page.locator("#transcript li.assistant")).to_have_count(2)
    expect(page.locator("#transcript li.assistant").last.locator(".stats")).to_have_attribute(
        "data-done", "true", timeout=120_000
    )
    watched.shot("chat")

    # Stop a long generation: the button ends it and the server frees the slot. A new
    # conversation, so that the answer does not depend on the sampled turns above: greedy, from
    # this prompt alone, the model writes numbers until max tokens.
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#transcript li.assistant")).to_have_count(0)
    page.get_by_label("Max tokens").fill("1500")
    page.get_by_label("Temperature").fill("0")  # greedy, this prompt runs to max tokens
    page.get_by_label("Message").fill("Write the numbers from 1 to 500 separated by commas.")
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#transcript li.assistant .content')].pop()"
        ".textContent.length > 20",
        timeout=60_000,
    )
    assert slots_busy(url) >= 1
    page.get_by_role("button", name="Stop", exact=True).click()
    stopped = page.locator("#transcript li.assistant").last.locator(".stats")
    expect(stopped).to_have_attribute("data-done", "true")
    assert "stopped" in stopped.inner_text()
    deadline = time.monotonic() + 30
    while slots_busy(url) and time.monotonic() < deadline:  # a hang guard, not a timing claim
        time.sleep(0.1)
    assert slots_busy(url) == 0, "the stopped generation still holds its slot"

    # A key, shown once, used by the openai SDK; revoked, then refused.
    page.get_by_role("button", name="Account", exact=True).click()
    page.locator("#key-name").fill("sdk")
    page.get_by_role("button", name="Create key").click()
    key_box = page.get_by_label("New API key")
    expect(key_box).not_to_have_value("")
    key = key_box.input_value()
    page.get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("navigator.clipboard.readText()") == key
    expect(page.locator("#keys-table tbody tr")).to_have_count(1)
    expect(page.locator("#usage-chart rect")).to_have_count(30)
    assert "tokens per day" in page.locator("#usage-limits").inner_text()
    watched.shot("account")
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    assert next(model.id for model in sdk.models.list()) == MODEL_ID
    page.get_by_role("button", name="Revoke sdk").click()
    expect(page.locator("#keys-table tbody tr")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()

    # Signing out leaves nothing of the session on the page for the next person.
    page.locator("#key-name").fill("another")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_label("New API key")).not_to_have_value("")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.locator("#new-key-value").input_value() == ""
    assert page.locator("#new-key").is_hidden()
    assert page.locator("#transcript li").count() == 0
    assert page.locator("#keys-table tbody tr").count() == 0

    watched.check_clean()
    watched.context.close()


def test_an_admin_watches_the_load_and_disables_a_user(url: str, browser: Browser) -> None:
    made = httpx.post(f"{url}/register", json={"username": "dave", "password": "dave-password-1"})
    assert made.status_code == 201, made.text
    dave = access_token(url, "dave", "dave-password-1")
    assert httpx.get(f"{url}/users/me", headers={"Authorization": f"Bearer {dave}"}).is_success

    watched = Watched(browser, url)
    page = watched.page
    page.goto(url)
    sign_in(page, "admin", SERVER_ADMIN_PASSWORD)
    page.get_by_role("button", name="Admin", exact=True).click()
    expect(page.locator("[data-live='Slots busy']")).to_contain_text("of 2")
    expect(page.locator("[data-live='Tokens/s']")).not_to_have_text("…", timeout=10_000)
    row = page.locator("#users-table tbody tr[data-user='dave']")
    expect(row).to_contain_text("enabled")
    page.get_by_label("Tokens per day for dave").fill("5000")
    page.get_by_role("button", name="Save limits of dave").click()
    expect(page.get_by_role("alert")).to_contain_text("Saved dave's limits")
    watched.shot("admin")
    page.get_by_role("button", name="Disable dave").click()
    expect(row).to_contain_text("disabled")
    refused = httpx.get(f"{url}/users/me", headers={"Authorization": f"Bearer {dave}"})
    assert refused.status_code == 401
    admin = access_token(url, "admin", SERVER_ADMIN_PASSWORD)
    shown = httpx.get(f"{url}/admin/users/dave", headers={"Authorization": f"Bearer {admin}"})
    assert shown.json()["tokens_per_day"] == 5000
    watched.check_clean()
    watched.context.close()


def test_the_console_fits_a_phone_and_400_percent_zoom(url: str, browser: Browser) -> None:
    # 400% zoom of a 1280-pixel window is a 320-CSS-pixel viewport (WCAG 1.4.10 reflow).
    watched = Watched(browser, url, width=320)
    page = watched.page
    page.goto(url)
    sign_in(page, "admin", SERVER_ADMIN_PASSWORD)
    for view in ("Chat", "Account", "Admin"):
        page.get_by_role("button", name=view, exact=True).click()
        page.wait_for_timeout(300)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{view} scrolls sideways by {overflow}px at 320px"
    watched.shot("phone")
    watched.check_clean()
    watched.context.close()
