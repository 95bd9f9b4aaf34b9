"""hubd/web/responses.py: the one builder of hubd's own responses, raw ASGI and Quart, and
the errors about request bodies (hubd/web/errors.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hubd import metrics
from hubd.web import responses
from hubd.web.errors import payload_too_large, request_timeout


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)


def test_content_types() -> None:
    assert responses.JSON == "application/json"
    assert responses.PROMETHEUS == metrics.CONTENT_TYPE
    assert responses.PROMETHEUS == "text/plain; version=0.0.4; charset=utf-8"


def test_error_body_is_the_json_error_payload() -> None:
    body = responses.error_body("not_found", "no endpoint at '/x'")
    assert json.loads(body) == {"error": "not_found", "message": "no endpoint at '/x'"}


async def test_send_error_over_http() -> None:
    send = Recorder()
    await responses.send_error(send, 401, "unauthorized", "no credentials", close=True)
    start, body = send.messages
    payload = b'{"error":"unauthorized","message":"no credentials"}'
    assert start == {
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
            (b"connection", b"close"),
        ],
    }
    assert body == {"type": "http.response.body", "body": payload}


async def test_send_error_refusing_a_websocket_handshake() -> None:
    send = Recorder()
    await responses.send_error(send, 403, "forbidden", "no", websocket=True)
    start, body = send.messages
    assert start["type"] == "websocket.http.response.start"
    assert (start["status"], start["headers"][0]) == (403, (b"content-type", b"application/json"))
    assert (b"connection", b"close") not in start["headers"]
    assert body == {
        "type": "websocket.http.response.body",
        "body": b'{"error":"forbidden","message":"no"}',
    }


async def test_a_head_response_keeps_the_length_and_sends_no_body() -> None:
    send = Recorder()
    await responses.send_response(send, 200, b"up 1\n", responses.PROMETHEUS, head=True)
    start, body = send.messages
    assert start["headers"] == [
        (b"content-type", responses.PROMETHEUS.encode()),
        (b"content-length", b"5"),
    ]
    assert body["body"] == b""


async def test_send_json() -> None:
    send = Recorder()
    await responses.send_json(send, 202, {"published": 1})
    assert send.messages[1]["body"] == b'{"published":1}'
    assert send.messages[0]["status"] == 202


@pytest.mark.parametrize("close", [False, True])
async def test_quart_error_response_matches_the_raw_one(close: bool) -> None:
    raw = Recorder()
    await responses.send_error(raw, 413, "payload_too_large", "too big", close=close)
    quart = responses.error_response(413, "payload_too_large", "too big", close=close)
    assert quart.status_code == 413
    assert quart.headers["Content-Type"] == "application/json"
    assert (quart.headers.get("Connection") == "close") is close
    assert await quart.get_data() == raw.messages[1]["body"]


async def test_quart_prometheus_response() -> None:
    response = responses.quart_response(200, b"up 1\n", responses.PROMETHEUS)
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert await response.get_data() == b"up 1\n"


def test_payload_too_large_messages() -> None:
    known = payload_too_large(1000, 2048)
    assert (known.status, known.code) == (413, "payload_too_large")
    assert known.message == (
        "the request body is 2048 bytes; the limit is 1000 bytes (hub.max_publish_bytes)"
    )
    unknown = payload_too_large(1000)
    assert (unknown.status, unknown.code) == (413, "payload_too_large")
    assert unknown.message == (
        "the request body exceeds the limit of 1000 bytes (hub.max_publish_bytes)"
    )


def test_request_timeout_message() -> None:
    error = request_timeout(2.5)
    assert (error.status, error.code) == (408, "request_timeout")
    assert error.message == "the request body did not arrive within 2.5 s (server.body_timeout)"
