"""The thin adapter between HTTP/WebSocket and the core."""
