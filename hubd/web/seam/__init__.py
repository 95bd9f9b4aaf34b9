"""hubd's seam with Hypercorn's internals.

Contract: this package is the only place in hubd that imports Hypercorn's private modules
(`hypercorn.protocol.*`, `hypercorn.trio.tcp_server`, `hypercorn.trio.worker_context`,
`hypercorn.trio.lifespan`, `hypercorn.trio.task_group`, `hypercorn.events`,
`hypercorn.app_wrappers`, `hypercorn.utils`, `hypercorn.typing`). Outside it hubd uses
only Hypercorn's public `hypercorn.config.Config`, and this package's modules. It is
written against Hypercorn ==0.18.0 (pinned in pyproject.toml) and guarded by
`tests/unit/test_hypercorn_seam.py` (the upstream behaviour worked around here, digests
of the upstream functions re-implemented here, the hooks overridden) and by the
end-to-end checks that a real connection's `connected` log line says `write=direct`
(`tests/e2e/test_observability.py`, `tests/e2e/test_hostile_connections.py`).

The modules, by job:

- `worker`: `serve`, in place of Hypercorn's trio worker: lifespan, listeners, shutdown.
- `accept`: the accept loop and the guard around every connection.
- `connection`: `HubdTCPServer`, Hypercorn's per-connection server with hubd's limits.
- `protocol`: hubd's subclasses of Hypercorn's `H11Protocol` and `WSStream`.
- `throttle`: rate-limited logging for recurring conditions and Hypercorn's error log.
- `native`: `NativeWebSocket`, a WebSocket upgrade served on the connection's own task.
- `native_http`: `NativeRequest`, a publish request served on the connection's own task.
- `inline`: what those two share (running the app on that task, whole writes).
- `direct_write`: `HypercornTransport`, frames written straight to Hypercorn's socket
  (WebSockets Hypercorn's stream serves: TLS, compression).

What hubd adds to Hypercorn's trio worker:

- **A failure inside one connection ends that connection only.** Hypercorn's WebSocket
  error path can raise h11's `LocalProtocolError` into the server's nursery when bytes
  arrive around a refused or not yet accepted upgrade (pgjones/hypercorn#225), which
  ends every listener. Each connection runs inside a guard that logs the failure once, at
  warning, with the peer, and closes that socket.
- **Time limits before a connection is useful.** The request line and headers must be
  complete within `server.handshake_timeout` of the connection opening, and of the first
  byte of each later keep-alive request (Hypercorn alone gives them the 75 s keep-alive).
  A connection whose peer sends FIN before a request is released at once instead of
  waiting in CLOSE_WAIT for the keep-alive timer.
- **The documented header limit.** Hypercorn reads 64 KiB at a time and h11 checks its
  limit only between reads, so up to twice `h11_max_incomplete_size` got through; reads
  while a request head is incomplete are sized so h11 sees the limit exactly (431).
- **HTTP/2 only when configured.** With `server.http2` off, ALPN offers only http/1.1 and
  `Upgrade: h2c` / the h2 preface are not switched to HTTP/2.
- **Protocol errors close with their code.** wsproto reports a malformed client frame
  (unmasked, reserved bits, unknown opcode: 1002; invalid UTF-8: 1007); Hypercorn dropped
  the TCP connection without a close frame (the client saw 1006). The close frame is sent
  with the code, the app is told the code and the reason, and the log says what happened.
- **Accept backs off on EMFILE/ENFILE/ENOMEM/ENOBUFS** and says so once per interval,
  not once per retry with a traceback.
- **Direct frame writes.** Pre-built WebSocket frames go to the socket under Hypercorn's
  own send lock, without one ASGI message and one wsproto frame build per delivery.
- **One task per WebSocket.** Over plain HTTP/1.1 with compression off, a WebSocket
  upgrade is served on the connection's task (`native`), without Hypercorn's app task,
  memory channel and `WSStream`, and so is a publish request (`native_http`); the
  connection's idle time (keep-alive, the first request head) is a deadline on its reads,
  not a timer task per request.
"""
