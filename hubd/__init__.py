"""hubd: a real-time infrastructure-event hub (publish over HTTP, subscribe over WebSocket)."""

__version__ = "0.1.0"
