#!/usr/bin/env bash
# Start hubd for the side-by-side harness: listens on 127.0.0.1:$PORT with the token the
# load generator uses ("bench", subscriber + publisher). Extra TOML for [hub] may be given
# in $HUBD_BENCH_HUB (e.g. 'batch_max = 256'). For runs beyond 20,000 connections, or whose
# clients stay silent for over a minute while the others connect (python -m bench curves):
# $HUBD_BENCH_MAX_CONNECTIONS (limits.max_connections, default 20000) and
# $HUBD_BENCH_IDLE_TIMEOUT (hub.idle_timeout, default 60.0).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF=$(mktemp /tmp/hubd-bench-XXXXXX.toml)
cat >"$CONF" <<TOML
[server]
listen = ["127.0.0.1:${PORT:-18080}"]
shutdown_timeout = 5.0

[hub]
idle_timeout = ${HUBD_BENCH_IDLE_TIMEOUT:-60.0}
${HUBD_BENCH_HUB:-}

[limits]
max_connections = ${HUBD_BENCH_MAX_CONNECTIONS:-20000}

[log]
level = "warning"

[[auth.tokens]]
name = "bench"
token = "${TOKEN:-bench}"
roles = ["admin"]
TOML
exec "$HERE/.venv/bin/hubd" serve --config "$CONF"
