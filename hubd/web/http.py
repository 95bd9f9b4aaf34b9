"""The HTTP routes other than publishing (unsubscribe, health, readiness, admin views,
metrics) as a Quart-Trio app. Thin: parse, call the core, answer through
web/responses.py."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, cast

import msgspec
import trio
from quart import Response, g, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from hubd import __version__
from hubd.core.errors import HubError
from hubd.core.session import Session
from hubd.protocol.envelope import format_utc
from hubd.protocol.quoting import quoted
from hubd.tasks import count_tasks
from hubd.web.console import PREFIX as CONSOLE
from hubd.web.console import is_console
from hubd.web.context import WebContext
from hubd.web.errors import payload_too_large, request_timeout
from hubd.web.responses import (
    INTERNAL_ERROR,
    PROMETHEUS,
    error_response,
    json_response,
    quart_response,
)
from hubd.web.ws import dry_run

log = logging.getLogger("hubd.http")

PREFIXES = ("/v1", "/api/v1")

# Paths are labelled by route in the request metrics; anything else is "other", so a
# scanner cannot blow up the label set.
ROUTES = frozenset(
    f"{prefix}{path}"
    for prefix in PREFIXES
    for path in (
        "/events",
        "/ws/unsubscribe",
        "/ws/subscribe",
        "/ws/stats",
        "/ws/clients",
        "/health",
        "/ready",
        "/whoami",
    )
) | {"/metrics"}


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    # The console's page and files, one label for all.
    return CONSOLE if is_console(path) else "other"


def client_view(session: Session, now: float, wall: float) -> dict[str, object]:
    """One connection as `GET /v1/ws/clients` shows it (`now`: trio time, `wall`: epoch)."""
    stats = session.mailbox.statistics()
    return {
        "client_id": session.client_id,
        "principal": session.principal.name,
        "ip": session.ip,
        "connected_at": session.connected_at,
        "last_seen": format_utc(wall - (now - session.last_seen)),
        "subscriptions": list(session.subscriptions),
        "batch": session.batch,
        "queue_depth": stats.depth,
        "queue_capacity": stats.capacity,
        "dropped": stats.dropped_total,
        "closing": session.close_code is not None,
    }


class UnsubscribeRequest(msgspec.Struct, forbid_unknown_fields=True):
    client_id: str
    event_types: list[str]


_unsubscribe_decoder = msgspec.json.Decoder(UnsubscribeRequest)


def _error(status: int, code: str, message: str) -> Response:
    # The body (oversized, still arriving, or not read because the request was refused
    # first, e.g. 401) is left unread, so this connection cannot carry another request:
    # say so, instead of letting a keep-alive client reuse it and fail.
    close = status in (408, 413) or _body_unread()
    return error_response(status, code, message, close=close)


def _hub_error(exc: HubError) -> Response:
    return _error(exc.status, exc.code, exc.message)


def _body_unread() -> bool:
    """Whether the current request may have a body that `_body` has not read."""
    if not has_request_context() or g.get("hubd_body_read", False):
        return False
    return request.content_length != 0 and request.method in ("POST", "PUT", "PATCH", "DELETE")


def _headers() -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def _body(limit: int, seconds: float) -> bytes:
    """The request body: 413 over `limit` bytes, 408 unless it is all in within `seconds`
    (`server.body_timeout`, read per request so that a reload applies)."""
    length = request.content_length
    if length is not None and length > limit:
        raise payload_too_large(limit, length)
    # Our deadline, not Quart's (an int, 60 s by default): the same 408 as POST /v1/events.
    request.body_timeout = None
    with trio.move_on_after(seconds):
        data = await request.get_data(cache=False, as_text=False)
        g.hubd_body_read = True
        return data if isinstance(data, bytes) else data.encode()
    raise request_timeout(seconds)


def create_http_app(ctx: WebContext) -> QuartTrio:
    """Build the Quart-Trio app serving the HTTP endpoints under /v1 and /api/v1, except
    `POST /v1/events`, which `HubdApp` serves itself (web/publish_route.py)."""
    app = QuartTrio("hubd")
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.hub.max_publish_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    for prefix in PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        # Routing only, no view: POST never reaches this app, and the rule gives every
        # other method Quart's 405 naming the allowed method.
        app.add_url_rule(f"{prefix}/events", f"publish_{tag}", methods=["POST"])
    _add_client_routes(app, ctx)
    _add_admin_routes(app, ctx)
    _add_probe_routes(app, ctx)
    _add_error_handlers(app, ctx)
    return app


def _add_client_routes(app: QuartTrio, ctx: WebContext) -> None:
    """Who am I, unsubscribe, and the subscribe path asked for over plain HTTP."""

    async def unsubscribe() -> Response:
        principal = ctx.authenticate(_headers(), request.args.get("access_token"))
        payload = await _body(ctx.settings.hub.max_publish_bytes, ctx.settings.server.body_timeout)
        try:
            body = _unsubscribe_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise HubError(
                400,
                "bad_request",
                "the body must be a JSON object "
                '{"client_id": "<id>", "event_types": ["<channel>", ...]} '
                # The decoder's words can hold the client's (an unknown field's name).
                f"({quoted(str(exc))})",
            ) from None
        result = await ctx.backplane.unsubscribe(principal, body.client_id, body.event_types)
        log.info(
            "unsubscribed client_id=%s by=%s channels=%s",
            result.client_id,
            principal.name,
            ",".join(result.unsubscribed),
        )
        return json_response(
            200,
            {
                "client_id": result.client_id,
                "unsubscribed": result.unsubscribed,
                "ignored": result.ignored,
                "subscriptions": result.subscriptions,
            },
        )

    async def subscribe_over_http() -> Response:
        # The handshake's checks, answered over plain HTTP (see ws.dry_run).
        return _hub_error(dry_run(ctx, cast("dict[str, Any]", request.scope)))

    async def whoami() -> Response:
        principal = ctx.authenticate(_headers(), request.args.get("access_token"))
        return json_response(
            200,
            {
                "principal": principal.name,
                "kind": principal.kind,
                "roles": sorted(principal.roles),
                "channels": None if principal.channels is None else sorted(principal.channels),
            },
        )

    for prefix in PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        app.add_url_rule(f"{prefix}/whoami", f"whoami_{tag}", whoami, methods=["GET"])
        app.add_url_rule(
            f"{prefix}/ws/unsubscribe", f"unsubscribe_{tag}", unsubscribe, methods=["POST"]
        )
        app.add_url_rule(
            f"{prefix}/ws/subscribe", f"subscribe_{tag}", subscribe_over_http, methods=["GET"]
        )


def _add_admin_routes(app: QuartTrio, ctx: WebContext) -> None:
    """The views that need the admin role: stats, clients, /metrics."""

    async def stats() -> Response:
        ctx.require_admin(_headers(), request.args.get("access_token"))
        figures = ctx.hub.stats()
        # The process' trio tasks (all of them, not only the connections'): a leak shows
        # as a count that rises while `connections` stays flat. One walk of the task tree,
        # proportional to the number of tasks (see hubd/tasks.py).
        figures["tasks"] = count_tasks()
        # Memory blocks held by Python objects: a leak of objects shows as a count that
        # rises, while RSS also moves with how the allocator keeps freed pages (it steps up
        # and settles under a steady load). Reads one counter.
        figures["allocated_blocks"] = sys.getallocatedblocks()
        return json_response(200, figures)

    async def clients() -> Response:
        ctx.require_admin(_headers(), request.args.get("access_token"))
        now, wall = trio.current_time(), time.time()
        sessions = sorted(ctx.hub.sessions.values(), key=lambda s: s.connected_at)
        return json_response(
            200,
            {
                "count": len(sessions),
                "clients": [client_view(s, now, wall) for s in sessions],
            },
        )

    async def metrics() -> Response:
        if ctx.metrics is None:
            raise HubError(404, "not_found", "metrics are disabled (metrics.enabled = false)")
        ctx.require_admin(_headers(), request.args.get("access_token"))
        return quart_response(200, ctx.metrics.render(), PROMETHEUS)

    for prefix in PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        app.add_url_rule(f"{prefix}/ws/stats", f"stats_{tag}", stats, methods=["GET"])
        app.add_url_rule(f"{prefix}/ws/clients", f"clients_{tag}", clients, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


def _add_probe_routes(app: QuartTrio, ctx: WebContext) -> None:
    """Liveness and readiness."""

    async def health() -> Response:
        # Liveness: answering at all is the signal. No credentials needed.
        return json_response(
            200,
            {
                "status": "ok",
                "version": __version__,
                "uptime_seconds": round(trio.current_time() - ctx.hub.started_at, 3),
            },
        )

    async def ready() -> Response:
        if ctx.hub.draining:
            return _error(503, "not_ready", "the server is draining (shutting down)")
        if not ctx.ready:
            return _error(503, "not_ready", "the server is starting")
        if not ctx.backplane.healthy:
            return _error(503, "not_ready", f"the event backplane is down: {ctx.backplane.status}")
        return json_response(200, {"status": "ready", "backplane": ctx.backplane.status})

    for prefix in PREFIXES:
        tag = prefix.strip("/").replace("/", "_")
        app.add_url_rule(f"{prefix}/health", f"health_{tag}", health, methods=["GET"])
        app.add_url_rule(f"{prefix}/ready", f"ready_{tag}", ready, methods=["GET"])


def _add_error_handlers(app: QuartTrio, ctx: WebContext) -> None:
    """Every error this app answers is the JSON error payload."""

    @app.errorhandler(HubError)
    async def on_hub_error(exc: HubError) -> Response:
        return _hub_error(exc)

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            # Quart's own limit (MAX_CONTENT_LENGTH): a body that arrived past it.
            return _hub_error(payload_too_large(ctx.settings.hub.max_publish_bytes))
        if status == 404:
            return _error(
                404, "not_found", f"no endpoint at {quoted(request.path)}; see docs/protocol.md"
            )
        if status == 405:
            valid = getattr(exc, "valid_methods", None) or []
            allowed = ", ".join(sorted(m for m in valid if m != "OPTIONS"))
            return _error(
                405,
                "method_not_allowed",
                f"{quoted(request.method)} is not allowed on {quoted(request.path)}; use {allowed}",
            )
        name = (exc.name or "error").lower().replace(" ", "_")
        return _error(status, name, exc.description or name)

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", quoted(request.method), quoted(request.path))
        return _error(*INTERNAL_ERROR)
