"""The Python client library for hubd (trio): subscribe with heartbeats, reconnects and
resume; publish; unsubscribe; read clients and stats. See docs/client.md.

    async with HubClient("http://127.0.0.1:8080", Credentials(token="...")) as client:
        async with client.subscribe(["pdfm"]) as events:
            async for event in events:
                print(event.event_type, event.message, event.body)
"""

from hubd.client.api import MAX_BATCH, MAX_REQUEST_BYTES, HubClient
from hubd.client.errors import (
    AuthError,
    ClientError,
    ConflictError,
    Disconnected,
    ForbiddenError,
    HubdError,
    NetworkError,
    ProtocolError,
)
from hubd.client.models import (
    ChannelStats,
    ClientInfo,
    Connected,
    Credentials,
    DeliveryLatency,
    Event,
    FrameError,
    Gap,
    GapReason,
    Notice,
    Reconnecting,
    Resumed,
    Stats,
    Unsubscribed,
    UnsubscribeResult,
    WhoAmI,
)
from hubd.client.subscription import Subscription

__all__ = [
    "MAX_BATCH",
    "MAX_REQUEST_BYTES",
    "AuthError",
    "ChannelStats",
    "ClientError",
    "ClientInfo",
    "ConflictError",
    "Connected",
    "Credentials",
    "DeliveryLatency",
    "Disconnected",
    "Event",
    "ForbiddenError",
    "FrameError",
    "Gap",
    "GapReason",
    "HubClient",
    "HubdError",
    "NetworkError",
    "Notice",
    "ProtocolError",
    "Reconnecting",
    "Resumed",
    "Stats",
    "Subscription",
    "UnsubscribeResult",
    "Unsubscribed",
    "WhoAmI",
]
