"""The worst-case memory `check-config` prints, and its trusted-proxy warnings, as plain
functions of the settings."""

from __future__ import annotations

import pytest

from hubd.budget import (
    ENVELOPE_BYTES,
    FRAME_COPIES,
    FRAME_OVERHEAD,
    NUMBER_EXPANSION,
    SLOT_BYTES,
    human,
    memory_budget,
    memory_lines,
)
from hubd.core.clientip import trusted_proxy_warnings
from hubd.core.history import ENTRY_OVERHEAD
from hubd.core.serving import WRITE_BATCH

from .conftest import make_settings

SMALL = """
[limits]
max_connections = 20
[hub]
channels = ["builds"]
queue_size = 100
batch_max = 10
max_publish_bytes = 1000
history_size = 50
"""
EVENT = 1000 * NUMBER_EXPANSION + ENVELOPE_BYTES
FRAME = FRAME_COPIES * EVENT + FRAME_OVERHEAD
CHANNELS = 6  # five built-in, and builds


def test_queues_count_every_frame_distinct_and_shared_broadcasts_per_channel() -> None:
    b = memory_budget(make_settings(SMALL + "history_max_bytes = 1000000000\n"))
    assert (b.event_bytes, b.frame_bytes, b.channels) == (EVENT, FRAME, CHANNELS)
    # batch_max 10 is below what a writer takes outside batch mode.
    per_connection = 100 + WRITE_BATCH
    assert b.frames_per_connection == per_connection
    assert b.queues_distinct == 20 * per_connection * FRAME
    assert b.queues_shared == CHANNELS * per_connection * FRAME + 20 * per_connection * SLOT_BYTES
    assert b.queues_shared < b.queues_distinct


def test_a_large_batch_max_adds_what_a_writer_holds() -> None:
    b = memory_budget(make_settings(SMALL.replace("batch_max = 10", "batch_max = 500")))
    assert b.frames_per_connection == 600


def test_history_is_the_smaller_of_its_byte_bound_and_its_count_bound() -> None:
    by_count = CHANNELS * 50 * (EVENT + ENTRY_OVERHEAD)
    roomy = memory_budget(make_settings(SMALL + f"history_max_bytes = {10 * by_count}\n"))
    assert roomy.history == FRAME_COPIES * by_count
    tight = memory_budget(make_settings(SMALL + "history_max_bytes = 4096\n"))
    assert tight.history == FRAME_COPIES * 4096
    assert (tight.redis_history, roomy.redis_history) == (0, 0)


@pytest.mark.parametrize("off", ["history_size = 0", "history_max_bytes = 0"])
def test_no_history_kept_is_none(off: str) -> None:
    settings = make_settings(SMALL.replace("history_size = 50", off))
    assert memory_budget(settings).history == 0
    assert memory_lines(settings)[1].startswith("memory: history none")


def test_with_redis_the_history_is_in_redis_and_not_bounded_by_bytes() -> None:
    settings = make_settings(SMALL + 'history_max_bytes = 4096\n[backplane]\nkind = "redis"\n')
    b = memory_budget(settings)
    assert b.history == 0
    assert b.redis_history == CHANNELS * 50 * EVENT
    assert "kept in Redis" in memory_lines(settings)[1]


def test_defaults_print_two_lines_naming_the_keys() -> None:
    queues, history = memory_lines(make_settings())
    assert queues.startswith("memory: queues up to 175.8 TiB if every queued frame is a distinct")
    assert "90.2 GiB if they are broadcasts" in queues
    for key in ("limits.max_connections 10000", "hub.queue_size 2048", "hub.max_publish_bytes"):
        assert key in queues
    assert history == (
        "memory: history up to 128.0 MiB: hub.history_max_bytes 64.0 MiB, x2 for framed copies"
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (64 << 20, "64.0 MiB"),
        (3 << 30, "3.0 GiB"),
        (1536 << 40, "1.5 PiB"),
        (5000 << 50, "5000.0 PiB"),
    ],
)
def test_human_units(n: int, text: str) -> None:
    assert human(n) == text


# -- trusted proxy warnings ----------------------------------------------------------------


def test_ordinary_proxy_ranges_are_not_warned_about() -> None:
    ok = ["10.0.0.0/8", "127.0.0.1", "192.168.1.0/24", "fd00::/32", "2001:db8:1::/48", "::1"]
    assert trusted_proxy_warnings(ok, "x-forwarded-for") == []
    assert trusted_proxy_warnings([], "x-forwarded-for") == []


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_trusting_everyone_is_warned_about(cidr: str) -> None:
    (warning,) = trusted_proxy_warnings(["10.0.0.0/8", cidr], "x-forwarded-for")
    assert warning.startswith(f"limits.trusted_proxies[1] = {cidr!r} trusts every IPv")
    assert "dodge the one-connection-per-IP rule" in warning


@pytest.mark.parametrize("cidr", ["8.0.0.0/7", "100.0.0.0/1", "2000::/16", "2001:db8::/31"])
def test_ranges_wider_than_a_slash_8_or_32_are_warned_about(cidr: str) -> None:
    (warning,) = trusted_proxy_warnings([cidr], "x-real-ip")
    assert warning.startswith(f"limits.trusted_proxies[0] = {cidr!r} is wider than /")
    assert "x-real-ip" in warning


@pytest.mark.parametrize("cidr", ["::ffff:10.0.0.0/104", "::ffff:10.0.0.1"])
def test_ipv4_mapped_ranges_never_match_and_are_warned_about(cidr: str) -> None:
    (warning,) = trusted_proxy_warnings([cidr], "x-forwarded-for")
    assert "IPv4-mapped range, which never matches" in warning


def test_x_real_ip_without_any_trusted_proxy_is_warned_about() -> None:
    (warning,) = trusted_proxy_warnings([], "x-real-ip")
    assert warning.startswith("limits.client_ip_header = 'x-real-ip' is never read")
