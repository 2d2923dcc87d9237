"""/docs in a real browser (Debian's headless Chromium) with every request off the host refused:
the page renders, lists the endpoints, and its Authorize dialog logs in."""

from __future__ import annotations

from playwright.sync_api import Browser, Route

from tests.integration.support import MODEL_ID, SERVER_ADMIN_PASSWORD, RunningServer


def test_docs_render_offline_and_authorize_with_a_password(
    server: RunningServer, browser: Browser
) -> None:
    page = browser.new_page()
    refused: list[str] = []

    def offline(route: Route) -> None:  # the network is off: only the service answers
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", offline)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/chat/completions" in paths
    assert "/v1/models" in paths
    assert "/health" in paths

    # Authorize with the OAuth2 password flow, as a user would.
    page.click("button.authorize")
    page.fill("#oauth_username", "admin")
    page.fill("#oauth_password", SERVER_ADMIN_PASSWORD)
    page.click(".auth-btn-wrapper .authorize")
    page.locator(".auth-container button", has_text="Logout").wait_for(timeout=30_000)
    page.locator(".auth-container button", has_text="Close").click()

    # Try an authenticated call from the page: GET /v1/models.
    block = page.locator(".opblock").filter(
        has=page.locator(".opblock-summary-path", has_text="/v1/models").filter(has_not_text="{")
    )
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    status = block.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip().startswith("200")
    assert MODEL_ID in block.locator(".live-responses-table").inner_text()
    assert refused == [], f"the page asked the internet for {refused}"

    redoc = browser.new_page()
    redoc.route("**/*", offline)
    redoc.goto(f"{server.url}/redoc")
    redoc.get_by_text("/v1/chat/completions").first.wait_for(timeout=30_000)
    assert refused == [], f"ReDoc asked the internet for {refused}"
