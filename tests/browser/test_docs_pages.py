"""GraphiQL and the OpenAPI pages work with no network but the service's own: in a real headless chromium,
every request to anything but 127.0.0.1 is aborted and counted, and so is every CSP violation and script
error; GraphiQL runs a query, Redoc and Swagger UI render the REST operations.

The served-HTML check needs no browser; the others skip (saying why) only where no chromium is installed.
``.ci/run`` installs Debian's, so CI runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from app.api.security_headers import DOCS_CSP
from tests.browser.conftest import chromium_binary

pytestmark = pytest.mark.browser

PAGES = ["/graphql", "/schema", "/schema/redoc", "/schema/swagger"]
_SOURCES = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)
_LOCAL = {"127.0.0.1"}


def test_the_pages_reference_no_other_origin_and_every_asset_is_served(dev_server: str) -> None:
    with httpx.Client(base_url=dev_server, headers={"accept": "text/html"}) as client:
        for path in PAGES:
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-security-policy"] == DOCS_CSP, path
            sources = _SOURCES.findall(page.text)
            assert sources, path
            assert not [s for s in sources if s.startswith(("http:", "https:", "//"))], (path, sources)
            assert not re.search(r"https?://", page.text), (path, page.text)
            assert "<script>" not in page.text and "<style" not in page.text, path  # nothing inline
            for source in (s for s in sources if not s.startswith("data:")):
                asset = client.get(source)
                assert asset.status_code == 200, (path, source)
                assert int(asset.headers["content-length"]) > 0, source


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_binary()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CK_TEST_CHROMIUM); .ci/run installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@dataclass
class Offline:
    """What a page tried that an offline developer's browser could not do, or its CSP refused."""

    page: Page
    outside: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.outside == [], f"requests beyond 127.0.0.1: {self.outside}"
        assert self.csp == [], f"CSP violations: {self.csp}"
        assert self.errors == [], f"script errors: {self.errors}"


@pytest.fixture
def offline(browser: Browser) -> Iterator[Offline]:
    context = browser.new_context(service_workers="block")
    context.set_default_timeout(15_000)
    page = context.new_page()
    seen = Offline(page)

    def only_local(route: Route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname in _LOCAL:
            route.continue_()
        else:
            seen.outside.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page.on("console", lambda m: seen.csp.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    yield seen
    context.close()


def test_graphiql_renders_its_editor_and_runs_a_query(dev_server: str, offline: Offline) -> None:
    page = offline.page
    page.goto(urljoin(dev_server, "/graphql?q=" + quote("{ __typename }")))
    expect(page.locator(".graphiql-query-editor .CodeMirror")).to_be_visible()
    expect(page.locator(".graphiql-query-editor")).to_contain_text("__typename")
    page.locator(".graphiql-execute-button").click()
    expect(page.locator(".graphiql-response")).to_contain_text('"__typename": "Query"')
    offline.assert_clean()


def test_redoc_renders_the_rest_operations(dev_server: str, offline: Offline) -> None:
    page = offline.page
    page.goto(urljoin(dev_server, "/schema"))
    expect(page.locator("h2", has_text="Issue a connection key")).to_be_visible()
    expect(page.locator("body")).to_contain_text("/connection-keys/{key_id}/responses")
    page.locator("input[placeholder='Search...']").fill("moderation")  # search runs in a blob: worker
    expect(page.locator("[data-role='search:results'] li", has_text="List attempts")).to_be_visible()
    offline.assert_clean()


def test_swagger_ui_renders_the_rest_operations(dev_server: str, offline: Offline) -> None:
    page = offline.page
    page.goto(urljoin(dev_server, "/schema/swagger"))
    operation = page.locator(".opblock-post", has=page.locator(".opblock-summary-path[data-path='/connection-keys']"))
    expect(operation).to_be_visible()
    expect(operation).to_contain_text("Issue a connection key")
    offline.assert_clean()
