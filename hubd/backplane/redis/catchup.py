"""Getting the cluster's events into the hub: a live message, a catch-up from the
streams after the node was not subscribed (telling subscribers what the streams no
longer hold), and the replay a resuming client is sent. Only through `Hub` methods."""

from __future__ import annotations

import logging

import coredis
import trio

from hubd.backplane.redis import scripts
from hubd.backplane.redis.wire import EventMessage, Snapshot, now_ms, parse_snapshot
from hubd.core.frame import Frame
from hubd.core.history import Replay
from hubd.core.hub import Hub
from hubd.protocol.notices import BACKPLANE_GAP

log = logging.getLogger("hubd.backplane")

# The reason `Hub.missed` gives subscribers when the backplane lost events for them.
GAP = BACKPLANE_GAP


def deliver(hub: Hub, message: EventMessage) -> None:
    """One event from the cluster (this node's own included) to local subscribers."""
    seq = message.seq
    if seq <= hub.last_seq and not message.target:
        # Already delivered by a catch-up (targeted events are not in the streams,
        # so they only ever come this way).
        return
    channel = message.channel.decode()
    frame = Frame(message.payload, trio.current_time(), channel, seq)
    if message.target:
        target = hub.sessions.get(message.target.decode())
        if target is None:
            hub.mark_seen(seq)
            return
        hub.publish(channel, frame, target, immediate=True, seq=seq)
    elif channel in hub.channels:
        hub.publish(channel, frame, immediate=True, seq=seq)
    else:
        hub.mark_seen(seq)


async def snapshot(
    client: coredis.Redis[bytes], prefix: str, channels: list[str], after: int
) -> Snapshot:
    """What the streams of `channels` hold past seq `after`, read in one step."""
    raw = await client.eval(scripts.SNAPSHOT, keys=[], args=[prefix, str(after), *channels])
    return parse_snapshot(raw, channels)


async def catch_up(hub: Hub, snap: Snapshot, after: int, *, renumbered: bool) -> None:
    """Deliver what `snap` holds past `after` (the last event delivered here), and first
    tell the subscribers that may have lost events what the streams no longer hold.
    `renumbered`: Redis lost its data since, so anything may be missing."""
    held = [entry for entry in snap.entries if entry[0] > after]
    history = hub.settings.history_size
    # Numbered since the last event delivered here and not delivered now: targeted
    # events, events trimmed from their stream, or (no history) every one of them.
    undelivered = max(0, snap.seq - after - len(held))
    if renumbered:
        # Redis lost its data: whatever it numbered after the last event delivered
        # here is gone, on any channel, and how much is unknown.
        told = hub.missed(None, 0, GAP)
        log.warning("backplane: told %d subscriber(s) that events may be lost", told)
    elif history == 0:
        _tell_unkept(hub, undelivered)
    else:
        _tell_trimmed(hub, sorted(c for c, seq in snap.evicted.items() if seq > after), undelivered)
    for index, (seq, channel, payload, _) in enumerate(held):
        if seq > hub.last_seq:
            hub.publish(channel, Frame(payload, trio.current_time(), channel, seq), seq=seq)
        if index % 16 == 15:
            # A long catch-up must not stall the node: its connections still run.
            await trio.lowlevel.checkpoint()
    if history > 0:
        # Everything numbered so far is either delivered now or targeted (those only
        # come through Pub/Sub and are not skipped): later messages at or below this
        # seq are duplicates. Without history nothing was caught up: skip nothing.
        hub.mark_seen(snap.seq)
    if held:
        log.warning("backplane: delivered %d event(s) missed while not subscribed", len(held))


def _tell_unkept(hub: Hub, undelivered: int) -> None:
    """Nothing is kept to catch up from. (Some of these may still come as messages, if
    they were published after subscribing: an upper bound.)"""
    told = hub.missed(None, undelivered, GAP) if undelivered else 0
    if told:
        log.warning(
            "backplane: up to %d event(s) published while this node was not "
            "subscribed are lost (hub.history_size = 0); told %d subscriber(s)",
            undelivered,
            told,
        )


def _tell_trimmed(hub: Hub, trimmed: list[str], undelivered: int) -> None:
    """The streams of `trimmed` dropped events this node had not delivered."""
    told = hub.missed(trimmed, undelivered, GAP) if trimmed else 0
    if told:
        log.warning(
            "backplane: the streams of %s no longer hold every event published "
            "while this node was not subscribed (up to %d lost); told %d "
            "subscriber(s)",
            ", ".join(trimmed),
            undelivered,
            told,
        )


def replay_from(hub: Hub, snap: Snapshot, after: int) -> Replay:
    """The replay for a client resuming after seq `after`, from a snapshot of this
    epoch: complete unless an event past `after` was trimmed or expired."""
    history = hub.settings.history_size
    complete = history > 0 and all(seq <= after for seq in snap.evicted.values())
    oldest = now_ms() - int(hub.settings.history_ttl * 1000)
    frames: list[Frame] = []
    for seq, channel, payload, at_ms in snap.entries:
        if at_ms < oldest:
            complete = False  # expired: no longer held
            continue
        frames.append(Frame(payload, None, channel, seq))
    # Without history, events published while this was read are only in the held
    # live events: keep them (the boundary stays at the resume point).
    return Replay(frames, complete, max(snap.seq, after) if history > 0 else after)
