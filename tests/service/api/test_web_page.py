"""The web page's routes in-process: public with auth on, under a strict Content-Security-Policy, out
of the OpenAPI contract, its assets cached by digest, and nothing but the listed files served."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.routes import web
from service.settings import Settings
from tests.fakes import ScriptedEngine, chat_service, resources

pytestmark = pytest.mark.unit
KEY = "k1"


@pytest.fixture
def client(demo_bundle: Path) -> httpx.AsyncClient:
    # Auth on, and the metrics and the contract kept for key holders: the page stays public anyway.
    settings = Settings(public_metrics_and_docs=False)
    app = create_app(settings, resources(chat_service(demo_bundle, ScriptedEngine([[5]])), keys=[KEY]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def csp(response: httpx.Response) -> dict[str, str]:
    directives = (d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    return {name: value for name, value in directives}


async def test_the_page_and_its_assets_are_public_and_strict(client: httpx.AsyncClient) -> None:
    async with client as c:
        page = await c.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        links = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text)
        assert sorted(link.split("?")[0] for link in links) == sorted(f"/ui/{name}" for name in web.ASSETS)
        for response in [page, *[await c.get(link) for link in links]]:
            assert response.status_code == 200, response.url
            policy = csp(response)
            assert policy["default-src"] == "'self'" and "script-src" not in policy  # scripts: this origin only
            assert "unsafe-inline" not in response.headers["content-security-policy"]
            assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        # The API behind it still wants the key.
        assert (await c.get("/v1/models")).status_code == 401
        assert (await c.get("/openapi.json")).status_code == 401


async def test_no_inline_script_or_style_in_the_page() -> None:
    html = (web.STATIC / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/app.js" defer>']
    assert "<style" not in html and " style=" not in html and " on" not in re.sub(r"<!--.*?-->", "", html, flags=re.S)
    assert "http://" not in html + (web.STATIC / "app.js").read_text() + (web.STATIC / "style.css").read_text()


async def test_assets_are_kept_by_digest_and_the_page_revalidated(client: httpx.AsyncClient) -> None:
    async with client as c:
        page = await c.get("/")
        assert page.headers["cache-control"] == "no-cache"
        assert (await c.get("/", headers={"if-none-match": page.headers["etag"]})).status_code == 304
        script = web.FILES["app.js"]
        linked = await c.get(f"/ui/app.js?v={script.digest}")
        assert linked.content == (web.STATIC / "app.js").read_bytes()
        assert linked.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert linked.headers["content-type"] == "text/javascript; charset=utf-8"
        # An old or missing version is served, but only until it is revalidated.
        assert (await c.get("/ui/app.js?v=0123")).headers["cache-control"] == "no-cache"
        not_modified = await c.get("/ui/app.js", headers={"if-none-match": linked.headers["etag"]})
        assert not_modified.status_code == 304 and not_modified.content == b""


async def test_only_the_listed_files_are_served(client: httpx.AsyncClient) -> None:
    async with client as c:
        for path in ["/ui/index.html", "/ui/../admission.py", "/ui/%2e%2e/app.py", "/ui/"]:
            assert (await c.get(path)).status_code == 401, path  # not public: the key is asked for
            r = await c.get(path, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 404, path
        assert (await c.post("/", headers={"Authorization": f"Bearer {KEY}"})).status_code == 405


def test_the_page_is_not_in_the_contract() -> None:
    paths = create_app(Settings()).openapi()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)
