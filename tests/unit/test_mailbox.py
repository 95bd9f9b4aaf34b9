"""The bounded per-connection queue and its overflow policies."""

from __future__ import annotations

import pytest

from hubd.core.mailbox import Mailbox, MailboxStats, Overflow


def filled(capacity: int, policy: Overflow, items: list[str]) -> Mailbox:
    box = Mailbox(capacity, policy)
    for item in items:
        box.put(item)
    return box


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Mailbox(0, Overflow.DROP_OLDEST)


def test_overflow_policy_names_match_the_config_values() -> None:
    assert Overflow("drop_oldest") is Overflow.DROP_OLDEST
    assert Overflow("disconnect") is Overflow.DISCONNECT


async def test_bounded_and_fifo() -> None:
    box = filled(3, Overflow.DROP_OLDEST, ["a", "b", "c"])
    assert len(box) == 3
    assert box.take(10) == ["a", "b", "c"]
    assert len(box) == 0


async def test_drop_oldest_discards_the_oldest_and_counts() -> None:
    box = Mailbox(3, Overflow.DROP_OLDEST)
    assert all(box.put(x) for x in "abcde")
    assert len(box) == 3
    assert box.dropped_total == 2
    assert box.dropped_unreported == 2
    assert not box.closed and not box.overflowed
    assert box.take(10) == ["c", "d", "e"]


def test_take_unreported_drops_resets_only_the_unreported_count() -> None:
    box = filled(1, Overflow.DROP_OLDEST, ["a", "b", "c"])
    assert box.take_unreported_drops() == 2
    assert box.take_unreported_drops() == 0
    assert box.dropped_total == 2
    box.put("d")
    assert (box.dropped_unreported, box.dropped_total) == (1, 3)


async def test_disconnect_policy_closes_and_counts_everything_lost() -> None:
    box = filled(2, Overflow.DISCONNECT, ["a", "b"])
    assert box.put("c") is False
    assert box.overflowed and box.closed
    assert box.dropped_total == 3  # the two queued and the one refused
    assert box.dropped_unreported == 0
    assert len(box) == 0
    assert box.put("d") is False
    assert box.dropped_total == 4
    assert box.take(10) == []


def test_take_respects_max_items_and_order() -> None:
    box = filled(10, Overflow.DROP_OLDEST, [str(i) for i in range(7)])
    assert box.take(3) == ["0", "1", "2"]
    assert box.take(3) == ["3", "4", "5"]
    assert box.take(3) == ["6"]
    assert box.take(3) == []
    assert not box.closed  # empty, but more may come


def test_close_then_drain_then_empty() -> None:
    box = filled(5, Overflow.DROP_OLDEST, ["a", "b"])
    box.close()
    assert box.put("c") is False
    assert box.dropped_total == 1  # a frame refused by a closed mailbox is a drop too
    assert box.take(1) == ["a"]
    assert box.take(5) == ["b"]
    assert box.take(5) == []
    assert box.closed


def test_head_item_goes_first_alone_and_survives_close() -> None:
    box = filled(5, Overflow.DROP_OLDEST, ["a", "b"])
    box.put_head("rest")
    assert len(box) == 3
    box.close()
    assert box.take(5) == ["rest"]
    assert box.take(5) == ["a", "b"]
    with pytest.raises(RuntimeError):
        box.put_head("x")
        box.put_head("y")


def test_on_ready_fires_for_puts_and_the_first_close_only() -> None:
    box: Mailbox[str] = Mailbox(2, Overflow.DISCONNECT)
    calls: list[int] = []
    box.on_ready = lambda: calls.append(len(box))
    box.put("a")
    box.put_head("h")
    assert calls == [1, 2]
    box.take(5)
    box.take(5)
    box.put("b")
    box.put("c")
    assert calls == [1, 2, 1, 2]
    assert box.put("d") is False  # overflow: cleared and closed, which is announced once
    assert calls == [1, 2, 1, 2, 0]
    assert box.put("e") is False  # refused: nothing new to take
    box.close()
    assert calls == [1, 2, 1, 2, 0]


def test_discard_drops_and_counts() -> None:
    box = filled(5, Overflow.DROP_OLDEST, ["a", "b", "c"])
    assert box.discard() == 3
    assert len(box) == 0
    assert box.dropped_total == 3


def test_statistics() -> None:
    box = filled(2, Overflow.DROP_OLDEST, ["a", "b", "c"])
    assert box.statistics() == MailboxStats(
        depth=2, capacity=2, dropped_total=1, overflowed=False, closed=False
    )
    box = filled(2, Overflow.DISCONNECT, ["a", "b", "c"])
    assert box.statistics() == MailboxStats(
        depth=0, capacity=2, dropped_total=3, overflowed=True, closed=True
    )
