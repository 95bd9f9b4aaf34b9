"""An outbound frame: the encoded event, queued once per subscriber, built once in all."""

from __future__ import annotations

from hubd.protocol.wsframe import text_frame


class Frame:
    """One JSON text frame. `payload` is the UTF-8 JSON; `text` and `wire` (the WebSocket
    frame bytes) are derived on first use and cached, so every subscriber of an event
    shares the same objects. `accepted_at` is the trio time the hub accepted it (None for
    frames that are not published events, which the latency histogram skips). `channel`
    is the event_type it carries, for counting drops per channel (None: not an event)."""

    __slots__ = ("_text", "_wire", "accepted_at", "channel", "payload", "raw", "seq")

    def __init__(
        self,
        payload: bytes,
        accepted_at: float | None = None,
        channel: str | None = None,
        seq: int = 0,
    ) -> None:
        self.payload = payload
        self.accepted_at = accepted_at
        self.channel = channel
        # The event's publish position (0: not a published event).
        self.seq = seq
        self._text: str | None = None
        self._wire: bytes | None = None
        # True for bytes that are already on-the-wire WebSocket data (the rest of a frame
        # the kernel took only in part, or a control frame): written as they are, alone.
        self.raw = False

    @classmethod
    def wire_bytes(cls, data: bytes) -> Frame:
        """Bytes to write exactly as they are (no JSON payload behind them)."""
        frame = cls(b"")
        frame._wire = data
        frame.raw = True
        return frame

    def replayed(self) -> Frame:
        """The same event sent again from history: shares the bytes, but is not a fresh
        delivery for the latency histogram. The WebSocket framing is built here once, on
        the history's frame, so resuming connections share it instead of each building
        a copy."""
        frame = Frame(self.payload, None, self.channel, self.seq)
        frame._wire = self.wire
        return frame

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.payload.decode()
        return self._text

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = text_frame(self.payload)
        return self._wire

    def __repr__(self) -> str:
        return f"Frame({self.payload[:60]!r}...)"
