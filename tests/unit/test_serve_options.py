"""What hubd asks of its HTTP server, from the settings (`web.server_config.serve_options`):
which requests are served on the connection's own task."""

from __future__ import annotations

from hubd.settings import load_settings_text
from hubd.web.publish_route import PUBLISH_PATHS
from hubd.web.server_config import serve_options

BASE = """
[[auth.tokens]]
name = "t"
token = "t"
roles = ["admin"]
"""


def test_publishing_and_websockets_are_served_on_the_connection_task_by_default() -> None:
    options = serve_options(load_settings_text(BASE))
    assert options.native_websockets
    assert options.native_paths == PUBLISH_PATHS == frozenset({"/v1/events", "/api/v1/events"})


def test_compression_leaves_websockets_to_the_servers_own_stream() -> None:
    """permessage-deflate is Hypercorn's WSStream's alone."""
    options = serve_options(load_settings_text(BASE + "\n[hub]\ncompression = true\n"))
    assert not options.native_websockets
    assert options.native_paths == PUBLISH_PATHS
