"""Adversarial end-to-end tests: a real `hubd serve` fed hostile bytes over raw TCP.

`test_adversarial_barrage` plays one seeded, bounded barrage of cases (mutated HTTP requests
and WebSocket handshakes, pipelined junk, hand-built client frames after an upgrade), each
from its own 127.x.y.z source address: send, read whatever comes back for a moment, close.
The cases run in concurrent chunks; after every chunk the daemon must still be running,
answer `/v1/health` with 200 and have logged no traceback, and every ~100 cases a fresh
subscriber must receive a freshly published event. A chunk that hurts the daemon is
replayed case by case on a fresh daemon to name the culprit, whose kind is then left out,
and the barrage goes on (a bounded number of restarts) so that one run reports every kind
of input that hurts it. Reproduce a run with HUBD_ADVERSARIAL_SEED=<seed>; change its size
with HUBD_ADVERSARIAL_CASES=<n>.

Then focused regressions, each followed by the same health checks:

- a refused upgrade (no credentials) with bytes after its `\\r\\n\\r\\n`, on the main
  listener and on the metrics listener;
- reading the 401 of a refused upgrade, then sending a WebSocket close frame;
- a valid upgrade whose first frames are in the same write as the handshake: they are
  served (confirmation first, then the pongs).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import trio

from hubd.settings import ServerSettings

from ..helpers import CONFIRMATION_MESSAGE, HOST, PUB, event
from .conftest import StartHubd
from .helpers import WAIT, HubdProcess, client_ip, http_client, raw_connect, subscribe

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("HUBD_ADVERSARIAL_SEED", "20261204"))
CASES = int(os.environ.get("HUBD_ADVERSARIAL_CASES", "480"))
CHUNK = 20  # cases played concurrently between two health checks
FULL_CHECK_EVERY = 100  # cases between two "fresh subscriber gets a fresh event" checks
READ_FOR = 0.5  # seconds to read whatever comes back once a case is sent
PINPOINT_READ_FOR = 0.35
SEND_TIMEOUT = 2.0  # a write the server does not take in this long is abandoned
HEAD_TIMEOUT = 2.0  # waiting for the 101 before sending frames
HEALTH_TIMEOUT = 5.0  # for /v1/health on a loaded machine
MAX_RESTARTS = 16  # bounded: a daemon that dies on everything still ends the run
BUDGET = 150.0  # seconds; a hurt daemon makes the run longer, never unbounded

# What the barrage daemon runs with: a short idle deadline, short handshake and body
# deadlines (where this version of hubd has those keys).
HUB = {"idle_timeout": 3.0}
SERVER_WANTED = {"handshake_timeout": 2.0, "body_timeout": 2.0}
SERVER = {k: v for k, v in SERVER_WANTED.items() if k in ServerSettings.__struct_fields__}

# -- bytes on the wire ---------------------------------------------------------------------

SUB_PATH = "/v1/ws/subscribe?event_types=pdfm,health"
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HOST_LINE = b"Host: 127.0.0.1"
SUB_AUTH = b"Authorization: Bearer sub-token"
PUB_AUTH = b"X-Api-Key: pub-key"
EVENT_BODY = b'{"event_type":"pdfm","message":"ADVERSARIAL"}'
PING = {"event_type": "health", "message": "ping", "id": "1"}

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK_KEY = b"\x37\xfa\x21\x3d"
# The trait of a case that sends bytes after an upgrade request's head in the same write.
PIPELINED = "bytes pipelined after an upgrade request"


def handshake(path: str = SUB_PATH, *, auth: bool = True) -> list[bytes]:
    """The header lines of a valid upgrade request (as `sub` when `auth`)."""
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        HOST_LINE,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
    ]
    if auth:
        lines.append(SUB_AUTH)
    return lines


def head(lines: Sequence[bytes]) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(path: str, body: bytes, *, auth: bytes = PUB_AUTH, framing: Sequence[bytes] = ()) -> bytes:
    """A POST; Content-Length is the body's unless `framing` gives the framing headers."""
    lines = [f"POST {path} HTTP/1.1".encode(), HOST_LINE, auth, b"Content-Type: application/json"]
    lines += framing or [b"Content-Length: %d" % len(body)]
    return head(lines) + body


def mask(payload: bytes, key: bytes = MASK_KEY) -> bytes:
    if not payload:
        return b""
    keys = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")
    return value.to_bytes(len(payload), "big")


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame; `length` declares a length other than the payload's."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    return header + (MASK_KEY + mask(payload) if masked else payload)


def text(obj: Any) -> bytes:
    return ws_frame(OP_TEXT, obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def close_frame(code: int = 1000, reason: bytes = b"") -> bytes:
    return ws_frame(OP_CLOSE, code.to_bytes(2, "big") + reason)


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete frames in `data` as (opcode, payload), and the bytes left over."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 2:
        opcode, n, at = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        masked = data[pos + 1] & 0x80
        if n == 126:
            n, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        key = data[at : at + 4] if masked else b""
        at += len(key)
        if at > len(data) or len(data) - at < n:
            break
        payload = data[at : at + n]
        frames.append((opcode, mask(payload, key) if masked else payload))
        pos = at + n
    return frames, data[pos:]


def deep_json(depth: int, rng: random.Random | None = None) -> bytes:
    if rng is not None and rng.random() < 0.5:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


def short_names(n: int) -> list[str]:
    """n distinct, valid-looking, unknown channel names."""
    return [f"u{i:x}" for i in range(n)]


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    writes: list[bytes]
    wait_head: bool = False  # read the response head after the first write (the 101)
    eof: bool = False  # half-close (FIN) after the last write
    abort: bool = False  # close with RST instead of FIN
    pause: float = 0.0  # between writes
    index: int = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def _upgrade_head(self) -> tuple[bytes, bytes] | None:
        """(handshake, bytes after it) when the first write is an upgrade request."""
        first = self.writes[0] if self.writes else b""
        request, sep, rest = first.partition(b"\r\n\r\n")
        if not sep or not re.search(rb"(?im)^upgrade:\s*websocket", request):
            return None
        return request + sep, rest

    @property
    def traits(self) -> set[str]:
        """What the barrage may leave out once it is known to hurt the daemon."""
        found = {self.kind}
        if (parts := self._upgrade_head()) and parts[1]:
            found.add(PIPELINED)
        return found

    def split(self) -> Case | None:
        """The same bytes with the handshake answered before the rest is sent; None if the
        case pipelines nothing after an upgrade request."""
        parts = self._upgrade_head()
        if parts is None or not parts[1]:
            return None
        writes = [parts[0], parts[1], *self.writes[1:]]
        return replace(self, writes=writes, wait_head=True)

    def describe(self) -> str:
        data = self.data
        shown = repr(data if len(data) <= 240 else data[:160]) + (
            "" if len(data) <= 240 else f" ... {data[-48:]!r}"
        )
        flags = [
            name
            for name, on in (
                (f"{len(self.writes)} writes", len(self.writes) > 1),
                ("101 awaited before the rest", self.wait_head),
                ("then FIN", self.eof),
                ("then RST", self.abort),
            )
            if on
        ]
        how = ", ".join(flags) or "1 write"
        return f"case #{self.index} {self.kind} ({len(data)} bytes; {how}): {shown}"


Gen = Callable[[random.Random], Case]


def junk(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"x",
            b"\r\n",
            b"\x00",
            rng.randbytes(rng.randrange(1, 64)),
            head([b"GET /v1/health HTTP/1.1", HOST_LINE]),
            b"GET /v1/ws/subscribe HTTP/1.1\r\n",
            text(PING),
            close_frame(),
            b"x" * 70000,
        ]
    )


def g_random_bytes(rng: random.Random) -> Case:
    size = rng.choice((1, 7, 64, 512, 4096, 65536))
    return Case("random_bytes", [rng.randbytes(size)], eof=rng.random() < 0.3)


def g_request_then_random(rng: random.Random) -> Case:
    prefix = rng.choice(
        [b"GET ", b"GET /v1/ws/subscribe HTTP/1.1\r\n", b"POST /v1/events HTTP/1.1\r\n"]
    )
    return Case("request_then_random", [prefix + rng.randbytes(rng.choice((8, 300, 5000)))])


def g_truncated_handshake(rng: random.Random) -> Case:
    data = head(handshake(auth=rng.random() < 0.5))
    cut = rng.randrange(1, len(data) - 1)
    return Case(
        "truncated_handshake", [data[:cut]], eof=rng.random() < 0.5, abort=rng.random() < 0.2
    )


def g_truncated_request_line(rng: random.Random) -> Case:
    data = head(handshake())
    cut = rng.randrange(1, data.index(b"\r\n") + 2)
    return Case("truncated_request_line", [data[:cut]], eof=rng.random() < 0.5)


def g_huge_header(rng: random.Random) -> Case:
    size = rng.choice((60_000, 66_000, 70_000, 300_000, 1_100_000))
    name = rng.choice(
        [b"X-Big", b"Authorization", b"Sec-WebSocket-Key", b"Cookie", b"Origin", b"X-Forwarded-For"]
    )
    value = (b"Bearer " if name == b"Authorization" else b"") + b"a" * size
    if rng.random() < 0.7:
        data = head([*handshake(auth=rng.random() < 0.5), name + b": " + value])
    else:
        data = head([b"POST /v1/events HTTP/1.1", HOST_LINE, PUB_AUTH, name + b": " + value])
    return Case("huge_header", [data])


def g_many_headers(rng: random.Random) -> Case:
    n = rng.choice((100, 1000, 5000))
    lines = handshake(auth=rng.random() < 0.5)
    if rng.random() < 0.5:
        lines += [b"X-H%d: v" % i for i in range(n)]
    else:  # the same credential header over and over, with different values
        lines += [b"Authorization: Bearer t%d" % i for i in range(n)]
    return Case("many_headers", [head(lines)])


def g_huge_url(rng: random.Random) -> Case:
    path = rng.choice(
        [
            "/v1/ws/subscribe?event_types=" + "pdfm," * 20000,
            "/v1/ws/subscribe?" + "&".join(f"a{i}=b" for i in range(10000)),
            "/v1/" + "a" * 70000,
            "/v1/health?" + "x" * 100000,
        ]
    )
    return Case("huge_url", [head(handshake(path, auth=rng.random() < 0.5))])


CHUNKED_BODIES = [
    b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVENT_BODY), EVENT_BODY),
    b"zz\r\n" + EVENT_BODY + b"\r\n0\r\n\r\n",
    b"ffffffffffffffffffff\r\n" + EVENT_BODY,
    b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(EVENT_BODY), b"e" * 70000, EVENT_BODY),
    b"%x\r\n%s0\r\n\r\n" % (len(EVENT_BODY), EVENT_BODY),  # CRLF missing after the data
    b"0\r\nX-Trailer: " + b"t" * 5000 + b"\r\n\r\n",
    b"-1\r\n" + EVENT_BODY + b"\r\n0\r\n\r\n",
    b'5\r\n{"eve\r\n',  # and nothing more
]


def g_length_conflicts(rng: random.Random) -> Case:
    n = len(EVENT_BODY)
    framing = rng.choice(
        [
            [b"Content-Length: %d" % n, b"Content-Length: %d" % (n + 5)],
            [b"Content-Length: %d, %d" % (n, n)],
            [b"Content-Length: %d, %d" % (n, n + 1)],
            [b"Content-Length: %d" % n, b"Transfer-Encoding: chunked"],
            [b"Transfer-Encoding: chunked", b"Content-Length: %d" % n],
            [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
            [b"Transfer-Encoding: gzip, chunked"],
            [b"Transfer-Encoding: gzip"],
            [b"Transfer-Encoding: chunked, identity"],
            [b"Transfer-Encoding: chunked"],
            [b"Transfer-Encoding:  chunked"],
            [b"Transfer-Encoding: xchunked"],
            [b"Content-Length: -1"],
            [b"Content-Length: +%d" % n],
            [b"Content-Length: 99999999999999999999999"],
            [b"Content-Length: 1e3"],
            [b"Content-Length: " + b"9" * 5000],
            [b"Content-Length: 100000"],
            [b"Content-Length: 0"],
        ]
    )
    body = rng.choice(CHUNKED_BODIES) if b"chunked" in b"".join(framing) else EVENT_BODY
    path = rng.choice(["/v1/events", "/v1/ws/unsubscribe", "/v1/health"])
    return Case(
        "length_conflicts",
        [post(path, body, framing=framing)],
        eof=rng.random() < 0.3,
        abort=rng.random() < 0.1,
    )


def g_bad_ws_headers(rng: random.Random) -> Case:
    lines = handshake(auth=rng.random() < 0.7)
    choices: dict[bytes, list[bytes]] = {
        b"Sec-WebSocket-Key": [
            b"",
            b"abc",
            b"!" * 24,
            base64.b64encode(rng.randbytes(15)),
            base64.b64encode(rng.randbytes(17)),
            b"a" * 200,
            b"\xff\xfe\xfd",
            KEY + b", " + KEY,
        ],
        b"Sec-WebSocket-Version": [b"", b"12", b"14", b"abc", b"13, 8", b"-1", b"9" * 30],
        b"Upgrade": [b"", b"h2c", b"websocket, h2c", b"WebSocket/2", b"\x00", b"WEBSOCKET"],
        b"Connection": [b"close", b"keep-alive", b"upgrade, close", b"", b"Upgrade, Upgrade"],
        b"Sec-WebSocket-Extensions": [b"permessage-deflate; server_max_window_bits=99", b"x" * 300],
        b"Sec-WebSocket-Protocol": [b",,,", b"a" * 1000],
    }
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(list(choices))
        value = rng.choice(choices[name])
        how = rng.random()
        kept = [ln for ln in lines if not ln.lower().startswith(name.lower() + b":")]
        if how < 0.5:
            lines = [*kept, name + b": " + value]
        elif how < 0.75:
            lines = kept  # drop the header
        else:
            lines = [*lines, name + b": " + value]  # a conflicting duplicate
    if rng.random() < 0.3:
        method = rng.choice([b"POST", b"HEAD", b"PUT", b"OPTIONS", b"get", b"DELETE"])
        lines[0] = method + lines[0][3:]
    if rng.random() < 0.2:
        lines[0] = lines[0].replace(
            b"HTTP/1.1", rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"])
        )
    return Case("bad_ws_headers", [head(lines)], eof=rng.random() < 0.2)


def _upgrade_then_junk(kind: str, auth: bool, rng: random.Random) -> Case:
    first, rest = head(handshake(auth=auth)), junk(rng)
    if rng.random() < 0.6:
        return Case(kind, [first + rest], eof=rng.random() < 0.3)
    return Case(kind, [first, rest], pause=rng.choice((0.0, 0.05)), eof=rng.random() < 0.3)


def g_upgrade_junk_noauth(rng: random.Random) -> Case:
    return _upgrade_then_junk("upgrade_junk_noauth", False, rng)


def g_upgrade_junk_auth(rng: random.Random) -> Case:
    return _upgrade_then_junk("upgrade_junk_auth", True, rng)


def g_get_junk(rng: random.Random) -> Case:
    request = rng.choice(
        [
            head([b"GET /v1/health HTTP/1.1", HOST_LINE]),
            head([b"GET /v1/ready HTTP/1.1", HOST_LINE]),
            head([b"GET /nowhere HTTP/1.1", HOST_LINE]),
            head([b"GET /metrics HTTP/1.1", HOST_LINE, b"Authorization: Bearer admin-token"]),
            post("/v1/events", EVENT_BODY),
        ]
    )
    tail = junk(rng) if rng.random() < 0.8 else request * 50
    return Case("get_junk", [request + tail], eof=rng.random() < 0.3)


WEIRD_REQUESTS = [
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x12\x04\x00\x00\x00\x00\x00" + b"\x00" * 18,
    b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n  folded\r\n\r\n",
    b"GET /v1/health HTTP/1.1\nHost: x\n\n",
    b"GET /v1/health HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/ws/subscribe?event_types=\xc3\x28 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
    b"Authorization: Bearer sub-token\r\n\r\n",
    b"A" * 10000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"TRACE /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n\r\n\r\n\r\n",
    b"\r\n" * 5000 + b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\n\r\n",  # no Host
    b"GET /v1/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello start
    b"GET /v1/ws/subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
    b"X-Forwarded-For: 1.2.3.4, \xff, ::1\r\nAuthorization: Bearer sub-token\r\n\r\n",
]


def g_weird_request(rng: random.Random) -> Case:
    return Case("weird_request", [rng.choice(WEIRD_REQUESTS)], eof=rng.random() < 0.3)


def g_fin_before_request(rng: random.Random) -> Case:
    partial = rng.choice([b"", b"G", b"GET /v1/health HTTP/1.1\r\n", head(handshake())[:40]])
    return Case("fin_before_request", [partial], eof=rng.random() < 0.8, abort=rng.random() < 0.3)


def g_channel_query(rng: random.Random) -> Case:
    query = rng.choice(
        [
            "event_types=" + ",".join(short_names(10000)),
            "event_types=" + "pdfm," * 10000,
            "event_types=" + "," * 10000,
            "&".join(["event_types=pdfm"] * 3000),
            "event_types=" + "%20PDFM%20," * 3000,
            "event_types=" + "pdfm," * 9999 + "nope",
            "event_types=" + ",".join("x" * 64 + str(i) for i in range(700)),
        ]
    )
    return Case("channel_query", [head(handshake(f"/v1/ws/subscribe?{query}"))])


def g_unsubscribe(rng: random.Random) -> Case:
    client_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    body = rng.choice(
        [
            json.dumps({"client_id": client_id, "event_types": short_names(10000)}).encode(),
            json.dumps({"client_id": client_id, "event_types": ["pdfm"] * 10000}).encode(),
            b'{"client_id":"%s","event_types":' % client_id.encode() + deep_json(2000) + b"}",
            deep_json(2000, rng),
            json.dumps({"client_id": "x" * 100000, "event_types": ["pdfm"]}).encode(),
        ]
    )
    return Case("unsubscribe_huge", [post("/v1/ws/unsubscribe", body, auth=SUB_AUTH)])


def g_deep_publish(rng: random.Random) -> Case:
    depth = rng.choice((2000, 20000, 100000))
    body = rng.choice(
        [
            deep_json(depth, rng),
            b'{"event_type":"pdfm","message":"DEEP","body":' + deep_json(depth, rng) + b"}",
            b'[{"event_type":"pdfm","message":"DEEP","body":' + deep_json(depth, rng) + b"}]",
        ]
    )
    return Case("deep_publish", [post("/v1/events", body)])


def g_bad_publish(rng: random.Random) -> Case:
    body = rng.choice(
        [
            b'{"event_type":"pdfm","message":"\xff\xfe"}',
            b'{"event_type":"pdfm","message":"x","body":' + b"1" * 5000 + b"}",
            b'{"event_type":"pdfm","message":"x","body":NaN}',
            b'{"event_type":"pdfm","event_type":"health","message":"x"}',
            b"[]",
            json.dumps([{"event_type": "pdfm", "message": "x"}] * 1500).encode(),
            b'{"event_type":"pdfm","message":"x","body":"\\ud800"}',
            b'{"event_type":"' + b"p" * 100000 + b'","message":"x"}',
            b"\x00" * 100,
        ]
    )
    return Case("bad_publish", [post("/v1/events", body)])


def _ws(kind: str, rng: random.Random, frames: bytes, *, eof: bool = False) -> Case:
    path = rng.choice([SUB_PATH, SUB_PATH + "&batch=1", "/v1/ws/subscribe"])
    first = head(handshake(path))
    if rng.random() < 0.3:  # the frames in the same write as the handshake
        return Case(kind, [first + frames], eof=eof, abort=rng.random() < 0.2)
    return Case(kind, [first, frames], wait_head=True, eof=eof, abort=rng.random() < 0.2)


def g_ws_opcode(rng: random.Random) -> Case:
    opcode = rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    return _ws("ws_reserved_opcode", rng, ws_frame(opcode, rng.randbytes(rng.randrange(0, 200))))


def g_ws_rsv(rng: random.Random) -> Case:
    rsv = rng.randint(1, 7)
    frame = rng.choice(
        [
            ws_frame(OP_TEXT, json.dumps(PING).encode(), rsv=rsv),
            ws_frame(OP_PING, b"p", rsv=rsv),
            ws_frame(OP_TEXT, b"\x78\x9c" + rng.randbytes(30), rsv=1),  # "compressed"
        ]
    )
    return _ws("ws_reserved_bits", rng, frame)


def g_ws_unmasked(rng: random.Random) -> Case:
    frame = rng.choice(
        [
            ws_frame(OP_TEXT, json.dumps(PING).encode(), masked=False),
            ws_frame(OP_PING, b"p", masked=False),
            ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=False),
        ]
    )
    return _ws("ws_unmasked", rng, frame)


def g_ws_invalid_utf8(rng: random.Random) -> Case:
    bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
    frames = rng.choice(
        [
            ws_frame(OP_TEXT, bad),
            ws_frame(OP_TEXT, b'{"event_type":"health","message":"ping","id":"' + bad + b'"}'),
            ws_frame(OP_TEXT, b'{"a":"\xe2\x82', fin=False) + ws_frame(OP_CONT, b'\xac"}'),
            ws_frame(OP_TEXT, b"ok", fin=False) + ws_frame(OP_CONT, bad),
            close_frame(1000, bad),
        ]
    )
    return _ws("ws_invalid_utf8", rng, frames)


def g_ws_huge_length(rng: random.Random) -> Case:
    length = rng.choice((2**63 - 1, 2**64 - 1, 2**32, 10_000_000, 262_145))
    opcode = rng.choice((OP_TEXT, OP_BINARY, OP_PING, OP_CONT))
    frame = ws_frame(opcode, rng.randbytes(rng.randrange(0, 64)), length=length)
    return _ws("ws_huge_length", rng, frame, eof=rng.random() < 0.5)


def g_ws_truncated(rng: random.Random) -> Case:
    frame = rng.choice([text(PING), ws_frame(OP_BINARY, b"b" * 300), close_frame(1000, b"bye")])
    cut = rng.randrange(1, len(frame))
    return _ws("ws_truncated", rng, frame[:cut], eof=rng.random() < 0.5)


def g_ws_fragmented_control(rng: random.Random) -> Case:
    frames = rng.choice(
        [
            ws_frame(OP_PING, b"a", fin=False) + ws_frame(OP_CONT, b"b"),
            ws_frame(OP_CLOSE, (1000).to_bytes(2, "big"), fin=False),
            ws_frame(OP_PING, b"p" * 200),  # control frames carry at most 125 bytes
            ws_frame(OP_PONG, b"p" * 126),
            ws_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"r" * 200),
            ws_frame(OP_TEXT, b'{"a":', fin=False) + ws_frame(OP_PING, b"x", fin=False),
        ]
    )
    return _ws("ws_fragmented_control", rng, frames)


def g_ws_bad_fragmentation(rng: random.Random) -> Case:
    ping = json.dumps(PING).encode()
    frames = rng.choice(
        [
            ws_frame(OP_CONT, ping),
            ws_frame(OP_TEXT, ping[:5], fin=False) + text(PING),
            ws_frame(OP_TEXT, ping[:5], fin=False) + ws_frame(OP_BINARY, b"b"),
            ws_frame(OP_TEXT, ping[:5], fin=False)
            + ws_frame(OP_PING, b"")
            + ws_frame(OP_CONT, ping[5:]),
            ws_frame(OP_TEXT, ping[:1], fin=False)
            + b"".join(ws_frame(OP_CONT, ping[i : i + 1], fin=False) for i in range(1, len(ping)))
            + ws_frame(OP_CONT, b""),
            ws_frame(OP_TEXT, b"", fin=False) + ws_frame(OP_CONT, b"", fin=False) * 5000,
            ws_frame(OP_BINARY, b"x" * 1000, fin=False) * 300,
        ]
    )
    return _ws("ws_bad_fragmentation", rng, frames, eof=rng.random() < 0.3)


def g_ws_deep_json(rng: random.Random) -> Case:
    depth = rng.choice((2000, 2000, 20000))
    payload = rng.choice(
        [
            deep_json(depth, rng),
            b'{"event_type":"health","message":"ping","id":"d","body":'
            + deep_json(depth, rng)
            + b"}",
            b'{"event_type":"health","message":"ping","id":' + deep_json(depth, rng) + b"}",
        ]
    )
    return _ws("ws_deep_json", rng, ws_frame(OP_TEXT, payload))


def g_ws_ping_flood(rng: random.Random) -> Case:
    n = rng.choice((500, 2000, 5000))
    frames = rng.choice(
        [
            ws_frame(OP_PING, b"flood") * n,
            text(PING) * (n // 2),
            ws_frame(OP_PONG, b"") * n,
            (ws_frame(OP_PING, b"") + text({"event_type": "system", "message": "client-id"}))
            * (n // 4),
        ]
    )
    return _ws("ws_ping_flood", rng, frames)


def g_ws_close(rng: random.Random) -> Case:
    code = rng.choice((0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535))
    frames = rng.choice(
        [
            close_frame(code),
            ws_frame(OP_CLOSE, b"\x03"),
            close_frame(1000) + text(PING) * 3,
            close_frame(1000) + close_frame(1000),
        ]
    )
    return _ws("ws_close_codes", rng, frames)


def g_ws_random(rng: random.Random) -> Case:
    return _ws("ws_random_bytes", rng, rng.randbytes(rng.choice((1, 2, 64, 4096))))


def g_ws_big_message(rng: random.Random) -> Case:
    frame = rng.choice(
        [
            ws_frame(OP_TEXT, b'"' + b"x" * 300_000 + b'"'),
            ws_frame(OP_BINARY, rng.randbytes(100_000)),
            ws_frame(OP_TEXT, b'"' + b"\xc3\xa9" * 40_000 + b'"'),  # 80 kB, 40k characters
        ]
    )
    return _ws("ws_big_message", rng, frame)


def g_ws_valid_then_junk(rng: random.Random) -> Case:
    return _ws("ws_valid_then_junk", rng, text(PING) + rng.randbytes(rng.randrange(1, 300)))


GENERATORS: list[Gen] = [
    g_random_bytes,
    g_request_then_random,
    g_truncated_handshake,
    g_truncated_request_line,
    g_huge_header,
    g_many_headers,
    g_huge_url,
    g_length_conflicts,
    g_bad_ws_headers,
    g_upgrade_junk_noauth,
    g_upgrade_junk_auth,
    g_get_junk,
    g_weird_request,
    g_fin_before_request,
    g_channel_query,
    g_unsubscribe,
    g_deep_publish,
    g_bad_publish,
    g_ws_opcode,
    g_ws_rsv,
    g_ws_unmasked,
    g_ws_invalid_utf8,
    g_ws_huge_length,
    g_ws_truncated,
    g_ws_fragmented_control,
    g_ws_bad_fragmentation,
    g_ws_deep_json,
    g_ws_ping_flood,
    g_ws_close,
    g_ws_random,
    g_ws_big_message,
    g_ws_valid_then_junk,
]


def make_cases(seed: int, count: int) -> list[Case]:
    """`count` cases, every generator used about equally often, in a seeded random order."""
    rng = random.Random(seed)
    gens = (GENERATORS * (count // len(GENERATORS) + 1))[:count]
    rng.shuffle(gens)
    cases = [gen(rng) for gen in gens]
    for i, case in enumerate(cases):
        case.index = i
    return cases


# -- playing a case ------------------------------------------------------------------------


@dataclass
class Played:
    received: bytes = b""
    closed: bool = False  # the server closed (EOF) within the read window
    note: str = ""

    def statuses(self) -> list[int]:
        data = self.received
        if not data.startswith(b"HTTP/"):
            return []
        if data.startswith(b"HTTP/1.1 101"):
            return [101]
        return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3})", data)]

    def label(self) -> str:
        statuses = self.statuses()
        if statuses == [101]:
            frames, _ = server_frames(self.received.partition(b"\r\n\r\n")[2])
            closes = [p for op, p in frames if op == OP_CLOSE]
            what = "101, " + (
                f"close {int.from_bytes(closes[0][:2], 'big') if closes[0] else 1005}"
                if closes
                else f"{len(frames)} frames"
            )
        elif statuses:
            what = "+".join(str(s) for s in statuses[:3]) + ("+..." if len(statuses) > 3 else "")
        elif self.received:
            what = f"non-HTTP answer {self.received[:20]!r}"
        else:
            what = "no answer"
        state = self.note or ("closed" if self.closed else "left open")
        return f"{what}, {state}"


def set_rst_on_close(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))


async def play(port: int, case: Case, read_for: float = READ_FOR) -> Played:
    """Send the case from a fresh source address, read for `read_for`, close."""
    out = Played()
    received = bytearray()
    try:
        with trio.fail_after(WAIT):
            stream = await raw_connect(port)
    except (OSError, trio.TooSlowError) as exc:
        return Played(note=f"connect failed: {exc!r}")
    try:
        for i, data in enumerate(case.writes):
            if data:
                with trio.move_on_after(SEND_TIMEOUT) as scope:
                    await stream.send_all(data)
                if scope.cancelled_caught:
                    out.note = "send stalled (server not reading)"
                    break
            if i == 0 and case.wait_head:
                with trio.move_on_after(HEAD_TIMEOUT):
                    while b"\r\n\r\n" not in received and not out.closed:
                        chunk = await stream.receive_some(65536)
                        out.closed = not chunk
                        received += chunk
                if not received.startswith(b"HTTP/1.1 101"):
                    break
            if case.pause:
                await trio.sleep(case.pause)
        if case.eof and not out.closed and not out.note:
            await stream.send_eof()
        with trio.move_on_after(read_for):
            while not out.closed:
                chunk = await stream.receive_some(65536)
                out.closed = not chunk
                if len(received) < 1 << 20:
                    received += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        out.note = type(cause).__name__
    finally:
        if case.abort:
            set_rst_on_close(stream)
        await stream.aclose()
    out.received = bytes(received)
    return out


# -- is the daemon still well? -------------------------------------------------------------


def traceback_lines(server: HubdProcess, since: int = 0) -> list[str]:
    return [line for line in server.lines[since:] if "Traceback" in line]


def error_summaries(lines: Sequence[str]) -> list[str]:
    """The exception lines ("pkg.Error: message") of the tracebacks in `lines`, deduplicated."""
    found: list[str] = []
    pattern = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception|Group)\b[^\n]*?)\s*$")
    for line in lines:
        for piece in line.split("\\n"):  # a log record may hold a whole traceback escaped
            piece = piece.strip(" |+")
            if (m := pattern.match(piece)) and ":" in m[1] and m[1] not in found:
                found.append(m[1][:240])
    return found


async def health_problem(port: int) -> str | None:
    try:
        with trio.fail_after(HEALTH_TIMEOUT):
            stream = await raw_connect(port)
            try:
                await stream.send_all(
                    b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            finally:
                await stream.aclose()
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        return f"GET /v1/health failed: {exc!r}"
    if not answer.startswith(b"HTTP/1.1 200"):
        return f"GET /v1/health answered {answer[:120]!r}"
    return None


async def log_barrier(server: HubdProcess) -> None:
    """Wait until the daemon has written the log lines of what it did before now: a
    subscriber from a fresh address comes and goes, and its `closed` line is awaited
    (the daemon writes its lines in order). A daemon too unwell for that is left to the
    checks that follow."""
    ip = client_ip()
    try:
        with trio.fail_after(HEALTH_TIMEOUT):
            async with subscribe(server.port, "pdfm", ip=ip):
                pass
        await server.wait_for_line(
            re.compile(rf"\bclosed .*ip={re.escape(ip)} "), within=HEALTH_TIMEOUT
        )
    except Exception:  # refused, timed out, gone: what daemon_problem reports next
        return


async def daemon_problem(server: HubdProcess, since: int = 0) -> str | None:
    """Why the daemon is not well (new tracebacks, exited, no health), or None."""
    await log_barrier(server)
    problems: list[str] = []
    tracebacks = traceback_lines(server, since)
    if tracebacks:
        errors = error_summaries(server.lines[since:]) or [tracebacks[0][:240]]
        problems.append(f"logged {len(tracebacks)} traceback(s): {' | '.join(errors[:3])}")
    if server.process.returncode is not None:
        problems.append(f"hubd exited with {server.process.returncode}")
    elif why := await health_problem(server.port):
        problems.append(why)
    return "; ".join(problems) or None


async def delivery_problem(server: HubdProcess) -> str | None:
    """None if a fresh subscriber receives a freshly published event, else why not."""
    marker = uuid.uuid4().hex
    try:
        with trio.fail_after(WAIT):
            async with subscribe(server.port, "pdfm") as sub:
                async with http_client(server.url) as http:
                    response = await http.post(
                        "/v1/events", json=event(body={"probe": marker}), headers=PUB
                    )
                if response.status_code != 202:
                    return f"publishing the probe event answered {response.status_code}"
                await sub.until(lambda e: e.get("body") == {"probe": marker})
    except Exception as exc:
        return f"a fresh subscriber did not get a fresh event: {exc!r}"
    return None


async def assert_serving(server: HubdProcess, context: str) -> None:
    problem = await daemon_problem(server) or await delivery_problem(server)
    if problem is not None:
        pytest.fail(f"{context}:\n  {problem}\n{output_tail(server)}", pytrace=False)


def output_tail(server: HubdProcess, lines: int = 12) -> str:
    shown = [line[:400] for line in server.lines if "Traceback" in line or "ERROR" in line]
    shown = shown[:4] + [line[:300] for line in server.lines[-lines:]]
    return "hubd output (errors, then the last lines):\n    " + "\n    ".join(shown)


# -- the barrage ---------------------------------------------------------------------------


@dataclass
class Barrage:
    start_hubd: StartHubd
    server: HubdProcess
    findings: list[str] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)  # traits known to hurt the daemon
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    restarts: int = 0
    played: int = 0

    def note(self, finding: str) -> None:
        if finding not in self.findings:  # a case replayed after a restart says it again
            self.findings.append(finding)

    async def restart(self) -> None:
        self.restarts += 1
        await self.server.aclose()
        self.server = await self.start_hubd(server=SERVER, hub=HUB)

    async def play_chunk(self, chunk: Sequence[Case]) -> None:
        async def one(case: Case) -> None:
            played = await play(self.server.port, case)
            self.outcomes.setdefault(case.kind, Counter())[played.label()] += 1
            # 500: a client's bytes broke a handler (501 and 505 are correct answers to an
            # unknown transfer coding or HTTP version).
            if 500 in played.statuses():
                self.note(f"{case.describe()}\n    -> answered {played.label()}")

        async with trio.open_nursery() as nursery:
            for case in chunk:
                nursery.start_soon(one, case)
        self.played += len(chunk)

    async def pinpoint(self, chunk: Sequence[Case]) -> tuple[int | None, bool]:
        """Replay `chunk` one case at a time on a fresh daemon until one hurts it; record
        it, leave out what it stands for, and return its position in `chunk` (None: no
        single case does) and whether the daemon running now is well."""
        await self.restart()
        for pos, case in enumerate(chunk):
            mark = len(self.server.lines)
            played = await play(self.server.port, case, PINPOINT_READ_FOR)
            problem = await daemon_problem(self.server, mark)
            if problem is None:
                continue
            finding = f"{case.describe()}\n    -> answered {played.label()}; then {problem}"
            split = case.split()
            if split is not None:
                # Is it the pipelining? The same bytes, sent once the 101 (or refusal) is in.
                await self.restart()
                answer = (await play(self.server.port, split, PINPOINT_READ_FOR)).label()
                if await daemon_problem(self.server) is None:
                    self.excluded.add(PIPELINED)
                    self.note(
                        f"{finding}\n    (the same bytes sent after the answer to the "
                        f"handshake ({answer}) do no harm: the pipelining does)"
                    )
                    return pos, True
            self.excluded.add(case.kind)
            self.note(finding)
            return pos, False
        return None, False


async def test_adversarial_barrage(start_hubd: StartHubd) -> None:
    cases = make_cases(SEED, CASES)
    deadline = trio.current_time() + BUDGET
    barrage = Barrage(start_hubd, await start_hubd(server=SERVER, hub=HUB))
    queue = [cases[i : i + CHUNK] for i in range(0, len(cases), CHUNK)]
    skipped = 0
    since_full_check = 0
    while queue:
        planned = queue.pop(0)
        chunk = [c for c in planned if not c.traits & barrage.excluded]
        skipped += len(planned) - len(chunk)  # of a kind already known to hurt it
        if not chunk:
            continue
        if trio.current_time() > deadline or barrage.restarts >= MAX_RESTARTS:
            barrage.findings.append(
                f"stopped early (time budget or {MAX_RESTARTS} restarts) before case "
                f"#{chunk[0].index}; {sum(len(c) for c in queue) + len(chunk)} cases not played"
            )
            break
        mark = len(barrage.server.lines)
        await barrage.play_chunk(chunk)
        since_full_check += len(chunk)
        problem = await daemon_problem(barrage.server, mark)
        if problem is None and since_full_check >= FULL_CHECK_EVERY:
            since_full_check = 0
            problem = await delivery_problem(barrage.server)
        if problem is None:
            continue
        span = f"cases #{chunk[0].index}-#{chunk[-1].index}"
        barrage.findings.append(f"after {span} (played together): {problem}")
        position, well = await barrage.pinpoint(chunk)
        if position is None:
            barrage.findings.append(f"  no single case of {span} hurts it alone")
        else:  # go on with the rest of the chunk, without what was found
            queue.insert(0, list(chunk[position + 1 :]))
        if not well:
            await barrage.restart()
        since_full_check = 0

    final = await daemon_problem(barrage.server) or await delivery_problem(barrage.server)
    if final is not None:
        barrage.findings.append(f"at the end: {final}")

    print(
        f"adversarial barrage: seed={SEED} cases={len(cases)} played={barrage.played} "
        f"skipped={skipped} (already found to hurt hubd) restarts={barrage.restarts}"
    )
    for kind, counts in sorted(barrage.outcomes.items()):
        print(f"  {kind}: " + ", ".join(f"{n}x {label}" for label, n in counts.most_common()))
    if barrage.findings:
        pytest.fail(
            f"hubd was hurt by the adversarial barrage (seed={SEED}, {len(cases)} cases, "
            f"reproduce with HUBD_ADVERSARIAL_SEED={SEED}); {barrage.restarts} restart(s); "
            f"what hurt it: {'; '.join(sorted(barrage.excluded)) or '-'}\n  - "
            + "\n  - ".join(barrage.findings)
            + f"\n{output_tail(barrage.server)}",
            pytrace=False,
        )


def test_cases_are_reproducible() -> None:
    """The same seed gives the same bytes (what makes a failure report replayable)."""
    a, b = make_cases(SEED, 64), make_cases(SEED, 64)
    assert [(c.kind, c.writes, c.eof, c.abort) for c in a] == [
        (c.kind, c.writes, c.eof, c.abort) for c in b
    ]
    assert {c.kind for c in make_cases(SEED, len(GENERATORS))} == {
        g(random.Random(0)).kind for g in GENERATORS
    }


# -- focused regressions -------------------------------------------------------------------

STARTING_METRICS = re.compile(r"\bstarting\b.*\bmetrics=([0-9.]+):(\d+)")
PIPELINED_GET = head([b"GET /v1/health HTTP/1.1", HOST_LINE])


async def metrics_port(server: HubdProcess) -> int:
    match = await server.wait_for_line(STARTING_METRICS)
    return int(match[2])


async def read_response(stream: trio.SocketStream, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """One Content-Length framed response: (head, body); raises if the server closes first."""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"the server closed before a whole response head: {buffer!r}"
            buffer += chunk
        response_head, _, body = buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", response_head)
        want = int(length[1]) if length else 0
        while len(body) < want:
            chunk = await stream.receive_some(65536)
            assert chunk, f"the server closed inside the body: {response_head!r} {body!r}"
            body += chunk
    return response_head, body


@pytest.mark.parametrize("trailing", [b"x", PIPELINED_GET], ids=["x", "pipelined-get"])
@pytest.mark.parametrize("listener", ["main", "metrics"])
async def test_refused_upgrade_with_trailing_bytes_keeps_daemon_serving(
    start_hubd: StartHubd, listener: str, trailing: bytes
) -> None:
    """`GET /v1/ws/subscribe ...\\r\\n\\r\\nx` without credentials (refused: 401 on the main
    listener, 404 on the metrics listener) must not take the process down."""
    server = await start_hubd(server=SERVER, hub=HUB, metrics={"listen": f"{HOST}:0"})
    port = server.port if listener == "main" else await metrics_port(server)
    assert port != 0
    case = Case("trailing_bytes", [head(handshake(auth=False)) + trailing])
    played = await play(port, case, read_for=2.0)
    statuses = played.statuses()
    assert not statuses or 400 <= statuses[0] < 500, (
        f"{case.describe()} on the {listener} listener answered {played.received[:300]!r}"
    )
    await assert_serving(server, f"after {case.data!r} on the {listener} listener")


async def test_close_frame_after_reading_the_401(start_hubd: StartHubd) -> None:
    """A client that reads the refusal and answers with a WebSocket close frame (as if it
    had been upgraded) is a client error, never the daemon's end."""
    server = await start_hubd(server=SERVER, hub=HUB)
    stream = await raw_connect(server.port)
    try:
        await stream.send_all(head(handshake(auth=False)))
        response_head, body = await read_response(stream)
        assert response_head.startswith(b"HTTP/1.1 401"), (response_head, body)
        assert json.loads(body)["error"] == "unauthorized", body
        try:
            await stream.send_all(close_frame(1000, b"bye"))
            with trio.move_on_after(1.0):
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server had closed: fine
    finally:
        await stream.aclose()
    await assert_serving(server, "after a close frame sent on a refused (401) upgrade")


async def read_101(stream: trio.SocketStream) -> bytes:
    """Read up to the end of the server's 101 and return what came after it."""
    buffer = b""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed during the handshake: {buffer!r}"
            buffer += chunk
    response_head, _, rest = buffer.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 101"), response_head
    return rest


# Pings in one write with the handshake, and the frame burst that lets them all through:
# two, and more than 64 KiB of them (which Hypercorn's own stream, serving WebSockets with
# compression on, reads while the handshake is decided, and closes with 1008; hubd's own
# WebSocket reads nothing until it has accepted, so they all wait in the socket).
PIPELINED_PINGS = {"two": (2, 200), "over-64-KiB": (1000, 1000)}


@pytest.mark.parametrize("count,burst", list(PIPELINED_PINGS.values()), ids=list(PIPELINED_PINGS))
async def test_first_frames_pipelined_with_the_handshake_are_served(
    start_hubd: StartHubd, count: int, burst: int
) -> None:
    """Handshake and pings in one write: confirmation first, then every pong, in order;
    the connection then receives published events like any other."""
    server = await start_hubd(server=SERVER, hub={**HUB, "client_frames_burst": burst})
    pings = [{**PING, "id": f"pipelined-{i}"} for i in range(1, count + 1)]
    if count > 2:
        assert sum(len(text(p)) for p in pings) > 65536
    stream = await raw_connect(server.port)
    texts: list[dict[str, Any]] = []
    try:
        await stream.send_all(head(handshake()) + b"".join(text(p) for p in pings))
        buffer = await read_101(stream)

        async def read_until(done: Callable[[], bool]) -> None:
            nonlocal buffer
            with trio.fail_after(WAIT):
                while not done():
                    frames, buffer = server_frames(buffer)
                    for opcode, payload in frames:
                        assert opcode != OP_CLOSE, f"closed: {payload!r} after {texts}"
                        if opcode == OP_TEXT:
                            texts.append(json.loads(payload))
                    if done():
                        break
                    chunk = await stream.receive_some(65536)
                    assert chunk, f"the server closed the connection after {texts}"
                    buffer += chunk

        def pongs() -> list[dict[str, Any]]:
            return [t for t in texts if t.get("message") == "pong"]

        await read_until(lambda: len(pongs()) >= count)
        assert texts[0]["message"] == CONFIRMATION_MESSAGE, texts
        assert [p["ref_id"] for p in pongs()] == [p["id"] for p in pings], texts

        marker = uuid.uuid4().hex
        async with http_client(server.url) as http:
            response = await http.post("/v1/events", json=event(body={"m": marker}), headers=PUB)
            assert response.status_code == 202, response.text
        await read_until(lambda: any(t.get("body") == {"m": marker} for t in texts))
        await stream.send_all(close_frame(1000))
    finally:
        await stream.aclose()
    await assert_serving(server, "after a handshake with its first frames pipelined")


async def test_a_message_over_four_times_the_limit_is_closed_with_1009_and_a_reason(
    start_hubd: StartHubd,
) -> None:
    """A message over 4 x hub.max_message_bytes, sent in fragments so that no frame alone is
    over it, is refused before it is read whole: close 1009 naming the limit, in the close
    frame and in the `closed` log line."""
    server = await start_hubd(server=SERVER, hub={**HUB, "max_message_bytes": 1000})
    stream = await raw_connect(server.port)
    try:
        await stream.send_all(head(handshake()))
        buffer = await read_101(stream)
        fragments = [ws_frame(OP_TEXT, b"x" * 900, fin=False)]
        fragments += [ws_frame(OP_CONT, b"x" * 900, fin=False) for _ in range(5)]
        await stream.send_all(b"".join(fragments))  # 5,400 characters in all, none alone over
        closes: list[bytes] = []
        with trio.fail_after(WAIT):
            while not closes:
                frames, buffer = server_frames(buffer)
                closes = [payload for opcode, payload in frames if opcode == OP_CLOSE]
                if not closes:
                    chunk = await stream.receive_some(65536)
                    assert chunk, "closed without a close frame"
                    buffer += chunk
        code, reason = int.from_bytes(closes[0][:2], "big"), closes[0][2:].decode()
        assert (code, reason) == (1009, "message too big: over 4000 bytes")
    finally:
        await stream.aclose()
    await server.wait_for_line(re.compile(r"closed .*code=1009 reason=.message too big: over 4000"))
    await assert_serving(server, "after a fragmented message over the server layer's limit")
