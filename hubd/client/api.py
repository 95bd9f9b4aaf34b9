"""`HubClient`: one hubd, one credential; HTTP calls over httpx, subscriptions and
`whoami` over trio-websocket. Everything runs on trio."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection

from hubd import __version__
from hubd.client.connection import DEFAULT_MAX_MESSAGE, describe_failure, open_websocket, unwrap
from hubd.client.endpoint import Endpoint
from hubd.client.errors import (
    ForbiddenError,
    HubdError,
    NetworkError,
    ProtocolError,
    error_from_response,
)
from hubd.client.models import (
    ClientInfo,
    Credentials,
    Stats,
    UnsubscribeResult,
    WhoAmI,
    convert,
)
from hubd.client.subscription import NoticeCallback, Subscription
from hubd.client.whoami import ask_client_id

# hubd refuses larger batches (400 batch_too_large).
MAX_BATCH = 1000
# hubd refuses a request body over hub.max_publish_bytes (1 MiB by default) with 413, all
# or nothing; publish_many cuts its requests below this, with room to spare.
MAX_REQUEST_BYTES = 2**20 - 4096
USER_AGENT = f"hubd-client/{__version__}"
# httpx failures after which the request may have reached the server whole (no answer,
# or the connection broke while it was sent or awaited); the others happen before.
_AFTER_SENDING = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.CloseError,
    httpx.RemoteProtocolError,
)


class HubClient:
    """A client for one hubd at `url` (`http://host:port`, `https://`, or the same with
    `ws://`/`wss://`; a path after the port is a prefix, for a hubd behind a proxy).

    `source_address` binds every connection to that local address (hubd allows one
    subscriber connection per client IP). `ssl_context` verifies `https` servers (the
    system's CAs by default). `timeout` bounds each HTTP request and each connection
    attempt, in seconds. `max_message_size` is the largest frame a subscription accepts
    from the server, in bytes (a larger one ends it with `ProtocolError`).

    Use it as `async with HubClient(...) as client:` to share one HTTP connection pool
    between calls; without `async with`, each HTTP call opens and closes its own.
    Methods raise `HubdError` (with `status`, `code`, `message`) when the server refuses,
    `NetworkError` when it cannot be reached, `ProtocolError` on an unreadable answer.
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        source_address: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        user_agent: str = USER_AGENT,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.endpoint = Endpoint.parse(url)
        self.credentials = credentials
        self.source_address = source_address
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_message_size = max_message_size
        self._headers = {"User-Agent": user_agent, **credentials.headers()}
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HubClient:
        self._http = self._new_http()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def __repr__(self) -> str:
        return f"HubClient({str(self.endpoint)!r}, {self.credentials!r})"

    # -- HTTP ------------------------------------------------------------------------------

    def _new_http(self) -> httpx.AsyncClient:
        # An explicit transport: the source address, and no proxy taken from the
        # environment (the WebSocket side cannot use one either).
        transport = httpx.AsyncHTTPTransport(
            verify=self.ssl_context or True, local_address=self.source_address
        )
        return httpx.AsyncClient(
            base_url=self.endpoint.base_url,
            transport=transport,
            headers=self._headers,
            timeout=self.timeout,
            follow_redirects=False,
        )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with self._new_http() as http:
            yield http

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """`method path` (e.g. `GET /v1/ws/stats`) with `body` as JSON when not None;
        the decoded JSON answer. The typed methods below are built on it; use it for
        fields this version does not know yet."""
        content = None if body is None else json.dumps(body).encode()
        return await self._send(method, path, content)

    async def _send(self, method: str, path: str, content: bytes | None) -> Any:
        """`request()` with the JSON body already encoded."""
        headers = {} if content is None else {"Content-Type": "application/json"}
        try:
            async with self._client() as http:
                response = await http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            sent = isinstance(exc, _AFTER_SENDING)
            if isinstance(exc, httpx.TimeoutException):
                text = f"{method} {self.endpoint.url(path)}: no answer within {self.timeout:g} s"
            elif sent:
                text = f"{method} {self.endpoint.url(path)}: the connection broke: " + (
                    describe_failure(exc)
                )
            else:
                text = f"cannot reach {self.endpoint}: {describe_failure(exc)}"
            if sent and method != "GET":
                text += " (the request was sent: it may have been carried out)"
            raise NetworkError(text, request_sent=sent) from None
        if response.status_code >= 300:
            raise error_from_response(response.status_code, response.content)
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(
                f"{method} {path} answered {response.status_code} without JSON"
            ) from None

    async def publish(
        self,
        channel: str,
        message: str,
        body: Any = None,
        client_id: str | None = None,
    ) -> str:
        """Publish one event on `channel`; its id (what subscribers see as `id`).
        `body` is any JSON value (None: no body); `client_id` targets one connection."""
        event: dict[str, Any] = {"event_type": channel, "message": message}
        if body is not None:
            event["body"] = body
        if client_id is not None:
            event["client_id"] = client_id
        answer = await self.request("POST", "/v1/events", event)
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise ProtocolError(f"POST /v1/events answered {answer!r}")
        return str(answer["id"])

    async def publish_many(
        self,
        events: Iterable[Mapping[str, Any]],
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> list[str]:
        """Publish events (each a mapping with `event_type`, `message` and optionally
        `body`, `client_id`); their ids, in order.

        They go in requests of at most 1000 events and at most `max_request_bytes` of
        JSON (set it to hubd's `hub.max_publish_bytes` when that is not the default 1 MiB;
        a single event larger than it goes alone), one after the other. A request the
        server refuses as too large (413, nothing published) is split in two and each
        half sent again; a single event refused so is not published.

        Each request is all or nothing. When one fails, the exception propagates with
        `published_ids` set to the ids of the events published before it (a prefix of
        `events`); the events from the failed request on were not published, unless
        `exc.outcome_unknown` (no answer, 504): then that request's events may or may not
        have been. A call with at most 1000 events that fit in `max_request_bytes` is one
        request, so it is all or nothing unless refused as too large."""
        if max_request_bytes <= 2:
            raise ValueError(f"max_request_bytes is too small: {max_request_bytes}")
        ids: list[str] = []
        try:
            for parts in _requests(events, MAX_BATCH, max_request_bytes):
                await self._publish_parts(parts, ids)
        except Exception as exc:
            exc.published_ids = list(ids)  # type: ignore[attr-defined]
            raise
        return ids

    async def _publish_parts(self, parts: list[bytes], ids: list[str]) -> None:
        """Publish the encoded events `parts` in one request, appending their ids to
        `ids`; halves sent one after the other when the server finds it too large."""
        try:
            answer = await self._send("POST", "/v1/events", b"[" + b",".join(parts) + b"]")
        except HubdError as exc:
            if exc.status != 413 or len(parts) < 2:
                raise
            half = len(parts) // 2
            await self._publish_parts(parts[:half], ids)
            await self._publish_parts(parts[half:], ids)
            return
        got = answer.get("ids") if isinstance(answer, dict) else None
        if not isinstance(got, list) or len(got) != len(parts):
            raise ProtocolError(f"POST /v1/events answered {answer!r}")
        ids += [str(i) for i in got]

    async def unsubscribe(self, client_id: str, channels: Iterable[str]) -> UnsubscribeResult:
        """Remove `channels` from the live connection `client_id` (one's own, or any with
        the admin role). `global` always stays."""
        body = {"client_id": client_id, "event_types": list(channels)}
        answer = await self.request("POST", "/v1/ws/unsubscribe", body)
        return convert(answer, UnsubscribeResult, "POST /v1/ws/unsubscribe")

    async def clients(self) -> list[ClientInfo]:
        """Every open subscriber connection, oldest first (admin role)."""
        answer = await self.request("GET", "/v1/ws/clients")
        if not isinstance(answer, dict):
            raise ProtocolError(f"GET /v1/ws/clients answered {answer!r}")
        return convert(answer.get("clients"), list[ClientInfo], "GET /v1/ws/clients")

    async def stats(self) -> Stats:
        """The hub's counters and delivery-latency summary (admin role)."""
        return convert(await self.request("GET", "/v1/ws/stats"), Stats, "GET /v1/ws/stats")

    # -- WebSocket -------------------------------------------------------------------------

    def _dial(self, query: Mapping[str, str]) -> AbstractAsyncContextManager[WebSocketConnection]:
        return open_websocket(
            self.endpoint,
            self.endpoint.resource("/v1/ws/subscribe", query),
            self._headers,
            source_address=self.source_address,
            ssl_context=self.ssl_context,
            max_message_size=self.max_message_size,
            connect_timeout=self.timeout,
        )

    @asynccontextmanager
    async def subscribe(
        self,
        channels: str | Iterable[str],
        *,
        since: str | None = None,
        heartbeat: float | None = 20.0,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.5, 30.0),
        batch: bool = False,
        on_notice: NoticeCallback | None = None,
        dead_after: float | None = None,
        conflict_window: float | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to `channels` (a list, or a comma-separated string; `global` is
        always included by the server) and yield a `Subscription` to iterate over.

        The first connection is made on entering: a refusal raises here (`AuthError`,
        `ForbiddenError`, `ConflictError`, other `HubdError`s) and so does an unreachable
        server (`NetworkError`). `since` resumes after that event id. Every `heartbeat`
        seconds a health ping is sent (so `health` is added to the channels; None turns
        pings off). A connection from which not a byte arrived for `dead_after` seconds
        while a frame is awaited is taken as dead and replaced (default 2 x heartbeat
        + 1 s; none without heartbeat unless given); bytes of a large frame still arriving
        count. With `reconnect`, a dropped connection is reopened after a random delay in
        [0, min(backoff[1], backoff[0] * 2**attempt)] and resumed from the last event
        yielded. A 409 `ip_in_use` on a reconnect (hubd has not noticed yet that the old
        connection is gone) is retried like a network error for `conflict_window` seconds
        after the drop (None: as long as reconnecting goes on). `batch` asks for batch mode
        (several events per frame). Leaving the block closes the connection with code
        1000."""
        sub = Subscription(
            self._dial,
            channels,
            since=since,
            heartbeat=heartbeat,
            reconnect=reconnect,
            backoff=backoff,
            batch=batch,
            on_notice=on_notice,
            timeout=self.timeout,
            dead_after=dead_after,
            conflict_window=conflict_window,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sub.run)
                try:
                    await sub.wait_connected()
                    yield sub
                finally:
                    await sub.aclose()
        except BaseExceptionGroup as group:
            exc = unwrap(group)
            if exc is group:
                raise
            raise exc from exc.__cause__

    async def whoami(self) -> WhoAmI:
        """Open a connection on the `system` channel, ask for its client id and return
        it with what the server tells this credential about it (principal and IP with
        the admin role, see `WhoAmI`). Needs `system` in the credential's allow-list, and
        no other subscriber connection from this client IP (409 otherwise)."""
        async with self._dial({"event_types": "system"}) as ws:
            client_id, subscriptions = await ask_client_id(ws, self.timeout)
            principal = ip = None
            try:
                for info in await self.clients():
                    if info.client_id == client_id:
                        principal, ip = info.principal, info.ip
            except ForbiddenError:
                pass  # not an admin: the server shows a principal no more than this
            with trio.move_on_after(self.timeout):
                await ws.aclose(1000)
        return WhoAmI(client_id, subscriptions, principal, ip)


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event as it goes into a publish request: compact JSON, UTF-8 (escaped ASCII
    for a string that cannot be UTF-8, a lone surrogate)."""
    try:
        return json.dumps(dict(event), separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(dict(event), separators=(",", ":")).encode()


def _requests(
    events: Iterable[Mapping[str, Any]], max_events: int, max_bytes: int
) -> Iterator[list[bytes]]:
    """`events` encoded and cut into requests of at most `max_events` events and
    `max_bytes` bytes of body (an event too large alone goes alone), lazily."""
    parts: list[bytes] = []
    size = 2  # "[]"
    for event in events:
        part = encode_event(event)
        if parts and (len(parts) >= max_events or size + 1 + len(part) > max_bytes):
            yield parts
            parts, size = [], 2
        size += len(part) + (1 if parts else 0)
        parts.append(part)
    if parts:
        yield parts
