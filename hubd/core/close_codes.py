"""The WebSocket close codes hubd sends, and how long a closing connection may take.

See docs/protocol.md for what each one tells a client to do."""

from __future__ import annotations

CLOSE_GOING_AWAY = 1001
# The client broke the WebSocket protocol (sent by the server layer, see hubd.web.seam).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
# Policy violation: the client kept sending frames over its rate limit.
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REVOKED = 4401
CLOSE_IDLE = 4408
# Seconds a closing connection may spend flushing its queue, and then its close frame.
CLOSE_GRACE = 2.0
