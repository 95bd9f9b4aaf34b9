"""What the web console needs from the server, in process: the page and its files with
their security headers (and `console.enabled = false`), `GET /v1/whoami`, and the plain
HTTP GET on the subscribe path answering what the handshake would (a browser's WebSocket
API never shows why a handshake was refused). The console itself is driven in a real
browser by tests/browser/."""

from __future__ import annotations

import httpx
import pytest

from hubd.web.console import CONTENT_SECURITY_POLICY, load_assets

from ..helpers import ADMIN, PUB, SUB, SUB_KEY, SUB_PDFM, assert_json_error, bearer
from .asgi import InProcessHubd, client_ip
from .conftest import MakeHubd

PAGES = ["/console", "/console/", "/console/index.html"]


def test_the_console_files_ship_inside_the_package() -> None:
    assets = load_assets()
    for name in ("index.html", "app.js", "console.css"):
        assert f"/console/{name}" in assets, sorted(assets)
    assert assets["/console"] is assets["/console/index.html"]


@pytest.mark.parametrize("path", PAGES)
async def test_the_page_is_served_with_strict_security_headers(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in response.content.lower()
    csp = response.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


async def test_the_page_has_no_inline_script_or_style(http: httpx.AsyncClient) -> None:
    """The CSP would block them; the page must not depend on anything it blocks."""
    html = (await http.get("/console")).text.lower()
    assert "<script>" not in html and " style=" not in html and "<style" not in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("console.css", "text/css; charset=utf-8")],
)
async def test_files_have_their_types_and_revalidate(
    http: httpx.AsyncClient, name: str, content_type: str
) -> None:
    response = await http.get(f"/console/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    etag = response.headers["etag"]
    again = await http.get(f"/console/{name}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    head = await http.head(f"/console/{name}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.parametrize("path", ["/console/nope.js", "/console/../hubd/cli.py", "/consolex"])
async def test_unknown_console_paths_are_json_404(http: httpx.AsyncClient, path: str) -> None:
    error = assert_json_error(await http.get(path), 404)
    assert error["error"] == "not_found"


async def test_only_get_and_head(http: httpx.AsyncClient) -> None:
    error = assert_json_error(await http.post("/console", content=b"x"), 405)
    assert error["error"] == "method_not_allowed" and "GET, HEAD" in error["message"]


async def test_the_console_can_be_switched_off(make_hubd: MakeHubd) -> None:
    hubd = make_hubd(console={"enabled": False})
    async with hubd.http() as http:
        for path in [*PAGES, "/console/app.js"]:
            error = assert_json_error(await http.get(path), 404)
            assert "console.enabled = false" in error["message"], error


async def test_console_requests_are_counted_under_one_label(hubd: InProcessHubd) -> None:
    async with hubd.http() as http:
        await http.get("/console")
        await http.get("/console/app.js")
        await http.get("/console/missing.js")
    counts = hubd.ctx.http_counts
    assert counts.counts[("/console", 200)] == 2 and counts.counts[("/console", 404)] == 1


# -- whoami ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            SUB,
            {"principal": "sub", "kind": "token", "roles": ["subscriber"], "channels": None},
            id="token",
        ),
        pytest.param(
            SUB_PDFM,
            {
                "principal": "sub-pdfm",
                "kind": "token",
                "roles": ["subscriber"],
                "channels": ["health", "pdfm"],
            },
            id="allow-list",
        ),
        pytest.param(
            PUB,
            {"principal": "pub", "kind": "api_key", "roles": ["publisher"], "channels": None},
            id="api-key",
        ),
        pytest.param(
            ADMIN,
            {"principal": "admin", "kind": "token", "roles": ["admin"], "channels": None},
            id="admin",
        ),
    ],
)
async def test_whoami_names_the_principal_and_its_roles(
    http: httpx.AsyncClient, prefix: str, headers: dict[str, str], expected: dict[str, object]
) -> None:
    response = await http.get(f"{prefix}/whoami", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == expected


async def test_whoami_refuses_an_unknown_credential(http: httpx.AsyncClient) -> None:
    error = assert_json_error(await http.get("/v1/whoami", headers=bearer("nope")), 401)
    assert error["message"] == "the bearer token presented is not valid"
    error = assert_json_error(await http.get("/v1/whoami"), 401)
    assert "no credentials" in error["message"] and "bearer.<base64url token>" in error["message"]


# -- the subscribe path over plain HTTP: what the handshake would answer -------------------


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        pytest.param("/v1/ws/subscribe?event_types=pdfm", SUB, 426, "upgrade_required", id="ok"),
        pytest.param("/v1/ws/subscribe?event_types=pdfm", {}, 401, "unauthorized", id="none"),
        pytest.param(
            "/v1/ws/subscribe?event_types=pdfm", bearer("x"), 401, "unauthorized", id="unknown"
        ),
        pytest.param("/v1/ws/subscribe?event_types=pdfm", PUB, 403, "forbidden", id="no-role"),
        pytest.param(
            "/v1/ws/subscribe?event_types=nope", SUB, 400, "unknown_channel", id="channel"
        ),
        pytest.param(
            "/v1/ws/subscribe?event_types=orchestrator",
            SUB_PDFM,
            403,
            "forbidden",
            id="allow-list",
        ),
        pytest.param(
            "/v1/ws/subscribe?event_types=pdfm&since=zz", SUB, 400, "bad_request", id="since"
        ),
        pytest.param(
            "/v1/ws/subscribe?event_types=pdfm",
            {**SUB_KEY, "Origin": "https://evil.example"},
            403,
            "forbidden_origin",
            id="origin",
        ),
    ],
)
async def test_plain_get_answers_what_the_handshake_would(
    hubd: InProcessHubd,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    async with hubd.http() as http:
        via_http = assert_json_error(await http.get(path, headers=headers), status)
    assert via_http["error"] == code, via_http
    if status != 426:
        # The same refusal, word for word, as the WebSocket handshake gets.
        via_ws = (await hubd.rejected(path, headers)).error(status)
        assert via_ws == via_http


async def test_plain_get_reports_the_ip_already_connected(hubd: InProcessHubd) -> None:
    ip = client_ip()
    async with hubd.subscribe("pdfm", SUB, ip=ip), hubd.http(ip=ip) as http:
        error = assert_json_error(
            await http.get("/v1/ws/subscribe?event_types=pdfm", headers=SUB), 409
        )
        assert error["error"] == "ip_in_use"
    async with hubd.http(ip=ip) as http:
        response = await http.get("/v1/ws/subscribe?event_types=pdfm", headers=SUB)
        assert response.status_code == 426
